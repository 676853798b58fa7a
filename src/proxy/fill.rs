//! Blob fills: one upstream fetch per digest, streamed to every waiter.
//!
//! A fill downloads a blob into a spool file and, at the same time, serves
//! it to any number of readers straight from that file:
//!
//! ```text
//! upstream ──▶ fill task ──batch k──▶ blocking job: write ──▶ spool file ──pread──▶ reader 1..N
//!               (async)   └─batch k─▶ blocking job: hash         │
//!                                        │ written, verified      ▼
//!                                        └──▶ watch<FillState> ──wakes──▶ readers
//! ```
//!
//! # Threads
//! A fill owns no thread. Its task is async and, while it waits on the
//! network, holds nothing but memory. Each batch of received chunks becomes
//! two short blocking jobs (write, hash) that run side by side, so a batch
//! costs max(write, hash); the task collects the next batch meanwhile and
//! awaits the previous jobs before starting the next pair (writes stay in
//! order, and one fill never has more than two jobs queued). A slow upstream
//! therefore occupies no blocking thread, and request handling (which uses
//! the same pool for blob reads) never waits behind a stalled fill. At most
//! [`MAX_FILLS`] fills talk to upstream at once; more queue for a permit
//! without blocking anything else.
//!
//! # Guarantees
//! - Exactly one upstream request per digest, however many clients ask; the
//!   map entry lives until the blob is committed (or the fill failed), and a
//!   request checks the map before the store, so no request can slip into
//!   the gap between commit and removal and fetch a second time; and a
//!   fill started by a request that checked both just before another fill
//!   committed serves the stored file instead of fetching again.
//! - Readers get bytes as soon as they are on disk, not when the download
//!   ends. The blob's last byte is held back until the whole blob matched
//!   its digest and size, so no response that reaches the end of the blob
//!   can complete with wrong bytes: a corrupt or truncated upstream body
//!   fails those clients' connections instead. (A range that ends earlier is
//!   served as it arrives; the client verifies the blob it assembles.)
//! - The fill runs in its own task: a client that disconnects does not stop
//!   it. If it fails, every reader gets the error and nothing is stored.
//! - A full disk loses no answer: when the spool file cannot be created or
//!   written, the fill passes upstream's bytes through from memory (a
//!   window of [`PASS_THROUGH_WINDOW`]), still holding back the last byte
//!   until the digest matched, and caches nothing. A reader that falls
//!   further behind than the window fails rather than stall the fill.
//! - Nothing touches the disk until upstream answered with a body: a miss
//!   for a digest upstream does not have creates no file.
//! - Memory stays flat: bytes go upstream → page cache → clients, with at
//!   most a few batches per fill held in memory.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::stream::StreamExt;
use tokio::sync::{watch, Notify, Semaphore};

use super::Error;
use crate::oci::Digest;
use crate::storage::spool::{Batch, BlobWriter, Pending};
use crate::storage::{self, ByteStream, Store};
use crate::upstream::{self, BlobBody};

/// Upstream chunks gathered into one batch when they are already waiting.
const BATCH_CHUNKS: usize = 32;
/// Bytes of recently written batches kept in memory for caught-up readers.
const WINDOW_BYTES: u64 = 4 * 1024 * 1024;
/// Bytes kept in memory for readers when the spool file failed (full
/// disk): the only copy of the bytes, so larger, but still bounded.
pub const PASS_THROUGH_WINDOW: u64 = 16 * 1024 * 1024;
/// Fills talking to upstream at once. Fills are I/O-bound and hold no
/// thread while they wait, so the bound is generous: it only caps sockets,
/// spool files and batch memory.
pub const MAX_FILLS: usize = 256;

