//! Publishing manifests over HTTP: manifest PUT and DELETE, tag DELETE,
//! blob DELETE and the referrers list, against the mirror with `[auth]` and
//! the fake upstream (127.0.0.1 only).
//!
//! Blob uploads are not part of this API slice, so blobs are written
//! straight into the store, as an upload would leave them.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{assert_error, bytes, digest_of, write_htpasswd, Env, Mode, Options};
use klts_mirror::oci::Digest;

const USER: (&str, &str) = ("publisher", "s3cret");
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Every shape a pull of `kube-apiserver` on registry.k8s.io (the default
/// upstream, alias k8s.gcr.io) can take: `(path prefix, query)`.
const SHAPES: [(&str, &str); 5] = [
    ("/v2/kube-apiserver", ""),
    ("/v2/kube-apiserver", "?ns=registry.k8s.io"),
    ("/v2/kube-apiserver", "?ns=k8s.gcr.io"),
    ("/v2/registry.k8s.io/kube-apiserver", ""),
    ("/v2/k8s.gcr.io/kube-apiserver", ""),
];

/// A mirror with `[auth]` for the publisher; the htpasswd file lives in `dir`.
async fn mirror(dir: &tempfile::TempDir) -> Env {
    Env::with(options(dir)).await
}

fn options(dir: &tempfile::TempDir) -> Options {
    let htpasswd = write_htpasswd(&dir.path().join("htpasswd"), &[USER]);
    Options { htpasswd: Some(htpasswd), ..Default::default() }
}

async fn put(env: &Env, path: &str, media_type: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    env.client
        .put(format!("{}{path}", env.url))
        .basic_auth(USER.0, Some(USER.1))
        .header("content-type", media_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn delete(env: &Env, path: &str) -> reqwest::Response {
    env.client.delete(format!("{}{path}", env.url)).basic_auth(USER.0, Some(USER.1)).send().await.unwrap()
}

/// Writes a blob into the store, as a finished upload would.
async fn seed_blob(env: &Env, data: &[u8]) -> String {
    let d: Digest = digest_of(data).parse().unwrap();
    env.mirror.proxy().store().put_blob(&d, Bytes::copy_from_slice(data)).await.unwrap();
    d.to_string()
}

/// An image manifest over two seeded blobs; `extra` is spliced in at the end.
async fn image(env: &Env, seed: u64, extra: &str) -> String {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#);
    let layer = bytes(1000 + seed as usize, seed);
    let (cd, ld) = (seed_blob(env, config.as_bytes()).await, seed_blob(env, &layer).await);
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{CONFIG}","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{ld}","size":{}}}]{extra}}}"#,
        config.len(),
        layer.len()
    )
}

fn subject(d: &str, size: usize) -> String {
    format!(r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":{size}}}"#)
}

/// Publishes `body` by digest under `repo_path` and returns its digest.
async fn publish_by_digest(env: &Env, repo_path: &str, media_type: &str, body: &str) -> String {
    let d = digest_of(body.as_bytes());
    let r = put(env, &format!("{repo_path}/manifests/{d}"), media_type, body.to_string()).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    d
}

/// GET of a manifest: (status, digest header, content type, body).
async fn pull(env: &Env, path: &str) -> (u16, String, String, Bytes) {
    let r = env.get(path).await;
    let h = |k: &str| r.headers().get(k).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let (status, digest, ct) = (r.status().as_u16(), h("docker-content-digest"), h("content-type"));
    (status, digest, ct, r.bytes().await.unwrap())
}

#[tokio::test]
async fn a_published_multi_arch_index_is_pulled_back_under_every_name_shape() {
    let dir = tempfile::tempdir().unwrap();
    let env = mirror(&dir).await;
    // Children by digest through the host-prefix shape, the index by tag
    // through the bare one: all one repository.
    let amd64 = image(&env, 1, "").await;
    let arm64 = image(&env, 2, "").await;
    let d_amd64 = publish_by_digest(&env, "/v2/registry.k8s.io/kube-apiserver", OCI_MANIFEST, &amd64).await;
    let d_arm64 = publish_by_digest(&env, "/v2/kube-apiserver", OCI_MANIFEST, &arm64).await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d_amd64}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{d_arm64}","size":{},"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#,
        amd64.len(),
        arm64.len()
    );
    let d_index = digest_of(index.as_bytes());
    let r = put(&env, "/v2/kube-apiserver/manifests/v1.18.20-lts.2?ns=k8s.gcr.io", OCI_INDEX, index.clone()).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], d_index.as_str());
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(location, format!("/v2/kube-apiserver/manifests/{d_index}?ns=k8s.gcr.io"));
    assert!(r.headers().get("oci-subject").is_none());
    assert_eq!(pull(&env, &location).await.3, index.as_bytes());

    for (prefix, query) in SHAPES {
        for reference in ["v1.18.20-lts.2", d_index.as_str()] {
            let (status, digest, ct, body) = pull(&env, &format!("{prefix}/manifests/{reference}{query}")).await;
            assert_eq!((status, digest.as_str(), ct.as_str()), (200, d_index.as_str(), OCI_INDEX), "{prefix}{query}");
            assert_eq!(body, index.as_bytes(), "byte-exact under {prefix}{query}");
        }
        for (d, body) in [(&d_amd64, &amd64), (&d_arm64, &arm64)] {
            let (status, digest, ct, got) = pull(&env, &format!("{prefix}/manifests/{d}{query}")).await;
            assert_eq!((status, digest.as_str(), ct.as_str()), (200, d.as_str(), OCI_MANIFEST));
            assert_eq!(got, body.as_bytes());
        }
        let head = env.head(&format!("{prefix}/manifests/v1.18.20-lts.2{query}")).await;
        assert_eq!(head.headers()["content-length"], index.len().to_string().as_str());
    }
    let tags: serde_json::Value = env.get("/v2/k8s.gcr.io/kube-apiserver/tags/list").await.json().await.unwrap();
    assert!(tags["tags"].as_array().unwrap().iter().any(|t| t == "v1.18.20-lts.2"), "{tags}");
    assert_eq!(env.upstream.count("GET", "/manifests/"), 0, "a published tag never asks upstream");
    assert_eq!(env.upstream.count("HEAD", "/manifests/"), 0);
}

