//! End-to-end publishing with the tools the LTS team's CI uses: skopeo pushes
//! a multi-arch image from an OCI layout into klts-mirror with credentials,
//! over plain HTTP and over HTTPS with a CA the test generates, and every
//! client shape pulls it back with identical digests. A published tag
//! shadows the same tag on a real upstream (Debian's `docker-registry` on
//! 127.0.0.1), and deleting it falls back to upstream.

mod e2e_support;

use std::path::{Path, PathBuf};

use e2e_support::http::{Http, Method, CONTAINERD_ACCEPT};
use e2e_support::mirror::{accepts, Mirror};
use e2e_support::oci_image::{build_multi_arch_layout, ImageLayout, MANIFEST_MEDIA_TYPE};
use e2e_support::process::require_tools;
use e2e_support::skopeo::{self, Publisher};
use e2e_support::upstream::Upstream;
use e2e_support::{sha256_digest, toml_str};

const USER: (&str, &str) = ("publisher", "s3cret-lts");
const CREDS: &str = "publisher:s3cret-lts";

struct World {
    http: Http,
    upstream: Upstream,
    layout: ImageLayout,
    tmp: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        require_tools(&["docker-registry", "skopeo", "tar", "gzip"]);
        let tmp = tempfile::Builder::new().prefix("klts-e2e-publish-").tempdir().expect("tempdir");
        let http = Http::new();
        let layout = build_multi_arch_layout(tmp.path(), "layout");
        let upstream = Upstream::start_seeded(&tmp.path().join("upstream"), &http, &layout);
        World { http, upstream, layout, tmp }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `[auth]` with one bcrypt user, as `htpasswd -B` writes it.
    fn auth_table(&self) -> String {
        let file = self.path("htpasswd");
        let hash = bcrypt::hash(USER.1, 4).expect("bcrypt");
        std::fs::write(&file, format!("{}:{hash}\n", USER.0)).expect("write htpasswd");
        format!("[auth]\nhtpasswd = {}\n", toml_str(file.to_str().unwrap()))
    }
}

/// Pushes the layout under `name:tag` and checks what every pull shape then
/// resolves, through `skopeo` reaching the mirror as `p` says.
fn publish_and_pull_back(w: &World, host: &str, p: &Publisher, round: &str) {
    let src = w.layout.skopeo_ref();
    let dest = format!("docker://{host}/kube-apiserver:v1.30.0-lts.1");
    let out = skopeo::publish_all(w.tmp.path(), &src, &dest, p);
    assert!(out.status.success(), "[{round}] push failed: {}", String::from_utf8_lossy(&out.stderr));
    for name in ["kube-apiserver", "registry.k8s.io/kube-apiserver", "k8s.gcr.io/kube-apiserver"] {
        let reference = format!("{host}/{name}:v1.30.0-lts.1");
        let pulled = skopeo::inspect_raw_digest_with(w.tmp.path(), &reference, p);
        assert_eq!(pulled, w.layout.index_digest, "[{round}] {reference} resolves to the published index");
        let dir = w.path(&format!("pull-{round}-{}", name.replace('/', "_")));
        let copied = skopeo::pull_all_with(w.tmp.path(), &reference, &dir, p);
        assert_eq!(copied, w.layout.index_digest, "[{round}] {reference}: skopeo copy --all");
    }
}

#[test]
fn skopeo_publishes_over_http_with_credentials_and_every_shape_pulls_it() {
    let w = World::new();
    let extra = w.auth_table();
    let mut mirror = Mirror::start_with(&w.path("mirror"), w.upstream.port, "registry.k8s.io", &extra, accepts);
    let host = mirror.host();

    // No credentials: refused, nothing published.
    let refused = skopeo::publish_all(
        w.tmp.path(),
        &w.layout.skopeo_ref(),
        &format!("docker://{host}/kube-scheduler:v1.30.0-lts.1"),
        &Publisher { creds: None, cert_dir: None },
    );
    assert!(!refused.status.success(), "an unauthenticated push is refused");
    let stderr = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(stderr.contains("401") || stderr.contains("unauthorized") || stderr.contains("authentication"), "{stderr}");
    let missing = w.http.get(&format!("{}/v2/kube-scheduler/manifests/v1.30.0-lts.1", mirror.base_url()), None);
    assert_eq!(missing.status, 404, "nothing was published");

    publish_and_pull_back(&w, &host, &Publisher { creds: Some(CREDS), cert_dir: None }, "http");
    // containerd's shape: `?ns=` names the upstream namespace.
    let ns = w.http.get(
        &format!("{}/v2/kube-apiserver/manifests/v1.30.0-lts.1?ns=k8s.gcr.io", mirror.base_url()),
        Some(CONTAINERD_ACCEPT),
    );
    assert_eq!(ns.status, 200);
    assert_eq!(sha256_digest(&ns.body), w.layout.index_digest, "?ns= finds the published index");
    mirror.assert_running();
}

