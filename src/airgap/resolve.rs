//! Resolving: from a reference to everything of it that travels, through
//! the proxy, so that a bundle holds what a pull through `serve` gets.
//!
//! An index is walked breadth first: the children `--platform` keeps are
//! fetched (by digest), the others are recorded as left out and never
//! fetched. Every manifest that travels is then asked for what hangs on it
//! (OCI referrers, cosign tags), and those are walked the same way.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use futures::stream::{self, StreamExt};

use super::images::{ImageRef, Platform};
use super::lock::LeftOut;
use super::progress::Progress;
use super::BundleError;
use crate::oci::manifest::{Descriptor, Kind, Manifest};
use crate::oci::{Digest, Reference, RepoKey, Tag};
use crate::proxy::{self, Proxy};
use crate::storage::StoredManifest;

/// Images resolved at once (each is a handful of small requests).
const RESOLVE_CONCURRENCY: usize = 4;
/// The tag suffixes under which cosign stores what it attaches to
/// `<alg>:<hex>`: `<alg>-<hex>.sig` (signatures), `.att` (attestations),
/// `.sbom` (SBOMs).
const COSIGN_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];
/// Signatures of signatures (of SBOMs, of attestations) travel; deeper
/// chains are not followed.
const MAX_ATTACHMENT_DEPTH: usize = 2;

/// One reference, resolved: its manifest and, in order, everything of it
/// that travels.
pub(super) struct Resolved {
    pub(super) name: String,
    pub(super) key: RepoKey,
    pub(super) top: Arc<StoredManifest>,
    pub(super) attached_to: Option<String>,
    /// Carried child manifests, parents before children.
    pub(super) manifests: Vec<Arc<StoredManifest>>,
    /// Configs and layers.
    pub(super) blobs: Vec<Descriptor>,
    pub(super) left_out: Vec<LeftOut>,
}

impl Resolved {
    /// Digests of the manifests that travel: what attachments hang on.
    fn manifest_digests(&self) -> impl Iterator<Item = &Digest> {
        std::iter::once(&self.top.digest).chain(self.manifests.iter().map(|m| &m.digest))
    }
}

pub(super) struct Resolver<'a> {
    pub(super) proxy: &'a Proxy,
    pub(super) platforms: &'a [Platform],
    pub(super) progress: &'a Progress,
}

