//! The one error type of the crate.
//!
//! Every variant says which input or which step failed. Library code never
//! panics; a failure is one of these.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why setting up a transport, exchanging a message or decoding a reply failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server URL cannot be used (wrong scheme, no host, unparsable).
    #[error("invalid OpAMP URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// An extra header has an invalid name or value.
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader { name: String, reason: String },

    /// A TLS file (CA bundle, client certificate, client key) could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// A TLS file was read but holds no usable PEM item.
    #[error("the {what} {path} {reason}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    /// rustls refused the TLS settings (for example a key that does not match the certificate).
    #[error("TLS settings refused: {0}")]
    Tls(#[source] rustls::Error),

    /// The host name of the URL did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },

    /// The local source address could not be bound.
    #[error("cannot bind to the source address {ip}: {source}")]
    Bind { ip: IpAddr, source: std::io::Error },

    /// The TCP connection failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },

    /// The TLS handshake failed (certificate not trusted, wrong name, client certificate refused).
    #[error("TLS handshake with {host} failed: {source}")]
    Handshake {
        host: String,
        source: std::io::Error,
    },

    /// The server answered the WebSocket upgrade with an HTTP status instead
    /// of switching protocols (401 without a valid secret, 503 past capacity).
    #[error("the server refused the WebSocket upgrade: HTTP {}", .0.status)]
    Rejected(Box<Rejection>),

    /// The WebSocket failed (handshake, read or write).
    #[error("WebSocket: {0}")]
    WebSocket(#[source] Box<tokio_tungstenite::tungstenite::Error>),

    /// The server closed the WebSocket.
    #[error("the server closed the WebSocket{}", close_detail(*.code, .reason))]
    Closed { code: Option<u16>, reason: String },

    /// A WebSocket message that OpAMP does not use (text).
    #[error("unexpected WebSocket message: {0}")]
    UnexpectedMessage(String),

    /// The OpAMP WebSocket header of a message is wrong.
    #[error("bad OpAMP frame from the server: {0}")]
    Frame(#[from] opamp_proto::frame::FrameError),

    /// The reply is not a valid ServerToAgent.
    #[error("the reply is not a ServerToAgent: {0}")]
    Decode(#[from] prost::DecodeError),

    /// The HTTP request failed before a status arrived.
    #[error("POST {url}: {reason}")]
    Http { url: String, reason: String },

    /// The HTTP reply was not a 2xx.
    #[error("POST {url}: HTTP {status}{}: {body}", retry_detail(*.retry_after))]
    Status {
        url: String,
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    },

    /// A 2xx HTTP reply whose content type is not `application/x-protobuf`.
    #[error("the reply is {content_type:?}, not application/x-protobuf")]
    NotProtobuf { content_type: String },

    /// Compressing a request or decompressing a reply failed.
    #[error("gzip: {0}")]
    Gzip(#[source] std::io::Error),

    /// Nothing arrived in time.
    #[error("no reply within {} ms", .0.as_millis())]
    Timeout(Duration),
}

/// An HTTP answer to a WebSocket upgrade request.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: u16,
    pub headers: ::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Rejection {
    /// The Retry-After header in seconds, if present and numeric.
    pub fn retry_after(&self) -> Option<Duration> {
        crate::http::retry_after(&self.headers)
    }
}

impl Error {
    /// The HTTP status, when the server answered with one (a refused
    /// upgrade or a non-2xx reply).
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Rejected(r) => Some(r.status),
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long the server asked to wait (Retry-After), when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Rejected(r) => r.retry_after(),
            Error::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Error {
        use tokio_tungstenite::tungstenite::Error as WsError;
        match e {
            WsError::Http(response) => {
                let (parts, body) = (*response).into_parts();
                Error::Rejected(Box::new(Rejection {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body: body.unwrap_or_default(),
                }))
            }
            other => Error::WebSocket(Box::new(other)),
        }
    }
}

fn close_detail(code: Option<u16>, reason: &str) -> String {
    match (code, reason.is_empty()) {
        (None, _) => String::new(),
        (Some(code), true) => format!(" ({code})"),
        (Some(code), false) => format!(" ({code} {reason})"),
    }
}

fn retry_detail(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|d| format!(" (retry after {} s)", d.as_secs()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_upgrade_keeps_status_and_headers() {
        let response = ::http::Response::builder()
            .status(503)
            .header("retry-after", "42")
            .body(Some(b"busy".to_vec()))
            .unwrap();
        let e = Error::from(tokio_tungstenite::tungstenite::Error::Http(Box::new(
            response,
        )));
        assert_eq!(e.status(), Some(503));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(42)));
        assert_eq!(
            e.to_string(),
            "the server refused the WebSocket upgrade: HTTP 503"
        );
    }

    #[test]
    fn messages_say_what_failed() {
        let e = Error::Status {
            url: "http://h/v1/opamp".into(),
            status: 429,
            retry_after: Some(Duration::from_secs(30)),
            body: "slow down".into(),
        };
        assert_eq!(
            e.to_string(),
            "POST http://h/v1/opamp: HTTP 429 (retry after 30 s): slow down"
        );
        let e = Error::Closed {
            code: Some(1009),
            reason: "message too big".into(),
        };
        assert_eq!(
            e.to_string(),
            "the server closed the WebSocket (1009 message too big)"
        );
    }
}
