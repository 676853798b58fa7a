//! Blob fills: one upstream fetch per digest, streamed to every waiter.
//!
//! A fill downloads a blob into a spool file and, at the same time, serves
//! it to any number of readers straight from that file:
//!
//! ```text
//! upstream ──▶ fill task ──batches──▶ writer thread ──▶ spool file ──pread──▶ reader 1..N
//!               (async)     (mpsc)    (hash + write)        │
//!                                        │ written, verified ▼
//!                                        └──▶ watch<FillState> ──wakes──▶ readers
//! ```
//!
//! - Exactly one upstream request per digest, however many clients ask; the
//!   map entry lives until the blob is committed (or the fill failed), and a
//!   request checks the map before the store, so no request can slip into
//!   the gap between commit and removal and fetch a second time.
//! - Readers get bytes as soon as they are on disk, not when the download
//!   ends. The blob's last byte is held back until the whole blob matched
//!   its digest and size, so no response that reaches the end of the blob
//!   can complete with wrong bytes: a corrupt or truncated upstream body
//!   fails those clients' connections instead. (A range that ends earlier is
//!   served as it arrives; the client verifies the blob it assembles.)
//! - The fill runs in its own task: a client that disconnects does not stop
//!   it. If it fails, every reader gets the error and nothing is stored.
//! - Memory stays flat: bytes go upstream → page cache → clients, with at
//!   most a few in-flight batches held in memory.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::StreamExt;
use tokio::sync::{mpsc, watch};

use super::Error;
use crate::oci::{Digest, Verifier};
use crate::storage::{self, ByteStream, Store};
use crate::upstream::{self, BlobBody};

/// Upstream chunks gathered into one write when they are already waiting.
const BATCH_CHUNKS: usize = 32;
/// Bytes of recently written batches kept in memory for readers.
const WINDOW_BYTES: u64 = 4 * 1024 * 1024;
/// Batches queued between the network and the writer thread.
const QUEUED_BATCHES: usize = 2;

/// Progress of one fill, broadcast to its readers.
#[derive(Debug, Clone, Default)]
pub struct FillState {
    /// Upstream answered with a body.
    pub started: bool,
    /// Size announced by upstream (`Content-Length`), or the final size.
    pub size: Option<u64>,
    /// Bytes durably handed to the spool file (readable with pread).
    pub written: u64,
    /// The whole blob matched its digest: every byte may be released.
    pub verified: bool,
    /// The fill failed; readers fail with this.
    pub error: Option<Error>,
    /// The batches written last, still in memory (about `WINDOW_BYTES`):
    /// readers that keep up take their bytes from here, zero-copy, without
    /// touching the file.
    pub recent: std::collections::VecDeque<Arc<Batch>>,
}

/// Chunks written to the spool file at offset `start`, kept for caught-up
/// readers (zero-copy: they get slices of the very buffers upstream filled).
#[derive(Debug)]
pub struct Batch {
    pub start: u64,
    pub chunks: Vec<Bytes>,
}

impl Batch {
    /// Offset just past this batch.
    fn end(&self) -> u64 {
        self.start + self.chunks.iter().map(|c| c.len() as u64).sum::<u64>()
    }
    /// The bytes at `pos..stop` that lie in one chunk of this batch, if `pos`
    /// falls inside the batch.
    fn slice(&self, pos: u64, stop: u64) -> Option<Bytes> {
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

/// One in-progress fill.
pub struct Fill {
    digest: Digest,
    /// The spool file; readers share it through positional reads. It stays
    /// readable after the commit renames it.
    file: Arc<std::fs::File>,
    state: watch::Receiver<FillState>,
}

/// All fills in progress, by digest.
#[derive(Default)]
pub struct Fills {
    inflight: Mutex<HashMap<Digest, Arc<Fill>>>,
}

impl Fills {
    pub fn get(&self, d: &Digest) -> Option<Arc<Fill>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).get(d).cloned()
    }

