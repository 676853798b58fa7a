//! Positional reads of blob files, with memory bounded by design.
//!
//! Every byte a client receives from a stored blob (or from a fill's spool
//! file) is read here, into a buffer that then sits in the connection's
//! write queue until the client's socket takes it. A client that stops
//! reading therefore pins exactly one buffer, so the buffer size *is* the
//! per-stream memory cost. Two sizes serve two needs:
//!
//! - **Large buffers** (1 MiB) make a fast single client fast: one blocking
//!   hop and one `pread` per MiB. They come from one process-wide pool of
//!   [`LARGE_BUFFERS`] that are allocated once and reused forever, so they
//!   never fragment the heap or fault in fresh pages.
//! - **Small buffers** ([`SMALL_READ`]) are used when the pool is empty,
//!   i.e. when many streams are open at once.
//!
//! hyper asks a body for its next chunk while less than its buffer limit
//! (32 KiB, see `server`) is queued, so a stalled connection holds about
//! that limit plus one read. Memory for blob streaming is therefore at most
//! `LARGE_BUFFERS × 1 MiB + streams × (32 KiB + SMALL_READ)`, whoever the
//! clients are: 1,000 stalled readers cost tens of MiB, not 1 GiB. (The
//! README's behaviour section has the measured figures.)
//! (Measured figures are in the README's behaviour section.)

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::StreamExt;

use super::ByteStream;

/// Size of a pooled read: large enough that the per-read overhead (a
/// blocking-pool hop) vanishes next to the copy.
pub const LARGE_READ: usize = 1024 * 1024;
/// Pooled large buffers, process-wide: the memory a handful of fast
/// clients may use beyond the per-stream minimum.
pub const LARGE_BUFFERS: usize = 16;
/// Read size when the pool is empty: the per-stream floor.
pub const SMALL_READ: usize = 16 * 1024;

/// The process-wide pool of large read buffers.
static POOL: Pool = Pool::new();

struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Large buffers allocated so far (free or lent); never above
    /// `LARGE_BUFFERS`.
    lent: Mutex<usize>,
}

impl Pool {
    const fn new() -> Pool {
        Pool { free: Mutex::new(Vec::new()), lent: Mutex::new(0) }
    }

    /// A large buffer (empty, capacity `LARGE_READ`), if the budget allows.
    fn take(&'static self) -> Option<Vec<u8>> {
        if let Some(b) = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Some(b);
        }
        let mut n = self.lent.lock().unwrap_or_else(|p| p.into_inner());
        if *n >= LARGE_BUFFERS {
            return None;
        }
        *n += 1;
        Some(Vec::with_capacity(LARGE_READ))
    }

    /// Whether a large buffer could be had right now (a hint: another
    /// stream may take it first, and `take` then answers `None`).
    fn has_large(&self) -> bool {
        !self.free.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
            || *self.lent.lock().unwrap_or_else(|p| p.into_inner()) < LARGE_BUFFERS
    }

    fn give_back(&self, mut b: Vec<u8>) {
        b.clear();
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(b);
    }
}

/// A filled large buffer on its way to a client; returns to its pool when
/// the last `Bytes` slice of it is dropped (after the socket took it).
struct Lent(Vec<u8>, &'static Pool);

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.1.give_back(std::mem::take(&mut self.0));
    }
}

/// Reads up to `max` bytes at `offset` (exactly `min(max, read size)`; a
/// file shorter than that is an error, never a silently short body).
/// Blocking: call from the blocking pool.
pub fn read_at(file: &std::fs::File, offset: u64, max: usize) -> io::Result<Bytes> {
    read_with(&POOL, file, offset, max)
}

fn read_with(pool: &'static Pool, file: &std::fs::File, offset: u64, max: usize) -> io::Result<Bytes> {
    if max > SMALL_READ {
        if let Some(mut buf) = pool.take() {
            let want = max.min(LARGE_READ);
            return match fill_exact(file, offset, want, &mut buf) {
                Ok(()) => Ok(Bytes::from_owner(Lent(buf, pool))),
                Err(e) => {
                    pool.give_back(buf);
                    Err(e)
                }
            };
        }
    }
    // Small reads go into a fresh buffer of exactly their size.
    let want = max.min(SMALL_READ);
    let mut buf = Vec::with_capacity(want);
    fill_exact(file, offset, want, &mut buf)?;
    Ok(Bytes::from(buf))
}

/// Fills `buf` up to exactly `len` bytes with the file's bytes from
/// `offset` on (`buf` may already hold the first part, from a
/// [`try_fill_cached`]).
///
/// The kernel writes straight into the buffer's spare capacity: zeroing it
/// first would cost a memset per byte served.
fn fill_exact(file: &std::fs::File, offset: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    buf.reserve_exact(len - buf.len());
    while buf.len() < len {
        let filled = buf.len();
        let at = offset + filled as u64;
        let spare = &mut buf.spare_capacity_mut()[..len - filled];
        // SAFETY: pread writes at most `spare.len()` bytes into memory we own
        // (the buffer's spare capacity) and reports how many it wrote; only
        // those bytes are marked initialised below.
        let n = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at as libc::off_t) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shorter than expected"));
        }
        // SAFETY: the kernel initialised exactly `n` more bytes.
        unsafe { buf.set_len(filled + n as usize) };
    }
    Ok(())
}

