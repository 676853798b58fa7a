//! The HTTP edge under faults and odd input: what error answers reveal,
//! request ids, and every shape of `Range`.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bytes, closed_port_url, digest_of, Env, Options};

const HUGE: &str = "99999999999999999999999";

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get(name).map(|v| v.to_str().unwrap().to_string())
}

fn request_id(r: &reqwest::Response) -> String {
    header(r, "x-request-id").unwrap_or_else(|| panic!("no X-Request-Id on {} {}", r.status(), r.url()))
}

fn well_formed_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
}

/// Log output captured from this test's thread (the mirror runs on it too:
/// current-thread runtime).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap()).lines().map(String::from).collect()
    }
}

fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

/// An upstream nobody answers on: clients learn that it is unavailable and
/// nothing about where it is or what the OS said; the log learns both.
#[tokio::test(flavor = "current_thread")]
async fn unreachable_upstream_reveals_nothing_internal() {
    let (logs, _guard) = capture_logs();
    let upstream_url = closed_port_url().await;
    let port = upstream_url.rsplit(':').next().unwrap().to_string();
    let env = Env::with(Options { upstream_url: Some(upstream_url), ..Default::default() }).await;
    let blob = format!("/v2/pause/blobs/{}", digest_of(b"x"));
    let paths = [
        "/v2/pause/manifests/3.9".to_string(),
        format!("/v2/pause/manifests/{}", digest_of(b"m")),
        blob.clone(),
        "/v2/pause/tags/list".to_string(),
        "/v2/docker.io/library/busybox/manifests/latest".to_string(),
    ];
    let mut ids = Vec::new();
    for p in &paths {
        let r = env.get(p).await;
        assert_eq!(r.status(), 502, "{p}");
        let id = request_id(&r);
        let body = r.text().await.unwrap();
        for secret in ["127.0.0.1", "localhost", "http://", "os error", "Connection refused", "refused", &port] {
            assert!(!body.contains(secret), "{p}: {secret:?} in {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errors"][0]["message"], "upstream unavailable", "{p}: {body}");
        assert!(v["errors"][0].get("detail").is_none(), "{p}: {body}");
        ids.push(id);
    }
    let r = env.head(&blob).await;
    assert_eq!(r.status(), 502);
    ids.push(request_id(&r));

    // Each failure is logged exactly once, at ERROR, with its id and the
    // internal cause.
    let lines = logs.lines();
    for id in &ids {
        let mine: Vec<_> = lines.iter().filter(|l| l.contains(id.as_str())).collect();
        assert_eq!(mine.len(), 1, "one log line for {id}: {lines:#?}");
        assert!(mine[0].contains("ERROR"), "{}", mine[0]);
        assert!(mine[0].contains(&port), "the cause names the upstream address: {}", mine[0]);
    }
}

