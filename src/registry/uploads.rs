//! Blob uploads: a push's bytes, taken in one request or many, verified
//! against the digest the client finally names, and committed as a blob.
//!
//! ```text
//! start ─────────▶ session: record + bytes in the upload store (storage::uploads)
//! append chunk ──▶ BlobWriter::resume ──write + running hash──▶ data ──then──▶ record (offset)
//! finish ────────▶ last chunk ──▶ verify_stored ──▶ commit (data renamed into blobs/) ──▶ session gone
//! put_whole ─────▶ BlobWriter::new (a spool file) ──▶ verify ──▶ commit      (no session at all)
//! ```
//!
//! # Guarantees
//! - **Nothing unverified becomes a blob.** A blob is committed only after
//!   its bytes hashed to the digest named at the end; on a mismatch the
//!   session is removed and nothing is stored. Blobs are content-addressed:
//!   once stored, one is shared by every repository and class, which is
//!   why a mount copies nothing.
//! - **A chunk is all or nothing.** When a request's body ends early,
//!   stalls for `idle`, disagrees with its `Content-Range` or
//!   `Content-Length`, or cannot be written, its bytes are cut off and the
//!   running hash is restored: the session stays where it was, and the
//!   client may send the chunk again.
//! - **One request at a time per session** (a lock per session, held for
//!   the whole request); status is read without it.
//! - **A session belongs to the repository (routed key) it was started
//!   in.** Under any other key, and once committed, cancelled or swept, it
//!   is unknown.
//! - **Sessions survive restarts**; the running hash does not, so the
//!   finishing request after a restart hashes the file again, as it does
//!   when the digest is sha512 (bytes are hashed with sha256 as they come,
//!   the algorithm being named only at the end).
//! - **Abandoned sessions** (no activity for `max_age`) are swept
//!   periodically and at start-up; a session with a request in progress is
//!   never swept.
//! - **Memory stays flat**: at most two batches of a request's body are in
//!   memory at once; all file I/O runs on the blocking pool.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::{Error, Result};
use crate::oci::route::UploadId;
use crate::oci::{Digest, RepoKey, Verifier};
use crate::storage::spool::{Batch, BlobWriter, WriteError};
use crate::storage::uploads::{now_ms, UploadState};
use crate::storage::Store;

/// Body chunks gathered into one batch when they are already waiting.
const BATCH_CHUNKS: usize = 32;
/// Bounds of the interval between sweeps (a quarter of `max_age`).
const SWEEP_EVERY_MIN: Duration = Duration::from_millis(100);
const SWEEP_EVERY_MAX: Duration = Duration::from_secs(15 * 60);

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub id: UploadId,
    /// Bytes received and kept.
    pub offset: u64,
}

/// The bytes a chunk says it holds: `first..=last` of the blob (a
/// `Content-Range`), never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    first: u64,
    last: u64,
}

impl ByteRange {
    pub fn new(first: u64, last: u64) -> Option<ByteRange> {
        (first <= last).then_some(ByteRange { first, last })
    }

    /// Bytes in the range (at least 1).
    fn len(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// One request's part of an upload.
pub struct Chunk<'a, S> {
    /// Where the chunk says it goes, if it says (`Content-Range`).
    pub range: Option<ByteRange>,
    /// How long it says it is, if it says (`Content-Length`).
    pub length: Option<u64>,
    /// The bytes, as they arrive. Borrowed: what a refused chunk leaves
    /// unread, the caller may still drain.
    pub body: &'a mut S,
}

/// One upload session in memory.
struct Session {
    id: UploadId,
    key: RepoKey,
    started_ms: u64,
    /// Bytes kept (mirrors the record; readable without the turn).
    offset: AtomicU64,
    /// Unix ms of the last request; a session untouched for `max_age` is
    /// abandoned.
    touched_ms: AtomicU64,
    /// Set (with `Turn::closed`) when the session ends, before its files
    /// go: readers that do not take the turn see it too.
    gone: AtomicBool,
    /// Held by the request that is using the session.
    turn: tokio::sync::Mutex<Turn>,
}

/// What the request holding a session's turn may change.
struct Turn {
    /// The running sha256 of bytes `0..offset`, while this process has it.
    verifier: Option<Verifier>,
    /// Committed, cancelled or swept: unknown from now on.
    closed: bool,
}

impl Session {
    fn new(id: UploadId, key: RepoKey, state: &UploadState, verifier: Option<Verifier>) -> Session {
        Session {
            id,
            key,
            started_ms: state.started_ms,
            offset: AtomicU64::new(state.offset),
            touched_ms: AtomicU64::new(state.updated_ms),
            gone: AtomicBool::new(false),
            turn: tokio::sync::Mutex::new(Turn { verifier, closed: false }),
        }
    }

