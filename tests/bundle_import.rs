//! `bundle import` and sealed mode: archives built here with the `tar`
//! crate (an OCI layout with a two-platform image, its gzip and zstd
//! copies, a `docker save` archive) are imported into a sealed mirror's
//! store, then every image is pulled back through the mirror in each
//! request shape with identical digests, while the fake upstream counts
//! zero requests. Broken, cut and incremental bundles import nothing wrong.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assert_error, bytes, config_text, digest_of, Env, Options};
use klts_mirror::airgap::import::{self, Progress, Report};
use klts_mirror::oci::Digest;
use klts_mirror::Config;
use serde_json::json;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn sealed() -> Options {
    Options { offline: true, ..Default::default() }
}

/// A blob: its digest and bytes.
#[derive(Clone)]
struct Blob {
    digest: String,
    data: Vec<u8>,
}

fn blob(data: Vec<u8>) -> Blob {
    Blob { digest: digest_of(&data), data }
}

/// An image as a bundle carries it: its root manifest, every manifest
/// under it, and every blob.
#[derive(Clone)]
struct Image {
    root: Blob,
    root_type: &'static str,
    manifests: Vec<Blob>,
    layers: Vec<Blob>,
    configs: Vec<Blob>,
}

impl Image {
    fn blobs(&self) -> Vec<Blob> {
        let mut all = self.configs.clone();
        all.extend(self.layers.iter().cloned());
        all.extend(self.manifests.iter().cloned());
        all.push(self.root.clone());
        all
    }
}

fn single(layers: &[Blob], seed: u64, arch: &str) -> (Blob, Blob) {
    let config = blob(
        serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux", "seed": seed,
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.digest).collect::<Vec<_>>()}
        }))
        .unwrap(),
    );
    let manifest = blob(
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.data.len()},
            "layers": layers.iter().map(|l| json!({"mediaType": OCI_LAYER, "digest": l.digest, "size": l.data.len()})).collect::<Vec<_>>(),
        }))
        .unwrap(),
    );
    (config, manifest)
}

/// A linux/amd64 + linux/arm64 image under an OCI index, one layer each.
fn two_platform(seed: u64) -> Image {
    let mut img =
        Image { root: blob(vec![]), root_type: OCI_INDEX, manifests: vec![], layers: vec![], configs: vec![] };
    let mut entries = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let layer = blob(bytes(150_000 + i * 1000, seed * 10 + i as u64));
        let (config, manifest) = single(std::slice::from_ref(&layer), seed, arch);
        entries.push(json!({
            "mediaType": OCI_MANIFEST, "digest": manifest.digest, "size": manifest.data.len(),
            "platform": {"os": "linux", "architecture": arch}
        }));
        img.layers.push(layer);
        img.configs.push(config);
        img.manifests.push(manifest);
    }
    img.root =
        blob(serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})).unwrap());
    img
}

/// A single-platform image over `layers`.
fn plain_image(layers: Vec<Blob>, seed: u64) -> Image {
    let (config, manifest) = single(&layers, seed, "amd64");
    Image { root: manifest, root_type: OCI_MANIFEST, manifests: vec![], layers, configs: vec![config] }
}

/// Archive entries, in order.
type Entries = Vec<(String, Vec<u8>)>;

/// An OCI layout: `oci-layout`, every blob, then `index.json` naming
/// `images` (and listing `extra` unnamed), as `bundle create` writes it.
fn layout(images: &[(&str, &Image)], extra: &[(&str, &Blob)]) -> Entries {
    let mut entries = vec![("oci-layout".to_string(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())];
    let mut seen = std::collections::HashSet::new();
    let mut all: Vec<Blob> = images.iter().flat_map(|(_, i)| i.blobs()).collect();
    all.extend(extra.iter().map(|(_, b)| (*b).clone()));
    for b in all {
        if seen.insert(b.digest.clone()) {
            entries.push((format!("blobs/sha256/{}", b.digest.trim_start_matches("sha256:")), b.data));
        }
    }
    let mut listed: Vec<_> = images
        .iter()
        .map(|(name, i)| {
            json!({"mediaType": i.root_type, "digest": i.root.digest, "size": i.root.data.len(),
                   "annotations": {"org.opencontainers.image.ref.name": name}})
        })
        .collect();
    listed.extend(extra.iter().map(|(t, b)| json!({"mediaType": t, "digest": b.digest, "size": b.data.len()})));
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed});
    entries.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    entries
}

