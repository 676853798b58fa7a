//! A fake upstream registry on 127.0.0.1:0 that counts requests and can
//! misbehave on demand (truncate, corrupt, 500, 429, stall, throttle,
//! require bearer tokens, redirect blobs to another host, trickle or flood
//! the token endpoint, flood the tags list). It answers referrers lists it
//! was given and 404 for others, like a registry without the referrers API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

/// How the fake answers content requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// 500 on every /v2/<name>/... request.
    Error500,
    /// 429 with Retry-After.
    TooMany,
    /// Accept the connection, never answer.
    Stall,
    /// Blob bodies: announce the full length, send half, close.
    Truncate,
    /// Blob bodies: flip one byte.
    Corrupt,
}

/// How the fake's `/token` endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// The token from `FakeState::token`, valid for 300 s.
    Normal,
    /// HTTP 500.
    Error500,
    /// The normal answer, one byte every this long.
    Trickle(Duration),
    /// A body of this many bytes (an unterminated token string), streamed in
    /// 64 KiB chunks and never allocated whole; `announce`: with a
    /// `Content-Length`.
    Huge { bytes: u64, announce: bool },
}

/// Bytes per chunk of the fake's streamed bodies.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Logged {
    pub method: Method,
    pub path: String,
    pub authorization: Option<String>,
}

pub struct FakeState {
    /// (repo, reference) → (media type, body); tags and digests alike.
    manifests: Mutex<HashMap<(String, String), (String, Bytes)>>,
    blobs: Mutex<HashMap<String, Bytes>>,
    tags: Mutex<HashMap<String, Vec<String>>>,
    /// (repo, subject digest) → referrers index body.
    referrers: Mutex<HashMap<(String, String), Bytes>>,
    pub log: Mutex<Vec<Logged>>,
    pub mode: Mutex<Mode>,
    /// Delay between 64 KiB chunks of blob bodies, to make fills slow.
    pub throttle: Mutex<Option<Duration>>,
    /// Per-blob delay between chunks, overriding `throttle` for that digest.
    pub slow: Mutex<HashMap<String, Duration>>,
    /// Require `Authorization: Bearer <token>` (issued by /token).
    pub token: Mutex<Option<String>>,
    /// Require this exact `Authorization: Basic …` value.
    pub basic: Mutex<Option<String>>,
    /// Redirect blob GETs here (another fake), like registry.k8s.io does.
    pub redirect_blobs_to: Mutex<Option<String>>,
    /// Blob bytes sent so far (across all requests).
    pub blob_bytes_sent: Mutex<u64>,
    pub token_mode: Mutex<TokenMode>,
    /// Wait this long before answering `/token` (makes overlap certain).
    pub token_delay: Mutex<Option<Duration>>,
    /// `/token` body bytes handed to the connection so far.
    pub token_bytes_sent: Arc<AtomicU64>,
    /// Answer every tags list with a streamed body of this many bytes
    /// (no `Content-Length`), never allocated whole.
    pub huge_tags: Mutex<Option<u64>>,
    /// Wait this long before answering a tags list.
    pub tags_delay: Mutex<Option<Duration>>,
    /// Tags-list body bytes handed to the connection so far (huge lists).
    pub tags_bytes_sent: Arc<AtomicU64>,
}

#[derive(Clone)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
}

