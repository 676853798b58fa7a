//! Integration tests: the mirror in-process against a fake upstream.

mod common;

use std::time::Duration;

use common::{assert_error, bytes, digest_of, Env, Mode, Options};
use futures::StreamExt;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn x_cache(r: &reqwest::Response) -> String {
    r.headers().get("x-cache").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

#[tokio::test]
async fn base_endpoint_answers_with_api_version() {
    let env = Env::start().await;
    let r = env.get("/v2/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");
    assert_eq!(env.upstream.total(), 0, "/v2/ never goes upstream");
}

#[tokio::test]
async fn manifest_cold_then_warm_with_headers() {
    let env = Env::start().await;
    let (md, _) = env.upstream.add_image("kube-apiserver", "v1.18.20", bytes(1000, 1));

    let r = env.get("/v2/kube-apiserver/manifests/v1.18.20").await;
    assert_eq!(r.status(), 200);
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
    assert_eq!(r.headers()["docker-content-digest"], md.as_str());
    assert_eq!(r.headers()["etag"], format!("\"{md}\"").as_str());
    let len: usize = r.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), len);
    assert_eq!(digest_of(&body), md, "served byte-exact");

    let r = env.get("/v2/kube-apiserver/manifests/v1.18.20").await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(digest_of(&r.bytes().await.unwrap()), md);

    // HEAD carries digest and length (containerd needs both) and no body.
    let r = env.head("/v2/kube-apiserver/manifests/v1.18.20").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], md.as_str());
    assert_eq!(r.headers()["content-length"].to_str().unwrap(), len.to_string());
    assert!(r.bytes().await.unwrap().is_empty());

    let r = env.get(&format!("/v2/kube-apiserver/manifests/{md}")).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(env.upstream.count("GET", "/manifests/"), 1, "one upstream GET for all of it");
    assert_eq!(env.upstream.count("HEAD", "/manifests/"), 0);
}

#[tokio::test]
async fn all_request_shapes_share_one_cache_entry() {
    let env = Env::start().await;
    let (md, _) = env.upstream.add_image("kube-proxy", "v1.30.0", bytes(10, 2));
    let shapes = [
        "/v2/kube-proxy/manifests/v1.30.0",
        "/v2/kube-proxy/manifests/v1.30.0?ns=registry.k8s.io",
        "/v2/registry.k8s.io/kube-proxy/manifests/v1.30.0",
        "/v2/k8s.gcr.io/kube-proxy/manifests/v1.30.0",
        "/v2/kube-proxy/manifests/v1.30.0?ns=k8s.gcr.io",
    ];
    for (i, p) in shapes.iter().enumerate() {
        let r = env.get(p).await;
        assert_eq!(r.status(), 200, "{p}");
        assert_eq!(x_cache(&r), if i == 0 { "MISS" } else { "HIT" }, "{p}");
        assert_eq!(r.headers()["docker-content-digest"], md.as_str(), "{p}");
    }
    assert_eq!(env.upstream.count("GET", "/v2/kube-proxy/manifests/v1.30.0"), 1);
}

#[tokio::test]
async fn docker_hub_names_get_library_prefix() {
    let env = Env::with(Options { default_upstream: "docker.io", ..Default::default() }).await;
    let (md, _) = env.upstream.add_image("library/busybox", "1.36", bytes(10, 3));
    for p in [
        "/v2/library/busybox/manifests/1.36",
        "/v2/busybox/manifests/1.36",
        "/v2/docker.io/busybox/manifests/1.36",
        "/v2/docker.io/library/busybox/manifests/1.36",
        "/v2/busybox/manifests/1.36?ns=docker.io",
    ] {
        let r = env.get(p).await;
        assert_eq!(r.status(), 200, "{p}");
        assert_eq!(r.headers()["docker-content-digest"], md.as_str(), "{p}");
    }
    assert_eq!(env.upstream.count("GET", "/v2/library/busybox/manifests/1.36"), 1);
}

