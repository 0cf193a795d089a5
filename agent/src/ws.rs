//! The WebSocket transport.
//!
//! A connection is tokio-tungstenite's [`WebSocketStream`]; the functions of
//! this module speak OpAMP on it (the `0x00` header, prost encoding, pings
//! skipped while reading). For anything OpAMP does not define — text
//! frames, raw bytes, close codes — use the stream itself with
//! [`futures_util::SinkExt`] and [`futures_util::StreamExt`].
//!
//! [`WsConnector`] prepares everything once (URL, headers, TLS) and then
//! opens as many connections as asked, each from an optional source
//! address: that is how a load generator opens thousands of them.
//!
//! ```no_run
//! # async fn example() -> Result<(), opamp_agent::Error> {
//! use opamp_agent::{message, tls::TlsOptions, ws};
//!
//! let options = ws::WsOptions::default()
//!     .bearer("agent-secret")
//!     .tls(TlsOptions::default().with_ca_file("ca.pem").with_client_cert("agent.pem", "agent.key"));
//! let mut socket = ws::connect("wss://opamp.example:4320/v1/opamp", &options).await?;
//! let uid = opamp_agent::new_uid();
//! let reply = ws::exchange(&mut socket, &message::heartbeat(uid, 0, message::TYPICAL_CAPABILITIES)).await?;
//! ws::send(&mut socket, &message::disconnect(uid, 1, message::TYPICAL_CAPABILITIES)).await?;
//! ws::close(&mut socket).await;
//! # let _ = reply;
//! # Ok(())
//! # }
//! ```

use crate::error::Error;
use crate::tls::TlsOptions;
use crate::{frame, pb};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
pub use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
pub use tokio_tungstenite::tungstenite::Message;
pub use tokio_tungstenite::WebSocketStream;

/// A WebSocket opened by this module: plain TCP or TLS underneath.
pub type WebSocket = WebSocketStream<Stream>;

/// How to open WebSocket connections.
#[derive(Debug, Clone, Default)]
pub struct WsOptions {
    /// Extra request headers (`Authorization`, a proxy's headers, ...).
    pub headers: Vec<(String, String)>,
    /// TLS settings for `wss://`.
    pub tls: TlsOptions,
    /// The local address to connect from; `None` lets the system choose.
    pub source_ip: Option<IpAddr>,
    /// tungstenite's settings (buffer sizes, message size limits).
    pub config: Option<WebSocketConfig>,
    /// Limit for TCP connect, TLS handshake and upgrade together.
    pub connect_timeout: Option<Duration>,
    /// The server's socket address, resolved beforehand: connections go
    /// there instead of resolving the URL's host each time. The Host header
    /// and the TLS server name still come from the URL.
    pub server_addr: Option<SocketAddr>,
}

