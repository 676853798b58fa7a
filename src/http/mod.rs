//! The HTTP edge: the only module that speaks HTTP to clients.
//!
//! Registry paths carry nested repository names, so instead of router
//! patterns there is one handler that parses the path with
//! [`crate::oci::route::parse`] and dispatches on the typed route. Handlers
//! only translate: request → proxy call → response headers and body.
//!
//! Every response carries `X-Request-Id` ([`request_id`]); error answers
//! carry fixed text only, with the internal cause in the log under that id
//! ([`error`]). Every request is authorized ([`auth`]) before it is
//! dispatched.

pub mod auth;
pub mod error;
pub mod range;
pub mod rejection;
pub mod request_id;

pub use self::request_id::X_REQUEST_ID;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use self::auth::{Access, Authenticator};
use self::error::{ApiError, Subject};
use crate::oci::route::{self, V2Route};
use crate::oci::{Digest, ErrorCode, Reference, RepoKey, RepoName};
use crate::proxy::{CacheStatus, Proxy};
use crate::storage::StoredManifest;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// What every request is served with.
#[derive(Clone)]
pub struct AppState {
    pub proxy: Arc<Proxy>,
    pub auth: Arc<Authenticator>,
}

pub fn router(state: AppState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// Every response, answer or error, leaves through here: this is where it
/// gets its `X-Request-Id` and where a failure is logged, once, under that
/// id (the client sees only the fixed text of [`ApiError`]).
async fn handle(State(app): State<AppState>, req: Request) -> Response {
    // Only GET and HEAD are served, so the body is never read; the parts
    // (unlike the body) can be borrowed across awaits.
    let (mut req, _) = req.into_parts();
    let id = request_id::for_request(&req.headers);
    // Nothing is parsed or routed for a request that may not be made. The
    // verified user, if any, travels in the request's extensions.
    let answer = match app.auth.authorize(&req.headers, Access::of(&req.method)).await {
        Ok(user) => {
            if let Some(user) = user {
                req.extensions.insert(user);
            }
            dispatch(&app.proxy, &req).await
        }
        Err(e) => Err(e),
    };
    let mut resp = match answer {
        Ok(r) => r,
        Err(e) => {
            let id_text = id.to_str().unwrap_or_default();
            e.log(id_text, req.method.as_str(), req.uri.path());
            e.into_response()
        }
    };
    let h = resp.headers_mut();
    h.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    h.insert(X_REQUEST_ID, id);
    resp
}

/// The query parameters the registry API uses.
#[derive(Default)]
struct Params {
    ns: Option<String>,
    n: Option<String>,
    last: Option<String>,
}

impl Params {
    fn parse(query: Option<&str>) -> Params {
        let mut p = Params::default();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "ns" => p.ns = Some(v.into_owned()),
                "n" => p.n = Some(v.into_owned()),
                "last" => p.last = Some(v.into_owned()),
                _ => {}
            }
        }
        p
    }
}

async fn dispatch(proxy: &Proxy, req: &Parts) -> Result<Response, ApiError> {
    let route = route::parse(req.uri.path())?;
    let params = Params::parse(req.uri.query());
    let method = &req.method;
    if method != Method::GET && method != Method::HEAD {
        let what = if matches!(route, V2Route::Upload { .. }) { "pushing" } else { "this method" };
        return Err(ApiError::unsupported(what));
    }
    let head = method == Method::HEAD;
    let route_key = |name: &RepoName, subject| {
        proxy.route(name, params.ns.as_deref()).map_err(|e| ApiError::from_proxy(e, subject))
    };
    match route {
        V2Route::Base => Ok(([(header::CONTENT_TYPE, "application/json")], "{}").into_response()),
        V2Route::Catalog => Err(ApiError::unsupported("the catalog")),
        V2Route::Upload { .. } => Err(ApiError::unsupported("pushing")),
        V2Route::Referrers { .. } => Err(ApiError::unsupported("the referrers API").status(StatusCode::NOT_FOUND)),
        V2Route::Manifest { name, reference } => {
            let key = route_key(&name, Subject::Manifest)?;
            manifest(proxy, &key, &reference, head).await
        }
        V2Route::Blob { name, digest } => {
            let key = route_key(&name, Subject::Blob)?;
            blob(proxy, &key, &digest, head, &req.headers).await
        }
        V2Route::TagsList { name } => {
            let key = route_key(&name, Subject::Repository)?;
            tags_list(proxy, &key, &name, &params).await
        }
    }
}

/// Sets a header built from text that is not known to be a valid header
/// value (upstream media types, values derived from input). A value that
/// cannot be represented is left out rather than replaced: a missing header
/// is honest, a substituted one is wrong.
fn insert_text(h: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            h.insert(name, v);
        }
        Err(_) => tracing::debug!(header = %name, value, "header value not representable; not sent"),
    }
}

/// What a repository name may keep unescaped in the path of a `Link`:
/// everything else is percent-encoded, so the header is valid whatever the
/// name (the name grammar makes this a no-op today; the header must not
/// depend on that).
const LINK_PATH: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'.').remove(b'_').remove(b'-');

