//! End-to-end air-gap bundles: `klts-mirror bundle create` resolves images
//! from Debian's `docker-registry` (seeded by the harness, 127.0.0.1 only)
//! and skopeo reads the archive it writes as `oci-archive:site.tar:<ref>`,
//! with the digests upstream serves. Missing tools fail the test, never
//! skip it: run `scripts/install-test-deps.sh` first.

mod e2e_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_support::http::Http;
use e2e_support::mirror::mirror_config;
use e2e_support::oci_image::build_multi_arch_layout;
use e2e_support::process::{loopback_only, require_tools};
use e2e_support::upstream::Upstream;
use e2e_support::{sha256_digest, skopeo};

fn klts_mirror(args: &[&str], config: &Path) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_klts-mirror"));
    cmd.args(args).arg("--config").arg(config);
    loopback_only(&mut cmd).output().expect("run klts-mirror")
}

fn assert_success(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copied_digest(out: &Path) -> String {
    sha256_digest(&std::fs::read(out.join("manifest.json")).expect("skopeo wrote manifest.json"))
}

#[test]
fn skopeo_reads_a_bundle_made_from_docker_registry_with_the_upstream_digests() {
    require_tools(&["docker-registry", "skopeo", "tar", "gzip"]);
    let tmp = tempfile::Builder::new().prefix("klts-e2e-bundle-").tempdir().expect("tempdir");
    let path = |name: &str| -> PathBuf { tmp.path().join(name) };
    let http = Http::new();
    let layout = build_multi_arch_layout(tmp.path(), "layout");
    let upstream = Upstream::start_seeded(&path("upstream"), &http, &layout);
    std::fs::create_dir_all(path("mirror")).unwrap();
    let config = path("mirror/config.toml");
    std::fs::write(&config, mirror_config(&path("mirror"), upstream.port, "registry.k8s.io")).unwrap();

    // Every platform of three images, named three ways.
    let archive = path("site.tar");
    let images = ["kube-apiserver:v1.30.0", "docker.io/busybox:1.36", "registry.k8s.io/coredns/coredns:v1.11.1"];
    let mut args = vec!["bundle", "create", "-o", archive.to_str().unwrap()];
    images.iter().for_each(|i| args.extend(["--image", i]));
    assert_success("bundle create", &klts_mirror(&args, &config));
    assert!(path("site.lock").exists());
    let verified = Command::new(env!("CARGO_BIN_EXE_klts-mirror")).args(["bundle", "verify"]).arg(&archive).output();
    assert_success("bundle verify", &verified.unwrap());

    for (name, repo, tag) in [
        ("registry.k8s.io/kube-apiserver:v1.30.0", "kube-apiserver", "v1.30.0"),
        ("docker.io/library/busybox:1.36", "library/busybox", "1.36"),
        ("registry.k8s.io/coredns/coredns:v1.11.1", "coredns/coredns", "v1.11.1"),
    ] {
        let expected = upstream.manifest_digest(&http, repo, tag);
        let out = path(&format!("copy-{}", repo.replace('/', "_")));
        let copied = skopeo::copy_from_archive(tmp.path(), &archive, name, &out, None);
        assert_success(&format!("skopeo copy --all oci-archive:…:{name}"), &copied);
        assert_eq!(copied_digest(&out), expected, "{name}: the index as upstream serves it");
        for p in &layout.platforms {
            let layer = out.join(p.layer_digest.trim_start_matches("sha256:"));
            assert_eq!(sha256_digest(&std::fs::read(&layer).unwrap()), p.layer_digest, "{name}: {}", p.architecture);
        }
    }

    // One platform: skopeo reads that platform; the other is not there.
    let narrow = path("arm64.tar");
    let args = [
        "bundle",
        "create",
        "-o",
        narrow.to_str().unwrap(),
        "--platform",
        "linux/arm64",
        "--image",
        "kube-proxy:v1.30.0",
    ];
    assert_success("bundle create --platform", &klts_mirror(&args, &config));
    let arm64 = layout.platforms.iter().find(|p| p.architecture == "arm64").unwrap();
    let out = path("copy-arm64");
    let copied =
        skopeo::copy_from_archive(tmp.path(), &narrow, "registry.k8s.io/kube-proxy:v1.30.0", &out, Some("arm64"));
    assert_success("skopeo copy --override-arch arm64", &copied);
    assert_eq!(copied_digest(&out), arm64.manifest_digest);
    let out = path("copy-amd64");
    let copied =
        skopeo::copy_from_archive(tmp.path(), &narrow, "registry.k8s.io/kube-proxy:v1.30.0", &out, Some("amd64"));
    assert!(!copied.status.success(), "amd64 was left out of the bundle");
}

/// The whole air-gap flow: bundles made where the upstream is reachable
/// (a base and next month's `--since` increment), the upstream stopped, both
/// imported into a fresh sealed mirror, and every image pulled back with
/// skopeo in the bare, host-prefix and `?ns=` shapes with upstream's digests.
#[test]
fn bundles_carry_images_across_the_gap_into_a_sealed_mirror() {
    use e2e_support::http::CONTAINERD_ACCEPT;
    use e2e_support::mirror::Mirror;

    require_tools(&["docker-registry", "skopeo", "tar", "gzip"]);
    let tmp = tempfile::Builder::new().prefix("klts-e2e-gap-").tempdir().expect("tempdir");
    let path = |name: &str| -> PathBuf { tmp.path().join(name) };
    let http = Http::new();
    let layout = build_multi_arch_layout(tmp.path(), "layout");
    let upstream = Upstream::start_seeded(&path("upstream"), &http, &layout);
    let upstream_port = upstream.port;
    std::fs::create_dir_all(path("connected")).unwrap();
    let config = path("connected/config.toml");
    std::fs::write(&config, mirror_config(&path("connected"), upstream_port, "registry.k8s.io")).unwrap();

    let expected: Vec<(&str, &str, String)> = [("kube-apiserver", "v1.30.0"), ("library/busybox", "1.36")]
        .iter()
        .map(|(repo, tag)| (*repo, *tag, upstream.manifest_digest(&http, repo, tag)))
        .collect();
    let (base, month) = (path("base.tar"), path("month.tar"));
    let create = |out: &Path, extra: &[&str]| {
        let mut args = vec!["bundle", "create", "-o", out.to_str().unwrap()];
        args.extend(extra);
        assert_success("bundle create", &klts_mirror(&args, &config));
    };
    create(&base, &["--image", "kube-apiserver:v1.30.0"]);
    let base_lock = path("base.lock");
    create(
        &month,
        &[
            "--image",
            "kube-apiserver:v1.30.0",
            "--image",
            "docker.io/busybox:1.36",
            "--since",
            base_lock.to_str().unwrap(),
        ],
    );
    // busybox shares every blob with kube-apiserver here (same layout), so
    // next month's bundle carries almost nothing.
    let (base_len, month_len) = (std::fs::metadata(&base).unwrap().len(), std::fs::metadata(&month).unwrap().len());
    assert!(month_len < base_len / 2, "the increment is smaller: {month_len} vs {base_len} bytes");
    drop(upstream); // the gap: nothing upstream from here on

    let site = path("site");
    let mut mirror = Mirror::start_sealed(&site, &http, upstream_port);
    let import = |archive: &Path| {
        Command::new(env!("CARGO_BIN_EXE_klts-mirror"))
            .args(["bundle", "import"])
            .arg(archive)
            .arg("--config")
            .arg(Mirror::config_path(&site))
            .output()
            .expect("run bundle import")
    };
    assert_success("import the base", &import(&base));
    assert_success("import the increment on top", &import(&month));
    std::thread::sleep(std::time::Duration::from_millis(2100)); // pinned tags are rechecked every 2 s

    let host = mirror.host();
    for (repo, tag, digest) in &expected {
        let shapes = match *repo {
            "kube-apiserver" => {
                vec![format!("{host}/kube-apiserver:{tag}"), format!("{host}/registry.k8s.io/kube-apiserver:{tag}")]
            }
            _ => vec![format!("{host}/docker.io/library/busybox:{tag}"), format!("{host}/docker.io/busybox:{tag}")],
        };
        for reference in shapes {
            let out = path(&format!("pull-{}", reference.replace(['/', ':'], "_")));
            let pulled = skopeo::pull_all(tmp.path(), &reference, &out);
            assert_eq!(&pulled.index_digest, digest, "{reference} through the sealed mirror");
        }
        let ns = if *repo == "kube-apiserver" { "registry.k8s.io" } else { "docker.io" };
        let url = format!("{}/v2/{repo}/manifests/{tag}?ns={ns}", mirror.base_url());
        let r = http.get(&url, Some(CONTAINERD_ACCEPT));
        assert_eq!(r.status, 200, "{url}");
        assert_eq!(&sha256_digest(&r.body), digest, "{url}");
    }
    mirror.assert_running();
}