/// Progress of one fill, broadcast to its readers.
#[derive(Debug, Clone, Default)]
pub struct FillState {
    /// Upstream answered with a body.
    pub started: bool,
    /// Size announced by upstream (`Content-Length`), or the final size.
    pub size: Option<u64>,
    /// Bytes readers may have: in the spool file or in `recent`.
    pub available: u64,
    /// Bytes durably handed to the spool file (readable with pread). Equal
    /// to `available` unless the spool failed and the fill passes through.
    pub durable: u64,
    /// The whole blob matched its digest: every byte may be released.
    pub verified: bool,
    /// The fill failed; readers fail with this.
    pub error: Option<Error>,
    /// The fill is over: the blob is in the store, or it was served without
    /// caching, or the fill failed.
    pub done: bool,
    /// The batches received last, still in memory (about `WINDOW_BYTES`):
    /// readers that keep up take their bytes from here, zero-copy, without
    /// touching the file.
    pub recent: VecDeque<Arc<Batch>>,
}

impl FillState {
    fn push_recent(&mut self, batch: Arc<Batch>, window: u64) {
        let end = batch.end();
        self.available = end;
        self.recent.push_back(batch);
        while self.recent.len() > 1 && end - self.recent[0].end() >= window {
            self.recent.pop_front();
        }
    }
}

/// One in-progress fill.
pub struct Fill {
    id: u64,
    digest: Digest,
    /// The spool file, once upstream answered and the file could be made;
    /// readers share it through positional reads. It stays readable after
    /// the commit renames it.
    file: OnceLock<Arc<std::fs::File>>,
    state: watch::Receiver<FillState>,
    /// The fill's task, so that shutdown can cut it (see [`Fills::abort_all`]).
    task: OnceLock<tokio::task::AbortHandle>,
}

/// All fills in progress, by digest.
pub struct Fills {
    inflight: Mutex<HashMap<Digest, Arc<Fill>>>,
    /// Upstream conversations allowed at once (`MAX_FILLS`).
    permits: Arc<Semaphore>,
    next_id: AtomicU64,
    /// Woken whenever the map becomes empty (the shutdown drain waits on it).
    idle: Notify,
}

impl Default for Fills {
    fn default() -> Self {
        Fills::with_limit(MAX_FILLS)
    }
}

impl Fills {
    pub fn with_limit(max_fills: usize) -> Fills {
        Fills {
            inflight: Mutex::default(),
            permits: Arc::new(Semaphore::new(max_fills)),
            next_id: AtomicU64::new(0),
            idle: Notify::new(),
        }
    }

    pub fn get(&self, d: &Digest) -> Option<Arc<Fill>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).get(d).cloned()
    }

    pub fn len(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once no fill is in progress.
    pub async fn settled(&self) {
        loop {
            // Registered before the check, so a fill that ends in between
            // still wakes it.
            let idle = self.idle.notified();
            if self.is_empty() {
                return;
            }
            idle.await;
        }
    }

    /// Cuts every fill in progress and returns how many there were. A cut
    /// fill's task is dropped where it stands: its [`BlobWriter`] removes
    /// the spool file and nothing reaches the store, its readers fail, and
    /// it leaves the map (so [`Fills::settled`] resolves once all are gone).
    pub fn abort_all(&self) -> usize {
        let map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        for fill in map.values() {
            if let Some(task) = fill.task.get() {
                task.abort();
            }
        }
        map.len()
    }

    /// Joins the fill for `d`, or starts one with `fetch` as its source.
    pub fn join_or_start<F, Fut>(self: &Arc<Self>, d: &Digest, store: &Arc<Store>, fetch: F) -> Arc<Fill>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BlobBody, upstream::Error>> + Send + 'static,
    {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(d) {
            return f.clone();
        }
        let (tx, rx) = watch::channel(FillState::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let fill = Arc::new(Fill { id, digest: d.clone(), file: OnceLock::new(), state: rx, task: OnceLock::new() });
        map.insert(d.clone(), fill.clone());
        let job = Job { fills: self.clone(), store: store.clone(), fill: fill.clone(), state: Arc::new(tx) };
        let task = tokio::spawn(job.run(fetch()));
        let _ = fill.task.set(task.abort_handle());
        fill
    }
}

struct Job {
    fills: Arc<Fills>,
    store: Arc<Store>,
    fill: Arc<Fill>,
    state: Arc<watch::Sender<FillState>>,
}

impl Job {
    async fn run(self, fetch: impl Future<Output = Result<BlobBody, upstream::Error>>) {
        let digest = self.fill.digest.clone();
        if self.serve_stored().await {
            return; // leaves the map on drop
        }
        let result = match self.fills.permits.clone().acquire_owned().await {
            Ok(_permit) => self.download(fetch).await,
            Err(_) => Err(Error::Internal("fill limiter closed".into())),
        };
        match result {
            Ok(writer) => match writer.commit().await {
                Ok(true) => tracing::debug!(%digest, "blob committed"),
                Ok(false) => tracing::warn!(%digest, "blob served without caching (spool unavailable)"),
                Err(e) => tracing::error!(%digest, error = %e, "verified blob could not be committed"),
            },
            Err(Error::Upstream(upstream::Error::NotFound)) => {
                tracing::debug!(%digest, "blob not found upstream");
                self.state.send_modify(|s| s.error = Some(Error::Upstream(upstream::Error::NotFound)));
            }
            Err(e) => {
                tracing::warn!(%digest, error = %e, "blob fill failed; nothing stored");
                self.state.send_modify(|s| s.error = Some(e));
            }
        }
        self.state.send_modify(|s| s.done = true);
        // The job leaves the map only when it is dropped, here: until
        // then, the map (not the store) is where a new request finds this
        // blob.
    }
}

impl Drop for Job {
    /// Leaves the map when the job ends, and also when it is cut
    /// ([`Fills::abort_all`]) or its runtime shuts down.
    fn drop(&mut self) {
        let mut map = self.fills.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.fill.digest).is_some_and(|f| f.id == self.fill.id) {
            map.remove(&self.fill.digest);
        }
        if map.is_empty() {
            self.fills.idle.notify_waiters();
        }
    }
}