#[test]
fn a_published_tag_shadows_upstream_and_deleting_it_falls_back() {
    let w = World::new();
    let extra = w.auth_table();
    let mut mirror = Mirror::start_with(&w.path("mirror"), w.upstream.port, "registry.k8s.io", &extra, accepts);
    let host = mirror.host();
    let p = Publisher { creds: Some(CREDS), cert_dir: None };
    let upstream_index = skopeo::inspect_raw_digest_with(w.tmp.path(), &format!("{host}/pause:3.9"), &p);
    assert_eq!(upstream_index, w.layout.index_digest, "before publishing, pause:3.9 comes from upstream");

    // Publish the blobs, then a single-platform manifest as pause:3.9: a
    // patched build under the upstream tag itself.
    let out =
        skopeo::publish_all(w.tmp.path(), &w.layout.skopeo_ref(), &format!("docker://{host}/pause:3.9-lts.1"), &p);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let child = &w.layout.platforms[0];
    let hex = child.manifest_digest.trim_start_matches("sha256:");
    let body = std::fs::read(w.layout.dir.join("blobs/sha256").join(hex)).expect("child manifest in the layout");
    let url = format!("{}/v2/pause/manifests/3.9", mirror.base_url());
    let put = w.http.send_as(Method::PUT, &url, USER, Some((MANIFEST_MEDIA_TYPE, body)));
    assert_eq!(put.status, 201, "publish pause:3.9: {}", String::from_utf8_lossy(&put.body));
    assert_eq!(put.header("docker-content-digest"), child.manifest_digest);

    for name in ["pause", "registry.k8s.io/pause", "k8s.gcr.io/pause"] {
        let got = skopeo::inspect_raw_digest_with(w.tmp.path(), &format!("{host}/{name}:3.9"), &p);
        assert_eq!(got, child.manifest_digest, "{name}:3.9: the published tag wins over upstream");
    }

    let del = w.http.send_as(Method::DELETE, &url, USER, None);
    assert_eq!(del.status, 202, "delete the published tag: {}", String::from_utf8_lossy(&del.body));
    let back = skopeo::inspect_raw_digest_with(w.tmp.path(), &format!("{host}/pause:3.9"), &p);
    assert_eq!(back, w.layout.index_digest, "after the delete, pause:3.9 falls through to upstream again");
    mirror.assert_running();
}

/// A CA and a server certificate for 127.0.0.1, and the directory skopeo
/// reads the CA from (`ca.crt`).
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "klts-mirror e2e CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::create_dir_all(dir.join("certs.d")).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, format!("{}{}", leaf_cert.pem(), ca_cert.pem())).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("certs.d/ca.crt"), ca_cert.pem()).unwrap();
    (cert, key, dir.join("certs.d"))
}

#[test]
fn skopeo_publishes_over_https_verifying_the_certificate() {
    let w = World::new();
    let (cert, key, cert_dir) = pki(&w.path("pki"));
    let extra = format!(
        "{}\n[tls]\ncert = {}\nkey = {}\n",
        w.auth_table(),
        toml_str(cert.to_str().unwrap()),
        toml_str(key.to_str().unwrap())
    );
    let mut mirror = Mirror::start_with(&w.path("mirror"), w.upstream.port, "registry.k8s.io", &extra, accepts);
    let host = mirror.host();
    publish_and_pull_back(&w, &host, &Publisher { creds: Some(CREDS), cert_dir: Some(&cert_dir) }, "https");
    // Without the CA, skopeo refuses the certificate.
    let untrusted = w.path("untrusted-certs");
    std::fs::create_dir_all(&untrusted).unwrap();
    let refused = skopeo::publish_all(
        w.tmp.path(),
        &w.layout.skopeo_ref(),
        &format!("docker://{host}/kube-proxy:v1.30.0-lts.1"),
        &Publisher { creds: Some(CREDS), cert_dir: Some(&untrusted) },
    );
    assert!(!refused.status.success(), "an unknown CA is not trusted");
    mirror.assert_running();
}
