//! The content store: blobs, manifests, tag links, holds (what keeps
//! content from being deleted) and referrers indexes, on `object_store`.
//!
//! `Store` is the storage seam. Everything goes through `object_store`
//! (local filesystem by default, in-memory for tests, S3 later), except two
//! fast paths taken only when the backend is the local filesystem: cached
//! blobs are read with large positional reads straight from their files, and
//! a finished fill is committed with one `rename` of its spool file. Both use
//! the very keys of [`paths`], so the fast path and `object_store` always
//! see the same objects.

pub mod blob_file;
pub mod paths;
pub mod spool;
pub mod uploads;

use std::io;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

pub use blob_file::{file_range, read_at, read_at_async};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::{
    local::LocalFileSystem, memory::InMemory, path::Path, GetOptions, GetRange, ObjectStore, WriteMultipart,
};
use serde::{Deserialize, Serialize};

pub use paths::Class;

use crate::config::{Backend, StorageConfig};
use crate::oci::referrers::Referrer;
use crate::oci::{Digest, RepoKey, Tag};

/// A stream of blob bytes as sent to clients.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage I/O: {0}")]
    Io(#[from] io::Error),
    #[error("object store: {0}")]
    Object(#[from] object_store::Error),
    #[error("storage.path {path}: {source}")]
    Unusable { path: PathBuf, source: io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A manifest exactly as upstream (or the publisher) sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// Where a tag points, and when upstream last confirmed it (unix seconds;
/// 0 for published and pinned tags, which are never revalidated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagLink {
    #[serde(with = "digest_str")]
    pub digest: Digest,
    #[serde(default)]
    pub checked: u64,
}

mod digest_str {
    use super::Digest;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(d)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// Seconds since the epoch, the clock of [`TagLink::checked`].
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A stored blob opened for reading; knows its size before any byte is sent.
pub enum BlobHandle {
    File { file: Arc<std::fs::File>, size: u64 },
    Object { objects: Arc<dyn ObjectStore>, path: Path, size: u64 },
}

impl BlobHandle {
    pub fn size(&self) -> u64 {
        match self {
            BlobHandle::File { size, .. } | BlobHandle::Object { size, .. } => *size,
        }
    }

    /// Streams bytes `start..end` (end exclusive, within `size`).
    pub fn stream(self, start: u64, end: u64) -> ByteStream {
        match self {
            BlobHandle::File { file, .. } => file_range(file, start, end),
            BlobHandle::Object { objects, path, .. } => {
                if start >= end {
                    return futures::stream::empty().boxed();
                }
                futures::stream::once(async move {
                    let opts = GetOptions { range: Some(GetRange::Bounded(start..end)), ..Default::default() };
                    let r = objects.get_opts(&path, opts).await.map_err(io::Error::other)?;
                    Ok::<_, io::Error>(r.into_stream().map_err(io::Error::other))
                })
                .try_flatten()
                .boxed()
            }
        }
    }
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    objects: Arc<dyn ObjectStore>,
    /// Set when `objects` is a `LocalFileSystem` rooted here: enables the
    /// read and commit fast paths.
    local_root: Option<PathBuf>,
    /// This process's own spool directory (fills stream through it).
    spool: spool::SpoolDir,
    /// Push upload sessions: beside the blobs on the filesystem backend
    /// (same filesystem, so a commit is one rename), inside the spool root
    /// for the memory backend.
    uploads: uploads::UploadDir,
}

impl Store {
    /// Opens the configured backend and proves it writable, so a bad
    /// `storage.path` stops start-up instead of failing the first pull.
    pub fn open(cfg: &StorageConfig) -> Result<Store> {
        let unusable = |path: &FsPath, source| Error::Unusable { path: path.to_path_buf(), source };
        match cfg.backend {
            Backend::Filesystem => {
                std::fs::create_dir_all(&cfg.path).map_err(|e| unusable(&cfg.path, e))?;
                let root = std::fs::canonicalize(&cfg.path).map_err(|e| unusable(&cfg.path, e))?;
                let spool_root = cfg.spool_path.clone().unwrap_or_else(|| root.join(paths::SPOOL_DIR));
                probe_writable(&spool_root).map_err(|e| unusable(&spool_root, e))?;
                let spool = spool::SpoolDir::claim(&spool_root).map_err(|e| unusable(&spool_root, e))?;
                let uploads_root = root.join(paths::UPLOADS_DIR);
                let uploads = uploads::UploadDir::open(uploads_root.clone()).map_err(|e| unusable(&uploads_root, e))?;
                let objects = LocalFileSystem::new_with_prefix(&root).map_err(io::Error::other)?;
                Ok(Store { objects: Arc::new(objects), local_root: Some(root), spool, uploads })
            }
            Backend::Memory => {
                let spool_root =
                    cfg.spool_path.clone().unwrap_or_else(|| std::env::temp_dir().join("klts-mirror-spool"));
                probe_writable(&spool_root).map_err(|e| unusable(&spool_root, e))?;
                let spool = spool::SpoolDir::claim(&spool_root).map_err(|e| unusable(&spool_root, e))?;
                let uploads_root = spool_root.join(paths::UPLOADS_DIR);
                let uploads = uploads::UploadDir::open(uploads_root.clone()).map_err(|e| unusable(&uploads_root, e))?;
                Ok(Store { objects: Arc::new(InMemory::new()), local_root: None, spool, uploads })
            }
        }
    }

    fn local_file(&self, key: &Path) -> Option<PathBuf> {
        self.local_root.as_ref().map(|r| r.join(key.as_ref()))
    }

    // ---- blobs -------------------------------------------------------

    /// Opens a stored blob, or `None` when it is not in the store.
    pub async fn open_blob(&self, d: &Digest) -> Result<Option<BlobHandle>> {
        let key = paths::blob(d);
        if let Some(fs_path) = self.local_file(&key) {
            let opened = tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(fs_path)?;
                let size = file.metadata()?.len();
                Ok::<_, io::Error>((file, size))
            })
            .await
            .map_err(io::Error::other)?;
            return match opened {
                Ok((file, size)) => Ok(Some(BlobHandle::File { file: Arc::new(file), size })),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
        match self.objects.head(&key).await {
            Ok(meta) => Ok(Some(BlobHandle::Object { objects: self.objects.clone(), path: key, size: meta.size })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Push upload sessions (blocking file I/O: use from the blocking pool).
    pub fn uploads(&self) -> &uploads::UploadDir {
        &self.uploads
    }

    /// Creates an empty spool file for a new fill.
    pub fn create_spool(&self) -> io::Result<(PathBuf, std::fs::File)> {
        self.spool.create()
    }

    /// Tests: every spool write from now on fails with ENOSPC.
    #[cfg(test)]
    pub(crate) fn simulate_full_spool(&self) {
        self.spool.full.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes a verified spool file the blob `d`. The caller has checked the
    /// digest; this only moves bytes. Blocking: call from the blocking pool.
    pub fn commit_spool_blocking(&self, d: &Digest, spool: &FsPath, file: &std::fs::File) -> Result<()> {
        let key = paths::blob(d);
        if let Some(dest) = self.local_file(&key) {
            // Durable before visible: a crash must never leave a committed
            // name over bytes that did not reach the disk.
            file.sync_data()?;
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(spool, &dest)?;
            return Ok(());
        }
        let handle = tokio::runtime::Handle::current();
        let result = handle.block_on(self.upload_file(&key, file));
        let _ = std::fs::remove_file(spool);
        result
    }

    async fn upload_file(&self, key: &Path, file: &std::fs::File) -> Result<()> {
        let size = file.metadata()?.len();
        let upload = self.objects.put_multipart(key).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024);
        let mut pos = 0;
        while pos < size {
            let n = (size - pos).min(blob_file::LARGE_READ as u64) as usize;
            writer.wait_for_capacity(4).await?;
            writer.write(&read_at(file, pos, n)?);
            pos += n as u64;
        }
        writer.finish().await?;
        Ok(())
    }

    /// Stores a small blob from memory (manifest-sized content, tests,
    /// imports). The caller has verified `d`.
    pub async fn put_blob(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        self.objects.put(&paths::blob(d), bytes.into()).await?;
        Ok(())
    }

    /// Whether the blob `d` is stored (one metadata lookup, no open).
    pub async fn has_blob(&self, d: &Digest) -> Result<bool> {
        self.exists(&paths::blob(d)).await
    }

    /// Removes the blob `d`; `false` when it was not there. On the
    /// filesystem a reader that already opened it keeps reading its bytes
    /// (an unlinked file lives until its last descriptor closes).
    pub async fn delete_blob(&self, d: &Digest) -> Result<bool> {
        self.delete(&paths::blob(d)).await
    }

    // ---- manifests ---------------------------------------------------

    /// Reads a manifest record; a record whose bytes no longer match its
    /// digest is reported as absent (and logged), never served.
    pub async fn get_manifest(&self, d: &Digest) -> Result<Option<StoredManifest>> {
        let Some(raw) = self.get_bytes(&paths::manifest(d)).await? else {
            return Ok(None);
        };
        let Some(nl) = raw.iter().position(|&b| b == b'\n') else {
            tracing::error!(digest = %d, "manifest record has no media type line; ignoring it");
            return Ok(None);
        };
        let media_type = String::from_utf8_lossy(&raw[..nl]).into_owned();
        let body = raw.slice(nl + 1..);
        if !d.matches(&body) {
            tracing::error!(digest = %d, "stored manifest does not match its digest; ignoring it");
            return Ok(None);
        }
        Ok(Some(StoredManifest { digest: d.clone(), media_type, body }))
    }

    /// Whether the manifest record `d` is stored (no read).
    pub async fn has_manifest(&self, d: &Digest) -> Result<bool> {
        self.exists(&paths::manifest(d)).await
    }

    /// Removes the manifest record `d`; `false` when it was not there.
    pub async fn delete_manifest(&self, d: &Digest) -> Result<bool> {
        self.delete(&paths::manifest(d)).await
    }

    pub async fn put_manifest(&self, m: &StoredManifest) -> Result<()> {
        let mut rec = BytesMut::with_capacity(m.media_type.len() + 1 + m.body.len());
        rec.extend_from_slice(m.media_type.as_bytes());
        rec.extend_from_slice(b"\n");
        rec.extend_from_slice(&m.body);
        self.objects.put(&paths::manifest(&m.digest), rec.freeze().into()).await?;
        Ok(())
    }

    // ---- tags --------------------------------------------------------

    pub async fn get_tag(&self, class: Class, key: &RepoKey, tag: &Tag) -> Result<Option<TagLink>> {
        let Some(raw) = self.get_bytes(&paths::tag(class, key, tag)).await? else {
            return Ok(None);
        };
        match serde_json::from_slice(&raw) {
            Ok(link) => Ok(Some(link)),
            Err(e) => {
                tracing::error!(repo = %key, %tag, error = %e, "unreadable tag link; ignoring it");
                Ok(None)
            }
        }
    }

    pub async fn put_tag(&self, class: Class, key: &RepoKey, tag: &Tag, link: &TagLink) -> Result<()> {
        let body = serde_json::to_vec(link).map_err(io::Error::other)?;
        self.objects.put(&paths::tag(class, key, tag), body.into()).await?;
        Ok(())
    }

    /// Removes a tag link; `false` when there was none.
    pub async fn delete_tag(&self, class: Class, key: &RepoKey, tag: &Tag) -> Result<bool> {
        self.delete(&paths::tag(class, key, tag)).await
    }

    /// Tags of one class in a repository.
    pub async fn list_tags(&self, class: Class, key: &RepoKey) -> Result<Vec<Tag>> {
        let prefix = paths::tags_dir(class, key);
        let listed: Vec<_> = match self.objects.list(Some(&prefix)).try_collect().await {
            Ok(v) => v,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(listed.into_iter().filter_map(|m| m.location.filename().and_then(|f| f.parse().ok())).collect())
    }

    /// Repositories with at least one tag of `class`, as `(upstream, repo)`
    /// in no particular order (one listing of the class's tree).
    pub async fn list_repositories(&self, class: Class) -> Result<Vec<(String, String)>> {
        let prefix = paths::repos_dir(class);
        let mut listed = self.objects.list(Some(&prefix));
        let mut out = std::collections::BTreeSet::new();
        while let Some(meta) = listed.next().await {
            match meta {
                Ok(meta) => out.extend(paths::repo_of_tag(class, &meta.location)),
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out.into_iter().collect())
    }

    pub async fn get_taglist(&self, key: &RepoKey) -> Result<Option<Vec<String>>> {
        let Some(raw) = self.get_bytes(&paths::taglist(key)).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&raw).ok())
    }

    pub async fn put_taglist(&self, key: &RepoKey, tags: &[String]) -> Result<()> {
        let body = serde_json::to_vec(tags).map_err(io::Error::other)?;
        self.objects.put(&paths::taglist(key), body.into()).await?;
        Ok(())
    }

    // ---- holds (what keeps content from being deleted) ---------------

    /// Records that `holder`, a manifest of `class` in `key`, keeps
    /// `content` (see [`paths::hold`]).
    pub async fn put_hold(&self, content: &Digest, class: Class, key: &RepoKey, holder: &Digest) -> Result<()> {
        self.objects.put(&paths::hold(content, class, key, holder), Bytes::new().into()).await?;
        Ok(())
    }

    pub async fn delete_hold(&self, content: &Digest, class: Class, key: &RepoKey, holder: &Digest) -> Result<()> {
        self.delete(&paths::hold(content, class, key, holder)).await.map(drop)
    }

    pub async fn has_hold(&self, content: &Digest, class: Class, key: &RepoKey, holder: &Digest) -> Result<bool> {
        self.exists(&paths::hold(content, class, key, holder)).await
    }

    /// Whether anything holds `content`: one listing, stopped at the first
    /// entry.
    pub async fn is_held(&self, content: &Digest) -> Result<bool> {
        let prefix = paths::holds(content);
        match self.objects.list(Some(&prefix)).next().await {
            None | Some(Err(object_store::Error::NotFound { .. })) => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(e.into()),
        }
    }

    // ---- referrers index ---------------------------------------------

    /// Lists `entry` (a manifest whose subject is `subject`) in the
    /// referrers index of one class of a repository.
    pub async fn put_referrer(&self, class: Class, key: &RepoKey, subject: &Digest, entry: &Referrer) -> Result<()> {
        let body = serde_json::to_vec(entry).map_err(io::Error::other)?;
        self.objects.put(&paths::referrer(class, key, subject, &entry.digest), body.into()).await?;
        Ok(())
    }

    pub async fn delete_referrer(
        &self,
        class: Class,
        key: &RepoKey,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        self.delete(&paths::referrer(class, key, subject, referrer)).await.map(drop)
    }

    /// The referrers of `subject` in one class of a repository, in key
    /// order. An unreadable entry is logged and left out.
    pub async fn list_referrers(&self, class: Class, key: &RepoKey, subject: &Digest) -> Result<Vec<Referrer>> {
        let prefix = paths::referrers_dir(class, key, subject);
        let mut listed: Vec<_> = match self.objects.list(Some(&prefix)).try_collect().await {
            Ok(v) => v,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        listed.sort_by(|a, b| a.location.cmp(&b.location));
        let mut out = Vec::with_capacity(listed.len());
        for meta in listed {
            // Deleted since the listing: simply no longer a referrer.
            let Some(raw) = self.get_bytes(&meta.location).await? else { continue };
            match serde_json::from_slice(&raw) {
                Ok(entry) => out.push(entry),
                Err(e) => tracing::error!(repo = %key, %subject, error = %e, "unreadable referrers entry; ignoring it"),
            }
        }
        Ok(out)
    }

    // ---- plumbing ----------------------------------------------------

    async fn exists(&self, key: &Path) -> Result<bool> {
        match self.objects.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes one object; `false` when it was not there.
    async fn delete(&self, key: &Path) -> Result<bool> {
        // The in-memory store deletes absent keys silently: ask first so
        // both backends tell the same.
        if !self.exists(key).await? {
            return Ok(false);
        }
        match self.objects.delete(key).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_bytes(&self, key: &Path) -> Result<Option<Bytes>> {
        match self.objects.get(key).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn probe_writable(dir: &FsPath) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let fs = Store::open(&StorageConfig { path: dir.path().join("data"), ..Default::default() }).unwrap();
        let spool = tempfile::tempdir().unwrap();
        let mem = Store::open(&StorageConfig {
            backend: Backend::Memory,
            spool_path: Some(spool.path().to_path_buf()),
            ..Default::default()
        })
        .unwrap();
        vec![(fs, Some(dir)), (mem, Some(spool))]
    }

    async fn collect(s: ByteStream) -> Vec<u8> {
        s.try_fold(Vec::new(), |mut v, b| async move {
            v.extend_from_slice(&b);
            Ok(v)
        })
        .await
        .unwrap()
    }

    /// The contract every backend meets: what the proxy relies on.
    #[tokio::test(flavor = "multi_thread")]
    async fn blob_contract() {
        for (store, _guard) in stores() {
            let data: Vec<u8> = (0..(blob_file::LARGE_READ * 2 + 17)).map(|i| (i % 251) as u8).collect();
            let d = Digest::of(&data);
            assert!(store.open_blob(&d).await.unwrap().is_none());

            let (spool, mut file) = store.create_spool().unwrap();
            std::io::Write::write_all(&mut file, &data).unwrap();
            let s2 = Arc::new(store);
            let (s3, d2, sp) = (s2.clone(), d.clone(), spool.clone());
            tokio::task::spawn_blocking(move || s3.commit_spool_blocking(&d2, &sp, &file)).await.unwrap().unwrap();
            assert!(!spool.exists(), "spool file must be gone after commit");

            let h = s2.open_blob(&d).await.unwrap().expect("committed blob is visible");
            assert_eq!(h.size(), data.len() as u64);
            assert_eq!(collect(h.stream(0, data.len() as u64)).await, data);
            let h = s2.open_blob(&d).await.unwrap().unwrap();
            assert_eq!(collect(h.stream(5, 600_000)).await, data[5..600_000]);
            let h = s2.open_blob(&d).await.unwrap().unwrap();
            assert!(collect(h.stream(7, 7)).await.is_empty());
        }
    }

    #[tokio::test]
    async fn manifest_and_tag_contract() {
        for (store, _guard) in stores() {
            let body = Bytes::from_static(br#"{"schemaVersion":2,"layers":[]}"#);
            let m =
                StoredManifest { digest: Digest::of(&body), media_type: crate::oci::media::OCI_MANIFEST.into(), body };
            assert!(store.get_manifest(&m.digest).await.unwrap().is_none());
            store.put_manifest(&m).await.unwrap();
            assert_eq!(store.get_manifest(&m.digest).await.unwrap(), Some(m.clone()));

            let key = RepoKey::new("registry.k8s.io".into(), "kube-apiserver".parse().unwrap());
            let tag: Tag = "v1.18.20-lts.2".parse().unwrap();
            assert!(store.get_tag(Class::Published, &key, &tag).await.unwrap().is_none());
            assert!(store.list_tags(Class::Published, &key).await.unwrap().is_empty());
            let link = TagLink { digest: m.digest.clone(), checked: 0 };
            store.put_tag(Class::Published, &key, &tag, &link).await.unwrap();
            assert_eq!(store.get_tag(Class::Published, &key, &tag).await.unwrap(), Some(link));
            assert!(store.get_tag(Class::Cached, &key, &tag).await.unwrap().is_none());
            assert_eq!(store.list_tags(Class::Published, &key).await.unwrap(), vec![tag]);

            store.put_taglist(&key, &["a".into(), "b".into()]).await.unwrap();
            assert_eq!(store.get_taglist(&key).await.unwrap(), Some(vec!["a".to_string(), "b".to_string()]));
        }
    }

    /// Holds, referrers entries and deletes behave the same on every backend.
    #[tokio::test]
    async fn holds_referrers_and_deletes_contract() {
        for (store, _guard) in stores() {
            let key = RepoKey::new("registry.k8s.io".into(), "a/b".parse().unwrap());
            let other = RepoKey::new("registry.k8s.io".into(), "a".parse().unwrap());
            let (blob, m1, m2) = (Digest::of(b"blob"), Digest::of(b"m1"), Digest::of(b"m2"));
            assert!(!store.is_held(&blob).await.unwrap());
            store.put_hold(&blob, Class::Published, &key, &m1).await.unwrap();
            store.put_hold(&blob, Class::Pinned, &other, &m2).await.unwrap();
            assert!(store.is_held(&blob).await.unwrap());
            assert!(store.has_hold(&blob, Class::Published, &key, &m1).await.unwrap());
            assert!(!store.has_hold(&blob, Class::Published, &other, &m1).await.unwrap(), "a nested repo is its own");
            store.delete_hold(&blob, Class::Published, &key, &m1).await.unwrap();
            assert!(store.is_held(&blob).await.unwrap(), "still held by the pinned one");
            store.delete_hold(&blob, Class::Pinned, &other, &m2).await.unwrap();
            store.delete_hold(&blob, Class::Pinned, &other, &m2).await.unwrap();
            assert!(!store.is_held(&blob).await.unwrap());

            let subject = Digest::of(b"subject");
            let entry = |d: &Digest| Referrer {
                media_type: crate::oci::media::OCI_MANIFEST.into(),
                digest: d.clone(),
                size: 3,
                artifact_type: Some("application/vnd.example".into()),
                annotations: [("k".to_string(), "v".to_string())].into(),
            };
            assert!(store.list_referrers(Class::Published, &key, &subject).await.unwrap().is_empty());
            store.put_referrer(Class::Published, &key, &subject, &entry(&m1)).await.unwrap();
            store.put_referrer(Class::Published, &key, &subject, &entry(&m2)).await.unwrap();
            let listed = store.list_referrers(Class::Published, &key, &subject).await.unwrap();
            assert_eq!(listed.len(), 2);
            assert!(listed.contains(&entry(&m1)) && listed.contains(&entry(&m2)));
            assert!(store.list_referrers(Class::Published, &other, &subject).await.unwrap().is_empty());
            store.delete_referrer(Class::Published, &key, &subject, &m1).await.unwrap();
            assert_eq!(store.list_referrers(Class::Published, &key, &subject).await.unwrap(), vec![entry(&m2)]);

            store.put_blob(&blob, Bytes::from_static(b"blob")).await.unwrap();
            assert!(store.has_blob(&blob).await.unwrap());
            assert!(store.delete_blob(&blob).await.unwrap());
            assert!(!store.delete_blob(&blob).await.unwrap(), "already gone");
            assert!(!store.has_blob(&blob).await.unwrap());
            let tag: Tag = "v1".parse().unwrap();
            store.put_tag(Class::Published, &key, &tag, &TagLink { digest: m1.clone(), checked: 0 }).await.unwrap();
            assert!(store.delete_tag(Class::Published, &key, &tag).await.unwrap());
            assert!(!store.delete_tag(Class::Published, &key, &tag).await.unwrap());
        }
    }

    #[tokio::test]
    async fn corrupted_manifest_record_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StorageConfig { path: dir.path().to_path_buf(), ..Default::default() }).unwrap();
        let body = Bytes::from_static(b"{}");
        let m = StoredManifest { digest: Digest::of(&body), media_type: "x".into(), body };
        store.put_manifest(&m).await.unwrap();
        let file = dir.path().join(paths::manifest(&m.digest).as_ref());
        std::fs::write(&file, b"x\n{\"evil\":1}").unwrap();
        assert!(store.get_manifest(&m.digest).await.unwrap().is_none());
    }

    #[test]
    fn spool_files_of_a_dead_process_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StorageConfig { path: dir.path().join("data"), ..Default::default() };
        let live = Store::open(&cfg).unwrap();
        let (kept, _) = live.create_spool().unwrap();
        let dead = Store::open(&cfg).unwrap();
        let (leftover, _) = dead.create_spool().unwrap();
        drop(dead);
        drop(Store::open(&cfg).unwrap());
        assert!(kept.exists(), "a fill of a live process sharing the path is kept");
        assert!(!leftover.exists(), "a dead process's spool file is removed, however young");
    }

    #[test]
    fn unwritable_path_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let err = Store::open(&StorageConfig { path: file.join("sub"), ..Default::default() }).err().unwrap();
        assert!(err.to_string().starts_with("storage.path"), "{err}");
    }
}
