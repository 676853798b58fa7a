//! The registry client used to reach upstreams.
//!
//! Redirects are followed here, not by reqwest, so that credentials are
//! attached per hop from the (host, scope) token cache: a redirect target on
//! another host never sees the origin's `Authorization`, and a 401 from the
//! redirect target (Artifact Registry behind registry.k8s.io) gets its own
//! token. Redirect targets are never cached: only final bodies are, by digest.
//!
//! Limits, so that a slow or hostile upstream costs bounded time and memory:
//! every operation except a blob body has an overall deadline
//! (`request_timeout`; `read_timeout` alone is per read and a trickle defeats
//! it), and every body read whole into memory (token, manifest, tags list) is
//! read with a running bound and refused as soon as it passes it.

pub mod auth;

use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LINK, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use url::Url;

use self::auth::{Challenge, Credential, TokenCache, TokenResponse};
use crate::config::{Secret, UpstreamConfig};
use crate::oci::referrers::{self, Referrer};
use crate::oci::{media, Digest, Reference, RepoName};

/// At most this many redirects per request (containerd uses the same cap).
const MAX_REDIRECTS: usize = 10;
/// At most this many pages of a paginated tags list.
const MAX_TAG_PAGES: usize = 100;
/// Largest token response accepted. Real ones are a JWT of a few KiB; the
/// body is held whole to parse it, so an endless one must not be.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// Largest tags list accepted, all pages together. Even tens of thousands
/// of tags are a few MiB of JSON; the list is held whole in memory (and
/// kept for `tag_ttl`), so an endless one must not be.
pub const MAX_TAGS_BYTES: usize = 16 * 1024 * 1024;
/// Largest referrers list accepted: the size of the largest manifest, which
/// is what a referrers index is (thousands of descriptors).
pub const MAX_REFERRERS_BYTES: usize = media::MAX_MANIFEST_BYTES;

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