fn content_headers(h: &mut HeaderMap, digest: &Digest, cache: CacheStatus) {
    // Both values are slices of the digest's shared text: no allocation.
    if let Ok(v) = HeaderValue::from_maybe_shared(digest.quoted_bytes()) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(digest.text_bytes()) {
        h.insert(DOCKER_CONTENT_DIGEST, v);
    }
    h.insert(X_CACHE, HeaderValue::from_static(cache.as_str()));
}

/// The manifest media types every client uses are static header values;
/// any other is sent as stored when it is a valid header value, else not at
/// all.
fn insert_media_type(h: &mut HeaderMap, m: &str) {
    use crate::oci::media::*;
    for known in [OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2] {
        if m == known {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(known));
            return;
        }
    }
    insert_text(h, header::CONTENT_TYPE, m);
}

async fn manifest(proxy: &Proxy, key: &RepoKey, reference: &Reference, head: bool) -> Result<Response, ApiError> {
    let (m, cache) = proxy.manifest(key, reference).await.map_err(|e| ApiError::from_proxy(e, Subject::Manifest))?;
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

async fn blob(
    proxy: &Proxy,
    key: &RepoKey,
    digest: &Digest,
    head: bool,
    req: &HeaderMap,
) -> Result<Response, ApiError> {
    let fail = |e| ApiError::from_proxy(e, Subject::Blob);
    let mut reply = proxy.blob(key, digest, head).await.map_err(fail)?;
    let range = if head { None } else { req.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(range::parse) };
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

async fn tags_list(proxy: &Proxy, key: &RepoKey, name: &RepoName, params: &Params) -> Result<Response, ApiError> {
    let n = match params.n.as_deref() {
        None => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            ApiError::new(ErrorCode::Unsupported, "n must be a non-negative integer")
                .status(StatusCode::BAD_REQUEST)
                .detail(v.to_string())
        })?),
    };
    let tags = proxy.tags(key).await.map_err(|e| ApiError::from_proxy(e, Subject::Repository))?;
    let (page, next) = paginate(&tags, n, params.last.as_deref());
    let body = serde_json::json!({ "name": name.as_str(), "tags": page }).to_string();
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let (Some(n), Some(last)) = (n, next) {
        insert_text(resp.headers_mut(), header::LINK, &next_link(name.as_str(), n, last, params.ns.as_deref()));
    }
    Ok(resp)
}

/// The `Link` to the next page of a tags list. Every part that comes from
/// a request or an upstream is percent-encoded, so the result is always a
/// valid header value.
fn next_link(name: &str, n: usize, last: &str, ns: Option<&str>) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("n", &n.to_string()).append_pair("last", last);
    if let Some(ns) = ns {
        q.append_pair("ns", ns);
    }
    let path = percent_encoding::utf8_percent_encode(name, LINK_PATH);
    format!("</v2/{path}/tags/list?{}>; rel=\"next\"", q.finish())
}

/// One page of a sorted tag list: tags after `last` (exclusive), at most
/// `n`; and the tag to continue after when more remain.
fn paginate<'a>(tags: &'a [String], n: Option<usize>, last: Option<&str>) -> (&'a [String], Option<&'a str>) {
    let start = last.map_or(0, |l| tags.partition_point(|t| t.as_str() <= l));
    let rest = &tags[start..];
    match n {
        Some(n) if n < rest.len() => {
            let page = &rest[..n];
            (page, page.last().map(String::as_str))
        }
        _ => (rest, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pagination() {
        let t = tags(&["a", "b", "c", "d"]);
        assert_eq!(paginate(&t, None, None), (&t[..], None));
        assert_eq!(paginate(&t, Some(2), None), (&t[..2], Some("b")));
        assert_eq!(paginate(&t, Some(2), Some("b")), (&t[2..], None));
        assert_eq!(paginate(&t, Some(0), None), (&t[..0], None));
        assert_eq!(paginate(&t, None, Some("bb")), (&t[2..], None));
        assert_eq!(paginate(&t, Some(10), Some("d")), (&t[4..], None));
    }

    #[test]
    fn next_links_are_always_valid_header_values() {
        assert_eq!(
            next_link("coredns/coredns", 2, "b", Some("k8s.gcr.io")),
            "</v2/coredns/coredns/tags/list?n=2&last=b&ns=k8s.gcr.io>; rel=\"next\""
        );
        let hostile = "a b\"<>\r\n\u{7f};,é%";
        let link = next_link(hostile, 1, hostile, Some(hostile));
        assert!(HeaderValue::from_str(&link).is_ok(), "{link}");
        assert!(link.is_ascii(), "{link}");
        let target = link.strip_prefix('<').and_then(|l| l.split_once('>')).unwrap().0;
        assert!(!target.contains(['<', '>', '"', ' ', '\r', '\n']), "{target}");
    }

    #[test]
    fn unrepresentable_values_are_left_out_not_replaced() {
        let mut h = HeaderMap::new();
        insert_media_type(&mut h, "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(h[header::CONTENT_TYPE], "application/vnd.oci.image.manifest.v1+json");
        insert_media_type(&mut h, "application/x-custom+json");
        assert_eq!(h[header::CONTENT_TYPE], "application/x-custom+json");
        let mut h = HeaderMap::new();
        insert_media_type(&mut h, "text/plain\r\nx-injected: 1");
        assert!(h.is_empty(), "{h:?}");
        insert_text(&mut h, header::CONTENT_RANGE, "bytes 0-1/2\n");
        assert!(h.is_empty(), "{h:?}");
    }
}
