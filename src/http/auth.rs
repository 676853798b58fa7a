//! Who may do what: `[auth]`'s htpasswd users, proven by HTTP Basic
//! credentials or by a bearer token that `GET /auth/token` made from them.
//!
//! Registry clients decide how to authenticate from the `GET /v2/` ping
//! alone: containers/image (skopeo, podman, CRI-O) and moby (docker) apply
//! the challenges of that one answer to every later request, and never
//! answer a later 401 with credentials. So with `[auth]` the ping without
//! credentials is refused with a Bearer challenge (the registry token flow
//! of Docker Hub, Harbor and distribution): clients then fetch a token from
//! our own [`TOKEN_PATH`], with their credentials or anonymously, and send
//! it with every request. A Basic challenge on the ping would not do: moby
//! fails every request to a registry that challenged Basic when it has no
//! credentials for it, which would break anonymous `registry-mirrors` pulls.
//!
//! The rules, decided from the method (and, for the ping, the path) before
//! the route is parsed:
//! - Writes ([`Access::Push`], [`Access::Delete`]) always need a valid user:
//!   Basic credentials or a user's token. Without `[auth]` there are no
//!   users, so every write is refused: the mirror never has an open write
//!   endpoint.
//! - Pulls ([`Access::Pull`]) need none, unless `auth.anonymous_pull` is
//!   false; only the ping without credentials is challenged, so that
//!   clients learn where tokens come from. An anonymous token counts as no
//!   credentials (it only answers the ping's challenge); so does Basic with
//!   an empty user and password, which containers/image sends when it has
//!   none. Credentials that are sent are always checked, so that a wrong
//!   password or a stale token is reported rather than silently ignored.
//! - Every refusal is `401 UNAUTHORIZED`: with `[auth]`, with the Bearer
//!   challenge (realm, service and, on repository requests, the scope);
//!   without, with a Basic one (there is no token to fetch). The token
//!   endpoint's own refusals challenge Basic: that is how `docker login`
//!   learns that a password is wrong.
//!
//! bcrypt is deliberately slow, so verifying runs on the blocking pool, at
//! most `MAX_VERIFYING` at once, and a success is remembered for
//! [`VERIFIED_FOR`]: a push of 50 layers costs one bcrypt round, not 50,
//! and so does a client fetching a new token for each repository.
//! Concurrent requests with the same credentials share one verification.
//! The remembered key is a SHA-256 of `user:password`; the plaintext is
//! never kept, logged or sent anywhere, and neither is any token.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use axum::http::request::Parts;
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use super::error::ApiError;
use super::token::{TokenKey, TOKEN_TTL};
use crate::config::AuthConfig;
use crate::flight;
use crate::oci::route::{self, V2Route};
use crate::oci::ErrorCode;

/// The challenge of refusals that only credentials can answer: writes
/// without `[auth]`, and the token endpoint's. Its realm is what clients
/// show when prompting.
pub const CHALLENGE: &str = "Basic realm=\"klts-mirror\"";
/// Where tokens are issued; outside `/v2/`, like Docker Hub's and Harbor's
/// token services, so that no repository name can collide with it.
pub const TOKEN_PATH: &str = "/auth/token";
/// The `service` of our Bearer challenges, which clients send back to the
/// token endpoint (which accepts any).
pub const SERVICE: &str = "klts-mirror";
/// How long a successful verification is trusted without running bcrypt
/// again. Long enough to cover a `docker push` (every layer, chunk and
/// manifest is its own request with the same credentials); short enough
/// that the cache key, a fast hash of the credentials, does not linger in
/// memory for long after the client is done.
pub const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Distinct credentials remembered at once. Each entry is a few dozen
/// bytes; the bound keeps a stream of random valid-looking logins from
/// growing memory.
const VERIFIED_CAPACITY: usize = 1024;
/// bcrypt verifications running at once. Each holds a core for its whole
/// duration (tens to hundreds of milliseconds at common costs) and a
/// thread of the blocking pool that blob reads share; a flood of wrong
/// passwords must queue here, not starve downloads.
const MAX_VERIFYING: usize = 4;
/// A valid bcrypt salt and hash (from the `bcrypt` crate's tests) that no
/// password of ours matches: an unknown user is verified against it, so
/// that answering takes as long as for a known user with a wrong password.
const DUMMY_SALT_AND_HASH: &str = "L6Bc/AlTQHyd9liGgGEZyOFLPHNgyxeEPfgYfBCVxJ7JIlwxyVU3u";
/// Scopes echoed from one token request, at most; clients ask for one or
/// two (a push: the target, and the source of a mount).
const MAX_SCOPES: usize = 16;

