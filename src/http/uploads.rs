//! `/v2/<name>/blobs/uploads/[<id>]`: pushing blobs (monolithic, chunked,
//! streamed, cross-repository mounts). This module only translates HTTP;
//! sessions, verification and commits are `registry::uploads`.
//!
//! | request                                          | answer                                    |
//! |--------------------------------------------------|-------------------------------------------|
//! | `POST uploads/?mount=<d>[&from=<repo>]`          | 201 when `<d>` is stored, else as below   |
//! | `POST uploads/?digest=<d>` + the whole blob      | 201                                       |
//! | `POST uploads/`                                  | 202: a new session                        |
//! | `PATCH uploads/<id>` [+ `Content-Range`]         | 202; 416 when not where the upload stands |
//! | `PUT uploads/<id>?digest=<d>` [+ the last chunk] | 201; 416 as PATCH; 400 `DIGEST_INVALID`   |
//! | `GET`/`HEAD uploads/<id>`                        | 204: where the upload stands              |
//! | `DELETE uploads/<id>`                            | 204: cancelled                            |
//!
//! Every answer that continues a session (202, 204, and the errors after
//! which it goes on: 416, a size or body problem) carries `Location`,
//! `Docker-Upload-UUID` and `Range: 0-<last byte kept>` (`0-0` before the
//! first byte, as distribution sends). `Location` is relative and keeps
//! `?ns=`, so that the client's next request is routed to the same
//! repository: a session belongs to the repository it was started in.
//! Every request here needs a verified user, reads of a session's status
//! included (anonymous pulls do not extend to other people's uploads).
//!
//! Bodies are streamed frame by frame into the store, never collected.
//! A mount whose digest is not stored, or is not a digest at all, falls
//! back to an ordinary session (202), as the spec asks.

use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use futures::{Stream, StreamExt, TryStreamExt};

use super::auth::{Access, User};
use super::error::ApiError;
use super::headers::{insert_text, upload_range, DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID};
use super::{AppState, Params};
use crate::oci::route::UploadId;
use crate::oci::{Digest, ErrorCode, RepoKey, RepoName};
use crate::registry;
use crate::registry::uploads::{ByteRange, Chunk, Status};

/// Bytes of a refused request's body read and thrown away, so that the
/// client's connection stays usable (beyond this it is closed instead).
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;
/// How long draining waits for the next bytes.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// Every upload request: POST starts (or mounts, or takes the whole blob),
/// PATCH appends, PUT finishes, GET tells progress, DELETE cancels.
pub async fn handle(
    app: &AppState,
    key: &RepoKey,
    name: &RepoName,
    id: Option<UploadId>,
    params: &Params,
    req: &Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(user) = req.extensions.get::<User>() else {
        // Anonymous pulls do not extend to an upload's status.
        return Err(app.auth.refusal(req, &app.realm, Access::Push, "authentication required"));
    };
    let mut body = body.into_data_stream().map_err(io::Error::other);
    let at = Place { name, ns: params.ns.as_deref() };
    let push = Push { app, key, at: &at, user, req };
    let answer = match (&req.method, id) {
        (&Method::POST, None) => push.post(params, &mut body).await,
        (&Method::PATCH, Some(id)) => push.patch(&id, &mut body).await,
        (&Method::PUT, Some(id)) => push.put(&id, params, &mut body).await,
        (&Method::GET | &Method::HEAD, Some(id)) => {
            let s = app.uploads.status(key, &id).await.map_err(ApiError::from_registry)?;
            Ok(session_answer(StatusCode::NO_CONTENT, &at, &s))
        }
        (&Method::DELETE, Some(id)) => {
            app.uploads.cancel(key, &id).await.map_err(ApiError::from_registry)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        _ => Err(ApiError::unsupported("this method on this resource")),
    };
    drain(&mut body).await;
    answer
}

/// One push request, with what every answer needs.
struct Push<'a> {
    app: &'a AppState,
    key: &'a RepoKey,
    at: &'a Place<'a>,
    user: &'a User,
    req: &'a Parts,
}

