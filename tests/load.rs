//! Holding up under load and faults: slow fills, idle and slowloris
//! connections, the connection cap, crash leftovers and a full disk.

mod common;

use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{bytes, sha256_hex, Env, Options};

/// Runs a test on the runtime the binary serves with (its blocking pool is
/// bounded), so that starvation would show exactly as in production.
fn on_server_runtime<F: Future>(f: F) -> F::Output {
    klts_mirror::server::runtime().unwrap().block_on(f)
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

#[test]
fn warm_requests_stay_fast_while_32_slow_distinct_fills_run() {
    on_server_runtime(async {
        let env = Env::start().await;
        let (_, layer) = env.upstream.add_image("warm/app", "v1", bytes(1 << 20, 1));
        assert_eq!(env.get("/v2/warm/app/manifests/v1").await.status(), 200);
        assert_eq!(env.get(&format!("/v2/warm/app/blobs/{layer}")).await.bytes().await.unwrap().len(), 1 << 20);

        // 32 distinct blobs trickling 64 KiB every 300 ms.
        let slow: Vec<String> =
            (0..32).map(|i| env.upstream.add_slow_blob(bytes(2 << 20, 100 + i), Duration::from_millis(300))).collect();
        let received = std::sync::Arc::new((0..32).map(|_| std::sync::atomic::AtomicU64::new(0)).collect::<Vec<_>>());
        let mut pulls = Vec::new();
        for (i, d) in slow.iter().enumerate() {
            let (client, url, received) =
                (env.client.clone(), format!("{}/v2/cold/x{i}/blobs/{d}", env.url), received.clone());
            pulls.push(tokio::spawn(async move {
                let mut resp = client.get(url).send().await.unwrap();
                while let Ok(Some(c)) = resp.chunk().await {
                    received[i].fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while env.mirror.proxy().fills_in_flight() < 32 {
            assert!(Instant::now() < deadline, "32 fills in flight, got {}", env.mirror.proxy().fills_in_flight());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let mut manifest_ms = Vec::new();
        let mut blob_ms = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let r = env.get("/v2/warm/app/manifests/v1").await;
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            manifest_ms.push(millis(t.elapsed()));
            let t = Instant::now();
            let body = env.get(&format!("/v2/warm/app/blobs/{layer}")).await.bytes().await.unwrap();
            assert_eq!(body.len(), 1 << 20);
            blob_ms.push(millis(t.elapsed()));
        }
        manifest_ms.sort();
        blob_ms.sort();
        eprintln!("warm manifest ms {manifest_ms:?}\nwarm 1 MiB blob ms {blob_ms:?}");
        assert!(manifest_ms[10] <= 100 && blob_ms[10] <= 100, "medians ≤ 100 ms");
        assert!(manifest_ms[19] <= 1000 && blob_ms[19] <= 1000, "no warm request waits behind fills");
        assert_eq!(env.mirror.proxy().fills_in_flight(), 32, "the slow fills are still running");
        // All 32 progress at once, none queued behind the others.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (i, r) in received.iter().enumerate() {
            assert!(r.load(std::sync::atomic::Ordering::Relaxed) > 0, "fill {i} made progress");
        }
        for p in pulls {
            p.abort();
        }
    });
}

/// A raw client socket on the mirror.
fn connect(env: &Env) -> TcpStream {
    let s = TcpStream::connect(env.url.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads until EOF or error; returns the bytes read and when the socket
/// was closed.
fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, Instant::now()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                panic!("the server did not close the connection")
            }
            Err(_) => return (out, Instant::now()),
        }
    }
}

const SHORT: Options = Options {
    tag_ttl: "5m",
    offline: false,
    read_timeout: "5s",
    request_timeout: "5s",
    default_upstream: "registry.k8s.io",
    credentials: None,
    upstream_url: None,
    server: Some("header_read_timeout = \"1s\"\nidle_timeout = \"3s\""),
    uploads: None,
    htpasswd: None,
    anonymous_pull: None,
    tls: None,
};

#[tokio::test(flavor = "multi_thread")]
async fn half_a_header_is_cut_after_the_header_read_timeout() {
    let env = Env::with(SHORT).await;
    let (closed_after, trickled) = tokio::task::spawn_blocking({
        let mut s = connect(&env);
        let mut slow = connect(&env);
        move || {
            let t = Instant::now();
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
            let (_, at) = read_until_closed(&mut s);
            // Slowloris: a byte every 200 ms never completes the header.
            let t2 = Instant::now();
            let mut sent = 0;
            for b in b"GET /v2/ HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if slow.write_all(&[*b]).is_err() {
                    break;
                }
                sent += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            (at - t, (sent, t2.elapsed()))
        }
    })
    .await
    .unwrap();
    assert!(closed_after >= Duration::from_millis(900), "{closed_after:?}");
    assert!(
        closed_after < Duration::from_millis(2900),
        "cut by the header timeout, not the idle one: {closed_after:?}"
    );
    let (sent, took) = trickled;
    assert!(sent < 20, "a trickled header is cut too: {sent} bytes went through in {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let env = Env::with(SHORT).await;
    let (answered, closed_after, silent_closed_after) = tokio::task::spawn_blocking({
        let mut s = connect(&env);
        let mut silent = connect(&env);
        move || {
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let answered = String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200");
            let t = Instant::now();
            let (_, at) = read_until_closed(&mut s);
            let (_, silent_at) = read_until_closed(&mut silent);
            (answered, at - t, silent_at)
        }
    })
    .await
    .unwrap();
    assert!(answered);
    // Idle after a request: the idle timeout (3 s), not the header one (1 s).
    assert!(closed_after >= Duration::from_millis(2500), "{closed_after:?}");
    assert!(closed_after < Duration::from_secs(8), "{closed_after:?}");
    let _ = silent_closed_after;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_download_with_long_gaps_is_not_cut() {
    let env = Env::with(Options { server: Some("header_read_timeout = \"1s\"\nidle_timeout = \"1s\""), ..SHORT }).await;
    let data = bytes(3 * 64 * 1024, 9);
    let d = env.upstream.add_slow_blob(data.clone(), Duration::from_millis(1500));
    let t = Instant::now();
    let r = env.get(&format!("/v2/slow/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.expect("the download completes");
    assert_eq!(sha256_hex(&body), d);
    assert!(t.elapsed() > Duration::from_secs(3), "gaps longer than the idle timeout: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_dropped_after_the_idle_timeout() {
    let env = Env::with(Options { server: Some("header_read_timeout = \"1s\"\nidle_timeout = \"1s\""), ..SHORT }).await;
    let size = 64 << 20;
    let d = env.upstream.add_blob(vec![7u8; size]);
    assert_eq!(env.get(&format!("/v2/big/blobs/{d}")).await.bytes().await.unwrap().len(), size);
    let got = tokio::task::spawn_blocking({
        let mut s = connect(&env);
        move || {
            s.write_all(format!("GET /v2/big/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
            std::thread::sleep(Duration::from_secs(4));
            read_until_closed(&mut s).0.len()
        }
    })
    .await
    .unwrap();
    assert!(got > 0 && got < size, "the stalled client was cut off after {got} bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_max_connections_clients_wait_in_the_backlog() {
    let env = Env::with(Options { server: Some("max_connections = 2\nheader_read_timeout = \"30s\""), ..SHORT }).await;
    let (waited, answered_after_free) = tokio::task::spawn_blocking({
        let a = connect(&env);
        let b = connect(&env);
        let mut c = connect(&env);
        move || {
            std::thread::sleep(Duration::from_millis(200));
            c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            c.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
            let mut buf = [0u8; 1024];
            let waited = matches!(c.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut);
            drop(a);
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let n = c.read(&mut buf).unwrap_or(0);
            drop(b);
            (waited, String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"))
        }
    })
    .await
    .unwrap();
    assert!(waited, "the third connection is not served while two are open");
    assert!(answered_after_free, "it is served as soon as a slot frees");
}

#[tokio::test]
async fn a_blob_missing_upstream_creates_no_file() {
    let env = Env::start().await;
    let before = env.stored_files();
    let missing = sha256_hex(b"nobody has this");
    let r = env.get(&format!("/v2/some/repo/blobs/{missing}")).await;
    common::assert_error(r, 404, "BLOB_UNKNOWN").await;
    let after = env.stored_files();
    let names = |v: &Vec<(std::path::PathBuf, Vec<u8>)>| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(names(&before), names(&after), "no file was created or left");
}

/// A tmpfs mounted over a directory for the length of a test.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", at.to_str().unwrap()])
            .status()
            .expect("mount(8) runs");
        assert!(ok.success(), "this test needs root to mount a small tmpfs (a full disk)");
        Tmpfs(at.to_path_buf())
    }

    /// Fills the filesystem to the last byte with a file named `filler`.
    fn fill(&self) -> std::path::PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = f.write_all(&[0u8; 1]);
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_still_serves_verified_bytes_and_caches_after_space_frees() {
    let upstream = common::FakeUpstream::start().await;
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let disk = Tmpfs::mount(&dir.path().join("data"), "8m");
    let layer_bytes = bytes(3 << 20, 42);
    let (_, layer) = upstream.add_image("disk/app", "v1", layer_bytes.clone());
    let env = Env::on(upstream, dir.clone(), Options::default()).await;
    let filler = disk.fill();

    let r = env.get("/v2/disk/app/manifests/v1").await;
    assert_eq!(r.status(), 200, "a verified manifest is served although it cannot be stored");
    let digest = r.headers()["docker-content-digest"].to_str().unwrap().to_string();
    assert_eq!(sha256_hex(&r.bytes().await.unwrap()), digest);

    let r = env.get(&format!("/v2/disk/app/blobs/{layer}")).await;
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.expect("the blob streams whole although nothing can be spooled");
    assert_eq!(sha256_hex(&body), layer);
    for _ in 0..50 {
        if env.mirror.proxy().fills_in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored_blob = |env: &Env| env.stored_files().iter().any(|(p, _)| p.to_string_lossy().contains("/blobs/"));
    assert!(!stored_blob(&env), "nothing is cached on a full disk");

    std::fs::remove_file(filler).unwrap();
    let r = env.get(&format!("/v2/disk/app/blobs/{layer}")).await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(sha256_hex(&r.bytes().await.unwrap()), layer);
    for _ in 0..50 {
        if env.mirror.proxy().fills_in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = env.get(&format!("/v2/disk/app/blobs/{layer}")).await;
    assert_eq!(r.headers()["x-cache"], "HIT", "with space again, the next pull caches");
    assert_eq!(sha256_hex(&r.bytes().await.unwrap()), layer);
    drop(env);
}

/// A `klts-mirror serve` process on a port of its own.
struct Served {
    child: std::process::Child,
    url: String,
}

impl Served {
    fn start(config: &std::path::Path) -> Served {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_klts-mirror"))
            .args(["serve", "--config", config.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mirror did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Served { child, url }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spool files under `data/_spool`, with their sizes.
fn spool_files(data: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let root = data.join("_spool");
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            for f in std::fs::read_dir(e.path()).unwrap().flatten() {
                out.push((f.path().display().to_string(), f.metadata().unwrap().len()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn spool_leftovers_of_a_killed_process_are_gone_after_restart() {
    let upstream = common::FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, common::config_text(&upstream.url(), &data, &Options::default())).unwrap();
    let blob = bytes(4 << 20, 5);
    let d = upstream.add_slow_blob(blob.clone(), Duration::from_millis(50));
    let client = reqwest::Client::new();

    for round in 0..2 {
        let served = Served::start(&config);
        let mut r = client.get(format!("{}/v2/crash/blobs/{d}", served.url)).send().await.unwrap();
        let mut got = 0;
        while got < 256 * 1024 {
            got += r.chunk().await.unwrap().unwrap().len();
        }
        let spooled = spool_files(&data);
        assert_eq!(spooled.len(), 1, "round {round}: one fill spooling: {spooled:?}");
        // kill -9 mid-fill.
        let mut served = served;
        served.child.kill().unwrap();
        served.child.wait().unwrap();
        assert_eq!(spool_files(&data).len(), 1, "the leftover survives the crash");
    }
    let served = Served::start(&config);
    assert!(spool_files(&data).is_empty(), "start-up removed every leftover: {:?}", spool_files(&data));
    let r = client.get(format!("{}/v2/crash/blobs/{d}", served.url)).send().await.unwrap();
    assert_eq!(sha256_hex(&r.bytes().await.unwrap()), d, "the next pull completes");
}
