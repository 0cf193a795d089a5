//! Listeners: accept loop, optional TLS, HTTP/1.1 + HTTP/2 with upgrades,
//! slow-client protection and graceful shutdown.
//!
//! Slow clients: request headers must arrive within `http.header_timeout_seconds`
//! (and the TLS handshake too); a REST request body within
//! `http.body_timeout_seconds` plus a second per MiB it declares
//! ([`body_deadline`]); a connection with no traffic at all for
//! `http.idle_timeout_seconds` is closed gracefully (HTTP/2: GOAWAY), so idle
//! keep-alive and HTTP/2 connections do not pile up. An upgraded connection
//! (an agent's WebSocket) has its own keep-alive and read deadline.

use anyhow::{Context, Result};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// Runs one connection: closes it gracefully on shutdown, or when it has
/// had no traffic for the idle timeout. (A macro: the connection's type
/// names the service closure.)
macro_rules! drive {
    ($conn:expr, $started:expr, $activity:expr, $in_flight:expr, $idle:expr, $shutdown:expr) => {{
        let mut conn = std::pin::pin!($conn);
        let mut shutdown = $shutdown;
        let mut closing = false;
        // After an idle close is asked, the peer has this long to finish (an
        // HTTP/2 peer must answer the GOAWAY's ping); then the socket is dropped.
        let mut gone_by: Option<tokio::time::Instant> = None;
        let quiet = || {
            $started
                .elapsed()
                .saturating_sub(Duration::from_millis($activity.load(Ordering::Acquire)))
        };
        loop {
            let check_in = $idle
                .saturating_sub(quiet())
                .max(Duration::from_millis(100));
            let wake = gone_by.unwrap_or_else(|| tokio::time::Instant::now() + check_in);
            tokio::select! {
                _ = conn.as_mut() => break,
                _ = shutdown.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep_until(wake), if !closing || gone_by.is_some() => {
                    if gone_by.is_some() {
                        tracing::debug!("dropping an idle connection that did not close");
                        break;
                    }
                    if quiet() >= $idle && $in_flight.load(Ordering::Acquire) == 0 {
                        tracing::debug!(idle_s = quiet().as_secs(), "closing an idle connection");
                        closing = true;
                        gone_by = Some(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }};
}

/// The verified client certificate of a TLS connection, as the SHA-256
/// fingerprint (lower-case hex) of its DER encoding: a request extension on
/// every request of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate(pub Arc<str>);

impl ClientCertificate {
    pub fn of(der: &[u8]) -> ClientCertificate {
        use sha2::Digest;
        ClientCertificate(hex::encode(sha2::Sha256::digest(der)).into())
    }
}

/// How long an idle connection asked to close may take to do so.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Time limits of a listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Request headers (and the TLS handshake) must arrive within this.
    pub header: Duration,
    /// A connection without any traffic for this long is closed gracefully.
    pub idle: Duration,
}

/// Serves `router` on `listener` until `shutdown` turns true, then stops
/// accepting and waits (up to `drain`) for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<tokio_rustls::TlsAcceptor>>,
    timeouts: Timeouts,
    proxies: Arc<crate::forwarded::TrustedProxies>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let header_timeout = timeouts.header;
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        // Requests being handled: a connection is not idle while its
        // server is still working on an answer (a restore, a VACUUM).
        let in_flight = Arc::new(AtomicU64::new(0));
        let counter = in_flight.clone();
        // Set once the TLS handshake is done, when the client sent a certificate.
        let peer = Arc::new(OnceLock::<ClientCertificate>::new());
        let presented = peer.clone();
        let proxies = proxies.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let client = proxies.client(remote, req.headers());
                req.extensions_mut().insert(ConnectInfo(client));
                if let Some(certificate) = presented.get() {
                    req.extensions_mut().insert(certificate.clone());
                }
                let busy = InFlight::new(counter.clone());
                let answer = router.clone().oneshot(req.map(axum::body::Body::new));
                async move {
                    let _busy = busy;
                    answer.await
                }
            });
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        // No HTTP/2 keep-alive pings: they would count as traffic and keep an
        // idle connection open forever; the idle timeout closes dead peers too.
        builder.http2().timer(TokioTimer::new());
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let open = open.clone();
        connections.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let _done = ConnectionDone(open);
            let started = Instant::now();
            let activity = Arc::new(AtomicU64::new(0));
            match tls {
                None => {
                    let io = Tracked::new(stream, started, activity.clone());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                    drive!(conn, started, activity, in_flight, timeouts.idle, shutdown);
                }
                Some(acceptor) => {
                    let Ok(Ok(tls_stream)) =
                        tokio::time::timeout(header_timeout, acceptor.accept(stream)).await
                    else {
                        tracing::debug!(remote_addr = %remote, "TLS handshake failed or timed out");
                        return;
                    };
                    if let Some(leaf) = tls_stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                    {
                        let _ = peer.set(ClientCertificate::of(leaf));
                    }
                    let io = Tracked::new(tls_stream, started, activity.clone());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                    drive!(conn, started, activity, in_flight, timeouts.idle, shutdown);
                }
            }
        });
    }
    drop(listener);
    let waiting = connections.load(Ordering::Acquire);
    let all_closed = open.acquire_many(u32::try_from(waiting).unwrap_or(u32::MAX));
    if waiting > 0 && tokio::time::timeout(drain, all_closed).await.is_err() {
        tracing::warn!("connections still open after the drain period; closing them");
    }
}