/// What a request wants to do, from its method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// GET and HEAD.
    Pull,
    /// POST, PUT, PATCH, and any other method that is not a pull or a delete.
    Push,
    /// DELETE.
    Delete,
}

impl Access {
    pub fn of(method: &Method) -> Access {
        match *method {
            Method::GET | Method::HEAD => Access::Pull,
            Method::DELETE => Access::Delete,
            // Unknown methods count as writes: refusing too much is safe.
            _ => Access::Push,
        }
    }

    /// The actions of a token scope (`repository:<name>:<actions>`) that
    /// cover this access, as distribution's token auth names them.
    fn actions(self) -> &'static str {
        match self {
            Access::Pull => "pull",
            Access::Push => "pull,push",
            Access::Delete => "delete",
        }
    }
}

/// A user whose credentials were verified for this request. Handlers find
/// it in the request's extensions (`parts.extensions.get::<User>()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User(Arc<str>);

impl User {
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// The realm of our Bearer challenges: `<scheme>://<host>/auth/token`, the
/// host being the one the client named in the request, so that the token
/// endpoint is reached exactly as the registry was (an IP, a DNS name, a
/// forwarded port).
#[derive(Debug, Clone)]
pub struct Realm {
    scheme: &'static str,
    /// The listen address, for a request that names no usable host (HTTP/1.0
    /// without `Host`, or a `Host` that is not an authority).
    fallback: String,
}

impl Realm {
    /// `tls`: whether the listener serves HTTPS (then so does the token
    /// endpoint: it is the same listener).
    pub fn new(tls: bool, listen: SocketAddr) -> Realm {
        Realm { scheme: if tls { "https" } else { "http" }, fallback: listen.to_string() }
    }

    /// The token endpoint's URL as the client of `req` reaches it.
    pub fn url(&self, req: &Parts) -> String {
        // An absolute-form or HTTP/2 request names its authority in the
        // URI, which then takes precedence over `Host` (RFC 9112 §3.2.2).
        let named = req
            .uri
            .authority()
            .map(Authority::as_str)
            .filter(|a| valid_authority(a))
            .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| valid_authority(h)));
        format!("{}://{}{TOKEN_PATH}", self.scheme, named.unwrap_or(&self.fallback))
    }
}

/// Whether `s` is a plain `host[:port]`: it is quoted into a challenge and
/// followed by clients, so nothing but an authority without user info, in
/// the characters of names and IP literals, is taken from the client.
fn valid_authority(s: &str) -> bool {
    let Ok(a) = s.parse::<Authority>() else { return false };
    let canonical = match a.port_u16() {
        Some(port) => format!("{}:{port}", a.host()),
        None => a.host().to_string(),
    };
    !a.host().is_empty() && canonical == s && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
}

/// Basic credentials as sent. No `Debug`: the password must not reach a
/// log line by accident.
struct Credentials {
    user: String,
    password: Vec<u8>,
}

impl Credentials {
    /// The cache key: SHA-256 of `user:password`. Unambiguous because a
    /// Basic user id cannot contain a colon.
    fn key(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.user.as_bytes());
        h.update(b":");
        h.update(&self.password);
        h.finalize().into()
    }
}

/// What a request's `Authorization` header offers. No `Debug`: it holds a
/// password or a token.
enum Presented<'a> {
    /// No header, a scheme that is not ours, or Basic with an empty user
    /// and password (containers/image's way of sending nothing).
    Nothing,
    Basic(Credentials),
    Bearer(&'a str),
    /// Basic that does not decode, or a token that is not text.
    Malformed,
}

impl Presented<'_> {
    fn from_headers(headers: &HeaderMap) -> Presented<'_> {
        let Some(value) = headers.get(header::AUTHORIZATION) else { return Presented::Nothing };
        let value = value.as_bytes();
        let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ').unwrap_or(value.len()));
        let rest = rest.trim_ascii();
        if scheme.eq_ignore_ascii_case(b"bearer") {
            return std::str::from_utf8(rest).map_or(Presented::Malformed, Presented::Bearer);
        }
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return Presented::Nothing;
        }
        let Ok(d) = base64::engine::general_purpose::STANDARD.decode(rest) else { return Presented::Malformed };
        let Some(colon) = d.iter().position(|&b| b == b':') else { return Presented::Malformed };
        let Ok(user) = std::str::from_utf8(&d[..colon]) else { return Presented::Malformed };
        if user.is_empty() && colon + 1 == d.len() {
            return Presented::Nothing;
        }
        Presented::Basic(Credentials { user: user.to_string(), password: d[colon + 1..].to_vec() })
    }
}

