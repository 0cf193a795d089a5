//! Every wire contract of opampd, and no I/O.
//!
//! - [`pb`]: the OpAMP v1 protobuf messages (package `opamp.proto.v1`).
//! - [`frame`]: the WebSocket message header (a varint that must be 0).
//! - [`caps`]: capability bit names for both sides.
//! - [`api`]: the REST JSON types shared by opampd and opampctl.

pub mod api;
pub mod caps;
pub mod frame;

/// OpAMP v1 messages generated from `proto/opamp/v1/*.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/opamp.proto.v1.rs"));
}

/// The canonical lowercase UUID string of a 16-byte instance uid.
pub fn uid_string(uid: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*uid).hyphenated().to_string()
}

/// Parses an instance uid given as a UUID string (with or without dashes).
pub fn parse_uid(s: &str) -> Option<[u8; 16]> {
    uuid::Uuid::parse_str(s.trim()).ok().map(|u| *u.as_bytes())
}
