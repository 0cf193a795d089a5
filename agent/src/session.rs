//! Drives an [`Agent`] over a transport: sends its messages, hands every
//! ServerToAgent to [`Agent::handle`] and sends what that asks for.
//!
//! Both transports implement [`Transport`]: a WebSocket (any
//! [`WebSocketStream`], see [`crate::ws`]) and an [`HttpTransport`]. On a
//! WebSocket the server can push (offers, commands) and [`Session::receive`]
//! waits for that; over plain HTTP the server answers only polls, and
//! [`Session::run_until`] polls instead.
//!
//! Package offers are carried out here: after the messages a ServerToAgent
//! leads to, the session fetches the files the agent asked for (see
//! [`crate::download`], configured with [`Session::with_downloads`]),
//! reporting progress, and hands each to [`Agent::download_finished`].
//!
//! ```no_run
//! # async fn example() -> Result<(), opamp_agent::Error> {
//! use opamp_agent::agent::{Agent, AgentSettings};
//! use opamp_agent::http::{HttpOptions, HttpTransport};
//! use opamp_agent::session::Session;
//! use std::time::Duration;
//!
//! let transport = HttpTransport::new("http://127.0.0.1:4320/v1/opamp", &HttpOptions::default())?;
//! let agent = Agent::new(AgentSettings::new(opamp_agent::new_uid()).identifying("service.name", "web"));
//! let mut session = Session::new(agent, transport);
//! session.start().await?;
//! // Poll every 100 ms until an offer has been applied, for at most 10 s.
//! session
//!     .run_until(Duration::from_secs(10), Duration::from_millis(100), |agent, _events| {
//!         agent.counters().offers_applied > 0
//!     })
//!     .await?;
//! session.disconnect().await?;
//! # Ok(())
//! # }
//! ```

use crate::agent::{Agent, Download, Event};
use crate::download::{DownloadOptions, Downloader, Failure};
use crate::error::Error;
use crate::http::HttpTransport;
use crate::pb;
use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

/// How many follow-up messages one ServerToAgent may cause, in a chain,
/// before the session stops answering (a server that sets ReportFullState
/// on every reply would otherwise never let it rest). What is left unsent
/// leaves a sequence gap, which makes the server ask for a full report: the
/// protocol's own recovery.
pub const MAX_FOLLOW_UPS: usize = 16;

/// A way to exchange OpAMP messages with a server.
pub trait Transport {
    /// Sends one message and returns the server's next message: the reply
    /// over plain HTTP; over a WebSocket the next message received, which is
    /// the reply unless the server pushed something just before.
    fn exchange(
        &mut self,
        message: &pb::AgentToServer,
    ) -> impl Future<Output = Result<pb::ServerToAgent, Error>> + Send;

    /// Waits up to `wait` for a message the server sends on its own. Over
    /// plain HTTP the server cannot push: this waits and returns `Ok(None)`.
    fn receive(
        &mut self,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<pb::ServerToAgent>, Error>> + Send;

    /// True when the server can push messages (WebSocket).
    fn pushes(&self) -> bool;
}

impl<S> Transport for WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn exchange(&mut self, message: &pb::AgentToServer) -> Result<pb::ServerToAgent, Error> {
        crate::ws::exchange(self, message).await
    }

    async fn receive(&mut self, wait: Duration) -> Result<Option<pb::ServerToAgent>, Error> {
        crate::ws::recv_timeout(self, wait).await
    }

    fn pushes(&self) -> bool {
        true
    }
}

impl Transport for HttpTransport {
    async fn exchange(&mut self, message: &pb::AgentToServer) -> Result<pb::ServerToAgent, Error> {
        HttpTransport::exchange(self, message).await
    }

    async fn receive(&mut self, wait: Duration) -> Result<Option<pb::ServerToAgent>, Error> {
        tokio::time::sleep(wait).await;
        Ok(None)
    }

    fn pushes(&self) -> bool {
        false
    }
}

/// An agent connected through a transport.
#[derive(Debug)]
pub struct Session<T> {
    agent: Agent,
    transport: T,
    events: Vec<Event>,
    /// Files the agent asked for, not fetched yet.
    downloads: VecDeque<Download>,
    downloader: Option<Downloader>,
}

impl<T: Transport> Session<T> {
    pub fn new(agent: Agent, transport: T) -> Session<T> {
        Session {
            agent,
            transport,
            events: Vec::new(),
            downloads: VecDeque::new(),
            downloader: None,
        }
    }

    /// Fetches package files with `options` (the agent's credentials, TLS)
    /// instead of a plain client without headers.
    pub fn with_downloads(mut self, options: DownloadOptions) -> Result<Session<T>, Error> {
        self.downloader = Some(Downloader::new(options)?);
        Ok(self)
    }

