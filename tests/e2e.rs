//! End-to-end test of klts-mirror with the real clients people point at it.
//!
//! Each test builds a deterministic two-platform OCI image on disk, serves it
//! from Debian's `docker-registry` as the "upstream" on 127.0.0.1, and pulls
//! it back with skopeo and containerd. The first test checks the harness
//! against the upstream alone, so a tool or sandbox problem is reported as
//! such and not blamed on the mirror; the others pull through the mirror in
//! every request shape kubeadm, dockerd and containerd produce and require
//! the exact upstream digests. Missing tools make the tests fail, never skip:
//! run `scripts/install-test-deps.sh` first.

mod e2e_support;

use std::path::{Path, PathBuf};

use e2e_support::containerd::Containerd;
use e2e_support::http::{Http, CONTAINERD_ACCEPT};
use e2e_support::mirror::Mirror;
use e2e_support::oci_image::{build_multi_arch_layout, ImageLayout};
use e2e_support::process::require_tools;
use e2e_support::upstream::{Upstream, SEEDED};
use e2e_support::{sha256_digest, skopeo};

const REQUIRED_TOOLS: &[&str] = &["docker-registry", "skopeo", "containerd", "ctr", "tar", "gzip"];

/// Set to keep the tempdir (layout, registry storage, logs) after the run.
const KEEP_TMP_ENV: &str = "KLTS_E2E_KEEP_TMP";

/// Shared fixture: generated image plus a seeded upstream registry.
/// Field order is drop order: the registry is killed before the tempdir
/// holding its storage and logs is removed.
struct World {
    http: Http,
    upstream: Upstream,
    layout: ImageLayout,
    tmp: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        require_tools(REQUIRED_TOOLS);
        let tmp = tempfile::Builder::new()
            .prefix("klts-e2e-")
            .disable_cleanup(std::env::var_os(KEEP_TMP_ENV).is_some())
            .tempdir()
            .expect("create tempdir");
        eprintln!("e2e work dir: {} (set {KEEP_TMP_ENV}=1 to keep it)", tmp.path().display());
        let http = Http::new();
        let layout = build_multi_arch_layout(tmp.path(), "layout");
        let upstream = Upstream::start_seeded(&tmp.path().join("upstream"), &http, &layout);
        World { http, upstream, layout, tmp }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Upstream digest of `repo:tag`, which must be the generated index
    /// itself (skopeo pushed it with `--preserve-digests`).
    fn upstream_digest(&self, repo: &str, tag: &str) -> String {
        let digest = self.upstream.manifest_digest(&self.http, repo, tag);
        assert_eq!(digest, self.layout.index_digest, "upstream {repo}:{tag} does not serve the generated index");
        digest
    }
}

/// One way a client names an image when talking to the mirror, and where
/// that name must land upstream.
struct Shape {
    what: &'static str,
    /// Repository path as sent to the mirror (after `/v2/`).
    name: &'static str,
    tag: &'static str,
    /// Repository in the upstream registry that must be served.
    upstream_repo: &'static str,
}

/// Request shapes pulled through a mirror whose default upstream is
/// registry.k8s.io.
const K8S_DEFAULT_SHAPES: &[Shape] = &[
    Shape {
        what: "bare name (kubeadm imageRepository = mirror)",
        name: "kube-apiserver",
        tag: "v1.30.0",
        upstream_repo: "kube-apiserver",
    },
    Shape { what: "bare name (kubeadm imageRepository = mirror)", name: "pause", tag: "3.9", upstream_repo: "pause" },
    Shape {
        what: "bare two-component name",
        name: "coredns/coredns",
        tag: "v1.11.1",
        upstream_repo: "coredns/coredns",
    },
    Shape {
        what: "host-prefixed registry.k8s.io",
        name: "registry.k8s.io/kube-proxy",
        tag: "v1.30.0",
        upstream_repo: "kube-proxy",
    },
    Shape {
        what: "host-prefixed registry.k8s.io, two components",
        name: "registry.k8s.io/coredns/coredns",
        tag: "v1.11.1",
        upstream_repo: "coredns/coredns",
    },
    Shape { what: "host-prefixed alias k8s.gcr.io", name: "k8s.gcr.io/pause", tag: "3.9", upstream_repo: "pause" },
    Shape {
        what: "host-prefixed docker.io with library/",
        name: "docker.io/library/busybox",
        tag: "1.36",
        upstream_repo: "library/busybox",
    },
    Shape {
        what: "host-prefixed docker.io single component (gets library/)",
        name: "docker.io/busybox",
        tag: "1.36",
        upstream_repo: "library/busybox",
    },
    Shape {
        what: "dockerd registry-mirrors shape (library/ under default upstream)",
        name: "library/busybox",
        tag: "1.36",
        upstream_repo: "library/busybox",
    },
];