#[tokio::test]
async fn a_published_tag_shadows_upstream_until_it_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let env = mirror(&dir).await;
    let (upstream_digest, _) = env.upstream.add_image("kube-apiserver", "v1.18.20", bytes(500, 9));
    let patched = image(&env, 3, "").await;
    let r = put(&env, "/v2/kube-apiserver/manifests/v1.18.20", OCI_MANIFEST, patched.clone()).await;
    assert_eq!(r.status(), 201);
    let published = digest_of(patched.as_bytes());
    for (prefix, query) in SHAPES {
        let (_, digest, _, body) = pull(&env, &format!("{prefix}/manifests/v1.18.20{query}")).await;
        assert_eq!((digest.as_str(), &body[..]), (published.as_str(), patched.as_bytes()));
    }
    assert_eq!(env.upstream.count("GET", "/manifests/"), 0, "upstream never asked");
    assert_eq!(env.upstream.count("HEAD", "/manifests/"), 0, "upstream never asked");

    let r = delete(&env, "/v2/registry.k8s.io/kube-apiserver/manifests/v1.18.20").await;
    assert_eq!(r.status(), 202);
    let r = env.get("/v2/kube-apiserver/manifests/v1.18.20").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], upstream_digest.as_str(), "falls through at once");
    assert_eq!(r.headers()["x-cache"], "MISS");
    // The manifest itself stays published by digest.
    let (status, digest, _, _) = pull(&env, &format!("/v2/kube-apiserver/manifests/{published}")).await;
    assert_eq!((status, digest.as_str()), (200, published.as_str()));
    assert_error(delete(&env, "/v2/kube-apiserver/manifests/v1.18.20").await, 404, "MANIFEST_UNKNOWN").await;
}

