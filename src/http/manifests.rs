//! `/v2/<name>/manifests/<reference>`: byte-exact manifests with their
//! digest headers; pushes publish, deletes unpublish (`registry::publish`).

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::body;
use super::error::{ApiError, Subject};
use super::headers::{content_headers, insert_media_type, insert_text, DOCKER_CONTENT_DIGEST};
use super::AppState;
use crate::oci::{media, Digest, ErrorCode, Reference, RepoKey};
use crate::proxy::CacheStatus;
use crate::storage::StoredManifest;

/// `OCI-Subject`: the subject of a pushed referrer (distribution-spec 1.1).
pub const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");

/// PUT of a manifest: read whole (bounded), its blobs that only upstream
/// has fetched, validated, stored byte-exact, published in `key` (and
/// tagged, when pushed by tag).
pub async fn put(
    app: &AppState,
    key: &RepoKey,
    reference: &Reference,
    req: &Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = body::read_bounded(body, &req.headers, media::MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| e.into_api(ErrorCode::ManifestInvalid))?;
    let content_type = req.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    app.proxy.fetch_blobs_for_push(key, content_type, &bytes).await;
    let published = app.registry.publish(key, reference, content_type, bytes).await.map_err(ApiError::from_registry)?;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::CREATED;
    let h = resp.headers_mut();
    insert_text(h, header::LOCATION, &location(req, &published.digest));
    if let Ok(v) = HeaderValue::from_maybe_shared(published.digest.text_bytes()) {
        h.insert(DOCKER_CONTENT_DIGEST, v);
    }
    if let Some(subject) = &published.subject {
        if let Ok(v) = HeaderValue::from_maybe_shared(subject.text_bytes()) {
            h.insert(OCI_SUBJECT, v);
        }
    }
    Ok(resp)
}

/// Where a pushed manifest is found: the request's own path with the
/// digest as reference, and its `ns` (so the pull routes like the push).
fn location(req: &Parts, digest: &Digest) -> String {
    let path = req.uri.path();
    let base = path.rfind("/manifests/").map_or(path, |i| &path[..i]);
    let ns = url::form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes()).find(|(k, _)| k == "ns");
    match ns {
        Some((_, ns)) => {
            let q = url::form_urlencoded::Serializer::new(String::new()).append_pair("ns", &ns).finish();
            format!("{base}/manifests/{digest}?{q}")
        }
        None => format!("{base}/manifests/{digest}"),
    }
}

/// DELETE of a manifest by digest (out of `key`'s published class, with
/// the tags that point at it), or of a published tag.
pub async fn delete(app: &AppState, key: &RepoKey, reference: &Reference) -> Result<Response, ApiError> {
    let done = match reference {
        Reference::Digest(d) => app.registry.delete_published_manifest(key, d).await,
        Reference::Tag(t) => app.registry.delete_published_tag(key, t).await,
    };
    done.map_err(ApiError::from_registry)?;
    Ok(StatusCode::ACCEPTED.into_response())
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