    pub fn len(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins the fill for `d`, or starts one with `fetch` as its source.
    pub fn join_or_start<F, Fut>(self: &Arc<Self>, d: &Digest, store: &Arc<Store>, fetch: F) -> Result<Arc<Fill>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BlobBody, upstream::Error>> + Send + 'static,
    {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(d) {
            return Ok(f.clone());
        }
        let (spool, file) =
            store.create_spool().map_err(|e| Error::Storage(format!("cannot create spool file: {e}")))?;
        let file = Arc::new(file);
        let (tx, rx) = watch::channel(FillState::default());
        let fill = Arc::new(Fill { digest: d.clone(), file: file.clone(), state: rx });
        map.insert(d.clone(), fill.clone());
        let job =
            Job { fills: self.clone(), store: store.clone(), digest: d.clone(), spool, file, state: Arc::new(tx) };
        tokio::spawn(job.run(fetch()));
        Ok(fill)
    }
}

struct Job {
    fills: Arc<Fills>,
    store: Arc<Store>,
    digest: Digest,
    spool: PathBuf,
    file: Arc<std::fs::File>,
    state: Arc<watch::Sender<FillState>>,
}

impl Job {
    async fn run(self, fetch: impl Future<Output = Result<BlobBody, upstream::Error>>) {
        let result = self.download(fetch).await;
        match result {
            Ok(()) => {
                let (store, d, spool, file) =
                    (self.store.clone(), self.digest.clone(), self.spool.clone(), self.file.clone());
                let committed =
                    tokio::task::spawn_blocking(move || store.commit_spool_blocking(&d, &spool, &file)).await;
                match committed {
                    Ok(Ok(())) => tracing::debug!(digest = %self.digest, "blob committed"),
                    Ok(Err(e)) => {
                        tracing::error!(digest = %self.digest, error = %e, "verified blob could not be committed")
                    }
                    Err(e) => {
                        tracing::error!(digest = %self.digest, error = %e, "commit task failed")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, "blob fill failed; nothing stored");
                self.state.send_modify(|s| s.error = Some(e));
            }
        }
        let _ = std::fs::remove_file(&self.spool);
        // Removed only now: until here, the map (not the store) is where a
        // new request finds this blob.
        let mut map = self.fills.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.digest).is_some_and(|f| Arc::ptr_eq(&f.file, &self.file)) {
            map.remove(&self.digest);
        }
    }

