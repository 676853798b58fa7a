//! Publishing: what a manifest PUT, a manifest or tag DELETE and a blob
//! DELETE do to what this site holds.
//!
//! A published manifest lives in its repository's `published` class, which
//! wins over pinned and cached content of the same tag. The rules:
//!
//! - **Validated, then stored byte-exact.** The body must parse as a
//!   manifest or index of a known media type (`MANIFEST_INVALID`), hash to
//!   the digest it was pushed by (`DIGEST_INVALID`), and name only content
//!   this site holds: every blob but non-distributable layers, and every
//!   child manifest (`MANIFEST_BLOB_UNKNOWN`). Its `subject` need not exist.
//!   Unlike a pull, a push that cannot be stored fails: nothing is
//!   published that the next request could not find.
//! - **Holds before the manifest.** Before the manifest is stored, a hold
//!   is written for itself and for everything it names (see
//!   `storage::paths`). A blob DELETE is refused while anything holds the
//!   blob; a manifest DELETE drops the repository's holds and removes the
//!   bytes once nothing holds them any more.
//! - **Tags last.** A tag is written only after its manifest is stored, and
//!   removed before its manifest goes, so a tag never points at nothing.
//!
//! The content gate orders these within one replica: publishing (checking
//! that content exists, then holding it) takes it shared, deletes take it
//! exclusively, so a blob cannot vanish between "it exists" and "it is
//! held". Across replicas the holds are written before the check that
//! relies on them, which leaves only the window of a delete that listed
//! the holds just before a publish wrote them.

use std::sync::Arc;

use bytes::Bytes;

use super::{Error, Registry, Result};
use crate::oci::manifest::{Manifest, ManifestError};
use crate::oci::{media, Digest, Reference, RepoKey, Tag};
use crate::storage::{Class, StoredManifest};

/// What a successful publish reports back to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub digest: Digest,
    /// The manifest's `subject`, answered as `OCI-Subject`.
    pub subject: Option<Digest>,
}

/// Checks a pushed body without any I/O: size, shape, media type and the
/// digest it was pushed by (a tag push is named by its sha256).
pub fn validate(reference: &Reference, content_type: Option<&str>, body: &[u8]) -> Result<(Manifest, Digest)> {
    if body.len() > media::MAX_MANIFEST_BYTES {
        return Err(Error::SizeInvalid {
            message: format!("manifest of {} bytes; at most {} accepted", body.len(), media::MAX_MANIFEST_BYTES),
            too_large: true,
        });
    }
    let manifest = Manifest::parse(content_type, body).map_err(|e| match e {
        ManifestError::UnsupportedMediaType(m) => Error::ManifestInvalid(format!("unsupported media type {m:?}")),
        ManifestError::Invalid(why) => Error::ManifestInvalid(why),
    })?;
    let digest = match reference {
        Reference::Digest(expected) => {
            let actual = Digest::of_with(expected.algorithm(), body);
            if &actual != expected {
                return Err(Error::DigestInvalid(format!("the body hashes to {actual}, not {expected}")));
            }
            actual
        }
        Reference::Tag(_) => Digest::of(body),
    };
    Ok((manifest, digest))
}

/// Everything a manifest keeps besides itself: the blobs it needs and its
/// child manifests.
fn held_by(m: &Manifest) -> impl Iterator<Item = &Digest> {
    m.required_blobs().chain(m.manifests.iter()).map(|d| &d.digest)
}