/// Polls `path` on `env` until its digest is `want`; returns how long that
/// took. With a zero `limit` the first answer must be it.
async fn seen_within(env: &Env, path: &str, want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = env.get(path).await;
        let got = r.headers().get("docker-content-digest").map(|v| v.to_str().unwrap().to_string());
        if got.as_deref() == Some(want) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{path} still answers {got:?}, not {want}, after {:?}", start.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn another_replica_sees_a_publish_and_a_delete_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let a = mirror(&dir).await;
    let b = a.replica(options(&dir)).await;
    let (upstream_digest, _) = a.upstream.add_image("pause", "3.9", bytes(300, 4));
    let path = "/v2/pause/manifests/3.9";
    // B has the tag in memory (as a cached one, and "not published").
    seen_within(&b, path, &upstream_digest, Duration::ZERO).await;

    let patched = image(&a, 5, "").await;
    let published = digest_of(patched.as_bytes());
    assert_eq!(put(&a, "/v2/k8s.gcr.io/pause/manifests/3.9", OCI_MANIFEST, patched).await.status(), 201);
    seen_within(&a, path, &published, Duration::ZERO).await;
    let took = seen_within(&b, path, &published, Duration::from_millis(2500)).await;
    assert!(took <= Duration::from_millis(2300), "the publish took {took:?} to reach the other replica");

    assert_eq!(delete(&a, "/v2/pause/manifests/3.9?ns=registry.k8s.io").await.status(), 202);
    seen_within(&a, path, &upstream_digest, Duration::ZERO).await;
    let took = seen_within(&b, path, &upstream_digest, Duration::from_millis(2500)).await;
    assert!(took <= Duration::from_millis(2300), "the delete took {took:?} to reach the other replica");
}

#[tokio::test]
async fn referrers_list_local_and_upstream_ones_and_filter_by_artifact_type() {
    let dir = tempfile::tempdir().unwrap();
    let env = mirror(&dir).await;
    let subject_body = image(&env, 6, "").await;
    let subj = publish_by_digest(&env, "/v2/kube-apiserver", OCI_MANIFEST, &subject_body).await;
    let empty = seed_blob(&env, b"{}").await;
    let artifact = |artifact_type: &str, n: u32| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{artifact_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[]{},"annotations":{{"org.example.n":"{n}"}}}}"#,
            subject(&subj, subject_body.len())
        )
    };
    let sig = artifact("application/vnd.example.sig", 1);
    let d_sig = digest_of(sig.as_bytes());
    let r =
        put(&env, &format!("/v2/registry.k8s.io/kube-apiserver/manifests/{d_sig}"), OCI_MANIFEST, sig.clone()).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["oci-subject"], subj.as_str(), "a pushed referrer names its subject");
    // A plain image with a subject is listed under its config's media type.
    let plain = image(&env, 7, &subject(&subj, subject_body.len())).await;
    let r = put(&env, "/v2/kube-apiserver/manifests/sbom?ns=k8s.gcr.io", OCI_MANIFEST, plain.clone()).await;
    assert_eq!(r.headers()["oci-subject"], subj.as_str(), "by tag too");
    let d_plain = digest_of(plain.as_bytes());
    // Upstream knows a signature of its own, and one we also have.
    let remote = Digest::of(b"remote signature").to_string();
    let upstream_index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{remote}","size":77,"artifactType":"application/vnd.example.sig","annotations":{{"from":"upstream"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{d_sig}","size":{},"artifactType":"application/vnd.example.sig"}}]}}"#,
        sig.len()
    );
    env.upstream.add_referrers("kube-apiserver", &subj, upstream_index);

    let list = |query: &'static str| {
        let (env, subj) = (&env, &subj);
        async move {
            let mut out = Vec::new();
            for (prefix, q) in SHAPES {
                let sep = if q.is_empty() { "?" } else { "&" };
                let path = format!(
                    "{prefix}/referrers/{subj}{q}{}",
                    if query.is_empty() { String::new() } else { format!("{sep}{query}") }
                );
                let r = env.get(&path).await;
                assert_eq!(r.status(), 200, "{path}");
                assert_eq!(r.headers()["content-type"], OCI_INDEX, "{path}");
                let filtered = r.headers().get("oci-filters-applied").map(|v| v.to_str().unwrap().to_string());
                let v: serde_json::Value = r.json().await.unwrap();
                assert_eq!((v["schemaVersion"].as_u64(), v["mediaType"].as_str()), (Some(2), Some(OCI_INDEX)));
                out.push((filtered, v["manifests"].as_array().unwrap().clone()));
            }
            assert!(out.windows(2).all(|w| w[0] == w[1]), "every shape lists the same: {out:?}");
            out.remove(0)
        }
    };
    let (filtered, all) = list("").await;
    assert_eq!(filtered, None);
    let digests: Vec<&str> = all.iter().map(|e| e["digest"].as_str().unwrap()).collect();
    assert_eq!(digests.len(), 3, "{all:?}");
    for d in [&d_sig, &d_plain, &remote] {
        assert!(digests.contains(&d.as_str()), "{d} in {digests:?}");
    }
    let entry = |d: &str| all.iter().find(|e| e["digest"] == d).unwrap().clone();
    assert_eq!(entry(&d_sig)["artifactType"], "application/vnd.example.sig");
    assert_eq!(entry(&d_sig)["size"], sig.len());
    assert_eq!(entry(&d_sig)["mediaType"], OCI_MANIFEST);
    assert_eq!(entry(&d_sig)["annotations"]["org.example.n"], "1", "listed as published here");
    assert_eq!(entry(&d_plain)["artifactType"], CONFIG);
    assert_eq!(entry(&remote)["annotations"]["from"], "upstream");

    let (filtered, sigs) = list("artifactType=application/vnd.example.sig").await;
    assert_eq!(filtered.as_deref(), Some("artifactType"));
    let mut got: Vec<&str> = sigs.iter().map(|e| e["digest"].as_str().unwrap()).collect();
    got.sort();
    let mut want = vec![d_sig.as_str(), remote.as_str()];
    want.sort();
    assert_eq!(got, want);
    let (filtered, none) = list("artifactType=application/vnd.example.nothing").await;
    assert_eq!((filtered.as_deref(), none.len()), (Some("artifactType"), 0));

    // Upstream failing: the local ones.
    env.upstream.set_mode(Mode::Error500);
    let (_, local) = list("").await;
    let mut got: Vec<&str> = local.iter().map(|e| e["digest"].as_str().unwrap()).collect();
    got.sort();
    let mut want = vec![d_sig.as_str(), d_plain.as_str()];
    want.sort();
    assert_eq!(got, want);
    env.upstream.set_mode(Mode::Normal);

    // A subject nobody refers to, and one that was never pushed.
    let r = env.get(&format!("/v2/kube-apiserver/referrers/{}", Digest::of(b"unknown"))).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["manifests"], serde_json::json!([]));
    let missing = Digest::of(b"missing content").to_string();
    let orphan = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.example.sig","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[]{}}}"#,
        subject(&missing, 123)
    );
    let r = put(&env, "/v2/kube-apiserver/manifests/orphan", OCI_MANIFEST, orphan.clone()).await;
    assert_eq!((r.status().as_u16(), r.headers()["oci-subject"].to_str().unwrap()), (201, missing.as_str()));
    let v: serde_json::Value = env.get(&format!("/v2/kube-apiserver/referrers/{missing}")).await.json().await.unwrap();
    assert_eq!(v["manifests"][0]["digest"], digest_of(orphan.as_bytes()).as_str());

    // A deleted referrer leaves the list.
    assert_eq!(delete(&env, &format!("/v2/kube-apiserver/manifests/{d_sig}")).await.status(), 202);
    env.upstream.add_referrers(
        "kube-apiserver",
        &subj,
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#),
    );
    let v: serde_json::Value = env.get(&format!("/v2/kube-apiserver/referrers/{subj}")).await.json().await.unwrap();
    let left: Vec<&str> = v["manifests"].as_array().unwrap().iter().map(|e| e["digest"].as_str().unwrap()).collect();
    assert_eq!(left, vec![d_plain.as_str()]);
}