impl Resolver<'_> {
    /// Every image with its attachments; all problems at once.
    pub(super) async fn all(&self, images: &[ImageRef]) -> Result<Vec<Resolved>, BundleError> {
        // Routed first, so that two spellings of one image (an alias, the
        // default upstream left implicit) are fetched once.
        let mut problems = Vec::new();
        let mut names = HashSet::new();
        let mut routed = Vec::new();
        for (i, r) in images.iter().enumerate() {
            match self.proxy.route(&r.name, None) {
                Ok(key) => {
                    let repo = format!("{}/{}", key.upstream(), key.repo());
                    if names.insert(r.named(&repo)) {
                        routed.push((i, r, key, repo));
                    }
                }
                Err(e) => problems.push((i, format!("{r}: {e}"))),
            }
        }
        let results: Vec<Result<Vec<Resolved>, String>> = stream::iter(&routed)
            .map(|(_, r, key, repo)| self.image(r, key, repo))
            .buffered(RESOLVE_CONCURRENCY)
            .collect()
            .await;
        let mut resolved = Vec::new();
        for ((i, r, ..), result) in routed.iter().zip(results) {
            match result {
                Ok(list) => resolved.extend(list),
                Err(why) => problems.push((*i, format!("{r}: {why}"))),
            }
        }
        if problems.is_empty() {
            return Ok(resolved);
        }
        problems.sort_by_key(|(i, _)| *i);
        Err(BundleError::Problems(problems.into_iter().map(|(_, line)| line).collect()))
    }

    /// One image (routed to `key`, named under `repo`) and what is attached to it.
    async fn image(&self, r: &ImageRef, key: &RepoKey, repo: &str) -> Result<Vec<Resolved>, String> {
        let top = self.fetch(key, &r.reference()).await.map_err(|e| describe(&e))?;
        let image = self.walk(key, r.named(repo), top, None).await?;
        let left = match image.left_out.len() {
            0 => String::new(),
            n => format!(" ({n} platforms left out)"),
        };
        self.progress.note(&format!("resolved {} → {}{left}", image.name, image.top.digest));
        let name = image.name.clone();
        let mut seen: HashSet<Digest> = HashSet::from([image.top.digest.clone()]);
        let mut all = vec![image];
        let mut from = 0;
        for _ in 0..MAX_ATTACHMENT_DEPTH {
            let to = all.len();
            for i in from..to {
                let found = self.attachments(key, repo, &all[i], &name).await?;
                all.extend(found.into_iter().filter(|a| seen.insert(a.top.digest.clone())));
            }
            from = to;
        }
        Ok(all)
    }

    async fn fetch(&self, key: &RepoKey, reference: &Reference) -> Result<Arc<StoredManifest>, proxy::Error> {
        self.proxy.manifest(key, reference).await.map(|(m, _)| m)
    }

    /// The signatures, attestations and SBOMs of `of`'s manifests: OCI
    /// referrers and cosign's tags. A tag that does not exist is the usual
    /// case; any other failure is a problem (a bundle must not silently
    /// lose the signatures a site verifies).
    async fn attachments(
        &self,
        key: &RepoKey,
        repo: &str,
        of: &Resolved,
        image: &str,
    ) -> Result<Vec<Resolved>, String> {
        let mut found = Vec::new();
        for subject in of.manifest_digests() {
            let referrers = self
                .proxy
                .referrers(key, subject)
                .await
                .map_err(|e| format!("referrers of {subject}: {}", describe(&e)))?;
            for r in referrers {
                let top = self
                    .fetch(key, &Reference::Digest(r.digest.clone()))
                    .await
                    .map_err(|e| format!("referrer {} of {subject}: {}", r.digest, describe(&e)))?;
                found.push(self.walk(key, format!("{repo}@{}", r.digest), top, Some(image)).await?);
            }
            for suffix in COSIGN_SUFFIXES {
                // cosign names sha256 subjects; a sha512 one makes a name
                // longer than the 128 characters a tag may have: none to try.
                let Ok(tag) = format!("{}-{}.{suffix}", subject.algorithm().as_str(), subject.hex()).parse::<Tag>()
                else {
                    continue;
                };
                match self.fetch(key, &Reference::Tag(tag.clone())).await {
                    Ok(top) => found.push(self.walk(key, format!("{repo}:{tag}"), top, Some(image)).await?),
                    Err(proxy::Error::ManifestUnknown) => {}
                    Err(e) => return Err(format!("{repo}:{tag}: {}", describe(&e))),
                }
            }
        }
        Ok(found)
    }

    /// Every manifest below `top` that travels, and their blobs.
    async fn walk(
        &self,
        key: &RepoKey,
        name: String,
        top: Arc<StoredManifest>,
        attached_to: Option<&str>,
    ) -> Result<Resolved, String> {
        let mut resolved = Resolved {
            name,
            key: key.clone(),
            top: top.clone(),
            attached_to: attached_to.map(str::to_string),
            manifests: Vec::new(),
            blobs: Vec::new(),
            left_out: Vec::new(),
        };
        let mut queue = VecDeque::from([top]);
        while let Some(m) = queue.pop_front() {
            let parsed = Manifest::parse(Some(&m.media_type), &m.body).map_err(|e| format!("{}: {e}", m.digest))?;
            match parsed.kind {
                Kind::Image => resolved.blobs.extend(parsed.required_blobs().cloned()),
                Kind::Index => {
                    let (carried, left) = narrow(&parsed, self.platforms);
                    if carried.is_empty() && !left.is_empty() {
                        let has: Vec<&str> = left.iter().filter_map(|d| d.platform.as_deref()).collect();
                        return Err(format!(
                            "index {} has none of the platforms asked for (it has {})",
                            m.digest,
                            has.join(", ")
                        ));
                    }
                    resolved.left_out.extend(
                        left.into_iter().map(|d| LeftOut { digest: d.digest.clone(), platform: d.platform.clone() }),
                    );
                    for child in carried {
                        let c = self
                            .fetch(key, &Reference::Digest(child.digest.clone()))
                            .await
                            .map_err(|e| format!("child {} of {}: {}", child.digest, m.digest, describe(&e)))?;
                        resolved.manifests.push(c.clone());
                        queue.push_back(c);
                    }
                }
            }
        }
        Ok(resolved)
    }
}