pub fn digest_of(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let state = Arc::new(FakeState {
            manifests: Mutex::default(),
            blobs: Mutex::default(),
            tags: Mutex::default(),
            referrers: Mutex::default(),
            log: Mutex::default(),
            mode: Mutex::new(Mode::Normal),
            throttle: Mutex::default(),
            slow: Mutex::default(),
            token: Mutex::default(),
            basic: Mutex::default(),
            redirect_blobs_to: Mutex::default(),
            blob_bytes_sent: Mutex::default(),
            token_mode: Mutex::new(TokenMode::Normal),
            token_delay: Mutex::default(),
            token_bytes_sent: Arc::default(),
            huge_tags: Mutex::default(),
            tags_delay: Mutex::default(),
            tags_bytes_sent: Arc::default(),
        });
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeUpstream { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, m: Mode) {
        *self.state.mode.lock().unwrap() = m;
    }

    pub fn set_throttle(&self, d: Option<Duration>) {
        *self.state.throttle.lock().unwrap() = d;
    }

    /// A blob whose body trickles: `delay` between 64 KiB chunks.
    pub fn add_slow_blob(&self, data: impl Into<Bytes>, delay: Duration) -> String {
        let d = self.add_blob(data);
        self.state.slow.lock().unwrap().insert(d.clone(), delay);
        d
    }

    /// Requires `Authorization: Bearer <token>`, issued by `/token`.
    pub fn require_token(&self, token: &str) {
        *self.state.token.lock().unwrap() = Some(token.to_string());
    }

    pub fn set_token_mode(&self, m: TokenMode) {
        *self.state.token_mode.lock().unwrap() = m;
    }

    pub fn set_token_delay(&self, d: Option<Duration>) {
        *self.state.token_delay.lock().unwrap() = d;
    }

    pub fn set_huge_tags(&self, bytes: Option<u64>) {
        *self.state.huge_tags.lock().unwrap() = bytes;
    }

    pub fn set_tags_delay(&self, d: Option<Duration>) {
        *self.state.tags_delay.lock().unwrap() = d;
    }

    /// Requests to the token endpoint so far.
    pub fn token_requests(&self) -> usize {
        self.count("GET", "/token")
    }

    pub fn token_bytes_sent(&self) -> u64 {
        self.state.token_bytes_sent.load(Ordering::SeqCst)
    }

    pub fn tags_bytes_sent(&self) -> u64 {
        self.state.tags_bytes_sent.load(Ordering::SeqCst)
    }

    pub fn add_blob(&self, data: impl Into<Bytes>) -> String {
        let data = data.into();
        let d = digest_of(&data);
        self.state.blobs.lock().unwrap().insert(d.clone(), data);
        d
    }

    /// Answers `GET /v2/<repo>/referrers/<subject>` with this index body.
    pub fn add_referrers(&self, repo: &str, subject: &str, index: impl Into<Bytes>) {
        self.state.referrers.lock().unwrap().insert((repo.to_string(), subject.to_string()), index.into());
    }

    /// Stores a manifest under its digest and, if given, a tag.
    pub fn add_manifest(&self, repo: &str, tag: Option<&str>, media_type: &str, body: impl Into<Bytes>) -> String {
        let body = body.into();
        let d = digest_of(&body);
        let mut m = self.state.manifests.lock().unwrap();
        m.insert((repo.to_string(), d.clone()), (media_type.to_string(), body.clone()));
        if let Some(t) = tag {
            m.insert((repo.to_string(), t.to_string()), (media_type.to_string(), body));
            let mut tags = self.state.tags.lock().unwrap();
            let list = tags.entry(repo.to_string()).or_default();
            if !list.iter().any(|x| x == t) {
                list.push(t.to_string());
            }
        }
        d
    }

    /// A single-platform OCI image: config + one layer of `layer` bytes.
    /// Returns (manifest digest, layer digest).
    pub fn add_image(&self, repo: &str, tag: &str, layer: impl Into<Bytes>) -> (String, String) {
        let layer = layer.into();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"repo":"{repo}","tag":"{tag}"}}"#
        );
        let cfg_d = self.add_blob(config.clone().into_bytes());
        let layer_len = layer.len();
        let layer_d = self.add_blob(layer);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg_d}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_d}","size":{layer_len}}}]}}"#,
            config.len()
        );
        let m = self.add_manifest(repo, Some(tag), "application/vnd.oci.image.manifest.v1+json", manifest.into_bytes());
        (m, layer_d)
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    /// Requests with this method whose path contains `needle`.
    pub fn count(&self, method: &str, needle: &str) -> usize {
        self.requests().iter().filter(|l| l.method == method && l.path.contains(needle)).count()
    }

    pub fn total(&self) -> usize {
        self.state.log.lock().unwrap().len()
    }
}