impl WsOptions {
    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> WsOptions {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds `Authorization: Bearer SECRET` (the way opampd takes agent secrets).
    pub fn bearer(self, secret: &str) -> WsOptions {
        self.header("authorization", &format!("Bearer {secret}"))
    }

    /// Sets the TLS settings.
    pub fn tls(mut self, tls: TlsOptions) -> WsOptions {
        self.tls = tls;
        self
    }

    /// Connects from this local address.
    pub fn source_ip(mut self, ip: IpAddr) -> WsOptions {
        self.source_ip = Some(ip);
        self
    }

    /// Read and write buffers of `bytes` each: small buffers let one process
    /// hold many thousands of connections.
    pub fn buffer_size(mut self, bytes: usize) -> WsOptions {
        let config = self.config.unwrap_or_default();
        self.config = Some(config.read_buffer_size(bytes).write_buffer_size(bytes));
        self
    }

    /// Gives up on a connection attempt after `limit`.
    pub fn connect_timeout(mut self, limit: Duration) -> WsOptions {
        self.connect_timeout = Some(limit);
        self
    }

    /// Connects to `addr` without resolving the URL's host: a load
    /// generator opening thousands of connections resolves it once.
    pub fn server_addr(mut self, addr: SocketAddr) -> WsOptions {
        self.server_addr = Some(addr);
        self
    }
}

/// Opens one WebSocket to `url` (`ws://` or `wss://`).
pub async fn connect(url: &str, options: &WsOptions) -> Result<WebSocket, Error> {
    WsConnector::new(url, options)?.connect().await
}

/// Everything needed to open connections to one URL, prepared once: the
/// URL checked, the headers validated, the TLS configuration loaded.
#[derive(Clone)]
pub struct WsConnector {
    url: String,
    host: String,
    port: u16,
    headers: http::HeaderMap,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    options: WsOptions,
}

impl std::fmt::Debug for WsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConnector")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl WsConnector {
    /// Checks `url` and `options` and loads the TLS files.
    pub fn new(url: &str, options: &WsOptions) -> Result<WsConnector, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.into(),
            reason: reason.into(),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(invalid("the scheme must be ws:// or wss://")),
        };
        let host = uri
            .host()
            .ok_or_else(|| invalid("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let headers = header_map(&options.headers)?;
        let tls = if secure {
            let config = crate::tls::client_config(&options.tls)?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| invalid(&format!("the host is not a valid TLS server name: {e}")))?;
            Some((tokio_rustls::TlsConnector::from(config), name))
        } else {
            None
        };
        Ok(WsConnector {
            url: url.into(),
            host,
            port,
            headers,
            tls,
            options: options.clone(),
        })
    }

    /// The URL connections go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a connection from the source address of the options.
    pub async fn connect(&self) -> Result<WebSocket, Error> {
        self.connect_from(self.options.source_ip).await
    }

    /// Opens a connection from `source_ip` (or any address).
    pub async fn connect_from(&self, source_ip: Option<IpAddr>) -> Result<WebSocket, Error> {
        let attempt = self.open(source_ip);
        match self.options.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, attempt)
                .await
                .map_err(|_| Error::Timeout(limit))?,
            None => attempt.await,
        }
    }

    async fn open(&self, source_ip: Option<IpAddr>) -> Result<WebSocket, Error> {
        let addr = self.resolve(source_ip).await?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|source| Error::Connect {
            addr: addr.to_string(),
            source,
        })?;
        if let Some(ip) = source_ip {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|source| Error::Bind { ip, source })?;
        }
        let tcp = socket
            .connect(addr)
            .await
            .map_err(|source| Error::Connect {
                addr: addr.to_string(),
                source,
            })?;
        // Small messages, one outstanding at a time: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| Error::Handshake {
                        host: self.host.clone(),
                        source,
                    })?;
                Stream::Tls(Box::new(tls))
            }
        };
        let mut request = self.url.as_str().into_client_request()?;
        request
            .headers_mut()
            .extend(self.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        let (socket, _response) =
            tokio_tungstenite::client_async_with_config(request, stream, self.options.config)
                .await?;
        Ok(socket)
    }

    async fn resolve(&self, source_ip: Option<IpAddr>) -> Result<SocketAddr, Error> {
        if let Some(addr) = self.options.server_addr {
            return Ok(addr);
        }
        let resolve_error = |source| Error::Resolve {
            host: self.host.clone(),
            source,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(resolve_error)?
            .collect();
        let same_family = |a: &&SocketAddr| source_ip.is_none_or(|ip| ip.is_ipv4() == a.is_ipv4());
        addrs
            .iter()
            .find(same_family)
            .or(addrs.first())
            .copied()
            .ok_or_else(|| resolve_error(std::io::Error::other("no address")))
    }
}

/// Validates header names and values.
pub(crate) fn header_pairs<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, Error> {
    headers
        .into_iter()
        .map(|(name, value)| {
            let invalid = |reason: String| Error::InvalidHeader {
                name: name.into(),
                reason,
            };
            let key = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| invalid(e.to_string()))?;
            let value = http::HeaderValue::from_str(value)
                .map_err(|_| invalid("the value has characters a header cannot carry".into()))?;
            Ok((key, value))
        })
        .collect()
}

/// Validates header names and values into a map.
pub(crate) fn header_map(headers: &[(String, String)]) -> Result<http::HeaderMap, Error> {
    let mut map = http::HeaderMap::new();
    for (key, value) in header_pairs(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))? {
        map.append(key, value);
    }
    Ok(map)
}

/// Sends one AgentToServer (header 0, then the protobuf).
pub async fn send<S>(
    socket: &mut WebSocketStream<S>,
    message: &pb::AgentToServer,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    socket
        .send(Message::Binary(frame::encode_message(message).into()))
        .await
        .map_err(Error::from)
}