    /// Streams upstream into the spool file and verifies it.
    async fn download(&self, fetch: impl Future<Output = Result<BlobBody, upstream::Error>>) -> Result<(), Error> {
        let body = fetch.await.map_err(Error::Upstream)?;
        let announced = body.size;
        self.state.send_modify(|s| {
            s.started = true;
            s.size = announced;
        });

        // Writing and hashing run on two blocking threads, side by side, so
        // a batch costs max(write, hash) rather than their sum, while the
        // network side keeps reading. Both see the same shared batches.
        let (to_writer, mut writer_rx) = mpsc::channel::<Arc<Batch>>(QUEUED_BATCHES);
        let (to_hasher, mut hasher_rx) = mpsc::channel::<Arc<Batch>>(QUEUED_BATCHES);
        let (file, state) = (self.file.clone(), self.state.clone());
        let writer = tokio::task::spawn_blocking(move || -> io::Result<()> {
            while let Some(batch) = writer_rx.blocking_recv() {
                for chunk in &batch.chunks {
                    (&*file).write_all(chunk)?;
                }
                let n = batch.end();
                state.send_modify(|s| {
                    s.written = n;
                    s.recent.push_back(batch);
                    while s.recent.len() > 1 && n - s.recent[0].end() >= WINDOW_BYTES {
                        s.recent.pop_front();
                    }
                });
            }
            Ok(())
        });
        let hasher = tokio::task::spawn_blocking(move || {
            let mut verifier = Verifier::new();
            while let Some(batch) = hasher_rx.blocking_recv() {
                for chunk in &batch.chunks {
                    verifier.update(chunk);
                }
            }
            verifier
        });

        let mut chunks = body.stream.ready_chunks(BATCH_CHUNKS);
        let mut failed = None;
        let mut received = 0u64;
        while let Some(items) = chunks.next().await {
            let mut ok = Vec::with_capacity(items.len());
            for item in items {
                match item {
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
                if to_hasher.send(batch.clone()).await.is_err() || to_writer.send(batch).await.is_err() {
                    break; // a worker failed; its error is reported below
                }
            }
            if failed.is_some() {
                break;
            }
        }
        drop((to_writer, to_hasher));
        writer
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| Error::Storage(format!("writing spool file: {e}")))?;
        let verifier = hasher.await.map_err(|e| Error::Internal(e.to_string()))?;
        if let Some(e) = failed {
            return Err(Error::Upstream(e));
        }
        let got = verifier.len();
        if announced.is_some_and(|n| n != got) {
            return Err(Error::Corrupt(format!("upstream sent {got} bytes of {} announced", announced.unwrap_or(0))));
        }
        let actual = verifier.finish();
        if actual != self.digest {
            return Err(Error::Corrupt(format!("upstream body hashes to {actual}, not {}", self.digest)));
        }
        self.state.send_modify(|s| {
            s.size = Some(got);
            s.written = got;
            s.verified = true;
            s.recent.clear();
        });
        Ok(())
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
            None => Ok(s.written),
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
                    let (stop, finished) = {
                        let s = rx.borrow_and_update();
                        if let Some(e) = &s.error {
                            return Err(io::Error::other(e.clone()));
                        }
                        let released = if s.verified { s.written } else { s.written.saturating_sub(1) };
                        let end = end.or(if s.verified { Some(s.written) } else { s.size });
                        if end.is_some_and(|e| pos >= e) {
                            return Ok(None);
                        }
                        let stop = end.map_or(released, |e| e.min(released));
                        if let Some(chunk) = s.recent.iter().rev().find_map(|b| b.slice(pos, stop)) {
                            let next = pos + chunk.len() as u64;
                            drop(s);
                            return Ok(Some((chunk, (next, rx))));
                        }
                        (stop, s.verified)
                    };
                    if pos < stop {
                        let want = (stop - pos).min(storage::READ_CHUNK as u64) as usize;
                        let file = fill.file.clone();
                        let chunk = tokio::task::spawn_blocking(move || storage::read_exact_at(&file, pos, want))
                            .await
                            .map_err(io::Error::other)??;
                        return Ok(Some((chunk, (pos + want as u64, rx))));
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
    use futures::TryStreamExt;
    use std::time::Duration;

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

    #[tokio::test(flavor = "multi_thread")]
    async fn readers_get_bytes_before_the_download_ends() {
        let (store, _d) = store();
        let fills = Arc::new(Fills::default());
        let data = b"hello, streaming world".to_vec();
        let d = Digest::of(&data);
        let (tx, body) = body(Some(data.len() as u64));
        let fill = fills.join_or_start(&d, &store, || async move { Ok(body) }).unwrap();
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

    #[tokio::test(flavor = "multi_thread")]
    async fn corrupt_body_fails_readers_and_is_not_stored() {
        let (store, _d) = store();
        let fills = Arc::new(Fills::default());
        let d = Digest::of(b"the real bytes");
        let (tx, body) = body(Some(14));
        let fill = fills.join_or_start(&d, &store, || async move { Ok(body) }).unwrap();
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
        let fill = fills.join_or_start(&d, &store, || async move { Ok(body) }).unwrap();
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
            let fill = fills
                .join_or_start(&d, &store, || {
                    calls += 1;
                    let b = body.take().unwrap();
                    async move { Ok(b) }
                })
                .unwrap();
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
        let fill = fills
            .join_or_start(&d, &store, || async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(upstream::Error::NotFound)
            })
            .unwrap();
        let again = fills.join_or_start(&d, &store, || async { panic!("must join, not start") }).unwrap();
        assert_eq!(fill.wait_started().await.unwrap_err(), Error::Upstream(upstream::Error::NotFound));
        assert_eq!(again.wait_started().await.unwrap_err(), Error::Upstream(upstream::Error::NotFound));
    }
}