/// Who a request turned out to be, before its access is decided.
enum Identity {
    /// No credentials at all.
    Nobody,
    /// A valid anonymous token: no credentials, but the ping's challenge
    /// was answered.
    Anonymous,
    User(User),
}

/// The htpasswd users, by name.
struct Users {
    hashes: HashMap<String, Arc<str>>,
    /// Verified for unknown users; at the cost most entries use.
    dummy: Arc<str>,
}

/// A verification that could not run to the end (its task panicked).
#[derive(Debug, Clone)]
struct Interrupted(String);

impl From<tokio::task::JoinError> for Interrupted {
    fn from(e: tokio::task::JoinError) -> Self {
        Interrupted(e.to_string())
    }
}

/// What a configuration reload (SIGHUP) may change: the users and whether
/// pulls are anonymous. Remembered verifications belong to the user list
/// they were checked against, so a new list starts with none: a changed
/// password stops working at once, not after [`VERIFIED_FOR`].
struct Rules {
    /// `None` without `[auth]`: nobody may write, and no tokens are issued.
    users: Option<Arc<Users>>,
    anonymous_pull: bool,
    /// Recent successes: key → (user, when verified).
    verified: Arc<quick_cache::sync::Cache<[u8; 32], (User, Instant)>>,
    flights: Arc<flight::Group<[u8; 32], Option<User>, Interrupted>>,
}

impl Rules {
    fn new(cfg: Option<&AuthConfig>) -> Rules {
        let users = cfg.map(|c| {
            let mut costs = BTreeMap::<u32, usize>::new();
            for e in &c.users {
                *costs.entry(e.cost).or_default() += 1;
            }
            let cost = costs.iter().max_by_key(|(_, n)| **n).map_or(bcrypt::DEFAULT_COST, |(c, _)| *c);
            Arc::new(Users {
                hashes: c.users.iter().map(|e| (e.user.clone(), Arc::from(e.hash.as_str()))).collect(),
                dummy: Arc::from(format!("$2b${cost:02}${DUMMY_SALT_AND_HASH}")),
            })
        });
        Rules {
            users,
            anonymous_pull: cfg.is_none_or(|c| c.anonymous_pull),
            verified: Arc::new(quick_cache::sync::Cache::new(VERIFIED_CAPACITY)),
            flights: Arc::default(),
        }
    }
}

pub struct Authenticator {
    /// Swapped whole by [`Authenticator::reconfigure`]; each request
    /// decides with the one it loaded.
    rules: ArcSwap<Rules>,
    /// Kept across reloads: tokens already issued stay valid for users
    /// that still exist.
    tokens: TokenKey,
    permits: Arc<Semaphore>,
    verifications: Arc<AtomicU64>,
}

impl Authenticator {
    /// Fails only when the operating system has no randomness for the
    /// token key.
    pub fn from_config(cfg: Option<&AuthConfig>) -> Result<Authenticator, getrandom::Error> {
        Ok(Authenticator {
            rules: ArcSwap::from_pointee(Rules::new(cfg)),
            tokens: TokenKey::random()?,
            permits: Arc::new(Semaphore::new(MAX_VERIFYING)),
            verifications: Arc::default(),
        })
    }

    /// Applies a reloaded `[auth]` (users, `anonymous_pull`) to the
    /// requests that start from now on.
    pub fn reconfigure(&self, cfg: Option<&AuthConfig>) {
        self.rules.store(Arc::new(Rules::new(cfg)));
    }

    /// Whether [`TOKEN_PATH`] is served: only with `[auth]`. Without, that
    /// path is nothing special.
    pub fn issues_tokens(&self) -> bool {
        self.rules.load().users.is_some()
    }

    /// The key tokens are signed with, for callers that mint their own (tests
    /// of expiry, for one).
    pub fn token_key(&self) -> &TokenKey {
        &self.tokens
    }