/// Sends bytes as one binary message, exactly as given (no header added):
/// for testing how a server treats a wrong header or garbage.
pub async fn send_bytes<S>(socket: &mut WebSocketStream<S>, bytes: Vec<u8>) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    socket
        .send(Message::Binary(bytes.into()))
        .await
        .map_err(Error::from)
}

/// The next ServerToAgent; pings and pongs are skipped (reading answers
/// pings). A close, a text message or a malformed message is an error.
pub async fn recv<S>(socket: &mut WebSocketStream<S>) -> Result<pb::ServerToAgent, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match socket.next().await {
            Some(Ok(Message::Binary(bytes))) => return decode(&bytes),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(close))) => {
                return Err(Error::Closed {
                    code: close.as_ref().map(|c| u16::from(c.code)),
                    reason: close.map(|c| c.reason.to_string()).unwrap_or_default(),
                })
            }
            Some(Ok(Message::Text(text))) => {
                return Err(Error::UnexpectedMessage(format!(
                    "a text message ({} bytes): OpAMP uses binary messages",
                    text.len()
                )))
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(Error::Closed {
                    code: None,
                    reason: String::new(),
                })
            }
        }
    }
}

/// [`recv`] with a limit: `Ok(None)` when nothing arrived within `wait`.
pub async fn recv_timeout<S>(
    socket: &mut WebSocketStream<S>,
    wait: Duration,
) -> Result<Option<pb::ServerToAgent>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(wait, recv(socket)).await {
        Ok(result) => result.map(Some),
        Err(_) => Ok(None),
    }
}

/// Sends a message and returns the next ServerToAgent: its reply, unless
/// the server pushed something (an offer, a command) just before.
pub async fn exchange<S>(
    socket: &mut WebSocketStream<S>,
    message: &pb::AgentToServer,
) -> Result<pb::ServerToAgent, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send(socket, message).await?;
    recv(socket).await
}

/// Closes with 1000 (normal) and waits up to a second for the server's close.
pub async fn close<S>(socket: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = socket.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// Decodes one binary WebSocket message from the server.
pub fn decode(bytes: &[u8]) -> Result<pb::ServerToAgent, Error> {
    let payload = frame::decode(bytes)?;
    Ok(pb::ServerToAgent::decode(payload)?)
}

/// The byte stream under a [`WebSocket`]: TCP, or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> String {
        WsConnector::new(url, &WsOptions::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn urls_must_be_websocket_urls() {
        assert_eq!(
            refused("http://127.0.0.1:1/v1/opamp"),
            "invalid OpAMP URL \"http://127.0.0.1:1/v1/opamp\": the scheme must be ws:// or wss://"
        );
        assert!(refused("ws://").starts_with("invalid OpAMP URL \"ws://\""));
    }

    #[test]
    fn ports_default_by_scheme_and_ipv6_hosts_lose_their_brackets() {
        let c = WsConnector::new("ws://[::1]/v1/opamp", &WsOptions::default()).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 80));
        let c = WsConnector::new("wss://127.0.0.1/v1/opamp", &WsOptions::default()).unwrap();
        assert_eq!(c.port, 443);
        assert!(c.tls.is_some());
    }

    #[test]
    fn bad_headers_are_named() {
        let options = WsOptions::default().header("bad header", "x");
        let e = WsConnector::new("ws://h/v1/opamp", &options).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid header \"bad header\""),
            "{e}"
        );
        let options = WsOptions::default().bearer("line\nbreak");
        let e = WsConnector::new("ws://h/v1/opamp", &options).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid header \"authorization\": the value has characters a header cannot carry"
        );
    }

    #[test]
    fn decode_checks_the_header_then_the_protobuf() {
        let reply = pb::ServerToAgent {
            instance_uid: vec![1; 16],
            capabilities: 1,
            ..Default::default()
        };
        assert_eq!(decode(&frame::encode_message(&reply)).unwrap(), reply);
        assert!(matches!(decode(&[1, 0]), Err(Error::Frame(_))));
        assert!(matches!(decode(&[0, 0xff, 0xff]), Err(Error::Decode(_))));
    }
}
