//! `ApiError`: every failure as the spec's JSON error body.
//!
//! Lower layers' errors are translated here, with the context of what was
//! asked for (a manifest, a blob, a tags list), because "upstream said 404"
//! means MANIFEST_UNKNOWN for one and BLOB_UNKNOWN for the other. Only spec
//! error codes are ever emitted.
//!
//! What a client reads is fixed text plus, at most, an echo of its own
//! input: lower layers' error strings carry upstream URLs, addresses,
//! filesystem paths and OS error text, which are nobody's business outside
//! this host. Those strings travel as the private `cause` instead, which the
//! edge logs once with the request id (see [`ApiError::log`]).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::oci::route::RouteError;
use crate::oci::ErrorCode;
use crate::proxy;
use crate::registry;
use crate::upstream;

/// Longest `detail` sent back: enough to recognise one's own input, not
/// enough to turn an error answer into an amplifier.
pub const MAX_DETAIL_CHARS: usize = 256;

/// What a request asked for; picks the "unknown" code and the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Manifest,
    Blob,
    Repository,
}

impl Subject {
    fn unknown(self) -> ErrorCode {
        match self {
            Subject::Manifest => ErrorCode::ManifestUnknown,
            Subject::Blob => ErrorCode::BlobUnknown,
            Subject::Repository => ErrorCode::NameUnknown,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Sent to the client: only ever an echo of the client's own input,
    /// bounded by [`MAX_DETAIL_CHARS`] when set through [`ApiError::detail`].
    pub detail: Option<String>,
    pub headers: Vec<(header::HeaderName, String)>,
    /// The internal reason, for the log only; never serialized.
    cause: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        let status = StatusCode::from_u16(code.default_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError { status, code, message: message.into(), detail: None, headers: Vec::new(), cause: None }
    }

    pub fn status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    /// Echoes the client's own input back (an invalid name, digest, query
    /// value), cut to [`MAX_DETAIL_CHARS`]. Never pass internal error text
    /// here: that is what [`ApiError::cause`] is for.
    pub fn detail(mut self, detail: impl Into<String>) -> ApiError {
        let mut d = detail.into();
        if let Some((cut, _)) = d.char_indices().nth(MAX_DETAIL_CHARS) {
            d.truncate(cut);
        }
        self.detail = Some(d);
        self
    }

    /// Attaches the internal reason (upstream URL, I/O error, ...): logged
    /// at the edge with the request id, never sent to the client.
    pub fn cause(mut self, cause: impl std::fmt::Display) -> ApiError {
        self.cause = Some(cause.to_string());
        self
    }

    /// The internal reason, if one was attached.
    pub fn internal_cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }

    pub fn header(mut self, name: header::HeaderName, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }

    pub fn unsupported(what: &str) -> ApiError {
        ApiError::new(ErrorCode::Unsupported, format!("{what} is not supported by this mirror"))
    }

    /// Logs this error once, at the edge, with the request's id: ERROR for
    /// 5xx (the mirror or its upstream failed), DEBUG for 4xx (the client
    /// asked for something wrong or missing, which is routine).
    pub fn log(&self, request_id: &str, method: &str, path: &str) {
        let cause = self.cause.as_deref().unwrap_or("");
        if self.status.is_server_error() {
            tracing::error!(
                request_id,
                method,
                path,
                status = self.status.as_u16(),
                code = self.code.as_str(),
                reason = %self.message,
                cause,
                "request failed"
            );
        } else {
            tracing::debug!(
                request_id,
                method,
                path,
                status = self.status.as_u16(),
                code = self.code.as_str(),
                reason = %self.message,
                cause,
                "request refused"
            );
        }
    }

    /// Translates a proxy error for a request about `subject`.
    pub fn from_proxy(e: proxy::Error, subject: Subject) -> ApiError {
        use proxy::Error as P;
        match e {
            // The upstream name is the client's own (from the path or `ns`).
            P::Routing(proxy::routing::RoutingError::UnknownUpstream(name)) => {
                ApiError::new(ErrorCode::NameUnknown, "upstream is not configured on this mirror").detail(name)
            }
            P::ManifestUnknown => ApiError::new(ErrorCode::ManifestUnknown, "manifest unknown"),
            P::BlobUnknown => ApiError::new(ErrorCode::BlobUnknown, "blob unknown"),
            P::NameUnknown => ApiError::new(ErrorCode::NameUnknown, "repository name not known to registry"),
            // The reference is the client's own, as routed: telling an
            // operator which image their bundles lack is the point.
            e @ P::NotInBundles(_) => ApiError::new(subject.unknown(), e.to_string()),
            P::Upstream(u) => ApiError::from_upstream(u, subject),
            e @ P::Corrupt(_) => ApiError::new(subject.unknown(), "upstream content failed verification")
                .status(StatusCode::BAD_GATEWAY)
                .cause(e),
            e @ (P::Storage(_) | P::Internal(_)) => {
                ApiError::new(subject.unknown(), "internal error").status(StatusCode::INTERNAL_SERVER_ERROR).cause(e)
            }
        }
    }

    /// Translates a registry error (publishing, deleting, uploads).
    pub fn from_registry(e: registry::Error) -> ApiError {
        use registry::Error as R;
        match e {
            R::ManifestUnknown => ApiError::new(ErrorCode::ManifestUnknown, "manifest unknown"),
            R::BlobUnknown => ApiError::new(ErrorCode::BlobUnknown, "blob unknown"),
            e @ R::ManifestInvalid(_) => ApiError::new(ErrorCode::ManifestInvalid, "manifest invalid").cause(e),
            R::ManifestBlobUnknown(d) => {
                ApiError::new(ErrorCode::ManifestBlobUnknown, "manifest references a blob or manifest not pushed yet")
                    .detail(d.to_string())
            }
            e @ R::DigestInvalid(_) => {
                ApiError::new(ErrorCode::DigestInvalid, "provided digest did not match uploaded content").cause(e)
            }
            e @ R::SizeInvalid { too_large: true, .. } => ApiError::new(ErrorCode::SizeInvalid, "content too large")
                .status(StatusCode::PAYLOAD_TOO_LARGE)
                .cause(e),
            e @ R::SizeInvalid { .. } => {
                ApiError::new(ErrorCode::SizeInvalid, "provided length did not match content length").cause(e)
            }
            R::UploadUnknown => ApiError::new(ErrorCode::BlobUploadUnknown, "upload unknown"),
            e @ R::UploadInvalid(_) => ApiError::new(ErrorCode::BlobUploadInvalid, "upload invalid").cause(e),
            // The spec's `Range: 0-<last>` (no unit), as on every answer
            // that tells where an upload stands.
            R::RangeInvalid { current } => {
                ApiError::new(ErrorCode::BlobUploadInvalid, "chunk does not start where the upload stands")
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::RANGE, super::headers::upload_range(current))
            }
            e @ R::Unsupported(_) => {
                ApiError::new(ErrorCode::Unsupported, "refused by this registry's policy").cause(e)
            }
            e @ R::Storage(_) => ApiError::new(ErrorCode::BlobUploadInvalid, "internal error")
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .cause(e),
        }
    }

