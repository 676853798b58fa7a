//! `ApiError`: every failure as the spec's JSON error body.
//!
//! Lower layers' errors are translated here, with the context of what was
//! asked for (a manifest, a blob, a tags list), because "upstream said 404"
//! means MANIFEST_UNKNOWN for one and BLOB_UNKNOWN for the other. Only spec
//! error codes are ever emitted. 5xx answers are logged once, here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::oci::route::RouteError;
use crate::oci::ErrorCode;
use crate::proxy;
use crate::upstream;

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
    pub detail: Option<String>,
    pub headers: Vec<(header::HeaderName, String)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        let status = StatusCode::from_u16(code.default_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError { status, code, message: message.into(), detail: None, headers: Vec::new() }
    }

    pub fn status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> ApiError {
        self.detail = Some(detail.into());
        self
    }

    pub fn header(mut self, name: header::HeaderName, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }

    pub fn unsupported(what: &str) -> ApiError {
        ApiError::new(ErrorCode::Unsupported, format!("{what} is not supported by this mirror"))
    }

    /// Translates a proxy error for a request about `subject`.
    pub fn from_proxy(e: proxy::Error, subject: Subject) -> ApiError {
        use proxy::Error as P;
        match e {
            P::Routing(r) => ApiError::new(ErrorCode::NameUnknown, r.to_string()),
            P::ManifestUnknown => ApiError::new(ErrorCode::ManifestUnknown, "manifest unknown"),
            P::BlobUnknown => ApiError::new(ErrorCode::BlobUnknown, "blob unknown"),
            P::NameUnknown => ApiError::new(ErrorCode::NameUnknown, "repository name not known to registry"),
            P::Upstream(u) => ApiError::from_upstream(u, subject),
            P::Corrupt(why) => ApiError::new(subject.unknown(), "upstream content failed verification")
                .status(StatusCode::BAD_GATEWAY)
                .detail(why),
            P::Storage(why) | P::Internal(why) => {
                ApiError::new(subject.unknown(), "internal error").status(StatusCode::INTERNAL_SERVER_ERROR).detail(why)
            }
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
            U::Unauthorized(why) => ApiError::new(ErrorCode::Denied, "upstream denied access").detail(why),
            U::Timeout(why) => {
                ApiError::new(subject.unknown(), "upstream timed out").status(StatusCode::GATEWAY_TIMEOUT).detail(why)
            }
            e => ApiError::new(subject.unknown(), "upstream unavailable")
                .status(StatusCode::BAD_GATEWAY)
                .detail(e.to_string()),
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
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, code = self.code.as_str(), message = %self.message, detail = ?self.detail, "request failed");
        }
        let mut entry = serde_json::json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(d) = &self.detail {
            entry["detail"] = serde_json::Value::String(d.clone());
        }
        let body = serde_json::json!({ "errors": [entry] }).to_string();
        let mut resp = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
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
