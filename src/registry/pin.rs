//! Pinning: what an air-gap bundle import does to what this site holds.
//!
//! A pinned manifest lives in its repository's `pinned` class: served like
//! a published one (published content of the same tag still wins), never
//! revalidated against upstream and never evicted. It follows the rules of
//! [`super::publish`] to the letter — validated, stored byte-exact, held
//! (so a blob DELETE is refused while it needs the blob), listed in the
//! referrers index of its subject — because a site that cannot reach
//! upstream must never lose what it was carried in.
//!
//! Trees are pinned from the leaves up: a manifest's blobs and child
//! manifests must be here before it is pinned (`MANIFEST_BLOB_UNKNOWN`
//! otherwise), and an image's tag is set only after its root is pinned, so
//! a tag never points at an incomplete image.

use bytes::Bytes;

use super::publish::validate;
use super::{Registry, Result};
use crate::oci::{Digest, Reference, RepoKey, Tag};
use crate::storage::Class;

impl Registry {
    /// Pins manifest `digest` (`body`, of `media_type`) in `key`, without a
    /// tag. Everything it names must already be here.
    pub async fn pin(&self, key: &RepoKey, digest: &Digest, media_type: &str, body: Bytes) -> Result<()> {
        let (m, digest) = validate(&Reference::Digest(digest.clone()), Some(media_type), &body)?;
        self.hold_and_store(Class::Pinned, key, &m, &digest, body, None).await?;
        tracing::debug!(repo = %key, %digest, "pinned");
        Ok(())
    }

    /// Points the pinned `tag` of `key` at `digest`, a manifest pinned
    /// there before; a running server sees it within
    /// [`super::LOCAL_TAG_RECHECK`].
    pub async fn pin_tag(&self, key: &RepoKey, tag: &Tag, digest: &Digest) -> Result<()> {
        self.put_local_tag(Class::Pinned, key, tag, digest).await?;
        tracing::debug!(repo = %key, %tag, %digest, "pinned tag");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media;
    use crate::registry::tests::{key, registry};
    use crate::registry::Error;

    #[tokio::test]
    async fn a_pinned_tree_is_held_from_the_leaves_up() {
        let (r, _dir) = registry();
        let k = key("pause");
        let (cfg, layer) = (Bytes::from_static(b"{}"), Bytes::from_static(b"layer"));
        let (dc, dl) = (Digest::of(&cfg), Digest::of(&layer));
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{dc}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{dl}","size":5}}]}}"#,
            media::OCI_MANIFEST
        );
        let di = Digest::of(image.as_bytes());
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{di}","size":{}}}]}}"#,
            media::OCI_INDEX,
            media::OCI_MANIFEST,
            image.len()
        );
        let dx = Digest::of(index.as_bytes());
        r.store().put_blob(&dc, cfg).await.unwrap();
        let early = r.pin(&k, &di, media::OCI_MANIFEST, image.clone().into()).await;
        assert_eq!(early, Err(Error::ManifestBlobUnknown(dl.clone())), "a missing layer refuses the pin");
        r.store().put_blob(&dl, layer).await.unwrap();
        let early = r.pin(&k, &dx, media::OCI_INDEX, index.clone().into()).await;
        assert_eq!(early, Err(Error::ManifestBlobUnknown(di.clone())), "children first");
        r.pin(&k, &di, media::OCI_MANIFEST, image.into()).await.unwrap();
        r.pin(&k, &dx, media::OCI_INDEX, index.into()).await.unwrap();
        let tag: Tag = "3.9".parse().unwrap();
        r.pin_tag(&k, &tag, &dx).await.unwrap();
        assert_eq!(r.local_tag(&k, &tag).await.unwrap(), Some((Class::Pinned, dx.clone())));
        for d in [&dc, &dl, &di, &dx] {
            assert!(r.store().is_held(d).await.unwrap(), "{d} is held");
        }
        assert!(matches!(r.delete_blob(&dl).await, Err(Error::Unsupported(_))));
        let wrong = r.pin(&k, &Digest::of(b"other"), media::OCI_INDEX, Bytes::from_static(b"{}")).await;
        assert!(wrong.is_err(), "a body that does not hash to its digest is refused");
    }
}
