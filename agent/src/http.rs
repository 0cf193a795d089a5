//! The plain-HTTP transport: one `POST` of an `application/x-protobuf`
//! AgentToServer per exchange, the ServerToAgent in the reply body.
//!
//! An [`HttpTransport`] is cheap to clone and meant to be shared: many
//! simulated agents use one, and it keeps at most
//! [`HttpOptions::connections`] requests in flight over as many keep-alive
//! connections. With several [`HttpOptions::source_ips`] the connections are
//! split into lanes, one per source address; an agent always goes through
//! the same lane (chosen from its instance uid), so the server sees each agent
//! come from one address.
//!
//! Every reply is returned whole — status, headers, body — so a test can
//! check a 401, a 413 or a 503 with its Retry-After; [`HttpTransport::exchange`]
//! is the shortcut that wants a 2xx ServerToAgent.
//!
//! ```no_run
//! # async fn example() -> Result<(), opamp_agent::Error> {
//! use opamp_agent::{http, message};
//!
//! let pool = http::HttpTransport::new(
//!     "http://127.0.0.1:4320/v1/opamp",
//!     &http::HttpOptions::default().connections(8).accept_gzip(true),
//! )?;
//! let uid = opamp_agent::new_uid();
//! let reply = pool.post(&message::heartbeat(uid, 0, message::TYPICAL_CAPABILITIES)).await?;
//! if reply.status == 503 {
//!     println!("busy, retry after {:?}", reply.retry_after());
//! }
//! # Ok(())
//! # }
//! ```

use crate::error::Error;
use crate::pb;
use crate::tls::TlsOptions;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use prost::Message as _;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The content type of OpAMP over plain HTTP, both ways.
pub const PROTOBUF: &str = "application/x-protobuf";

/// Header names and values every exchange sends, checked once at compile time.
const INSTANCE_UID: HeaderName = HeaderName::from_static("opamp-instance-uid");
const PROTOBUF_TYPE: HeaderValue = HeaderValue::from_static(PROTOBUF);
const GZIP: HeaderValue = HeaderValue::from_static("gzip");

/// How to send plain-HTTP exchanges.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// Extra request headers (`Authorization`, ...).
    pub headers: Vec<(String, String)>,
    /// TLS settings for `https://`.
    pub tls: TlsOptions,
    /// Compress request bodies (`Content-Encoding: gzip`).
    pub gzip_requests: bool,
    /// Ask for gzip replies (`Accept-Encoding: gzip`); they are decompressed
    /// here and the reply headers are kept as the server sent them.
    pub accept_gzip: bool,
    /// Keep-alive connections, which is also the most requests in flight;
    /// `None`: no limit.
    pub connections: Option<usize>,
    /// Local addresses to connect from, one lane each; empty: the system chooses.
    pub source_ips: Vec<IpAddr>,
    /// Limit for one request, from sending to the end of the reply.
    pub timeout: Option<Duration>,
    /// The User-Agent header; default `opamp-agent/VERSION`.
    pub user_agent: Option<String>,
}

impl HttpOptions {
    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> HttpOptions {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds `Authorization: Bearer SECRET`.
    pub fn bearer(self, secret: &str) -> HttpOptions {
        self.header("authorization", &format!("Bearer {secret}"))
    }

    /// Sets the TLS settings.
    pub fn tls(mut self, tls: TlsOptions) -> HttpOptions {
        self.tls = tls;
        self
    }

    /// Compresses request bodies.
    pub fn gzip_requests(mut self, on: bool) -> HttpOptions {
        self.gzip_requests = on;
        self
    }

    /// Asks for gzip replies.
    pub fn accept_gzip(mut self, on: bool) -> HttpOptions {
        self.accept_gzip = on;
        self
    }

    /// Keeps at most `n` connections (and requests in flight).
    pub fn connections(mut self, n: usize) -> HttpOptions {
        self.connections = Some(n.max(1));
        self
    }

    /// Connects from these local addresses, one lane each.
    pub fn source_ips(mut self, ips: Vec<IpAddr>) -> HttpOptions {
        self.source_ips = ips;
        self
    }

    /// Gives up on a request after `limit`.
    pub fn timeout(mut self, limit: Duration) -> HttpOptions {
        self.timeout = Some(limit);
        self
    }
}

/// A shared plain-HTTP client for one OpAMP URL.
#[derive(Clone, Debug)]
pub struct HttpTransport {
    inner: Arc<Inner>,
}

/// Everything a request needs that does not change between requests is
/// prepared here once: the parsed URL, and the transport's own headers as
/// each lane's client defaults (User-Agent, extra headers, Accept-Encoding).
#[derive(Debug)]
struct Inner {
    url: String,
    target: reqwest::Url,
    lanes: Vec<Lane>,
    gzip_requests: bool,
}

#[derive(Debug)]
struct Lane {
    client: reqwest::Client,
    /// As many permits as the lane has connections; `None`: no limit.
    permits: Option<Semaphore>,
}

/// A reply, as received (the body decompressed if it was gzip).
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: http::HeaderMap,
    /// The body as read from the connection (not copied), or decompressed.
    pub body: Bytes,
    /// From sending the request to the end of the body, not counting the
    /// wait for a free connection.
    pub elapsed: Duration,
}