impl Job {
    /// Closes the last gap of single-flight: a request that found neither a
    /// fill nor the blob can start its fill just after another fill
    /// committed the blob and left the map. Such a fill serves the stored
    /// file instead of fetching again (when the store has local files).
    async fn serve_stored(&self) -> bool {
        let Ok(Some(storage::BlobHandle::File { file, size })) = self.store.open_blob(&self.fill.digest).await else {
            return false;
        };
        let _ = self.fill.file.set(file);
        self.state.send_modify(|s| {
            s.started = true;
            s.size = Some(size);
            s.available = size;
            s.durable = size;
            s.verified = true;
        });
        true
    }

    /// Streams upstream through a [`BlobWriter`] (into the spool file, or,
    /// when the disk fails, only through memory) and verifies it. Returns
    /// the verified writer, to commit.
    async fn download(
        &self,
        fetch: impl Future<Output = Result<BlobBody, upstream::Error>>,
    ) -> Result<BlobWriter, Error> {
        let body = fetch.await.map_err(Error::Upstream)?;
        let announced = body.size;
        let mut writer = BlobWriter::new(&self.store, &self.fill.digest);
        if let Some(file) = writer.file() {
            let _ = self.fill.file.set(file.clone());
        }
        self.state.send_modify(|s| {
            s.started = true;
            s.size = announced;
        });

        let mut pending: Option<Pending> = None;
        let mut chunks = body.stream.ready_chunks(BATCH_CHUNKS);
        let mut failed = None;
        let mut received = 0u64;
        while let Some(items) = chunks.next().await {
            let mut ok = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Ok(b) if b.is_empty() => {}
                    Ok(b) => ok.push(b),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if !ok.is_empty() {
                let batch = Arc::new(Batch { start: received, chunks: ok });
                received = batch.end();
                // Writes stay in order, and one fill never has more than
                // one batch in the blocking pool.
                if let Some(p) = pending.take() {
                    writer.finish(p).await?;
                }
                pending = Some(self.start(&mut writer, batch));
            }
            if failed.is_some() {
                break;
            }
        }
        if let Some(p) = pending.take() {
            writer.finish(p).await?;
        }
        if let Some(e) = failed {
            return Err(Error::Upstream(e));
        }
        let got = writer.verify(&self.fill.digest, announced).map_err(|e| Error::Corrupt(e.to_string()))?;
        let keep = writer.is_durable();
        self.state.send_modify(|s| {
            s.size = Some(got);
            s.available = got;
            s.verified = true;
            if keep {
                // Every byte is in the file now; the window is only needed
                // when it is the sole copy.
                s.durable = got;
                s.recent.clear();
            }
        });
        Ok(writer)
    }