#[tokio::test]
async fn unknown_upstreams_are_refused_without_dialing_out() {
    let env = Env::start().await;
    assert_error(env.get("/v2/pause/manifests/3.9?ns=evil.example.com").await, 404, "NAME_UNKNOWN").await;
    assert_error(env.get("/v2/quay.io/coreos/etcd/manifests/v3").await, 404, "NAME_UNKNOWN").await;
    assert_error(env.get(&format!("/v2/quay.io/x/blobs/{}", digest_of(b"x"))).await, 404, "NAME_UNKNOWN").await;
    assert_eq!(env.upstream.total(), 0);
}

#[tokio::test]
async fn blob_cold_then_warm() {
    let env = Env::start().await;
    let data = bytes(3 * 1024 * 1024 + 5, 4);
    let d = env.upstream.add_blob(data.clone());
    let r = env.get(&format!("/v2/pause/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    assert_eq!(r.headers()["content-length"].to_str().unwrap(), data.len().to_string());
    assert_eq!(digest_of(&r.bytes().await.unwrap()), d);
    // The commit follows the last byte closely; wait for it.
    let mut hit = false;
    for _ in 0..100 {
        let r = env.get(&format!("/v2/other/repo/blobs/{d}")).await;
        if x_cache(&r) == "HIT" {
            assert_eq!(digest_of(&r.bytes().await.unwrap()), d, "shared across repositories");
            hit = true;
            break;
        }
        r.bytes().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(hit, "blob must be served from the store after the fill");
    assert_eq!(env.upstream.count("GET", "/blobs/"), 1);
}

#[tokio::test]
async fn blob_head_never_downloads() {
    let env = Env::start().await;
    let data = bytes(123_456, 5);
    let d = env.upstream.add_blob(data.clone());
    let r = env.head(&format!("/v2/pause/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"].to_str().unwrap(), "123456");
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    assert_eq!(env.upstream.count("GET", "/blobs/"), 0);
    assert_eq!(env.upstream.count("HEAD", "/blobs/"), 1);
    let missing = digest_of(b"nope");
    let r = env.head(&format!("/v2/pause/blobs/{missing}")).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn upstream_404_maps_to_unknown_codes() {
    let env = Env::start().await;
    assert_error(env.get("/v2/pause/manifests/nope").await, 404, "MANIFEST_UNKNOWN").await;
    assert_error(env.get(&format!("/v2/pause/manifests/{}", digest_of(b"m"))).await, 404, "MANIFEST_UNKNOWN").await;
    assert_error(env.get(&format!("/v2/pause/blobs/{}", digest_of(b"b"))).await, 404, "BLOB_UNKNOWN").await;
}

/// 16 concurrent cold pulls of one blob: one upstream GET, every body
/// verified, and bytes reach clients while the upstream is still sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_streams_to_all_waiters() {
    let env = Env::start().await;
    let data = bytes(4 * 1024 * 1024, 6);
    let d = env.upstream.add_blob(data.clone());
    // 64 chunks × 20 ms ≈ 1.3 s upstream transfer.
    env.upstream.set_throttle(Some(Duration::from_millis(20)));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (client, url) = (env.client.clone(), format!("{}/v2/etcd/blobs/{d}", env.url));
        let state = env.upstream.state.clone();
        clients.push(tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let mut s = r.bytes_stream();
            let mut body = Vec::new();
            let mut sent_at_first_byte = None;
            while let Some(c) = s.next().await {
                if sent_at_first_byte.is_none() {
                    sent_at_first_byte = Some(*state.blob_bytes_sent.lock().unwrap());
                }
                body.extend_from_slice(&c.unwrap());
            }
            (digest_of(&body), sent_at_first_byte.unwrap())
        }));
    }
    for c in clients {
        let (got, sent_then) = c.await.unwrap();
        assert_eq!(got, d, "every body verifies");
        assert!(sent_then < data.len() as u64, "first bytes arrived before upstream finished ({sent_then} sent)");
    }
    assert_eq!(env.upstream.count("GET", "/blobs/"), 1, "exactly one upstream GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_does_not_stop_the_fill() {
    let env = Env::start().await;
    let data = bytes(2 * 1024 * 1024, 7);
    let d = env.upstream.add_blob(data.clone());
    env.upstream.set_throttle(Some(Duration::from_millis(10)));
    let r = env.get(&format!("/v2/etcd/blobs/{d}")).await;
    let mut s = r.bytes_stream();
    s.next().await.unwrap().unwrap();
    drop(s); // the only client goes away mid-fill
    let mut committed = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if env.mirror.proxy().fills_in_flight() == 0 {
            let r = env.get(&format!("/v2/etcd/blobs/{d}")).await;
            committed = x_cache(&r) == "HIT" && digest_of(&r.bytes().await.unwrap()) == d;
            break;
        }
    }
    assert!(committed, "fill completed and committed without any client");
    assert_eq!(env.upstream.count("GET", "/blobs/"), 1);
}

