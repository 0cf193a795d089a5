//! The OpAMP WebSocket message header.
//!
//! Each WebSocket binary message is `varint(header) ++ protobuf`. The header is
//! 0 in OpAMP v1; any other value makes the message malformed.

use std::fmt;

/// Why a WebSocket message could not be split into header and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The message was empty: not even a header byte.
    Empty,
    /// The varint ran past 10 bytes or past the end of the message.
    BadVarint,
    /// The header decoded to a value other than 0.
    NonZeroHeader(u64),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Empty => write!(
                f,
                "empty WebSocket message: the OpAMP header byte is missing"
            ),
            FrameError::BadVarint => write!(f, "malformed OpAMP WebSocket header: invalid varint"),
            FrameError::NonZeroHeader(v) => {
                write!(
                    f,
                    "unsupported OpAMP WebSocket header {v}: only 0 is defined"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Splits a WebSocket message into its protobuf payload, checking the header.
pub fn decode(msg: &[u8]) -> Result<&[u8], FrameError> {
    let mut value: u64 = 0;
    for (i, byte) in msg.iter().enumerate() {
        if i >= 10 {
            return Err(FrameError::BadVarint);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if value != 0 {
                return Err(FrameError::NonZeroHeader(value));
            }
            return Ok(&msg[i + 1..]);
        }
    }
    if msg.is_empty() {
        Err(FrameError::Empty)
    } else {
        Err(FrameError::BadVarint)
    }
}

/// Prefixes a protobuf payload with the v1 header (the single byte 0).
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 1);
    out.push(0);
    out.extend_from_slice(payload);
    out
}

/// Encodes a prost message as a complete WebSocket message.
pub fn encode_message<M: prost::Message>(msg: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.encoded_len() + 1);
    out.push(0);
    msg.encode(&mut out).expect("Vec grows as needed");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &[u8], expected: Result<&[u8], FrameError>) {
        assert_eq!(decode(input), expected);
    }

    #[test]
    fn zero_header_strips_one_byte() {
        check(&[0, 8, 1], Ok(&[8, 1]));
    }

    #[test]
    fn header_only_is_an_empty_message() {
        check(&[0], Ok(&[]));
    }

    #[test]
    fn empty_input_is_refused() {
        check(&[], Err(FrameError::Empty));
    }

    #[test]
    fn non_zero_header_is_refused() {
        check(&[1, 8], Err(FrameError::NonZeroHeader(1)));
        check(&[0x80, 0x01], Err(FrameError::NonZeroHeader(128)));
    }

    #[test]
    fn zero_in_long_varint_form_is_accepted() {
        check(&[0x80, 0x00, 7], Ok(&[7]));
    }

    #[test]
    fn unterminated_varint_is_refused() {
        check(&[0x80, 0x80], Err(FrameError::BadVarint));
        check(&[0x80; 11], Err(FrameError::BadVarint));
    }

    #[test]
    fn encode_roundtrips() {
        let framed = encode(&[1, 2, 3]);
        assert_eq!(decode(&framed), Ok(&[1u8, 2, 3][..]));
    }
}
