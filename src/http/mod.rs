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
//! dispatched; with `[auth]`, `GET /auth/token` issues the bearer tokens
//! that clients authorize with ([`auth::TOKEN_PATH`], [`token`]).

pub mod auth;
pub mod blobs;
pub mod body;
pub mod catalog;
pub mod error;
pub mod headers;
pub mod manifests;
pub mod range;
pub mod referrers;
pub mod rejection;
pub mod request_id;
pub mod tags;
pub mod token;
pub mod uploads;

pub use self::request_id::X_REQUEST_ID;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::Router;

use self::auth::{Authenticator, Realm, TOKEN_PATH};
use self::error::{ApiError, Subject};
use self::headers::API_VERSION;
use crate::oci::route::{self, V2Route};
use crate::oci::RepoName;
use crate::proxy::Proxy;
use crate::registry::uploads::Uploads;
use crate::registry::Registry;

/// What every request is served with.
#[derive(Clone)]
pub struct AppState {
    pub proxy: Arc<Proxy>,
    pub registry: Arc<Registry>,
    pub auth: Arc<Authenticator>,
    pub uploads: Arc<Uploads>,
    /// Where this listener's Bearer challenges send clients for tokens.
    pub realm: Arc<Realm>,
}

pub fn router(app: AppState) -> Router {
    Router::new().fallback(handle).with_state(app)
}

/// Every response, answer or error, leaves through here: this is where it
/// gets its `X-Request-Id` and where a failure is logged, once, under that
/// id (the client sees only the fixed text of [`ApiError`]).
async fn handle(State(app): State<AppState>, req: Request) -> Response {
    // The parts (unlike the body) can be borrowed across awaits; the body
    // goes to the handler that reads it (uploads, manifest PUTs).
    let (mut req, body) = req.into_parts();
    let id = request_id::for_request(&req.headers);
    // Nothing is parsed or routed for a request that may not be made. The
    // verified user, if any, travels in the request's extensions. The token
    // endpoint decides for itself: it is where credentials are exchanged.
    let answer = if req.uri.path() == TOKEN_PATH && app.auth.issues_tokens() {
        match app.auth.token(&req).await {
            Ok(r) => Ok(r),
            Err(e) => Err(body::refuse(e, &req.headers, body).await),
        }
    } else {
        match app.auth.authorize(&req, &app.realm).await {
            Ok(user) => {
                if let Some(user) = user {
                    req.extensions.insert(user);
                }
                dispatch(&app, &req, body).await
            }
            Err(e) => Err(e),
        }
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
    /// `?digest=` of a monolithic upload or an upload's final PUT.
    pub digest: Option<String>,
    /// `?mount=<digest>&from=<repo>` of a cross-repository mount.
    pub mount: Option<String>,
    pub from: Option<String>,
    /// `?artifactType=` of a referrers listing.
    pub artifact_type: Option<String>,
}

impl Params {
    fn parse(query: Option<&str>) -> Params {
        let mut p = Params::default();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match &*k {
                "ns" => &mut p.ns,
                "n" => &mut p.n,
                "last" => &mut p.last,
                "digest" => &mut p.digest,
                "mount" => &mut p.mount,
                "from" => &mut p.from,
                "artifactType" => &mut p.artifact_type,
                _ => continue,
            };
            *slot = Some(v.into_owned());
        }
        p
    }
}

/// Routes a request to its resource's handler, by route and method.
async fn dispatch(app: &AppState, req: &Parts, body: Body) -> Result<Response, ApiError> {
    let route = match route::parse(req.uri.path()) {
        Ok(route) => route,
        Err(e) => return Err(body::refuse(e.into(), &req.headers, body).await),
    };
    let params = Params::parse(req.uri.query());
    let read = req.method == Method::GET || req.method == Method::HEAD;
    let head = req.method == Method::HEAD;
    let route_key = |name: &RepoName, subject| {
        app.proxy.route(name, params.ns.as_deref()).map_err(|e| ApiError::from_proxy(e, subject))
    };
    match route {
        V2Route::Base if read => Ok(([(header::CONTENT_TYPE, "application/json")], "{}").into_response()),
        V2Route::Catalog if read => catalog::list(app, &params).await,
        V2Route::Manifest { name, reference } => {
            let key = match route_key(&name, Subject::Manifest) {
                Ok(key) => key,
                Err(e) => return Err(body::refuse(e, &req.headers, body).await),
            };
            match req.method {
                _ if read => manifests::get(app, &key, &reference, head).await,
                Method::PUT => manifests::put(app, &key, &reference, req, body).await,
                Method::DELETE => manifests::delete(app, &key, &reference).await,
                _ => Err(method_not_allowed()),
            }
        }
        V2Route::Blob { name, digest } => {
            let key = route_key(&name, Subject::Blob)?;
            match req.method {
                _ if read => blobs::get(app, &key, &digest, req).await,
                Method::DELETE => blobs::delete(app, &key, &digest).await,
                _ => Err(method_not_allowed()),
            }
        }
        V2Route::Upload { name, id } => {
            let key = route_key(&name, Subject::Blob)?;
            uploads::handle(app, &key, &name, id, &params, req, body).await
        }
        V2Route::TagsList { name } if read => {
            let key = route_key(&name, Subject::Repository)?;
            tags::list(app, &key, &name, &params).await
        }
        V2Route::Referrers { name, digest } if read => {
            let key = route_key(&name, Subject::Manifest)?;
            referrers::get(app, &key, &digest, &params, head).await
        }
        _ => Err(method_not_allowed()),
    }
}

/// A method the resource does not offer.
fn method_not_allowed() -> ApiError {
    ApiError::unsupported("this method on this resource")
}