    fn from_upstream(e: upstream::Error, subject: Subject) -> ApiError {
        use upstream::Error as U;
        match e {
            U::NotFound => ApiError::new(subject.unknown(), "not found upstream"),
            U::TooManyRequests { retry_after } => {
                let err =
                    ApiError::new(ErrorCode::TooManyRequests, "upstream rate limit reached and nothing is cached");
                match retry_after {
                    Some(r) => err.header(header::RETRY_AFTER, r),
                    None => err,
                }
            }
            e @ U::Unauthorized(_) => ApiError::new(ErrorCode::Denied, "upstream denied access").cause(e),
            e @ U::Timeout(_) => {
                ApiError::new(subject.unknown(), "upstream timed out").status(StatusCode::GATEWAY_TIMEOUT).cause(e)
            }
            e => ApiError::new(subject.unknown(), "upstream unavailable").status(StatusCode::BAD_GATEWAY).cause(e),
        }
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> ApiError {
        match e {
            RouteError::NotFound => {
                ApiError::new(ErrorCode::NameUnknown, "not a registry API path").status(StatusCode::NOT_FOUND)
            }
            RouteError::NameInvalid(n) => ApiError::new(ErrorCode::NameInvalid, "invalid repository name").detail(n),
            RouteError::ReferenceInvalid(r) => {
                ApiError::new(ErrorCode::NameInvalid, "invalid tag or reference").detail(r)
            }
            RouteError::DigestInvalid(d) => {
                ApiError::new(ErrorCode::DigestInvalid, "invalid digest").detail(d.to_string())
            }
            RouteError::UploadUnknown(id) => ApiError::new(ErrorCode::BlobUploadUnknown, "upload unknown").detail(id),
        }
    }
}

impl IntoResponse for ApiError {
    /// The spec body and headers only; logging is the edge's job, because
    /// only the edge knows the request id.
    fn into_response(self) -> Response {
        let mut entry = serde_json::json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(d) = self.detail {
            entry["detail"] = serde_json::Value::String(d);
        }
        let body = serde_json::json!({ "errors": [entry] }).to_string();
        let mut resp = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        for (name, value) in self.headers {
            match HeaderValue::from_str(&value) {
                Ok(v) => {
                    resp.headers_mut().insert(name, v);
                }
                Err(_) => tracing::debug!(header = %name, ?value, "header value not representable; not sent"),
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_code(e: ApiError) -> (u16, &'static str) {
        (e.status.as_u16(), e.code.as_str())
    }

    #[test]
    fn route_errors() {
        assert_eq!(status_code(RouteError::NameInvalid("..".into()).into()), (400, "NAME_INVALID"));
        assert_eq!(status_code(RouteError::ReferenceInvalid("..".into()).into()), (400, "NAME_INVALID"));
        let d = "sha256:x".parse::<crate::oci::Digest>().unwrap_err();
        assert_eq!(status_code(RouteError::DigestInvalid(d).into()), (400, "DIGEST_INVALID"));
        assert_eq!(status_code(RouteError::NotFound.into()), (404, "NAME_UNKNOWN"));
        assert_eq!(status_code(RouteError::UploadUnknown("..".into()).into()), (404, "BLOB_UPLOAD_UNKNOWN"));
    }

    #[test]
    fn proxy_errors_by_subject() {
        use proxy::Error as P;
        use upstream::Error as U;
        let m = |e| status_code(ApiError::from_proxy(e, Subject::Manifest));
        let b = |e| status_code(ApiError::from_proxy(e, Subject::Blob));
        assert_eq!(m(P::Upstream(U::NotFound)), (404, "MANIFEST_UNKNOWN"));
        assert_eq!(b(P::Upstream(U::NotFound)), (404, "BLOB_UNKNOWN"));
        assert_eq!(b(P::BlobUnknown), (404, "BLOB_UNKNOWN"));
        assert_eq!(m(P::Upstream(U::TooManyRequests { retry_after: None })), (429, "TOOMANYREQUESTS"));
        assert_eq!(m(P::Upstream(U::Status(503))), (502, "MANIFEST_UNKNOWN"));
        assert_eq!(b(P::Upstream(U::Timeout("t".into()))), (504, "BLOB_UNKNOWN"));
        assert_eq!(m(P::Upstream(U::Unauthorized("x".into()))), (403, "DENIED"));
        assert_eq!(b(P::Corrupt("x".into())), (502, "BLOB_UNKNOWN"));
        assert_eq!(m(P::Storage("disk".into())), (500, "MANIFEST_UNKNOWN"));
        let unknown = P::Routing(proxy::routing::RoutingError::UnknownUpstream("x.io".into()));
        assert_eq!(m(unknown), (404, "NAME_UNKNOWN"));
        assert_eq!(status_code(ApiError::from_proxy(P::NameUnknown, Subject::Repository)), (404, "NAME_UNKNOWN"));
    }

    async fn body_text(resp: Response) -> String {
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Internal error text reaches the log through `cause`, never the body.
    #[tokio::test]
    async fn internal_text_is_never_sent() {
        use proxy::Error as P;
        use upstream::Error as U;
        let url = "http://10.1.2.3:5000/v2/pause/blobs/sha256:abc";
        let secrets = [url, "10.1.2.3", "http://", "/var/lib/klts", "os error", "Permission denied"];
        let cases = [
            P::Storage("cannot create spool file /var/lib/klts/x: Permission denied (os error 13)".into()),
            P::Internal("task panicked at /var/lib/klts/src/x.rs".into()),
            P::Corrupt(format!("sha256 mismatch from {url}")),
            P::Upstream(U::Transport(format!("error sending request for url ({url}): os error 111"))),
            P::Upstream(U::Timeout(format!("operation timed out for {url}"))),
            P::Upstream(U::Invalid(format!("bad redirect \"{url}\": os error"))),
            P::Upstream(U::Unauthorized(format!("token endpoint {url} answered 401"))),
            P::Upstream(U::Status(503)),
        ];
        for e in cases {
            let what = e.to_string();
            let err = ApiError::from_proxy(e, Subject::Blob);
            assert_eq!(err.detail, None, "{what}");
            assert_eq!(err.internal_cause(), Some(what.as_str()), "the cause is kept for the log");
            let body = body_text(err.into_response()).await;
            for s in secrets {
                assert!(!body.contains(s), "{s:?} leaked for {what}: {body}");
            }
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(v["errors"][0]["message"].is_string());
            assert!(v["errors"][0].get("detail").is_none(), "{body}");
        }
    }

    #[test]
    fn details_echo_client_input_bounded() {
        let long = "é".repeat(1000);
        let e = ApiError::from(RouteError::NameInvalid(long.clone()));
        assert_eq!(e.detail.as_deref().map(|d| d.chars().count()), Some(MAX_DETAIL_CHARS));
        assert!(long.starts_with(e.detail.as_deref().unwrap()));
        let e = ApiError::from(RouteError::ReferenceInvalid("x".repeat(300)));
        assert_eq!(e.detail.unwrap().len(), MAX_DETAIL_CHARS);
        let e = ApiError::from(RouteError::NameInvalid("ok/..".into()));
        assert_eq!(e.detail.as_deref(), Some("ok/.."));
        let unknown = proxy::routing::RoutingError::UnknownUpstream("y".repeat(1000));
        let e = ApiError::from_proxy(proxy::Error::Routing(unknown), Subject::Manifest);
        assert_eq!(e.detail.unwrap().len(), MAX_DETAIL_CHARS);
        assert!(e.message.len() < 100, "the message is fixed text: {}", e.message);
    }

    #[test]
    fn registry_errors_of_uploads() {
        use registry::Error as R;
        let r = |e| status_code(ApiError::from_registry(e));
        assert_eq!(r(R::UploadUnknown), (404, "BLOB_UPLOAD_UNKNOWN"));
        assert_eq!(r(R::DigestInvalid("x".into())), (400, "DIGEST_INVALID"));
        assert_eq!(r(R::SizeInvalid { message: "x".into(), too_large: false }), (400, "SIZE_INVALID"));
        assert_eq!(r(R::UploadInvalid("x".into())), (400, "BLOB_UPLOAD_INVALID"));
        assert_eq!(r(R::BlobUnknown), (404, "BLOB_UNKNOWN"));
        let e = ApiError::from_registry(R::RangeInvalid { current: 1024 });
        assert_eq!((e.status.as_u16(), e.code.as_str()), (416, "BLOB_UPLOAD_INVALID"));
        assert_eq!(e.into_response().headers()[header::RANGE], "0-1023");
        let e = ApiError::from_registry(R::RangeInvalid { current: 0 });
        assert_eq!(e.into_response().headers()[header::RANGE], "0-0");
    }

    #[test]
    fn unrepresentable_headers_are_dropped() {
        let resp = ApiError::new(ErrorCode::TooManyRequests, "x").header(header::RETRY_AFTER, "1\n2").into_response();
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn retry_after_is_passed_through() {
        let e = ApiError::from_proxy(
            proxy::Error::Upstream(upstream::Error::TooManyRequests { retry_after: Some("30".into()) }),
            Subject::Manifest,
        );
        let resp = e.into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "30");
    }
}