/// Pulls `shape` through the mirror with `skopeo copy --all` into a fresh
/// directory and checks both the copied index and `skopeo inspect --raw`
/// against the upstream digest. Returns the digest seen through the mirror.
fn pull_through_mirror(world: &World, mirror: &mut Mirror, shape: &Shape, round: &str) -> String {
    let expected = world.upstream_digest(shape.upstream_repo, shape.tag);
    let reference = format!("{}/{}:{}", mirror.host(), shape.name, shape.tag);
    let out = world.path(&format!("pull-{round}-{}-{}", shape.name.replace('/', "_"), shape.tag));
    let pulled = skopeo::pull_all(world.tmp.path(), &reference, &out);
    mirror.assert_running();
    assert_eq!(
        pulled.index_digest, expected,
        "[{round}] {}: index pulled via mirror as {reference} differs from upstream \
         {}:{}\nskopeo stderr:\n{}",
        shape.what, shape.upstream_repo, shape.tag, pulled.stderr
    );
    assert_child_manifests_copied(&world.layout, &pulled.dir, &reference);
    let inspected = skopeo::inspect_raw_digest(world.tmp.path(), &reference);
    assert_eq!(
        inspected, expected,
        "[{round}] {}: `skopeo inspect --raw docker://{reference}` digest differs from upstream",
        shape.what
    );
    inspected
}

/// With `--all`, skopeo's `dir:` output stores each platform manifest as
/// `<hex>.manifest.json`; their presence proves both children were fetched.
fn assert_child_manifests_copied(layout: &ImageLayout, dir: &Path, reference: &str) {
    for platform in &layout.platforms {
        let hex = platform.manifest_digest.trim_start_matches("sha256:");
        let file = dir.join(format!("{hex}.manifest.json"));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| {
            panic!(
                "{reference}: {}/{} manifest {} not copied ({file:?}: {e})",
                platform.os, platform.architecture, platform.manifest_digest
            )
        });
        assert_eq!(
            sha256_digest(&bytes),
            platform.manifest_digest,
            "{reference}: {}/{} manifest bytes changed in transit",
            platform.os,
            platform.architecture
        );
    }
}

/// Fetches `reference` with real containerd through `hosts.toml` pointing at
/// `endpoint`, then checks from the `--http-dump` trace that every request
/// carried `?ns=<registry>` (and, through the mirror, got an `X-Cache`
/// header back, proving the mirror answered), that every blob of the image
/// is in the content store, and that the image target is the upstream index.
fn containerd_fetch(world: &World, containerd: &Containerd, fetch: &CtrFetch) {
    let hosts_dir = containerd.write_hosts_toml(fetch.registry, fetch.endpoint);
    let reference = format!("{}/{}", fetch.registry, fetch.repo_tag);
    let out = containerd.fetch_all_platforms(&hosts_dir, &reference);
    let trace = format!("{}\n{}", out.stdout_str(), out.stderr);
    let trace_file = world.path(&format!("ctr-fetch-{}.trace", reference.replace('/', "_")));
    std::fs::write(&trace_file, &trace).expect("write ctr trace");

    assert_trace_namespaced(&trace, fetch, &reference, &trace_file);
    if fetch.expect_x_cache {
        assert!(
            trace.contains("X-Cache:"),
            "containerd fetch of {reference}: no response carried X-Cache, so it did \
             not come from the mirror at {}; trace in {trace_file:?}",
            fetch.endpoint
        );
    }
    let stored = containerd.content_digests();
    for digest in world.layout.all_digests() {
        assert!(
            stored.contains(&digest),
            "containerd content store lacks {digest} after fetching {reference} \
             via {}; stored: {stored:?}; trace in {trace_file:?}",
            fetch.endpoint
        );
    }
    assert_eq!(
        containerd.image_target_digest(&reference),
        world.layout.index_digest,
        "containerd resolved {reference} via {} to a different index digest",
        fetch.endpoint
    );
}