impl Registry {
    /// Publishes a pushed manifest in `key`, under `reference` (a tag is
    /// also set; a digest push sets no tag).
    pub async fn publish(
        &self,
        key: &RepoKey,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Published> {
        let (m, digest) = validate(reference, content_type, &body)?;
        let tag = match reference {
            Reference::Tag(tag) => Some(tag),
            Reference::Digest(_) => None,
        };
        self.hold_and_store(Class::Published, key, &m, &digest, body, tag).await?;
        tracing::info!(repo = %key, %reference, %digest, "published");
        Ok(Published { digest, subject: m.subject.map(|s| s.digest) })
    }

    /// Stores a validated manifest `m` (`body`, named `digest`) in `key`'s
    /// `class`: checks that everything it names is here, holds it, stores
    /// it, lists it as a referrer of its subject, and sets `tag`, last.
    /// Publishing and pinning ([`super::pin`]) differ only in the class.
    pub(super) async fn hold_and_store(
        &self,
        class: Class,
        key: &RepoKey,
        m: &Manifest,
        digest: &Digest,
        body: Bytes,
        tag: Option<&Tag>,
    ) -> Result<()> {
        let size = body.len() as u64;
        let stored = Arc::new(StoredManifest { digest: digest.clone(), media_type: m.media_type.clone(), body });
        let _shared = self.content_gate.read().await;
        for b in m.required_blobs() {
            if !self.store.has_blob(&b.digest).await? {
                return Err(Error::ManifestBlobUnknown(b.digest.clone()));
            }
        }
        for child in &m.manifests {
            if !self.has_manifest(&child.digest).await? {
                return Err(Error::ManifestBlobUnknown(child.digest.clone()));
            }
        }
        for content in held_by(m).chain([digest]) {
            self.store.put_hold(content, class, key, digest).await?;
        }
        self.store.put_manifest(&stored).await?;
        self.manifests.insert(digest.clone(), stored);
        if let Some(subject) = &m.subject {
            self.index_referrer(class, key, &subject.digest, m, digest, size).await?;
        }
        // Still under the gate: a concurrent delete of this digest must
        // not slip between the manifest and its tag.
        if let Some(tag) = tag {
            self.put_local_tag(class, key, tag, digest).await?;
        }
        Ok(())
    }

    /// Removes manifest `d` from `key`'s published class, with every
    /// published tag of `key` that points at it and its referrers entry.
    /// Its bytes go once nothing else holds them (another repository, or a
    /// published index that names it).
    pub async fn delete_published_manifest(&self, key: &RepoKey, d: &Digest) -> Result<()> {
        let _exclusive = self.content_gate.write().await;
        if !self.store.has_hold(d, Class::Published, key, d).await? {
            return Err(Error::ManifestUnknown);
        }
        for tag in self.store.list_tags(Class::Published, key).await? {
            let link = self.store.get_tag(Class::Published, key, &tag).await?;
            if link.is_some_and(|l| &l.digest == d) {
                self.store.delete_tag(Class::Published, key, &tag).await?;
                self.refresh_local_tag(key, &tag).await?;
            }
        }
        match self.manifest(d).await? {
            Some(stored) => match Manifest::parse(Some(&stored.media_type), &stored.body) {
                Ok(m) => {
                    if let Some(subject) = &m.subject {
                        self.unindex_referrer(Class::Published, key, &subject.digest, d).await?;
                    }
                    for content in held_by(&m) {
                        self.store.delete_hold(content, Class::Published, key, d).await?;
                    }
                }
                Err(e) => {
                    tracing::error!(repo = %key, digest = %d, error = %e, "a published manifest no longer parses")
                }
            },
            None => tracing::error!(repo = %key, digest = %d, "a published manifest's record is missing"),
        }
        self.store.delete_hold(d, Class::Published, key, d).await?;
        if !self.store.is_held(d).await? {
            self.store.delete_manifest(d).await?;
            self.manifests.remove(d);
        }
        tracing::info!(repo = %key, digest = %d, "published manifest deleted");
        Ok(())
    }

    /// Removes a published tag; a pull of it then resolves as if it had
    /// never been published (pinned, cached, upstream).
    pub async fn delete_published_tag(&self, key: &RepoKey, tag: &Tag) -> Result<()> {
        if !self.store.delete_tag(Class::Published, key, tag).await? {
            return Err(Error::ManifestUnknown);
        }
        self.refresh_local_tag(key, tag).await?;
        tracing::info!(repo = %key, %tag, "published tag deleted");
        Ok(())
    }

    /// Deletes blob `d`, unless a published or pinned manifest holds it
    /// (`Unsupported`, answered 405).
    pub async fn delete_blob(&self, d: &Digest) -> Result<()> {
        let _exclusive = self.content_gate.write().await;
        if !self.store.has_blob(d).await? {
            return Err(Error::BlobUnknown);
        }
        if self.store.is_held(d).await? {
            return Err(Error::Unsupported(format!("blob {d} is referenced by a published or pinned manifest")));
        }
        self.store.delete_blob(d).await?;
        tracing::info!(digest = %d, "blob deleted");
        Ok(())
    }

    /// Whether manifest `d` is here: memory, else one metadata lookup.
    async fn has_manifest(&self, d: &Digest) -> Result<bool> {
        Ok(self.manifests.contains_key(d) || self.store.has_manifest(d).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::{key, registry};

    fn d(n: u8) -> Digest {
        format!("sha256:{}", format!("{n:02x}").repeat(32)).parse().unwrap()
    }

    fn image(config: &Digest, layer: &Digest, extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":3}}]{extra}}}"#,
            media::OCI_MANIFEST
        )
    }

    fn index(children: &[&Digest], extra: &str) -> String {
        let list: Vec<String> = children
            .iter()
            .map(|c| format!(r#"{{"mediaType":"{}","digest":"{c}","size":1}}"#, media::OCI_MANIFEST))
            .collect();
        format!(r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]{extra}}}"#, media::OCI_INDEX, list.join(","))
    }

    fn tag(t: &str) -> Reference {
        Reference::Tag(t.parse().unwrap())
    }

    /// Stores two blobs; returns their digests.
    async fn blobs(r: &Registry) -> (Digest, Digest) {
        let (a, b) = (Bytes::from_static(b"{}"), Bytes::from_static(b"abc"));
        let (da, db) = (Digest::of(&a), Digest::of(&b));
        r.store().put_blob(&da, a).await.unwrap();
        r.store().put_blob(&db, b).await.unwrap();
        (da, db)
    }

    #[test]
    fn validation_without_io() {
        let body = image(&d(1), &d(2), "");
        let by_tag = validate(&tag("v1"), Some(media::OCI_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(by_tag.1, Digest::of(body.as_bytes()));
        // By digest, in the digest's own algorithm.
        let sha512 = Digest::of_with(crate::oci::Algorithm::Sha512, body.as_bytes());
        let (_, got) = validate(&Reference::Digest(sha512.clone()), None, body.as_bytes()).unwrap();
        assert_eq!(got, sha512);
        // A digest the body does not hash to.
        let other = Reference::Digest(Digest::of(b"something else"));
        assert!(matches!(validate(&other, None, body.as_bytes()), Err(Error::DigestInvalid(_))));
        let trailing = format!("{body}  ");
        let by_original = Reference::Digest(Digest::of(body.as_bytes()));
        assert!(matches!(validate(&by_original, None, trailing.as_bytes()), Err(Error::DigestInvalid(_))));
        // Not JSON, an unknown media type, a body over the limit.
        assert!(matches!(validate(&tag("v1"), None, b"{not json"), Err(Error::ManifestInvalid(_))));
        let unknown = Some("application/vnd.example.unknown+json");
        assert!(matches!(validate(&tag("v1"), unknown, body.as_bytes()), Err(Error::ManifestInvalid(_))));
        assert!(matches!(validate(&tag("v1"), None, b""), Err(Error::ManifestInvalid(_))));
        let huge = vec![b' '; media::MAX_MANIFEST_BYTES + 1];
        assert!(matches!(validate(&tag("v1"), None, &huge), Err(Error::SizeInvalid { too_large: true, .. })));
    }

    #[tokio::test]
    async fn a_manifest_needs_its_blobs_and_children_but_not_its_subject() {
        let (r, _dir) = registry();
        let k = key("kube-apiserver");
        let (cfg, layer) = blobs(&r).await;
        let missing = d(9);
        let body = image(&cfg, &missing, "");
        let err = r.publish(&k, &tag("v1"), None, body.into()).await.unwrap_err();
        assert_eq!(err, Error::ManifestBlobUnknown(missing.clone()));
        assert_eq!(r.local_tag(&k, &"v1".parse().unwrap()).await.unwrap(), None, "nothing published");
        assert!(!r.store().is_held(&cfg).await.unwrap(), "nothing held");

        let child = image(
            &cfg,
            &layer,
            &format!(r#","subject":{{"mediaType":"{}","digest":"{missing}","size":5}}"#, media::OCI_MANIFEST),
        );
        let p = r.publish(&k, &tag("child"), None, child.clone().into()).await.unwrap();
        assert_eq!(p.subject, Some(missing.clone()), "the subject need not exist");
        let idx = index(&[&p.digest], "");
        let unknown_child = index(&[&p.digest, &d(7)], "");
        assert_eq!(r.publish(&k, &tag("idx"), None, unknown_child.into()).await, Err(Error::ManifestBlobUnknown(d(7))));
        let pi = r.publish(&k, &tag("idx"), None, idx.clone().into()).await.unwrap();
        assert_eq!(pi.subject, None);
        let got = r.manifest(&pi.digest).await.unwrap().unwrap();
        assert_eq!(got.body, idx.as_bytes(), "stored byte-exact");
        assert_eq!(got.media_type, media::OCI_INDEX);
        assert_eq!(
            r.local_tag(&k, &"idx".parse().unwrap()).await.unwrap(),
            Some((Class::Published, pi.digest.clone()))
        );
    }

    #[tokio::test]
    async fn non_distributable_layers_need_not_be_pushed() {
        let (r, _dir) = registry();
        let (cfg, _) = blobs(&r).await;
        let body = image(&cfg, &d(5), "").replace(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
        );
        r.publish(&key("pause"), &tag("3.9"), None, body.into()).await.unwrap();
    }

    #[tokio::test]
    async fn held_blobs_cannot_be_deleted_until_their_manifests_are() {
        let (r, _dir) = registry();
        let (k1, k2) = (key("a"), key("b"));
        let (cfg, layer) = blobs(&r).await;
        let body = Bytes::from(image(&cfg, &layer, ""));
        let p = r.publish(&k1, &tag("v1"), None, body.clone()).await.unwrap();
        r.publish(&k2, &Reference::Digest(p.digest.clone()), None, body).await.unwrap();
        assert!(matches!(r.delete_blob(&layer).await, Err(Error::Unsupported(_))));
        assert_eq!(r.delete_blob(&d(8)).await, Err(Error::BlobUnknown));

        // Deleting from one repository: its tag goes, the bytes stay for the other.
        r.delete_published_manifest(&k1, &p.digest).await.unwrap();
        assert_eq!(r.local_tag(&k1, &"v1".parse().unwrap()).await.unwrap(), None, "its tag went with it");
        assert_eq!(r.delete_published_manifest(&k1, &p.digest).await, Err(Error::ManifestUnknown));
        assert!(r.manifest(&p.digest).await.unwrap().is_some(), "still published in b");
        assert!(matches!(r.delete_blob(&layer).await, Err(Error::Unsupported(_))));

        r.delete_published_manifest(&k2, &p.digest).await.unwrap();
        assert!(r.manifest(&p.digest).await.unwrap().is_none(), "nothing holds it any more");
        r.delete_blob(&layer).await.unwrap();
        r.delete_blob(&cfg).await.unwrap();
        assert_eq!(r.delete_blob(&layer).await, Err(Error::BlobUnknown));
        assert!(r.store().open_blob(&layer).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_index_keeps_its_children() {
        let (r, _dir) = registry();
        let k = key("kube-proxy");
        let (cfg, layer) = blobs(&r).await;
        let child = r.publish(&k, &tag("amd64"), None, image(&cfg, &layer, "").into()).await.unwrap();
        let idx = r.publish(&k, &tag("v1"), None, index(&[&child.digest], "").into()).await.unwrap();
        // The child leaves the repository's published class, but the index
        // still needs its bytes.
        r.delete_published_manifest(&k, &child.digest).await.unwrap();
        assert!(r.manifest(&child.digest).await.unwrap().is_some());
        r.delete_published_manifest(&k, &idx.digest).await.unwrap();
        assert!(r.manifest(&idx.digest).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn deleting_a_tag_leaves_the_manifest() {
        let (r, _dir) = registry();
        let k = key("etcd");
        let (cfg, layer) = blobs(&r).await;
        let t: Tag = "3.5.9-0".parse().unwrap();
        let p = r.publish(&k, &Reference::Tag(t.clone()), None, image(&cfg, &layer, "").into()).await.unwrap();
        r.delete_published_tag(&k, &t).await.unwrap();
        assert_eq!(r.local_tag(&k, &t).await.unwrap(), None, "seen at once on this replica");
        assert_eq!(r.delete_published_tag(&k, &t).await, Err(Error::ManifestUnknown));
        assert!(r.manifest(&p.digest).await.unwrap().is_some());
        r.delete_published_manifest(&k, &p.digest).await.unwrap();
    }
}
