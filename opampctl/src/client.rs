//! The REST client. Maps failures to exit statuses: a server that cannot be
//! reached is 3; 401/403 and every other error reply are 1, with the
//! server's own message.

use crate::context::Settings;
use crate::error::{CtlError, Result};
use opamp_proto::api::ErrorBody;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

#[derive(Clone)]
pub struct Client {
    pub base: String,
    token: Option<String>,
    token_source: String,
    http: reqwest::Client,
    /// Without a request timeout: for streams (log follow, backups).
    stream_http: reqwest::Client,
}

fn builder(s: &Settings) -> Result<reqwest::ClientBuilder> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("opampctl/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(s.timeout.min(Duration::from_secs(10)));
    if let Some(ca) = &s.ca_file {
        // The agent library's TLS settings: the CA file's certificates as
        // roots, and a self-signed server certificate given as its own CA.
        let options = opamp_agent::tls::TlsOptions::default().with_ca_file(ca);
        let config = opamp_agent::tls::client_config(&options)
            .map_err(|e| CtlError::usage(format!("--ca-file: {e}")))?;
        b = b.use_preconfigured_tls(rustls::ClientConfig::clone(&config));
    }
    Ok(b)
}

/// The end of the hint for a refused connection (`troubleshoot startup`
/// leaves it out of its own report).
pub const STARTUP_HINT: &str = " or `opampctl troubleshoot startup`";

/// Describes a transport error, and says whether it means "unreachable".
pub fn transport_error(base: &str, e: &reqwest::Error) -> CtlError {
    // The innermost cause says what happened ("Connection refused", "dns error: …").
    let mut chain = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        chain = s.to_string();
        src = s.source();
    }
    if e.is_timeout() {
        return CtlError::unreachable(format!(
            "opampd at {base} did not answer in time ({chain}); is it overloaded or is a firewall dropping packets? (--request-timeout)"
        ));
    }
    if e.is_connect() {
        let refused = format!("is opampd running and listening there? check --server / OPAMPCTL_SERVER, `systemctl status opampd`{STARTUP_HINT}");
        let hint = if chain.contains("dns") || chain.contains("lookup") {
            "check the host name in --server / OPAMPCTL_SERVER"
        } else if chain.contains("refused") {
            refused.as_str()
        } else if chain.contains("certificate") || chain.contains("tls") || chain.contains("TLS") {
            "the TLS handshake failed: pass the server's CA with --ca-file, or check the certificate with `opampctl doctor`"
        } else {
            "check --server / OPAMPCTL_SERVER and the network"
        };
        return CtlError::unreachable(format!("cannot reach opampd at {base}: {chain}; {hint}"));
    }
    CtlError::failed(format!("request to opampd at {base} failed: {chain}"))
}

impl Client {
    pub fn new(s: &Settings) -> Result<Client> {
        let http = builder(s)?
            .timeout(s.timeout)
            .build()
            .map_err(|e| CtlError::failed(format!("cannot set up the HTTP client: {e}")))?;
        let stream_http = builder(s)?
            .build()
            .map_err(|e| CtlError::failed(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            base: s.server.clone(),
            token: s.token.clone(),
            token_source: s.token_source.clone(),
            http,
            stream_http,
        })
    }

    /// Whether a token was given (flag, environment, file or context).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the token (if any).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.with_token(self.http.request(method, self.url(path)))
    }

    /// Like [`request`](Self::request) but without a total timeout.
    pub fn stream_request(&self, method: Method, path: &str) -> RequestBuilder {
        self.with_token(self.stream_http.request(method, self.url(path)))
    }

    /// A request to an absolute URL without the operator token (OpAMP probes).
    pub fn plain(&self, method: Method, url: &str) -> RequestBuilder {
        self.http.request(method, url)
    }

    fn with_token(&self, r: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends; maps transport errors to exit 3 and error replies to exit 1.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(&self.base, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.error_reply(resp).await)
    }

    /// Sends without judging the status (probes).
    pub async fn send_any(&self, req: RequestBuilder) -> Result<Response> {
        req.send()
            .await
            .map_err(|e| transport_error(&self.base, &e))
    }

    /// Turns an error reply into a message naming the server's reason.
    pub async fn error_reply(&self, resp: Response) -> CtlError {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => b.error.message,
            Err(_) => {
                let t = text.trim();
                if t.is_empty() {
                    status.canonical_reason().unwrap_or("error").to_string()
                } else {
                    t.chars().take(300).collect()
                }
            }
        };
        match status {
            StatusCode::UNAUTHORIZED => {
                let hint = if self.token.is_none() {
                    "no token given: pass --token, --token-file or OPAMPCTL_TOKEN (opampd writes an admin token to <data-dir>/admin.token at its first start)".to_string()
                } else if self.token_source.starts_with("the login session") {
                    format!(
                        "the token from {} was refused (it may have expired): log in again with `opampctl login`",
                        self.token_source
                    )
                } else {
                    format!("the token from {} was refused", self.token_source)
                };
                CtlError::failed(format!(
                    "opampd refused the request (401): {message}; {hint}"
                ))
            }
            StatusCode::FORBIDDEN => CtlError::failed(format!(
                "opampd refused the request (403): {message}; use a token with a higher role"
            )),
            // The input the command sent (a selector, a file, a uid) is wrong:
            // a usage error, like a bad flag.
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => CtlError::usage(format!(
                "opampd refused the input ({}): {message}",
                status.as_u16()
            )),
            _ => CtlError::failed(format!("opampd answered {}: {message}", status.as_u16())),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send(self.request(Method::GET, path)).await?;
        decode(resp, path).await
    }

    pub async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<(StatusCode, T)> {
        let resp = self.send(self.request(method, path).json(body)).await?;
        let status = resp.status();
        Ok((status, decode(resp, path).await?))
    }

    /// A request without a body whose reply is JSON (or empty: `Value::Null`).
    pub async fn call(&self, method: Method, path: &str) -> Result<serde_json::Value> {
        let resp = self.send(self.request(method, path)).await?;
        let text = resp.text().await.unwrap_or_default();
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            CtlError::failed(format!(
                "opampd sent a reply to {path} that is not JSON: {e}"
            ))
        })
    }
}

/// Reads the JSON reply of a request to `path`.
pub async fn decode<T: DeserializeOwned>(resp: Response, path: &str) -> Result<T> {
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| CtlError::failed(format!("reading the reply to {path} failed: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        CtlError::failed(format!(
            "opampd's reply to {path} is not what this opampctl expects ({e}); are opampctl and opampd the same version?"
        ))
    })
}

/// Percent-encodes a query or path component.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn encoding() {
        assert_eq!(super::enc("a=b,c!=d"), "a%3Db%2Cc%21%3Dd");
    }
}
