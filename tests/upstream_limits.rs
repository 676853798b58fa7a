//! Upstream limits: overall deadlines, bounded bodies, single-flight and
//! negative caching of tokens, single-flight and caching of tags lists.
//! The mirror in-process against a fake upstream that misbehaves on demand.

mod common;

use std::time::{Duration, Instant};

use common::fake::TokenMode;
use common::{assert_error, bytes, Env, Options};

const MIB: u64 = 1024 * 1024;
/// What the fake can hand to its connection beyond what the mirror reads
/// before the mirror hangs up: kernel socket buffers on both ends (send
/// buffers autotune to 4 MiB here, receive buffers further) and hyper's.
/// "Bytes sent" is the observable stand-in for "bytes read"; the unit tests
/// of `read_bounded` check the exact stopping point.
const SOCKET_SLACK: u64 = 12 * MIB;

/// Fails the test instead of hanging it when a limit does not hold.
async fn within<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f).await.expect("request was not cut short by the mirror's limits")
}

/// An upstream that requires a bearer token for everything under /v2/<name>/.
async fn with_token(o: Options) -> Env {
    let env = Env::with(o).await;
    env.upstream.require_token("s3cret");
    env
}

#[tokio::test]
async fn a_trickling_token_endpoint_is_cut_off_by_request_timeout() {
    let env = with_token(Options { request_timeout: "2s", read_timeout: "5s", ..Default::default() }).await;
    env.upstream.add_image("pause", "3.9", bytes(10, 1));
    // One byte every 300 ms: never silent for a whole read_timeout, and the
    // ~40-byte answer would take over 10 s.
    env.upstream.set_token_mode(TokenMode::Trickle(Duration::from_millis(300)));
    let started = Instant::now();
    let r = within(Duration::from_secs(20), env.get("/v2/pause/manifests/3.9")).await;
    let elapsed = started.elapsed();
    assert!(r.status().is_server_error(), "status {}", r.status());
    assert_error(r, 504, "MANIFEST_UNKNOWN").await;
    assert!(elapsed < Duration::from_secs(6), "answered after {elapsed:?}");
    assert_eq!(env.upstream.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_but_blob_bodies_has_a_deadline() {
    // read_timeout alone would let each of these wait 10 s.
    let env = Env::with(Options { request_timeout: "1s", read_timeout: "10s", ..Default::default() }).await;
    env.upstream.set_mode(common::Mode::Stall);
    let blob = format!("/v2/pause/blobs/{}", common::digest_of(b"never sent"));
    let started = Instant::now();
    let (manifest, blob_head, blob_get, tags) = within(Duration::from_secs(20), async {
        tokio::join!(
            env.get("/v2/pause/manifests/3.9"),
            env.head(&blob),
            env.get(&blob),
            env.get("/v2/pause/tags/list")
        )
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    assert_error(manifest, 504, "MANIFEST_UNKNOWN").await;
    assert_eq!(blob_head.status(), 504);
    assert_error(blob_get, 504, "BLOB_UNKNOWN").await;
    assert_error(tags, 504, "NAME_UNKNOWN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_body_may_take_longer_than_request_timeout() {
    let env = Env::with(Options { request_timeout: "1s", ..Default::default() }).await;
    let data = bytes(4 * 1024 * 1024, 13);
    let d = env.upstream.add_blob(data);
    // 64 chunks × 25 ms ≈ 1.6 s of body, each read well inside read_timeout.
    env.upstream.set_throttle(Some(Duration::from_millis(25)));
    let started = Instant::now();
    let r = env.get(&format!("/v2/pause/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(common::digest_of(&r.bytes().await.unwrap()), d, "the whole body arrived");
    assert!(started.elapsed() > Duration::from_secs(1), "the body did outlast request_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_scope_make_one_token_request() {
    let env = with_token(Options::default()).await;
    let digests: Vec<String> = (0..8).map(|i| env.upstream.add_blob(bytes(1000, 100 + i))).collect();
    // Slow enough that all eight 401s arrive while the first fetch runs.
    env.upstream.set_token_delay(Some(Duration::from_millis(500)));
    let mut clients = Vec::new();
    for d in &digests {
        let (client, url) = (env.client.clone(), format!("{}/v2/etcd/blobs/{d}", env.url));
        clients.push(tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), common::digest_of(&r.bytes().await.unwrap()))
        }));
    }
    for (c, d) in clients.into_iter().zip(&digests) {
        assert_eq!(c.await.unwrap(), (200, d.clone()));
    }
    assert_eq!(env.upstream.token_requests(), 1, "one token request for eight concurrent misses");
}

#[tokio::test]
async fn a_failed_token_fetch_is_remembered_briefly() {
    let env = with_token(Options::default()).await;
    env.upstream.add_image("pause", "3.9", bytes(10, 2));
    env.upstream.add_image("pause", "3.10", bytes(10, 3));
    env.upstream.set_token_mode(TokenMode::Error500);
    // A token endpoint that is down makes the upstream unavailable (502),
    // not a denial.
    assert_error(env.get("/v2/pause/manifests/3.9").await, 502, "MANIFEST_UNKNOWN").await;
    assert_eq!(env.upstream.token_requests(), 1);
    // Within the window: the same failure at once, without asking again,
    // even though the endpoint has recovered.
    env.upstream.set_token_mode(TokenMode::Normal);
    assert_error(env.get("/v2/pause/manifests/3.10").await, 502, "MANIFEST_UNKNOWN").await;
    assert_error(env.get("/v2/pause/manifests/3.9").await, 502, "MANIFEST_UNKNOWN").await;
    assert_eq!(env.upstream.token_requests(), 1, "no new token request within the window");
    // Another scope (repository) is not affected.
    env.upstream.add_image("etcd", "3.5", bytes(10, 4));
    assert_eq!(env.get("/v2/etcd/manifests/3.5").await.status(), 200);
    assert_eq!(env.upstream.token_requests(), 2);
}

#[tokio::test]
async fn an_oversized_token_body_is_refused_without_reading_it() {
    let env = with_token(Options::default()).await;
    env.upstream.add_image("pause", "3.9", bytes(10, 5));
    env.upstream.set_token_mode(TokenMode::Huge { bytes: 256 * MIB, announce: false });
    let r = within(Duration::from_secs(20), env.get("/v2/pause/manifests/3.9")).await;
    assert_error(r, 502, "MANIFEST_UNKNOWN").await;
    let sent = env.upstream.token_bytes_sent();
    assert!(sent < SOCKET_SLACK, "the fake sent {sent} bytes of a 256 MiB token");
}

#[tokio::test]
async fn an_oversized_token_body_with_a_length_is_refused_at_once() {
    let env = with_token(Options::default()).await;
    env.upstream.add_image("pause", "3.9", bytes(10, 6));
    env.upstream.set_token_mode(TokenMode::Huge { bytes: 256 * MIB, announce: true });
    let r = within(Duration::from_secs(20), env.get("/v2/pause/manifests/3.9")).await;
    assert_error(r, 502, "MANIFEST_UNKNOWN").await;
    let sent = env.upstream.token_bytes_sent();
    assert!(sent < SOCKET_SLACK, "the fake sent {sent} bytes of a 256 MiB token");
}

#[tokio::test]
async fn an_oversized_tags_list_is_refused_after_the_bound() {
    let env = Env::start().await;
    env.upstream.set_huge_tags(Some(256 * MIB));
    let r = within(Duration::from_secs(30), env.get("/v2/kube-apiserver/tags/list")).await;
    let body: serde_json::Value = {
        assert_eq!(r.status(), 502);
        r.json().await.expect("spec JSON error")
    };
    assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN", "{body}");
    assert!(body["errors"][0].get("detail").is_none(), "internal reasons stay in the log: {body}");
    let sent = env.upstream.tags_bytes_sent();
    // 16 MiB read, plus what the sockets buffer between the two: the
    // receive buffer grows while 16 MiB stream in quickly (up to 32 MiB
    // with this kernel's tcp_rmem), so the slack is larger than above.
    assert!(sent >= 16 * MIB, "the bound was reached ({sent} bytes sent)");
    assert!(sent < 64 * MIB, "the fake sent {sent} bytes of a 256 MiB list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tags_requests_make_one_upstream_fetch() {
    // tag_ttl 0: nothing is kept, so only single-flight can merge them.
    let env = Env::with(Options { tag_ttl: "0s", ..Default::default() }).await;
    env.upstream.add_image("etcd", "3.5.6-0", bytes(10, 7));
    env.upstream.set_tags_delay(Some(Duration::from_millis(500)));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (client, url) = (env.client.clone(), format!("{}/v2/etcd/tags/list", env.url));
        clients.push(tokio::spawn(async move { client.get(url).send().await.unwrap().json().await.unwrap() }));
    }
    for c in clients {
        let v: serde_json::Value = c.await.unwrap();
        assert_eq!(v["tags"], serde_json::json!(["3.5.6-0"]));
    }
    assert_eq!(env.upstream.count("GET", "/tags/list"), 1, "one upstream fetch for three requests");
    // With tag_ttl 0, the next request asks again.
    env.upstream.set_tags_delay(None);
    env.get("/v2/etcd/tags/list").await;
    assert_eq!(env.upstream.count("GET", "/tags/list"), 2);
}

#[tokio::test]
async fn tags_lists_are_kept_for_tag_ttl() {
    let env = Env::start().await;
    env.upstream.add_image("etcd", "3.5.6-0", bytes(10, 8));
    let v: serde_json::Value = env.get("/v2/etcd/tags/list").await.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["3.5.6-0"]));
    env.upstream.add_image("etcd", "3.5.7-0", bytes(10, 9));
    for _ in 0..3 {
        let v: serde_json::Value = env.get("/v2/etcd/tags/list").await.json().await.unwrap();
        assert_eq!(v["tags"], serde_json::json!(["3.5.6-0"]), "served from memory within tag_ttl");
    }
    assert_eq!(env.upstream.count("GET", "/tags/list"), 1, "no upstream call within tag_ttl");
    // Other repositories are fetched on their own.
    env.upstream.add_image("pause", "3.9", bytes(10, 10));
    let v: serde_json::Value = env.get("/v2/pause/tags/list").await.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["3.9"]));
    assert_eq!(env.upstream.count("GET", "/tags/list"), 2);
}

#[tokio::test]
async fn a_short_tag_ttl_lets_the_list_refresh() {
    let env = Env::with(Options { tag_ttl: "1s", ..Default::default() }).await;
    env.upstream.add_image("etcd", "3.5.6-0", bytes(10, 11));
    env.get("/v2/etcd/tags/list").await;
    env.upstream.add_image("etcd", "3.5.7-0", bytes(10, 12));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let v: serde_json::Value = env.get("/v2/etcd/tags/list").await.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["3.5.6-0", "3.5.7-0"]));
    assert_eq!(env.upstream.count("GET", "/tags/list"), 2);
}