    fn touch(&self) {
        self.touched_ms.fetch_max(now_ms(), Ordering::Relaxed);
    }

    fn offset(&self) -> u64 {
        self.offset.load(Ordering::Acquire)
    }
}

/// The upload sessions of this process, over the store's upload directory.
pub struct Uploads {
    store: Arc<Store>,
    sessions: Mutex<HashMap<UploadId, Arc<Session>>>,
    /// Loads from disk and the disk pass of a sweep take turns, so a sweep
    /// never removes a session while it is being loaded.
    disk: tokio::sync::Mutex<()>,
    max_age: Duration,
    /// A body that sends nothing for this long is abandoned.
    idle: Duration,
}

impl Uploads {
    /// Sessions over `store`, abandoned after `max_age` without activity;
    /// a request body that stalls for `idle` fails its chunk.
    pub fn new(store: Arc<Store>, max_age: Duration, idle: Duration) -> Uploads {
        Uploads { store, sessions: Mutex::default(), disk: tokio::sync::Mutex::new(()), max_age, idle }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<UploadId, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session in `key`.
    pub async fn start(&self, key: &RepoKey) -> Result<Status> {
        let (store, k) = (self.store.clone(), key.clone());
        let (id, state) = blocking(move || store.uploads().create(&k, now_ms())).await?;
        let session = Arc::new(Session::new(id.clone(), key.clone(), &state, Some(Verifier::new())));
        self.live().insert(id.clone(), session);
        Ok(Status { id, offset: 0 })
    }

    /// Where session `id` of `key` stands.
    pub async fn status(&self, key: &RepoKey, id: &UploadId) -> Result<Status> {
        let s = self.session(key, id).await?;
        s.touch();
        Ok(Status { id: s.id.clone(), offset: s.offset() })
    }

    /// Appends a chunk to session `id` of `key`.
    pub async fn append<S>(&self, key: &RepoKey, id: &UploadId, chunk: Chunk<'_, S>) -> Result<Status>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin + Send,
    {
        let s = self.session(key, id).await?;
        let mut turn = s.turn.lock().await;
        if turn.closed {
            return Err(Error::UploadUnknown);
        }
        s.touch();
        let before = s.offset();
        let (mut w, file, saved) = self.take_chunk(&s, &mut turn, chunk).await?;
        let offset = w.len();
        if offset != before {
            let (store, sid) = (self.store.clone(), s.id.clone());
            let state = UploadState { offset, started_ms: s.started_ms, ..UploadState::new(&s.key, now_ms()) };
            let kept = blocking(move || store.uploads().save(&sid, &state)).await;
            if let Err(e) = kept {
                drop(w);
                self.rollback(&s, &mut turn, file, before, saved).await;
                return Err(e);
            }
        }
        turn.verifier = w.take_verifier();
        s.offset.store(offset, Ordering::Release);
        s.touch();
        Ok(Status { id: s.id.clone(), offset })
    }

    /// Takes the last chunk (possibly empty) of session `id` of `key`,
    /// verifies the whole against `digest` and commits it as that blob.
    /// Returns the blob's size. On a digest mismatch the session is gone.
    pub async fn finish<S>(&self, key: &RepoKey, id: &UploadId, digest: &Digest, chunk: Chunk<'_, S>) -> Result<u64>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin + Send,
    {
        let s = self.session(key, id).await?;
        let mut turn = s.turn.lock().await;
        if turn.closed {
            return Err(Error::UploadUnknown);
        }
        s.touch();
        let (mut w, _file, _saved) = self.take_chunk(&s, &mut turn, chunk).await?;
        let verified = w.verify_stored(digest, None).await;
        let result = match verified {
            Ok(size) => self.commit(w).await.map(|()| size),
            Err(e) => {
                drop(w);
                Err(write_error(e))
            }
        };
        // Committed or refused, the session is over (its bytes either are
        // the blob now or matched nothing).
        self.close(&s, &mut turn).await;
        result
    }

    /// Cancels session `id` of `key`: it and its bytes are gone.
    pub async fn cancel(&self, key: &RepoKey, id: &UploadId) -> Result<()> {
        let s = self.session(key, id).await?;
        let mut turn = s.turn.lock().await;
        if turn.closed {
            return Err(Error::UploadUnknown);
        }
        self.close(&s, &mut turn).await;
        Ok(())
    }

    /// A whole blob in one body, no session (a monolithic push). Returns
    /// its size.
    pub async fn put_whole<S>(&self, digest: &Digest, length: Option<u64>, body: &mut S) -> Result<u64>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin + Send,
    {
        let (store, d) = (self.store.clone(), digest.clone());
        // Creating the spool file is file I/O too.
        let mut w = blocking(move || Ok(BlobWriter::new(&store, &d))).await?;
        let refused = match ingest(&mut w, body, self.idle).await {
            Ok(got) if length.is_some_and(|n| n != got) => Some(size_mismatch(got, length)),
            Ok(_) if !w.is_durable() => Some(cannot_write()),
            Ok(_) => None,
            Err(e) => Some(e),
        };
        if let Some(e) = refused {
            discard(w).await;
            return Err(e);
        }
        let size = match w.verify(digest, None) {
            Ok(size) => size,
            Err(e) => {
                discard(w).await;
                return Err(write_error(e));
            }
        };
        self.commit(w).await?;
        Ok(size)
    }

    /// Whether `digest` is stored, so that a mount of it succeeds. Blobs
    /// are content-addressed and shared: a mount copies nothing.
    pub async fn mountable(&self, digest: &Digest) -> Result<bool> {
        Ok(self.store.open_blob(digest).await?.is_some())
    }

    // ---- sessions ----------------------------------------------------

    /// Session `id` if it belongs to `key`: from memory, else from disk.
    async fn session(&self, key: &RepoKey, id: &UploadId) -> Result<Arc<Session>> {
        let found = self.live().get(id).cloned();
        let s = match found {
            Some(s) => s,
            None => self.load(id).await?,
        };
        if s.key != *key || s.gone.load(Ordering::Acquire) {
            return Err(Error::UploadUnknown);
        }
        Ok(s)
    }

    /// A session this process does not have in memory: started before a
    /// restart (its running hash is lost), or by another process.
    async fn load(&self, id: &UploadId) -> Result<Arc<Session>> {
        let _disk = self.disk.lock().await;
        if let Some(s) = self.live().get(id).cloned() {
            return Ok(s);
        }
        let (store, i) = (self.store.clone(), id.clone());
        let state = blocking(move || store.uploads().load(&i)).await?.ok_or(Error::UploadUnknown)?;
        let key = state.repo.parse().ok().map(|repo| RepoKey::new(Arc::from(state.upstream.as_str()), repo));
        let expired = state.updated_ms < self.cutoff_ms();
        let Some(key) = key.filter(|_| !expired) else {
            let (store, i) = (self.store.clone(), id.clone());
            blocking(move || store.uploads().remove(&i)).await?;
            return Err(Error::UploadUnknown);
        };
        let s = Arc::new(Session::new(id.clone(), key, &state, None));
        self.live().insert(id.clone(), s.clone());
        Ok(s)
    }

    /// Checks a chunk against the session and streams it into the
    /// session's file. Returns the writer (every byte written), the file
    /// and the running hash as it was before, for [`Uploads::rollback`].
    /// A refused or failed chunk is rolled back here.
    async fn take_chunk<S>(
        &self,
        s: &Session,
        turn: &mut Turn,
        chunk: Chunk<'_, S>,
    ) -> Result<(BlobWriter, Arc<File>, Option<Verifier>)>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin + Send,
    {
        let offset = s.offset();
        if let Some(r) = chunk.range {
            // Order first (a gap or an overlap): the client asks where the
            // upload stands and continues from there.
            if r.first != offset {
                return Err(Error::RangeInvalid { current: offset });
            }
            if chunk.length.is_some_and(|n| n != r.len()) {
                return Err(Error::SizeInvalid {
                    message: format!("Content-Range holds {} bytes, Content-Length says {:?}", r.len(), chunk.length),
                    too_large: false,
                });
            }
        }
        let (store, id) = (self.store.clone(), s.id.clone());
        let (path, file) = blocking(move || {
            let u = store.uploads();
            Ok((u.data_path(&id), u.open_data(&id)?))
        })
        .await?;
        let file = Arc::new(file);
        let saved = turn.verifier.clone();
        let label = format!("upload {}", s.id);
        let mut w = BlobWriter::resume(&self.store, label, path, file.clone(), offset, turn.verifier.take());
        let expected = chunk.range.map(|r| r.len()).or(chunk.length);
        let refused = match ingest(&mut w, chunk.body, self.idle).await {
            Ok(got) if expected.is_some_and(|n| n != got) => Some(size_mismatch(got, expected)),
            Ok(_) if !w.is_durable() => Some(cannot_write()),
            Ok(_) => None,
            Err(e) => Some(e),
        };
        if let Some(e) = refused {
            drop(w);
            self.rollback(s, turn, file, offset, saved).await;
            return Err(e);
        }
        Ok((w, file, saved))
    }

    /// Undoes a chunk: its bytes cut off, the running hash as before. A
    /// session whose file cannot be cut back is not trusted any more.
    async fn rollback(&self, s: &Session, turn: &mut Turn, file: Arc<File>, offset: u64, saved: Option<Verifier>) {
        turn.verifier = saved;
        if let Err(e) = blocking(move || file.set_len(offset)).await {
            tracing::warn!(upload = %s.id, error = %e, "cannot undo a failed chunk; removing the upload");
            self.close(s, turn).await;
        }
    }

    /// Ends a session: unknown from now on, its files removed. It leaves
    /// memory only after its files are gone, so that no request in between
    /// can load it again from disk.
    async fn close(&self, s: &Session, turn: &mut Turn) {
        turn.closed = true;
        s.gone.store(true, Ordering::Release);
        let (store, id) = (self.store.clone(), s.id.clone());
        if let Err(e) = blocking(move || store.uploads().remove(&id)).await {
            tracing::warn!(upload = %s.id, error = %e, "cannot remove the files of a finished upload");
        }
        let mut live = self.live();
        if live.get(&s.id).is_some_and(|l| std::ptr::eq(Arc::as_ptr(l), s)) {
            live.remove(&s.id);
        }
    }

    /// Makes a verified writer's bytes its blob.
    async fn commit(&self, w: BlobWriter) -> Result<()> {
        match w.commit().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(cannot_write()),
            Err(e) => Err(Error::Storage(e.to_string())),
        }
    }

    // ---- abandoned sessions -----------------------------------------

    fn cutoff_ms(&self) -> u64 {
        now_ms().saturating_sub(self.max_age.as_millis() as u64)
    }

    /// How often [`Uploads::run_sweeper`] sweeps: a quarter of `max_age`,
    /// so an abandoned upload is gone at most 25% after its time.
    pub fn sweep_interval(&self) -> Duration {
        (self.max_age / 4).clamp(SWEEP_EVERY_MIN, SWEEP_EVERY_MAX)
    }

    /// Removes the sessions nobody touched for `max_age`, in memory and on
    /// disk (also those of a previous run). Returns how many.
    pub async fn sweep(&self) -> usize {
        let cutoff = self.cutoff_ms();
        let stale: Vec<Arc<Session>> =
            self.live().values().filter(|s| s.touched_ms.load(Ordering::Relaxed) < cutoff).cloned().collect();
        let mut removed = 0;
        for s in stale {
            // A request holds the turn: the session is in use.
            let Ok(mut turn) = s.turn.try_lock() else { continue };
            if turn.closed || s.touched_ms.load(Ordering::Relaxed) >= cutoff {
                continue;
            }
            self.close(&s, &mut turn).await;
            removed += 1;
        }
        let _disk = self.disk.lock().await;
        let live: HashSet<UploadId> = self.live().keys().cloned().collect();
        let store = self.store.clone();
        match blocking(move || Ok(store.uploads().sweep(cutoff, |id| live.contains(id)).len())).await {
            Ok(n) => removed + n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sweep abandoned uploads");
                removed
            }
        }
    }

    /// The start-up sweep: every session on disk older than `max_age`.
    /// Blocking; call before serving.
    pub fn sweep_at_start(&self) -> usize {
        self.store.uploads().sweep(self.cutoff_ms(), |_| false).len()
    }

    /// Sweeps every [`Uploads::sweep_interval`], for as long as it runs.
    pub async fn run_sweeper(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.sweep_interval());
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let n = self.sweep().await;
            if n > 0 {
                tracing::info!(removed = n, max_age = ?self.max_age, "removed abandoned uploads");
            }
        }
    }
}