/// One containerd fetch: which registry host the image is named under and
/// which endpoint its `hosts.toml` sends requests to.
struct CtrFetch<'a> {
    registry: &'a str,
    repo_tag: &'a str,
    endpoint: &'a str,
    expect_x_cache: bool,
}

/// Request lines (`METHOD /path?query`) from ctr's `--http-dump` output,
/// where each dumped request starts with `msg="<METHOD> <uri> HTTP/1.1"`.
fn traced_requests(trace: &str) -> Vec<String> {
    trace
        .lines()
        .filter_map(|line| line.split_once("msg=\"").map(|(_, rest)| rest))
        .filter(|msg| msg.starts_with("HEAD /") || msg.starts_with("GET /"))
        .map(|msg| msg.trim_end_matches('"').trim_end_matches(" HTTP/1.1").to_string())
        .collect()
}

/// containerd must resolve the tag with a HEAD and tag every request with
/// `ns=<registry>`; that is the shape the mirror has to route on.
fn assert_trace_namespaced(trace: &str, fetch: &CtrFetch, reference: &str, file: &Path) {
    let requests = traced_requests(trace);
    let ns = format!("ns={}", fetch.registry);
    let (repo, tag) = fetch.repo_tag.rsplit_once(':').expect("repo:tag");
    let resolve = format!("HEAD /v2/{repo}/manifests/{tag}?{ns}");
    assert!(
        requests.contains(&resolve),
        "containerd fetch of {reference}: expected request `{resolve}` to {}, \
         saw {requests:?}; trace in {file:?}",
        fetch.endpoint
    );
    for request in &requests {
        assert!(request.contains(&ns), "containerd fetch of {reference}: request `{request}` lacks `{ns}`");
    }
}

/// Harness sanity check without the mirror: the generated layout round-trips
/// through docker-registry with unchanged digests, and skopeo and containerd
/// can pull it directly. If this fails, the problem is the environment.
#[test]
fn harness_tools_pull_directly_from_upstream() {
    let world = World::new();
    for (repo, tag) in SEEDED {
        world.upstream_digest(repo, tag);
    }

    let reference = format!("127.0.0.1:{}/kube-apiserver:v1.30.0", world.upstream.port);
    let pulled = skopeo::pull_all(world.tmp.path(), &reference, &world.path("direct-pull"));
    assert_eq!(pulled.index_digest, world.layout.index_digest);
    assert_child_manifests_copied(&world.layout, &pulled.dir, &reference);

    let containerd = Containerd::start(&world.path("containerd"));
    containerd_fetch(
        &world,
        &containerd,
        &CtrFetch {
            registry: "registry.k8s.io",
            repo_tag: "kube-apiserver:v1.30.0",
            endpoint: &world.upstream.base_url(),
            expect_x_cache: false,
        },
    );
}

/// The main scenario with `default_upstream = "registry.k8s.io"`: containerd
/// with `?ns=` on a cold cache, every skopeo request shape, then a warm
/// second round that must give the same digests, and blob cache hits.
#[test]
fn mirror_serves_every_request_shape() {
    let world = World::new();
    let mut mirror = Mirror::start(&world.path("mirror"), &world.http, world.upstream.port, "registry.k8s.io");

    // containerd goes first, against an empty cache, so the `?ns=` requests
    // drive the cold fills; the other test covers skopeo-driven cold fills.
    let containerd = Containerd::start(&world.path("containerd"));
    for (registry, repo_tag) in [
        ("registry.k8s.io", "kube-apiserver:v1.30.0"),
        ("k8s.gcr.io", "pause:3.9"),
        ("docker.io", "library/busybox:1.36"),
    ] {
        containerd_fetch(
            &world,
            &containerd,
            &CtrFetch { registry, repo_tag, endpoint: &mirror.base_url(), expect_x_cache: true },
        );
        mirror.assert_running();
    }
    assert_containerd_resolve_contract(&world, &mirror, "registry.k8s.io", "kube-apiserver");
    assert_containerd_resolve_contract(&world, &mirror, "k8s.gcr.io", "pause");

    let first: Vec<String> =
        K8S_DEFAULT_SHAPES.iter().map(|shape| pull_through_mirror(&world, &mut mirror, shape, "first")).collect();

    let warm: Vec<String> =
        K8S_DEFAULT_SHAPES.iter().map(|shape| pull_through_mirror(&world, &mut mirror, shape, "warm")).collect();
    assert_eq!(first, warm, "warm pulls returned different digests than first pulls");

    assert_blob_cache_hit(&world, &mirror, "kube-apiserver");
}

