//! skopeo invocations: the client used to seed the upstream and the stand-in
//! for kubeadm/crictl/dockerd-style pulls through the mirror.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{run_tool, ToolOutput};
use super::sha256_digest;

/// A `skopeo` command isolated from the host's containers config: no policy
/// checks, an empty registries.conf (no host-configured mirrors can divert
/// traffic), an empty auth file, and temp files in `work`.
fn skopeo(work: &Path) -> Command {
    let conf = work.join("skopeo-conf");
    std::fs::create_dir_all(conf.join("registries.d")).expect("create skopeo conf dir");
    std::fs::create_dir_all(conf.join("tmp")).expect("create skopeo tmp dir");
    std::fs::write(conf.join("registries.conf"), "").expect("write registries.conf");
    std::fs::write(conf.join("auth.json"), "{}").expect("write auth.json");
    let mut cmd = Command::new("skopeo");
    cmd.env("CONTAINERS_REGISTRIES_CONF", conf.join("registries.conf"))
        .env("REGISTRY_AUTH_FILE", conf.join("auth.json"))
        .arg("--insecure-policy")
        .arg("--registries.d")
        .arg(conf.join("registries.d"))
        .arg("--tmpdir")
        .arg(conf.join("tmp"))
        .arg("--command-timeout")
        .arg("60s");
    cmd
}

/// Pushes every platform of `src` to `dest` byte-for-byte
/// (`--preserve-digests` makes skopeo fail rather than rewrite manifests).
pub fn push_all(work: &Path, src: &str, dest: &str) -> ToolOutput {
    run_tool(
        &format!("skopeo copy {src} -> {dest}"),
        skopeo(work)
            .arg("copy")
            .arg("--all")
            .arg("--preserve-digests")
            .arg("--dest-tls-verify=false")
            .arg(src)
            .arg(dest),
    )
}

/// How skopeo reaches a mirror that publishes: credentials, and the CA of
/// its HTTPS certificate (verified) or plain HTTP.
pub struct Publisher<'a> {
    pub creds: Option<&'a str>,
    /// Directory holding `ca.crt`; `None`: plain HTTP, no TLS verification.
    pub cert_dir: Option<&'a Path>,
}

impl Publisher<'_> {
    fn tls_args(&self, cmd: &mut Command, side: &str) {
        match self.cert_dir {
            Some(dir) => {
                cmd.arg(format!("--{side}-cert-dir")).arg(dir).arg(format!("--{side}-tls-verify=true"));
            }
            None => {
                cmd.arg(format!("--{side}-tls-verify=false"));
            }
        }
    }
}

/// `skopeo copy --all --preserve-digests` into a publishing mirror; the
/// output is returned whether or not skopeo succeeded (refusals are tested).
pub fn publish_all(work: &Path, src: &str, dest: &str, p: &Publisher) -> std::process::Output {
    let mut cmd = skopeo(work);
    cmd.arg("copy").arg("--all").arg("--preserve-digests");
    p.tls_args(&mut cmd, "dest");
    if let Some(c) = p.creds {
        cmd.arg("--dest-creds").arg(c);
    }
    cmd.arg(src).arg(dest).output().expect("run skopeo")
}

/// `skopeo inspect --raw` digest through a mirror reached as `p` says.
pub fn inspect_raw_digest_with(work: &Path, reference: &str, p: &Publisher) -> String {
    let mut cmd = skopeo(work);
    cmd.arg("inspect").arg("--raw");
    match p.cert_dir {
        Some(dir) => cmd.arg("--cert-dir").arg(dir).arg("--tls-verify=true"),
        None => cmd.arg("--tls-verify=false"),
    };
    if let Some(c) = p.creds {
        cmd.arg("--creds").arg(c);
    }
    let out = run_tool(&format!("skopeo inspect --raw docker://{reference}"), cmd.arg(format!("docker://{reference}")));
    sha256_digest(&out.stdout)
}

/// `skopeo copy --all docker://<reference> dir:<out>` through a mirror
/// reached as `p` says; returns the digest of the copied index.
pub fn pull_all_with(work: &Path, reference: &str, out: &Path, p: &Publisher) -> String {
    let mut cmd = skopeo(work);
    cmd.arg("copy").arg("--all").arg("--preserve-digests");
    p.tls_args(&mut cmd, "src");
    if let Some(c) = p.creds {
        cmd.arg("--src-creds").arg(c);
    }
    run_tool(
        &format!("skopeo copy --all docker://{reference}"),
        cmd.arg(format!("docker://{reference}")).arg(format!("dir:{}", out.display())),
    );
    sha256_digest(&std::fs::read(out.join("manifest.json")).expect("manifest.json"))
}

/// A multi-arch pull into a `dir:` directory.
pub struct PulledImage {
    pub dir: PathBuf,
    /// sha256 of `manifest.json`, which with `--all` holds the index bytes.
    pub index_digest: String,
    pub stderr: String,
}

/// `skopeo copy --all docker://<src> dir:<out>` over plain HTTP. skopeo
/// verifies every blob and child-manifest digest while copying, so success
/// already means the mirror served consistent content.
pub fn pull_all(work: &Path, src: &str, out: &Path) -> PulledImage {
    let output = run_tool(
        &format!("skopeo copy --all docker://{src} (through mirror)"),
        skopeo(work)
            .arg("copy")
            .arg("--all")
            .arg("--preserve-digests")
            .arg("--src-tls-verify=false")
            .arg(format!("docker://{src}"))
            .arg(format!("dir:{}", out.display())),
    );
    let index = std::fs::read(out.join("manifest.json"))
        .unwrap_or_else(|e| panic!("skopeo pull of {src}: no manifest.json in {out:?}: {e}"));
    PulledImage { dir: out.to_path_buf(), index_digest: sha256_digest(&index), stderr: output.stderr }
}

/// Digest of the raw top-level manifest skopeo resolves for `reference`,
/// computed from `skopeo inspect --raw` bytes (no conversion by skopeo).
pub fn inspect_raw_digest(work: &Path, reference: &str) -> String {
    let out = run_tool(
        &format!("skopeo inspect --raw docker://{reference}"),
        skopeo(work).arg("inspect").arg("--raw").arg("--tls-verify=false").arg(format!("docker://{reference}")),
    );
    sha256_digest(&out.stdout)
}

/// `skopeo copy oci-archive:<archive>:<name> dir:<out>`: every platform
/// (`--all`, digests preserved) or, with `arch`, that linux platform only.
/// The output is returned whether or not skopeo succeeded.
pub fn copy_from_archive(
    work: &Path,
    archive: &Path,
    name: &str,
    out: &Path,
    arch: Option<&str>,
) -> std::process::Output {
    let mut cmd = skopeo(work);
    cmd.arg("copy");
    match arch {
        None => cmd.arg("--all").arg("--preserve-digests"),
        Some(a) => cmd.arg("--override-os").arg("linux").arg("--override-arch").arg(a),
    };
    cmd.arg(format!("oci-archive:{}:{name}", archive.display())).arg(format!("dir:{}", out.display()));
    super::process::loopback_only(&mut cmd).output().expect("run skopeo")
}
