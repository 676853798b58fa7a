//! The registry client used to reach upstreams.
//!
//! Redirects are followed here, not by reqwest, so that credentials are
//! attached per hop from the (host, scope) token cache: a redirect target on
//! another host never sees the origin's `Authorization`, and a 401 from the
//! redirect target (Artifact Registry behind registry.k8s.io) gets its own
//! token. Redirect targets are never cached: only final bodies are, by digest.

pub mod auth;

use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LINK, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use url::Url;

use self::auth::{Challenge, Credential, TokenCache, TokenResponse};
use crate::config::{Secret, UpstreamConfig};
use crate::oci::{media, Digest, Reference, RepoName};

/// At most this many redirects per request (containerd uses the same cap).
const MAX_REDIRECTS: usize = 10;
/// At most this many pages of a paginated tags list.
const MAX_TAG_PAGES: usize = 100;

/// Why an upstream request failed. Cloneable so one failed fill can be
/// reported to every waiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("upstream has no such content")]
    NotFound,
    #[error("upstream denied access: {0}")]
    Unauthorized(String),
    #[error("upstream rate limit reached")]
    TooManyRequests { retry_after: Option<String> },
    #[error("upstream answered HTTP {0}")]
    Status(u16),
    #[error("upstream timed out: {0}")]
    Timeout(String),
    #[error("cannot reach upstream: {0}")]
    Transport(String),
    #[error("invalid upstream response: {0}")]
    Invalid(String),
}

impl Error {
    /// Failures after which a cached copy is served instead (stale-if-error):
    /// upstream is down, slow or rate limiting, not saying "no such thing".
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::TooManyRequests { .. } | Error::Timeout(_) | Error::Transport(_) => true,
            Error::Status(s) => *s >= 500,
            _ => false,
        }
    }
}

fn transport(e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Timeout(e.to_string())
    } else {
        // The source chain carries the useful part (connection refused, ...).
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        Error::Transport(msg)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What a manifest HEAD tells.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    pub digest: Option<Digest>,
}

/// A manifest fetched whole (bounded by `media::MAX_MANIFEST_BYTES`).
#[derive(Debug, Clone)]
pub struct ManifestBody {
    pub digest_header: Option<Digest>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// A blob body on its way from upstream.
pub struct BlobBody {
    /// From `Content-Length`, when upstream sent one.
    pub size: Option<u64>,
    pub stream: BoxStream<'static, Result<Bytes>>,
}

/// One configured upstream registry.
pub struct Upstream {
    /// Canonical name (the `[upstreams."<name>"]` key).
    pub name: String,
    base: Url,
    client: reqwest::Client,
    username: Option<String>,
    password: Option<Secret>,
    tokens: TokenCache,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("base", &self.base.as_str()).finish()
    }
}

fn host_key(url: &Url) -> String {
    format!("{}://{}:{}", url.scheme(), url.host_str().unwrap_or(""), url.port_or_known_default().unwrap_or(0))
}