/// Whether the client saw the transfer fail: an error status (the fill
/// failed before the response started) or a broken body (it failed after).
async fn transfer_fails(r: reqwest::Response) -> bool {
    if r.status() != 200 {
        return true;
    }
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        if c.is_err() {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn corrupted_upstream_blob_is_never_committed() {
    let env = Env::start().await;
    let data = bytes(300_000, 8);
    let d = env.upstream.add_blob(data.clone());
    env.upstream.set_mode(Mode::Corrupt);
    let r = env.get(&format!("/v2/etcd/blobs/{d}")).await;
    assert!(transfer_fails(r).await, "the client's transfer must fail, not complete with wrong bytes");
    env.upstream.set_mode(Mode::Normal);
    let r = env.get(&format!("/v2/etcd/blobs/{d}")).await;
    assert_eq!(x_cache(&r), "MISS", "nothing was stored");
    assert_eq!(digest_of(&r.bytes().await.unwrap()), d);
    assert!(
        env.stored_files().iter().all(|(_, c)| c.len() != data.len() || digest_of(c) == d),
        "no corrupt file in the store"
    );
}

#[tokio::test]
async fn truncated_upstream_blob_is_never_committed() {
    let env = Env::start().await;
    let data = bytes(300_000, 9);
    let d = env.upstream.add_blob(data.clone());
    env.upstream.set_mode(Mode::Truncate);
    // Slow enough that the response has started when the cut comes: the
    // client must see its connection fail, not a short "complete" body.
    env.upstream.set_throttle(Some(Duration::from_millis(20)));
    let r = env.get(&format!("/v2/etcd/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert!(transfer_fails(r).await, "a truncated fill fails the client mid-body");
    env.upstream.set_throttle(None);
    env.upstream.set_mode(Mode::Normal);
    let r = env.get(&format!("/v2/etcd/blobs/{d}")).await;
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(digest_of(&r.bytes().await.unwrap()), d);
}

#[tokio::test]
async fn corrupted_manifest_is_refused() {
    let env = Env::start().await;
    let body = br#"{"schemaVersion":2,"layers":[]}"#.to_vec();
    // Stored under a digest that is not its own.
    let wrong = digest_of(b"something else");
    env.upstream.add_manifest("pause", None, OCI_MANIFEST, body);
    let claimed = format!("/v2/pause/manifests/{wrong}");
    assert_error(env.get(&claimed).await, 404, "MANIFEST_UNKNOWN").await;
    assert!(env.stored_files().iter().all(|(p, _)| !p.to_string_lossy().contains("manifests")));
}

#[tokio::test]
async fn range_requests_on_cached_and_uncached_blobs() {
    let env = Env::start().await;
    let data = bytes(1_000_000, 10);
    let d = env.upstream.add_blob(data.clone());
    let path = format!("{}/v2/etcd/blobs/{d}", env.url);
    // Not cached yet.
    let r = env.client.get(&path).header("range", "bytes=100-199").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/1000000");
    assert_eq!(r.bytes().await.unwrap(), data[100..200]);
    // Wait for the commit, then ranges from the store.
    for _ in 0..100 {
        if env.mirror.proxy().fills_in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = env.client.get(&path).header("range", "bytes=999990-").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.headers()["content-range"], "bytes 999990-999999/1000000");
    assert_eq!(r.bytes().await.unwrap(), data[999_990..]);
    let r = env.client.get(&path).header("range", "bytes=-10").send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), data[999_990..]);
    let r = env.client.get(&path).header("range", "bytes=1000000-").send().await.unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */1000000");
    assert_error(r, 416, "SIZE_INVALID").await;
    // Unparseable ranges are ignored: the whole blob.
    let r = env.client.get(&path).header("range", "bytes=5-1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), data.len());
    assert_eq!(env.upstream.count("GET", "/blobs/"), 1);
}

#[tokio::test]
async fn tag_ttl_revalidates_with_one_head() {
    let env = Env::with(Options { tag_ttl: "0s", ..Default::default() }).await;
    env.upstream.add_image("pause", "3.9", bytes(10, 11));
    assert_eq!(x_cache(&env.get("/v2/pause/manifests/3.9").await), "MISS");
    // Expired: one HEAD, same digest, no body fetched.
    let r = env.get("/v2/pause/manifests/3.9").await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(env.upstream.count("HEAD", "/manifests/3.9"), 1);
    assert_eq!(env.upstream.count("GET", "/manifests/3.9"), 1);
    // Upstream moves the tag: the new manifest is fetched.
    let (md2, _) = env.upstream.add_image("pause", "3.9", bytes(20, 12));
    let r = env.get("/v2/pause/manifests/3.9").await;
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(r.headers()["docker-content-digest"], md2.as_str());
    assert_eq!(env.upstream.count("GET", "/manifests/3.9"), 2);
}

#[tokio::test]
async fn fresh_tags_do_not_contact_upstream() {
    let env = Env::start().await;
    env.upstream.add_image("pause", "3.9", bytes(10, 13));
    env.get("/v2/pause/manifests/3.9").await;
    let before = env.upstream.total();
    for _ in 0..5 {
        assert_eq!(x_cache(&env.get("/v2/pause/manifests/3.9").await), "HIT");
    }
    assert_eq!(env.upstream.total(), before);
}

#[tokio::test]
async fn stale_if_error_on_500_429_and_stall() {
    let env = Env::with(Options { tag_ttl: "0s", read_timeout: "1s", ..Default::default() }).await;
    let (md, _) = env.upstream.add_image("pause", "3.9", bytes(10, 14));
    env.get("/v2/pause/manifests/3.9").await;
    for mode in [Mode::Error500, Mode::TooMany, Mode::Stall] {
        env.upstream.set_mode(mode);
        let r = env.get("/v2/pause/manifests/3.9").await;
        assert_eq!(r.status(), 200, "{mode:?}");
        assert_eq!(x_cache(&r), "STALE", "{mode:?}");
        assert_eq!(r.headers()["docker-content-digest"], md.as_str());
    }
}

#[tokio::test]
async fn upstream_failures_with_nothing_cached() {
    let env = Env::with(Options { read_timeout: "1s", ..Default::default() }).await;
    env.upstream.set_mode(Mode::TooMany);
    let r = env.get("/v2/pause/manifests/3.9").await;
    assert_eq!(r.headers()["retry-after"], "17");
    assert_error(r, 429, "TOOMANYREQUESTS").await;
    env.upstream.set_mode(Mode::Error500);
    assert_error(env.get("/v2/pause/manifests/3.9").await, 502, "MANIFEST_UNKNOWN").await;
    assert_error(env.get(&format!("/v2/pause/blobs/{}", digest_of(b"z"))).await, 502, "BLOB_UNKNOWN").await;
    env.upstream.set_mode(Mode::Stall);
    let started = std::time::Instant::now();
    assert_error(env.get("/v2/pause/manifests/3.9").await, 504, "MANIFEST_UNKNOWN").await;
    assert!(started.elapsed() < Duration::from_secs(10), "a stalled upstream is an error, not a hung request");
}

#[tokio::test]
async fn offline_mode_never_dials_out() {
    let env = Env::with(Options { tag_ttl: "0s", ..Default::default() }).await;
    let (md, layer) = env.upstream.add_image("etcd", "3.5.6-0", bytes(50_000, 15));
    env.get("/v2/etcd/manifests/3.5.6-0").await.bytes().await.unwrap();
    env.get(&format!("/v2/etcd/blobs/{layer}")).await.bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let env = env.restart(Options { offline: true, tag_ttl: "0s", ..Default::default() }).await;
    let before = env.upstream.total();
    let r = env.get("/v2/etcd/manifests/3.5.6-0").await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.headers()["docker-content-digest"], md.as_str());
    let r = env.get(&format!("/v2/etcd/blobs/{layer}")).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_error(env.get("/v2/etcd/manifests/other").await, 404, "MANIFEST_UNKNOWN").await;
    assert_error(env.get(&format!("/v2/etcd/blobs/{}", digest_of(b"q"))).await, 404, "BLOB_UNKNOWN").await;
    assert_eq!(env.head(&format!("/v2/etcd/blobs/{}", digest_of(b"q"))).await.status(), 404);
    let tags: serde_json::Value = env.get("/v2/etcd/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["3.5.6-0"]), "offline without a cached list: the cached tags");
    assert_eq!(env.upstream.total(), before, "offline: zero upstream requests");
}

#[tokio::test]
async fn published_tags_win_and_never_touch_upstream() {
    use klts_mirror::oci::{Digest, RepoKey};
    use klts_mirror::storage::{Class, StoredManifest};
    let env = Env::start().await;
    env.upstream.add_image("kube-apiserver", "v1.18.20", bytes(10, 16));
    let body = bytes::Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[],"annotations":{"klts":"patched"}}"#);
    let m = StoredManifest { digest: Digest::of(&body), media_type: OCI_MANIFEST.into(), body };
    let proxy = env.mirror.proxy();
    proxy.store().put_manifest(&m).await.unwrap();
    let key = RepoKey::new("registry.k8s.io".into(), "kube-apiserver".parse().unwrap());
    for tag in ["v1.18.20", "v1.18.20-lts.2"] {
        proxy.put_local_tag(Class::Published, &key, &tag.parse().unwrap(), &m.digest).await.unwrap();
    }
    for p in [
        "/v2/kube-apiserver/manifests/v1.18.20",
        "/v2/registry.k8s.io/kube-apiserver/manifests/v1.18.20-lts.2",
        "/v2/kube-apiserver/manifests/v1.18.20-lts.2?ns=k8s.gcr.io",
    ] {
        let r = env.get(p).await;
        assert_eq!(r.status(), 200, "{p}");
        assert_eq!(x_cache(&r), "HIT");
        assert_eq!(r.headers()["docker-content-digest"], m.digest.to_string().as_str());
    }
    assert_eq!(env.upstream.count("GET", "/manifests/"), 0);
    assert_eq!(env.upstream.count("HEAD", "/manifests/"), 0);
    // The tags list is the union of published and upstream tags.
    let tags: serde_json::Value = env.get("/v2/kube-apiserver/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1.18.20", "v1.18.20-lts.2"]));
}

