//! The one way bytes become a blob: write, hash, verify, then commit or
//! throw away. Upstream fills, push uploads and bundle imports all go
//! through a [`BlobWriter`]; nothing else ever names a blob.
//!
//! A writer takes bytes in batches. Each batch becomes two short blocking
//! jobs that run side by side (write to the spool file, hash), so a batch
//! costs max(write, hash), and a writer never holds a thread while its
//! source is slow. When the spool file cannot be created or written (a full
//! disk), the writer keeps hashing: a fill can still verify what it passes
//! through, and simply has nothing to commit. Dropping a writer that was
//! not committed removes its file.
//!
//! A push upload spans many requests and may outlive the process, so its
//! bytes wait in a file of the upload store (`storage::uploads`) instead:
//! [`BlobWriter::resume`] continues such a file at its end, with the
//! running hash when this process still has it. Dropping that writer keeps
//! the file (the upload store owns it), and [`BlobWriter::verify_stored`]
//! hashes the file again when the running hash is missing or of another
//! algorithm than the digest finally named.
//!
//! # Spool files
//! Spool files are where bytes wait while they are hashed, before they
//! become a blob (or are thrown away).
//!
//! Each process spools into a directory of its own, claimed with a lock
//! file that it holds for its whole life:
//!
//! ```text
//! <spool root>/
//! ├── <owner>.lock        flock(LOCK_EX) held by the owning process
//! ├── <owner>/<n>         that process's spool files
//! └── _<name>/            not spool files (the memory backend's uploads): never touched here
//! ```
//!
//! At start-up every owner whose lock can be taken is dead, so its whole
//! directory goes, whatever its age: a crash loop cannot accumulate
//! leftovers, and two processes that share a store path by mistake never
//! delete each other's live files. The kernel drops an flock when its
//! holder dies, `kill -9` included, so no stale lock survives a crash.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::Store;
use crate::oci::{Algorithm, Digest, Verifier};

/// Bytes received together, starting at offset `start` of the blob. Shared
/// (`Arc`) between the write job, the hash job and, for fills, readers
/// that take their bytes straight from memory.
#[derive(Debug)]
pub struct Batch {
    pub start: u64,
    pub chunks: Vec<Bytes>,
}

impl Batch {
    /// Offset just past this batch.
    pub fn end(&self) -> u64 {
        self.start + self.chunks.iter().map(|c| c.len() as u64).sum::<u64>()
    }

    /// The bytes at `pos..stop` that lie in one chunk of this batch, if
    /// `pos` falls inside the batch (zero-copy: a slice of the chunk).
    pub fn slice(&self, pos: u64, stop: u64) -> Option<Bytes> {
        let mut at = self.start;
        for c in &self.chunks {
            let end = at + c.len() as u64;
            if pos >= at && pos < end {
                let to = end.min(stop);
                return (to > pos).then(|| c.slice((pos - at) as usize..(to - at) as usize));
            }
            at = end;
        }
        None
    }
}

/// Writes `chunks` at `offset` with as few `pwritev` calls as the kernel
/// allows: one call per batch rather than one per chunk. Push bodies arrive
/// in chunks of at most 32 KiB; written one by one, a pushed 1 GiB blob
/// then read back from the page cache at half the speed of a pulled one
/// (8.6 against 17.3 GB/s with `dd`), while one large write per batch lets
/// the page cache keep it in large pieces.
fn write_batch_at(file: &File, chunks: &[Bytes], offset: u64) -> io::Result<()> {
    // At most IOV_MAX (1024 on Linux) slices per call.
    const MAX_IOV: usize = 1024;
    let mut at = offset;
    let mut first = 0; // chunk index
    let mut skip = 0; // bytes of chunks[first] already written
    while first < chunks.len() {
        let iov: Vec<libc::iovec> = chunks[first..]
            .iter()
            .take(MAX_IOV)
            .enumerate()
            .map(|(i, c)| {
                let c = if i == 0 { &c[skip..] } else { &c[..] };
                libc::iovec { iov_base: c.as_ptr() as *mut libc::c_void, iov_len: c.len() }
            })
            .collect();
        // SAFETY: every iovec points into a chunk that outlives the call and
        // is only read by the kernel.
        let n = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, at as libc::off_t) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // Advance past what was written, chunk by chunk.
        let mut left = n as usize;
        at += left as u64;
        while left > 0 {
            let rest = chunks[first].len() - skip;
            if left >= rest {
                left -= rest;
                first += 1;
                skip = 0;
            } else {
                skip += left;
                left = 0;
            }
        }
        // Skip empty chunks so the loop ends.
        while first < chunks.len() && chunks[first].len() == skip {
            first += 1;
            skip = 0;
        }
    }
    Ok(())
}

