//! Air-gap bundles against the fake upstream (127.0.0.1 only): `bundle
//! create` resolves through the mirror's proxy and writes an OCI layout
//! archive and its lock; `bundle verify` re-hashes it and finds what is
//! damaged or missing.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use common::{bytes, digest_of, Env, FakeUpstream, Mode, Options};
use klts_mirror::airgap::create::{create, Request, Summary};
use klts_mirror::airgap::images::ImageRef;
use klts_mirror::airgap::lock::Lock;
use klts_mirror::airgap::progress::Progress;
use klts_mirror::airgap::verify::{verify, Report};
use klts_mirror::airgap::BundleError;
use klts_mirror::storage::{Class, StoredManifest};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const BIN: &str = env!("CARGO_BIN_EXE_klts-mirror");

/// One platform's image in the fake upstream.
struct Child {
    manifest: String,
    config: String,
    layer: String,
}

/// A two-platform image: an OCI index over linux/amd64 and linux/arm64/v8.
struct MultiArch {
    index: String,
    index_body: Bytes,
    amd64: Child,
    arm64: Child,
}

/// A single-platform manifest (config + one layer of `layer_len` bytes),
/// stored untagged; returns it with its body.
fn add_child(up: &FakeUpstream, repo: &str, arch: &str, seed: u64, layer_len: usize) -> (Child, String) {
    let config =
        format!(r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"seed":{seed}}}"#);
    let config_d = up.add_blob(config.clone().into_bytes());
    let layer_d = up.add_blob(bytes(layer_len, seed));
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{CONFIG}","digest":"{config_d}","size":{}}},"layers":[{{"mediaType":"{LAYER}","digest":"{layer_d}","size":{layer_len}}}]}}"#,
        config.len()
    );
    let m = up.add_manifest(repo, None, OCI_MANIFEST, body.clone().into_bytes());
    (Child { manifest: m, config: config_d, layer: layer_d }, body)
}

fn add_multi_arch(up: &FakeUpstream, repo: &str, tag: &str, seed: u64) -> MultiArch {
    let (amd64, amd_body) = add_child(up, repo, "amd64", seed, 96 * 1024);
    let (arm64, arm_body) = add_child(up, repo, "arm64", seed + 1, 80 * 1024);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
        amd64.manifest,
        amd_body.len(),
        arm64.manifest,
        arm_body.len()
    );
    let index_body = Bytes::from(index);
    let d = up.add_manifest(repo, Some(tag), OCI_INDEX, index_body.clone());
    MultiArch { index: d, index_body, amd64, arm64 }
}

fn image(r: &str) -> ImageRef {
    r.parse().unwrap()
}

fn request(out: &Path, images: &[&str]) -> Request {
    Request {
        output: out.to_path_buf(),
        images: images.iter().map(|r| image(r)).collect(),
        platforms: vec![],
        since: None,
    }
}

async fn bundle(env: &Env, req: Request) -> Result<Summary, BundleError> {
    create(env.mirror.proxy().clone(), req, Progress::quiet()).await
}

fn check(path: &Path) -> Report {
    verify(path, None, &Progress::quiet()).unwrap()
}

/// Every regular file of the archive: name → bytes (test bundles are small).
fn entries(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out = BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type().is_file() {
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            out.insert(name, body);
        }
    }
    out
}

fn blob_name(d: &str) -> String {
    format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))
}

/// `ref.name` → digest of the archive's `index.json`.
fn index_names(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap().to_string();
            (name, m["digest"].as_str().unwrap().to_string())
        })
        .collect()
}