#[tokio::test]
async fn tags_list_pagination_and_fallback() {
    let env = Env::with(Options { read_timeout: "1s", ..Default::default() }).await;
    for t in ["a", "b", "c", "d", "e"] {
        env.upstream.add_image("coredns/coredns", t, bytes(1, 17));
    }
    let r = env.get("/v2/coredns/coredns/tags/list?n=2").await;
    assert_eq!(r.headers()["link"], "</v2/coredns/coredns/tags/list?n=2&last=b>; rel=\"next\"");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"name": "coredns/coredns", "tags": ["a", "b"]}));
    let r = env.get("/v2/coredns/coredns/tags/list?n=2&last=b").await;
    assert!(r.headers().get("link").is_some());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["c", "d"]));
    let r = env.get("/v2/coredns/coredns/tags/list?n=2&last=d").await;
    assert!(r.headers().get("link").is_none());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["e"]));
    let v: serde_json::Value = env.get("/v2/coredns/coredns/tags/list?n=0").await.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!([]));
    assert_error(env.get("/v2/coredns/coredns/tags/list?n=x").await, 400, "UNSUPPORTED").await;
    // Upstream down: the cached list answers.
    env.upstream.set_mode(Mode::Error500);
    let v: serde_json::Value = env.get("/v2/coredns/coredns/tags/list").await.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b", "c", "d", "e"]));
    env.upstream.set_mode(Mode::Normal);
    assert_error(env.get("/v2/nothing/here/tags/list").await, 404, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn coredns_quirk_serves_coredns_coredns() {
    let env = Env::start().await;
    let (md, layer) = env.upstream.add_image("coredns/coredns", "v1.8.6", bytes(100, 18));
    let r = env.get("/v2/coredns/manifests/v1.8.6").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], md.as_str());
    let r = env.get(&format!("/v2/k8s.gcr.io/coredns/blobs/{layer}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(digest_of(&r.bytes().await.unwrap()), layer);
    // Old unversioned tags stay where they were.
    env.upstream.add_image("coredns", "1.7.0", bytes(5, 19));
    assert_eq!(env.get("/v2/coredns/manifests/1.7.0").await.status(), 200);
    assert_eq!(env.upstream.count("GET", "/v2/coredns/coredns/manifests/1.7.0"), 0);
    // Not on Docker Hub.
    assert_error(env.get("/v2/docker.io/coredns/manifests/v1.8.6").await, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn bearer_tokens_are_fetched_cached_and_not_leaked_on_redirect() {
    let env = Env::start().await;
    let cdn = common::FakeUpstream::start().await;
    *env.upstream.state.token.lock().unwrap() = Some("s3cret".into());
    *env.upstream.state.redirect_blobs_to.lock().unwrap() = Some(cdn.url());
    let (_, layer) = env.upstream.add_image("kube-scheduler", "v1.30.0", bytes(70_000, 20));
    cdn.add_blob(bytes(70_000, 20));
    assert_eq!(env.get("/v2/kube-scheduler/manifests/v1.30.0").await.status(), 200);
    let r = env.get(&format!("/v2/kube-scheduler/blobs/{layer}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(digest_of(&r.bytes().await.unwrap()), layer);
    assert_eq!(env.upstream.count("GET", "/token"), 1, "token cached per scope");
    let cdn_reqs = cdn.requests();
    assert_eq!(cdn_reqs.len(), 1);
    assert_eq!(cdn_reqs[0].authorization, None, "Authorization never crosses hosts");
    let authed =
        env.upstream.requests().into_iter().filter(|l| l.authorization.as_deref() == Some("Bearer s3cret")).count();
    assert!(authed >= 2, "the origin got the token");
}

/// A redirect target that wants a token of its own gets it fetched
/// anonymously: our upstream credentials answer only the configured host.
#[tokio::test]
async fn credentials_never_go_to_a_redirect_targets_token_realm() {
    // SAFETY: no other thread of this test binary touches this variable.
    unsafe { std::env::set_var("KLTS_TEST_REALM_PASSWORD", "hunter2") };
    let env =
        Env::with(Options { credentials: Some(("klts", "KLTS_TEST_REALM_PASSWORD")), ..Default::default() }).await;
    let cdn = common::FakeUpstream::start().await;
    *env.upstream.state.token.lock().unwrap() = Some("origin-token".into());
    *cdn.state.token.lock().unwrap() = Some("cdn-token".into());
    *env.upstream.state.redirect_blobs_to.lock().unwrap() = Some(cdn.url());
    let (_, layer) = env.upstream.add_image("kube-proxy", "v1.30.0", bytes(50_000, 24));
    cdn.add_blob(bytes(50_000, 24));
    let r = env.get(&format!("/v2/kube-proxy/blobs/{layer}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(digest_of(&r.bytes().await.unwrap()), layer);
    let origin_token = env.upstream.requests().into_iter().find(|l| l.path.starts_with("/token")).unwrap();
    assert_eq!(origin_token.authorization.as_deref(), Some("Basic a2x0czpodW50ZXIy"), "the origin's realm gets them");
    let cdn_token = cdn.requests().into_iter().find(|l| l.path.starts_with("/token")).expect("cdn token fetched");
    assert_eq!(cdn_token.authorization, None, "the redirect target's realm never does");
}

#[tokio::test]
async fn oversized_manifests_are_refused() {
    let env = Env::start().await;
    let mut big = br#"{"schemaVersion":2,"layers":[],"x":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 4 * 1024 * 1024));
    big.extend_from_slice(br#""}"#);
    env.upstream.add_manifest("pause", Some("huge"), OCI_MANIFEST, big);
    let r = env.get("/v2/pause/manifests/huge").await;
    assert_eq!(r.status(), 502);
    assert_error(r, 502, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn bad_input_gets_spec_errors_and_leaves_the_store_intact() {
    let env = Env::start().await;
    let (_, layer) = env.upstream.add_image("pause", "3.9", bytes(1000, 21));
    env.get("/v2/pause/manifests/3.9").await.bytes().await.unwrap();
    env.get(&format!("/v2/pause/blobs/{layer}")).await.bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = env.stored_files();
    let upstream_before = env.upstream.total();

    let cases: &[(&str, &str, u16, &str)] = &[
        ("GET", "/v2/../../etc/passwd/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/a/../b/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/%2e%2e/%2e%2e/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/pause/%2e%2e/blobs/sha256:00", 400, "NAME_INVALID"),
        ("GET", "/v2/a//b/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/UPPER/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/pause/manifests/..", 400, "NAME_INVALID"),
        ("GET", "/v2/pause/manifests/%2e%2e%2f%2e%2e", 400, "NAME_INVALID"),
        ("GET", "/v2/pause/blobs/sha256:123", 400, "DIGEST_INVALID"),
        ("GET", "/v2/pause/blobs/sha256:../../../../etc/passwd", 400, "NAME_INVALID"),
        ("GET", "/v2/pause/blobs/sha256:..%2f..%2fetc%2fpasswd", 400, "DIGEST_INVALID"),
        ("GET", "/v2/pause/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"),
        ("GET", "/v2/pause/manifests/sha256:XYZ", 400, "DIGEST_INVALID"),
        ("DELETE", "/v2/pause/manifests/3.9", 401, "UNAUTHORIZED"),
        ("PUT", "/v2/pause/manifests/3.9", 401, "UNAUTHORIZED"),
        ("POST", "/v2/pause/blobs/uploads/", 401, "UNAUTHORIZED"),
        ("PATCH", "/v2/pause/blobs/uploads/abc", 401, "UNAUTHORIZED"),
        ("GET", "/v2/pause/unknown/endpoint", 404, "NAME_UNKNOWN"),
        ("GET", "/etc/passwd", 404, "NAME_UNKNOWN"),
    ];
    for (method, path, status, code) in cases {
        let (got, body) = env.raw(method, path).await;
        assert_eq!(got, *status, "{method} {path}: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body:?}"));
        assert_eq!(v["errors"][0]["code"], *code, "{method} {path}");
    }
    assert_eq!(env.stored_files(), before, "bad requests change nothing in the store");
    assert_eq!(env.upstream.total(), upstream_before, "bad requests never go upstream");
    // And the server is still healthy; the catalog lists what it holds.
    assert_eq!(env.get("/v2/pause/manifests/3.9").await.status(), 200);
    let catalog: serde_json::Value = env.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!(["registry.k8s.io/pause"]));
}

#[tokio::test]
async fn a_stale_answer_does_not_refresh_the_tag() {
    let env = Env::with(Options { tag_ttl: "1s", ..Default::default() }).await;
    env.upstream.add_image("pause", "3.9", bytes(10, 22));
    env.get("/v2/pause/manifests/3.9").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.upstream.set_mode(Mode::Error500);
    assert_eq!(x_cache(&env.get("/v2/pause/manifests/3.9").await), "STALE");
    assert_eq!(x_cache(&env.get("/v2/pause/manifests/3.9").await), "STALE", "still unconfirmed");
    env.upstream.set_mode(Mode::Normal);
    assert_eq!(x_cache(&env.get("/v2/pause/manifests/3.9").await), "HIT", "revalidated");
    assert_eq!(x_cache(&env.get("/v2/pause/manifests/3.9").await), "HIT");
    assert_eq!(env.upstream.count("HEAD", "/manifests/3.9"), 3);
}

#[tokio::test]
async fn basic_credentials_only_when_challenged_and_only_to_the_upstream() {
    // SAFETY: no other thread of this test binary touches this variable.
    unsafe { std::env::set_var("KLTS_TEST_BASIC_PASSWORD", "hunter2") };
    let env =
        Env::with(Options { credentials: Some(("klts", "KLTS_TEST_BASIC_PASSWORD")), ..Default::default() }).await;
    *env.upstream.state.basic.lock().unwrap() = Some("Basic a2x0czpodW50ZXIy".into());
    let (md, _) = env.upstream.add_image("pause", "3.10", bytes(10, 23));
    let r = env.get("/v2/pause/manifests/3.10").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], md.as_str());
    let reqs = env.upstream.requests();
    assert_eq!(reqs[0].authorization, None, "no credentials before a challenge");
    assert_eq!(reqs[1].authorization.as_deref(), Some("Basic a2x0czpodW50ZXIy"));
    // Wrong credentials: refused with DENIED, not retried forever.
    *env.upstream.state.basic.lock().unwrap() = Some("Basic other".into());
    assert_error(env.get("/v2/pause/manifests/other").await, 403, "DENIED").await;
}

/// sha512 is a registered algorithm: a missing sha512 blob or manifest is
/// unknown (404), not an invalid digest (400).
#[tokio::test]
async fn sha512_digests_are_accepted() {
    let env = Env::start().await;
    let d = format!("sha512:{}", "ab".repeat(64));
    assert_error(env.get(&format!("/v2/pause/blobs/{d}")).await, 404, "BLOB_UNKNOWN").await;
    assert_error(env.get(&format!("/v2/pause/manifests/{d}")).await, 404, "MANIFEST_UNKNOWN").await;
    let bad = format!("sha384:{}", "ab".repeat(48));
    assert_error(env.get(&format!("/v2/pause/blobs/{bad}")).await, 400, "DIGEST_INVALID").await;
}

/// kubeadm with `imageRepository` at the mirror asks for `coredns:v1.8.6`;
/// a sealed site holds kubeadm's `registry.k8s.io/coredns/coredns:v1.8.6`
/// (pinned by a bundle import or published): the CoreDNS rule applies to
/// what the site holds too, without any upstream.
#[tokio::test]
async fn the_coredns_rule_finds_pinned_coredns_coredns_when_sealed() {
    use klts_mirror::oci::{Digest, RepoKey};
    use klts_mirror::storage::{Class, StoredManifest};
    let env = Env::with(Options { offline: true, ..Default::default() }).await;
    let body = bytes::Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[],"annotations":{"coredns":"v1.8.6"}}"#);
    let m = StoredManifest { digest: Digest::of(&body), media_type: OCI_MANIFEST.into(), body };
    let proxy = env.mirror.proxy();
    proxy.store().put_manifest(&m).await.unwrap();
    let key = RepoKey::new("registry.k8s.io".into(), "coredns/coredns".parse().unwrap());
    proxy.put_local_tag(Class::Pinned, &key, &"v1.8.6".parse().unwrap(), &m.digest).await.unwrap();
    for p in [
        "/v2/coredns/manifests/v1.8.6",
        "/v2/k8s.gcr.io/coredns/manifests/v1.8.6",
        "/v2/coredns/coredns/manifests/v1.8.6",
    ] {
        let r = env.get(p).await;
        assert_eq!(r.status(), 200, "{p}");
        assert_eq!(r.headers()["docker-content-digest"], m.digest.to_string().as_str(), "{p}");
    }
    // Only `v` tags of the Kubernetes upstreams take the rule.
    assert_error(env.get("/v2/coredns/manifests/1.8.6").await, 404, "MANIFEST_UNKNOWN").await;
    assert_error(env.get("/v2/docker.io/coredns/manifests/v1.8.6").await, 404, "MANIFEST_UNKNOWN").await;
    assert_eq!(env.upstream.total(), 0, "sealed: nothing asked upstream");
}
