//! The names a bundle gives its images, routed to where pulls look.
//!
//! An OCI layout names an image in `index.json` with
//! `org.opencontainers.image.ref.name` — a full reference as `bundle
//! create` and skopeo write it (`registry.k8s.io/kube-apiserver:v1.30.0`),
//! or a bare tag (`v1.30.0`) as the image-spec intends — and containerd,
//! docker (25+) and hauler add `io.containerd.image.name`, always a full
//! reference. A `docker save` archive names images in `RepoTags`.
//!
//! A full reference is routed exactly as `serve` routes a pull of it
//! ([`RoutingTable::route`]): a configured upstream name or alias as first
//! component selects that upstream, a bare name goes to
//! `routing.default_upstream`, Docker Hub single names get `library/`. So
//! an image imported as `registry.k8s.io/pause:3.9` is what a kubeadm,
//! containerd (`?ns=`) or host-prefixed pull of it finds.

use std::fmt;

use crate::oci::{Digest, RepoKey, RepoName, Tag};
use crate::proxy::routing::RoutingTable;

/// `org.opencontainers.image.ref.name`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's (and docker's, and hauler's) full image name.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Docker Hub's other host names, which clients normalize away.
const DOCKER_HUB_HOSTS: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];

/// Where an image is imported, and under which tag (none: by digest only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    pub key: RepoKey,
    pub tag: Option<Tag>,
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            Some(t) => write!(f, "{}:{t}", self.key),
            None => write!(f, "{}", self.key),
        }
    }
}

/// A reference split into its parts, not yet routed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    name: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// `name[:tag][@digest]`; the tag's colon is the last one after the last
/// slash (a registry port never gets that far: it cannot be routed).
fn split(reference: &str) -> Parsed {
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) => (r, Some(d.to_string())),
        None => (reference, None),
    };
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[slash..].rfind(':') {
        Some(i) => Parsed { name: rest[..slash + i].to_string(), tag: Some(rest[slash + i + 1..].to_string()), digest },
        None => Parsed { name: rest.to_string(), tag: None, digest },
    }
}

/// Routes a full reference. A digest in it must be `expected` (the
/// manifest it names in the bundle).
pub fn route(reference: &str, expected: &Digest, routing: &RoutingTable) -> Result<ImageName, String> {
    let p = split(reference);
    if let Some(d) = &p.digest {
        let d: Digest = d.parse().map_err(|e| format!("reference {reference:?}: {e}"))?;
        if &d != expected {
            return Err(format!("reference {reference:?} names {d}, but the bundle holds {expected} under it"));
        }
    }
    let name = match p.name.split_once('/') {
        Some((host, rest)) if DOCKER_HUB_HOSTS.contains(&host) => format!("docker.io/{rest}"),
        _ => p.name.clone(),
    };
    let repo: RepoName = name.parse().map_err(|e| format!("reference {reference:?}: {e}"))?;
    let key = routing.route(&repo, None).map_err(|e| format!("reference {reference:?}: {e}"))?;
    let tag = p.tag.map(|t| t.parse::<Tag>()).transpose().map_err(|e| format!("reference {reference:?}: {e}"))?;
    Ok(ImageName { key, tag })
}

