//! The TLS client settings of both transports.
//!
//! By default the server certificate is checked against the Mozilla root
//! store (`webpki-roots`). A CA file replaces those roots (a private CA is the
//! usual case for an OpAMP server). A server certificate identical to one of
//! the CA file is trusted as it is, name and validity period still checked:
//! that is how a self-signed certificate (`openssl req -x509`, which marks it
//! CA:TRUE) is given to clients. A client certificate and key add mTLS; a
//! complete [`rustls::ClientConfig`] replaces everything (for example one
//! whose verifier records the server's chain for inspection).

use crate::Error;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to verify the server and, optionally, present a client certificate.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of the CAs that sign the server certificate; replaces the
    /// built-in roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mTLS.
    pub client_cert: Option<ClientCert>,
    /// A complete rustls configuration; when set, the fields above are ignored.
    pub config: Option<Arc<rustls::ClientConfig>>,
}

/// A client certificate chain and its private key, both PEM files.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TlsOptions {
    /// Trusts the CAs of a PEM file instead of the built-in roots.
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> TlsOptions {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents a client certificate (mTLS).
    pub fn with_client_cert(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> TlsOptions {
        self.client_cert = Some(ClientCert {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
        });
        self
    }

    /// Uses a complete rustls configuration.
    pub fn with_config(mut self, config: Arc<rustls::ClientConfig>) -> TlsOptions {
        self.config = Some(config);
        self
    }

    /// True when nothing was set: the transports then use their defaults.
    pub fn is_default(&self) -> bool {
        self.ca_file.is_none() && self.client_cert.is_none() && self.config.is_none()
    }
}

/// The rustls client configuration for `options` (files are read now).
pub fn client_config(options: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, Error> {
    if let Some(config) = &options.config {
        return Ok(config.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?;
    let builder = match &options.ca_file {
        Some(path) => {
            let certs = read_certs(path, "CA file")?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
            if added == 0 {
                return Err(Error::BadPem {
                    what: "CA file",
                    path: path.clone(),
                    reason: "holds no usable CA certificate".into(),
                });
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(CaFileVerifier {
                    certificates: certs,
                    webpki,
                }))
        }
        None => {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots)
        }
    };
    let config = match &options.client_cert {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let certs = read_certs(&client.cert_file, "client certificate")?;
            let key = read_key(&client.key_file)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(Error::Tls)?
        }
    };
    Ok(Arc::new(config))
}

/// Verifies the server against a CA file: a server certificate identical to
/// one of the file is trusted as it is (its name and validity period are still
/// checked); any other must chain to the file's certificates (webpki).
#[derive(Debug)]
struct CaFileVerifier {
    certificates: Vec<CertificateDer<'static>>,
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for CaFileVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if !self
            .certificates
            .iter()
            .any(|trusted| trusted.as_ref() == end_entity.as_ref())
        {
            return self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        }
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        check_validity_period(end_entity, now)?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Refuses a certificate outside its notBefore..notAfter window at `now`.
fn check_validity_period(
    der: &CertificateDer<'_>,
    now: rustls::pki_types::UnixTime,
) -> Result<(), rustls::Error> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    let seconds = now.as_secs() as i64;
    let validity = certificate.validity();
    if seconds < validity.not_before.timestamp() {
        return Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidYet,
        ));
    }
    if seconds > validity.not_after.timestamp() {
        return Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired,
        ));
    }
    Ok(())
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(path, what)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::BadPem {
            what,
            path: path.to_path_buf(),
            reason: format!("is not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(Error::BadPem {
            what,
            path: path.to_path_buf(),
            reason: "holds no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, Error> {
    let what = "client key";
    let pem = read(path, what)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| Error::BadPem {
            what,
            path: path.to_path_buf(),
            reason: format!("is not valid PEM: {e}"),
        })?
        .ok_or_else(|| Error::BadPem {
            what,
            path: path.to_path_buf(),
            reason: "holds no PRIVATE KEY block".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn default_options_use_the_built_in_roots() {
        assert!(TlsOptions::default().is_default());
        client_config(&TlsOptions::default()).unwrap();
    }

    #[test]
    fn a_ca_file_and_a_client_certificate_are_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem());
        let key_file = write(dir.path(), "key.pem", &ca.key_pair.serialize_pem());
        let options = TlsOptions::default()
            .with_ca_file(&ca_file)
            .with_client_cert(&ca_file, &key_file);
        let config = client_config(&options).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = client_config(&TlsOptions::default().with_ca_file(&missing)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read the CA file {}", missing.display())),
            "{e}"
        );
        let empty = write(dir.path(), "empty.pem", "not pem\n");
        let e = client_config(&TlsOptions::default().with_ca_file(&empty)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the CA file {} holds no CERTIFICATE block", empty.display())
        );
    }

    #[test]
    fn a_client_certificate_without_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["agent".into()]).unwrap();
        let cert_file = write(dir.path(), "cert.pem", &cert.cert.pem());
        let e = client_config(&TlsOptions::default().with_client_cert(&cert_file, &cert_file))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the client key {} holds no PRIVATE KEY block",
                cert_file.display()
            )
        );
    }
}
