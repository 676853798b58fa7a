//! Which images travel: references as users write them, the lists they
//! come from (`--image`, `--images-file`, kubeadm's list for a Kubernetes
//! version, containerd's sandbox images), and which platforms of them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::BundleError;
use crate::oci::{Digest, Reference, RepoName, Tag};

/// An image as users name it: `[host/]repo[:tag|@digest]` (both a tag and
/// a digest: the digest is fetched and the tag names it). No tag and no
/// digest means `latest`, as docker and skopeo read it. The host is
/// resolved later, exactly as `serve` routes a request's name: a
/// configured upstream or alias, else the default upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub name: RepoName,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// What to ask the mirror for: the digest when there is one.
    pub fn reference(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Reference::Digest(d.clone()),
            (None, Some(t)) => Reference::Tag(t.clone()),
            (None, None) => Reference::Tag("latest".parse().expect("a valid tag")),
        }
    }

    /// The tag, else the digest, after `name`: `name:tag` or `name@digest`.
    pub fn named(&self, name: &str) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{name}:{t}"),
            (None, Some(d)) => format!("{name}@{d}"),
            (None, None) => format!("{name}:latest"),
        }
    }
}

impl FromStr for ImageRef {
    type Err = String;

    fn from_str(s: &str) -> Result<ImageRef, String> {
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (rest, Some(d.parse::<Digest>().map_err(|e| format!("{s:?}: {e}"))?)),
            None => (s, None),
        };
        // A colon after the last slash starts the tag; one before it would
        // be a port, which no repository name can hold.
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].find(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        let name = name.parse::<RepoName>().map_err(|e| format!("{s:?}: {e}"))?;
        let tag = tag.map(|t| t.parse::<Tag>()).transpose().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(ImageRef { name, tag, digest })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name.as_str())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A platform as `--platform` names it: `os/arch[/variant]`. Without a
/// variant it matches every variant of the architecture (`linux/arm64`
/// takes `linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    os: String,
    arch: String,
    variant: Option<String>,
}

