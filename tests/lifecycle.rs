//! The process's life as an operator drives it, against the real binary:
//! SIGTERM/SIGINT drain (pulls in progress finish, new connections are
//! refused, exit code 0, a fill cut by `server.shutdown_grace` leaves
//! nothing), and SIGHUP reloads of `config.toml` (new upstreams, users and
//! `anonymous_pull` for new requests, pulls in progress untouched, broken
//! configurations refused while the old one keeps serving).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{config_text, sha256_hex, write_htpasswd, FakeUpstream, Options};
use futures::StreamExt;

const BIN: &str = env!("CARGO_BIN_EXE_klts-mirror");
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `klts-mirror serve` in a child process, with its log collected.
struct Served {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    config: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Starts the binary on `config` (a function of the data directory)
    /// and waits for its "serving" line.
    async fn start(config: impl FnOnce(&Path) -> String) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config(&data)).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(strip_ansi(&line));
            }
        });
        let mut served = Served { child, addr: "127.0.0.1:1".parse().unwrap(), log, config: path, data, _dir: dir };
        let line = served.wait_log("klts-mirror serving", Duration::from_secs(30)).await;
        let listen = line.split_whitespace().find_map(|w| w.strip_prefix("listen=")).expect("listen= in the line");
        served.addr = listen.parse().unwrap();
        served
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill only sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, sig) }, 0);
    }

    /// Writes a new configuration and sends SIGHUP; returns once the
    /// process logged `outcome` for this reload.
    async fn reload(&self, config: &str, outcome: &str) -> String {
        std::fs::write(&self.config, config).unwrap();
        let seen = self.count(outcome);
        self.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self.lines().into_iter().filter(|l| l.contains(outcome)).nth(seen) {
                return line;
            }
            assert!(Instant::now() < deadline, "no {outcome:?} after SIGHUP in:\n{}", self.lines().join("\n"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// The first log line containing `needle`, waiting up to `limit`.
    async fn wait_log(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in:\n{}", self.lines().join("\n"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status, waiting up to `limit`.
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {limit:?}:\n{}", self.lines().join("\n"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Regular files under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Reads `resp`'s body at about `rate` bytes a second (a slow client),
/// calling `at` once when `mark` bytes have arrived. Returns the bytes, or
/// what arrived before the body failed.
async fn read_slowly(
    resp: reqwest::Response,
    rate: f64,
    mark: usize,
    at: impl FnOnce(),
) -> Result<Vec<u8>, (Vec<u8>, reqwest::Error)> {
    let started = Instant::now();
    let mut at = Some(at);
    let mut got = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(e) => return Err((got, e)),
        }
        if got.len() >= mark {
            if let Some(f) = at.take() {
                f();
            }
        }
        let due = Duration::from_secs_f64(got.len() as f64 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(got)
}

/// Whether a new TCP connection to `addr` is refused, within `limit`.
async fn refused_within(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_100_mib_pull_finish_refuses_new_connections_and_exits_0() {
    let upstream = FakeUpstream::start().await;
    let blob = common::bytes(100 << 20, 10);
    // Upstream trickles too, so the fill is still running at SIGTERM.
    let d = upstream.add_slow_blob(blob.clone(), Duration::from_millis(1));
    let url = upstream.url();
    let mut mirror = Served::start(|data| config_text(&url, data, &Options::default())).await;

    // A keep-alive connection, idle between requests when SIGTERM comes.
    let idle = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(mirror.addr).await.unwrap();
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: mirror\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "keep-alive request answered");
        s
    };

    let resp = client().get(mirror.url(&format!("/v2/pause/blobs/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let pid = mirror.child.id() as libc::pid_t;
    // About 4 s for the whole blob; SIGTERM at 10 MiB.
    let body = read_slowly(resp, 25.0 * 1024.0 * 1024.0, 10 << 20, || {
        // SAFETY: kill only sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    });
    let refused = async {
        // Give the slow reader a head start past its mark.
        mirror.wait_log("listener closed", Duration::from_secs(30)).await;
        let refused = refused_within(mirror.addr, Duration::from_secs(5)).await;
        // The idle keep-alive connection is closed, not kept for idle_timeout.
        let mut idle = idle;
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut idle, &mut buf))
            .await
            .map(|r| matches!(r, Ok(0) | Err(_)));
        (refused, closed)
    };
    let (body, (refused, idle_closed)) = tokio::join!(body, refused);
    let body = body.map_err(|(got, e)| format!("pull cut after {} bytes: {e}", got.len())).unwrap();
    assert!(refused, "new connections are refused after SIGTERM");
    assert_eq!(idle_closed, Ok(true), "an idle keep-alive connection is closed by the drain");
    assert_eq!(body.len(), blob.len());
    assert_eq!(sha256_hex(&body), d, "the pull in progress completed with the right bytes");
    let status = mirror.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "exit code 0:\n{}", mirror.lines().join("\n"));
    assert!(mirror.count("signal=SIGTERM") == 1, "{:?}", mirror.lines());
    // The fill finished within the grace: the blob is stored, and the
    // process left no spool behind.
    let blobs = files_under(&mirror.data.join("blobs"));
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    assert_eq!(std::fs::read(&blobs[0]).unwrap().len(), blob.len());
    assert_eq!(files_under(&mirror.data.join("_spool")), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_cut_by_the_shutdown_grace_leaves_nothing_half_written() {
    let upstream = FakeUpstream::start().await;
    let blob = common::bytes(8 << 20, 11);
    // 128 chunks, 50 ms apart: over 6 s, far beyond the 1 s grace.
    let d = upstream.add_slow_blob(blob.clone(), Duration::from_millis(50));
    let url = upstream.url();
    let options = Options { server: Some("shutdown_grace = \"1s\""), ..Options::default() };
    let mut mirror = Served::start(|data| config_text(&url, data, &options)).await;

    let resp = client().get(mirror.url(&format!("/v2/pause/blobs/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let signalled = Instant::now();
    let pid = mirror.child.id() as libc::pid_t;
    let body = read_slowly(resp, 1e12, 256 << 10, || {
        // SAFETY: kill only sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    })
    .await;
    let (got, _) = body.expect_err("the client's pull is cut at the deadline, never completed short");
    assert!(got.len() < blob.len());
    let status = mirror.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "exit code 0 after a cut:\n{}", mirror.lines().join("\n"));
    assert!(signalled.elapsed() < Duration::from_secs(5), "the grace bounds the drain: {:?}", signalled.elapsed());
    assert!(mirror.count("shutdown grace over") >= 1, "{}", mirror.lines().join("\n"));
    assert_eq!(files_under(&mirror.data.join("blobs")), Vec::<PathBuf>::new(), "nothing under blobs/");
    let spool = mirror.data.join("_spool");
    assert_eq!(files_under(&spool), Vec::<PathBuf>::new(), "no spool file, lock or directory left");
    assert_eq!(std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_whose_client_left_finishes_within_the_grace_and_is_stored() {
    let upstream = FakeUpstream::start().await;
    let blob = common::bytes(4 << 20, 13);
    // 64 chunks, 30 ms apart: about 2 s.
    let d = upstream.add_slow_blob(blob.clone(), Duration::from_millis(30));
    let url = upstream.url();
    let mut mirror = Served::start(|data| config_text(&url, data, &Options::default())).await;

    let resp = client().get(mirror.url(&format!("/v2/pause/blobs/{d}"))).send().await.unwrap();
    let mut body = resp.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body); // the client goes away; the fill goes on
    mirror.signal(libc::SIGTERM);
    mirror.wait_log("waiting for fills in progress", Duration::from_secs(10)).await;
    let status = mirror.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", mirror.lines().join("\n"));
    assert_eq!(mirror.count("shutdown grace over"), 0);
    let blobs = files_under(&mirror.data.join("blobs"));
    assert_eq!(blobs.len(), 1, "the fill finished and was stored: {blobs:?}");
    assert_eq!(sha256_hex(&std::fs::read(&blobs[0]).unwrap()), d);
    assert_eq!(upstream.count("GET", "/blobs/"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_and_exits_0() {
    let upstream = FakeUpstream::start().await;
    let url = upstream.url();
    let mut mirror = Served::start(|data| config_text(&url, data, &Options::default())).await;
    assert_eq!(client().get(mirror.url("/v2/")).send().await.unwrap().status(), 200);
    mirror.signal(libc::SIGINT);
    assert_eq!(mirror.wait_exit(Duration::from_secs(10)).await.code(), Some(0));
    assert_eq!(mirror.count("signal=SIGINT"), 1, "{:?}", mirror.lines());
    assert!(refused_within(mirror.addr, Duration::from_secs(1)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_switches_upstreams_for_new_requests_while_a_pull_in_progress_finishes() {
    let (a, b) = (FakeUpstream::start().await, FakeUpstream::start().await);
    let blob = common::bytes(16 << 20, 12);
    // 256 chunks, 10 ms apart: still filling when SIGHUP comes.
    let d = a.add_slow_blob(blob.clone(), Duration::from_millis(10));
    let (from_a, _) = a.add_image("pause", "3.9", common::bytes(1000, 1));
    let (from_b, _) = b.add_image("pause", "3.9", common::bytes(1000, 2));
    assert_ne!(from_a, from_b);
    let mirror = Served::start(|data| config_text(&a.url(), data, &Options::default())).await;

    let resp = client().get(mirror.url(&format!("/v2/pause/blobs/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let pull = tokio::spawn(read_slowly(resp, 1e12, 1 << 20, move || {
        let _ = tx.send(());
    }));
    rx.await.unwrap();
    let data = mirror.data.clone();
    mirror.reload(&config_text(&b.url(), &data, &Options::default()), "configuration reloaded").await;
    assert!(!pull.is_finished(), "the reload came while the pull was in progress");

    let m = client().get(mirror.url("/v2/pause/manifests/3.9")).send().await.unwrap();
    assert_eq!(m.status(), 200);
    let digest = m.headers()["docker-content-digest"].to_str().unwrap().to_string();
    assert_eq!(digest, from_b, "the next request goes to the new upstream URL");
    assert_eq!(a.count("GET", "/manifests/"), 0);
    assert_eq!(b.count("GET", "/manifests/3.9"), 1);

    let body = pull.await.unwrap().map_err(|(got, e)| format!("cut after {} bytes: {e}", got.len())).unwrap();
    assert_eq!(sha256_hex(&body), d, "the pull in progress finished with the old upstream's bytes");
    assert_eq!(b.count("GET", "/blobs/"), 0);
    assert_eq!(mirror.count("configuration reload refused"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_users_and_anonymous_pull() {
    let upstream = FakeUpstream::start().await;
    upstream.add_image("pause", "3.9", common::bytes(1000, 3));
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = write_htpasswd(&dir.path().join("htpasswd"), &[("alice", "first")]);
    let open = Options { htpasswd: Some(htpasswd.clone()), anonymous_pull: Some(true), ..Options::default() };
    let url = upstream.url();
    let mirror = Served::start(|data| config_text(&url, data, &open)).await;
    let manifest = mirror.url("/v2/pause/manifests/3.9");
    let get = |user: Option<(&str, &str)>| {
        let req = client().get(&manifest).header("accept", MANIFEST);
        let req = match user {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        };
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(None).await, 200, "anonymous pull");
    assert_eq!(get(Some(("alice", "first"))).await, 200);

    // A new password and no anonymous pulls.
    write_htpasswd(&htpasswd, &[("alice", "second")]);
    let closed = Options { anonymous_pull: Some(false), ..open.clone() };
    mirror.reload(&config_text(&url, &mirror.data, &closed), "configuration reloaded").await;
    assert_eq!(get(None).await, 401, "anonymous pulls are refused from now on");
    assert_eq!(get(Some(("alice", "first"))).await, 401, "the old password is no longer accepted");
    assert_eq!(get(Some(("alice", "second"))).await, 200);

    // Back to anonymous pulls, with the htpasswd file alone changed.
    write_htpasswd(&htpasswd, &[("alice", "third")]);
    mirror.reload(&config_text(&url, &mirror.data, &open), "configuration reloaded").await;
    assert_eq!(get(None).await, 200);
    assert_eq!(get(Some(("alice", "second"))).await, 401);
    assert_eq!(get(Some(("alice", "third"))).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_is_refused_and_the_old_one_keeps_serving() {
    let upstream = FakeUpstream::start().await;
    let (first, _) = upstream.add_image("pause", "3.9", common::bytes(1000, 4));
    let (second, _) = upstream.add_image("pause", "3.10", common::bytes(1000, 5));
    let url = upstream.url();
    let mirror = Served::start(|data| config_text(&url, data, &Options::default())).await;
    let get = |tag: &str| client().get(mirror.url(&format!("/v2/pause/manifests/{tag}"))).send();
    assert_eq!(get("3.9").await.unwrap().status(), 200);
    let good = config_text(&url, &mirror.data, &Options::default());

    let dir = tempfile::tempdir().unwrap();
    let broken = [
        format!("lisen = \"127.0.0.1:0\"\n{good}"),
        good.replace("default_upstream = \"registry.k8s.io\"", "default_upstream = \"quay.io\""),
        good.clone() + &format!("[auth]\nhtpasswd = \"{}\"\n", dir.path().join("missing").display()),
    ];
    for text in broken {
        // The line start-up would print for the same file.
        let expected = klts_mirror::Config::from_toml(&text).unwrap_err().to_string();
        let line = mirror.reload(&text, "configuration reload refused").await;
        assert!(line.contains(&format!("klts-mirror: {expected}")), "{expected:?} in {line:?}");
        assert!(line.contains("ERROR"), "{line}");
        // Still serving, with the old configuration.
        let resp = get("3.10").await.unwrap();
        assert_eq!(resp.status(), 200, "after {expected}");
        assert_eq!(resp.headers()["docker-content-digest"], second.as_str());
    }
    assert_eq!(mirror.count("configuration reloaded"), 0);

    // Settings that need a restart: a warning, and the running ones stay.
    let elsewhere = mirror.data.with_file_name("elsewhere");
    let moved = config_text(&url, &elsewhere, &Options { tag_ttl: "1m", ..Options::default() });
    mirror.reload(&moved, "configuration reloaded").await;
    let warning = mirror.wait_log("need a restart", Duration::from_secs(5)).await;
    assert!(warning.contains("storage") && warning.contains("WARN"), "{warning}");
    let resp = get("3.9").await.unwrap();
    assert_eq!(resp.headers()["x-cache"], "HIT", "still the old store");
    assert_eq!(resp.headers()["docker-content-digest"], first.as_str());
    assert!(!elsewhere.exists(), "the new storage path is not used before a restart");
}