/// dockerd's `registry-mirrors` sends `library/<name>` with no host, so with
/// `default_upstream = "docker.io"` it must reach docker.io's library/;
/// explicit host prefixes keep working under that default.
#[test]
fn mirror_routes_dockerd_shape_to_docker_io_default() {
    let world = World::new();
    let mut mirror = Mirror::start(&world.path("mirror-dockerio"), &world.http, world.upstream.port, "docker.io");
    let shapes = [
        Shape {
            what: "dockerd registry-mirrors shape, default docker.io",
            name: "library/busybox",
            tag: "1.36",
            upstream_repo: "library/busybox",
        },
        Shape {
            what: "host-prefixed registry.k8s.io under default docker.io",
            name: "registry.k8s.io/pause",
            tag: "3.9",
            upstream_repo: "pause",
        },
    ];
    for round in ["cold", "warm"] {
        for shape in &shapes {
            pull_through_mirror(&world, &mut mirror, shape, round);
        }
    }
}

/// What containerd relies on when resolving through a mirror, checked at the
/// header level: `HEAD /v2/<repo>/manifests/<tag>?ns=<registry>` must give
/// 200 with the upstream `Docker-Content-Digest` and the index's exact
/// `Content-Length`, and a by-digest GET must return bytes hashing to it.
fn assert_containerd_resolve_contract(world: &World, mirror: &Mirror, registry: &str, repo: &str) {
    let tag = SEEDED.iter().find(|(r, _)| *r == repo).map(|(_, t)| *t).expect("repo is seeded");
    let expected = world.upstream_digest(repo, tag);
    let base = mirror.base_url();
    let head_url = format!("{base}/v2/{repo}/manifests/{tag}?ns={registry}");
    let head = world.http.head(&head_url, Some(CONTAINERD_ACCEPT));
    assert_eq!(head.status, 200, "HEAD {head_url} status");
    assert_eq!(head.header("docker-content-digest"), expected, "HEAD {head_url}: Docker-Content-Digest");
    assert_eq!(
        head.header("content-length"),
        world.layout.index_size.to_string(),
        "HEAD {head_url}: Content-Length must be the index size"
    );

    let get_url = format!("{base}/v2/{repo}/manifests/{expected}?ns={registry}");
    let get = world.http.get(&get_url, Some(CONTAINERD_ACCEPT));
    assert_eq!(get.status, 200, "GET {get_url} status");
    assert_eq!(sha256_digest(&get.body), expected, "GET {get_url}: body digest");
}

/// Fetches one layer blob directly twice: the second answer must be served
/// from the mirror's cache (`X-Cache: HIT`) with the correct bytes.
fn assert_blob_cache_hit(world: &World, mirror: &Mirror, repo: &str) {
    let digest = &world.layout.platforms[0].layer_digest;
    let url = format!("{}/v2/{repo}/blobs/{digest}", mirror.base_url());
    let mut seen = Vec::new();
    for attempt in ["first", "second"] {
        let resp = world.http.get(&url, None);
        assert_eq!(resp.status, 200, "{attempt} GET {url} status");
        assert_eq!(
            sha256_digest(&resp.body),
            *digest,
            "{attempt} GET {url}: body does not hash to the requested digest"
        );
        seen.push(resp.header("x-cache"));
    }
    assert!(seen[0] == "MISS" || seen[0] == "HIT", "first GET {url}: X-Cache should be MISS or HIT, got {:?}", seen[0]);
    assert_eq!(seen[1], "HIT", "second GET {url}: X-Cache must be HIT");
}
