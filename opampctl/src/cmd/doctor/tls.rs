//! TLS: a certificate file (--tls-cert) and the certificate an https server
//! presents: validity, expiry, host name, and whether this host trusts it.

use super::report::{fail, ok, skip, warn, Check, Verdict};
use super::Diagnosis;
use crate::context::url;
use reqwest::Method;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Certificates expiring within this many days get a warning.
const RENEW_DAYS: i64 = 14;

impl Diagnosis<'_> {
    /// `tls`: the --tls-cert file, then (for an https server) the presented chain.
    pub(super) async fn check_tls(&mut self) {
        if let Some(file) = &self.args.tls_cert {
            self.push(certificate_file_verdict(file));
        }
        if url::scheme(&self.client.base) != "https" {
            if self.args.tls_cert.is_none() {
                self.push(skip(
                    "tls",
                    format!(
                        "{} is plain http (pass --tls-cert FILE to check a certificate file)",
                        self.client.base
                    ),
                ));
            }
            return;
        }
        if self.server_down() {
            return;
        }
        let check = self.server_certificate_verdict().await;
        self.push(check);
    }

    async fn server_certificate_verdict(&self) -> Check {
        let host = url::host(&self.client.base);
        let port = url::port(&self.client.base).unwrap_or(443);
        let chain = match peer_certificates(&host, port).await {
            Ok(chain) => chain,
            Err(e) => {
                return fail(
                    "tls",
                    format!("TLS handshake with {host}:{port} failed: {e}"),
                    "check tls.cert_file and tls.key_file in the opampd config",
                )
            }
        };
        let Some(leaf) = chain.first() else {
            return fail(
                "tls",
                "the server sent no certificate",
                "check tls.cert_file",
            );
        };
        let check = certificate_verdict(&format!("{host}:{port}"), leaf, Some(&host));
        if check.verdict == Verdict::Fail {
            return check;
        }
        // Does the chain verify against the trusted roots (and --ca-file)?
        match self
            .client
            .send_any(self.client.request(Method::GET, "/health/live"))
            .await
        {
            Ok(_) => check,
            Err(e) => fail(
                "tls",
                format!("{}; but it is not trusted here: {}", check.detail, e.message),
                "give clients the CA (opampctl --ca-file, the agents' TLS settings) or use a certificate from a trusted CA",
            ),
        }
    }
}

fn certificate_file_verdict(file: &Path) -> Check {
    let pem = match std::fs::read(file) {
        Ok(pem) => pem,
        Err(e) => {
            return fail(
                "tls",
                format!("cannot read {}: {e}", file.display()),
                "pass a readable certificate file",
            )
        }
    };
    let ders: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(&pem)
        .filter_map(|block| block.ok())
        .filter(|block| block.label == "CERTIFICATE")
        .map(|block| block.contents)
        .collect();
    match ders.first() {
        Some(der) => certificate_verdict(&format!("{}", file.display()), der, None),
        None => fail(
            "tls",
            format!("{} holds no PEM certificate", file.display()),
            "pass the certificate file of tls.cert_file (PEM, BEGIN CERTIFICATE)",
        ),
    }
}

/// Validity window, expiry and (for a server) the host name of a certificate.
fn certificate_verdict(what: &str, der: &[u8], host: Option<&str>) -> Check {
    let certificate = match x509_parser::parse_x509_certificate(der) {
        Ok((_, certificate)) => certificate,
        Err(e) => {
            return fail(
                "tls",
                format!("{what}: the certificate cannot be parsed: {e}"),
                "use a PEM (X.509) certificate",
            )
        }
    };
    let now = chrono::Utc::now().timestamp();
    let not_before = certificate.validity().not_before.timestamp();
    let not_after = certificate.validity().not_after.timestamp();
    let expires = chrono::DateTime::from_timestamp(not_after, 0)
        .map(|date| date.to_rfc3339())
        .unwrap_or_default();
    let names = subject_alt_names(&certificate);
    let detail = format!(
        "{what}: subject {}, issuer {}, names [{}], expires {expires}",
        certificate.subject(),
        certificate.issuer(),
        names.join(", ")
    );
    if now > not_after {
        return fail(
            "tls",
            format!("{detail}: EXPIRED"),
            "renew the certificate (tls.cert_file) and restart opampd",
        );
    }
    if now < not_before {
        return fail(
            "tls",
            format!("{detail}: not valid yet"),
            "check the clock of this host and of the CA",
        );
    }
    if let Some(host) = host {
        if !names.iter().any(|name| name_matches(name, host)) {
            return fail(
                "tls",
                format!("{detail}: {host} is not among its names"),
                "issue the certificate for the name clients use (subjectAltName), or use that name in --server",
            );
        }
    }
    let days = (not_after - now) / 86400;
    if days < RENEW_DAYS {
        return warn(
            "tls",
            format!("{detail}: expires in {days} days"),
            "renew the certificate soon",
        );
    }
    ok("tls", format!("{detail} ({days} days left)"))
}

/// The DNS names and IP addresses of the subjectAltName extension.
fn subject_alt_names(certificate: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut names = Vec::new();
    let Ok(Some(san)) = certificate.subject_alternative_name() else {
        return names;
    };
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(dns) => names.push(dns.to_string()),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => names.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                16 => {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(ip);
                    names.push(std::net::Ipv6Addr::from(octets).to_string());
                }
                _ => {}
            },
            _ => {}
        }
    }
    names
}

/// A certificate name covers `host` exactly or by a one-label wildcard.
fn name_matches(name: &str, host: &str) -> bool {
    name.eq_ignore_ascii_case(host)
        || name.strip_prefix("*.").is_some_and(|suffix| {
            host.split_once('.')
                .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(suffix))
        })
}

/// Accepts any certificate and keeps the chain: for inspecting it, never for trusting it.
#[derive(Debug)]
struct Capture {
    chain: Arc<Mutex<Vec<Vec<u8>>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut chain = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        chain.push(end_entity.to_vec());
        chain.extend(intermediates.iter().map(|der| der.to_vec()));
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client configuration that accepts any server certificate and
/// records the chain in `chain`. The trust check is separate (a request
/// through the client, which verifies).
pub(super) fn capturing_config(
    chain: Arc<Mutex<Vec<Vec<u8>>>>,
) -> std::result::Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Capture { chain, provider }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The certificate chain `host:port` presents (leaf first).
async fn peer_certificates(host: &str, port: u16) -> std::result::Result<Vec<Vec<u8>>, String> {
    let chain = Arc::new(Mutex::new(Vec::new()));
    let connector = tokio_rustls::TlsConnector::from(
        capturing_config(chain.clone()).map_err(|e| e.to_string())?,
    );
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let chain = chain.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("opamp.example.com", "OPAMP.example.com"));
        assert!(name_matches("*.example.com", "opamp.example.com"));
        assert!(!name_matches("*.example.com", "a.opamp.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("other.example.com", "opamp.example.com"));
    }
}
