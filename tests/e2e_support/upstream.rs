//! The upstream registry: Debian's `docker-registry` (CNCF distribution)
//! on a loopback port, seeded with skopeo from the generated OCI layout.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::http::{Http, CONTAINERD_ACCEPT};
use super::oci_image::ImageLayout;
use super::process::{free_port, ChildGuard};
use super::{sha256_digest, skopeo};

/// Repositories and tags pushed upstream: the kubeadm control-plane shapes
/// plus a docker.io `library/` image and a two-component k8s name.
pub const SEEDED: &[(&str, &str)] = &[
    ("kube-apiserver", "v1.30.0"),
    ("kube-proxy", "v1.30.0"),
    ("pause", "3.9"),
    ("library/busybox", "1.36"),
    ("coredns/coredns", "v1.11.1"),
];

/// The upstream's access log is context for a mirror failure, not the main
/// suspect, so print only its last requests.
const UPSTREAM_LOG_TAIL_BYTES: u64 = 6 * 1024;

pub struct Upstream {
    pub port: u16,
    // Kept last so the registry is killed before the caller's tempdir goes.
    _guard: ChildGuard,
}

impl Upstream {
    /// Starts the registry with its storage under `dir` and waits for `/v2/`.
    pub fn start(dir: &Path, http: &Http) -> Self {
        let port = free_port();
        std::fs::create_dir_all(dir).expect("create upstream dir");
        let config = dir.join("registry.yml");
        std::fs::write(&config, registry_config(dir, port)).expect("write registry config");
        let mut guard = ChildGuard::spawn(
            "docker-registry (upstream)",
            Command::new("docker-registry").arg("serve").arg(&config),
            &dir.join("registry.log"),
        )
        .with_log_tail(UPSTREAM_LOG_TAIL_BYTES);
        let url = format!("http://127.0.0.1:{port}/v2/");
        guard.wait_ready(Duration::from_secs(15), || http.try_get(&url).is_some_and(|r| r.status == 200));
        Upstream { port, _guard: guard }
    }

    /// Starts the registry and pushes `layout` to every repo in [`SEEDED`].
    pub fn start_seeded(dir: &Path, http: &Http, layout: &ImageLayout) -> Self {
        let upstream = Self::start(dir, http);
        for (repo, tag) in SEEDED {
            let dest = format!("docker://127.0.0.1:{}/{repo}:{tag}", upstream.port);
            skopeo::push_all(dir, &layout.skopeo_ref(), &dest);
        }
        upstream
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Digest of `repo:tag` as the upstream serves it, cross-checked three
    /// ways (header, body hash, expected) so later comparisons rest on a
    /// verified value.
    pub fn manifest_digest(&self, http: &Http, repo: &str, tag: &str) -> String {
        let url = format!("{}/v2/{repo}/manifests/{tag}", self.base_url());
        let resp = http.get(&url, Some(CONTAINERD_ACCEPT));
        assert_eq!(resp.status, 200, "upstream GET {url} status");
        let body_digest = sha256_digest(&resp.body);
        assert_eq!(
            resp.header("docker-content-digest"),
            body_digest,
            "upstream GET {url}: Docker-Content-Digest does not match body sha256"
        );
        body_digest
    }
}

/// Minimal distribution config: filesystem storage in the tempdir, loopback
/// listener, deletes enabled; no auth, no TLS, no notifications. Level warn
/// keeps errors and the access log (which shows what the mirror requested)
/// but drops the per-request info lines.
fn registry_config(dir: &Path, port: u16) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n  formatter: text\n\
         storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: klts-e2e-not-secret\n",
        root = dir.join("storage").display()
    )
}
