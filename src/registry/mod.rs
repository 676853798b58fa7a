//! What this site holds: manifests and tags by class, blobs, and the memory
//! indices that make warm lookups free of I/O.
//!
//! The registry knows nothing of upstreams. The pull-through proxy is a
//! layer over it (it decides when to ask upstream and what to remember);
//! publishing, bundle import and cache management use it directly. Tags
//! live in three classes (`storage::Class`): `published` wins over
//! `pinned`, which wins over `cached`.
//!
//! Memory holds hot manifests by digest (bounded by bytes) and, per tag,
//! the published/pinned link as last read (trusted for
//! [`LOCAL_TAG_RECHECK`], so a publish through another replica is seen
//! within that bound) and the cached link (write-through).
//!
//! Publishing (manifest PUT, deletes, the blob delete rule) is in
//! [`publish`]; pinning (air-gap imports) in [`pin`]; the referrers index
//! in [`referrers`]; the repositories this site holds in [`catalog`].

pub mod catalog;
pub mod pin;
pub mod publish;
pub mod referrers;

pub mod uploads;

use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use quick_cache::Weighter;
use tokio::sync::RwLock;

use crate::oci::{Digest, RepoKey, Tag};
use crate::storage::{self, now_secs, BlobHandle, Class, Store, StoredManifest, TagLink};

/// How long a published/pinned tag lookup is trusted in memory. Publishing
/// through this replica invalidates at once; other replicas see a new
/// publish within this bound.
pub const LOCAL_TAG_RECHECK: Duration = Duration::from_secs(2);

/// What went wrong in the registry, in its own terms; the edge turns each
/// into a spec code (`http::error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("blob unknown")]
    BlobUnknown,
    /// A manifest that does not parse or is not of a manifest media type.
    #[error("invalid manifest: {0}")]
    ManifestInvalid(String),
    /// A manifest names a blob or child manifest this site does not hold.
    #[error("manifest references unknown {0}")]
    ManifestBlobUnknown(Digest),
    /// Bytes did not hash to the digest they were sent with.
    #[error("digest mismatch: {0}")]
    DigestInvalid(String),
    /// A length that does not match, or a body over its limit (`too_large`).
    #[error("size invalid: {message}")]
    SizeInvalid { message: String, too_large: bool },
    #[error("upload unknown")]
    UploadUnknown,
    #[error("upload invalid: {0}")]
    UploadInvalid(String),
    /// A chunk that does not start where the upload stands (`current` bytes
    /// received so far).
    #[error("chunk out of order; {current} bytes received")]
    RangeInvalid { current: u64 },
    /// Refused by policy (e.g. deleting a blob a published manifest needs).
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("storage: {0}")]
    Storage(String),
}

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Clone)]
struct ManifestWeighter;

impl Weighter<Digest, Arc<StoredManifest>> for ManifestWeighter {
    fn weight(&self, _: &Digest, m: &Arc<StoredManifest>) -> u64 {
        (m.body.len() + m.media_type.len() + 128) as u64
    }
}

/// What memory knows about one tag of one repository, so that a warm
/// request by tag costs one lookup and no I/O.
#[derive(Clone, Default)]
struct TagState {
    /// The published or pinned link as last read from the store, and when
    /// (`None` until first read).
    local: Option<(Option<(Class, Digest)>, Instant)>,
    /// The cached-class link; memory is write-through for this class.
    cached: Option<TagLink>,
}

type TagKey = (RepoKey, Tag);

/// Borrowed `TagKey` for lookups without cloning; hashes exactly like the
/// tuple (fields in order).
#[derive(Hash)]
struct TagKeyRef<'a>(&'a RepoKey, &'a Tag);

impl quick_cache::Equivalent<TagKey> for TagKeyRef<'_> {
    fn equivalent(&self, k: &TagKey) -> bool {
        self.0 == &k.0 && self.1 == &k.1
    }
}

pub struct Registry {
    store: Arc<Store>,
    /// Hot manifests by digest, bounded by bytes.
    manifests: Cache<Digest, Arc<StoredManifest>, ManifestWeighter>,
    tags: Cache<TagKey, TagState>,
    /// Orders "check that content exists, then hold it" (publishing, shared)
    /// against "check that nothing holds it, then delete it" (exclusive);
    /// see [`publish`].
    content_gate: RwLock<()>,
}

