//! Package downloads over HTTP(S): the agent's credentials (the same headers
//! as its OpAMP connection), the server's extra headers, `Range` requests to
//! resume what an interrupted transfer left, and progress as it goes.
//!
//! [`crate::session::Session`] uses a [`Downloader`] for the
//! [`Download`]s an offer of packages asks for; the bytes are checked and
//! installed by [`crate::agent::Agent::download_finished`].

use crate::agent::Download;
use crate::error::Error;
use crate::tls::TlsOptions;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How the agent fetches package files.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Headers sent with every request (the agent's `Authorization`).
    pub headers: Vec<(String, String)>,
    pub tls: TlsOptions,
    /// Tries per file: the first and the resumptions after an interruption.
    pub attempts: u32,
    /// Report DOWNLOADING progress at most once per this many percent.
    pub progress_step_percent: f64,
    /// Simulates an interrupted transfer: the first attempt of each file
    /// stops after this many bytes (the next one resumes with `Range`).
    pub interrupt_after: Option<u64>,
    /// Limit for one request (connect to last byte).
    pub timeout: Duration,
}

impl Default for DownloadOptions {
    fn default() -> DownloadOptions {
        DownloadOptions {
            headers: Vec::new(),
            tls: TlsOptions::default(),
            attempts: 3,
            progress_step_percent: 25.0,
            interrupt_after: None,
            timeout: Duration::from_secs(300),
        }
    }
}

impl DownloadOptions {
    /// Adds a header to every request.
    pub fn header(mut self, name: &str, value: &str) -> DownloadOptions {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// `Authorization: Bearer <secret>`, as the agent's OpAMP connection sends it.
    pub fn bearer(self, secret: &str) -> DownloadOptions {
        self.header("Authorization", &format!("Bearer {secret}"))
    }

    pub fn tls(mut self, tls: TlsOptions) -> DownloadOptions {
        self.tls = tls;
        self
    }

    /// The first attempt of each file stops after `bytes` (simulated interruption).
    pub fn interrupt_after(mut self, bytes: u64) -> DownloadOptions {
        self.interrupt_after = Some(bytes);
        self
    }
}

/// Why one attempt did not bring the whole file.
#[derive(Debug)]
pub enum Failure {
    /// Worth another attempt: the bytes so far are kept for a `Range` request.
    Interrupted { received: u64, reason: String },
    /// Final (refused, not found, bad URL).
    Final(String),
}

/// Fetches files, keeping partial ones by content hash between attempts.
#[derive(Debug)]
pub struct Downloader {
    options: DownloadOptions,
    client: reqwest::Client,
    partial: HashMap<Vec<u8>, Vec<u8>>,
    /// Content hashes whose first attempt was already made.
    attempted: std::collections::HashSet<Vec<u8>>,
}

/// One transfer under way: read it with [`Transfer::next`].
pub struct Transfer<'a> {
    downloader: &'a mut Downloader,
    key: Vec<u8>,
    response: reqwest::Response,
    buffer: Vec<u8>,
    total: u64,
    started: Instant,
    start_len: u64,
    stop_at: Option<u64>,
}

impl Downloader {
    pub fn new(options: DownloadOptions) -> Result<Downloader, Error> {
        let headers = crate::ws::header_map(&options.headers)?;
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("opamp-agent/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .timeout(options.timeout)
            .no_gzip();
        if !options.tls.is_default() {
            let config = crate::tls::client_config(&options.tls)?;
            builder = builder.use_preconfigured_tls(rustls::ClientConfig::clone(&config));
        }
        let client = builder.build().map_err(|e| Error::Http {
            url: String::new(),
            reason: format!("cannot set up the download client: {e}"),
        })?;
        Ok(Downloader {
            options,
            client,
            partial: HashMap::new(),
            attempted: Default::default(),
        })
    }

    pub fn options(&self) -> &DownloadOptions {
        &self.options
    }

    /// Bytes kept from interrupted transfers of the file with `content_hash`.
    pub fn partial_len(&self, content_hash: &[u8]) -> u64 {
        self.partial.get(content_hash).map_or(0, |b| b.len() as u64)
    }

    /// Starts (or resumes, with `Range`) the transfer of `download`.
    pub async fn start(&mut self, download: &Download) -> Result<Transfer<'_>, Failure> {
        let key = download.content_hash.clone();
        let mut buffer = self.partial.remove(&key).unwrap_or_default();
        let first = self.attempted.insert(key.clone());
        let stop_at = self
            .options
            .interrupt_after
            .filter(|_| first)
            .map(|bytes| buffer.len() as u64 + bytes);
        let mut request = self.client.get(&download.url);
        for (name, value) in &download.headers {
            request = request.header(name, value);
        }
        if !buffer.is_empty() {
            request = request.header(http::header::RANGE, format!("bytes={}-", buffer.len()));
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                let received = buffer.len() as u64;
                self.keep(key, buffer);
                return Err(Failure::Interrupted {
                    received,
                    reason: format!("cannot reach {}: {}", download.url, error_chain(&e)),
                });
            }
        };
        let status = response.status().as_u16();
        let length = response.content_length();
        let total = match status {
            200 => {
                buffer.clear();
                length.unwrap_or(0)
            }
            206 => {
                let range = content_range(response.headers());
                match range {
                    Some((start, total)) if start == buffer.len() as u64 => total,
                    _ => {
                        return Err(Failure::Final(format!(
                            "{} answered a Range request with a Content-Range that does not \
                             continue the {} bytes received",
                            download.url,
                            buffer.len()
                        )))
                    }
                }
            }
            _ => {
                let received = buffer.len() as u64;
                let retry = status == 429 || status >= 500;
                self.keep(key, buffer);
                let reason = format!("{} answered HTTP {status}", download.url);
                return Err(if retry {
                    Failure::Interrupted { received, reason }
                } else {
                    Failure::Final(reason)
                });
            }
        };
        let start_len = buffer.len() as u64;
        Ok(Transfer {
            downloader: self,
            key,
            response,
            buffer,
            total,
            started: Instant::now(),
            start_len,
            stop_at,
        })
    }

    fn keep(&mut self, key: Vec<u8>, buffer: Vec<u8>) {
        if !buffer.is_empty() {
            self.partial.insert(key, buffer);
        }
    }
}

