//! Test environment: a fake upstream and the mirror, both on 127.0.0.1:0,
//! the mirror running in-process against a temporary filesystem store.

#![allow(dead_code)]

pub mod fake;

use std::path::PathBuf;

use klts_mirror::{Config, Mirror};
use tokio::sync::oneshot;

#[allow(unused_imports)] // not every test binary uses every item
pub use fake::{digest_of, FakeUpstream, Mode};

pub struct Env {
    pub upstream: FakeUpstream,
    pub mirror: Mirror,
    pub url: String,
    pub client: reqwest::Client,
    pub data: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    _dir: std::sync::Arc<tempfile::TempDir>,
}

/// Knobs for a test's mirror configuration.
#[derive(Clone)]
pub struct Options {
    pub tag_ttl: &'static str,
    pub offline: bool,
    pub read_timeout: &'static str,
    /// `request_timeout` of both upstreams.
    pub request_timeout: &'static str,
    pub default_upstream: &'static str,
    /// `(username, password_env)` for the registry.k8s.io upstream.
    pub credentials: Option<(&'static str, &'static str)>,
    /// The URL configured for every upstream instead of the fake's (for
    /// example a closed port, to see how unreachable upstreams are answered).
    pub upstream_url: Option<String>,
    /// The body of a `[server]` table (connection limits and timeouts).
    pub server: Option<&'static str>,
    /// The body of an `[uploads]` table (`max_age`).
    pub uploads: Option<&'static str>,
    /// `auth.htpasswd`: with it the mirror has an `[auth]` table (see
    /// [`write_htpasswd`]); without it, no users and no writes.
    pub htpasswd: Option<PathBuf>,
    /// `auth.anonymous_pull`; `None` leaves the key out (its default).
    pub anonymous_pull: Option<bool>,
    /// `(tls.cert, tls.key)`: the mirror serves HTTPS only and `Env::url`
    /// is an `https://` URL (`Env::client` does not trust it: bring one).
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tag_ttl: "5m",
            offline: false,
            read_timeout: "2s",
            request_timeout: "5s",
            default_upstream: "registry.k8s.io",
            credentials: None,
            upstream_url: None,
            server: None,
            uploads: None,
            htpasswd: None,
            anonymous_pull: None,
            tls: None,
        }
    }
}

pub fn config_text(upstream: &str, data: &std::path::Path, o: &Options) -> String {
    let mut text = format!(
        r#"
listen = "127.0.0.1:0"
[server]
{server}
[storage]
backend = "filesystem"
path = "{data}"
[upstreams."registry.k8s.io"]
url = "{upstream}"
aliases = ["k8s.gcr.io"]
read_timeout = "{rt}"
request_timeout = "{rqt}"
connect_timeout = "2s"
{creds}
[upstreams."docker.io"]
url = "{upstream}"
read_timeout = "{rt}"
request_timeout = "{rqt}"
[routing]
default_upstream = "{du}"
[cache]
tag_ttl = "{ttl}"
offline = {offline}
"#,
        data = data.display(),
        server = o.server.unwrap_or(""),
        rt = o.read_timeout,
        rqt = o.request_timeout,
        du = o.default_upstream,
        ttl = o.tag_ttl,
        offline = o.offline,
        creds =
            o.credentials.map(|(u, env)| format!("username = \"{u}\"\npassword_env = \"{env}\"")).unwrap_or_default(),
    );
    if let Some(u) = o.uploads {
        text += &format!("[uploads]\n{u}\n");
    }
    if let Some(p) = &o.htpasswd {
        text += &format!("[auth]\nhtpasswd = \"{}\"\n", p.display());
        if let Some(a) = o.anonymous_pull {
            text += &format!("anonymous_pull = {a}\n");
        }
    }
    if let Some((cert, key)) = &o.tls {
        text += &format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display());
    }
    text
}

/// Writes an htpasswd file of `$2y$` bcrypt entries, as `htpasswd -B`
/// does, at the lowest cost (4: tests need the format, not the strength),
/// and returns its path.
pub fn write_htpasswd(path: &std::path::Path, users: &[(&str, &str)]) -> PathBuf {
    let entry =
        |p: &str| bcrypt::hash_with_result(p, 4).expect("bcrypt hash").format_for_version(bcrypt::Version::TwoY);
    let lines: Vec<String> = users.iter().map(|(u, p)| format!("{u}:{}", entry(p))).collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    path.to_path_buf()
}

impl Env {
    pub async fn start() -> Env {
        Env::with(Options::default()).await
    }

    pub async fn with(o: Options) -> Env {
        let upstream = FakeUpstream::start().await;
        let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
        Env::on(upstream, dir, o).await
    }

    /// A mirror over an existing upstream and data directory (restarts).
    pub async fn on(upstream: FakeUpstream, dir: std::sync::Arc<tempfile::TempDir>, o: Options) -> Env {
        let data = dir.path().join("data");
        let upstream_url = o.upstream_url.clone().unwrap_or_else(|| upstream.url());
        let cfg = Config::from_toml(&config_text(&upstream_url, &data, &o)).unwrap();
        let mirror = Mirror::new(&cfg).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if o.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let m = mirror.clone();
        tokio::spawn(async move {
            m.serve(listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap()
        });
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Env { upstream, mirror, url, client, data, stop: Some(stop), _dir: dir }
    }

    /// Another mirror over the same data directory and upstream, running
    /// beside this one: a second replica sharing the store.
    pub async fn replica(&self, o: Options) -> Env {
        Env::on(self.upstream.clone(), self._dir.clone(), o).await
    }

    /// Stops this mirror and starts another over the same data and upstream.
    pub async fn restart(mut self, o: Options) -> Env {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        Env::on(self.upstream.clone(), self._dir.clone(), o).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.url)).send().await.unwrap()
    }

    pub async fn head(&self, path: &str) -> reqwest::Response {
        self.client.head(format!("{}{path}", self.url)).send().await.unwrap()
    }

    /// Sends a request line verbatim (no client-side path normalisation),
    /// for traversal attempts. Returns (status, body).
    pub async fn raw(&self, method: &str, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.url.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    /// All files under the store, for "left intact" checks.
    pub fn stored_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        walk(&self.data, &mut out);
        out.sort();
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn walk(dir: &std::path::Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            let content = std::fs::read(&p).unwrap_or_default();
            out.push((p, content));
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Asserts a spec-shaped error body with `code`.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) {
    assert_eq!(resp.status().as_u16(), status, "status for expected {code}");
    let body: serde_json::Value = resp.json().await.expect("error body is JSON");
    assert_eq!(body["errors"][0]["code"], code, "body: {body}");
    assert!(body["errors"][0]["message"].is_string(), "body: {body}");
}

pub fn sha256_hex(b: &[u8]) -> String {
    digest_of(b)
}

/// A URL where nothing listens: a port the OS just handed out and took back.
pub async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
