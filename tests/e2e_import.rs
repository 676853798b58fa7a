//! End-to-end air-gap flow with the real tools: skopeo writes a multi-arch
//! OCI layout into an `oci-archive:` tar (as a site would carry it in),
//! `klts-mirror bundle import` loads it beside a sealed mirror
//! (`serve --offline`, its upstream a closed port), and skopeo pulls it
//! back through the mirror in every name shape with the layout's digests.

mod e2e_support;

use std::process::Command;
use std::time::{Duration, Instant};

use e2e_support::http::{Http, CONTAINERD_ACCEPT};
use e2e_support::mirror::Mirror;
use e2e_support::oci_image::build_multi_arch_layout;
use e2e_support::process::{free_port, require_tools};
use e2e_support::skopeo;

#[test]
fn skopeo_oci_archive_imported_and_pulled_back_sealed() {
    require_tools(&["skopeo", "tar", "gzip"]);
    let tmp = tempfile::Builder::new().prefix("klts-e2e-bundle-").tempdir().expect("tempdir");
    let http = Http::new();
    let layout = build_multi_arch_layout(tmp.path(), "layout");
    let archive = tmp.path().join("site.tar");
    skopeo::push_all(
        tmp.path(),
        &layout.skopeo_ref(),
        &format!("oci-archive:{}:registry.k8s.io/kube-apiserver:v1.30.0-e2e", archive.display()),
    );

    let dir = tmp.path().join("mirror");
    let mut mirror = Mirror::start_sealed(&dir, &http, free_port());
    let manifest_url = format!("{}/v2/kube-apiserver/manifests/v1.30.0-e2e", mirror.base_url());
    assert_eq!(http.get(&manifest_url, Some(CONTAINERD_ACCEPT)).status, 404, "not imported yet");

    let out = Command::new(env!("CARGO_BIN_EXE_klts-mirror"))
        .args(["bundle", "import"])
        .arg(&archive)
        .arg("--config")
        .arg(Mirror::config_path(&dir))
        .output()
        .expect("run bundle import");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("images pinned: 1") && stdout.contains("blobs imported: 7"), "{stdout}");

    let imported = Instant::now();
    while http.get(&manifest_url, Some(CONTAINERD_ACCEPT)).status != 200 {
        assert!(imported.elapsed() < Duration::from_millis(2500), "served within 2 s of the import");
        std::thread::sleep(Duration::from_millis(100));
    }
    let host = mirror.host();
    for name in [
        format!("{host}/kube-apiserver:v1.30.0-e2e"),
        format!("{host}/registry.k8s.io/kube-apiserver:v1.30.0-e2e"),
        format!("{host}/k8s.gcr.io/kube-apiserver:v1.30.0-e2e"),
    ] {
        assert_eq!(skopeo::inspect_raw_digest(tmp.path(), &name), layout.index_digest, "{name}");
    }
    let pulled = skopeo::pull_all(tmp.path(), &format!("{host}/kube-apiserver:v1.30.0-e2e"), &tmp.path().join("out"));
    assert_eq!(pulled.index_digest, layout.index_digest);
    for d in layout.all_digests().iter().skip(1) {
        // skopeo's dir: names blobs by hex, child manifests `<hex>.manifest.json`.
        let hex = d.trim_start_matches("sha256:");
        let out = tmp.path().join("out");
        assert!(out.join(hex).exists() || out.join(format!("{hex}.manifest.json")).exists(), "{d} pulled");
    }
    let missing = http.get(&format!("{}/v2/pause/manifests/3.9", mirror.base_url()), Some(CONTAINERD_ACCEPT));
    assert_eq!(missing.status, 404);
    assert!(String::from_utf8_lossy(&missing.body).contains("not in this site's bundles"));
    mirror.assert_running();
}
