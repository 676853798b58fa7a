//! Upstream authentication: `WWW-Authenticate` challenges and a token cache.
//!
//! Tokens are cached per (host, scope) until shortly before they expire.
//! Keying by host is what keeps credentials on the host they were issued
//! for: a redirect to another host (registry.k8s.io → Artifact Registry or a
//! CDN) never receives the first host's `Authorization`.
//!
//! Fetching a token is single-flight per (host, scope): a burst of cold
//! requests for one repository makes one token request, not one each. A
//! failed fetch is remembered for [`FAILURE_TTL`], so that a broken or slow
//! token endpoint is not hammered by every request that arrives meanwhile.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Error, Result};
use crate::flight::Group;

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
    Basic,
}

/// Parses the first challenge we can answer (Bearer or Basic).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let realm = params.get("realm")?.clone();
    Some(Challenge::Bearer { realm, service: params.get("service").cloned(), scope: params.get("scope").cloned() })
}

/// `key="value", key2=value2` with quoted values that may contain commas.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_ascii_lowercase();
        rest = &rest[eq + 1..];
        let value;
        if let Some(stripped) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = stripped.char_indices();
            let mut end = stripped.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n)
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            rest = &stripped[end.min(stripped.len())..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.insert(key, value);
    }
    out
}

/// The token endpoint's answer (distribution token spec).
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.or(self.access_token)?;
        // The spec's default is 60 s and it is also the minimum.
        let ttl = Duration::from_secs(self.expires_in.unwrap_or(60).max(60));
        Some((token, ttl))
    }
}

/// What to send to a host for a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Bearer(String),
    Basic,
}

/// Cache key: credentials never leave the host they were issued for.
type Key = (String, String);

enum Entry {
    /// Send this until the instant.
    Valid(Credential, Instant),
    /// The last fetch failed; answer its error until the instant.
    Failed(Error, Instant),
}

/// Cached credentials per (host, scope), with single-flight fetching and a
/// short memory of failures.
#[derive(Default)]
pub struct TokenCache {
    /// Shared with the fetch task, which records its own outcome so that it
    /// is recorded once even if every waiter has gone away.
    entries: Arc<Mutex<HashMap<Key, Entry>>>,
    flights: Arc<Group<Key, Credential, Error>>,
}

/// Renew this long before expiry so a token does not die mid-request.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// How long a failed token fetch is answered from memory. Long enough that a
/// burst of requests against a down, slow or refusing token endpoint costs
/// one fetch instead of one each (each of which may wait a whole
/// `request_timeout`); short enough that recovery is noticed within seconds.
pub const FAILURE_TTL: Duration = Duration::from_secs(5);

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        lock(&self.entries)
    }

    /// The credential to send to `host` for `scope`, if one is known and fresh.
    pub fn get(&self, host: &str, scope: &str) -> Option<Credential> {
        let mut map = self.lock();
        let k = key(host, scope);
        match map.get(&k) {
            Some(Entry::Valid(c, until)) if Instant::now() < *until => Some(c.clone()),
            Some(Entry::Valid(..)) => {
                map.remove(&k);
                None
            }
            _ => None,
        }
    }

    pub fn put(&self, host: &str, scope: &str, cred: Credential, ttl: Duration) {
        self.lock().insert(key(host, scope), valid(cred, ttl));
    }

    /// A credential for (host, scope) after `rejected` (what the request
    /// carried, if anything) was answered with a bearer challenge.
    ///
    /// Answers without fetching when another request already obtained a
    /// different credential (its 401 raced ours), or with the remembered
    /// error while a recent fetch's failure is fresh. Otherwise runs `fetch`
    /// (the token request, with its own deadline) once for all concurrent
    /// callers and caches its outcome, success or failure.
    pub async fn obtain<F, Fut>(
        &self,
        host: &str,
        scope: &str,
        rejected: Option<&Credential>,
        fetch: F,
    ) -> Result<Credential>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(String, Duration)>> + Send + 'static,
    {
        let k = key(host, scope);
        if let Some(known) = settled(&self.lock(), &k, rejected) {
            return known;
        }
        let (entries, rejected, k2) = (self.entries.clone(), rejected.cloned(), k.clone());
        self.flights
            .run(k, move || {
                let fetched = fetch();
                async move {
                    // A flight that ended between our check and this one
                    // starting has already settled it: no second fetch.
                    if let Some(known) = settled(&lock(&entries), &k2, rejected.as_ref()) {
                        return known;
                    }
                    let out = fetched.await;
                    let entry = match &out {
                        Ok((token, ttl)) => valid(Credential::Bearer(token.clone()), *ttl),
                        Err(e) => Entry::Failed(e.clone(), Instant::now() + FAILURE_TTL),
                    };
                    lock(&entries).insert(k2, entry);
                    out.map(|(token, _)| Credential::Bearer(token))
                }
            })
            .await
    }
}

/// What the cache already says for `k` after `rejected` was refused: a
/// fresh credential other than that one, or a fresh failure.
fn settled(map: &HashMap<Key, Entry>, k: &Key, rejected: Option<&Credential>) -> Option<Result<Credential>> {
    match map.get(k) {
        Some(Entry::Valid(c, until)) if Instant::now() < *until && Some(c) != rejected => Some(Ok(c.clone())),
        Some(Entry::Failed(e, until)) if Instant::now() < *until => Some(Err(e.clone())),
        _ => None,
    }
}

