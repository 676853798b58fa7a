//! One upstream as the proxy sees it for one repository: the upstream
//! client plus the repositories to try there, in order.
//!
//! Kubernetes moved CoreDNS to `coredns/coredns` at v1.8; kubeadm with a
//! custom imageRepository still asks for `<repo>/coredns:v1.x`, which the
//! Kubernetes registry lacks. So a request for `coredns` on a Kubernetes
//! upstream tries `coredns` first and `coredns/coredns` second, for every
//! kind of request, and "not found" moves on to the next candidate while
//! any other answer (content or failure) is final.

use std::future::Future;
use std::sync::Arc;

use crate::oci::referrers::Referrer;
use crate::oci::{Digest, Reference, RepoName};
use crate::upstream::{self, BlobBody, ManifestBody, ManifestHead, Upstream};

/// An upstream and the candidate repositories for one request.
#[derive(Clone)]
pub struct Origin {
    up: Arc<Upstream>,
    repos: Vec<RepoName>,
}

impl Origin {
    /// `kubernetes`: the upstream is the Kubernetes registry; `reference`:
    /// what is asked for (a `v…` tag or a digest takes the CoreDNS rule).
    pub fn new(up: Arc<Upstream>, repo: &RepoName, kubernetes: bool, reference: Option<&Reference>) -> Origin {
        let mut repos = vec![repo.clone()];
        let versioned = match reference {
            Some(Reference::Tag(t)) => t.as_str().starts_with('v'),
            _ => true,
        };
        if versioned && kubernetes && repo.as_str() == "coredns" {
            repos.push("coredns/coredns".parse().expect("static name"));
        }
        Origin { up, repos }
    }

    pub async fn manifest(&self, reference: &Reference) -> upstream::Result<ManifestBody> {
        self.first_found(|up, r| {
            let reference = reference.clone();
            async move { up.get_manifest(&r, &reference).await }
        })
        .await
    }

    pub async fn head_manifest(&self, reference: &Reference) -> upstream::Result<ManifestHead> {
        self.first_found(|up, r| {
            let reference = reference.clone();
            async move { up.head_manifest(&r, &reference).await }
        })
        .await
    }

    pub async fn head_blob(&self, d: &Digest) -> upstream::Result<Option<u64>> {
        self.first_found(|up, r| {
            let d = d.clone();
            async move { up.head_blob(&r, &d).await }
        })
        .await
    }

    pub async fn blob(&self, d: &Digest) -> upstream::Result<BlobBody> {
        self.first_found(|up, r| {
            let d = d.clone();
            async move { up.get_blob(&r, &d).await }
        })
        .await
    }

    pub async fn referrers(&self, d: &Digest) -> upstream::Result<Vec<Referrer>> {
        self.first_found(|up, r| {
            let d = d.clone();
            async move { up.referrers(&r, &d).await }
        })
        .await
    }

    pub async fn tags(&self) -> upstream::Result<Vec<String>> {
        self.first_found(|up, r| async move { up.tags(&r).await }).await
    }

    /// Tries each candidate repository in order while upstream says "not
    /// found".
    async fn first_found<T, F, Fut>(&self, mut f: F) -> upstream::Result<T>
    where
        F: FnMut(Arc<Upstream>, RepoName) -> Fut,
        Fut: Future<Output = upstream::Result<T>>,
    {
        for r in &self.repos {
            match f(self.up.clone(), r.clone()).await {
                Err(upstream::Error::NotFound) => continue,
                other => return other,
            }
        }
        Err(upstream::Error::NotFound)
    }
}