    /// Bytes kept from interrupted transfers of the file with `content_hash`.
    pub fn partial_download_len(&self, content_hash: &[u8]) -> u64 {
        self.downloader
            .as_ref()
            .map_or(0, |d| d.partial_len(content_hash))
    }

    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    pub fn agent_mut(&mut self) -> &mut Agent {
        &mut self.agent
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The agent and the transport, apart.
    pub fn into_parts(self) -> (Agent, T) {
        (self.agent, self.transport)
    }

    /// The events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The events not taken yet.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Sends the full report (the first message) and handles the reply.
    pub async fn start(&mut self) -> Result<pb::ServerToAgent, Error> {
        let message = self.agent.full_report();
        self.send(message).await
    }

    /// Sends a heartbeat (or the full report the server asked for).
    pub async fn heartbeat(&mut self) -> Result<pb::ServerToAgent, Error> {
        let message = self.agent.heartbeat();
        self.send(message).await
    }

    /// Reports a new health.
    pub async fn set_health(
        &mut self,
        health: pb::ComponentHealth,
    ) -> Result<pb::ServerToAgent, Error> {
        let message = self.agent.set_health(health);
        self.send(message).await
    }

    /// Sends `agent_disconnect` and returns the reply.
    pub async fn disconnect(&mut self) -> Result<pb::ServerToAgent, Error> {
        let message = self.agent.disconnect();
        self.send(message).await
    }

    /// Sends `message` (built by the agent, or by hand), handles the reply
    /// and the exchanges it leads to; returns the reply.
    pub async fn send(&mut self, message: pb::AgentToServer) -> Result<pb::ServerToAgent, Error> {
        let reply = self.transport.exchange(&message).await?;
        self.answer(&reply).await?;
        Ok(reply)
    }

    /// Waits up to `wait` for a message the server pushes, and handles it.
    pub async fn receive(&mut self, wait: Duration) -> Result<Option<pb::ServerToAgent>, Error> {
        let Some(message) = self.transport.receive(wait).await? else {
            return Ok(None);
        };
        self.answer(&message).await?;
        Ok(Some(message))
    }

    /// Lives until `done(agent, events so far)` holds: on a WebSocket it
    /// handles what the server pushes and sends a heartbeat when nothing came
    /// for `heartbeat`; over plain HTTP it polls every `heartbeat`. Fails
    /// with [`Error::Timeout`] after `limit`.
    pub async fn run_until(
        &mut self,
        limit: Duration,
        heartbeat: Duration,
        mut done: impl FnMut(&Agent, &[Event]) -> bool,
    ) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if done(&self.agent, &self.events) {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::Timeout(limit));
            }
            let wait = heartbeat.min(deadline - now);
            if self.transport.pushes() {
                if self.receive(wait).await?.is_none() {
                    self.heartbeat().await?;
                }
            } else {
                self.heartbeat().await?;
                if !done(&self.agent, &self.events) {
                    self.transport.receive(wait).await?;
                }
            }
        }
    }

    /// Hands `message` to the agent, exchanges what it asks for, in turn,
    /// then fetches the files it asked for.
    async fn answer(&mut self, message: &pb::ServerToAgent) -> Result<(), Error> {
        let follow_ups = self.react(message);
        self.exchange_all(follow_ups).await?;
        while let Some(download) = self.downloads.pop_front() {
            let outcome = self.fetch(&download).await?;
            let reaction = self.agent.download_finished(&download, outcome);
            self.events.extend(reaction.events);
            self.downloads.extend(reaction.downloads);
            self.exchange_all(reaction.messages).await?;
        }
        Ok(())
    }

    /// Fetches one file, resuming after interruptions and reporting
    /// progress; the file or why there is none.
    async fn fetch(&mut self, download: &Download) -> Result<Result<Vec<u8>, String>, Error> {
        if self.downloader.is_none() {
            self.downloader = Some(Downloader::new(DownloadOptions::default())?);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.fetch_once(download).await? {
                Ok(bytes) => return Ok(Ok(bytes)),
                Err(failure) => failure,
            };
            let attempts = self.downloader.as_ref().map_or(1, |d| d.options().attempts);
            match failure {
                Failure::Interrupted { received, reason } if attempt < attempts => {
                    self.events.push(Event::DownloadInterrupted {
                        name: download.name.clone(),
                        received,
                        reason,
                    });
                }
                Failure::Interrupted { reason, .. } | Failure::Final(reason) => {
                    return Ok(Err(format!(
                        "download of {} failed: {reason}",
                        download.url
                    )));
                }
            }
        }
    }

    /// One attempt; progress reports are exchanged as the bytes arrive.
    async fn fetch_once(&mut self, download: &Download) -> Result<Result<Vec<u8>, Failure>, Error> {
        let Some(mut downloader) = self.downloader.take() else {
            return Ok(Err(Failure::Final("no downloader".into())));
        };
        let step = downloader.options().progress_step_percent.max(1.0);
        let result = async {
            let mut transfer = match downloader.start(download).await {
                Ok(transfer) => transfer,
                Err(failure) => return Ok(Err(failure)),
            };
            let mut next_report = 0.0;
            loop {
                let total = transfer.total();
                let percent = if total == 0 {
                    0.0
                } else {
                    transfer.received() as f64 * 100.0 / total as f64
                };
                if percent >= next_report && percent < 100.0 {
                    next_report = (percent / step).floor() * step + step;
                    if let Some(m) = self.agent.download_progress(
                        &download.name,
                        transfer.received(),
                        total,
                        transfer.rate(),
                    ) {
                        self.exchange_all(vec![m]).await?;
                    }
                }
                match transfer.next().await {
                    Ok(true) => {}
                    Ok(false) => return Ok(Ok(transfer.finish())),
                    Err(failure) => return Ok(Err(failure)),
                }
            }
        }
        .await;
        self.downloader = Some(downloader);
        result
    }

    /// Exchanges `messages` and what their replies lead to, in turn (files
    /// asked for are queued, not fetched).
    async fn exchange_all(&mut self, messages: Vec<pb::AgentToServer>) -> Result<(), Error> {
        let mut pending: VecDeque<pb::AgentToServer> = messages.into();
        let mut budget = MAX_FOLLOW_UPS;
        while let Some(next) = pending.pop_front() {
            if budget == 0 {
                break;
            }
            budget -= 1;
            let reply = self.transport.exchange(&next).await?;
            pending.extend(self.react(&reply));
        }
        Ok(())
    }

    fn react(&mut self, message: &pb::ServerToAgent) -> Vec<pb::AgentToServer> {
        let reaction = self.agent.handle(message);
        self.events.extend(reaction.events);
        self.downloads.extend(reaction.downloads);
        reaction.messages
    }
}