/// A proxy failure as one line for people.
pub(super) fn describe(e: &proxy::Error) -> String {
    match e {
        proxy::Error::ManifestUnknown => "manifest unknown (no such tag or digest, here or upstream)".into(),
        proxy::Error::BlobUnknown => "blob unknown (not here, not upstream)".into(),
        other => other.to_string(),
    }
}

/// Which children of an index travel under `--platform` (all, without it):
/// those of a platform asked for, those that name no platform (nothing to
/// judge by), and the attestation manifests buildx adds (platform
/// `unknown/unknown`) of a child that travels. The rest are left out.
fn narrow<'a>(index: &'a Manifest, platforms: &[Platform]) -> (Vec<&'a Descriptor>, Vec<&'a Descriptor>) {
    if platforms.is_empty() {
        return (index.manifests.iter().collect(), Vec::new());
    }
    let selected = |d: &Descriptor| d.platform.as_deref().is_none_or(|p| platforms.iter().any(|want| want.matches(p)));
    let kept: HashSet<&Digest> = index.manifests.iter().filter(|d| selected(d)).map(|d| &d.digest).collect();
    index.manifests.iter().partition(|d| {
        selected(d)
            || d.annotations
                .get("vnd.docker.reference.digest")
                .and_then(|r| r.parse::<Digest>().ok())
                .is_some_and(|r| kept.contains(&r))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media;

    fn d(n: u8) -> Digest {
        format!("sha256:{}", format!("{n:02x}").repeat(32)).parse().unwrap()
    }

    fn index(children: &[(u8, Option<&str>, Option<u8>)]) -> Manifest {
        let entries: Vec<serde_json::Value> = children
            .iter()
            .map(|(n, platform, refers)| {
                let mut e = serde_json::json!({ "mediaType": media::OCI_MANIFEST, "digest": d(*n), "size": 1 });
                if let Some(p) = platform {
                    let parts: Vec<&str> = p.split('/').collect();
                    let mut pj = serde_json::json!({ "os": parts[0], "architecture": parts[1] });
                    if let Some(v) = parts.get(2) {
                        pj["variant"] = serde_json::json!(v);
                    }
                    e["platform"] = pj;
                }
                if let Some(r) = refers {
                    e["annotations"] = serde_json::json!({
                        "vnd.docker.reference.type": "attestation-manifest",
                        "vnd.docker.reference.digest": d(*r),
                    });
                }
                e
            })
            .collect();
        let body = serde_json::json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": entries });
        Manifest::parse(None, body.to_string().as_bytes()).unwrap()
    }

    fn digests(v: &[&Descriptor]) -> Vec<Digest> {
        v.iter().map(|d| d.digest.clone()).collect()
    }

    /// Why cosign tag names are tried, not assumed: a sha512 subject gives
    /// a name past the tag grammar's 128 characters (this once panicked).
    #[test]
    fn cosign_names_of_sha512_subjects_are_not_tags() {
        let d = crate::oci::Digest::of_with(crate::oci::Algorithm::Sha512, b"x");
        assert!(format!("sha512-{}.sig", d.hex()).parse::<Tag>().is_err());
        let d = crate::oci::Digest::of(b"x");
        assert!(format!("sha256-{}.sig", d.hex()).parse::<Tag>().is_ok());
    }

    #[test]
    fn narrowing_keeps_the_platforms_asked_for_and_their_attestations() {
        let i = index(&[
            (1, Some("linux/amd64"), None),
            (2, Some("linux/arm64/v8"), None),
            (3, Some("unknown/unknown"), Some(1)),
            (4, Some("unknown/unknown"), Some(2)),
            (5, None, None),
        ]);
        let (kept, left) = narrow(&i, &["linux/amd64".parse().unwrap()]);
        assert_eq!(digests(&kept), vec![d(1), d(3), d(5)]);
        assert_eq!(digests(&left), vec![d(2), d(4)]);
        let (kept, left) = narrow(&i, &["linux/arm64".parse().unwrap(), "linux/amd64".parse().unwrap()]);
        assert_eq!((kept.len(), left.len()), (5, 0));
        let (kept, left) = narrow(&i, &[]);
        assert_eq!((kept.len(), left.len()), (5, 0), "no --platform: everything travels");
        let (kept, _) = narrow(&i, &["linux/arm64/v7".parse().unwrap()]);
        assert_eq!(digests(&kept), vec![d(5)], "a variant asked for must match");
    }
}