/// A 4xx is routine: logged at DEBUG, with the id, and the client's own
/// input echoed back only bounded.
#[tokio::test(flavor = "current_thread")]
async fn client_errors_log_at_debug_and_echo_bounded_input() {
    let (logs, _guard) = capture_logs();
    let env = Env::start().await;
    let long = "Q".repeat(5000);
    let r = env.get(&format!("/v2/pause/manifests/{long}")).await;
    assert_eq!(r.status(), 400);
    let id = request_id(&r);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
    let detail = v["errors"][0]["detail"].as_str().unwrap();
    assert!(detail.len() <= 256 && long.starts_with(detail), "{detail}");
    let r = env.get("/v2/pause/manifests/nope?ns=unknown.example.com").await;
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["detail"], "unknown.example.com", "the client's own input");
    let lines = logs.lines();
    let mine: Vec<_> = lines.iter().filter(|l| l.contains(id.as_str())).collect();
    assert_eq!(mine.len(), 1, "{lines:#?}");
    assert!(mine[0].contains("DEBUG"), "{}", mine[0]);
    assert!(!lines.iter().any(|l| l.contains("ERROR")), "{lines:#?}");
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let env = Env::start().await;
    let (md, layer) = env.upstream.add_image("pause", "3.9", bytes(1000, 1));
    let blob = format!("{}/v2/pause/blobs/{layer}", env.url);
    let c = &env.client;
    let u = |p: &str| format!("{}{p}", env.url);
    let requests = vec![
        c.get(u("/v2/")),
        c.get(u("/v2/pause/manifests/3.9")),
        c.get(u("/v2/pause/manifests/3.9")),
        c.head(u(&format!("/v2/pause/manifests/{md}"))),
        c.get(&blob),
        c.head(&blob),
        c.get(&blob).header("range", "bytes=0-9"),
        c.get(&blob).header("range", format!("bytes={HUGE}-")),
        c.get(u("/v2/pause/tags/list")),
        c.get(u("/v2/pause/manifests/nope")),
        c.get(u("/v2/UPPER/manifests/x")),
        c.get(u("/v2/pause/blobs/sha256:12")),
        c.put(u("/v2/pause/manifests/3.9")),
        c.delete(u("/v2/pause/manifests/3.9")),
        c.post(u("/v2/pause/blobs/uploads/")),
        c.get(u("/v2/_catalog")),
        c.get(u("/etc/passwd")),
        c.get(u("/v2/pause/manifests/x?ns=evil.example.com")),
        c.get(u("/v2/pause/tags/list?n=x")),
    ];
    let mut seen = HashSet::new();
    let mut statuses = HashSet::new();
    for req in requests {
        let r = req.send().await.unwrap();
        let id = request_id(&r);
        assert!(well_formed_id(&id), "{id}");
        assert!(seen.insert(id.clone()), "{id} issued twice");
        statuses.insert(r.status().as_u16());
        r.bytes().await.unwrap();
    }
    // (405 needs a user: without one every write is 401 first, and the
    // catalog, once 405, now answers.)
    for s in [200, 206, 400, 401, 404, 416] {
        assert!(statuses.contains(&s), "covered status {s}: {statuses:?}");
    }

    // A well-formed client id is reused, on successes and errors alike.
    for (path, status) in [("/v2/pause/manifests/3.9", 200), ("/v2/pause/manifests/nope", 404), ("/nope", 404)] {
        let r = c.get(u(path)).header("x-request-id", "lb-7f3a.client_01-X").send().await.unwrap();
        assert_eq!(r.status(), status);
        assert_eq!(request_id(&r), "lb-7f3a.client_01-X", "{path}");
    }
    let max = "a".repeat(64);
    let r = c.get(u("/v2/")).header("x-request-id", &max).send().await.unwrap();
    assert_eq!(request_id(&r), max);
    // Anything else is replaced by a fresh id.
    for bad in ["a".repeat(65), "b".repeat(300), "has spaces in it".into(), "semi;colon".into(), "\"quoted\"".into()] {
        for path in ["/v2/", "/v2/pause/manifests/nope"] {
            let r = c.get(u(path)).header("x-request-id", &bad).send().await.unwrap();
            let id = request_id(&r);
            assert_ne!(id, bad);
            assert!(well_formed_id(&id), "{id}");
            assert!(seen.insert(id.clone()), "{id} issued twice");
        }
    }
}

/// What a `Range` header gets: status, `Content-Range`, and the slice of
/// the blob in the body (`None`: a 416 error body).
struct Expect {
    range: String,
    status: u16,
    content_range: Option<String>,
    body: Option<std::ops::Range<usize>>,
}

fn range_table(size: usize) -> Vec<Expect> {
    let last = size.saturating_sub(1);
    let partial = |range: &str, a: usize, b: usize| Expect {
        range: range.into(),
        status: 206,
        content_range: Some(format!("bytes {a}-{}/{size}", b - 1)),
        body: Some(a..b),
    };
    let unsatisfiable = |range: &str| Expect {
        range: range.into(),
        status: 416,
        content_range: Some(format!("bytes */{size}")),
        body: None,
    };
    let ignored = |range: &str| Expect { range: range.into(), status: 200, content_range: None, body: Some(0..size) };
    if size == 0 {
        let mut t: Vec<Expect> = ["bytes=0-", "bytes=0-0", "bytes=-1", "bytes=-0", "bytes=5-10"]
            .into_iter()
            .chain([format!("bytes={HUGE}-"), format!("bytes=0-{HUGE}"), format!("bytes=-{HUGE}")].iter().map(|s| &**s))
            .map(unsatisfiable)
            .collect();
        t.extend(["bytes=5-1", "bytes=a-b", "items=0-1"].map(ignored));
        return t;
    }
    vec![
        partial("bytes=0-99", 0, 100),
        partial("bytes=100-199", 100, 200),
        partial(&format!("bytes={last}-{last}"), last, size),
        partial(&format!("bytes={}-", size - 10), size - 10, size),
        partial("bytes=-10", size - 10, size),
        partial("bytes=0-", 0, size),
        partial(&format!("bytes=500-{}", size * 5), 500, size),
        partial(&format!("bytes=0-{HUGE}"), 0, size),
        partial(&format!("bytes=10-{HUGE}"), 10, size),
        partial(&format!("bytes=-{HUGE}"), 0, size),
        partial(&format!("bytes=-{}", size + 1), 0, size),
        partial("BYTES=1-2", 1, 3),
        unsatisfiable(&format!("bytes={size}-")),
        unsatisfiable(&format!("bytes={size}-{}", size + 5)),
        unsatisfiable("bytes=-0"),
        unsatisfiable(&format!("bytes={HUGE}-")),
        unsatisfiable(&format!("bytes={HUGE}-{HUGE}")),
        ignored("bytes=5-1"),
        ignored(&format!("bytes={HUGE}-5")),
        ignored("bytes=a-b"),
        ignored("bytes=1"),
        ignored("bytes="),
        ignored("bytes=-"),
        ignored("items=0-1"),
        ignored("bytes=0-1,5-6"),
        ignored("bytes=+1-2"),
    ]
}