/// Why bytes did not become the blob they were meant to be.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{got} bytes received, {expected} expected")]
    SizeMismatch { got: u64, expected: u64 },
    #[error("the bytes hash to {actual}, not {expected}")]
    DigestMismatch { actual: Digest, expected: Digest },
    #[error("writing the spool file: {0}")]
    Io(#[from] io::Error),
    #[error("committing the blob: {0}")]
    Commit(#[from] super::Error),
}

/// The spool file a writer writes, while writing works.
struct Sink {
    path: PathBuf,
    file: Arc<File>,
}

/// Bytes on their way to becoming one blob (see the module doc).
pub struct BlobWriter {
    store: Arc<Store>,
    /// What the bytes are for (the expected digest, or the upload), for logs.
    label: String,
    /// `None` when there is no spool file, or writing it failed: the
    /// writer only hashes.
    sink: Option<Sink>,
    /// A path to remove on drop, even after the sink failed (`None` for an
    /// upload's file, which the upload store owns).
    leftover: Option<PathBuf>,
    /// The running hash of bytes `0..len`. Here whenever no batch is in
    /// flight (it travels into each hash job), except in a resumed writer
    /// whose earlier bytes were hashed by a process that is gone.
    verifier: Option<Verifier>,
    /// Whether batches are hashed as they pass (see `verifier`).
    hashing: bool,
    /// Offset just past the last batch started.
    len: u64,
    /// The digest the bytes matched, once verified.
    verified: Option<Digest>,
}

/// The blocking jobs of one batch, started by [`BlobWriter::start`].
pub struct Pending {
    hash: Option<JoinHandle<Verifier>>,
    write: Option<JoinHandle<io::Result<()>>>,
}

/// Bytes read at once when a file is hashed again.
const REHASH_READ: usize = 1024 * 1024;

impl BlobWriter {
    /// A writer for a blob expected to hash to `expected` (its algorithm is
    /// used). A spool file that cannot be created is logged and the writer
    /// only hashes ([`BlobWriter::is_durable`] tells).
    pub fn new(store: &Arc<Store>, expected: &Digest) -> BlobWriter {
        BlobWriter::spooled(store, Verifier::for_digest(expected), expected.to_string())
    }

    /// A writer for bytes whose digest is known only once they have all
    /// passed (a `docker save` layer, whose file is named by an image id):
    /// hashed with `alg`, then named by [`BlobWriter::seal`]. `label` names
    /// the bytes in logs.
    pub fn unnamed(store: &Arc<Store>, alg: Algorithm, label: String) -> BlobWriter {
        BlobWriter::spooled(store, Verifier::with(alg), label)
    }

    fn spooled(store: &Arc<Store>, verifier: Verifier, label: String) -> BlobWriter {
        let (sink, leftover) = match store.create_spool() {
            Ok((path, file)) => (Some(Sink { path: path.clone(), file: Arc::new(file) }), Some(path)),
            Err(e) => {
                tracing::warn!(blob = %label, error = %e, "cannot create a spool file; the blob will not be kept");
                (None, None)
            }
        };
        BlobWriter {
            store: store.clone(),
            label,
            sink,
            leftover,
            verifier: Some(verifier),
            hashing: true,
            len: 0,
            verified: None,
        }
    }

    /// A writer that continues `file` (at `path`, holding `len` bytes so
    /// far) with its running hash, if there is one. The file is not
    /// removed on drop: whoever opened it owns it. `label` names it in logs.
    pub fn resume(
        store: &Arc<Store>,
        label: String,
        path: PathBuf,
        file: Arc<File>,
        len: u64,
        verifier: Option<Verifier>,
    ) -> BlobWriter {
        let hashing = verifier.as_ref().is_some_and(|v| v.len() == len);
        BlobWriter {
            store: store.clone(),
            label,
            sink: Some(Sink { path, file }),
            leftover: None,
            verifier: verifier.filter(|_| hashing),
            hashing,
            len,
            verified: None,
        }
    }

    /// The spool file, for positional reads while it is written.
    pub fn file(&self) -> Option<&Arc<File>> {
        self.sink.as_ref().map(|s| &s.file)
    }

    /// Whether every byte so far is in the spool file.
    pub fn is_durable(&self) -> bool {
        self.sink.is_some()
    }

    /// Starts writing and hashing `batch`, which must start where the
    /// previous one ended: two short blocking jobs side by side. `written`
    /// runs on the writing thread right after the write, with whether it
    /// succeeded (never called when there is no file). Call
    /// [`BlobWriter::finish`] before starting the next batch.
    pub fn start(&mut self, batch: Arc<Batch>, written: impl FnOnce(bool) + Send + 'static) -> Pending {
        debug_assert_eq!(batch.start, self.len, "batches are contiguous");
        self.len = batch.end();
        let hash = self.hashing.then(|| {
            let mut verifier = self.verifier.take().expect("finish the previous batch first");
            let b = batch.clone();
            tokio::task::spawn_blocking(move || {
                for chunk in &b.chunks {
                    verifier.update(chunk);
                }
                verifier
            })
        });
        let write = self.sink.as_ref().map(|sink| {
            let file = sink.file.clone();
            tokio::task::spawn_blocking(move || {
                // Positional: a resumed file is written at its end whatever
                // its cursor, and a retried chunk overwrites a failed one.
                let r = write_batch_at(&file, &batch.chunks, batch.start);
                written(r.is_ok());
                r
            })
        });
        Pending { hash, write }
    }

    /// Waits for one batch's jobs. A failed write is logged and turns the
    /// writer hash-only; it is not an error here (callers that need the
    /// blob kept see it in [`BlobWriter::is_durable`]).
    pub async fn finish(&mut self, p: Pending) -> Result<(), tokio::task::JoinError> {
        if let Some(w) = p.write {
            if let Err(e) = w.await? {
                tracing::warn!(blob = %self.label, error = %e, "spool write failed; the blob will not be kept");
                self.sink = None;
            }
        }
        if let Some(h) = p.hash {
            self.verifier = Some(h.await?);
        }
        Ok(())
    }

    /// Bytes so far (offset just past the last batch started).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The running hash of every byte so far, if this writer has one (with
    /// no batch in flight): an upload keeps it between requests.
    pub fn take_verifier(&mut self) -> Option<Verifier> {
        self.hashing = false;
        self.verifier.take()
    }

    /// Checks everything written against `expected` (and the announced
    /// size, if any). Call once, with no batch in flight, on a writer that
    /// hashed every byte with `expected`'s algorithm (else see
    /// [`BlobWriter::verify_stored`]).
    pub fn verify(&mut self, expected: &Digest, size: Option<u64>) -> Result<u64, WriteError> {
        let verifier = self.verifier.take().expect("no batch in flight");
        let got = verifier.len();
        if let Some(n) = size.filter(|&n| n != got) {
            return Err(WriteError::SizeMismatch { got, expected: n });
        }
        let actual = verifier.finish();
        if actual != *expected {
            return Err(WriteError::DigestMismatch { actual, expected: expected.clone() });
        }
        self.verified = Some(actual);
        Ok(got)
    }

    /// Names the bytes by their own hash, for a writer made with
    /// [`BlobWriter::unnamed`] (no batch in flight): their digest and size,
    /// ready to commit. Whoever relies on the result checks it against
    /// something else (a `docker save` layer: the config's `diff_ids`).
    pub fn seal(&mut self) -> Result<(Digest, u64), WriteError> {
        let verifier =
            self.verifier.take().filter(|_| self.hashing).ok_or_else(|| {
                WriteError::Io(io::Error::other("the bytes were not all hashed; they cannot be named"))
            })?;
        let len = verifier.len();
        let digest = verifier.finish();
        self.verified = Some(digest.clone());
        Ok((digest, len))
    }

    /// [`BlobWriter::verify`] for any writer with every byte in its file:
    /// when the running hash is missing (an upload continued after a
    /// restart) or of another algorithm (one finished as sha512), the file
    /// is hashed again from its first byte, on the blocking pool.
    pub async fn verify_stored(&mut self, expected: &Digest, size: Option<u64>) -> Result<u64, WriteError> {
        let alg = expected.algorithm();
        if !self.verifier.as_ref().is_some_and(|v| v.algorithm() == alg && v.len() == self.len) {
            let file = self.sink.as_ref().map(|s| s.file.clone()).ok_or_else(|| {
                WriteError::Io(io::Error::other("the bytes are not all in the file; cannot hash them again"))
            })?;
            let len = self.len;
            let v = tokio::task::spawn_blocking(move || rehash(&file, len, alg)).await.map_err(io::Error::other)??;
            self.verifier = Some(v);
        }
        self.verify(expected, size)
    }

    /// Makes the verified bytes the blob. Returns `false` (and keeps
    /// nothing) when they are not all in the spool file.
    pub async fn commit(mut self) -> Result<bool, WriteError> {
        let digest = self.verified.clone().expect("verify before commit");
        let Some(sink) = self.sink.take() else { return Ok(false) };
        let (store, len) = (self.store.clone(), self.len);
        tokio::task::spawn_blocking(move || {
            // Exactly the verified bytes: a resumed file could hold more
            // (written past this writer's end by someone else).
            if sink.file.metadata()?.len() != len {
                sink.file.set_len(len)?;
            }
            store.commit_spool_blocking(&digest, &sink.path, &sink.file)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(true)
    }
}

/// The hash of the first `len` bytes of `file`, read with positional reads
/// (blocking).
fn rehash(file: &File, len: u64, alg: Algorithm) -> io::Result<Verifier> {
    let mut v = Verifier::with(alg);
    let mut buf = vec![0u8; REHASH_READ];
    let mut pos = 0u64;
    while pos < len {
        let want = (len - pos).min(REHASH_READ as u64) as usize;
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file is shorter than its bytes so far"));
        }
        v.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(v)
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Committed files were renamed away; anything else is thrown away.
        if let Some(p) = self.leftover.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// This process's claimed spool directory.
#[derive(Debug)]
pub struct SpoolDir {
    dir: PathBuf,
    /// Where `_lock` lives, removed with `dir` when the store is dropped.
    lock_path: PathBuf,
    /// Holds the flock for as long as the store lives.
    _lock: File,
    seq: AtomicU64,
    /// Tests: spool files whose writes fail with ENOSPC, as on a full disk.
    #[cfg(test)]
    pub(crate) full: std::sync::atomic::AtomicBool,
}

impl SpoolDir {
    /// Removes the directories of dead owners under `root`, then claims a
    /// fresh directory for this process.
    pub fn claim(root: &Path) -> io::Result<SpoolDir> {
        std::fs::create_dir_all(root)?;
        remove_dead_owners(root);
        loop {
            let owner = format!("{}-{:x}", std::process::id(), unique());
            let lock_path = root.join(format!("{owner}.lock"));
            let lock = OpenOptions::new().read(true).write(true).create_new(true).open(&lock_path)?;
            flock(&lock, libc::LOCK_EX | libc::LOCK_NB)?;
            // A concurrent cleanup may have taken the lock in the instant
            // between create and flock and unlinked the file: then this lock
            // guards nothing, so start over with a new name.
            let same = std::fs::metadata(&lock_path).is_ok_and(|m| m.ino() == lock.metadata().map_or(0, |l| l.ino()));
            if !same {
                continue;
            }
            let dir = root.join(&owner);
            std::fs::create_dir(&dir)?;
            return Ok(SpoolDir {
                dir,
                lock_path,
                _lock: lock,
                seq: AtomicU64::new(0),
                #[cfg(test)]
                full: Default::default(),
            });
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates a new, empty spool file.
    pub fn create(&self) -> io::Result<(PathBuf, File)> {
        let path = self.dir.join(self.seq.fetch_add(1, Ordering::Relaxed).to_string());
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        #[cfg(test)]
        if self.full.load(Ordering::Relaxed) {
            return Ok((path, OpenOptions::new().read(true).write(true).open("/dev/full")?));
        }
        Ok((path, file))
    }
}

impl Drop for SpoolDir {
    /// A process that ends cleanly (the shutdown drain) leaves no spool
    /// behind: its writers have removed their files by now, and the
    /// directory and lock go too, still under the lock. After a crash the
    /// next start-up removes them instead.
    fn drop(&mut self) {
        // The directory before the lock, as `remove_dead_owners` does.
        if std::fs::remove_dir_all(&self.dir).or_else(not_found_ok).is_ok() {
            let _ = std::fs::remove_file(&self.lock_path);
        }
    }
}

/// Deletes every owner directory under `root` whose lock nobody holds, and
/// any loose file left by an older layout. Names starting with `_` are not
/// spool files (owner names never do) and are left alone.
fn remove_dead_owners(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        let Ok(kind) = e.file_type() else { continue };
        if name.starts_with('_') {
            continue;
        }
        if let Some(owner) = name.strip_suffix(".lock") {
            let Ok(lock) = OpenOptions::new().read(true).write(true).open(&path) else { continue };
            if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
                continue; // a live process owns it
            }
            let dir = root.join(owner);
            let freed = dir_size(&dir);
            // The directory before the lock: while the lock file exists no
            // one else can claim this owner name.
            let removed =
                std::fs::remove_dir_all(&dir).or_else(not_found_ok).and_then(|()| std::fs::remove_file(&path));
            match removed {
                Ok(()) => tracing::info!(owner, bytes = freed, "removed spool files of a process that is gone"),
                Err(err) => tracing::warn!(owner, error = %err, "cannot remove spool files of a process that is gone"),
            }
        } else if kind.is_dir() {
            // Removed only if its lock is gone too (a cleanup interrupted
            // between the two removals), never while a lock file names it.
            if !root.join(format!("{name}.lock")).exists() {
                let _ = std::fs::remove_dir_all(&path);
            }
        } else if kind.is_file() && !name.starts_with(".probe") {
            // Spool files of the flat layout used before owner directories.
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn not_found_ok(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn unique() -> u128 {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    t ^ ((N.fetch_add(1, Ordering::Relaxed) as u128) << 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_dead_owner_is_removed_whatever_the_age_and_a_live_one_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let live = SpoolDir::claim(root.path()).unwrap();
        let (live_file, _) = live.create().unwrap();
        // A dead owner: its lock file exists but nobody holds it.
        let dead = SpoolDir::claim(root.path()).unwrap();
        let (dead_file, mut f) = dead.create().unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 4096]).unwrap();
        let dead_dir = dead.path().to_path_buf();
        drop(dead); // releases the flock, as a crash would
                    // A loose file from the flat layout.
        std::fs::write(root.path().join("123-4-5"), b"old").unwrap();
        // Not spool files: the memory backend's uploads live here.
        std::fs::create_dir_all(root.path().join("_uploads/abc")).unwrap();
        std::fs::write(root.path().join("_uploads/abc/data"), b"kept").unwrap();

        let third = SpoolDir::claim(root.path()).unwrap();
        assert!(!dead_file.exists() && !dead_dir.exists(), "a dead owner's files are gone at once");
        assert!(live_file.exists(), "a live owner's files are kept");
        assert!(!root.path().join("123-4-5").exists());
        assert!(root.path().join("_uploads/abc/data").exists(), "names starting with _ are not touched");
        assert!(third.path().exists());
        let locks = std::fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".lock"))
            .count();
        assert_eq!(locks, 2, "one lock per live owner");
    }

    #[test]
    fn batch_slices_stay_within_one_chunk_and_the_stop() {
        let b = Batch { start: 100, chunks: vec![Bytes::from_static(b"abcd"), Bytes::from_static(b"efgh")] };
        assert_eq!(b.slice(100, 1000).as_deref(), Some(&b"abcd"[..]));
        assert_eq!(b.slice(102, 1000).as_deref(), Some(&b"cd"[..]));
        assert_eq!(b.slice(104, 1000).as_deref(), Some(&b"efgh"[..]));
        assert_eq!(b.slice(105, 107).as_deref(), Some(&b"fg"[..]));
        assert_eq!(b.slice(105, 105), None);
        assert_eq!(b.slice(99, 1000), None);
        assert_eq!(b.slice(108, 1000), None);
    }

    #[test]
    fn spool_files_are_distinct() {
        let root = tempfile::tempdir().unwrap();
        let s = SpoolDir::claim(root.path()).unwrap();
        let (a, _) = s.create().unwrap();
        let (b, _) = s.create().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(s.path()));
    }

    fn store() -> (Arc<Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::StorageConfig { path: dir.path().join("data"), ..Default::default() };
        (Arc::new(Store::open(&cfg).unwrap()), dir)
    }

    async fn write_all(w: &mut BlobWriter, data: &[u8]) {
        let mut at = 0u64;
        for c in data.chunks(100_000) {
            let batch = Arc::new(Batch { start: at, chunks: vec![Bytes::copy_from_slice(c)] });
            at = batch.end();
            let p = w.start(batch, |_| {});
            w.finish(p).await.unwrap();
        }
    }

    fn spool_entries(dir: &Path) -> usize {
        let root = dir.join("data").join(super::super::paths::SPOOL_DIR);
        std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| std::fs::read_dir(e.path()).unwrap().count())
            .sum()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn verified_bytes_become_the_blob() {
        let (store, dir) = store();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 239) as u8).collect();
        for alg in [crate::oci::Algorithm::Sha256, crate::oci::Algorithm::Sha512] {
            let d = Digest::of_with(alg, &data);
            let mut w = BlobWriter::new(&store, &d);
            write_all(&mut w, &data).await;
            assert_eq!(w.verify(&d, Some(data.len() as u64)).unwrap(), data.len() as u64);
            assert!(w.commit().await.unwrap(), "committed");
            let h = store.open_blob(&d).await.unwrap().expect("stored");
            assert_eq!(h.size(), data.len() as u64);
        }
        assert_eq!(spool_entries(dir.path()), 0, "no spool file left");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn unnamed_bytes_are_named_by_their_hash() {
        let (store, dir) = store();
        let data = vec![7u8; 250_000];
        let mut w = BlobWriter::unnamed(&store, Algorithm::Sha256, "layer.tar".into());
        write_all(&mut w, &data).await;
        let (d, len) = w.seal().unwrap();
        assert_eq!((d.clone(), len), (Digest::of(&data), 250_000));
        assert!(w.commit().await.unwrap());
        assert_eq!(store.open_blob(&d).await.unwrap().expect("stored").size(), 250_000);
        assert_eq!(spool_entries(dir.path()), 0, "no spool file left");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn wrong_bytes_are_refused_and_leave_nothing() {
        let (store, dir) = store();
        let d = Digest::of(b"the real bytes");
        let mut w = BlobWriter::new(&store, &d);
        write_all(&mut w, b"the evil bytes").await;
        assert!(matches!(w.verify(&d, None), Err(WriteError::DigestMismatch { .. })));
        drop(w);
        let mut w = BlobWriter::new(&store, &d);
        write_all(&mut w, b"the real").await;
        assert!(matches!(w.verify(&d, Some(14)), Err(WriteError::SizeMismatch { got: 8, expected: 14 })));
        drop(w);
        assert!(store.open_blob(&d).await.unwrap().is_none());
        assert_eq!(spool_entries(dir.path()), 0, "thrown away on drop");
    }

    /// An upload's file, continued by writers of several requests (and of
    /// a process that lost the running hash), verified and committed.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_resumed_file_is_continued_verified_and_committed() {
        let (store, dir) = store();
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let upload = dir.path().join("upload-data");
        let open =
            || Arc::new(OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&upload).unwrap());
        let resume = |len, v| BlobWriter::resume(&store, "upload test".into(), upload.clone(), open(), len, v);

        // First request: from nothing, with a running sha256.
        let mut w = resume(0, Some(Verifier::new()));
        write_all(&mut w, &data[..250_000]).await;
        let running = w.take_verifier();
        drop(w);
        assert_eq!(std::fs::metadata(&upload).unwrap().len(), 250_000, "kept on drop: the upload owns it");

        // Second request: continues at 250 000 with the running hash.
        let mut w = resume(250_000, running);
        append_at(&mut w, 250_000, &data[250_000..400_000]).await;
        let running = w.take_verifier();
        assert_eq!(running.as_ref().map(Verifier::len), Some(400_000));
        drop(w);

        // A running hash that does not cover the file is not used.
        let stale = Some(Verifier::new());
        let w = resume(400_000, stale);
        assert!(!w.hashing);
        drop(w);

        // After a restart (no running hash): the rest, then sha512 asked
        // for, so the file is hashed again.
        let mut w = resume(400_000, None);
        append_at(&mut w, 400_000, &data[400_000..]).await;
        let wrong = Digest::of_with(crate::oci::Algorithm::Sha512, b"other bytes");
        assert!(matches!(w.verify_stored(&wrong, None).await, Err(WriteError::DigestMismatch { .. })));
        let mut w = resume(data.len() as u64, None);
        let d = Digest::of_with(crate::oci::Algorithm::Sha512, &data);
        assert_eq!(w.verify_stored(&d, Some(data.len() as u64)).await.unwrap(), data.len() as u64);
        assert!(w.commit().await.unwrap());
        assert!(!upload.exists(), "renamed into the blob");
        let h = store.open_blob(&d).await.unwrap().expect("stored");
        assert_eq!(h.size(), data.len() as u64);

        // The running hash is used when it fits the digest, and only the
        // bytes it covers are committed.
        let mut w = BlobWriter::resume(&store, "t".into(), upload.clone(), open(), 0, Some(Verifier::new()));
        write_all(&mut w, b"abc").await;
        std::fs::OpenOptions::new().append(true).open(&upload).unwrap().write_all(b"trailing").unwrap();
        let d = Digest::of(b"abc");
        assert!(w.verify_stored(&d, Some(3)).await.is_ok());
        assert!(w.commit().await.unwrap());
        assert_eq!(store.open_blob(&d).await.unwrap().expect("stored").size(), 3);
    }

    async fn append_at(w: &mut BlobWriter, start: u64, data: &[u8]) {
        let batch = Arc::new(Batch { start, chunks: vec![Bytes::copy_from_slice(data)] });
        let p = w.start(batch, |_| {});
        w.finish(p).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_full_disk_leaves_a_hash_only_writer() {
        let (store, _dir) = store();
        store.simulate_full_spool();
        let data = vec![3u8; 300_000];
        let d = Digest::of(&data);
        let mut w = BlobWriter::new(&store, &d);
        assert!(w.is_durable(), "the file opened");
        write_all(&mut w, &data).await;
        assert!(!w.is_durable(), "the first failed write turns it hash-only");
        assert_eq!(w.verify(&d, None).unwrap(), 300_000, "still verified");
        assert!(!w.commit().await.unwrap(), "nothing to keep");
        assert!(store.open_blob(&d).await.unwrap().is_none());
    }

    #[test]
    fn a_batch_is_written_whole_whatever_its_chunks() {
        let f = tempfile::tempfile().unwrap();
        // More chunks than one pwritev takes, an empty one, uneven sizes.
        let mut chunks = vec![Bytes::new()];
        let mut expected = Vec::new();
        for i in 0..2500u32 {
            let c: Vec<u8> = (0..(i % 37 + 1)).map(|j| (i + j) as u8).collect();
            expected.extend_from_slice(&c);
            chunks.push(Bytes::from(c));
        }
        write_batch_at(&f, &chunks, 10).unwrap();
        let mut got = vec![0u8; expected.len()];
        f.read_exact_at(&mut got, 10).unwrap();
        assert_eq!(got, expected);
        assert_eq!(f.metadata().unwrap().len(), 10 + expected.len() as u64);
    }
}
