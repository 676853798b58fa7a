//! `/v2/<name>/blobs/<digest>`: blob bytes, whole or a `Range`, from the
//! store or from a fill in progress; HEAD never downloads.

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, Subject};
use super::headers::{content_headers, insert_text};
use super::{range, AppState};
use crate::oci::{Digest, ErrorCode, RepoKey};

/// DELETE of a blob: 202, unless a published or pinned manifest holds it
/// (405 `UNSUPPORTED`). Blobs are stored once for every repository, so
/// `key` only routes; a pull-through blob nothing holds may go.
pub async fn delete(app: &AppState, _key: &RepoKey, digest: &Digest) -> Result<Response, ApiError> {
    app.registry.delete_blob(digest).await.map_err(ApiError::from_registry)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// GET or HEAD of a blob.
pub async fn get(app: &AppState, key: &RepoKey, digest: &Digest, req: &Parts) -> Result<Response, ApiError> {
    let head = req.method == axum::http::Method::HEAD;
    let fail = |e| ApiError::from_proxy(e, Subject::Blob);
    let mut reply = app.proxy.blob(key, digest, head).await.map_err(fail)?;
    let range =
        if head { None } else { req.headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(range::parse) };
    let mut status = StatusCode::OK;
    let (mut start, mut end, mut length) = (0, None, reply.size);
    let mut content_range = None;
    if let Some(spec) = range {
        let size = reply.known_size().await.map_err(fail)?.unwrap_or(0);
        let Some((s, e)) = range::resolve(spec, size) else {
            return Err(ApiError::new(ErrorCode::SizeInvalid, "requested range not satisfiable")
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}")));
        };
        status = StatusCode::PARTIAL_CONTENT;
        (start, end, length) = (s, Some(e), Some(e - s));
        content_range = Some(format!("bytes {s}-{}/{size}", e - 1));
    }
    let cache = reply.cache;
    let body = if head { Body::empty() } else { Body::from_stream(reply.stream(start, end)) };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(len) = length {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Some(cr) = content_range {
        insert_text(h, header::CONTENT_RANGE, &cr);
    }
    content_headers(h, digest, cache);
    Ok(resp)
}