/// Streams `body` into `w` from where it stands, one batch in the blocking
/// pool while the next is gathered. Returns the bytes received.
async fn ingest<S>(w: &mut BlobWriter, body: &mut S, idle: Duration) -> Result<u64>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin + Send,
{
    let start = w.len();
    let mut chunks = body.ready_chunks(BATCH_CHUNKS);
    let mut pending = None;
    let mut failed = None;
    while failed.is_none() {
        let items = match tokio::time::timeout(idle, chunks.next()).await {
            Ok(Some(items)) => items,
            Ok(None) => break,
            Err(_) => {
                failed = Some(Error::UploadInvalid(format!("the request body sent nothing for {idle:?}")));
                break;
            }
        };
        let mut ok = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Ok(b) if b.is_empty() => {}
                Ok(b) => ok.push(b),
                Err(e) => {
                    failed = Some(Error::UploadInvalid(format!("the request body failed: {e}")));
                    break;
                }
            }
        }
        if !ok.is_empty() {
            let batch = Arc::new(Batch { start: w.len(), chunks: ok });
            // Writes stay in order, one batch in the blocking pool at once.
            if let Some(p) = pending.take() {
                w.finish(p).await.map_err(|e| Error::Storage(e.to_string()))?;
                if !w.is_durable() {
                    // A write failed: hashing the rest would be for nothing.
                    return Err(cannot_write());
                }
            }
            pending = Some(w.start(batch, |_| {}));
        }
    }
    if let Some(p) = pending.take() {
        w.finish(p).await.map_err(|e| Error::Storage(e.to_string()))?;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(w.len() - start),
    }
}