/// The name an `index.json` entry gives its manifest (`digest`), from its
/// annotations; `Ok(None)` for an entry without any.
pub fn of_index_entry(
    annotations: &std::collections::BTreeMap<String, String>,
    digest: &Digest,
    routing: &RoutingTable,
) -> Result<Option<ImageName>, String> {
    let ref_name = annotations.get(REF_NAME).map(String::as_str).filter(|s| !s.is_empty());
    // A bare tag has no `:`, `/` or `@` (the tag grammar allows none).
    let bare_tag = ref_name.filter(|r| !r.contains([':', '/', '@']));
    match (annotations.get(CONTAINERD_NAME).filter(|s| !s.is_empty()), ref_name) {
        (Some(full), _) => {
            let mut name = route(full, digest, routing)?;
            if let (None, Some(t)) = (&name.tag, bare_tag) {
                name.tag = Some(t.parse().map_err(|e| format!("{REF_NAME} {t:?}: {e}"))?);
            }
            Ok(Some(name))
        }
        (None, Some(r)) if bare_tag.is_none() => route(r, digest, routing).map(Some),
        (None, Some(t)) => Err(format!(
            "{digest} is named only by the tag {t:?}: no repository to import it into (a full reference such as registry.k8s.io/pause:3.9, or an {CONTAINERD_NAME} annotation, says where)"
        )),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::BTreeMap;

    fn table() -> RoutingTable {
        let cfg = Config::from_toml(
            r#"
[upstreams."registry.k8s.io"]
url = "https://registry.k8s.io"
aliases = ["k8s.gcr.io"]
[upstreams."docker.io"]
url = "https://registry-1.docker.io"
"#,
        )
        .unwrap();
        RoutingTable::new(&cfg)
    }

    fn d() -> Digest {
        Digest::of(b"manifest")
    }

    fn name(r: &str) -> Result<String, String> {
        route(r, &d(), &table()).map(|n| n.to_string())
    }

    #[test]
    fn references_route_like_pulls() {
        assert_eq!(name("registry.k8s.io/kube-apiserver:v1.30.0").unwrap(), "registry.k8s.io/kube-apiserver:v1.30.0");
        assert_eq!(name("k8s.gcr.io/pause:3.2").unwrap(), "registry.k8s.io/pause:3.2");
        assert_eq!(name("pause:3.9").unwrap(), "registry.k8s.io/pause:3.9", "a bare name: the default upstream");
        assert_eq!(name("docker.io/busybox:1.36").unwrap(), "docker.io/library/busybox:1.36");
        assert_eq!(name("index.docker.io/library/busybox:1.36").unwrap(), "docker.io/library/busybox:1.36");
        assert_eq!(name("registry.k8s.io/coredns/coredns").unwrap(), "registry.k8s.io/coredns/coredns");
        assert_eq!(name(&format!("registry.k8s.io/etcd:3.5.9-0@{}", d())).unwrap(), "registry.k8s.io/etcd:3.5.9-0");
        assert_eq!(name(&format!("registry.k8s.io/etcd@{}", d())).unwrap(), "registry.k8s.io/etcd");
    }

    #[test]
    fn bad_references_say_why() {
        assert!(name("quay.io/coreos/etcd:v3").unwrap_err().contains("quay.io"), "an unconfigured upstream");
        assert!(name("localhost:5000/x:1").is_err(), "a port is no repository name");
        assert!(name("Registry.k8s.io/Pause:3.9").is_err());
        assert!(name(&format!("registry.k8s.io/etcd@{}", Digest::of(b"other"))).unwrap_err().contains("names"));
    }

    #[test]
    fn index_entries_are_named_by_their_annotations() {
        let of = |pairs: &[(&str, &str)]| {
            let a: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            of_index_entry(&a, &d(), &table()).map(|n| n.map(|n| n.to_string()))
        };
        assert_eq!(of(&[(REF_NAME, "registry.k8s.io/pause:3.9")]).unwrap().unwrap(), "registry.k8s.io/pause:3.9");
        // docker 25+ and containerd: a bare tag beside the full name.
        let docker = [(REF_NAME, "1.36"), (CONTAINERD_NAME, "docker.io/library/busybox:1.36")];
        assert_eq!(of(&docker).unwrap().unwrap(), "docker.io/library/busybox:1.36");
        // hauler: a shortened ref name beside the full one.
        let hauler = [(REF_NAME, "busybox:stable"), (CONTAINERD_NAME, "index.docker.io/busybox:stable")];
        assert_eq!(of(&hauler).unwrap().unwrap(), "docker.io/library/busybox:stable");
        let untagged = [(REF_NAME, "v1"), (CONTAINERD_NAME, "registry.k8s.io/x")];
        assert_eq!(of(&untagged).unwrap().unwrap(), "registry.k8s.io/x:v1");
        assert!(of(&[(REF_NAME, "v1.30.0")]).unwrap_err().contains("no repository"));
        assert_eq!(of(&[]).unwrap(), None);
    }
}