impl Registry {
    /// A registry over `store`, keeping up to `manifest_memory_bytes` of
    /// manifests in memory.
    pub fn new(store: Arc<Store>, manifest_memory_bytes: u64) -> Registry {
        let budget = manifest_memory_bytes.max(1);
        Registry {
            store,
            manifests: Cache::with_weighter((budget / 4096).max(16) as usize, budget, ManifestWeighter),
            tags: Cache::new(100_000),
            content_gate: RwLock::new(()),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Read-modify-write of one tag's state. Races between two writers only
    /// lose a memory entry, which is reloaded from the store.
    fn update_tag(&self, key: &RepoKey, tag: &Tag, f: impl FnOnce(&mut TagState)) {
        let mut state = self.tags.get(&TagKeyRef(key, tag)).unwrap_or_default();
        f(&mut state);
        self.tags.insert((key.clone(), tag.clone()), state);
    }

    // ---- manifests ---------------------------------------------------

    /// A manifest from memory, else from the store (then kept in memory).
    pub async fn manifest(&self, d: &Digest) -> Result<Option<Arc<StoredManifest>>> {
        if let Some(m) = self.manifests.get(d) {
            return Ok(Some(m));
        }
        let Some(m) = self.store.get_manifest(d).await? else {
            return Ok(None);
        };
        let m = Arc::new(m);
        self.manifests.insert(d.clone(), m.clone());
        Ok(Some(m))
    }

    /// Stores a verified manifest and keeps it in memory. A storage failure
    /// (full disk) is logged, and the manifest stays in memory: it is
    /// verified, and losing a good answer to a storage problem would turn a
    /// cache fault into an outage. Returns whether it was stored.
    pub async fn keep_manifest(&self, m: &Arc<StoredManifest>) -> bool {
        self.manifests.insert(m.digest.clone(), m.clone());
        match self.store.put_manifest(m).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(digest = %m.digest, error = %e, "cannot store a verified manifest; serving it uncached");
                false
            }
        }
    }

    // ---- tags --------------------------------------------------------

    /// The published tag, else the pinned one; from memory when read less
    /// than [`LOCAL_TAG_RECHECK`] ago.
    pub async fn local_tag(&self, key: &RepoKey, tag: &Tag) -> Result<Option<(Class, Digest)>> {
        if let Some(TagState { local: Some((link, loaded)), .. }) = self.tags.get(&TagKeyRef(key, tag)) {
            if loaded.elapsed() < LOCAL_TAG_RECHECK {
                return Ok(link);
            }
        }
        let link = self.read_local_tag(key, tag).await?;
        let l = link.clone();
        self.update_tag(key, tag, |s| s.local = Some((l, Instant::now())));
        Ok(link)
    }

    async fn read_local_tag(&self, key: &RepoKey, tag: &Tag) -> Result<Option<(Class, Digest)>> {
        for class in [Class::Published, Class::Pinned] {
            if let Some(link) = self.store.get_tag(class, key, tag).await? {
                return Ok(Some((class, link.digest)));
            }
        }
        Ok(None)
    }

    /// Records a published or pinned tag (the manifest must already be
    /// stored).
    pub async fn put_local_tag(&self, class: Class, key: &RepoKey, tag: &Tag, digest: &Digest) -> Result<()> {
        let link = TagLink { digest: digest.clone(), checked: 0 };
        self.store.put_tag(class, key, tag, &link).await?;
        // Re-read so that a published tag still wins over a pinned one.
        self.refresh_local_tag(key, tag).await
    }

    /// Re-reads a tag's published/pinned link into memory after this
    /// replica changed it: seen here at once, elsewhere within
    /// [`LOCAL_TAG_RECHECK`].
    async fn refresh_local_tag(&self, key: &RepoKey, tag: &Tag) -> Result<()> {
        let local = self.read_local_tag(key, tag).await?;
        self.update_tag(key, tag, |s| s.local = Some((local, Instant::now())));
        Ok(())
    }

