//! `/v2/<name>/blobs/uploads/[<id>]`: pushing blobs (monolithic, chunked,
//! cross-repository mounts), streamed through the store's `BlobWriter`.

use axum::body::Body;
use axum::http::request::Parts;
use axum::response::Response;

use super::error::ApiError;
use super::{AppState, Params};
use crate::oci::route::UploadId;
use crate::oci::{RepoKey, RepoName};

/// Every upload request: POST starts (or mounts, or finishes at once),
/// PATCH appends, PUT finishes, GET tells progress, DELETE cancels.
pub async fn handle(
    _app: &AppState,
    _key: &RepoKey,
    _name: &RepoName,
    _id: Option<UploadId>,
    _params: &Params,
    _req: &Parts,
    _body: Body,
) -> Result<Response, ApiError> {
    Err(ApiError::unsupported("pushing blobs"))
}