#[tokio::test]
async fn a_referenced_blob_cannot_be_deleted_until_its_manifest_is() {
    let dir = tempfile::tempdir().unwrap();
    let env = mirror(&dir).await;
    let layer = bytes(2048, 11);
    let config = br#"{"os":"linux"}"#;
    let (ld, cd) = (seed_blob(&env, &layer).await, seed_blob(&env, config).await);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{CONFIG}","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let md = publish_by_digest(&env, "/v2/etcd", OCI_MANIFEST, &manifest).await;
    assert_eq!(put(&env, "/v2/etcd/manifests/3.5.9-0", OCI_MANIFEST, manifest.clone()).await.status(), 201);

    assert_error(delete(&env, &format!("/v2/etcd/blobs/{ld}")).await, 405, "UNSUPPORTED").await;
    assert_error(delete(&env, &format!("/v2/registry.k8s.io/etcd/blobs/{cd}")).await, 405, "UNSUPPORTED").await;
    let r = env.get(&format!("/v2/etcd/blobs/{ld}")).await;
    assert_eq!((r.status().as_u16(), r.bytes().await.unwrap()), (200, Bytes::from(layer.clone())), "still served");

    assert_eq!(delete(&env, &format!("/v2/etcd/manifests/{md}")).await.status(), 202);
    assert_eq!(env.head(&format!("/v2/etcd/manifests/{md}")).await.status(), 404, "gone by digest");
    assert_eq!(env.head("/v2/etcd/manifests/3.5.9-0").await.status(), 404, "and its tag with it");
    assert_eq!(delete(&env, &format!("/v2/etcd/blobs/{ld}")).await.status(), 202);
    assert_eq!(delete(&env, &format!("/v2/etcd/blobs/{cd}")).await.status(), 202);
    assert_error(env.get(&format!("/v2/etcd/blobs/{ld}")).await, 404, "BLOB_UNKNOWN").await;
    assert_error(delete(&env, &format!("/v2/etcd/blobs/{ld}")).await, 404, "BLOB_UNKNOWN").await;
    // Pushed again, as the conformance suite does with its well-known blobs.
    seed_blob(&env, &layer).await;
    seed_blob(&env, config).await;
    assert_eq!(put(&env, "/v2/etcd/manifests/3.5.9-0", OCI_MANIFEST, manifest).await.status(), 201);
}