/// Drops a writer off the async threads (dropping removes its spool file).
async fn discard(w: BlobWriter) {
    let _ = tokio::task::spawn_blocking(move || drop(w)).await;
}

/// Runs blocking file I/O on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::Storage(e.to_string())),
        Err(e) => Err(Error::Storage(e.to_string())),
    }
}

fn size_mismatch(got: u64, expected: Option<u64>) -> Error {
    let expected = expected.unwrap_or(0);
    Error::SizeInvalid { message: format!("{got} bytes received, {expected} announced"), too_large: false }
}

fn cannot_write() -> Error {
    Error::Storage("the upload's bytes could not be written".into())
}

fn write_error(e: WriteError) -> Error {
    match e {
        e @ WriteError::DigestMismatch { .. } => Error::DigestInvalid(e.to_string()),
        e @ WriteError::SizeMismatch { .. } => Error::SizeInvalid { message: e.to_string(), too_large: false },
        e => Error::Storage(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, StorageConfig};

    fn uploads(max_age: Duration) -> (Arc<Uploads>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StorageConfig { backend: Backend::Memory, spool_path: Some(dir.path().into()), ..Default::default() };
        let store = Arc::new(Store::open(&cfg).unwrap());
        (Arc::new(Uploads::new(store, max_age, Duration::from_secs(30))), dir)
    }

    fn key(repo: &str) -> RepoKey {
        RepoKey::new("registry.k8s.io".into(), repo.parse().unwrap())
    }

    type Body = futures::stream::Iter<std::vec::IntoIter<io::Result<Bytes>>>;

    fn body(parts: &[&'static [u8]]) -> Body {
        futures::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    fn chunk(body: &mut Body) -> Chunk<'_, Body> {
        Chunk { range: None, length: None, body }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_chunk_is_undone_and_the_memory_backend_commits() {
        let (u, dir) = uploads(Duration::from_secs(60));
        let k = key("pause");
        let s = u.start(&k).await.unwrap();
        assert!(dir.path().join("_uploads").join(s.id.as_str()).exists(), "beside the spool files");
        assert_eq!(u.append(&k, &s.id, chunk(&mut body(&[b"hello ", b"wor"]))).await.unwrap().offset, 9);
        // A body that breaks off: nothing of it is kept, the hash neither.
        let mut broken = futures::stream::iter(vec![Ok(Bytes::from_static(b"XXXX")), Err(io::Error::other("reset"))]);
        let e = u.append(&k, &s.id, Chunk { range: None, length: None, body: &mut broken }).await.unwrap_err();
        assert!(matches!(e, Error::UploadInvalid(_)), "{e:?}");
        assert_eq!(u.status(&k, &s.id).await.unwrap().offset, 9);
        // Too long for its Content-Length: refused and undone too.
        let mut long = body(&[b"ld!!"]);
        let e = u.append(&k, &s.id, Chunk { range: None, length: Some(3), body: &mut long }).await.unwrap_err();
        assert!(matches!(e, Error::SizeInvalid { .. }), "{e:?}");
        let range = ByteRange::new(9, 10);
        let e = u.append(&k, &s.id, Chunk { range, length: None, body: &mut body(&[b"ld"]) }).await;
        assert_eq!(e.unwrap().offset, 11);
        let d = Digest::of(b"hello world");
        assert_eq!(u.finish(&k, &s.id, &d, chunk(&mut body(&[]))).await.unwrap(), 11);
        assert!(u.mountable(&d).await.unwrap(), "committed to the object store");
        assert!(matches!(u.status(&k, &s.id).await, Err(Error::UploadUnknown)));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_session_in_use_is_never_swept() {
        let (u, _dir) = uploads(Duration::from_millis(1));
        let k = key("pause");
        let busy = u.start(&k).await.unwrap();
        let idle = u.start(&k).await.unwrap();
        // A request whose body sends a little, then nothing (yet).
        let (tx, rx) = futures::channel::mpsc::unbounded::<io::Result<Bytes>>();
        tx.unbounded_send(Ok(Bytes::from_static(b"abc"))).unwrap();
        let (u2, k2, id) = (u.clone(), k.clone(), busy.id.clone());
        let request = tokio::spawn(async move {
            let mut rx = rx;
            u2.append(&k2, &id, Chunk { range: None, length: None, body: &mut rx }).await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(u.sweep().await, 1, "only the idle one");
        assert!(matches!(u.status(&k, &idle.id).await, Err(Error::UploadUnknown)));
        drop(tx);
        assert_eq!(request.await.unwrap().unwrap().offset, 3);
        // Idle now: it goes at the next sweep.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(u.sweep().await, 1);
        assert!(matches!(u.status(&k, &busy.id).await, Err(Error::UploadUnknown)));
        assert_eq!(u.sweep_interval(), SWEEP_EVERY_MIN);
    }
}
