//! `GET /v2/_catalog`: the repositories this site holds
//! (`registry::catalog`), with the spec's `n`/`last` pagination and a
//! `Link` to the next page. Never asks upstream: a mirror cannot list an
//! upstream's repositories (registry.k8s.io answers 404), and a sealed
//! site must be able to tell what its bundles brought.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, Subject};
use super::headers::insert_text;
use super::tags::paginate;
use super::{AppState, Params};
use crate::oci::ErrorCode;

pub async fn list(app: &AppState, params: &Params) -> Result<Response, ApiError> {
    let n = match params.n.as_deref() {
        None => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            ApiError::new(ErrorCode::Unsupported, "n must be a non-negative integer")
                .status(StatusCode::BAD_REQUEST)
                .detail(v.to_string())
        })?),
    };
    let repos = app
        .registry
        .repositories()
        .await
        .map_err(|e| ApiError::from_proxy(crate::proxy::Error::from(e), Subject::Repository))?;
    let (page, next) = paginate(&repos, n, params.last.as_deref());
    let body = serde_json::json!({ "repositories": page }).to_string();
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let (Some(n), Some(last)) = (n, next) {
        insert_text(resp.headers_mut(), header::LINK, &next_link(n, last));
    }
    Ok(resp)
}

/// The `Link` to the next page; `last` is percent-encoded, so the header
/// is valid whatever it holds.
fn next_link(n: usize, last: &str) -> String {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("n", &n.to_string())
        .append_pair("last", last)
        .finish();
    format!("</v2/_catalog?{q}>; rel=\"next\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links() {
        assert_eq!(
            next_link(2, "registry.k8s.io/pause"),
            "</v2/_catalog?n=2&last=registry.k8s.io%2Fpause>; rel=\"next\""
        );
    }
}