fn lock_of(path: &Path) -> Lock {
    Lock::read(&path.with_extension("lock")).unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_platform_image_bundles_byte_exact_and_verifies() {
    let env = Env::start().await;
    let img = add_multi_arch(&env.upstream, "kube-apiserver", "v1.30.0", 1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("site.tar");

    let summary = bundle(&env, request(&out, &["kube-apiserver:v1.30.0"])).await.unwrap();
    assert_eq!((summary.images, summary.blobs, summary.carried_by_base, summary.left_out), (1, 7, 0, 0));
    assert_eq!(summary.lock, dir.path().join("site.lock"));
    assert!(!dir.path().join("site.tar.partial").exists() && !dir.path().join("site.lock.partial").exists());

    assert_eq!(env.upstream.count("GET", "/blobs/"), 4, "each config and layer fetched once");
    let files = entries(&out);
    assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    // A bare name is routed as `serve` routes it and named in full.
    let names = index_names(&files);
    assert_eq!(names, BTreeMap::from([("registry.k8s.io/kube-apiserver:v1.30.0".to_string(), img.index.clone())]));
    assert_eq!(files[&blob_name(&img.index)], img.index_body, "the index is carried byte-exact");
    for child in [&img.amd64, &img.arm64] {
        for d in [&child.manifest, &child.config, &child.layer] {
            let body = &files[&blob_name(d)];
            assert_eq!(&digest_of(body), d, "{d} is in the archive with its bytes");
        }
    }
    assert_eq!(files["klts-mirror.lock"], std::fs::read(&summary.lock).unwrap(), "the lock is embedded as written");

    let lock = lock_of(&out);
    let locked = &lock.images["registry.k8s.io/kube-apiserver:v1.30.0"];
    assert_eq!(locked.digest.to_string(), img.index);
    assert_eq!(locked.media_type, OCI_INDEX);
    assert_eq!(locked.needs.len(), 6, "two manifests, two configs, two layers");
    let layer = locked.needs.iter().find(|n| n.digest.to_string() == img.amd64.layer).unwrap();
    assert_eq!((layer.size, layer.media_type.as_str()), (96 * 1024, LAYER));

    let report = check(&out);
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.images, report.blobs, report.carried_by_base, report.left_out), (1, 7, 0, 0));
    assert_eq!(report.bytes, summary.bytes);
    assert_eq!(report.lock.as_deref(), Some("klts-mirror.lock"));

    // The same content makes the same archive, byte for byte.
    let again = dir.path().join("again.tar");
    bundle(&env, request(&again, &["registry.k8s.io/kube-apiserver:v1.30.0"])).await.unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&out).unwrap());
}

