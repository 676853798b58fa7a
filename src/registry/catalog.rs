//! The catalog: which repositories this site holds.
//!
//! A sealed site has no upstream to ask what exists, so `GET /v2/_catalog`
//! is how an operator (or a script checking a bundle landed) sees what the
//! bundles brought. Every repository with a published, pinned or cached
//! tag is listed once, under the name that pulls it everywhere: the
//! canonical upstream followed by the repository (`registry.k8s.io/pause`),
//! which the host-prefix request shape routes back to the same key.

use std::collections::BTreeSet;

use super::{Registry, Result};
use crate::storage::Class;

impl Registry {
    /// Every repository with a tag of any class, as `<upstream>/<repo>`,
    /// sorted and each once.
    pub async fn repositories(&self) -> Result<Vec<String>> {
        let mut all = BTreeSet::new();
        for class in [Class::Published, Class::Pinned, Class::Cached] {
            for (upstream, repo) in self.store.list_repositories(class).await? {
                all.insert(format!("{upstream}/{repo}"));
            }
        }
        Ok(all.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::oci::{Digest, RepoKey};
    use crate::registry::tests::{key, registry};
    use crate::storage::Class;

    #[tokio::test]
    async fn every_class_is_listed_once_in_order() {
        let (r, _dir) = registry();
        assert!(r.repositories().await.unwrap().is_empty());
        let d = Digest::of(b"m");
        let hub = RepoKey::new("docker.io".into(), "library/busybox".parse().unwrap());
        r.put_local_tag(Class::Pinned, &key("pause"), &"3.9".parse().unwrap(), &d).await.unwrap();
        r.put_local_tag(Class::Published, &key("pause"), &"3.9-lts".parse().unwrap(), &d).await.unwrap();
        r.put_local_tag(Class::Published, &key("coredns/coredns"), &"v1".parse().unwrap(), &d).await.unwrap();
        r.confirm_cached_tag(&hub, &"1.36".parse().unwrap(), &d).await;
        r.store().put_taglist(&key("listed-only"), &["a".into()]).await.unwrap();
        assert_eq!(
            r.repositories().await.unwrap(),
            ["docker.io/library/busybox", "registry.k8s.io/coredns/coredns", "registry.k8s.io/pause"]
        );
    }
}
