//! Who may do what: HTTP Basic credentials checked against `[auth]`'s
//! htpasswd users.
//!
//! The rules, decided from the method alone, before the path is parsed:
//! - Writes ([`Access::Push`], [`Access::Delete`]) always need a valid user.
//!   Without `[auth]` there are no users, so every write is refused: the
//!   mirror never has an open write endpoint.
//! - Pulls ([`Access::Pull`]) need none, unless `auth.anonymous_pull` is
//!   false. Credentials sent with a pull are still checked, so that a
//!   wrong password is reported rather than silently ignored.
//! - Every refusal is `401 UNAUTHORIZED` with a Basic challenge, which is
//!   what makes docker, containerd, podman, skopeo and crane send the
//!   credentials they have.
//!
//! bcrypt is deliberately slow, so verifying runs on the blocking pool, at
//! most `MAX_VERIFYING` at once, and a success is remembered for
//! [`VERIFIED_FOR`]: a push of 50 layers costs one bcrypt round, not 50.
//! Concurrent requests with the same credentials share one verification.
//! The remembered key is a SHA-256 of `user:password`; the plaintext is
//! never kept, logged or sent anywhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, Method};
use base64::Engine;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::config::AuthConfig;
use crate::flight;
use crate::oci::ErrorCode;

/// The challenge on every 401, and the realm clients show when prompting.
pub const CHALLENGE: &str = "Basic realm=\"klts-mirror\"";
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

/// Basic credentials as sent. No `Debug`: the password must not reach a
/// log line by accident.
struct Credentials {
    user: String,
    password: Vec<u8>,
}

impl Credentials {
    /// `Authorization: Basic base64(user:password)`; `None` for any other
    /// scheme, `Some(Err)` for a Basic header that does not decode.
    fn from_headers(headers: &HeaderMap) -> Option<Result<Credentials, ()>> {
        let value = headers.get(header::AUTHORIZATION)?.as_bytes();
        let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ').unwrap_or(value.len()));
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim_ascii()).map_err(|_| ());
        Some(decoded.and_then(|d| {
            let colon = d.iter().position(|&b| b == b':').ok_or(())?;
            let user = std::str::from_utf8(&d[..colon]).map_err(|_| ())?.to_string();
            Ok(Credentials { user, password: d[colon + 1..].to_vec() })
        }))
    }

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

pub struct Authenticator {
    /// `None` without `[auth]`: nobody may write.
    users: Option<Arc<Users>>,
    anonymous_pull: bool,
    /// Recent successes: key → (user, when verified).
    verified: Arc<quick_cache::sync::Cache<[u8; 32], (User, Instant)>>,
    flights: Arc<flight::Group<[u8; 32], Option<User>, Interrupted>>,
    permits: Arc<Semaphore>,
    verifications: Arc<AtomicU64>,
}

impl Authenticator {
    pub fn from_config(cfg: Option<&AuthConfig>) -> Authenticator {
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
        Authenticator {
            users,
            anonymous_pull: cfg.is_none_or(|c| c.anonymous_pull),
            verified: Arc::new(quick_cache::sync::Cache::new(VERIFIED_CAPACITY)),
            flights: Arc::default(),
            permits: Arc::new(Semaphore::new(MAX_VERIFYING)),
            verifications: Arc::default(),
        }
    }

    /// Decides whether a request with these headers may have `access`:
    /// `Ok(Some(user))` with verified credentials, `Ok(None)` for an
    /// anonymous pull that is allowed, else a 401 with the challenge.
    pub async fn authorize(&self, headers: &HeaderMap, access: Access) -> Result<Option<User>, ApiError> {
        let Some(users) = &self.users else {
            return match access {
                Access::Pull => Ok(None),
                _ => Err(unauthorized("authentication required").cause("writes need [auth]; none is configured")),
            };
        };
        match Credentials::from_headers(headers) {
            None if access == Access::Pull && self.anonymous_pull => Ok(None),
            None => Err(unauthorized("authentication required")),
            Some(Err(())) => Err(unauthorized("malformed Basic credentials")),
            Some(Ok(creds)) => match self.verify(users, creds).await {
                Ok(Some(user)) => Ok(Some(user)),
                Ok(None) => Err(unauthorized("invalid username or password")),
                Err(Interrupted(why)) => Err(unauthorized("invalid username or password").cause(why)),
            },
        }
    }