async fn check(env: &Env, path: &str, data: &[u8], e: &Expect) -> String {
    let r = env.client.get(format!("{}{path}", env.url)).header("range", &e.range).send().await.unwrap();
    let what = &e.range;
    assert_eq!(r.status().as_u16(), e.status, "{what}");
    assert_eq!(header(&r, "content-range"), e.content_range, "{what}");
    let x_cache = header(&r, "x-cache").unwrap_or_default();
    let length: Option<usize> = header(&r, "content-length").map(|l| l.parse().unwrap());
    let body = r.bytes().await.unwrap();
    assert_eq!(length, Some(body.len()), "{what}: Content-Length matches the body");
    match &e.body {
        Some(slice) => assert!(body[..] == data[slice.clone()], "{what}: bytes {slice:?}"),
        None => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{what}: JSON"));
            assert_eq!(v["errors"][0]["code"], "SIZE_INVALID", "{what}");
        }
    }
    x_cache
}

async fn wait_committed(env: &Env) {
    for _ in 0..200 {
        if env.mirror.proxy().fills_in_flight() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fill did not finish");
}

#[tokio::test]
async fn range_forms_on_a_cached_blob() {
    let env = Env::start().await;
    let data = bytes(1000, 2);
    let d = env.upstream.add_blob(data.clone());
    let path = format!("/v2/etcd/blobs/{d}");
    env.get(&path).await.bytes().await.unwrap();
    wait_committed(&env).await;
    for e in range_table(data.len()) {
        let x_cache = check(&env, &path, &data, &e).await;
        if e.status != 416 {
            assert_eq!(x_cache, "HIT", "{}", e.range);
        }
    }
    // HEAD ignores Range: the whole size, no Content-Range.
    let r = env.client.head(format!("{}{path}", env.url)).header("range", "bytes=0-9").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length").as_deref(), Some("1000"));
    assert_eq!(header(&r, "content-range"), None);
    assert_eq!(env.upstream.count("GET", "/blobs/"), 1);
}

#[tokio::test]
async fn range_forms_on_an_empty_blob() {
    let env = Env::start().await;
    let d = env.upstream.add_blob(Vec::new());
    let path = format!("/v2/etcd/blobs/{d}");
    // Not cached yet: the first request fills it.
    let table = range_table(0);
    check(&env, &path, &[], &table[0]).await;
    wait_committed(&env).await;
    for e in &table {
        check(&env, &path, &[], e).await;
    }
}

/// While the blob is still arriving from upstream, the answers are the
/// same: the size announced by upstream is what ranges resolve against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_forms_on_a_blob_in_flight() {
    let env = Env::start().await;
    let data = bytes(1_000_000, 3);
    let size = data.len();
    let d = env.upstream.add_blob(data.clone());
    let path = format!("/v2/etcd/blobs/{d}");
    // 16 chunks × 60 ms: about a second of fill.
    env.upstream.set_throttle(Some(Duration::from_millis(60)));
    let first = env.get(&path).await;
    assert_eq!(header(&first, "x-cache").as_deref(), Some("MISS"));
    let forms: Vec<Expect> = range_table(size)
        .into_iter()
        .filter(|e| e.range.contains(HUGE) || ["bytes=0-99", "bytes=-0", "bytes=5-1"].contains(&e.range.as_str()))
        .collect();
    let checks: Vec<_> = forms.iter().map(|e| check(&env, &path, &data, e)).collect();
    assert!(checks.len() >= 8);
    let caches = futures::future::join_all(checks).await;
    for (e, x_cache) in forms.iter().zip(&caches) {
        if e.status != 416 {
            assert_eq!(x_cache, "MISS", "{}: answered from the fill in flight", e.range);
        }
    }
    assert_eq!(first.bytes().await.unwrap().len(), size);
    assert_eq!(env.upstream.count("GET", "/blobs/"), 1);
}

/// Requests hyper rejects before the router still get a spec JSON body.
#[tokio::test]
async fn malformed_requests_below_the_router_get_spec_json() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = common::Env::start().await;
    let addr = env.url.trim_start_matches("http://").to_string();
    let big_header = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000));
    for (raw, status) in [
        ("GARBAGE\r\n\r\n".to_string(), 400),
        ("GET /v2/ HTTP/9.9\r\nHost: x\r\n\r\n".to_string(), 400),
        (big_header, 431),
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = s.write_all(raw.as_bytes()).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").expect("a complete answer");
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
        assert!(head.to_ascii_lowercase().contains("x-request-id: "), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert!(v["errors"][0]["code"].is_string() && v["errors"][0]["message"].is_string(), "{v}");
    }
    // The connection stays usable for well-formed requests.
    assert_eq!(env.get("/v2/").await.status(), 200);
}