impl Platform {
    /// Whether an index entry's platform (`os/arch[/variant]`, as
    /// [`crate::oci::manifest::Descriptor::platform`] spells it) is this one.
    pub fn matches(&self, platform: &str) -> bool {
        let mut parts = platform.split('/');
        let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
        os == Some(&self.os)
            && arch == Some(&self.arch)
            && (self.variant.is_none() || variant == self.variant.as_deref())
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let part_ok = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(part_ok) {
            return Err(format!("platform {s:?} is invalid: expected os/arch[/variant], e.g. linux/amd64"));
        }
        Ok(Platform { os: parts[0].into(), arch: parts[1].into(), variant: parts.get(2).map(|v| v.to_string()) })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Where the images of a bundle are named.
#[derive(Debug, Clone, Default)]
pub struct ImageSources {
    /// `--image REF`, in order.
    pub images: Vec<String>,
    /// `--images-file F`: one REF per line; `#` starts a comment.
    pub images_file: Option<PathBuf>,
    /// `--kubernetes-version V`: kubeadm's images for V.
    pub kubernetes_versions: Vec<String>,
    /// `--containerd-sandbox`: the pause images containerd uses by default.
    pub containerd_sandbox: bool,
}

impl ImageSources {
    /// Every image asked for, each once, in the order asked. Every bad
    /// reference is reported (one line each, saying where it came from),
    /// not only the first.
    pub fn gather(&self) -> Result<Vec<ImageRef>, BundleError> {
        let mut named: Vec<(String, String)> = Vec::new();
        let mut problems = Vec::new();
        for v in &self.kubernetes_versions {
            match kubeadm_images(v) {
                Ok(list) => named.extend(list.into_iter().map(|r| (format!("--kubernetes-version {v}"), r))),
                Err(why) => problems.push(format!("--kubernetes-version {v}: {why}")),
            }
        }
        if self.containerd_sandbox {
            named.extend(sandbox_images().iter().map(|s| ("--containerd-sandbox".to_string(), s.image.to_string())));
        }
        named.extend(self.images.iter().map(|r| ("--image".to_string(), r.clone())));
        if let Some(path) = &self.images_file {
            match std::fs::read_to_string(path) {
                Ok(text) => named.extend(images_file_lines(&text).map(|(n, r)| (format!("{}:{n}", path.display()), r))),
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        let mut refs: Vec<ImageRef> = Vec::new();
        for (source, text) in named {
            match text.parse::<ImageRef>() {
                Ok(r) if !refs.contains(&r) => refs.push(r),
                Ok(_) => {}
                Err(why) => problems.push(format!("{source}: bad image reference {why}")),
            }
        }
        if refs.is_empty() && problems.is_empty() {
            problems.push(
                "no images named: use --image, --images-file, --kubernetes-version or --containerd-sandbox".into(),
            );
        }
        if problems.is_empty() {
            Ok(refs)
        } else {
            Err(BundleError::Problems(problems))
        }
    }
}

/// The references of an images file with their line numbers: blank lines
/// and `#` comments (whole-line or trailing) are skipped.
fn images_file_lines(text: &str) -> impl Iterator<Item = (usize, String)> + '_ {
    text.lines().enumerate().filter_map(|(i, line)| {
        let r = line.split('#').next().unwrap_or("").trim();
        (!r.is_empty()).then(|| (i + 1, r.to_string()))
    })
}

/// kubeadm's images for Kubernetes `v` (`kubeadm config images list
/// --kubernetes-version v`, default image repository; see `crate::kubeadm`).
fn kubeadm_images(v: &str) -> Result<Vec<String>, String> {
    let version: crate::kubeadm::KubernetesVersion = v.parse().map_err(|e: crate::kubeadm::Error| e.to_string())?;
    crate::kubeadm::images(&version, None).map_err(|e| e.to_string())
}

/// One default `sandbox_image` of containerd's CRI plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxImage {
    /// The containerd releases that default to it.
    pub containerd: &'static str,
    pub image: &'static str,
}

/// The pause images containerd releases use as `sandbox_image` when its
/// config does not set one: kubelet does not pull it, containerd does, so
/// an air-gapped node whose mirror lacks it starts no pod at all.
///
/// Read from containerd's own defaults at each release tag:
/// - 1.4: `vendor/github.com/containerd/cri/pkg/config/config_unix.go`
///   (v1.4.0 and v1.4.13) `k8s.gcr.io/pause:3.2`;
/// - 1.5, 1.6, 1.7: `pkg/cri/config/config_unix.go` `DefaultConfig`:
///   v1.5.0–v1.5.13 `k8s.gcr.io/pause:3.5`, from v1.5.14
///   `registry.k8s.io/pause:3.5`; v1.6.0–v1.6.8 `k8s.gcr.io/pause:3.6`, from
///   v1.6.9 `registry.k8s.io/pause:3.6` (commit b66eb726a "migrate from
///   k8s.gcr.io to registry.k8s.io"); v1.7.0–v1.7.29
///   `registry.k8s.io/pause:3.8`;
/// - 2.x: `internal/cri/config/config.go` `DefaultSandboxImage`: v2.0.0 and
///   v2.1.0 `registry.k8s.io/pause:3.10`, v2.2.0 `registry.k8s.io/pause:3.10.1`.
///
/// k8s.gcr.io is kept where it was the default (a node still asks for that
/// name); the mirror's routing folds it into registry.k8s.io when it is
/// configured as an alias, as the default config does.
pub fn sandbox_images() -> &'static [SandboxImage] {
    &[
        SandboxImage { containerd: "1.4", image: "k8s.gcr.io/pause:3.2" },
        SandboxImage { containerd: "1.5.0-1.5.13", image: "k8s.gcr.io/pause:3.5" },
        SandboxImage { containerd: "1.5.14+", image: "registry.k8s.io/pause:3.5" },
        SandboxImage { containerd: "1.6.0-1.6.8", image: "k8s.gcr.io/pause:3.6" },
        SandboxImage { containerd: "1.6.9+", image: "registry.k8s.io/pause:3.6" },
        SandboxImage { containerd: "1.7", image: "registry.k8s.io/pause:3.8" },
        SandboxImage { containerd: "2.0-2.1", image: "registry.k8s.io/pause:3.10" },
        SandboxImage { containerd: "2.2", image: "registry.k8s.io/pause:3.10.1" },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> ImageRef {
        s.parse().unwrap()
    }

    #[test]
    fn references_parse_as_docker_writes_them() {
        let r = parse("registry.k8s.io/kube-apiserver:v1.30.0");
        assert_eq!(r.name.as_str(), "registry.k8s.io/kube-apiserver");
        assert_eq!(r.tag.as_ref().unwrap().as_str(), "v1.30.0");
        assert_eq!(r.reference().to_string(), "v1.30.0");

        let r = parse("busybox");
        assert_eq!((r.name.as_str(), r.tag.is_none(), r.digest.is_none()), ("busybox", true, true));
        assert_eq!(r.reference().to_string(), "latest", "no tag means latest");
        assert_eq!(r.named("docker.io/library/busybox"), "docker.io/library/busybox:latest");

        let r = parse(&format!("pause@{D}"));
        assert_eq!(r.reference().to_string(), D);
        assert_eq!(r.named("registry.k8s.io/pause"), format!("registry.k8s.io/pause@{D}"));

        // Tag and digest: fetched by digest, named by tag.
        let r = parse(&format!("ghcr.io/klts-io/kubernetes-lts/kube-proxy:v1.18.20-lts.2@{D}"));
        assert_eq!(r.reference().to_string(), D);
        assert_eq!(r.named("x"), "x:v1.18.20-lts.2");
        assert_eq!(r.to_string(), format!("ghcr.io/klts-io/kubernetes-lts/kube-proxy:v1.18.20-lts.2@{D}"));
    }

    #[test]
    fn bad_references_say_why() {
        for bad in
            ["", "Kube-Apiserver:v1", "pause:", "pause:-x", "127.0.0.1:5000/pause:3.9", "pause@sha256:zz", "a//b"]
        {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?} must be refused");
        }
        let why = "pause@md5:00".parse::<ImageRef>().unwrap_err();
        assert!(why.contains("pause@md5:00") && why.contains("md5"), "{why}");
    }

    #[test]
    fn platforms_match_with_or_without_variant() {
        let arm64: Platform = "linux/arm64".parse().unwrap();
        assert!(arm64.matches("linux/arm64/v8") && arm64.matches("linux/arm64"));
        assert!(!arm64.matches("linux/amd64") && !arm64.matches("windows/arm64"));
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(v7.matches("linux/arm/v7") && !v7.matches("linux/arm/v6") && !v7.matches("linux/arm"));
        assert_eq!(v7.to_string(), "linux/arm/v7");
        for bad in ["linux", "linux/", "/amd64", "linux/amd64/v1/x", "linux amd64/x"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn images_files_skip_comments_and_blank_lines() {
        let text = "# control plane\nregistry.k8s.io/pause:3.9\n\n  kube-proxy:v1.30.0   # the proxy\n#x:y\n";
        let lines: Vec<(usize, String)> = images_file_lines(text).collect();
        assert_eq!(lines, vec![(2, "registry.k8s.io/pause:3.9".into()), (4, "kube-proxy:v1.30.0".into())]);
    }

    #[test]
    fn gathering_dedups_and_reports_every_bad_reference_with_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("images.txt");
        std::fs::write(&file, "pause:3.9\nBAD:1\n").unwrap();
        let sources = ImageSources {
            images: vec!["pause:3.9".into(), "kube-proxy:v1.30.0".into(), "x:".into()],
            images_file: Some(file.clone()),
            ..Default::default()
        };
        let Err(BundleError::Problems(p)) = sources.gather() else { panic!("bad references must fail") };
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("--image: bad image reference \"x:\""), "{p:?}");
        assert!(p[1].starts_with(&format!("{}:2: bad image reference \"BAD:1\"", file.display())), "{p:?}");

        std::fs::write(&file, "pause:3.9\n").unwrap();
        let sources = ImageSources { images_file: Some(file), containerd_sandbox: true, ..sources };
        let sources = ImageSources { images: vec!["pause:3.9".into(), "kube-proxy:v1.30.0".into()], ..sources };
        let refs: Vec<String> = sources.gather().unwrap().iter().map(|r| r.to_string()).collect();
        let mut expected: Vec<String> = sandbox_images().iter().map(|s| s.image.to_string()).collect();
        expected.extend(["pause:3.9".to_string(), "kube-proxy:v1.30.0".to_string()]);
        assert_eq!(refs, expected, "sandbox images first, then --image, each once");

        let Err(BundleError::Problems(p)) = ImageSources::default().gather() else { panic!() };
        assert!(p[0].contains("no images"), "{p:?}");
    }

    #[test]
    fn kubernetes_versions_add_kubeadms_images() {
        let sources = ImageSources { kubernetes_versions: vec!["v1.30.0".into()], ..Default::default() };
        let images = sources.gather().unwrap();
        let names: Vec<String> = images.iter().map(|i| i.to_string()).collect();
        assert_eq!(names.len(), 7, "{names:?}");
        assert!(names.iter().any(|n| n.contains("kube-apiserver:v1.30.0")), "{names:?}");
        assert!(names.iter().any(|n| n.contains("etcd:3.5.12-0")), "{names:?}");
        let bad = ImageSources { kubernetes_versions: vec!["v1.30".into()], ..Default::default() };
        let Err(BundleError::Problems(p)) = bad.gather() else { panic!() };
        assert!(p[0].starts_with("--kubernetes-version v1.30: "), "{p:?}");
    }

    #[test]
    fn every_sandbox_image_is_a_valid_reference() {
        for s in sandbox_images() {
            let r: ImageRef = s.image.parse().unwrap();
            assert!(r.tag.is_some(), "{}", s.image);
        }
    }
}
