//! `/v2/<name>/referrers/<digest>`: the manifests that name a manifest as
//! their `subject` (signatures, SBOMs, attestations), as an OCI index.

use axum::http::StatusCode;
use axum::response::Response;

use super::error::ApiError;
use super::{AppState, Params};
use crate::oci::{Digest, RepoKey};

pub async fn get(
    _app: &AppState,
    _key: &RepoKey,
    _digest: &Digest,
    _params: &Params,
    _head: bool,
) -> Result<Response, ApiError> {
    Err(ApiError::unsupported("the referrers API").status(StatusCode::NOT_FOUND))
}