impl Transfer<'_> {
    /// Reads the next part; `Ok(false)` at the end. An interruption keeps
    /// the bytes received for the next attempt.
    pub async fn next(&mut self) -> Result<bool, Failure> {
        if self.stop_at.is_some_and(|stop| self.received() >= stop) {
            return Err(self.interrupted("interrupted on purpose (simulated)".into()));
        }
        match self.response.chunk().await {
            Ok(Some(chunk)) => {
                let room = self
                    .stop_at
                    .map_or(chunk.len(), |stop| (stop - self.received()) as usize)
                    .min(chunk.len());
                self.buffer.extend_from_slice(&chunk[..room]);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(self.interrupted(format!("the transfer broke: {}", error_chain(&e)))),
        }
    }

    /// Bytes of the file received so far (this attempt and the ones before).
    pub fn received(&self) -> u64 {
        self.buffer.len() as u64
    }

    /// The file's size, 0 when the server did not say.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes per second of this attempt.
    pub fn rate(&self) -> f64 {
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        (self.received() - self.start_len) as f64 / seconds
    }

    /// The whole file.
    pub fn finish(self) -> Vec<u8> {
        self.buffer
    }

    fn interrupted(&mut self, reason: String) -> Failure {
        let received = self.received();
        let buffer = std::mem::take(&mut self.buffer);
        self.downloader.keep(self.key.clone(), buffer);
        Failure::Interrupted { received, reason }
    }
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL).
fn content_range(headers: &http::HeaderMap) -> Option<(u64, u64)> {
    let value = headers.get(http::header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = value.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()?))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const FILE: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

    /// A small file server on a real socket: wants `Authorization: Bearer
    /// s3cret`, honours `Range: bytes=N-`, records every request's head.
    async fn file_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/packages/file", listener.local_addr().unwrap());
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                seen.lock().unwrap().push(head.clone());
                let answer = if !head.contains("authorization: bearer s3cret") {
                    b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_vec()
                } else if let Some(start) = head
                    .split("range: bytes=")
                    .nth(1)
                    .and_then(|rest| rest.split('-').next())
                    .and_then(|n| n.parse::<usize>().ok())
                {
                    let mut answer = format!(
                        "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {start}-{}/{}\r\nconnection: close\r\n\r\n",
                        FILE.len() - start,
                        FILE.len() - 1,
                        FILE.len()
                    )
                    .into_bytes();
                    answer.extend_from_slice(&FILE[start..]);
                    answer
                } else {
                    let mut answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        FILE.len()
                    )
                    .into_bytes();
                    answer.extend_from_slice(FILE);
                    answer
                };
                let _ = socket.write_all(&answer).await;
            }
        });
        (url, heads)
    }

    fn download(url: &str) -> Download {
        Download {
            name: "otelcol".into(),
            version: "1.0.0".into(),
            package_hash: vec![1; 32],
            url: url.into(),
            content_hash: vec![2; 32],
            signature: Vec::new(),
            headers: vec![("X-Extra".into(), "yes".into())],
        }
    }

    async fn read_all(transfer: &mut Transfer<'_>) -> Result<(), Failure> {
        while transfer.next().await? {}
        Ok(())
    }

    #[tokio::test]
    async fn an_interrupted_transfer_resumes_with_range() {
        let (url, heads) = file_server().await;
        let options = DownloadOptions::default()
            .bearer("s3cret")
            .interrupt_after(10);
        let mut downloader = Downloader::new(options).unwrap();
        let file = download(&url);
        let mut transfer = downloader.start(&file).await.ok().unwrap();
        match read_all(&mut transfer).await {
            Err(Failure::Interrupted { received, .. }) => assert_eq!(received, 10),
            other => panic!("expected an interruption, got {other:?}"),
        }
        drop(transfer);
        assert_eq!(downloader.partial_len(&file.content_hash), 10);
        let mut transfer = downloader.start(&file).await.ok().unwrap();
        assert_eq!(transfer.total(), FILE.len() as u64);
        read_all(&mut transfer).await.unwrap();
        assert_eq!(transfer.finish(), FILE);
        let heads = heads.lock().unwrap();
        assert!(!heads[0].contains("range:"), "{}", heads[0]);
        assert!(heads[1].contains("range: bytes=10-"), "{}", heads[1]);
        assert!(heads.iter().all(|h| h.contains("x-extra: yes")));
    }

    #[tokio::test]
    async fn a_refused_download_is_final() {
        let (url, _) = file_server().await;
        let mut downloader = Downloader::new(DownloadOptions::default()).unwrap();
        match downloader.start(&download(&url)).await {
            Err(Failure::Final(reason)) => assert!(reason.contains("HTTP 401"), "{reason}"),
            Err(other) => panic!("expected a final failure, got {other:?}"),
            Ok(_) => panic!("expected a refusal"),
        }
    }

    #[test]
    fn content_range_gives_start_and_total() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_RANGE,
            "bytes 100-199/200".parse().unwrap(),
        );
        assert_eq!(content_range(&headers), Some((100, 200)));
        headers.insert(http::header::CONTENT_RANGE, "bytes */200".parse().unwrap());
        assert_eq!(content_range(&headers), None);
    }
}