    /// Hands one batch to the writer and publishes it to readers: once it
    /// is in the spool file, or at once when the writer only hashes (the
    /// window is then the only copy).
    fn start(&self, writer: &mut BlobWriter, batch: Arc<Batch>) -> Pending {
        if !writer.is_durable() {
            self.state.send_modify(|s| s.push_recent(batch.clone(), PASS_THROUGH_WINDOW));
            return writer.start(batch, |_| {});
        }
        let (state, b) = (self.state.clone(), batch.clone());
        writer.start(batch, move |ok| {
            let end = b.end();
            state.send_modify(|s| {
                if ok {
                    s.durable = end;
                    s.push_recent(b, WINDOW_BYTES);
                } else {
                    s.push_recent(b, PASS_THROUGH_WINDOW);
                }
            });
        })
    }
}

impl Fill {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Waits until upstream answered; returns the announced size, if any.
    pub async fn wait_started(&self) -> Result<Option<u64>, Error> {
        let mut rx = self.state.clone();
        let s = rx
            .wait_for(|s| s.started || s.error.is_some())
            .await
            .map_err(|_| Error::Internal("fill vanished".into()))?;
        match &s.error {
            Some(e) => Err(e.clone()),
            None => Ok(s.size),
        }
    }

    /// Waits until the blob is verified; returns its size.
    pub async fn wait_verified(&self) -> Result<u64, Error> {
        let mut rx = self.state.clone();
        let s = rx
            .wait_for(|s| s.verified || s.error.is_some())
            .await
            .map_err(|_| Error::Internal("fill vanished".into()))?;
        match &s.error {
            Some(e) => Err(e.clone()),
            None => Ok(s.available),
        }
    }