    /// Decides whether `req` may have the access its method asks for:
    /// `Ok(Some(user))` with verified credentials, `Ok(None)` for an
    /// anonymous pull that is allowed, else a 401 with the challenge.
    pub async fn authorize(&self, req: &Parts, realm: &Realm) -> Result<Option<User>, ApiError> {
        let access = Access::of(&req.method);
        let rules = self.rules.load_full();
        let Some(users) = &rules.users else {
            return match access {
                Access::Pull => Ok(None),
                _ => Err(self
                    .refusal(req, realm, access, "authentication required")
                    .cause("writes need [auth]; none is configured")),
            };
        };
        let who = match Presented::from_headers(&req.headers) {
            Presented::Nothing => Identity::Nobody,
            Presented::Malformed => return Err(self.refusal(req, realm, access, "malformed credentials")),
            Presented::Basic(creds) => match self.verify(&rules, users, creds).await {
                Ok(Some(user)) => Identity::User(user),
                Ok(None) => return Err(self.refusal(req, realm, access, "invalid username or password")),
                Err(Interrupted(why)) => {
                    return Err(self.refusal(req, realm, access, "invalid username or password").cause(why))
                }
            },
            Presented::Bearer(token) => match self.token_user(users, token) {
                Ok(Some(user)) => Identity::User(user),
                Ok(None) => Identity::Anonymous,
                Err(why) => return Err(self.invalid_token(req, realm, access).cause(why)),
            },
        };
        match who {
            Identity::User(user) => Ok(Some(user)),
            _ if access != Access::Pull || !rules.anonymous_pull => {
                Err(self.refusal(req, realm, access, "authentication required"))
            }
            // The ping tells clients how to authenticate: it must challenge
            // them, even though the pulls that follow need nothing.
            Identity::Nobody if matches!(route::parse(req.uri.path()), Ok(V2Route::Base)) => {
                Err(self.refusal(req, realm, access, "authentication required"))
            }
            _ => Ok(None),
        }
    }

    /// The 401 for a request that needs `access` and lacks credentials for
    /// it: with `[auth]`, the Bearer challenge that sends clients to the
    /// token endpoint; without, a Basic one (no credentials will do, but the
    /// answer has the shape clients expect).
    pub fn refusal(&self, req: &Parts, realm: &Realm, access: Access, message: &str) -> ApiError {
        let challenge = match self.rules.load().users {
            Some(_) => bearer_challenge(req, realm, access),
            None => CHALLENGE.to_string(),
        };
        ApiError::new(ErrorCode::Unauthorized, message).header(header::WWW_AUTHENTICATE, challenge)
    }

    /// A token that is expired, garbled or not ours (RFC 6750's
    /// `invalid_token`): the client should fetch a new one.
    fn invalid_token(&self, req: &Parts, realm: &Realm, access: Access) -> ApiError {
        let challenge = bearer_challenge(req, realm, access) + ",error=\"invalid_token\"";
        ApiError::new(ErrorCode::Unauthorized, "invalid or expired token").header(header::WWW_AUTHENTICATE, challenge)
    }