/// Reads what the page cache already holds of `len` bytes at `offset` into
/// `buf`, without ever waiting for the disk (`RWF_NOWAIT`): a copy of a few
/// microseconds, cheap enough for the async thread. Returns whether `buf`
/// holds all `len` bytes; on `false` the rest must be read from the
/// blocking pool (not cached, or a filesystem without `RWF_NOWAIT`).
#[cfg(target_os = "linux")]
fn try_fill_cached(file: &std::fs::File, offset: u64, len: usize, buf: &mut Vec<u8>) -> bool {
    use std::os::fd::AsRawFd;
    buf.reserve_exact(len - buf.len());
    while buf.len() < len {
        let filled = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..len - filled];
        let iov = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() };
        // SAFETY: preadv2 writes at most `iov_len` bytes into memory we own
        // (the buffer's spare capacity) and reports how many it wrote; only
        // those bytes are marked initialised below.
        let n = unsafe {
            libc::preadv2(file.as_raw_fd(), &iov, 1, (offset + filled as u64) as libc::off_t, libc::RWF_NOWAIT)
        };
        if n <= 0 {
            return false; // EAGAIN (not cached), unsupported, EOF or error: the blocking path decides
        }
        // SAFETY: the kernel initialised exactly `n` more bytes.
        unsafe { buf.set_len(filled + n as usize) };
    }
    true
}

#[cfg(not(target_os = "linux"))]
fn try_fill_cached(_: &std::fs::File, _: u64, _: usize, _: &mut Vec<u8>) -> bool {
    false
}

/// Reads up to `max` bytes at `offset`. Small reads (many streams at once)
/// are served from the page cache on the calling thread when they can be:
/// with hundreds of readers, a blocking-pool hop per 16 KiB costs more than
/// the copy itself (measured: 256 readers of a 64 MiB blob took 27 s with
/// a hop per read, against 15 s for the 1 MiB reads of earlier builds).
/// Everything else, and whatever is not cached, goes to the blocking pool.
pub async fn read_at_async(file: Arc<std::fs::File>, offset: u64, max: usize) -> io::Result<Bytes> {
    if max <= SMALL_READ || !POOL.has_large() {
        let want = max.min(SMALL_READ);
        let mut buf = Vec::with_capacity(want);
        if try_fill_cached(&file, offset, want, &mut buf) {
            return Ok(Bytes::from(buf));
        }
        return tokio::task::spawn_blocking(move || {
            fill_exact(&file, offset, want, &mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(io::Error::other)?;
    }
    tokio::task::spawn_blocking(move || read_at(&file, offset, max)).await.map_err(io::Error::other)?
}

/// Streams `start..end` of a file with positional reads, so any number of
/// readers can share one file handle (a spool file still being written
/// included: see `proxy::fill`). Reads happen only when the client's
/// connection asks for more, so a stalled client holds one buffer.
pub fn file_range(file: Arc<std::fs::File>, start: u64, end: u64) -> ByteStream {
    futures::stream::try_unfold(start, move |pos| {
        let file = file.clone();
        async move {
            if pos >= end {
                return Ok(None);
            }
            let max = (end - pos).min(LARGE_READ as u64) as usize;
            let chunk = read_at_async(file, pos, max).await?;
            let next = pos + chunk.len() as u64;
            Ok(Some((chunk, next)))
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(data: &[u8]) -> (tempfile::NamedTempFile, std::fs::File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data).unwrap();
        let r = std::fs::File::open(f.path()).unwrap();
        (f, r)
    }

    #[test]
    fn reads_are_exact_and_short_files_are_errors() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (_t, f) = file_of(&data);
        let big = read_at(&f, 10, 2_000_000).unwrap();
        assert!(big.len() == LARGE_READ || big.len() == SMALL_READ, "{}", big.len());
        assert_eq!(&big[..], &data[10..10 + big.len()]);
        let small = read_at(&f, 5, 100).unwrap();
        assert_eq!(&small[..], &data[5..105]);
        let err = read_at(&f, data.len() as u64 - 10, 100).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn the_pool_is_bounded_and_buffers_come_back() {
        static TEST_POOL: Pool = Pool::new();
        let data = vec![7u8; 2 * LARGE_READ];
        let (_t, f) = file_of(&data);
        // Hold more reads than the pool has: the extra ones are small.
        let held: Vec<Bytes> =
            (0..LARGE_BUFFERS + 4).map(|_| read_with(&TEST_POOL, &f, 0, 2 * LARGE_READ).unwrap()).collect();
        let large = held.iter().filter(|b| b.len() == LARGE_READ).count();
        assert_eq!(large, LARGE_BUFFERS, "the whole budget is used, and no more");
        assert_eq!(held.iter().filter(|b| b.len() == SMALL_READ).count(), 4, "reads beyond the budget are small");
        // A slice keeps its buffer lent until the slice is gone.
        let slice = held[0].slice(10..20);
        drop(held);
        assert_eq!(TEST_POOL.free.lock().unwrap().len(), LARGE_BUFFERS - 1);
        drop(slice);
        assert_eq!(TEST_POOL.free.lock().unwrap().len(), LARGE_BUFFERS);
        // Returned buffers are lent again, without allocating more.
        let again = read_with(&TEST_POOL, &f, 0, 2 * LARGE_READ).unwrap();
        assert_eq!(again.len(), LARGE_READ);
        assert_eq!(*TEST_POOL.lent.lock().unwrap(), LARGE_BUFFERS);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn file_range_streams_exact_bytes() {
        let data: Vec<u8> = (0..(LARGE_READ * 2 + 17)).map(|i| (i % 249) as u8).collect();
        let (_t, f) = file_of(&data);
        let f = Arc::new(f);
        let got: Vec<u8> = file_range(f.clone(), 3, data.len() as u64 - 2).map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(got, data[3..data.len() - 2]);
        assert!(file_range(f, 9, 9).next().await.is_none());
    }
}