fn error(status: StatusCode, code: &str) -> Response {
    (status, format!(r#"{{"errors":[{{"code":"{code}","message":"fake"}}]}}"#)).into_response()
}

async fn handle(State(st): State<Arc<FakeState>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    st.log.lock().unwrap().push(Logged {
        method: method.clone(),
        path: if query.is_empty() { path.clone() } else { format!("{path}?{query}") },
        authorization: headers.get("authorization").and_then(|v| v.to_str().ok()).map(String::from),
    });
    if path == "/token" {
        return token(&st).await;
    }
    if let Some(digest) = path.strip_prefix("/cdn/") {
        // A redirect target: must never see the origin's credentials. With
        // a token of its own it challenges for that (and only that) token.
        let own = st.token.lock().unwrap().clone().map(|t| format!("Bearer {t}"));
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        if auth.is_some() && auth != own.as_deref() {
            return error(StatusCode::BAD_REQUEST, "LEAKED_AUTH");
        }
        if own.is_some() && auth.is_none() {
            let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("");
            let challenge = format!(r#"Bearer realm="http://{host}/token",service="cdn""#);
            let mut r = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
            r.headers_mut().insert("www-authenticate", challenge.parse().unwrap());
            return r;
        }
        let blob = st.blobs.lock().unwrap().get(digest).cloned();
        return match blob {
            Some(b) => send_blob(&st, &method, digest, b, Mode::Normal).await,
            None => error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        };
    }
    if path == "/v2/" {
        return "{}".into_response();
    }
    let mode = *st.mode.lock().unwrap();
    match mode {
        Mode::Error500 => return error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        Mode::TooMany => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
            r.headers_mut().insert("retry-after", "17".parse().unwrap());
            return r;
        }
        Mode::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        _ => {}
    }
    if let Some(expected) = st.basic.lock().unwrap().clone() {
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            let mut r = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
            r.headers_mut().insert("www-authenticate", r#"Basic realm="fake""#.parse().unwrap());
            return r;
        }
    }
    if let Some(token) = st.token.lock().unwrap().clone() {
        let expected = format!("Bearer {token}");
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("");
            let challenge = format!(r#"Bearer realm="http://{host}/token",service="fake",scope="repository:x:pull""#);
            let mut r = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
            r.headers_mut().insert("www-authenticate", challenge.parse().unwrap());
            return r;
        }
    }
    route(&st, &method, &path, &headers, mode).await
}

async fn route(st: &Arc<FakeState>, method: &Method, path: &str, _headers: &HeaderMap, mode: Mode) -> Response {
    let rest = path.strip_prefix("/v2/").unwrap_or("");
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        let delay = *st.tags_delay.lock().unwrap();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let huge = *st.huge_tags.lock().unwrap();
        if let Some(bytes) = huge {
            // `"tag0001",` over and over: valid-looking, never terminated.
            let unit = br#""tag0001","#;
            let chunk = Bytes::from(unit.iter().copied().cycle().take(CHUNK).collect::<Vec<u8>>());
            let prefix = Bytes::from(format!(r#"{{"name":"{repo}","tags":["#));
            let body = flood(prefix, chunk, bytes, st.tags_bytes_sent.clone());
            return ([("content-type", "application/json")], body).into_response();
        }
        let tags = st.tags.lock().unwrap().get(repo).cloned();
        return match tags {
            Some(mut t) => {
                t.sort();
                ([("content-type", "application/json")], serde_json::json!({"name": repo, "tags": t}).to_string())
                    .into_response()
            }
            None => error(StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        };
    }
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        let found = st.manifests.lock().unwrap().get(&(repo.to_string(), reference.to_string())).cloned();
        let Some((media_type, body)) = found else {
            return error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
        };
        let mut r = Response::new(if method == Method::HEAD { Body::empty() } else { Body::from(body.clone()) });
        let h = r.headers_mut();
        h.insert("content-type", media_type.parse().unwrap());
        h.insert("content-length", body.len().into());
        h.insert("docker-content-digest", digest_of(&body).parse().unwrap());
        return r;
    }
    if let Some((repo, subject)) = rest.rsplit_once("/referrers/") {
        let found = st.referrers.lock().unwrap().get(&(repo.to_string(), subject.to_string())).cloned();
        return match found {
            Some(body) => ([("content-type", "application/vnd.oci.image.index.v1+json")], body).into_response(),
            None => error(StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        };
    }
    if let Some((_repo, digest)) = rest.rsplit_once("/blobs/") {
        let blob = st.blobs.lock().unwrap().get(digest).cloned();
        let Some(blob) = blob else {
            return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
        };
        if method == Method::GET {
            if let Some(target) = st.redirect_blobs_to.lock().unwrap().clone() {
                let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
                r.headers_mut().insert("location", format!("{target}/cdn/{digest}").parse().unwrap());
                return r;
            }
        }
        return send_blob(st, method, digest, blob, mode).await;
    }
    error(StatusCode::NOT_FOUND, "NAME_UNKNOWN")
}

/// The `/token` endpoint, as `token_mode` says.
async fn token(st: &Arc<FakeState>) -> Response {
    let delay = *st.token_delay.lock().unwrap();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let token = st.token.lock().unwrap().clone().unwrap_or_default();
    let body = format!(r#"{{"token":"{token}","expires_in":300}}"#);
    let mode = *st.token_mode.lock().unwrap();
    let sent = st.token_bytes_sent.clone();
    let body = match mode {
        TokenMode::Normal => {
            sent.fetch_add(body.len() as u64, Ordering::SeqCst);
            Body::from(body)
        }
        TokenMode::Error500 => return error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        TokenMode::Trickle(every) => {
            let bytes: Vec<u8> = body.into_bytes();
            let stream = futures::stream::iter(bytes).then(move |b| {
                let sent = sent.clone();
                async move {
                    tokio::time::sleep(every).await;
                    sent.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(Bytes::from(vec![b]))
                }
            });
            Body::from_stream(stream)
        }
        TokenMode::Huge { bytes, announce } => {
            let body = flood(Bytes::from_static(br#"{"token":""#), Bytes::from(vec![b'a'; CHUNK]), bytes, sent);
            let mut r = Response::new(body);
            r.headers_mut().insert("content-type", "application/json".parse().unwrap());
            if announce {
                r.headers_mut().insert("content-length", bytes.into());
            }
            return r;
        }
    };
    ([("content-type", "application/json")], body).into_response()
}

/// A body of `prefix` then copies of `chunk`, `total` bytes in all, built
/// as it is sent (memory stays one chunk) and counted into `sent` as each
/// piece is handed to the connection.
fn flood(prefix: Bytes, chunk: Bytes, total: u64, sent: Arc<AtomicU64>) -> Body {
    let pieces = futures::stream::unfold((Some(prefix), total), move |(prefix, left)| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let piece = prefix.unwrap_or(chunk);
            let piece = piece.slice(..piece.len().min(left as usize));
            let left = left - piece.len() as u64;
            Some((piece, (None, left)))
        }
    });
    Body::from_stream(pieces.map(move |p| {
        sent.fetch_add(p.len() as u64, Ordering::SeqCst);
        Ok::<_, std::io::Error>(p)
    }))
}

async fn send_blob(st: &Arc<FakeState>, method: &Method, digest: &str, blob: Bytes, mode: Mode) -> Response {
    let len = blob.len();
    if method == Method::HEAD {
        let mut r = Response::new(Body::empty());
        r.headers_mut().insert("content-length", len.into());
        return r;
    }
    let throttle = st.slow.lock().unwrap().get(digest).copied().or(*st.throttle.lock().unwrap());
    let data = match mode {
        Mode::Truncate => blob.slice(..len / 2),
        Mode::Corrupt => {
            let mut v = blob.to_vec();
            let mid = v.len() / 2;
            v[mid] ^= 0xff;
            Bytes::from(v)
        }
        _ => blob,
    };
    let st2 = st.clone();
    let chunks: Vec<Bytes> =
        (0..data.len()).step_by(64 * 1024).map(|i| data.slice(i..(i + 64 * 1024).min(data.len()))).collect();
    let stream = futures::stream::iter(chunks).then(move |c| {
        let st = st2.clone();
        async move {
            if let Some(d) = throttle {
                tokio::time::sleep(d).await;
            }
            *st.blob_bytes_sent.lock().unwrap() += c.len() as u64;
            Ok::<_, std::io::Error>(c)
        }
    });
    let stream: futures::stream::BoxStream<'static, std::io::Result<Bytes>> = if mode == Mode::Truncate {
        // End the body early with an error so the connection is cut short
        // of the announced Content-Length.
        Box::pin(stream.chain(futures::stream::once(async { Err(std::io::Error::other("cut")) })))
    } else {
        Box::pin(stream)
    };
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert("content-length", len.into());
    r
}

use futures::StreamExt;
