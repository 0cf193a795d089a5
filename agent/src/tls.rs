//! The TLS client settings of both transports.
//!
//! By default the server certificate is checked against the Mozilla root
//! store (`webpki-roots`). A CA file replaces those roots (a private CA is the
//! usual case for an OpAMP server); a client certificate and key add mTLS; a
//! complete [`rustls::ClientConfig`] replaces everything (for example one
//! whose verifier records the server's chain for inspection).

use crate::Error;
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
    let mut roots = rustls::RootCertStore::empty();
    match &options.ca_file {
        Some(path) => {
            let certs = read_certs(path, "CA file")?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::BadPem {
                    what: "CA file",
                    path: path.clone(),
                    reason: "holds no usable CA certificate".into(),
                });
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_root_certificates(roots);
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

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, Error> {
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