#[tokio::test]
async fn large_and_sha512_manifests_are_published_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let env = mirror(&dir).await;
    // About 3.9 MB, sent chunked as the conformance suite does.
    let annotations: Vec<String> =
        (0..390).map(|i| format!(r#""org.example.{i:03}":"{}""#, "A".repeat(10_000))).collect();
    let large = image(&env, 12, &format!(r#","annotations":{{{}}}"#, annotations.join(","))).await;
    assert!(large.len() > 3_900_000 && large.len() < 4 * 1024 * 1024, "{}", large.len());
    let stream = futures::stream::iter(
        large
            .as_bytes()
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let r = put(&env, "/v2/kube-apiserver/manifests/large-manifest", OCI_MANIFEST, reqwest::Body::wrap_stream(stream))
        .await;
    assert_eq!(r.status(), 201);
    let (status, digest, _, body) = pull(&env, "/v2/kube-apiserver/manifests/large-manifest").await;
    assert_eq!((status, digest), (200, digest_of(large.as_bytes())));
    assert_eq!(body, large.as_bytes());

    let small = image(&env, 13, "").await;
    let d512 = Digest::of_with(klts_mirror::oci::Algorithm::Sha512, small.as_bytes()).to_string();
    let r = put(&env, &format!("/v2/kube-apiserver/manifests/{d512}"), OCI_MANIFEST, small.clone()).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], d512.as_str());
    let (status, digest, _, body) = pull(&env, &format!("/v2/kube-apiserver/manifests/{d512}")).await;
    assert_eq!((status, digest.as_str(), &body[..]), (200, d512.as_str(), small.as_bytes()));
    assert_eq!(delete(&env, &format!("/v2/kube-apiserver/manifests/{d512}")).await.status(), 202);
}

/// A blob HEAD falls through to upstream, so a client pushing an image
/// whose layers upstream has (a patched build over an upstream base) skips
/// uploading them. The manifest naming them is then published all the
/// same: the mirror fetches and stores those blobs first, so the published
/// image does not depend on upstream keeping them.
#[tokio::test]
async fn blobs_only_upstream_has_are_fetched_for_a_pushed_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let env = mirror(&dir).await;
    let base = bytes(5000, 21);
    let layer = env.upstream.add_blob(base.clone());
    let r = env.head(&format!("/v2/kube-apiserver/blobs/{layer}")).await;
    assert_eq!(r.status(), 200, "upstream's blob exists, as far as a pushing client can tell");
    let has = |d: &str| {
        let d: Digest = d.parse().unwrap();
        let store = env.mirror.proxy().store().clone();
        async move { store.has_blob(&d).await.unwrap() }
    };
    assert!(!has(&layer).await, "a HEAD stores nothing");

    let ours = image(&env, 22, "").await;
    let parsed: serde_json::Value = serde_json::from_str(&ours).unwrap();
    let manifest = ours
        .replace(parsed["layers"][0]["digest"].as_str().unwrap(), &layer)
        .replace(&format!("\"size\":{}}}]", 1022), &format!("\"size\":{}}}]", base.len()));
    let r = put(&env, "/v2/kube-apiserver/manifests/v1.30.0-lts.1", OCI_MANIFEST, manifest.clone()).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert!(has(&layer).await, "fetched and stored before the publish");
    assert_eq!(env.upstream.count("GET", &layer), 1);

    // Upstream gone: the published image is whole without it.
    env.upstream.set_mode(Mode::Error500);
    let (status, _, _, body) = pull(&env, "/v2/kube-apiserver/manifests/v1.30.0-lts.1").await;
    assert_eq!((status, body), (200, Bytes::from(manifest)));
    let r = env.get(&format!("/v2/kube-apiserver/blobs/{layer}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), base);

    // What upstream cannot give (here: corrupt bytes) stays missing, and
    // the push is refused as before.
    env.upstream.set_mode(Mode::Corrupt);
    let bad = env.upstream.add_blob(bytes(3000, 23));
    let no_blob = ours.replace(parsed["layers"][0]["digest"].as_str().unwrap(), &bad);
    let r = put(&env, "/v2/kube-apiserver/manifests/v2", OCI_MANIFEST, no_blob).await;
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
    assert!(!has(&bad).await, "nothing unverified is stored");
}

/// Every bad push and delete: the spec error, the right status, and the
/// store exactly as before.
#[tokio::test]
async fn bad_input_is_refused_and_leaves_the_store_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let env = mirror(&dir).await;
    let good = image(&env, 14, "").await;
    assert_eq!(put(&env, "/v2/kube-apiserver/manifests/v1", OCI_MANIFEST, good.clone()).await.status(), 201);
    let before = env.stored_files();

    // A manifest whose layer was never pushed.
    let missing = Digest::of(b"never pushed").to_string();
    let parsed: serde_json::Value = serde_json::from_str(&good).unwrap();
    let no_blob = good.replace(parsed["layers"][0]["digest"].as_str().unwrap(), &missing);
    let r = put(&env, "/v2/kube-apiserver/manifests/v1", OCI_MANIFEST, no_blob).await;
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["errors"][0]["code"].as_str(), v["errors"][0]["detail"].as_str()),
        (Some("MANIFEST_BLOB_UNKNOWN"), Some(missing.as_str()))
    );
    // An index naming a manifest that is not here.
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{missing}","size":9}}]}}"#
    );
    assert_error(put(&env, "/v2/kube-apiserver/manifests/v1", OCI_INDEX, index).await, 400, "MANIFEST_BLOB_UNKNOWN")
        .await;
    // Not JSON; an unknown media type; Content-Type and mediaType disagreeing.
    assert_error(
        put(&env, "/v2/kube-apiserver/manifests/v1", OCI_MANIFEST, "{not json").await,
        400,
        "MANIFEST_INVALID",
    )
    .await;
    let r = put(&env, "/v2/kube-apiserver/manifests/v1", "application/vnd.example.unknown+json", good.clone()).await;
    assert_error(r, 400, "MANIFEST_INVALID").await;
    assert_error(put(&env, "/v2/kube-apiserver/manifests/v1", OCI_INDEX, good.clone()).await, 400, "MANIFEST_INVALID")
        .await;
    // A digest the body does not hash to (the suite's "bad-digest-image").
    let r = put(
        &env,
        &format!("/v2/kube-apiserver/manifests/{}", digest_of(good.as_bytes())),
        OCI_MANIFEST,
        format!("{good}  "),
    )
    .await;
    assert_error(r, 400, "DIGEST_INVALID").await;
    assert_error(
        put(&env, "/v2/kube-apiserver/manifests/sha256:baddigeststring", OCI_MANIFEST, good.clone()).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    // Tags that are not tags.
    for bad in ["-v1", &"v".repeat(129)] {
        assert_error(
            put(&env, &format!("/v2/kube-apiserver/manifests/{bad}"), OCI_MANIFEST, good.clone()).await,
            400,
            "NAME_INVALID",
        )
        .await;
    }
    // An upstream this mirror does not have.
    assert_error(
        put(&env, "/v2/kube-apiserver/manifests/v1?ns=quay.io", OCI_MANIFEST, good.clone()).await,
        404,
        "NAME_UNKNOWN",
    )
    .await;
    assert_error(
        put(&env, "/v2/quay.io/kube-apiserver/manifests/v1", OCI_MANIFEST, good.clone()).await,
        404,
        "NAME_UNKNOWN",
    )
    .await;
    // No credentials, a wrong password.
    for creds in [None, Some("wrong")] {
        let mut req = env
            .client
            .put(format!("{}/v2/kube-apiserver/manifests/v1", env.url))
            .header("content-type", OCI_MANIFEST)
            .body(good.clone());
        if let Some(p) = creds {
            req = req.basic_auth(USER.0, Some(p));
        }
        assert_error(req.send().await.unwrap(), 401, "UNAUTHORIZED").await;
        let mut req = env.client.delete(format!("{}/v2/kube-apiserver/manifests/v1", env.url));
        if let Some(p) = creds {
            req = req.basic_auth(USER.0, Some(p));
        }
        assert_error(req.send().await.unwrap(), 401, "UNAUTHORIZED").await;
    }
    // Deletes of what is not there.
    assert_error(delete(&env, &format!("/v2/kube-apiserver/manifests/{missing}")).await, 404, "MANIFEST_UNKNOWN").await;
    assert_error(delete(&env, "/v2/kube-apiserver/manifests/nope").await, 404, "MANIFEST_UNKNOWN").await;
    assert_error(delete(&env, &format!("/v2/kube-apiserver/blobs/{missing}")).await, 404, "BLOB_UNKNOWN").await;
    // A manifest published elsewhere is not this repository's to delete.
    let other = format!("/v2/kube-proxy/manifests/{}", digest_of(good.as_bytes()));
    assert_error(delete(&env, &other).await, 404, "MANIFEST_UNKNOWN").await;

    assert_eq!(env.stored_files(), before, "nothing stored, nothing removed");
    let (status, digest, _, body) = pull(&env, "/v2/kube-apiserver/manifests/v1").await;
    assert_eq!((status, digest, &body[..]), (200, digest_of(good.as_bytes()), good.as_bytes()));
}

