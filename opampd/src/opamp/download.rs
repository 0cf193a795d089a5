//! `GET /v1/packages/{name}/{version}/files/{os}/{arch}`: hosted package
//! files served to agents, with the credentials of the OpAMP endpoint
//! (agent secret, and on the agent listener its client certificates).
//!
//! The ETag is the file's SHA-256; one `Range` (`bytes=N-`, `bytes=N-M`,
//! `bytes=-N`) is answered with 206 and `Content-Range` so an interrupted
//! download resumes, a range past the end with 416; `If-Range` with another
//! ETag gets the whole file. The file is checked against its SHA-256 first
//! (see [`crate::packages::hosted`]): a file that no longer matches is
//! refused with 410 and an error in the log.

use super::{plain, refuse_agent};
use crate::app::App;
use crate::packages::hosted::OpenError;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The part of a file a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Whole,
    /// `start..=end`.
    Part {
        start: u64,
        end: u64,
    },
    /// Starts past the end.
    Unsatisfiable,
}

/// The span a `Range` header asks of a file of `size` bytes. Only one
/// `bytes` range is honoured; anything else is served whole, as RFC 9110
/// allows.
pub fn span(range: Option<&str>, size: u64) -> Span {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Span::Whole;
    };
    if spec.contains(',') {
        return Span::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Span::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |n: &str| n.parse::<u64>().ok();
    let (start, end) = match (first.is_empty(), last.is_empty()) {
        // The last N bytes.
        (true, false) => match parse(last) {
            Some(0) => return Span::Unsatisfiable,
            Some(n) => (size.saturating_sub(n), size.saturating_sub(1)),
            None => return Span::Whole,
        },
        (false, true) => match parse(first) {
            Some(start) => (start, size.saturating_sub(1)),
            None => return Span::Whole,
        },
        (false, false) => match (parse(first), parse(last)) {
            (Some(start), Some(end)) if end >= start => (start, end.min(size.saturating_sub(1))),
            _ => return Span::Whole,
        },
        (true, true) => return Span::Whole,
    };
    if start >= size {
        return Span::Unsatisfiable;
    }
    if start == 0 && end + 1 == size {
        return Span::Whole;
    }
    Span::Part { start, end }
}

/// Path of the download route: name, version, os, arch.
type FilePath = Path<(String, String, String, String)>;

pub async fn serve(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path((name, version, os, arch)): FilePath,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refuse_agent(&app, &headers, remote) {
        return refused;
    }
    let package = match app.store.package(&name, &version).await {
        Ok(package) => package,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot read the package catalogue");
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the package catalogue cannot be read now; retry later\n",
            );
        }
    };
    let Some(file) = package
        .and_then(|p| p.files.into_iter().find(|f| f.os == os && f.arch == arch))
        .filter(|f| f.hosted)
    else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no hosted file for {os}/{arch} of package {name} {version}\n"),
        );
    };
    let etag = format!("\"{}\"", file.sha256);
    let opened = match app.hosted.open_checked(&file.sha256).await {
        Ok(opened) => opened,
        Err(OpenError::Tampered { path, computed }) => {
            tracing::error!(
                package = %name, version = %version, platform = %format!("{os}/{arch}"),
                path = %path.display(), expected_sha256 = %file.sha256, found_sha256 = %computed,
                "a hosted package file no longer matches its SHA-256: refused to agents; upload it again (opampctl packages upload)"
            );
            return text(
                StatusCode::GONE,
                format!(
                    "the stored file of {name} {version} for {os}/{arch} no longer matches its SHA-256 and is not served; an administrator must upload it again\n"
                ),
            );
        }
        Err(OpenError::Missing(path)) => {
            tracing::error!(package = %name, version = %version, path = %path.display(), "a hosted package file is missing from packages.dir");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the stored file of {name} {version} for {os}/{arch} is missing on the server (packages.dir); an administrator must upload it again\n"),
            );
        }
        Err(OpenError::Io(e)) => {
            tracing::error!(error = %format!("{e:#}"), "cannot read a hosted package file");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the stored file cannot be read now; see the opampd log\n".into(),
            );
        }
    };
    let matches = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    };
    if matches(header::IF_NONE_MATCH) == Some(true) {
        return with_file_headers(StatusCode::NOT_MODIFIED.into_response(), &etag);
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // A Range with If-Range naming another version gets the whole file.
    let range = range.filter(|_| matches(header::IF_RANGE) != Some(false));
    let size = opened.size;
    let (status, start, length) = match span(range, size) {
        Span::Whole => (StatusCode::OK, 0, size),
        Span::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Span::Unsatisfiable => {
            let mut response = text(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the range asked starts past the end of the file ({size} bytes)\n"),
            );
            insert(
                &mut response,
                header::CONTENT_RANGE,
                format!("bytes */{size}"),
            );
            return with_file_headers(response, &etag);
        }
    };
    let mut file = opened.file;
    if start > 0 {
        if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
            tracing::error!(error = %e, "cannot seek in a hosted package file");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the stored file cannot be read now; see the opampd log\n".into(),
            );
        }
    }
    let reader = file.take(length);
    let stream = futures_util::stream::unfold(reader, |mut reader| async move {
        let mut buffer = vec![0u8; 64 * 1024];
        match reader.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok::<_, std::io::Error>(buffer), reader))
            }
            Err(e) => Some((Err(e), reader)),
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    insert(&mut response, header::CONTENT_LENGTH, length.to_string());
    insert(
        &mut response,
        header::CONTENT_TYPE,
        "application/octet-stream".into(),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        insert(
            &mut response,
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + length - 1),
        );
    }
    with_file_headers(response, &etag)
}

fn with_file_headers(mut response: Response, etag: &str) -> Response {
    insert(&mut response, header::ETAG, etag.to_string());
    insert(&mut response, header::ACCEPT_RANGES, "bytes".into());
    insert(&mut response, header::CACHE_CONTROL, "private".into());
    response
}

fn insert(response: &mut Response, name: header::HeaderName, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(name, value);
    }
}

fn text(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        let part = |start, end| Span::Part { start, end };
        assert_eq!(span(None, 100), Span::Whole);
        assert_eq!(span(Some("bytes=10-"), 100), part(10, 99));
        assert_eq!(span(Some("bytes=10-19"), 100), part(10, 19));
        assert_eq!(span(Some("bytes=90-200"), 100), part(90, 99));
        assert_eq!(span(Some("bytes=-5"), 100), part(95, 99));
        assert_eq!(span(Some("bytes=0-"), 100), Span::Whole);
        assert_eq!(span(Some("bytes=-500"), 100), Span::Whole);
        assert_eq!(span(Some("bytes=100-"), 100), Span::Unsatisfiable);
        assert_eq!(span(Some("bytes=-0"), 100), Span::Unsatisfiable);
        assert_eq!(span(Some("bytes=1-2,5-6"), 100), Span::Whole);
        assert_eq!(span(Some("bytes=5-2"), 100), Span::Whole);
        assert_eq!(span(Some("items=1-2"), 100), Span::Whole);
        assert_eq!(span(Some("bytes=x-"), 100), Span::Whole);
    }
}