impl Upstream {
    pub fn new(name: &str, cfg: &UpstreamConfig) -> Result<Upstream> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .user_agent(concat!("klts-mirror/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut base = cfg.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Upstream {
            name: name.to_string(),
            base,
            client,
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            tokens: TokenCache::default(),
        })
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base.join(path).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// Sends a request, following redirects and answering one auth
    /// challenge per hop. Returns the final response whatever its status.
    async fn send(&self, method: Method, mut url: Url, scope: &str, accept: Option<&str>) -> Result<reqwest::Response> {
        let mut redirects = 0;
        let mut challenged = false;
        loop {
            let host = host_key(&url);
            let mut req = self.client.request(method.clone(), url.clone());
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            match self.tokens.get(&host, scope) {
                Some(Credential::Bearer(t)) => req = req.bearer_auth(t),
                // Basic credentials only ever go to the configured host.
                Some(Credential::Basic) if host == host_key(&self.base) => {
                    req = req.basic_auth(
                        self.username.clone().unwrap_or_default(),
                        self.password.as_ref().map(|p| p.0.clone()),
                    );
                }
                _ => {}
            }
            let resp = req.send().await.map_err(transport)?;
            let status = resp.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(Error::Invalid("too many redirects".into()));
                }
                let loc = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| Error::Invalid(format!("{status} without Location")))?;
                url = url.join(loc).map_err(|e| Error::Invalid(format!("bad redirect {loc:?}: {e}")))?;
                challenged = false;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge =
                    resp.headers().get(WWW_AUTHENTICATE).and_then(|h| h.to_str().ok()).and_then(auth::parse_challenge);
                match challenge {
                    Some(Challenge::Bearer { realm, service, .. }) => {
                        let (token, ttl) = self.fetch_token(&realm, service.as_deref(), scope).await?;
                        self.tokens.put(&host, scope, Credential::Bearer(token), ttl);
                        continue;
                    }
                    Some(Challenge::Basic) if self.username.is_some() && host == host_key(&self.base) => {
                        self.tokens.put(&host, scope, Credential::Basic, Duration::from_secs(3600));
                        continue;
                    }
                    _ => {}
                }
            }
            return Ok(resp);
        }
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<(String, Duration)> {
        let mut url = Url::parse(realm).map_err(|e| Error::Invalid(format!("bad token realm {realm:?}: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.client.get(url);
        if let Some(user) = &self.username {
            req = req.basic_auth(user, self.password.as_ref().map(|p| p.0.clone()));
        }
        let resp = req.send().await.map_err(transport)?;
        if !resp.status().is_success() {
            return Err(Error::Unauthorized(format!("token endpoint answered {}", resp.status())));
        }
        let body = resp.bytes().await.map_err(transport)?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| Error::Invalid(format!("token response: {e}")))?;
        parsed.into_token().ok_or_else(|| Error::Invalid("token response without a token".into()))
    }

    /// Maps an error status to [`Error`]; passes 2xx through.
    fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        Err(match status.as_u16() {
            404 => Error::NotFound,
            401 | 403 => Error::Unauthorized(format!("HTTP {status}")),
            429 => Error::TooManyRequests {
                retry_after: resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(String::from),
            },
            s => Error::Status(s),
        })
    }

    fn scope(repo: &RepoName) -> String {
        format!("repository:{repo}:pull")
    }

    pub async fn head_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestHead> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let resp = Self::check(self.send(Method::HEAD, url, &Self::scope(repo), Some(media::ACCEPT_ALL)).await?)?;
        Ok(ManifestHead { digest: digest_header(resp.headers()) })
    }

    pub async fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestBody> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let resp = Self::check(self.send(Method::GET, url, &Self::scope(repo), Some(media::ACCEPT_ALL)).await?)?;
        let too_big = || Error::Invalid(format!("manifest larger than {} bytes", media::MAX_MANIFEST_BYTES));
        if resp.content_length().is_some_and(|l| l > media::MAX_MANIFEST_BYTES as u64) {
            return Err(too_big());
        }
        let digest_header = digest_header(resp.headers());
        let content_type = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(String::from);
        // Read with a running bound: a lying or absent Content-Length must
        // not let a manifest grow without limit in memory.
        let mut body = bytes::BytesMut::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(transport)?;
            if body.len() + chunk.len() > media::MAX_MANIFEST_BYTES {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(ManifestBody { digest_header, content_type, body: body.freeze() })
    }

    /// Size of a blob, by HEAD (never downloads the body).
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let resp = Self::check(self.send(Method::HEAD, url, &Self::scope(repo), None).await?)?;
        Ok(resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()))
    }

    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobBody> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let resp = Self::check(self.send(Method::GET, url, &Self::scope(repo), None).await?)?;
        let size = resp.content_length();
        let stream = resp.bytes_stream().map_err(transport).boxed();
        Ok(BlobBody { size, stream })
    }

    /// The whole tags list, following `Link` pagination.
    pub async fn tags(&self, repo: &RepoName) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(&format!("v2/{repo}/tags/list"))?;
        let mut all = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let resp = Self::check(self.send(Method::GET, url.clone(), &Self::scope(repo), None).await?)?;
            let next = resp.headers().get(LINK).and_then(|l| l.to_str().ok()).and_then(next_link);
            let body = resp.bytes().await.map_err(transport)?;
            let page: TagList = serde_json::from_slice(&body).map_err(|e| Error::Invalid(format!("tags list: {e}")))?;
            all.extend(page.tags.unwrap_or_default());
            match next {
                Some(n) => url = url.join(&n).map_err(|e| Error::Invalid(e.to_string()))?,
                None => break,
            }
        }
        Ok(all)
    }
}

fn digest_header(h: &HeaderMap) -> Option<Digest> {
    h.get("docker-content-digest").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// The target of `Link: <...>; rel="next"`.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .contains("rel=\"next\"")
            .then(|| target.to_string())
            .or_else(|| params.contains("rel=next").then(|| target.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_errors_allow_stale_serving() {
        assert!(Error::TooManyRequests { retry_after: None }.is_unavailable());
        assert!(Error::Status(503).is_unavailable());
        assert!(Error::Timeout("x".into()).is_unavailable());
        assert!(Error::Transport("x".into()).is_unavailable());
        assert!(!Error::NotFound.is_unavailable());
        assert!(!Error::Status(400).is_unavailable());
        assert!(!Error::Unauthorized("x".into()).is_unavailable());
    }

    #[test]
    fn link_header_next() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?n=2&last=b")
        );
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
    }

    #[test]
    fn host_keys_include_scheme_and_port() {
        assert_eq!(host_key(&Url::parse("https://registry.k8s.io/v2/").unwrap()), "https://registry.k8s.io:443");
        assert_ne!(
            host_key(&Url::parse("http://127.0.0.1:1/").unwrap()),
            host_key(&Url::parse("http://127.0.0.1:2/").unwrap())
        );
    }
}