impl Push<'_> {
    async fn post<S: BodyStream>(&self, params: &Params, body: &mut S) -> Result<Response, ApiError> {
        let uploads = &self.app.uploads;
        if let Some(d) = params.mount.as_deref().and_then(|m| m.parse::<Digest>().ok()) {
            if uploads.mountable(&d).await.map_err(ApiError::from_registry)? {
                tracing::info!(user = self.user.name(), repo = %self.key, digest = %d, "blob mounted");
                return Ok(created(self.at, &d));
            }
        }
        if let Some(d) = params.digest.as_deref() {
            let d = digest_param(d)?;
            let size = uploads.put_whole(&d, content_length(&self.req.headers), body).await;
            self.pushed(&d, size.map_err(ApiError::from_registry)?);
            return Ok(created(self.at, &d));
        }
        let s = uploads.start(self.key).await.map_err(ApiError::from_registry)?;
        Ok(session_answer(StatusCode::ACCEPTED, self.at, &s))
    }

    async fn patch<S: BodyStream>(&self, id: &UploadId, body: &mut S) -> Result<Response, ApiError> {
        let chunk = self.chunk(id, body)?;
        let s = self.app.uploads.append(self.key, id, chunk).await.map_err(|e| self.session_error(e, id))?;
        Ok(session_answer(StatusCode::ACCEPTED, self.at, &s))
    }

    async fn put<S: BodyStream>(&self, id: &UploadId, params: &Params, body: &mut S) -> Result<Response, ApiError> {
        let Some(d) = params.digest.as_deref() else {
            let e = ApiError::new(ErrorCode::DigestInvalid, "the digest query parameter is required to finish");
            return Err(self.continuing(e, id));
        };
        let d = digest_param(d).map_err(|e| self.continuing(e, id))?;
        let chunk = self.chunk(id, body)?;
        let size = self.app.uploads.finish(self.key, id, &d, chunk).await.map_err(|e| self.session_error(e, id))?;
        self.pushed(&d, size);
        Ok(created(self.at, &d))
    }

    fn chunk<'b, S: BodyStream>(&self, id: &UploadId, body: &'b mut S) -> Result<Chunk<'b, S>, ApiError> {
        let range = content_range(&self.req.headers).map_err(|e| self.continuing(e, id))?;
        Ok(Chunk { range, length: content_length(&self.req.headers), body })
    }

    fn pushed(&self, d: &Digest, size: u64) {
        tracing::info!(user = self.user.name(), repo = %self.key, digest = %d, size, "blob pushed");
    }

    /// A registry error of a request to a session, with the session's
    /// headers when the session goes on after it.
    fn session_error(&self, e: registry::Error, id: &UploadId) -> ApiError {
        use registry::Error as R;
        let goes_on = matches!(e, R::RangeInvalid { .. } | R::SizeInvalid { .. } | R::UploadInvalid(_));
        let api = ApiError::from_registry(e);
        if goes_on {
            self.continuing(api, id)
        } else {
            api
        }
    }

    /// An error after which the session goes on: where to continue.
    fn continuing(&self, e: ApiError, id: &UploadId) -> ApiError {
        e.header(header::LOCATION, self.at.upload(id)).header(DOCKER_UPLOAD_UUID, id.as_str())
    }
}

/// The bodies this module reads: the request's data frames.
trait BodyStream: Stream<Item = io::Result<bytes::Bytes>> + Unpin + Send {}
impl<S: Stream<Item = io::Result<bytes::Bytes>> + Unpin + Send> BodyStream for S {}

/// Where the client addressed the repository (its name as sent, and `ns`),
/// to build `Location`s it will follow back to the same repository.
struct Place<'a> {
    name: &'a RepoName,
    ns: Option<&'a str>,
}

impl Place<'_> {
    fn query(&self) -> String {
        match self.ns {
            Some(ns) => format!("?ns={}", url::form_urlencoded::byte_serialize(ns.as_bytes()).collect::<String>()),
            None => String::new(),
        }
    }

    fn upload(&self, id: &UploadId) -> String {
        format!("/v2/{}/blobs/uploads/{}{}", self.name, id, self.query())
    }

    fn blob(&self, d: &Digest) -> String {
        format!("/v2/{}/blobs/{}{}", self.name, d, self.query())
    }
}

fn empty(status: StatusCode) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