impl HttpReply {
    /// True when the reply says it is a protobuf message.
    pub fn is_protobuf(&self) -> bool {
        self.content_type() == PROTOBUF
    }

    /// The Content-Type header, or "".
    pub fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The decoded ServerToAgent, if the reply is protobuf (whatever the status).
    pub fn message(&self) -> Option<Result<pb::ServerToAgent, Error>> {
        self.is_protobuf()
            .then(|| pb::ServerToAgent::decode(&self.body[..]).map_err(Error::from))
    }

    /// The Retry-After header in seconds.
    pub fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers)
    }

    /// The body as text, shortened, for error messages.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .trim()
            .chars()
            .take(200)
            .collect()
    }
}

/// The Retry-After header in seconds.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

impl HttpTransport {
    /// Checks `url` (`http://` or `https://`) and `options`, loads the TLS files.
    pub fn new(url: &str, options: &HttpOptions) -> Result<HttpTransport, Error> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| Error::InvalidUrl {
                url: url.into(),
                reason: e.to_string(),
            })?;
        let target = reqwest::Url::parse(url).map_err(|e| Error::InvalidUrl {
            url: url.into(),
            reason: e.to_string(),
        })?;
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(Error::InvalidUrl {
                    url: url.into(),
                    reason: "the scheme must be http:// or https://".into(),
                })
            }
        };
        let tls = if secure && !options.tls.is_default() {
            Some(crate::tls::client_config(&options.tls)?)
        } else {
            None
        };
        let sources: Vec<Option<IpAddr>> = if options.source_ips.is_empty() {
            vec![None]
        } else {
            options.source_ips.iter().copied().map(Some).collect()
        };
        let lane_count = match options.connections {
            Some(n) => sources.len().min(n).max(1),
            None => sources.len(),
        };
        let mut headers = crate::ws::header_map(&options.headers)?;
        if options.accept_gzip {
            headers.insert(http::header::ACCEPT_ENCODING, GZIP);
        }
        let mut lanes = Vec::with_capacity(lane_count);
        for (k, source) in sources.into_iter().take(lane_count).enumerate() {
            let connections = options.connections.map(|n| share(n, k, lane_count).max(1));
            let mut builder =
                reqwest::Client::builder()
                    .user_agent(options.user_agent.clone().unwrap_or_else(|| {
                        concat!("opamp-agent/", env!("CARGO_PKG_VERSION")).into()
                    }))
                    .pool_idle_timeout(None)
                    .tcp_nodelay(true)
                    .http1_only()
                    .default_headers(headers.clone())
                    .no_gzip()
                    .local_address(source);
            if let Some(n) = connections {
                builder = builder.pool_max_idle_per_host(n);
            }
            if let Some(limit) = options.timeout {
                builder = builder.timeout(limit);
            }
            if let Some(config) = &tls {
                builder = builder.use_preconfigured_tls(rustls::ClientConfig::clone(config));
            }
            let client = builder.build().map_err(|e| Error::Http {
                url: url.into(),
                reason: format!("cannot set up the HTTP client: {}", error_chain(&e)),
            })?;
            lanes.push(Lane {
                client,
                permits: connections.map(Semaphore::new),
            });
        }
        Ok(HttpTransport {
            inner: Arc::new(Inner {
                url: url.into(),
                target,
                lanes,
                gzip_requests: options.gzip_requests,
            }),
        })
    }

    /// The URL exchanges go to.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// How many lanes (source addresses) there are.
    pub fn lanes(&self) -> usize {
        self.inner.lanes.len()
    }

    /// The lane an instance uid always uses.
    pub fn lane_of(&self, instance_uid: &[u8]) -> usize {
        let hash = instance_uid.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
        (hash % self.inner.lanes.len() as u64) as usize
    }

    /// Posts one AgentToServer (with its `OpAMP-Instance-UID` header) and
    /// returns the reply whatever its status.
    pub async fn post(&self, message: &pb::AgentToServer) -> Result<HttpReply, Error> {
        self.post_via(self.lane_of(&message.instance_uid), message)
            .await
    }

    /// [`post`](Self::post) through lane `lane` (modulo the number of lanes).
    pub async fn post_via(
        &self,
        lane: usize,
        message: &pb::AgentToServer,
    ) -> Result<HttpReply, Error> {
        let uid = <[u8; 16]>::try_from(message.instance_uid.as_slice())
            .ok()
            .and_then(uid_header)
            .map(|value| (INSTANCE_UID, value));
        let headers = std::iter::once((http::header::CONTENT_TYPE, PROTOBUF_TYPE)).chain(uid);
        self.send(lane, message.encode_to_vec(), headers).await
    }

    /// Posts `body` exactly as given with only `headers` besides the
    /// transport's own (no Content-Type added, compressed only if the
    /// options say so): for testing how a server treats bad input.
    pub async fn post_bytes(
        &self,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<HttpReply, Error> {
        let headers = crate::ws::header_pairs(headers.iter().copied())?;
        self.send(0, body, headers).await
    }

    /// Posts one AgentToServer and returns the ServerToAgent of a 2xx
    /// protobuf reply; any other reply is an error carrying its status.
    pub async fn exchange(&self, message: &pb::AgentToServer) -> Result<pb::ServerToAgent, Error> {
        let reply = self.post(message).await?;
        self.expect_message(reply)
    }

    /// The ServerToAgent of a 2xx protobuf reply, or the error that says why not.
    pub fn expect_message(&self, reply: HttpReply) -> Result<pb::ServerToAgent, Error> {
        if !(200..300).contains(&reply.status) {
            return Err(Error::Status {
                url: self.inner.url.clone(),
                status: reply.status,
                retry_after: reply.retry_after(),
                body: reply.body_text(),
            });
        }
        match reply.message() {
            Some(message) => message,
            None => Err(Error::NotProtobuf {
                content_type: reply.content_type().into(),
            }),
        }
    }

    /// One request with `headers` besides the client's defaults; the reply
    /// headers and body are moved out of the response, not copied.
    async fn send(
        &self,
        lane: usize,
        body: Vec<u8>,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
    ) -> Result<HttpReply, Error> {
        let inner = &self.inner;
        let lane = &inner.lanes[lane % inner.lanes.len()];
        let _permit = match &lane.permits {
            Some(permits) => Some(permits.acquire().await.map_err(|e| Error::Http {
                url: inner.url.clone(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        let started = Instant::now();
        let mut request = lane.client.post(inner.target.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let body = if inner.gzip_requests {
            request = request.header(http::header::CONTENT_ENCODING, GZIP);
            gzip(&body)?
        } else {
            body
        };
        let http_error = |e: reqwest::Error| Error::Http {
            url: inner.url.clone(),
            reason: error_chain(&e),
        };
        let mut response = request.body(body).send().await.map_err(http_error)?;
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        let bytes = response.bytes().await.map_err(http_error)?;
        let gzipped = headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let body = if gzipped {
            Bytes::from(gunzip(&bytes)?)
        } else {
            bytes
        };
        Ok(HttpReply {
            status,
            headers,
            body,
            elapsed: started.elapsed(),
        })
    }
}

/// The `OpAMP-Instance-UID` value of `uid`: its UUID text, formatted on the
/// stack (no intermediate String).
fn uid_header(uid: [u8; 16]) -> Option<HeaderValue> {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::from_bytes(uid)
        .hyphenated()
        .encode_lower(&mut text);
    HeaderValue::from_str(text).ok()
}

/// The size of part `k` of `n` split into `parts` nearly equal parts.
fn share(n: usize, k: usize, parts: usize) -> usize {
    n / parts + usize::from(k < n % parts)
}

/// The innermost cause of a reqwest error: "connection refused", not "error sending request".
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    text
}

/// Gzip-compresses `data` (level 1: fast, as the server's replies are).
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).map_err(Error::Gzip)?;
    encoder.finish().map_err(Error::Gzip)
}

/// Decompresses a gzip body.
pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(Error::Gzip)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_shared_among_lanes() {
        assert_eq!(
            (0..3).map(|k| share(10, k, 3)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!((0..4).map(|k| share(2, k, 4)).sum::<usize>(), 2);
    }

    #[test]
    fn lanes_follow_sources_and_connections() {
        let ips: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let url = "http://127.0.0.1:1/v1/opamp";
        let t = HttpTransport::new(
            url,
            &HttpOptions::default()
                .source_ips(ips.clone())
                .connections(2),
        )
        .unwrap();
        assert_eq!(t.lanes(), 2, "never more lanes than connections");
        let t = HttpTransport::new(url, &HttpOptions::default().source_ips(ips)).unwrap();
        assert_eq!(t.lanes(), 3);
        let uid = [9u8; 16];
        assert_eq!(t.lane_of(&uid), t.lane_of(&uid), "an agent keeps its lane");
        assert_eq!(
            HttpTransport::new(url, &HttpOptions::default())
                .unwrap()
                .lanes(),
            1
        );
    }

    #[test]
    fn urls_must_be_http_urls() {
        let e = HttpTransport::new("ws://h/v1/opamp", &HttpOptions::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid OpAMP URL \"ws://h/v1/opamp\": the scheme must be http:// or https://"
        );
    }

    #[test]
    fn the_uid_header_is_the_uuid_text() {
        let uid = crate::new_uid();
        assert_eq!(uid_header(uid).unwrap(), crate::uid_string(&uid).as_str());
    }

    /// The request as a server reads it: the transport's own headers (client
    /// defaults) and the message's own, each exactly once.
    #[tokio::test]
    async fn requests_carry_every_header_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/opamp", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = stream.read(&mut buffer).await.unwrap();
                assert!(read > 0, "the request ended before its headers");
                request.extend_from_slice(&buffer[..read]);
            }
            stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\ncontent-length: 4\r\n\r\nbusy")
                .await
                .unwrap();
            String::from_utf8_lossy(&request).to_ascii_lowercase()
        });
        let options = HttpOptions::default().bearer("s3cret").accept_gzip(true);
        let transport = HttpTransport::new(&url, &options).unwrap();
        let message = crate::message::heartbeat([7; 16], 0, 0);
        let reply = transport.post(&message).await.unwrap();
        assert_eq!(reply.status, 503);
        assert_eq!(reply.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(&reply.body[..], b"busy");
        let head = server.await.unwrap();
        for line in [
            "authorization: bearer s3cret\r\n",
            "accept-encoding: gzip\r\n",
            "content-type: application/x-protobuf\r\n",
            "opamp-instance-uid: 07070707-0707-0707-0707-070707070707\r\n",
            "user-agent: opamp-agent/",
        ] {
            assert_eq!(head.matches(line).count(), 1, "{line:?} in {head}");
        }
    }

    #[test]
    fn gzip_round_trips() {
        let data = b"receivers: {}\n".repeat(50);
        let packed = gzip(&data).unwrap();
        assert!(packed.len() < data.len());
        assert_eq!(gunzip(&packed).unwrap(), data);
        assert!(matches!(gunzip(b"not gzip"), Err(Error::Gzip(_))));
    }

    #[test]
    fn replies_expose_status_type_and_retry_after() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "30".parse().unwrap());
        headers.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let reply = HttpReply {
            status: 503,
            headers,
            body: Bytes::from_static(b"too many agents\n"),
            elapsed: Duration::ZERO,
        };
        assert_eq!(reply.retry_after(), Some(Duration::from_secs(30)));
        assert!(reply.message().is_none());
        let t = HttpTransport::new("http://h/v1/opamp", &HttpOptions::default()).unwrap();
        let e = t.expect_message(reply).unwrap_err();
        assert_eq!(e.status(), Some(503));
        assert_eq!(
            e.to_string(),
            "POST http://h/v1/opamp: HTTP 503 (retry after 30 s): too many agents"
        );
    }
}