/// A single-flight task that panicked or was cancelled (see `auth`).
impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Transport(format!("upstream task failed: {e}"))
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
    request_timeout: Duration,
    /// What this client was made from: a configuration reload keeps the
    /// client (its tokens, its connections) when this did not change.
    config: UpstreamConfig,
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
            request_timeout: cfg.request_timeout,
            config: cfg.clone(),
        })
    }

    /// The configuration this client was made from.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Runs one upstream operation under the overall `request_timeout`.
    async fn deadline<T>(&self, what: &str, op: impl Future<Output = Result<T>>) -> Result<T> {
        within(self.request_timeout, what, op).await
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base.join(path).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// Sends a request, following redirects and answering one auth
    /// challenge per hop. Returns the final response whatever its status.
    async fn send(&self, method: Method, mut url: Url, scope: &str, accept: Option<&str>) -> Result<reqwest::Response> {
        let mut redirects = 0;
        let mut challenged = false;
        // A credential just obtained for this hop, used even if the cache
        // has already moved on.
        let mut fresh: Option<Credential> = None;
        loop {
            let host = host_key(&url);
            let mut req = self.client.request(method.clone(), url.clone());
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            let (req, attached) = self.authorize(req, &host, fresh.take().or_else(|| self.tokens.get(&host, scope)));
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
                        // Our credentials answer only the configured host's
                        // challenges; a redirect target's token is fetched
                        // anonymously, so no other host can harvest them by
                        // naming a realm of its own.
                        let ours = host == host_key(&self.base);
                        let request = self.token_request(&realm, service.as_deref(), scope, ours)?;
                        let fetch = move || request.fetch();
                        fresh = Some(self.tokens.obtain(&host, scope, attached.as_ref(), fetch).await?);
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

    /// Attaches `cred` to a request for `host`; returns what was attached.
    fn authorize(
        &self,
        req: reqwest::RequestBuilder,
        host: &str,
        cred: Option<Credential>,
    ) -> (reqwest::RequestBuilder, Option<Credential>) {
        match cred {
            Some(Credential::Bearer(t)) => (req.bearer_auth(&t), Some(Credential::Bearer(t))),
            // Basic credentials only ever go to the configured host.
            Some(Credential::Basic) if host == host_key(&self.base) => {
                let req = req
                    .basic_auth(self.username.clone().unwrap_or_default(), self.password.as_ref().map(|p| p.0.clone()));
                (req, Some(Credential::Basic))
            }
            _ => (req, None),
        }
    }

    /// The token request for a bearer challenge, ready to run on its own.
    fn token_request(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        with_credentials: bool,
    ) -> Result<TokenRequest> {
        let mut url = Url::parse(realm).map_err(|e| Error::Invalid(format!("bad token realm {realm:?}: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.client.get(url);
        if let Some(user) = self.username.as_ref().filter(|_| with_credentials) {
            req = req.basic_auth(user, self.password.as_ref().map(|p| p.0.clone()));
        }
        Ok(TokenRequest { req, timeout: self.request_timeout })
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
            429 => Error::TooManyRequests { retry_after: retry_after(resp.headers()) },
            s => Error::Status(s),
        })
    }

    fn scope(repo: &RepoName) -> String {
        format!("repository:{repo}:pull")
    }

    pub async fn head_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestHead> {
        self.deadline("manifest HEAD", async {
            let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
            let resp = Self::check(self.send(Method::HEAD, url, &Self::scope(repo), Some(media::ACCEPT_ALL)).await?)?;
            Ok(ManifestHead { digest: digest_header(resp.headers()) })
        })
        .await
    }

    pub async fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestBody> {
        self.deadline("manifest GET", async {
            let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
            let resp = Self::check(self.send(Method::GET, url, &Self::scope(repo), Some(media::ACCEPT_ALL)).await?)?;
            let digest_header = digest_header(resp.headers());
            let content_type = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(String::from);
            let body = read_bounded(resp, media::MAX_MANIFEST_BYTES, || {
                Error::Invalid(format!("manifest larger than {} bytes", media::MAX_MANIFEST_BYTES))
            })
            .await?;
            Ok(ManifestBody { digest_header, content_type, body })
        })
        .await
    }

    /// Size of a blob, by HEAD (never downloads the body).
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        self.deadline("blob HEAD", async {
            let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
            let resp = Self::check(self.send(Method::HEAD, url, &Self::scope(repo), None).await?)?;
            Ok(resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()))
        })
        .await
    }

    /// A blob body as a stream. The deadline covers only the wait for the
    /// response headers: a large layer may rightly take long, and a stalled
    /// one is caught by `read_timeout`.
    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobBody> {
        let resp = self
            .deadline("blob GET response", async {
                let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
                Self::check(self.send(Method::GET, url, &Self::scope(repo), None).await?)
            })
            .await?;
        let size = resp.content_length();
        let stream = resp.bytes_stream().map_err(transport).boxed();
        Ok(BlobBody { size, stream })
    }

    /// The referrers of `digest` in `repo` (distribution-spec 1.1), first
    /// page only. A registry without the referrers API answers 404, which
    /// is [`Error::NotFound`] like any other.
    pub async fn referrers(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Referrer>> {
        self.deadline("referrers", async {
            let url = self.url(&format!("v2/{repo}/referrers/{digest}"))?;
            let resp = Self::check(self.send(Method::GET, url, &Self::scope(repo), Some(media::OCI_INDEX)).await?)?;
            let too_big = || Error::Invalid(format!("referrers list larger than {MAX_REFERRERS_BYTES} bytes"));
            let body = read_bounded(resp, MAX_REFERRERS_BYTES, too_big).await?;
            referrers::parse_index(&body).map_err(|e| Error::Invalid(format!("referrers list: {e}")))
        })
        .await
    }

    /// The whole tags list, following `Link` pagination, under one deadline
    /// and one size bound for all pages together.
    pub async fn tags(&self, repo: &RepoName) -> Result<Vec<String>> {
        self.deadline("tags list", self.tag_pages(repo)).await
    }

    async fn tag_pages(&self, repo: &RepoName) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let too_big = || Error::Invalid(format!("tags list larger than {MAX_TAGS_BYTES} bytes"));
        let mut url = self.url(&format!("v2/{repo}/tags/list"))?;
        let mut all = Vec::new();
        let mut read = 0;
        for _ in 0..MAX_TAG_PAGES {
            let resp = Self::check(self.send(Method::GET, url.clone(), &Self::scope(repo), None).await?)?;
            let next = resp.headers().get(LINK).and_then(|l| l.to_str().ok()).and_then(next_link);
            let body = read_bounded(resp, MAX_TAGS_BYTES - read, too_big).await?;
            read += body.len();
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

/// A token request, owned: it runs as its own task, shared by every request
/// waiting for the same (host, scope), and may outlive any one of them.
struct TokenRequest {
    req: reqwest::RequestBuilder,
    timeout: Duration,
}

impl TokenRequest {
    async fn fetch(self) -> Result<(String, Duration)> {
        within(self.timeout, "token request", async move {
            let resp = self.req.send().await.map_err(transport)?;
            let status = resp.status();
            if !status.is_success() {
                return Err(token_status_error(status, resp.headers()));
            }
            let too_big = || Error::Invalid(format!("token response larger than {MAX_TOKEN_BYTES} bytes"));
            let body = read_bounded(resp, MAX_TOKEN_BYTES, too_big).await?;
            let parsed: TokenResponse =
                serde_json::from_slice(&body).map_err(|e| Error::Invalid(format!("token response: {e}")))?;
            parsed.into_token().ok_or_else(|| Error::Invalid("token response without a token".into()))
        })
        .await
    }
}

/// A token endpoint's refusal. Only an explicit refusal means "denied": a
/// token endpoint that is down or rate limiting makes the upstream
/// unavailable, so cached content can still be served (stale-if-error).
fn token_status_error(status: StatusCode, headers: &HeaderMap) -> Error {
    match status.as_u16() {
        429 => Error::TooManyRequests { retry_after: retry_after(headers) },
        s if s >= 500 => Error::Status(s),
        _ => Error::Unauthorized(format!("token endpoint answered {status}")),
    }
}

/// Runs `op`, failing with [`Error::Timeout`] if it takes longer than `limit`.
async fn within<T>(limit: Duration, what: &str, op: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(limit, op).await {
        Ok(out) => out,
        Err(_) => Err(Error::Timeout(format!("{what} took longer than {}", humantime::format_duration(limit)))),
    }
}

/// Reads a whole body into memory, failing with `too_big()` once it would
/// exceed `limit` bytes: at once if `Content-Length` says so, else as soon
/// as the running total passes the bound, without reading further. Memory
/// never holds more than `limit` bytes plus the chunk that crossed it, even
/// when the length is absent or lies.
async fn read_bounded(resp: reqwest::Response, limit: usize, too_big: impl FnOnce() -> Error) -> Result<Bytes> {
    let announced = resp.content_length();
    if announced.is_some_and(|l| l > limit as u64) {
        return Err(too_big());
    }
    let mut body = BytesMut::with_capacity(announced.unwrap_or(0) as usize);
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(transport)?;
        if body.len() + chunk.len() > limit {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn retry_after(h: &HeaderMap) -> Option<String> {
    h.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(String::from)
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A body of `chunks` chunks of `size` bytes that counts the chunks
    /// actually pulled and reports `announce` as its exact length (what
    /// hyper does with a `Content-Length`).
    struct Counted {
        chunks: usize,
        size: usize,
        announce: Option<u64>,
        pulled: Arc<AtomicUsize>,
    }

    impl http_body::Body for Counted {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Bytes>, std::io::Error>>> {
            if self.chunks == 0 {
                return std::task::Poll::Ready(None);
            }
            self.chunks -= 1;
            self.pulled.fetch_add(1, Ordering::SeqCst);
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(vec![b'x'; self.size])))))
        }

        fn size_hint(&self) -> http_body::SizeHint {
            self.announce.map(http_body::SizeHint::with_exact).unwrap_or_default()
        }
    }

    fn chunked(chunks: usize, size: usize, announce: Option<u64>, pulled: &Arc<AtomicUsize>) -> reqwest::Response {
        let body = Counted { chunks, size, announce, pulled: pulled.clone() };
        reqwest::Response::from(axum::http::Response::new(reqwest::Body::wrap(body)))
    }

    fn too_big() -> Error {
        Error::Invalid("too big".into())
    }

    #[tokio::test]
    async fn bounded_read_accepts_up_to_the_limit() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let body = read_bounded(chunked(4, 1024, None, &pulled), 4096, too_big).await.unwrap();
        assert_eq!(body.len(), 4096);
        let body = read_bounded(chunked(4, 1024, Some(4096), &pulled), 4096, too_big).await.unwrap();
        assert_eq!(body.len(), 4096);
        let empty = read_bounded(chunked(0, 1, None, &pulled), 0, too_big).await.unwrap();
        assert!(empty.is_empty());
    }

    #[tokio::test]
    async fn bounded_read_stops_at_the_bound_without_a_length() {
        let pulled = Arc::new(AtomicUsize::new(0));
        // 1 GiB on offer in 1 KiB chunks; the bound is 64 KiB.
        let r = read_bounded(chunked(1 << 20, 1024, None, &pulled), 64 * 1024, too_big).await;
        assert_eq!(r, Err(too_big()));
        assert_eq!(pulled.load(Ordering::SeqCst), 65, "stopped at the chunk that crossed the bound");
    }

    #[tokio::test]
    async fn bounded_read_trusts_a_long_content_length_and_doubts_a_short_one() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let r = read_bounded(chunked(100, 1024, Some(100 * 1024), &pulled), 4096, too_big).await;
        assert_eq!(r, Err(too_big()));
        assert_eq!(pulled.load(Ordering::SeqCst), 0, "refused before reading");
        // A lying length is still caught by the running bound.
        let r = read_bounded(chunked(100, 1024, Some(10), &pulled), 4096, too_big).await;
        assert_eq!(r, Err(too_big()));
        assert_eq!(pulled.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_turn_into_timeouts() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(1)
        };
        let r = within(Duration::from_secs(2), "token request", slow).await;
        assert_eq!(r, Err(Error::Timeout("token request took longer than 2s".into())));
        assert!(r.unwrap_err().is_unavailable(), "a deadline allows stale serving");
        assert_eq!(within(Duration::from_secs(2), "x", async { Ok(1) }).await, Ok(1));
    }

    #[test]
    fn token_endpoint_failures_that_mean_unavailable() {
        let h = HeaderMap::new();
        assert_eq!(token_status_error(StatusCode::SERVICE_UNAVAILABLE, &h), Error::Status(503));
        assert!(matches!(token_status_error(StatusCode::TOO_MANY_REQUESTS, &h), Error::TooManyRequests { .. }));
        assert!(matches!(token_status_error(StatusCode::FORBIDDEN, &h), Error::Unauthorized(_)));
        assert!(matches!(token_status_error(StatusCode::NOT_FOUND, &h), Error::Unauthorized(_)));
    }

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