    /// The user a token speaks for (`None`: anonymous), or why it is
    /// refused.
    fn token_user(&self, users: &Users, token: &str) -> Result<Option<User>, &'static str> {
        match self.tokens.verify(token, SystemTime::now())? {
            None => Ok(None),
            // The key dies with the process, but a reload may have removed
            // the user the token was issued to.
            Some(name) => match users.hashes.get_key_value(name.as_str()) {
                Some((name, _)) => Ok(Some(User(Arc::from(name.as_str())))),
                None => Err("token for an unknown user"),
            },
        }
    }

    /// `GET /auth/token[?service=…&scope=…&account=…]`: a token for the
    /// user of the Basic credentials sent, or an anonymous one when none
    /// are sent and pulls are anonymous. Scopes are only echoed: what a
    /// token allows is decided per request, from its user.
    pub async fn token(&self, req: &Parts) -> Result<Response, ApiError> {
        if req.method != Method::GET && req.method != Method::HEAD {
            return Err(ApiError::unsupported("this method on the token endpoint"));
        }
        let rules = self.rules.load_full();
        let Some(users) = &rules.users else {
            return Err(ApiError::new(ErrorCode::Unsupported, "tokens need [auth]"));
        };
        let refused =
            |message: &str| ApiError::new(ErrorCode::Unauthorized, message).header(header::WWW_AUTHENTICATE, CHALLENGE);
        let user = match Presented::from_headers(&req.headers) {
            Presented::Basic(creds) => match self.verify(&rules, users, creds).await {
                Ok(Some(user)) => Some(user),
                Ok(None) => return Err(refused("invalid username or password")),
                Err(Interrupted(why)) => return Err(refused("invalid username or password").cause(why)),
            },
            Presented::Malformed => return Err(refused("malformed credentials")),
            // A token does not buy another one: a user's would otherwise be
            // renewable forever without the password.
            Presented::Nothing | Presented::Bearer(_) if rules.anonymous_pull => None,
            Presented::Nothing | Presented::Bearer(_) => return Err(refused("authentication required")),
        };
        let now = SystemTime::now();
        let token = self.tokens.issue(user.as_ref().map(User::name), now);
        let scopes = scopes(req.uri.query());
        tracing::debug!(user = user.as_ref().map(User::name), scope = %scopes.join(" "), "token issued");
        let mut body = serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": TOKEN_TTL.as_secs(),
            "issued_at": humantime::format_rfc3339_seconds(now).to_string(),
        });
        if !scopes.is_empty() {
            body["scope"] = scopes.join(" ").into();
        }
        let headers = [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")];
        Ok((headers, body.to_string()).into_response())
    }

    /// bcrypt verifications run so far (cache hits and shared flights run
    /// none).
    pub fn bcrypt_verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    async fn verify(&self, rules: &Rules, users: &Arc<Users>, creds: Credentials) -> Result<Option<User>, Interrupted> {
        let key = creds.key();
        if let Some((user, at)) = rules.verified.get(&key) {
            if at.elapsed() < VERIFIED_FOR {
                return Ok(Some(user));
            }
        }
        let (users, verified, permits, count) =
            (users.clone(), rules.verified.clone(), self.permits.clone(), self.verifications.clone());
        rules
            .flights
            .run(key, move || async move {
                let _permit = permits.acquire_owned().await.expect("never closed");
                let known = users.hashes.get_key_value(creds.user.as_str());
                let hash = known.map_or(&users.dummy, |(_, h)| h).clone();
                let user = known.map(|(name, _)| User(Arc::from(name.as_str())));
                count.fetch_add(1, Ordering::Relaxed);
                let matched = tokio::task::spawn_blocking(move || {
                    // An unknown user costs the same bcrypt round as a known
                    // one; its result is ignored.
                    bcrypt::verify(&creds.password, &hash).unwrap_or(false)
                })
                .await?;
                let user = user.filter(|_| matched);
                if let Some(u) = &user {
                    // Remembered before the flight ends, so no request in
                    // between runs bcrypt again.
                    verified.insert(key, (u.clone(), Instant::now()));
                }
                Ok(user)
            })
            .await
    }
}

/// `Bearer realm="…",service="klts-mirror"`, plus the scope that covers
/// the request when it is about a repository.
fn bearer_challenge(req: &Parts, realm: &Realm, access: Access) -> String {
    let mut c = format!("Bearer realm=\"{}\",service=\"{SERVICE}\"", realm.url(req));
    let name = match route::parse(req.uri.path()) {
        Ok(
            V2Route::Manifest { name, .. }
            | V2Route::Blob { name, .. }
            | V2Route::Upload { name, .. }
            | V2Route::TagsList { name }
            | V2Route::Referrers { name, .. },
        ) => Some(name),
        _ => None,
    };
    if let Some(name) = name {
        // A valid name is `[a-z0-9._/-]`: nothing to escape.
        let _ = write!(c, ",scope=\"repository:{name}:{}\"", access.actions());
    }
    c
}