fn lock(entries: &Mutex<HashMap<Key, Entry>>) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
    entries.lock().unwrap_or_else(|p| p.into_inner())
}

fn key(host: &str, scope: &str) -> Key {
    (host.to_string(), scope.to_string())
}

fn valid(cred: Credential, ttl: Duration) -> Entry {
    Entry::Valid(cred, Instant::now() + ttl.saturating_sub(EXPIRY_MARGIN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn parses_docker_hub_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
    }

    #[test]
    fn parses_quoted_commas_and_basic() {
        let c = parse_challenge(r#"bearer realm="http://a/t", scope="repository:a:pull,push""#).unwrap();
        match c {
            Challenge::Bearer { scope, service, .. } => {
                assert_eq!(scope.as_deref(), Some("repository:a:pull,push"));
                assert_eq!(service, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_challenge(r#"Basic realm="registry""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    #[test]
    fn token_defaults_and_minimum_ttl() {
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"x","expires_in":5}"#).unwrap();
        assert_eq!(t.into_token(), Some(("x".into(), Duration::from_secs(60))));
        let t: TokenResponse = serde_json::from_str(r#"{"token":"y","expires_in":300}"#).unwrap();
        assert_eq!(t.into_token(), Some(("y".into(), Duration::from_secs(300))));
        let t: TokenResponse = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(t.into_token(), None);
    }

    #[test]
    fn cache_is_per_host_and_scope_and_expires() {
        let c = TokenCache::default();
        c.put("a", "s", Credential::Bearer("t".into()), Duration::from_secs(300));
        assert_eq!(c.get("a", "s"), Some(Credential::Bearer("t".into())));
        assert_eq!(c.get("b", "s"), None);
        assert_eq!(c.get("a", "other"), None);
        c.put("a", "x", Credential::Basic, Duration::from_secs(1));
        assert_eq!(c.get("a", "x"), None, "ttl below the margin is already expired");
    }

    /// A fetch that counts the times it runs and answers `out` after `delay`.
    fn counted(
        calls: &Arc<AtomicUsize>,
        delay: Duration,
        out: Result<(String, Duration)>,
    ) -> impl FnOnce() -> futures::future::BoxFuture<'static, Result<(String, Duration)>> {
        let calls = calls.clone();
        move || {
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                out
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_challenges_make_one_fetch() {
        let c = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let ok = Ok(("t".to_string(), Duration::from_secs(300)));
        let mut waiters = Vec::new();
        for _ in 0..8 {
            let (c, f) = (c.clone(), counted(&calls, Duration::from_secs(1), ok.clone()));
            waiters.push(tokio::spawn(async move { c.obtain("h", "s", None, f).await }));
        }
        for w in waiters {
            assert_eq!(w.await.unwrap(), Ok(Credential::Bearer("t".into())));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A late 401 for a request sent without the token uses the cached one...
        let late = c.obtain("h", "s", None, counted(&calls, Duration::ZERO, ok.clone())).await;
        assert_eq!(late, Ok(Credential::Bearer("t".into())));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // ...but a 401 for that very token fetches a new one.
        let renewed = Ok(("u".to_string(), Duration::from_secs(300)));
        let rejected = Credential::Bearer("t".into());
        let r = c.obtain("h", "s", Some(&rejected), counted(&calls, Duration::ZERO, renewed)).await;
        assert_eq!(r, Ok(Credential::Bearer("u".into())));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(c.get("h", "s"), Some(Credential::Bearer("u".into())));
        assert_eq!(c.get("other-host", "s"), None, "never shared across hosts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_is_remembered_for_the_failure_ttl() {
        let c = TokenCache::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let boom = Err(Error::Status(500));
        let ok = Ok(("t".to_string(), Duration::from_secs(300)));
        assert_eq!(c.obtain("h", "s", None, counted(&calls, Duration::ZERO, boom)).await, Err(Error::Status(500)));
        tokio::time::sleep(FAILURE_TTL - Duration::from_millis(100)).await;
        let again = c.obtain("h", "s", None, counted(&calls, Duration::ZERO, ok.clone())).await;
        assert_eq!(again, Err(Error::Status(500)), "the same error, without asking");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another host or scope is unaffected.
        assert!(c.obtain("h", "s2", None, counted(&calls, Duration::ZERO, ok.clone())).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = c.obtain("h", "s", None, counted(&calls, Duration::ZERO, ok)).await;
        assert_eq!(after, Ok(Credential::Bearer("t".into())), "tried again after the window");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_fetch_outcome_is_recorded_even_if_its_caller_goes_away() {
        let c = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let ok = Ok(("t".to_string(), Duration::from_secs(300)));
        let caller = tokio::spawn({
            let (c, f) = (c.clone(), counted(&calls, Duration::from_secs(1), ok));
            async move { c.obtain("h", "s", None, f).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        caller.abort();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(c.get("h", "s"), Some(Credential::Bearer("t".into())));
    }
}