/// Over 4 MiB, with and without `Content-Length`: the client reads a 413,
/// not a broken pipe, and the connection is closed after it.
#[tokio::test]
async fn a_huge_manifest_gets_413_not_a_broken_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let env = mirror(&dir).await;
    let before = env.stored_files();
    let huge = format!(r#"{{"schemaVersion":2,"annotations":{{"a":"{}"}}}}"#, "A".repeat(5 * 1024 * 1024));
    for chunked in [false, true] {
        let body = if chunked {
            let chunks: Vec<_> =
                huge.as_bytes().chunks(64 * 1024).map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c))).collect();
            reqwest::Body::wrap_stream(futures::stream::iter(chunks))
        } else {
            reqwest::Body::from(huge.clone())
        };
        let r = put(&env, "/v2/kube-apiserver/manifests/huge", OCI_MANIFEST, body).await;
        assert_eq!(r.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"), "chunked: {chunked}");
        assert_error(r, 413, "SIZE_INVALID").await;
    }
    // Also when the request is refused before any handler reads it.
    let r = put(&env, "/v2/kube-apiserver/manifests/huge?ns=quay.io", OCI_MANIFEST, huge.clone()).await;
    assert_error(r, 404, "NAME_UNKNOWN").await;
    assert_eq!(env.stored_files(), before);
}