/// Flips one byte in the middle of `digest`'s entry in the archive.
fn flip_byte_of(archive: &Path, digest: &str) {
    let name = blob_name(digest);
    let (offset, size) = {
        let mut a = tar::Archive::new(std::fs::File::open(archive).unwrap());
        let e = a.entries().unwrap().map(|e| e.unwrap()).find(|e| e.path().unwrap().to_string_lossy() == name).unwrap();
        (e.raw_file_position(), e.size())
    };
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(archive).unwrap();
    let at = offset + size / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_layer_fails_verify_naming_that_blob() {
    let env = Env::start().await;
    let img = add_multi_arch(&env.upstream, "kube-proxy", "v1.30.0", 2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("site.tar");
    bundle(&env, request(&out, &["kube-proxy:v1.30.0"])).await.unwrap();
    flip_byte_of(&out, &img.arm64.layer);

    let report = check(&out);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].contains(&img.arm64.layer) && report.problems[0].contains("damaged"), "{:?}", report);

    // The CLI: non-zero, the problem named.
    let cli = Command::new(BIN).args(["bundle", "verify"]).arg(&out).output().unwrap();
    assert_eq!(cli.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(stderr.contains(&img.arm64.layer), "{stderr}");
    // A good one: zero and a summary.
    let good = dir.path().join("good.tar");
    bundle(&env, request(&good, &["kube-proxy:v1.30.0"])).await.unwrap();
    let cli = Command::new(BIN).args(["bundle", "verify"]).arg(&good).output().unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let stdout = String::from_utf8_lossy(&cli.stdout);
    assert!(stdout.contains("OK: 1 images") && stdout.contains("7 blobs"), "{stdout}");

    // A blob gone from the archive (and from the lock's reach) is named too.
    let cut = dir.path().join("cut.tar");
    rewrite_without(&good, &cut, &blob_name(&img.amd64.config));
    let report = check(&cut);
    assert!(report.problems.iter().any(|p| p.contains(&img.amd64.config) && p.contains("missing")), "{report:?}");
}

/// Copies an archive leaving out one entry (the lock beside it too).
fn rewrite_without(from: &Path, to: &Path, skip: &str) {
    let mut a = tar::Archive::new(std::fs::File::open(from).unwrap());
    let mut b = tar::Builder::new(std::fs::File::create(to).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() != skip {
            let mut h = e.header().clone();
            let path = e.path().unwrap().into_owned();
            b.append_data(&mut h, path, &mut e).unwrap();
        }
    }
    b.finish().unwrap();
    std::fs::copy(from.with_extension("lock"), to.with_extension("lock")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_narrowing_carries_one_child_and_keeps_the_index_whole() {
    let env = Env::start().await;
    let img = add_multi_arch(&env.upstream, "kube-scheduler", "v1.30.0", 3);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("amd64.tar");
    let req = Request { platforms: vec!["linux/amd64".parse().unwrap()], ..request(&out, &["kube-scheduler:v1.30.0"]) };
    let summary = bundle(&env, req).await.unwrap();
    assert_eq!((summary.blobs, summary.left_out), (4, 1));

    let files = entries(&out);
    assert_eq!(files[&blob_name(&img.index)], img.index_body, "the index stays byte-exact");
    for d in [&img.amd64.manifest, &img.amd64.config, &img.amd64.layer] {
        assert!(files.contains_key(&blob_name(d)), "{d} travels");
    }
    for d in [&img.arm64.manifest, &img.arm64.config, &img.arm64.layer] {
        assert!(!files.contains_key(&blob_name(d)), "{d} stays behind");
    }
    assert_eq!(env.upstream.count("GET", &img.arm64.layer), 0, "left-out blobs are never fetched");
    let lock = lock_of(&out);
    assert_eq!(lock.platforms, vec!["linux/amd64".to_string()]);
    let locked = &lock.images["registry.k8s.io/kube-scheduler:v1.30.0"];
    assert_eq!(locked.left_out.len(), 1);
    assert_eq!(locked.left_out[0].digest.to_string(), img.arm64.manifest);
    assert_eq!(locked.left_out[0].platform.as_deref(), Some("linux/arm64/v8"));

    let report = check(&out);
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.left_out, 1);

    // A platform no image has is a problem, not an empty bundle.
    let none = dir.path().join("none.tar");
    let req =
        Request { platforms: vec!["linux/s390x".parse().unwrap()], ..request(&none, &["kube-scheduler:v1.30.0"]) };
    let Err(BundleError::Problems(p)) = bundle(&env, req).await else { panic!("must fail") };
    assert!(p[0].contains("none of the platforms") && p[0].contains("linux/arm64/v8"), "{p:?}");
    assert!(!none.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_leaves_out_what_the_base_lists_and_verify_accepts_it() {
    let env = Env::start().await;
    let apiserver = add_multi_arch(&env.upstream, "kube-apiserver", "v1.30.0", 4);
    let dir = tempfile::tempdir().unwrap();
    let may = dir.path().join("may.tar");
    bundle(&env, request(&may, &["kube-apiserver:v1.30.0"])).await.unwrap();

    // June: the same apiserver, and a new proxy.
    let proxy = add_multi_arch(&env.upstream, "kube-proxy", "v1.30.1", 5);
    let june = dir.path().join("june.tar");
    let full = dir.path().join("june-full.tar");
    let images = ["kube-apiserver:v1.30.0", "kube-proxy:v1.30.1"];
    let req = Request { since: Some(dir.path().join("may.lock")), ..request(&june, &images) };
    let summary = bundle(&env, req).await.unwrap();
    bundle(&env, request(&full, &images)).await.unwrap();
    assert_eq!(summary.carried_by_base, 7, "everything of May's apiserver");
    assert_eq!(summary.blobs, 7, "only the proxy's");
    assert!(std::fs::metadata(&june).unwrap().len() < std::fs::metadata(&full).unwrap().len() * 2 / 3);

    let files = entries(&june);
    assert!(
        !files.contains_key(&blob_name(&apiserver.amd64.layer)) && !files.contains_key(&blob_name(&apiserver.index))
    );
    assert!(files.contains_key(&blob_name(&proxy.arm64.layer)));
    let names = index_names(&files);
    assert_eq!(names.len(), 2, "index.json still names both: {names:?}");

    let lock = lock_of(&june);
    assert_eq!(lock.images.len(), 2, "the lock lists everything, to be the next base");
    let base = lock.base.as_ref().unwrap();
    assert_eq!(base.file, "may.lock");
    assert_eq!(base.digest.to_string(), digest_of(&std::fs::read(dir.path().join("may.lock")).unwrap()));
    assert!(lock.carried_by_base.iter().any(|d| d.to_string() == apiserver.index));

    let report = check(&june);
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.carried_by_base, 7);
    let with_base = verify(&june, Some(&dir.path().join("may.lock")), &Progress::quiet()).unwrap();
    assert!(with_base.is_ok(), "{:?}", with_base.problems);
    // Against the wrong base: named.
    let wrong = verify(&june, Some(&dir.path().join("june-full.lock")), &Progress::quiet()).unwrap();
    assert!(wrong.problems.iter().any(|p| p.contains("--since may.lock")), "{:?}", wrong.problems);
    // Without any lock, the left-out content is missing.
    rewrite_without(&june, &dir.path().join("bare.tar"), "klts-mirror.lock");
    std::fs::remove_file(dir.path().join("bare.lock")).unwrap();
    let bare = check(&dir.path().join("bare.tar"));
    assert!(bare.problems.iter().any(|p| p.contains(&apiserver.index) && p.contains("missing")), "{bare:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_content_wins_over_upstream() {
    let env = Env::start().await;
    add_multi_arch(&env.upstream, "kube-apiserver", "v1.18.20-lts.1", 6);
    // Published on this mirror under the same tag: a patched build.
    let registry = env.mirror.proxy().registry().clone();
    let layer = bytes(50 * 1024, 60);
    let config = br#"{"architecture":"amd64","os":"linux","patched":true}"#.to_vec();
    for b in [&layer, &config] {
        registry.store().put_blob(&digest_of(b).parse().unwrap(), Bytes::from(b.clone())).await.unwrap();
    }
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{CONFIG}","digest":"{}","size":{}}},"layers":[{{"mediaType":"{LAYER}","digest":"{}","size":{}}}]}}"#,
        digest_of(&config),
        config.len(),
        digest_of(&layer),
        layer.len()
    );
    let body = Bytes::from(body);
    let published = Arc::new(StoredManifest {
        digest: digest_of(&body).parse().unwrap(),
        media_type: OCI_MANIFEST.into(),
        body: body.clone(),
    });
    registry.keep_manifest(&published).await;
    let key = env.mirror.proxy().route(&"kube-apiserver".parse().unwrap(), None).unwrap();
    registry
        .put_local_tag(Class::Published, &key, &"v1.18.20-lts.1".parse().unwrap(), &published.digest)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("site.tar");
    bundle(&env, request(&out, &["k8s.gcr.io/kube-apiserver:v1.18.20-lts.1"])).await.unwrap();
    let files = entries(&out);
    let names = index_names(&files);
    assert_eq!(names["registry.k8s.io/kube-apiserver:v1.18.20-lts.1"], published.digest.to_string());
    assert_eq!(files[&blob_name(&published.digest.to_string())], body);
    assert_eq!(files[&blob_name(&digest_of(&layer))], layer);
    assert_eq!(env.upstream.count("GET", "/manifests/v1.18.20-lts.1"), 0, "upstream is not asked for the tag");
    assert!(check(&out).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_and_attestations_travel_with_their_image() {
    let env = Env::start().await;
    let img = add_multi_arch(&env.upstream, "pause", "3.9", 7);
    let up = &env.upstream;
    // An OCI referrer of the index (a notation-style signature)...
    let sig_blob = up.add_blob(b"signature bytes".to_vec());
    let empty = up.add_blob(b"{}".to_vec());
    let referrer = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.cncf.notary.signature","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/jose+json","digest":"{sig_blob}","size":15}}],"subject":{{"mediaType":"{OCI_INDEX}","digest":"{}","size":{}}}}}"#,
        img.index,
        img.index_body.len()
    );
    let referrer_d = up.add_manifest("pause", None, OCI_MANIFEST, referrer.clone().into_bytes());
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{referrer_d}","size":{},"artifactType":"application/vnd.cncf.notary.signature"}}]}}"#,
        referrer.len()
    );
    up.add_referrers("pause", &img.index, list.into_bytes());
    // ...and a cosign signature tag of the amd64 child.
    let cosign_tag = format!("sha256-{}.sig", img.amd64.manifest.trim_start_matches("sha256:"));
    let (cosign, cosign_layer) = up.add_image("pause", &cosign_tag, b"cosign payload".to_vec());

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("site.tar");
    let summary = bundle(&env, request(&out, &["pause:3.9"])).await.unwrap();
    assert_eq!((summary.images, summary.attachments), (3, 2));
    let files = entries(&out);
    let names = index_names(&files);
    assert_eq!(names[&format!("registry.k8s.io/pause@{referrer_d}")], referrer_d);
    assert_eq!(names[&format!("registry.k8s.io/pause:{cosign_tag}")], cosign);
    for d in [&referrer_d, &sig_blob, &cosign, &cosign_layer] {
        assert!(files.contains_key(&blob_name(d)), "{d} travels");
    }
    let lock = lock_of(&out);
    let attached = &lock.images[&format!("registry.k8s.io/pause:{cosign_tag}")];
    assert_eq!(attached.attached_to.as_deref(), Some("registry.k8s.io/pause:3.9"));
    assert!(check(&out).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_problem_is_one_line_and_nothing_is_left_behind() {
    let env = Env::start().await;
    add_multi_arch(&env.upstream, "pause", "3.9", 8);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("site.tar");
    let req = request(&out, &["pause:3.9", "pause:9.9", "quay.io/coreos/etcd:v3", "kube-apiserver:v0.0.1"]);
    let Err(BundleError::Problems(p)) = bundle(&env, req).await else { panic!("must fail") };
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p[0].starts_with("pause:9.9: manifest unknown"), "{p:?}");
    assert!(p[1].starts_with("quay.io/coreos/etcd:v3: ") && p[1].contains("not configured"), "{p:?}");
    assert!(p[2].starts_with("kube-apiserver:v0.0.1: manifest unknown"), "{p:?}");
    assert!(p.iter().all(|l| !l.contains('\n')));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no archive, lock or partial file");

    // A blob that arrives damaged fails the bundle and names the blob.
    let img = add_multi_arch(&env.upstream, "etcd", "3.5.12-0", 9);
    env.upstream.set_mode(Mode::Corrupt);
    let e = bundle(&env, request(&out, &["etcd:3.5.12-0"])).await.unwrap_err();
    env.upstream.set_mode(Mode::Normal);
    let BundleError::Corrupt { digest, .. } = &e else { panic!("{e}") };
    assert!([&img.amd64.config, &img.amd64.layer].contains(&&digest.to_string()), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no archive, lock or partial file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_one_line() {
    let env = Env::with(Options { upstream_url: Some(common::closed_port_url().await), ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let Err(BundleError::Problems(p)) = bundle(&env, request(&dir.path().join("x.tar"), &["pause:3.9"])).await else {
        panic!("must fail")
    };
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("pause:3.9: cannot reach upstream"), "{p:?}");
}

/// Writes a config for the CLI that uses `upstream` for both upstreams.
fn cli_config(dir: &Path, upstream: &FakeUpstream) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, common::config_text(&upstream.url(), &dir.join("data"), &Options::default())).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_a_bundle_and_reports_bad_references_one_per_line() {
    let upstream = FakeUpstream::start().await;
    let img = add_multi_arch(&upstream, "pause", "3.9", 10);
    let dir = tempfile::tempdir().unwrap();
    let config = cli_config(dir.path(), &upstream);
    let images = dir.path().join("images.txt");
    std::fs::write(&images, "# the sandbox\nregistry.k8s.io/pause:3.9\n").unwrap();
    let out = dir.path().join("site.tar");
    let run = |args: Vec<String>| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(["bundle", "create", "--config"]).arg(&config).arg("-o").arg(&out).args(args);
        async move { cmd.output().await.unwrap() }
    };
    let done =
        run(vec!["--images-file".into(), images.display().to_string(), "--platform".into(), "linux/arm64".into()])
            .await;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(stdout.contains("1 images") && stdout.contains("1 platform manifests left out"), "{stdout}");
    let files = entries(&out);
    assert!(files.contains_key(&blob_name(&img.arm64.layer)) && !files.contains_key(&blob_name(&img.amd64.layer)));

    let bad = run(vec!["--image".into(), "Pause:3.9".into(), "--image".into(), "pause@sha256:00".into()]).await;
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines.iter().all(|l| l.starts_with("klts-mirror: --image: bad image reference")), "{stderr}");

    let bad = run(vec!["--platform".into(), "linux".into(), "--image".into(), "pause:3.9".into()]).await;
    assert_eq!(bad.status.code(), Some(2), "clap refuses a bad --platform");
}
