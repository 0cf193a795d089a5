//! Plain-HTTP transport: one POST, one AgentToServer, one ServerToAgent.

use super::reply::Reply;
use super::{encode_reply, plain, process, Origin, Rejected, PROTOBUF};
use crate::app::App;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use opamp_proto::pb;
use prost::Message;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Replies smaller than this are not worth compressing.
const GZIP_MIN_BYTES: usize = 256;

pub async fn exchange(
    app: Arc<App>,
    remote: SocketAddr,
    certificate: Option<Arc<str>>,
    req: Request,
) -> Response {
    let limit = app.config.opamp.max_message_bytes;
    let gzip = match req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("identity") => false,
        Some(v) if v.eq_ignore_ascii_case("gzip") => true,
        Some(_) => {
            return plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported Content-Encoding: send gzip or no encoding\n",
            )
        }
    };
    let accepts_gzip = accepts_gzip(req.headers());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large(limit);
    }
    let timeout = Duration::from_secs(app.config.http.body_timeout_seconds);
    let body =
        match tokio::time::timeout(timeout, axum::body::to_bytes(req.into_body(), limit)).await {
            Err(_) => {
                return plain(
                    StatusCode::REQUEST_TIMEOUT,
                    "request body not received in time\n",
                )
            }
            Ok(Err(e)) => {
                let length_limit = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                    || e.to_string().contains("length limit");
                if length_limit {
                    return too_large(limit);
                }
                return plain(StatusCode::BAD_REQUEST, "could not read the request body\n");
            }
            Ok(Ok(b)) => b,
        };
    let msg = match decode_body(&body, gzip, limit) {
        Ok(m) => m,
        Err(BodyError::TooLarge) => return too_large(limit),
        Err(e) => {
            return protobuf_reply(
                StatusCode::BAD_REQUEST,
                Reply::bad_request(Vec::new(), e.to_string()),
                false,
            )
        }
    };
    let origin = Origin {
        transport: super::session::Transport::Http,
        conn_id: 0,
        remote,
        certificate,
    };
    match process(&app, &msg, &origin).await {
        Ok((out, _)) => {
            let unavailable = out
                .reply
                .error_response
                .as_ref()
                .is_some_and(|e| e.r#type == pb::ServerErrorResponseType::Unavailable as i32);
            let bytes = encode_reply(&app, out.reply);
            if unavailable {
                let mut r = encoded_reply(StatusCode::SERVICE_UNAVAILABLE, bytes, false);
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(app.config.opamp.retry_after_seconds),
                );
                return r;
            }
            encoded_reply(StatusCode::OK, bytes, accepts_gzip)
        }
        Err(Rejected::BadRequest(reply)) => protobuf_reply(StatusCode::BAD_REQUEST, *reply, false),
        Err(Rejected::Full { .. }) => {
            let mut r = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "opampd is at its configured maximum of agents; retry later\n",
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(app.config.opamp.retry_after_seconds),
            );
            r
        }
        Err(Rejected::Busy { .. }) => {
            let mut r = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "opampd is overloaded (database writer queue full); retry later\n",
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(app.config.opamp.retry_after_seconds),
            );
            r
        }
        Err(Rejected::Held { .. }) => plain(
            StatusCode::CONFLICT,
            "this instance uid is in use by a live WebSocket connection of another client\n",
        ),
        Err(Rejected::Foreign { .. }) => plain(
            StatusCode::FORBIDDEN,
            "this instance uid is bound to another client certificate: connect with the certificate it registered with\n",
        ),
    }
}

fn too_large(limit: usize) -> Response {
    let msg = format!("AgentToServer exceeds opamp.max_message_bytes ({limit} bytes, measured after decompression)\n");
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg,
    )
        .into_response()
}

fn protobuf_reply(status: StatusCode, reply: Reply, gzip: bool) -> Response {
    encoded_reply(status, reply.encode_to_vec(), gzip)
}

fn encoded_reply(status: StatusCode, bytes: Vec<u8>, gzip: bool) -> Response {
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, PROTOBUF);
    let body = if gzip && bytes.len() >= GZIP_MIN_BYTES {
        builder = builder.header(header::CONTENT_ENCODING, "gzip");
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(bytes.len() / 2),
            flate2::Compression::fast(),
        );
        std::io::Write::write_all(&mut enc, &bytes).expect("in-memory write");
        enc.finish().expect("in-memory write")
    } else {
        bytes
    };
    builder
        .header(header::VARY, "Accept-Encoding")
        .body(Body::from(body))
        .expect("static headers are valid")
}

/// Whether `Accept-Encoding` allows gzip (q-values honoured).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip_q: Option<f32> = None;
    let mut star_q: Option<f32> = None;
    for v in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for part in v.split(',') {
            let mut it = part.split(';');
            let coding = it.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = it
                .filter_map(|p| p.trim().strip_prefix("q="))
                .filter_map(|q| q.trim().parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            match coding.as_str() {
                "gzip" | "x-gzip" => gzip_q = Some(q),
                "*" => star_q = Some(q),
                _ => {}
            }
        }
    }
    gzip_q.or(star_q).is_some_and(|q| q > 0.0)
}

enum GunzipError {
    TooLarge,
    Corrupt(std::io::Error),
}

/// Why a plain-HTTP body is not an AgentToServer.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    BadGzip(std::io::Error),
    BadProtobuf(prost::DecodeError),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge => write!(
                f,
                "message exceeds opamp.max_message_bytes after decompression"
            ),
            BodyError::BadGzip(e) => write!(f, "request body is not valid gzip: {e}"),
            BodyError::BadProtobuf(e) => write!(f, "malformed AgentToServer: {e}"),
        }
    }
}

/// Decompresses (if `gzip`) within `limit` and decodes a request body.
pub fn decode_body(body: &[u8], gzip: bool, limit: usize) -> Result<pb::AgentToServer, BodyError> {
    if body.len() > limit {
        return Err(BodyError::TooLarge);
    }
    let inflated;
    let payload = if gzip {
        inflated = gunzip_limited(body, limit).map_err(|e| match e {
            GunzipError::TooLarge => BodyError::TooLarge,
            GunzipError::Corrupt(e) => BodyError::BadGzip(e),
        })?;
        inflated.as_slice()
    } else {
        body
    };
    pb::AgentToServer::decode(payload).map_err(BodyError::BadProtobuf)
}

/// Decompresses at most `limit` bytes; more is an error (a gzip bomb stops here).
fn gunzip_limited(data: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    let mut dec = flate2::read::MultiGzDecoder::new(data).take(limit as u64 + 1);
    dec.read_to_end(&mut out).map_err(GunzipError::Corrupt)?;
    if out.len() > limit {
        return Err(GunzipError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(accept: &str, expected: bool) {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap(),
        );
        assert_eq!(accepts_gzip(&h), expected, "{accept}");
    }

    #[test]
    fn accept_encoding_q_values() {
        check("gzip", true);
        check("deflate, gzip;q=0.5", true);
        check("gzip;q=0", false);
        check("identity", false);
        check("*", true);
        check("*;q=0, br", false);
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn gunzip_stops_at_the_limit() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut enc, &vec![0u8; 1 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(matches!(
            gunzip_limited(&bomb, 1000),
            Err(GunzipError::TooLarge)
        ));
        assert_eq!(
            gunzip_limited(&bomb, 1 << 20).ok().map(|v| v.len()),
            Some(1 << 20)
        );
        assert!(matches!(
            gunzip_limited(b"not gzip", 1000),
            Err(GunzipError::Corrupt(_))
        ));
    }
}
