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
pub mod blobs;
pub mod error;
pub mod headers;
pub mod manifests;
pub mod range;
pub mod rejection;
pub mod request_id;
pub mod tags;

pub use self::request_id::X_REQUEST_ID;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use self::auth::{Access, Authenticator};
use self::error::{ApiError, Subject};
use self::headers::API_VERSION;
use crate::oci::route::{self, V2Route};
use crate::oci::RepoName;
use crate::proxy::Proxy;
use crate::registry::Registry;

/// What every request is served with.
#[derive(Clone)]
pub struct AppState {
    pub proxy: Arc<Proxy>,
    pub registry: Arc<Registry>,
    pub auth: Arc<Authenticator>,
}

pub fn router(app: AppState) -> Router {
    Router::new().fallback(handle).with_state(app)
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
            dispatch(&app, &req).await
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
pub struct Params {
    pub ns: Option<String>,
    pub n: Option<String>,
    pub last: Option<String>,
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

/// Routes a request to its resource's handler.
async fn dispatch(app: &AppState, req: &Parts) -> Result<Response, ApiError> {
    let route = route::parse(req.uri.path())?;
    let params = Params::parse(req.uri.query());
    let method = &req.method;
    if method != Method::GET && method != Method::HEAD {
        let what = if matches!(route, V2Route::Upload { .. }) { "pushing" } else { "this method" };
        return Err(ApiError::unsupported(what));
    }
    let head = method == Method::HEAD;
    let route_key = |name: &RepoName, subject| {
        app.proxy.route(name, params.ns.as_deref()).map_err(|e| ApiError::from_proxy(e, subject))
    };
    match route {
        V2Route::Base => Ok(([(header::CONTENT_TYPE, "application/json")], "{}").into_response()),
        V2Route::Catalog => Err(ApiError::unsupported("the catalog")),
        V2Route::Upload { .. } => Err(ApiError::unsupported("pushing")),
        V2Route::Referrers { .. } => Err(ApiError::unsupported("the referrers API").status(StatusCode::NOT_FOUND)),
        V2Route::Manifest { name, reference } => {
            let key = route_key(&name, Subject::Manifest)?;
            manifests::get(app, &key, &reference, head).await
        }
        V2Route::Blob { name, digest } => {
            let key = route_key(&name, Subject::Blob)?;
            blobs::get(app, &key, &digest, req).await
        }
        V2Route::TagsList { name } => {
            let key = route_key(&name, Subject::Repository)?;
            tags::list(app, &key, &name, &params).await
        }
    }
}