/// 202 or 204 with where the session stands.
fn session_answer(status: StatusCode, at: &Place, s: &Status) -> Response {
    let mut resp = empty(status);
    let h = resp.headers_mut();
    insert_text(h, header::LOCATION, &at.upload(&s.id));
    insert_text(h, DOCKER_UPLOAD_UUID, s.id.as_str());
    insert_text(h, header::RANGE, &upload_range(s.offset));
    resp
}

/// 201: the blob is stored.
fn created(at: &Place, d: &Digest) -> Response {
    let mut resp = empty(StatusCode::CREATED);
    let h = resp.headers_mut();
    insert_text(h, header::LOCATION, &at.blob(d));
    if let Ok(v) = HeaderValue::from_maybe_shared(d.text_bytes()) {
        h.insert(DOCKER_CONTENT_DIGEST, v);
    }
    resp
}

fn digest_param(d: &str) -> Result<Digest, ApiError> {
    d.parse().map_err(|e: crate::oci::digest::DigestError| {
        ApiError::new(ErrorCode::DigestInvalid, "invalid digest").detail(d).cause(e)
    })
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// A chunk's `Content-Range`: `<first>-<last>` (inclusive) as docker and
/// the OCI spec send it; RFC 9110's `bytes <first>-<last>/<total>` and a
/// `bytes=` prefix are accepted too.
fn content_range(h: &HeaderMap) -> Result<Option<ByteRange>, ApiError> {
    let Some(v) = h.get(header::CONTENT_RANGE) else { return Ok(None) };
    let text = v.to_str().unwrap_or("").trim();
    let parsed = parse_range(text);
    parsed
        .map(Some)
        .ok_or_else(|| ApiError::new(ErrorCode::BlobUploadInvalid, "Content-Range must be <first>-<last>").detail(text))
}

fn parse_range(text: &str) -> Option<ByteRange> {
    let r = match text.strip_prefix("bytes") {
        Some(rest) => rest.strip_prefix('=').unwrap_or(rest).trim_start(),
        None => text,
    };
    let r = r.split_once('/').map_or(r, |(r, _)| r);
    let (first, last) = r.split_once('-')?;
    let num = |s: &str| s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse::<u64>().ok()).flatten();
    ByteRange::new(num(first)?, num(last)?)
}

/// Reads and throws away what a request still sends after its answer was
/// decided (a refused chunk), within [`DRAIN_LIMIT`]; see there.
async fn drain<S: BodyStream>(body: &mut S) {
    let mut left = DRAIN_LIMIT;
    while left > 0 {
        match tokio::time::timeout(DRAIN_WAIT, body.next()).await {
            Ok(Some(Ok(b))) => left = left.saturating_sub(b.len().max(1)),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        let r = |first, last| ByteRange::new(first, last);
        assert_eq!(parse_range("0-1023"), r(0, 1023));
        assert_eq!(parse_range("1024-2047"), r(1024, 2047));
        assert_eq!(parse_range("bytes 0-9/10"), r(0, 9));
        assert_eq!(parse_range("bytes=5-5"), r(5, 5));
        assert_eq!(parse_range("0-0"), r(0, 0));
        for bad in ["", "-", "5", "5-", "-5", "10-9", "a-b", "+1-2", "1-+2", "bytes */10", "0x1-2", "1 - 2"] {
            assert_eq!(parse_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn locations_keep_the_name_and_ns() {
        let name: RepoName = "klts/kube-apiserver".parse().unwrap();
        let id = UploadId::parse("abc-_1").unwrap();
        let d = Digest::of(b"");
        let at = Place { name: &name, ns: None };
        assert_eq!(at.upload(&id), "/v2/klts/kube-apiserver/blobs/uploads/abc-_1");
        assert_eq!(at.blob(&d), format!("/v2/klts/kube-apiserver/blobs/{d}"));
        let at = Place { name: &name, ns: Some("registry.k8s.io") };
        assert_eq!(at.upload(&id), "/v2/klts/kube-apiserver/blobs/uploads/abc-_1?ns=registry.k8s.io");
        assert_eq!(at.blob(&d), format!("/v2/klts/kube-apiserver/blobs/{d}?ns=registry.k8s.io"));
    }
}