/// One request being handled, counted until its response is ready.
struct InFlight(Arc<AtomicU64>);

impl InFlight {
    fn new(counter: Arc<AtomicU64>) -> InFlight {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a connection as finished when its task ends, however it ends.
struct ConnectionDone(Arc<tokio::sync::Semaphore>);

impl Drop for ConnectionDone {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

/// An I/O stream that records when it last moved data (ms after `started`).
struct Tracked<T> {
    inner: T,
    started: Instant,
    activity: Arc<AtomicU64>,
}

impl<T> Tracked<T> {
    fn new(inner: T, started: Instant, activity: Arc<AtomicU64>) -> Self {
        Tracked {
            inner,
            started,
            activity,
        }
    }

    fn touch(&self) {
        self.activity
            .store(self.started.elapsed().as_millis() as u64, Ordering::Release);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Gives a REST request body `http.body_timeout_seconds`, plus a second per
/// MiB its Content-Length declares, to arrive in full; a body still arriving
/// after that is answered with 408 (the OpAMP endpoint has its own deadline).
pub async fn body_deadline(
    State(app): State<Arc<crate::app::App>>,
    req: Request,
    next: Next,
) -> Response {
    let declared_mib = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        >> 20;
    let allowed = Duration::from_secs(
        app.config
            .http
            .body_timeout_seconds
            .saturating_add(declared_mib),
    );
    let expired = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        axum::body::Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(allowed)),
            expired: expired.clone(),
        })
    });
    let response = next.run(req).await;
    if expired.load(Ordering::Acquire) {
        tracing::info!(
            allowed_s = allowed.as_secs(),
            "request body not received in time"
        );
        return crate::api::ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} s (http.body_timeout_seconds)",
                allowed.as_secs()
            ),
        )
        .into_response();
    }
    response
}

#[derive(Debug, thiserror::Error)]
#[error("request body not received in time")]
struct BodyTimedOut;

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: axum::body::Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if std::future::Future::poll(self.deadline.as_mut(), cx).is_ready() {
            self.expired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Builds the TLS acceptor of the operator listener (and of the agent
/// listener when none is configured) from the `tls.*` settings.
pub fn tls_acceptor(
    cfg: &crate::config::TlsConfig,
) -> Result<Option<Arc<tokio_rustls::TlsAcceptor>>> {
    let client = cfg.client_ca_file.as_deref().map(|ca| ClientAuth {
        ca_file: ca,
        required: cfg.require_client_cert,
        setting: "tls.client_ca_file",
    });
    acceptor(cfg, client)
}

/// The agent listener's acceptor: the same server certificate, its own
/// client CAs (`opamp.tls.*`; without them, the operator listener's).
pub fn agent_tls_acceptor(
    config: &crate::config::Config,
) -> Result<Option<Arc<tokio_rustls::TlsAcceptor>>> {
    let agent = &config.opamp.tls;
    match agent.client_ca_file.as_deref() {
        None => tls_acceptor(&config.tls),
        Some(ca) => acceptor(
            &config.tls,
            Some(ClientAuth {
                ca_file: ca,
                required: agent.require_client_cert,
                setting: "opamp.tls.client_ca_file",
            }),
        ),
    }
}

/// Which CAs sign a listener's client certificates.
struct ClientAuth<'a> {
    ca_file: &'a std::path::Path,
    /// Refuse a client without a certificate.
    required: bool,
    /// The setting naming `ca_file`, for errors.
    setting: &'static str,
}

fn acceptor(
    cfg: &crate::config::TlsConfig,
    client: Option<ClientAuth<'_>>,
) -> Result<Option<Arc<tokio_rustls::TlsAcceptor>>> {
    let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) else {
        return Ok(None);
    };
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("tls.cert_file {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("tls.cert_file {} is not PEM certificates", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("tls.cert_file {} holds no certificate", cert.display());
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("tls.key_file {}", key.display()))?,
    ))
    .with_context(|| format!("tls.key_file {} is not a PEM private key", key.display()))?
    .with_context(|| format!("tls.key_file {} holds no private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let (ca, setting) = (client.ca_file, client.setting);
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut std::io::BufReader::new(
                std::fs::File::open(ca).with_context(|| format!("{setting} {}", ca.display()))?,
            )) {
                roots.add(c.with_context(|| format!("{setting} {}", ca.display()))?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if client.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .with_context(|| format!("{setting}: client certificate verifier"))?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(tokio_rustls::TlsAcceptor::from(Arc::new(
        config,
    )))))
}

pub fn local_addr(l: &TcpListener) -> SocketAddr {
    l.local_addr().expect("bound listener has an address")
}