/// What a client that writes its whole body before reading (Go's, as the
/// conformance suite uses) sees: every byte accepted, then the answer. A
/// server that answered and closed while bytes were still coming would
/// reset the connection under the writer.
#[tokio::test]
async fn a_huge_body_is_read_to_its_end_before_the_answer() {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let env = mirror(&dir).await;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", USER.0, USER.1));
    let len = 12 * 1024 * 1024; // three times the bound, within what is drained
    let chunk = vec![b' '; 256 * 1024];
    for chunked in [false, true] {
        let addr = env.url.trim_start_matches("http://").to_string();
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let framing = if chunked { "Transfer-Encoding: chunked".to_string() } else { format!("Content-Length: {len}") };
        let head = format!(
            "PUT /v2/kube-apiserver/manifests/huge HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nContent-Type: {OCI_MANIFEST}\r\n{framing}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut sent = 0;
        while sent < len {
            let written = if chunked {
                let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                framed.extend_from_slice(&chunk);
                framed.extend_from_slice(b"\r\n");
                s.write_all(&framed).await
            } else {
                s.write_all(&chunk).await
            };
            written.unwrap_or_else(|e| panic!("chunked {chunked}: write failed after {sent} bytes: {e}"));
            sent += chunk.len();
        }
        if chunked {
            s.write_all(b"0\r\n\r\n").await.unwrap();
        }
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 413"), "chunked {chunked}: {text}");
        assert!(text.contains("SIZE_INVALID"), "{text}");
    }
}
