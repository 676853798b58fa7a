//! `/v2/<name>/manifests/<reference>`: byte-exact manifests with their
//! digest headers.

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;

use super::error::{ApiError, Subject};
use super::headers::{content_headers, insert_media_type};
use super::AppState;
use crate::oci::{Reference, RepoKey};
use crate::proxy::CacheStatus;
use crate::storage::StoredManifest;

/// PUT of a manifest: validated, stored byte-exact, published.
pub async fn put(
    _app: &AppState,
    _key: &RepoKey,
    _reference: &Reference,
    _req: &axum::http::request::Parts,
    _body: Body,
) -> Result<Response, ApiError> {
    Err(ApiError::unsupported("pushing manifests"))
}

/// DELETE of a manifest by digest, or of a tag.
pub async fn delete(_app: &AppState, _key: &RepoKey, _reference: &Reference) -> Result<Response, ApiError> {
    Err(ApiError::unsupported("deleting manifests"))
}

/// GET or HEAD of a manifest, through the proxy.
pub async fn get(app: &AppState, key: &RepoKey, reference: &Reference, head: bool) -> Result<Response, ApiError> {
    let (m, cache) =
        app.proxy.manifest(key, reference).await.map_err(|e| ApiError::from_proxy(e, Subject::Manifest))?;
    Ok(manifest_response(&m, cache, head))
}

fn manifest_response(m: &StoredManifest, cache: CacheStatus, head: bool) -> Response {
    let body = if head { Body::empty() } else { Body::from(m.body.clone()) };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    insert_media_type(h, &m.media_type);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(m.body.len()));
    content_headers(h, &m.digest, cache);
    resp
}