    /// Waits until the fill is over, so that a blob it stored is in the
    /// store (verification alone comes just before the commit).
    pub async fn wait_done(&self) -> Result<(), Error> {
        let mut rx = self.state.clone();
        let s = rx.wait_for(|s| s.done).await.map_err(|_| Error::Internal("fill vanished".into()))?;
        match &s.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Streams bytes `start..end` (`end = None`: to the end of the blob) as
    /// they arrive, holding back the blob's final byte until it is verified.
    pub fn stream(self: &Arc<Self>, start: u64, end: Option<u64>) -> ByteStream {
        let fill = self.clone();
        let rx = self.state.clone();
        futures::stream::try_unfold((start, rx), move |(pos, mut rx)| {
            let fill = fill.clone();
            async move {
                let mut closed = false;
                loop {
                    let (stop, durable, finished) = {
                        let s = rx.borrow_and_update();
                        if let Some(e) = &s.error {
                            return Err(io::Error::other(e.clone()));
                        }
                        let released = if s.verified { s.available } else { s.available.saturating_sub(1) };
                        let end = end.or(if s.verified { Some(s.available) } else { s.size });
                        if end.is_some_and(|e| pos >= e) {
                            return Ok(None);
                        }
                        let stop = end.map_or(released, |e| e.min(released));
                        if let Some(chunk) = s.recent.iter().rev().find_map(|b| b.slice(pos, stop)) {
                            let next = pos + chunk.len() as u64;
                            drop(s);
                            return Ok(Some((chunk, (next, rx))));
                        }
                        (stop, s.durable, s.verified)
                    };
                    if pos < stop {
                        let file = match fill.file.get() {
                            Some(f) if pos < durable => f.clone(),
                            _ => {
                                return Err(io::Error::other(
                                    "reader fell behind a blob passed through without caching",
                                ))
                            }
                        };
                        let want = (stop.min(durable) - pos) as usize;
                        let chunk = storage::read_at_async(file, pos, want).await?;
                        let next = pos + chunk.len() as u64;
                        return Ok(Some((chunk, (next, rx))));
                    }
                    if closed || finished {
                        // Nothing more will come: the range lies past the end.
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "fill ended before the requested range",
                        ));
                    }
                    closed = rx.changed().await.is_err();
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, StorageConfig};
    use bytes::Bytes;
    use futures::TryStreamExt;
    use std::time::Duration;
    use tokio::sync::mpsc;

    fn store() -> (Arc<Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StorageConfig { backend: Backend::Memory, spool_path: Some(dir.path().into()), ..Default::default() };
        (Arc::new(Store::open(&cfg).unwrap()), dir)
    }

    /// A blob body fed by the test through a channel, to control timing.
    fn body(size: Option<u64>) -> (mpsc::Sender<Result<Bytes, upstream::Error>>, BlobBody) {
        let (tx, rx) = mpsc::channel(16);
        let stream = tokio_stream(rx);
        (tx, BlobBody { size, stream })
    }

    fn tokio_stream(
        mut rx: mpsc::Receiver<Result<Bytes, upstream::Error>>,
    ) -> futures::stream::BoxStream<'static, Result<Bytes, upstream::Error>> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    async fn collect(s: ByteStream) -> io::Result<Vec<u8>> {
        s.try_fold(Vec::new(), |mut v, b| async move {
            v.extend_from_slice(&b);
            Ok(v)
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn readers_get_bytes_before_the_download_ends() {
        let (store, _d) = store();
        let fills = Arc::new(Fills::default());
        let data = b"hello, streaming world".to_vec();
        let d = Digest::of(&data);
        let (tx, body) = body(Some(data.len() as u64));
        let fill = fills.join_or_start(&d, &store, || async move { Ok(body) });
        tx.send(Ok(Bytes::copy_from_slice(&data[..10]))).await.unwrap();
        assert_eq!(fill.wait_started().await.unwrap(), Some(data.len() as u64));
        let mut s = fill.stream(0, None);
        let first = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("bytes arrive mid-fill")
            .unwrap()
            .unwrap();
        assert_eq!(&first[..], &data[..first.len()]);
        assert!(first.len() < data.len());
        tx.send(Ok(Bytes::copy_from_slice(&data[10..]))).await.unwrap();
        drop(tx);
        let rest = collect(s).await.unwrap();
        assert_eq!([&first[..], &rest[..]].concat(), data);
        // Committed, then gone from the map.
        for _ in 0..100 {
            if fills.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(fills.is_empty());
        assert!(store.open_blob(&d).await.unwrap().is_some());
    }

    /// Regular files under `dir`, at any depth.
    fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else if p.extension().is_none_or(|x| x != "lock") {
                out.push(p);
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn settled_waits_for_fills_and_a_cut_fill_leaves_nothing() {
        let (store, dir) = store();
        let fills = Arc::new(Fills::default());
        tokio::time::timeout(Duration::from_secs(1), fills.settled()).await.expect("no fill: settled at once");

        // One fill that completes, one that upstream never finishes.
        let done = b"finished in time".to_vec();
        let (d1, (tx1, body1)) = (Digest::of(&done), body(Some(done.len() as u64)));
        let (d2, (tx2, body2)) = (Digest::of(b"never finished"), body(Some(14)));
        let f1 = fills.join_or_start(&d1, &store, || async move { Ok(body1) });
        let f2 = fills.join_or_start(&d2, &store, || async move { Ok(body2) });
        tx2.send(Ok(Bytes::from_static(b"never"))).await.unwrap();
        f2.wait_started().await.unwrap();
        let mut reader = f2.stream(0, None);
        // All but the last byte, which waits for the digest to match.
        assert_eq!(&reader.next().await.unwrap().unwrap()[..], b"neve", "bytes in the spool file");
        assert_eq!(files_under(dir.path()).len(), 2, "a spool file each");
        let settled = {
            let fills = fills.clone();
            tokio::spawn(async move { fills.settled().await })
        };
        tx1.send(Ok(Bytes::from(done))).await.unwrap();
        drop(tx1);
        f1.wait_done().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!settled.is_finished(), "one fill still runs");

        assert_eq!(fills.abort_all(), 1);
        tokio::time::timeout(Duration::from_secs(5), settled)
            .await
            .expect("settled once the cut fill is gone")
            .unwrap();
        assert!(fills.is_empty());
        assert!(reader.next().await.is_some_and(|r| r.is_err()), "its reader fails, never ends short and clean");
        assert!(store.open_blob(&d2).await.unwrap().is_none(), "nothing stored");
        assert_eq!(files_under(dir.path()), Vec::<std::path::PathBuf>::new(), "no spool file left");
        assert!(store.open_blob(&d1).await.unwrap().is_some(), "the finished fill was stored");
        drop(tx2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn corrupt_body_fails_readers_and_is_not_stored() {
        let (store, _d) = store();
        let fills = Arc::new(Fills::default());
        let d = Digest::of(b"the real bytes");
        let (tx, body) = body(Some(14));
        let fill = fills.join_or_start(&d, &store, || async move { Ok(body) });
        let reader = tokio::spawn(collect(fill.stream(0, None)));
        tx.send(Ok(Bytes::from_static(b"the evil bytes"))).await.unwrap();
        drop(tx);
        let got = reader.await.unwrap();
        assert!(got.is_err(), "a reader must not complete with wrong bytes: {got:?}");
        assert!(matches!(fill.wait_verified().await, Err(Error::Corrupt(_))));
        assert!(store.open_blob(&d).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn truncated_body_is_an_error() {
        let (store, _d) = store();
        let fills = Arc::new(Fills::default());
        let d = Digest::of(b"0123456789");
        let (tx, body) = body(Some(10));
        let fill = fills.join_or_start(&d, &store, || async move { Ok(body) });
        tx.send(Ok(Bytes::from_static(b"01234"))).await.unwrap();
        drop(tx);
        assert!(collect(fill.stream(0, None)).await.is_err());
        assert!(matches!(fill.wait_verified().await, Err(Error::Corrupt(_))));
        assert!(store.open_blob(&d).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_joins_share_one_source_and_ranges_work() {
        let (store, _d) = store();
        let fills = Arc::new(Fills::default());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let d = Digest::of(&data);
        let (tx, body) = body(Some(data.len() as u64));
        let mut body = Some(body);
        let mut calls = 0;
        let mut readers = Vec::new();
        for i in 0..8u64 {
            let fill = fills.join_or_start(&d, &store, || {
                calls += 1;
                let b = body.take().unwrap();
                async move { Ok(b) }
            });
            readers.push(tokio::spawn(collect(fill.stream(i * 1000, Some(i * 1000 + 2_000_000)))));
        }
        assert_eq!(calls, 1);
        for c in data.chunks(100_000) {
            tx.send(Ok(Bytes::copy_from_slice(c))).await.unwrap();
        }
        drop(tx);
        for (i, r) in readers.into_iter().enumerate() {
            assert_eq!(r.await.unwrap().unwrap(), data[i * 1000..i * 1000 + 2_000_000]);
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn upstream_error_before_body_reaches_every_waiter() {
        let (store, _d) = store();
        let fills = Arc::new(Fills::default());
        let d = Digest::of(b"x");
        let fill = fills.join_or_start(&d, &store, || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(upstream::Error::NotFound)
        });
        let again = fills.join_or_start(&d, &store, || async { panic!("must join, not start") });
        assert_eq!(fill.wait_started().await.unwrap_err(), Error::Upstream(upstream::Error::NotFound));
        assert_eq!(again.wait_started().await.unwrap_err(), Error::Upstream(upstream::Error::NotFound));
    }

    async fn settle(fills: &Fills) {
        for _ in 0..200 {
            if fills.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fill did not finish");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_full_disk_passes_verified_bytes_through_and_caches_nothing() {
        let (store, dir) = store();
        store.simulate_full_spool();
        let fills = Arc::new(Fills::default());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
        let d = Digest::of(&data);
        let (tx, body) = body(Some(data.len() as u64));
        let fill = fills.join_or_start(&d, &store, || async move { Ok(body) });
        let readers: Vec<_> = (0..3).map(|_| tokio::spawn(collect(fill.stream(0, None)))).collect();
        for c in data.chunks(64 * 1024) {
            tx.send(Ok(Bytes::copy_from_slice(c))).await.unwrap();
        }
        drop(tx);
        for r in readers {
            assert_eq!(r.await.unwrap().unwrap(), data, "every reader gets the verified bytes");
        }
        settle(&fills).await;
        assert!(store.open_blob(&d).await.unwrap().is_none(), "nothing is cached");
        let left: Vec<_> = walk_files(dir.path());
        assert!(left.iter().all(|p| p.extension().is_some_and(|e| e == "lock")), "spool files removed: {left:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_corrupt_body_passed_through_still_fails_its_readers() {
        let (store, _dir) = store();
        store.simulate_full_spool();
        let fills = Arc::new(Fills::default());
        let d = Digest::of(b"the real bytes");
        let (tx, body) = body(Some(14));
        let fill = fills.join_or_start(&d, &store, || async move { Ok(body) });
        let reader = tokio::spawn(collect(fill.stream(0, None)));
        tx.send(Ok(Bytes::from_static(b"the evil bytes"))).await.unwrap();
        drop(tx);
        assert!(reader.await.unwrap().is_err());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_miss_upstream_creates_no_spool_file() {
        let (store, dir) = store();
        let fills = Arc::new(Fills::default());
        let d = Digest::of(b"nowhere");
        let fill = fills.join_or_start(&d, &store, || async { Err(upstream::Error::NotFound) });
        assert!(fill.wait_started().await.is_err());
        settle(&fills).await;
        let left: Vec<_> = walk_files(dir.path());
        assert!(left.iter().all(|p| p.extension().is_some_and(|e| e == "lock")), "{left:?}");
    }

    /// Fills beyond the limit wait for a permit; the ones running progress,
    /// and the waiting one starts when a permit frees.
    #[tokio::test(flavor = "multi_thread")]
    async fn fills_beyond_the_limit_queue_without_blocking_the_others() {
        let (store, _d) = store();
        let fills = Arc::new(Fills::with_limit(2));
        let mut senders = Vec::new();
        let mut all = Vec::new();
        for i in 0..3u8 {
            let data = vec![i; 10];
            let d = Digest::of(&data);
            let (tx, body) = body(Some(10));
            senders.push(Some((tx, data)));
            all.push(fills.join_or_start(&d, &store, || async move { Ok(body) }));
        }
        let started = |f: &Arc<Fill>| f.state.borrow().started;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while all.iter().filter(|f| started(f)).count() < 2 {
            assert!(std::time::Instant::now() < deadline, "two fills start at once");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let waiting: Vec<usize> = (0..3).filter(|&i| !started(&all[i])).collect();
        assert_eq!(waiting.len(), 1, "the third fill waits for a permit");
        let running = (0..3).find(|i| !waiting.contains(i)).unwrap();
        let (tx, data) = senders[running].take().unwrap();
        tx.send(Ok(Bytes::from(data))).await.unwrap();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), all[waiting[0]].wait_started())
            .await
            .expect("a freed permit starts it")
            .unwrap();
    }

    fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                out.extend(walk_files(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    /// A fill started for a blob that is already stored (another fill
    /// committed it in the meantime) serves the stored file, never fetching.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_fill_for_a_blob_committed_meanwhile_serves_the_stored_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::StorageConfig { path: dir.path().join("data"), ..Default::default() };
        let store = Arc::new(Store::open(&cfg).unwrap());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 233) as u8).collect();
        let d = Digest::of(&data);
        let fills = Arc::new(Fills::default());
        let (tx, body) = body(Some(data.len() as u64));
        let first = fills.join_or_start(&d, &store, || async move { Ok(body) });
        tx.send(Ok(Bytes::from(data.clone()))).await.unwrap();
        drop(tx);
        first.wait_verified().await.unwrap();
        settle(&fills).await;
        let again = fills.join_or_start(&d, &store, || async { panic!("the stored blob is not fetched again") });
        assert_eq!(again.wait_verified().await.unwrap(), data.len() as u64);
        assert_eq!(collect(again.stream(0, None)).await.unwrap(), data);
        settle(&fills).await;
    }
}
