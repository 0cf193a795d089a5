//! The agent side of OpAMP v1: build `AgentToServer` messages, exchange them
//! over a WebSocket or plain HTTP (with TLS), and simulate an agent that
//! answers the server as the specification asks.
//!
//! Layout:
//!
//! - [`message`]: builders for every message an agent sends (`kv`,
//!   descriptions, heartbeats, full reports, remote-config status, health,
//!   effective config, `agent_disconnect`). They return plain prost structs,
//!   so a test can change any field afterwards and send something wrong on
//!   purpose.
//! - [`ws`]: the WebSocket transport (`ws://` and `wss://`, extra headers,
//!   source address, buffer sizes, raw frames for bad-input tests).
//! - [`http`]: the plain-HTTP transport (`POST application/x-protobuf`, gzip
//!   both ways, status and headers of every reply, a bounded set of keep-alive
//!   connections shared by many agents, source addresses).
//! - [`tls`]: the rustls client configuration both transports use (custom CA
//!   file, client certificate for mTLS, or a complete configuration).
//! - [`agent`]: the agent state machine, pure logic without I/O: sequence
//!   numbers, full-state requests, remote-config offers, new instance uids,
//!   restart commands.
//! - [`session`]: drives an [`agent::Agent`] over either transport.
//! - [`download`]: package files over HTTP(S) (credentials, `Range`
//!   resumption, progress), for the sessions' package offers.
//! - [`error`]: the one error type of the crate.
//!
//! The wire types, the WebSocket header and the capability bits come from
//! [`opamp_proto`] and are re-exported here as [`pb`], [`frame`] and [`caps`].
//!
//! ```no_run
//! # async fn example() -> Result<(), opamp_agent::Error> {
//! use opamp_agent::{agent::{Agent, AgentSettings}, session::Session, ws};
//!
//! let settings = AgentSettings::new(opamp_agent::new_uid())
//!     .identifying("service.name", "collector")
//!     .non_identifying("host.name", "web-1");
//! let connection = ws::connect("ws://127.0.0.1:4320/v1/opamp", &ws::WsOptions::default()).await?;
//! let mut session = Session::new(Agent::new(settings), connection);
//! let first_reply = session.start().await?;
//! assert!(first_reply.error_response.is_none());
//! # Ok(())
//! # }
//! ```

pub mod agent;
pub mod download;
pub mod error;
pub mod http;
pub mod message;
pub mod session;
pub mod tls;
pub mod ws;

pub use error::Error;

/// The README's example, compiled as a doc test so that it stays right.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExample;
pub use opamp_proto::{caps, frame, pb};

/// A fresh instance uid: a UUID v7, as the specification recommends.
pub fn new_uid() -> [u8; 16] {
    *uuid::Uuid::now_v7().as_bytes()
}

/// The canonical lowercase UUID string of an instance uid, as the REST API shows it.
pub fn uid_string(uid: &[u8; 16]) -> String {
    opamp_proto::uid_string(uid)
}