/// The well-formed scopes (`<type>:<name>:<actions>`) of a token request,
/// for the echo. Each `scope` parameter may hold several, space-separated
/// (RFC 6749 §3.3); a name may hold colons (`host:port/repo`).
fn scopes(query: Option<&str>) -> Vec<String> {
    let safe = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._/:,*@".contains(&b));
    let mut out = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k != "scope" {
            continue; // service, account, client_id, offline_token: accepted, not needed
        }
        for scope in v.split_ascii_whitespace() {
            let well_formed = scope
                .split_once(':')
                .and_then(|(kind, rest)| Some((kind, rest.rsplit_once(':')?)))
                .is_some_and(|(kind, (name, actions))| safe(kind) && safe(name) && safe(actions));
            if well_formed && out.len() < MAX_SCOPES {
                out.push(scope.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, Request};

    fn entry(user: &str, password: &str) -> crate::htpasswd::Entry {
        let hash = bcrypt::hash_with_salt(password, 4, [3; 16]).unwrap().format_for_version(bcrypt::Version::TwoY);
        crate::htpasswd::Entry { user: user.into(), hash, cost: 4 }
    }

    fn auth(anonymous_pull: bool) -> Authenticator {
        let cfg = AuthConfig { htpasswd: None, anonymous_pull, users: vec![entry("alice", "s3cret")] };
        Authenticator::from_config(Some(&cfg)).unwrap()
    }

    fn realm() -> Realm {
        Realm::new(false, "0.0.0.0:5000".parse().unwrap())
    }

    fn authorization(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        authorization(&format!("Basic {v}"))
    }

    fn bearer(token: &str) -> HeaderMap {
        authorization(&format!("Bearer {token}"))
    }

    /// A request for `access` on a manifest (or, for `path`, anything).
    fn req(access: Access, headers: &HeaderMap) -> Parts {
        let method = match access {
            Access::Pull => Method::GET,
            Access::Push => Method::PUT,
            Access::Delete => Method::DELETE,
        };
        at(method, "/v2/pause/manifests/3.9", headers)
    }

    fn at(method: Method, path: &str, headers: &HeaderMap) -> Parts {
        let mut parts = Request::builder().method(method).uri(path).body(()).unwrap().into_parts().0;
        parts.headers = headers.clone();
        parts.headers.insert(header::HOST, HeaderValue::from_static("mirror.example:5000"));
        parts
    }

    async fn authorize(a: &Authenticator, access: Access, headers: &HeaderMap) -> Result<Option<User>, ApiError> {
        a.authorize(&req(access, headers), &realm()).await
    }

    /// The status and challenge of a refusal.
    fn refused(r: Result<Option<User>, ApiError>) -> (u16, String) {
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        let challenge = e.headers.iter().find(|(n, _)| n == header::WWW_AUTHENTICATE).map(|(_, v)| v.clone());
        (e.status.as_u16(), challenge.expect("a challenge"))
    }

    const BEARER: &str = "Bearer realm=\"http://mirror.example:5000/auth/token\",service=\"klts-mirror\"";

    fn scoped(actions: &str) -> String {
        format!("{BEARER},scope=\"repository:pause:{actions}\"")
    }

    #[test]
    fn access_from_method() {
        assert_eq!(Access::of(&Method::GET), Access::Pull);
        assert_eq!(Access::of(&Method::HEAD), Access::Pull);
        assert_eq!(Access::of(&Method::DELETE), Access::Delete);
        for m in [Method::PUT, Method::POST, Method::PATCH, Method::OPTIONS, Method::from_bytes(b"MOVE").unwrap()] {
            assert_eq!(Access::of(&m), Access::Push, "{m}");
        }
    }

    #[tokio::test]
    async fn without_auth_nobody_writes_and_everybody_pulls() {
        let a = Authenticator::from_config(None).unwrap();
        let none = HeaderMap::new();
        assert!(!a.issues_tokens());
        assert_eq!(authorize(&a, Access::Pull, &none).await.unwrap(), None);
        assert_eq!(a.authorize(&at(Method::GET, "/v2/", &none), &realm()).await.unwrap(), None, "no ping challenge");
        assert_eq!(authorize(&a, Access::Pull, &basic("alice", "s3cret")).await.unwrap(), None);
        for access in [Access::Push, Access::Delete] {
            for h in [&none, &basic("alice", "s3cret"), &bearer("abc")] {
                assert_eq!(refused(authorize(&a, access, h).await), (401, CHALLENGE.to_string()));
            }
        }
        assert_eq!(a.bcrypt_verifications(), 0);
    }

    #[tokio::test]
    async fn users_write_and_everybody_else_is_challenged() {
        let a = auth(true);
        let none = HeaderMap::new();
        assert_eq!(authorize(&a, Access::Pull, &none).await.unwrap(), None, "anonymous pull");
        assert_eq!(refused(authorize(&a, Access::Push, &none).await), (401, scoped("pull,push")));
        assert_eq!(refused(authorize(&a, Access::Delete, &none).await), (401, scoped("delete")));
        let alice = authorize(&a, Access::Push, &basic("alice", "s3cret")).await.unwrap().unwrap();
        assert_eq!(alice.name(), "alice");
        assert_eq!(refused(authorize(&a, Access::Delete, &basic("alice", "wrong")).await).0, 401);
        assert_eq!(refused(authorize(&a, Access::Push, &basic("mallory", "s3cret")).await).0, 401);
        let wrong_on_pull = refused(authorize(&a, Access::Pull, &basic("alice", "wrong")).await);
        assert_eq!(wrong_on_pull, (401, scoped("pull")), "sent credentials count");
        assert_eq!(refused(authorize(&a, Access::Push, &authorization("Basic %%%")).await).0, 401);
        // containers/image's "no credentials" is none, not a failed login.
        assert_eq!(authorize(&a, Access::Pull, &authorization("Basic Og==")).await.unwrap(), None);
        assert_eq!(refused(authorize(&a, Access::Push, &authorization("Basic Og==")).await).0, 401);
        // A scheme that is not ours is no credentials.
        assert_eq!(authorize(&a, Access::Pull, &authorization("Digest x")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_ping_challenges_unless_a_token_or_a_user_answers() {
        let a = auth(true);
        let ping = |h: &HeaderMap| at(Method::GET, "/v2/", h);
        for h in [HeaderMap::new(), authorization("Basic Og==")] {
            assert_eq!(refused(a.authorize(&ping(&h), &realm()).await), (401, BEARER.to_string()));
        }
        let head = at(Method::HEAD, "/v2", &HeaderMap::new());
        assert_eq!(refused(a.authorize(&head, &realm()).await).0, 401);
        let anonymous = a.token_key().issue(None, SystemTime::now());
        assert_eq!(a.authorize(&ping(&bearer(&anonymous)), &realm()).await.unwrap(), None);
        let user = a.authorize(&ping(&basic("alice", "s3cret")), &realm()).await.unwrap();
        assert_eq!(user.unwrap().name(), "alice");
    }

    #[tokio::test]
    async fn tokens_speak_for_their_user_and_bad_ones_are_refused() {
        let a = auth(true);
        let now = SystemTime::now();
        let alice = a.token_key().issue(Some("alice"), now);
        let user = authorize(&a, Access::Push, &bearer(&alice)).await.unwrap().unwrap();
        assert_eq!(user.name(), "alice");
        let anonymous = a.token_key().issue(None, now);
        assert_eq!(authorize(&a, Access::Pull, &bearer(&anonymous)).await.unwrap(), None);
        assert_eq!(refused(authorize(&a, Access::Push, &bearer(&anonymous)).await), (401, scoped("pull,push")));
        let expired = a.token_key().issue(Some("alice"), now - TOKEN_TTL - Duration::from_secs(1));
        let other = auth(true).token_key().issue(Some("alice"), now);
        let mallory = a.token_key().issue(Some("mallory"), now);
        for t in [expired.as_str(), &other, &mallory, "", "abc", "abc.def"] {
            for access in [Access::Pull, Access::Push] {
                let invalid = format!("{},error=\"invalid_token\"", scoped(access.actions()));
                assert_eq!(refused(authorize(&a, access, &bearer(t)).await), (401, invalid), "{t:?}");
            }
        }
        assert_eq!(a.bcrypt_verifications(), 0, "tokens cost no bcrypt");
    }

    #[tokio::test]
    async fn anonymous_pull_off_needs_a_user_for_pulls() {
        let a = auth(false);
        assert_eq!(refused(authorize(&a, Access::Pull, &HeaderMap::new()).await).0, 401);
        assert_eq!(refused(authorize(&a, Access::Pull, &authorization("Basic Og==")).await).0, 401);
        let anonymous = a.token_key().issue(None, SystemTime::now());
        assert_eq!(refused(authorize(&a, Access::Pull, &bearer(&anonymous)).await).0, 401);
        assert!(authorize(&a, Access::Pull, &basic("alice", "s3cret")).await.unwrap().is_some());
        let alice = a.token_key().issue(Some("alice"), SystemTime::now());
        assert!(authorize(&a, Access::Pull, &bearer(&alice)).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_reload_changes_users_and_anonymous_pull_at_once() {
        let a = auth(true);
        let alice = basic("alice", "s3cret");
        assert!(authorize(&a, Access::Push, &alice).await.unwrap().is_some(), "remembered from now on");
        let alice_token = a.token_key().issue(Some("alice"), SystemTime::now());
        let bob_token = a.token_key().issue(Some("bob"), SystemTime::now());

        // alice's password changes, bob arrives, pulls need a user.
        let users = vec![entry("alice", "n3w"), entry("bob", "b0b")];
        a.reconfigure(Some(&AuthConfig { htpasswd: None, anonymous_pull: false, users }));
        assert_eq!(refused(authorize(&a, Access::Push, &alice).await).0, 401, "the old password is not remembered");
        assert!(authorize(&a, Access::Push, &basic("alice", "n3w")).await.unwrap().is_some());
        assert!(authorize(&a, Access::Push, &basic("bob", "b0b")).await.unwrap().is_some());
        assert_eq!(refused(authorize(&a, Access::Pull, &HeaderMap::new()).await).0, 401, "no anonymous pulls");
        let user = authorize(&a, Access::Pull, &bearer(&alice_token)).await.unwrap();
        assert_eq!(user.unwrap().name(), "alice", "tokens survive a reload (same key)");
        assert!(authorize(&a, Access::Pull, &bearer(&bob_token)).await.unwrap().is_some());

        // bob leaves: his token stops working.
        a.reconfigure(Some(&AuthConfig { htpasswd: None, anonymous_pull: true, users: vec![entry("alice", "n3w")] }));
        assert_eq!(refused(authorize(&a, Access::Push, &bearer(&bob_token)).await).0, 401);
        assert_eq!(authorize(&a, Access::Pull, &HeaderMap::new()).await.unwrap(), None, "anonymous pulls again");

        // [auth] removed: nobody writes, everybody pulls, no tokens.
        a.reconfigure(None);
        assert!(!a.issues_tokens());
        assert_eq!(refused(authorize(&a, Access::Push, &basic("alice", "n3w")).await).1, CHALLENGE);
    }

    #[test]
    fn the_realm_is_the_host_the_client_named() {
        let r = Realm::new(true, "[::1]:5443".parse().unwrap());
        let with_host = |host: &str| {
            let mut p = Request::get("/v2/").body(()).unwrap().into_parts().0;
            p.headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            r.url(&p)
        };
        assert_eq!(with_host("mirror.example:5000"), "https://mirror.example:5000/auth/token");
        assert_eq!(with_host("mirror.example"), "https://mirror.example/auth/token");
        assert_eq!(with_host("10.0.0.7:443"), "https://10.0.0.7:443/auth/token");
        assert_eq!(with_host("[fd00::7]:5000"), "https://[fd00::7]:5000/auth/token");
        for bad in ["", "a@b", "evil\",x=\"y", "a b", "a:b:c", "host:", "host:99999", "x/y", "h%41"] {
            assert_eq!(with_host(bad), "https://[::1]:5443/auth/token", "{bad:?}");
        }
        let absolute = Request::get("http://named.example:81/v2/").body(()).unwrap().into_parts().0;
        assert_eq!(r.url(&absolute), "https://named.example:81/auth/token", "the URI's authority wins");
        let plain = Realm::new(false, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(
            plain.url(&Request::get("/v2/").body(()).unwrap().into_parts().0),
            "http://127.0.0.1:5000/auth/token"
        );
    }

    #[test]
    fn scopes_are_parsed_leniently() {
        let q = "service=klts-mirror&scope=repository%3Apause%3Apull&scope=repository:127.0.0.1:5000/a/b:pull,push \
                 repository:x:*&scope=nonsense&scope=a:%22:pull&account=alice";
        assert_eq!(
            scopes(Some(q)),
            ["repository:pause:pull", "repository:127.0.0.1:5000/a/b:pull,push", "repository:x:*"]
        );
        assert!(scopes(None).is_empty());
        let many = vec!["scope=repository:a:pull"; 40].join("&");
        assert_eq!(scopes(Some(&many)).len(), MAX_SCOPES);
    }

    #[tokio::test]
    async fn successes_are_remembered_failures_are_not() {
        let a = auth(true);
        for _ in 0..20 {
            authorize(&a, Access::Push, &basic("alice", "s3cret")).await.unwrap();
        }
        assert_eq!(a.bcrypt_verifications(), 1);
        for _ in 0..3 {
            let _ = authorize(&a, Access::Push, &basic("alice", "nope")).await;
        }
        assert_eq!(a.bcrypt_verifications(), 4, "a failure is verified every time");
        // Unknown users cost a round too (no enumeration by timing).
        let _ = authorize(&a, Access::Push, &basic("mallory", "nope")).await;
        assert_eq!(a.bcrypt_verifications(), 5);
        // The token endpoint shares the cache.
        let r = a.token(&at(Method::GET, "/auth/token", &basic("alice", "s3cret"))).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(a.bcrypt_verifications(), 5);
        // Concurrent requests with the same credentials share one round.
        let b = Arc::new(auth(true));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { authorize(&b, Access::Push, &basic("alice", "s3cret")).await.is_ok() })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(b.bcrypt_verifications(), 1);
    }

    #[test]
    fn the_dummy_hash_is_a_valid_hash_nobody_matches() {
        let a = auth(true);
        let rules = a.rules.load();
        let dummy = &rules.users.as_ref().unwrap().dummy;
        assert!(dummy.starts_with("$2b$04$"), "at the users' cost: {dummy}");
        assert!(!bcrypt::verify("s3cret", dummy).unwrap());
        assert!(!bcrypt::verify("", dummy).unwrap());
    }
}