fn tar_bytes(entries: &Entries) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut e, data).unwrap();
    e.finish().unwrap()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn config_of(env: &Env) -> Config {
    Config::from_toml(&config_text(&env.upstream.url(), &env.data, &sealed())).unwrap()
}

/// Imports through the running mirror's own registry (what it serves sees
/// the tags at once).
async fn import_into(env: &Env, archive: &Path) -> Report {
    let routing = klts_mirror::proxy::routing::RoutingTable::new(&config_of(env));
    import::import(env.mirror.proxy().registry(), &routing, archive, &Progress::log()).await.unwrap()
}

async fn body_of(env: &Env, path: &str) -> (u16, String, Vec<u8>) {
    let r = env.get(path).await;
    let status = r.status().as_u16();
    let digest = r.headers().get("docker-content-digest").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, digest, r.bytes().await.unwrap().to_vec())
}

/// Pulls `img` as `repo:tag` in every request shape, then by digest, and
/// every blob: all byte-identical to the bundle.
async fn assert_pulls(env: &Env, repo: &str, tag: &str, img: &Image) {
    for path in [
        format!("/v2/{repo}/manifests/{tag}"),
        format!("/v2/registry.k8s.io/{repo}/manifests/{tag}"),
        format!("/v2/{repo}/manifests/{tag}?ns=registry.k8s.io"),
        format!("/v2/{repo}/manifests/{tag}?ns=k8s.gcr.io"),
        format!("/v2/{repo}/manifests/{}", img.root.digest),
    ] {
        let (status, digest, body) = body_of(env, &path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(digest, img.root.digest, "{path}");
        assert!(body == img.root.data, "{path}: byte-identical");
    }
    for m in &img.manifests {
        let (status, digest, body) =
            body_of(env, &format!("/v2/{repo}/manifests/{}?ns=registry.k8s.io", m.digest)).await;
        assert_eq!((status, digest.as_str()), (200, m.digest.as_str()));
        assert!(body == m.data);
    }
    for b in img.configs.iter().chain(&img.layers) {
        let (status, _, body) = body_of(env, &format!("/v2/registry.k8s.io/{repo}/blobs/{}", b.digest)).await;
        assert_eq!(status, 200, "blob {}", b.digest);
        assert_eq!(digest_of(&body), b.digest);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_layouts_plain_gzip_and_zstd_import_and_pull_back_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let plain = tar_bytes(&layout(&[("registry.k8s.io/kube-apiserver:v1.30.0", &two_platform(1))], &[]));
    let gz = gzip(&tar_bytes(&layout(&[("k8s.gcr.io/kube-proxy:v1.30.0", &two_platform(2))], &[])));
    let zst = zstd::encode_all(&tar_bytes(&layout(&[("etcd:3.5.12-0", &two_platform(3))], &[]))[..], 3).unwrap();
    // Compression is told by content: hauler's haul.tar.zst, or a misnamed file.
    let cases = [
        ("site.tar", plain, "kube-apiserver", "v1.30.0", 1, "tar"),
        ("site.tar.gz", gz, "kube-proxy", "v1.30.0", 2, "tar+gzip"),
        ("misnamed.tar", zst, "etcd", "3.5.12-0", 3, "tar+zstd"),
    ];
    let env = Env::with(sealed()).await;
    for (file, data, repo, tag, seed, compression) in cases {
        let path = write(dir.path(), file, &data);
        let report = import_into(&env, &path).await;
        assert!(report.is_success(), "{file}: {report}");
        let text = report.to_string();
        assert!(text.contains(compression) && text.contains("OCI image layout"), "{text}");
        assert_eq!((report.images.len(), report.blobs_imported, report.blobs_skipped), (1, 7, 0), "{report}");
        assert_pulls(&env, repo, tag, &two_platform(seed)).await;
        // Again: everything is skipped, nothing changes.
        let again = import_into(&env, &path).await;
        assert!(again.is_success(), "{again}");
        assert_eq!((again.blobs_imported, again.blobs_skipped), (0, 7));
    }
    // Pinned content is held: a blob DELETE would be refused.
    let layer: Digest = two_platform(1).layers[0].digest.parse().unwrap();
    assert!(env.mirror.proxy().store().is_held(&layer).await.unwrap());
    assert_eq!(env.upstream.total(), 0, "sealed: the upstream never heard of us");
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_mode_names_what_is_missing_and_lists_what_is_held() {
    let env = Env::with(sealed()).await;
    let r = env.get("/v2/kube-apiserver/manifests/v1.30.0").await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
    assert_eq!(
        body["errors"][0]["message"],
        "registry.k8s.io/kube-apiserver:v1.30.0 is not in this site's bundles (sealed mode)"
    );
    let r = env.get(&format!("/v2/docker.io/library/busybox/manifests/{}", digest_of(b"x"))).await;
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["errors"][0]["message"].as_str().unwrap().starts_with("docker.io/library/busybox@sha256:"), "{body}");
    assert_error(env.get(&format!("/v2/pause/blobs/{}", digest_of(b"y"))).await, 404, "BLOB_UNKNOWN").await;
    let catalog: serde_json::Value = env.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!([]));

    let dir = tempfile::tempdir().unwrap();
    let (api, pause) = (two_platform(4), plain_image(vec![blob(bytes(20_000, 41))], 41));
    let entries =
        layout(&[("registry.k8s.io/kube-apiserver:v1.30.0", &api), ("registry.k8s.io/pause:3.9", &pause)], &[]);
    let report = import_into(&env, &write(dir.path(), "b.tar", &tar_bytes(&entries))).await;
    assert!(report.is_success(), "{report}");

    let catalog: serde_json::Value = env.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], json!(["registry.k8s.io/kube-apiserver", "registry.k8s.io/pause"]));
    let r = env.get("/v2/_catalog?n=1").await;
    assert_eq!(r.headers()["link"], "</v2/_catalog?n=1&last=registry.k8s.io%2Fkube-apiserver>; rel=\"next\"");
    let page: serde_json::Value = r.json().await.unwrap();
    assert_eq!(page["repositories"], json!(["registry.k8s.io/kube-apiserver"]));
    let page: serde_json::Value =
        env.get("/v2/_catalog?n=1&last=registry.k8s.io%2Fkube-apiserver").await.json().await.unwrap();
    assert_eq!(page["repositories"], json!(["registry.k8s.io/pause"]));
    let tags: serde_json::Value = env.get("/v2/kube-apiserver/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], json!(["v1.30.0"]));
    let tags: serde_json::Value = env.get("/v2/registry.k8s.io/pause/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], json!(["3.9"]));
    assert_pulls(&env, "pause", "3.9", &pause).await;
    assert_error(env.get("/v2/kube-apiserver/manifests/v1.29.0").await, 404, "MANIFEST_UNKNOWN").await;
    assert_eq!(env.upstream.total(), 0, "sealed: zero upstream requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_keeps_its_image_out_and_the_rest_comes_in() {
    let env = Env::with(sealed()).await;
    let dir = tempfile::tempdir().unwrap();
    let (bad, good) = (two_platform(5), plain_image(vec![blob(bytes(30_000, 51))], 51));
    let mut entries =
        layout(&[("registry.k8s.io/kube-scheduler:v1.30.0", &bad), ("registry.k8s.io/pause:3.10", &good)], &[]);
    let victim = format!("blobs/sha256/{}", bad.layers[1].digest.trim_start_matches("sha256:"));
    let e = entries.iter_mut().find(|(n, _)| *n == victim).unwrap();
    e.1[1234] ^= 0x40;
    let report = import_into(&env, &write(dir.path(), "flipped.tar", &tar_bytes(&entries))).await;
    assert!(!report.is_success());
    let problems = report.problems.join("\n");
    assert!(problems.contains(&format!("blob {} ({victim}) is refused", bad.layers[1].digest)), "{problems}");
    assert!(problems.contains("registry.k8s.io/kube-scheduler:v1.30.0: not imported (no tag written)"), "{problems}");
    assert!(problems.contains("refused: it failed verification"), "{problems}");
    assert_eq!(report.images.len(), 1, "{report}");
    assert_error(env.get("/v2/kube-scheduler/manifests/v1.30.0").await, 404, "MANIFEST_UNKNOWN").await;
    for m in [&bad.root, &bad.manifests[0], &bad.manifests[1]] {
        assert_eq!(
            env.get(&format!("/v2/kube-scheduler/manifests/{}", m.digest)).await.status(),
            404,
            "nothing pinned"
        );
    }
    assert_error(env.get(&format!("/v2/kube-scheduler/blobs/{}", bad.layers[1].digest)).await, 404, "BLOB_UNKNOWN")
        .await;
    assert_pulls(&env, "pause", "3.10", &good).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_import_is_finished_by_running_it_again() {
    let env = Env::with(sealed()).await;
    let dir = tempfile::tempdir().unwrap();
    let img = two_platform(6);
    let entries = layout(&[("registry.k8s.io/kube-controller-manager:v1.30.0", &img)], &[]);
    let full = tar_bytes(&entries);
    // Cut inside the second layer (entries: oci-layout, 2 configs, 2 layers, …).
    let before: usize = entries[..4].iter().map(|(_, d)| 512 + d.len().div_ceil(512) * 512).sum();
    let cut = write(dir.path(), "cut.tar", &full[..before + 512 + 70_000]);
    let report = import_into(&env, &cut).await;
    assert!(report.interrupted && !report.is_success(), "{report}");
    assert!(report.problems[0].contains("stopped") && report.problems[0].contains("ends inside"), "{report}");
    assert_eq!(report.blobs_imported, 3, "oci-layout aside, three whole blobs came before the cut: {report}");
    assert!(report.images.is_empty());
    assert_error(env.get("/v2/kube-controller-manager/manifests/v1.30.0").await, 404, "MANIFEST_UNKNOWN").await;

    let report = import_into(&env, &write(dir.path(), "full.tar", &full)).await;
    assert!(report.is_success(), "{report}");
    assert_eq!((report.blobs_skipped, report.blobs_imported), (3, 4), "{report}");
    assert!(report.to_string().contains("blobs skipped (already stored): 3"), "{report}");
    assert_pulls(&env, "kube-controller-manager", "v1.30.0", &img).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_bundle_without_its_base_names_the_missing_blobs() {
    let env = Env::with(sealed()).await;
    let dir = tempfile::tempdir().unwrap();
    let base_layer = blob(bytes(60_000, 71));
    let base = plain_image(vec![base_layer.clone()], 71);
    let next = plain_image(vec![base_layer.clone(), blob(bytes(10_000, 72))], 72);
    // The incremental bundle carries only what is new in `next`.
    let mut incremental = layout(&[("registry.k8s.io/coredns/coredns:v1.11.3", &next)], &[]);
    let hex = base_layer.digest.trim_start_matches("sha256:").to_string();
    incremental.retain(|(n, _)| !n.ends_with(&hex));
    let inc = write(dir.path(), "inc.tar", &tar_bytes(&incremental));
    let report = import_into(&env, &inc).await;
    let problems = report.problems.join("\n");
    assert!(problems.contains("registry.k8s.io/coredns/coredns:v1.11.3: not imported"), "{problems}");
    assert!(problems.contains("incremental bundle") && problems.contains(&base_layer.digest), "{problems}");
    assert_error(env.get("/v2/coredns/coredns/manifests/v1.11.3").await, 404, "MANIFEST_UNKNOWN").await;

    let b = import_into(
        &env,
        &write(dir.path(), "base.tar", &tar_bytes(&layout(&[("registry.k8s.io/coredns/coredns:v1.11.1", &base)], &[]))),
    )
    .await;
    assert!(b.is_success(), "{b}");
    let report = import_into(&env, &inc).await;
    assert!(report.is_success(), "{report}");
    assert_pulls(&env, "coredns/coredns", "v1.11.3", &next).await;
    assert_pulls(&env, "coredns/coredns", "v1.11.1", &base).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unnamed_signature_is_pinned_beside_its_subject() {
    let env = Env::with(sealed()).await;
    let dir = tempfile::tempdir().unwrap();
    let img = two_platform(8);
    let empty = blob(b"{}".to_vec());
    let sig = blob(
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.digest, "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_INDEX, "digest": img.root.digest, "size": img.root.data.len()}
        }))
        .unwrap(),
    );
    let entries =
        layout(&[("registry.k8s.io/kube-apiserver:v1.30.1", &img)], &[(OCI_MANIFEST, &empty), (OCI_MANIFEST, &sig)]);
    let report = import_into(&env, &write(dir.path(), "sig.tar", &tar_bytes(&entries))).await;
    // The empty config listed as an entry is no manifest and names no
    // subject: noted, and not pinned.
    assert!(report.is_success(), "{report}");
    assert!(report.notes.iter().any(|n| n.contains(&empty.digest)), "{report}");
    assert!(report.images.iter().any(|i| i == &format!("registry.k8s.io/kube-apiserver@{}", sig.digest)), "{report}");
    let listed: serde_json::Value =
        env.get(&format!("/v2/kube-apiserver/referrers/{}", img.root.digest)).await.json().await.unwrap();
    assert_eq!(listed["manifests"][0]["digest"], sig.digest.as_str(), "{listed}");
    assert_eq!(listed["manifests"][0]["artifactType"], "application/vnd.example.sig");
    let (status, digest, _) = body_of(&env, &format!("/v2/kube-apiserver/manifests/{}", sig.digest)).await;
    assert_eq!((status, digest), (200, sig.digest.clone()));
}

/// A `docker save` archive as docker before 25 wrote it: layers under
/// image ids (one a symlink to an identical one), the config named by its
/// digest, `manifest.json` and `repositories` last.
fn docker_save(layers: &[Vec<u8>], tags: &[&str], corrupt_first: bool) -> Vec<u8> {
    let mut diff_ids: Vec<String> = layers.iter().map(|l| digest_of(l)).collect();
    diff_ids.push(diff_ids[0].clone());
    let config = blob(
        serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}}))
        .unwrap(),
    );
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let id = hex::encode([i as u8 + 1; 32]);
        let mut data = l.clone();
        if corrupt_first && i == 0 {
            data[10] ^= 1;
        }
        add(&format!("{id}/VERSION"), b"1.0");
        add(&format!("{id}/json"), b"{}");
        add(&format!("{id}/layer.tar"), &data);
        paths.push(format!("{id}/layer.tar"));
    }
    // The last layer repeats the first: docker links it.
    let dup = hex::encode([0xee; 32]);
    paths.push(format!("{dup}/layer.tar"));
    add(&format!("{}.json", config.digest.trim_start_matches("sha256:")), &config.data);
    let manifest = json!([{"Config": format!("{}.json", config.digest.trim_start_matches("sha256:")), "RepoTags": tags, "Layers": paths}]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    add("repositories", b"{}");
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_cksum();
    b.append_link(&mut h, format!("{dup}/layer.tar"), format!("../{}/layer.tar", hex::encode([1u8; 32]))).unwrap();
    b.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_save_archives_get_a_built_manifest() {
    let env = Env::with(sealed()).await;
    let dir = tempfile::tempdir().unwrap();
    let layers = vec![bytes(40_000, 91), bytes(20_000, 92)];
    let mut with_dup = layers.clone();
    with_dup.push(layers[0].clone());
    let archive = docker_save(&layers, &["registry.k8s.io/etcd:3.5.15-0", "etcd:latest"], false);
    let report = import_into(&env, &write(dir.path(), "save.tar", &archive)).await;
    assert!(report.is_success(), "{report}");
    assert!(report.to_string().contains("docker save") && report.to_string().contains("digest differs"), "{report}");
    assert_eq!(report.images.len(), 2, "{report}");
    let (status, digest, body) = body_of(&env, "/v2/etcd/manifests/3.5.15-0").await;
    assert_eq!(status, 200);
    assert_eq!(digest, digest_of(&body));
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m["mediaType"], OCI_MANIFEST);
    let got: Vec<&str> = m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
    let want: Vec<String> = with_dup.iter().map(|l| digest_of(l)).collect();
    assert_eq!(got, want);
    for l in &with_dup {
        let (status, _, b) = body_of(&env, &format!("/v2/etcd/blobs/{}", digest_of(l))).await;
        assert_eq!((status, &b), (200, l));
    }
    let (_, latest, _) = body_of(&env, "/v2/etcd/manifests/latest").await;
    assert_eq!(latest, digest, "both RepoTags name the same built manifest");

    // A layer whose bytes do not match the config's diff_ids is refused.
    let bad = docker_save(&[bytes(5_000, 93)], &["registry.k8s.io/pause:3.8"], true);
    let report = import_into(&env, &write(dir.path(), "bad.tar", &bad)).await;
    assert!(report.problems.iter().any(|p| p.contains("diff_ids") || p.contains("config lists")), "{report}");
    assert_eq!(env.get("/v2/pause/manifests/3.8").await.status(), 404);
    assert_eq!(env.upstream.total(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_imports_beside_a_running_server_which_serves_it_within_two_seconds() {
    let env = Env::with(sealed()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "config.toml", config_text(&env.upstream.url(), &env.data, &sealed()).as_bytes());
    let img = two_platform(10);
    let archive = write(
        dir.path(),
        "site.tar.zst",
        &zstd::encode_all(&tar_bytes(&layout(&[("registry.k8s.io/pause:3.11", &img)], &[]))[..], 3).unwrap(),
    );
    // The server has just looked for the tag: its memory says "no such tag".
    assert_eq!(env.get("/v2/pause/manifests/3.11").await.status(), 404);
    let run = |archive: PathBuf| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_klts-mirror"))
                .args(["bundle", "import"])
                .arg(&archive)
                .arg("--config")
                .arg(&config)
                .output()
                .unwrap()
        })
    };
    let out = run(archive.clone()).await.unwrap();
    let done = Instant::now();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("images pinned: 1") && stdout.contains("blobs imported: 7"), "{stdout}");
    loop {
        if env.get("/v2/pause/manifests/3.11").await.status() == 200 {
            break;
        }
        assert!(done.elapsed() < Duration::from_millis(2500), "the pinned tag is served within 2 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_pulls(&env, "pause", "3.11", &img).await;

    // Problems exit non-zero with the list; a missing file says so.
    let broken = write(dir.path(), "broken.tar", b"this is no tar archive at all, not even close to one");
    let out = run(broken).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("problems: 1"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = run(dir.path().join("absent.tar")).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.tar"));
    assert_eq!(env.upstream.total(), 0);
}
