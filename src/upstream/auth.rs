//! Upstream authentication: `WWW-Authenticate` challenges and a token cache.
//!
//! Tokens are cached per (host, scope) until shortly before they expire.
//! Keying by host is what keeps credentials on the host they were issued
//! for: a redirect to another host (registry.k8s.io → Artifact Registry or a
//! CDN) never receives the first host's `Authorization`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Cached credentials per (host, scope).
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<(String, String), (Credential, Instant)>>,
}

/// Renew this long before expiry so a token does not die mid-request.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

impl TokenCache {
    pub fn get(&self, host: &str, scope: &str) -> Option<Credential> {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = (host.to_string(), scope.to_string());
        match map.get(&key) {
            Some((c, until)) if Instant::now() < *until => Some(c.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, host: &str, scope: &str, cred: Credential, ttl: Duration) {
        let until = Instant::now() + ttl.saturating_sub(EXPIRY_MARGIN);
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.insert((host.to_string(), scope.to_string()), (cred, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
