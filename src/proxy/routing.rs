//! Which upstream a request is for, and under which canonical key.
//!
//! In order: the `ns` query parameter (containerd `hosts.toml` mirrors) →
//! a first path component that is a configured upstream name or alias
//! (host-prefixed names) → `routing.default_upstream` (bare names from
//! kubeadm `imageRepository`, dockerd `registry-mirrors`). Only configured
//! upstreams are ever selected: the mirror is not an open proxy.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::oci::{RepoKey, RepoName};

/// Canonical name of Docker Hub, whose single-component names live under
/// `library/`.
pub const DOCKER_HUB: &str = "docker.io";
/// Names under which the Kubernetes image registry is known.
const KUBERNETES: [&str; 2] = ["registry.k8s.io", "k8s.gcr.io"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("upstream {0:?} is not configured on this mirror")]
    UnknownUpstream(String),
}

/// Upstream names and aliases → canonical names.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    names: HashMap<String, Arc<str>>,
    default: Arc<str>,
}

impl RoutingTable {
    pub fn new(cfg: &Config) -> RoutingTable {
        let mut names = HashMap::new();
        for (name, up) in &cfg.upstreams {
            let canonical: Arc<str> = name.as_str().into();
            names.insert(name.clone(), canonical.clone());
            for alias in &up.aliases {
                names.insert(alias.clone(), canonical.clone());
            }
        }
        let default = names
            .get(&cfg.routing.default_upstream)
            .cloned()
            .unwrap_or_else(|| cfg.routing.default_upstream.as_str().into());
        RoutingTable { names, default }
    }

    /// Resolves a request's repository name (and `ns`, if any) to its key.
    pub fn route(&self, name: &RepoName, ns: Option<&str>) -> Result<RepoKey, RoutingError> {
        let (upstream, repo) = if let Some(ns) = ns {
            let up = self.names.get(ns).ok_or_else(|| RoutingError::UnknownUpstream(ns.to_string()))?;
            (up.clone(), name.clone())
        } else if let Some((first, rest)) = name.split_first() {
            match self.names.get(first) {
                Some(up) => (up.clone(), rest),
                // A dotted first component names a registry host; an
                // unconfigured one is refused rather than guessed at.
                None if first.contains('.') => return Err(RoutingError::UnknownUpstream(first.to_string())),
                None => (self.default.clone(), name.clone()),
            }
        } else {
            (self.default.clone(), name.clone())
        };
        let repo = if &*upstream == DOCKER_HUB && repo.depth() == 1 { repo.prefixed("library") } else { repo };
        Ok(RepoKey::new(upstream, repo))
    }

    /// Whether `upstream` (canonical) is the Kubernetes image registry.
    pub fn is_kubernetes(&self, upstream: &str) -> bool {
        self.names.iter().any(|(alias, canonical)| &**canonical == upstream && KUBERNETES.contains(&alias.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(default: &str) -> RoutingTable {
        let cfg = Config::from_toml(&format!(
            r#"
[upstreams."registry.k8s.io"]
url = "https://registry.k8s.io"
aliases = ["k8s.gcr.io"]
[upstreams."docker.io"]
url = "https://registry-1.docker.io"
[upstreams."ghcr.io"]
url = "https://ghcr.io"
[routing]
default_upstream = "{default}"
"#
        ))
        .unwrap();
        RoutingTable::new(&cfg)
    }

    fn route(t: &RoutingTable, name: &str, ns: Option<&str>) -> Result<String, RoutingError> {
        t.route(&name.parse().unwrap(), ns).map(|k| k.to_string())
    }

    #[test]
    fn the_four_request_shapes() {
        let t = table("registry.k8s.io");
        // 1. kubeadm imageRepository = mirror: bare names.
        assert_eq!(route(&t, "kube-apiserver", None).unwrap(), "registry.k8s.io/kube-apiserver");
        // 2. containerd hosts.toml: ?ns=
        assert_eq!(route(&t, "kube-apiserver", Some("registry.k8s.io")).unwrap(), "registry.k8s.io/kube-apiserver");
        assert_eq!(route(&t, "library/busybox", Some("docker.io")).unwrap(), "docker.io/library/busybox");
        // 3. host-prefixed names.
        assert_eq!(route(&t, "registry.k8s.io/kube-proxy", None).unwrap(), "registry.k8s.io/kube-proxy");
        assert_eq!(route(&t, "docker.io/library/busybox", None).unwrap(), "docker.io/library/busybox");
        assert_eq!(
            route(&t, "ghcr.io/klts-io/kubernetes-lts/kube-proxy", None).unwrap(),
            "ghcr.io/klts-io/kubernetes-lts/kube-proxy"
        );
        // 4. dockerd registry-mirrors: docker.io names, library/ already present.
        let d = table("docker.io");
        assert_eq!(route(&d, "library/busybox", None).unwrap(), "docker.io/library/busybox");
    }

    #[test]
    fn aliases_share_one_namespace() {
        let t = table("registry.k8s.io");
        assert_eq!(route(&t, "k8s.gcr.io/pause", None).unwrap(), "registry.k8s.io/pause");
        assert_eq!(route(&t, "pause", Some("k8s.gcr.io")).unwrap(), "registry.k8s.io/pause");
    }

    #[test]
    fn docker_hub_single_names_get_library() {
        let t = table("docker.io");
        assert_eq!(route(&t, "busybox", None).unwrap(), "docker.io/library/busybox");
        assert_eq!(route(&t, "docker.io/busybox", None).unwrap(), "docker.io/library/busybox");
        assert_eq!(route(&t, "busybox", Some("docker.io")).unwrap(), "docker.io/library/busybox");
        // Not for other upstreams.
        assert_eq!(route(&table("registry.k8s.io"), "busybox", None).unwrap(), "registry.k8s.io/busybox");
    }

    #[test]
    fn unknown_upstreams_are_refused() {
        let t = table("registry.k8s.io");
        assert_eq!(
            route(&t, "x", Some("evil.example.com")),
            Err(RoutingError::UnknownUpstream("evil.example.com".into()))
        );
        assert_eq!(route(&t, "quay.io/coreos/etcd", None), Err(RoutingError::UnknownUpstream("quay.io".into())));
        // A dotted single component is a repository name, not a host.
        assert_eq!(route(&t, "my.image", None).unwrap(), "registry.k8s.io/my.image");
    }

    #[test]
    fn kubernetes_upstream_detection() {
        let t = table("registry.k8s.io");
        assert!(t.is_kubernetes("registry.k8s.io"));
        assert!(!t.is_kubernetes("docker.io"));
    }
}