    /// The cached-class link of a tag: memory, else the store.
    pub async fn cached_tag(&self, key: &RepoKey, tag: &Tag) -> Result<Option<TagLink>> {
        if let Some(TagState { cached: Some(link), .. }) = self.tags.get(&TagKeyRef(key, tag)) {
            return Ok(Some(link));
        }
        let link = self.store.get_tag(Class::Cached, key, tag).await?;
        if let Some(l) = &link {
            let l = l.clone();
            self.update_tag(key, tag, |s| s.cached = Some(l));
        }
        Ok(link)
    }

    /// Records that upstream confirmed `tag` → `d` just now, in the store
    /// and in memory. A storage failure is logged, not returned: the answer
    /// in hand is verified and still served.
    pub async fn confirm_cached_tag(&self, key: &RepoKey, tag: &Tag, d: &Digest) {
        let link = TagLink { digest: d.clone(), checked: now_secs() };
        if let Err(e) = self.store.put_tag(Class::Cached, key, tag, &link).await {
            tracing::error!(repo = %key, %tag, error = %e, "cannot record the cached tag; serving it uncached");
        }
        self.update_tag(key, tag, |s| s.cached = Some(link));
    }

    /// Tags of one class in a repository.
    pub async fn tags(&self, class: Class, key: &RepoKey) -> Result<Vec<Tag>> {
        Ok(self.store.list_tags(class, key).await?)
    }

    /// The last tags list upstream gave for a repository.
    pub async fn stored_taglist(&self, key: &RepoKey) -> Result<Option<Vec<String>>> {
        Ok(self.store.get_taglist(key).await?)
    }

    // ---- blobs -------------------------------------------------------

    pub async fn open_blob(&self, d: &Digest) -> Result<Option<BlobHandle>> {
        Ok(self.store.open_blob(d).await?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Backend, StorageConfig};
    use bytes::Bytes;

    pub(crate) fn key(repo: &str) -> RepoKey {
        RepoKey::new("registry.k8s.io".into(), repo.parse().unwrap())
    }

    pub(crate) fn registry() -> (Registry, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StorageConfig { backend: Backend::Memory, spool_path: Some(dir.path().into()), ..Default::default() };
        (Registry::new(Arc::new(Store::open(&cfg).unwrap()), 1 << 20), dir)
    }

    fn manifest(body: &'static [u8]) -> Arc<StoredManifest> {
        let body = Bytes::from_static(body);
        Arc::new(StoredManifest { digest: Digest::of(&body), media_type: crate::oci::media::OCI_MANIFEST.into(), body })
    }

    #[tokio::test]
    async fn published_wins_over_pinned_and_cached_is_separate() {
        let (r, _d) = registry();
        let key = RepoKey::new("registry.k8s.io".into(), "kube-apiserver".parse().unwrap());
        let tag: Tag = "v1.18.20".parse().unwrap();
        let (a, b, c) = (manifest(b"{\"a\":1}"), manifest(b"{\"b\":1}"), manifest(b"{\"c\":1}"));
        for m in [&a, &b, &c] {
            assert!(r.keep_manifest(m).await);
        }
        assert_eq!(r.local_tag(&key, &tag).await.unwrap(), None);
        r.put_local_tag(Class::Pinned, &key, &tag, &b.digest).await.unwrap();
        assert_eq!(r.local_tag(&key, &tag).await.unwrap(), Some((Class::Pinned, b.digest.clone())));
        r.put_local_tag(Class::Published, &key, &tag, &a.digest).await.unwrap();
        r.put_local_tag(Class::Pinned, &key, &tag, &b.digest).await.unwrap();
        assert_eq!(r.local_tag(&key, &tag).await.unwrap(), Some((Class::Published, a.digest.clone())));
        r.confirm_cached_tag(&key, &tag, &c.digest).await;
        assert_eq!(r.cached_tag(&key, &tag).await.unwrap().unwrap().digest, c.digest);
        assert_eq!(r.manifest(&a.digest).await.unwrap().unwrap().body, a.body);
        assert_eq!(r.tags(Class::Published, &key).await.unwrap(), vec![tag]);
    }
}
