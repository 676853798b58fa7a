//! `/v2/<name>/referrers/<digest>`: the manifests that name a manifest as
//! their `subject` (signatures, SBOMs, attestations), as an OCI index.
//!
//! Never 404 for a subject nobody refers to (an empty index is the answer),
//! whether or not the subject exists. `?artifactType=` filters, and says so
//! in `OCI-Filters-Applied`.

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::Response;

use super::error::{ApiError, Subject};
use super::{AppState, Params};
use crate::oci::referrers::{index_body, FILTER_ARTIFACT_TYPE};
use crate::oci::{media, Digest, RepoKey};

pub const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

pub async fn get(
    app: &AppState,
    key: &RepoKey,
    digest: &Digest,
    params: &Params,
    head: bool,
) -> Result<Response, ApiError> {
    let all = app.proxy.referrers(key, digest).await.map_err(|e| ApiError::from_proxy(e, Subject::Manifest))?;
    let filter = params.artifact_type.as_deref().filter(|t| !t.is_empty());
    let listed: Vec<_> = all.into_iter().filter(|r| r.matches(filter)).collect();
    let body = index_body(&listed);
    let len = body.len();
    let mut resp = Response::new(if head { Body::empty() } else { Body::from(body) });
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media::OCI_INDEX));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if filter.is_some() {
        h.insert(OCI_FILTERS_APPLIED, HeaderValue::from_static(FILTER_ARTIFACT_TYPE));
    }
    Ok(resp)
}