    /// bcrypt verifications run so far (cache hits and shared flights run
    /// none).
    pub fn bcrypt_verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    async fn verify(&self, users: &Arc<Users>, creds: Credentials) -> Result<Option<User>, Interrupted> {
        let key = creds.key();
        if let Some((user, at)) = self.verified.get(&key) {
            if at.elapsed() < VERIFIED_FOR {
                return Ok(Some(user));
            }
        }
        let (users, verified, permits, count) =
            (users.clone(), self.verified.clone(), self.permits.clone(), self.verifications.clone());
        self.flights
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

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message).header(header::WWW_AUTHENTICATE, CHALLENGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn entry(user: &str, password: &str) -> crate::htpasswd::Entry {
        let hash = bcrypt::hash_with_salt(password, 4, [3; 16]).unwrap().format_for_version(bcrypt::Version::TwoY);
        crate::htpasswd::Entry { user: user.into(), hash, cost: 4 }
    }

    fn auth(anonymous_pull: bool) -> Authenticator {
        let cfg = AuthConfig { htpasswd: None, anonymous_pull, users: vec![entry("alice", "s3cret")] };
        Authenticator::from_config(Some(&cfg))
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {v}")).unwrap());
        h
    }

    fn code(r: Result<Option<User>, ApiError>) -> u16 {
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        assert!(e.headers.iter().any(|(n, v)| n == header::WWW_AUTHENTICATE && v == CHALLENGE), "{e:?}");
        e.status.as_u16()
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
        let a = Authenticator::from_config(None);
        let none = HeaderMap::new();
        assert_eq!(a.authorize(&none, Access::Pull).await.unwrap(), None);
        assert_eq!(a.authorize(&basic("alice", "s3cret"), Access::Pull).await.unwrap(), None);
        for access in [Access::Push, Access::Delete] {
            assert_eq!(code(a.authorize(&none, access).await), 401);
            assert_eq!(code(a.authorize(&basic("alice", "s3cret"), access).await), 401);
        }
        assert_eq!(a.bcrypt_verifications(), 0);
    }

    #[tokio::test]
    async fn users_write_and_everybody_else_is_challenged() {
        let a = auth(true);
        let none = HeaderMap::new();
        assert_eq!(a.authorize(&none, Access::Pull).await.unwrap(), None, "anonymous pull");
        assert_eq!(code(a.authorize(&none, Access::Push).await), 401);
        let alice = a.authorize(&basic("alice", "s3cret"), Access::Push).await.unwrap().unwrap();
        assert_eq!(alice.name(), "alice");
        assert_eq!(code(a.authorize(&basic("alice", "wrong"), Access::Delete).await), 401);
        assert_eq!(code(a.authorize(&basic("mallory", "s3cret"), Access::Push).await), 401);
        assert_eq!(code(a.authorize(&basic("alice", "wrong"), Access::Pull).await), 401, "sent credentials count");
        let mut odd = HeaderMap::new();
        odd.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic %%%"));
        assert_eq!(code(a.authorize(&odd, Access::Push).await), 401);
        odd.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(a.authorize(&odd, Access::Pull).await.unwrap(), None, "not ours to judge");
        assert_eq!(code(a.authorize(&odd, Access::Push).await), 401);
    }

    #[tokio::test]
    async fn anonymous_pull_off_needs_a_user_for_pulls() {
        let a = auth(false);
        assert_eq!(code(a.authorize(&HeaderMap::new(), Access::Pull).await), 401);
        assert!(a.authorize(&basic("alice", "s3cret"), Access::Pull).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn successes_are_remembered_failures_are_not() {
        let a = auth(true);
        for _ in 0..20 {
            a.authorize(&basic("alice", "s3cret"), Access::Push).await.unwrap();
        }
        assert_eq!(a.bcrypt_verifications(), 1);
        for _ in 0..3 {
            let _ = a.authorize(&basic("alice", "nope"), Access::Push).await;
        }
        assert_eq!(a.bcrypt_verifications(), 4, "a failure is verified every time");
        // Unknown users cost a round too (no enumeration by timing).
        let _ = a.authorize(&basic("mallory", "nope"), Access::Push).await;
        assert_eq!(a.bcrypt_verifications(), 5);
        // Concurrent requests with the same credentials share one round.
        let b = Arc::new(auth(true));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.authorize(&basic("alice", "s3cret"), Access::Push).await.is_ok() })
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
        let dummy = &a.users.as_ref().unwrap().dummy;
        assert!(dummy.starts_with("$2b$04$"), "at the users' cost: {dummy}");
        assert!(!bcrypt::verify("s3cret", dummy).unwrap());
        assert!(!bcrypt::verify("", dummy).unwrap());
    }
}
