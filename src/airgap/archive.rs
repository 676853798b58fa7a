//! Reading a bundle archive as it streams: entries in tar order, each
//! announced before its bytes, so the reader decides per entry whether its
//! bytes are wanted.
//!
//! ```text
//! file ─▶ counted ─▶ [gzip | zstd decoder] ─▶ tar ─▶ reader thread ══▶ Archive (async)
//!           │                                        Entry ─▶ (take | skip) ─▶ Chunk… End
//!           └─ bytes of the file consumed (progress)
//! ```
//!
//! Compression is told by the first bytes, not the file name (hauler's
//! `haul.tar.zst` and a renamed `site.tar` both happen). `tar` and the
//! decoders are blocking readers, so one thread runs them and hands
//! entries and 1 MiB chunks over a small bounded channel: the archive is
//! decompressed while the previous chunk is hashed and written, and memory
//! stays a few chunks whatever the archive's size. A skipped entry of a
//! plain tar is seeked over, not read. Bytes short of an entry's announced
//! size are an error (an archive cut off mid-file), never a short entry.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// Bytes per chunk handed over.
const CHUNK: usize = 1024 * 1024;
/// Chunks (or entries) waiting in the channel.
const DEPTH: usize = 4;

/// How the tar stream is wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From an archive's first bytes.
    pub fn sniff(magic: &[u8]) -> Compression {
        match magic {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "tar+gzip",
            Compression::Zstd => "tar+zstd",
        }
    }
}

/// One file (or link) of the archive, announced before its bytes. Call
/// [`Entry::take`] to receive them through [`Archive::chunk`]; dropping it
/// skips them.
#[derive(Debug)]
pub struct Entry {
    /// Relative to the archive root, normalized: no `./`, no `..`.
    pub path: String,
    pub size: u64,
    /// For symbolic and hard links: the path linked to, relative to the
    /// archive root (docker save links duplicate layers).
    pub link: Option<String>,
    decide: Option<oneshot::Sender<bool>>,
}

impl Entry {
    /// Asks for this entry's bytes.
    pub fn take(mut self) {
        if let Some(d) = self.decide.take() {
            let _ = d.send(true);
        }
    }
}

enum Event {
    Entry(Entry),
    Chunk(Bytes),
    End,
}

/// An archive being read (see the module doc).
pub struct Archive {
    events: mpsc::Receiver<io::Result<Event>>,
    pub compression: Compression,
    /// Size of the archive file.
    pub size: u64,
    consumed: Arc<AtomicU64>,
}

impl Archive {
    /// Opens `path` and starts reading it on a thread of its own.
    pub fn open(path: &Path) -> io::Result<Archive> {
        let mut file = File::open(path)?;
        let size = file.metadata()?.len();
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut file, &mut magic)?;
        file.seek(SeekFrom::Start(0))?;
        let compression = Compression::sniff(&magic[..n]);
        let consumed = Arc::new(AtomicU64::new(0));
        let counted = Counted { inner: file, pos: consumed.clone() };
        let (tx, events) = mpsc::channel(DEPTH);
        let label = path.display().to_string();
        std::thread::Builder::new().name("bundle-reader".into()).spawn(move || {
            let result = match compression {
                Compression::None => {
                    let mut a = tar::Archive::new(io::BufReader::with_capacity(256 * 1024, counted));
                    a.entries_with_seek().and_then(|e| pump(e, &tx))
                }
                Compression::Gzip => {
                    let mut a = tar::Archive::new(flate2::read::MultiGzDecoder::new(counted));
                    a.entries().and_then(|e| pump(e, &tx))
                }
                Compression::Zstd => zstd::stream::read::Decoder::new(counted).and_then(|d| {
                    let mut a = tar::Archive::new(d);
                    a.entries().and_then(|e| pump(e, &tx))
                }),
            };
            if let Err(e) = result {
                tracing::debug!(archive = %label, error = %e, "archive reading stopped");
                let _ = tx.blocking_send(Err(e));
            }
        })?;
        Ok(Archive { events, compression, size, consumed })
    }

    /// Bytes of the archive file read so far (for progress).
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    /// The next entry; `None` at the end of the archive. The previous
    /// entry's bytes, if taken, must have been read to their end.
    pub async fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        match self.events.recv().await {
            None => Ok(None),
            Some(Ok(Event::Entry(e))) => Ok(Some(e)),
            Some(Ok(_)) => Err(io::Error::other("archive reader out of step: bytes where an entry was expected")),
            Some(Err(e)) => Err(e),
        }
    }

    /// The next chunk of a taken entry; `None` after its last byte.
    pub async fn chunk(&mut self) -> io::Result<Option<Bytes>> {
        match self.events.recv().await {
            Some(Ok(Event::Chunk(b))) => Ok(Some(b)),
            Some(Ok(Event::End)) => Ok(None),
            Some(Ok(Event::Entry(_))) => Err(io::Error::other("archive reader out of step: an entry inside an entry")),
            Some(Err(e)) => Err(e),
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive reader stopped inside an entry")),
        }
    }

    /// A whole small entry, taken; more than `limit` bytes is an error (and
    /// the entry is skipped).
    pub async fn read_small(&mut self, entry: Entry, limit: u64) -> io::Result<Bytes> {
        if entry.size > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is {} bytes; at most {limit} are read", entry.path, entry.size),
            ));
        }
        entry.take();
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            out.extend_from_slice(&c);
        }
        Ok(out.into())
    }
}

/// The reader thread: announces each file or link, waits for the verdict,
/// sends a taken entry's bytes. Returns when the archive ends or the
/// receiving side is gone.
fn pump<R: Read>(entries: tar::Entries<'_, R>, tx: &mpsc::Sender<io::Result<Event>>) -> io::Result<()> {
    for entry in entries {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let raw = entry.path()?.into_owned();
        let Some(path) = normalize(&raw) else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("unsafe path {raw:?} in the archive")));
        };
        let link = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => None,
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let Some(target) = entry.link_name()? else { continue };
                // A symbolic link is relative to its own directory, a hard
                // link to the archive root.
                let base = match kind {
                    tar::EntryType::Symlink => Path::new(&path).parent().unwrap_or(Path::new("")).join(&target),
                    _ => target.into_owned(),
                };
                match normalize(&base) {
                    Some(t) => Some(t),
                    None => continue,
                }
            }
            _ => continue, // directories, devices, tar's own headers
        };
        let size = if link.is_some() { 0 } else { entry.size() };
        let (decide, verdict) = oneshot::channel();
        let announced = Entry { path: path.clone(), size, link, decide: Some(decide) };
        if tx.blocking_send(Ok(Event::Entry(announced))).is_err() {
            return Ok(());
        }
        if !verdict.blocking_recv().unwrap_or(false) {
            continue;
        }
        let mut left = size;
        while left > 0 {
            let mut buf = vec![0u8; (left.min(CHUNK as u64)) as usize];
            let n = read_up_to(&mut entry, &mut buf)?;
            if n < buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the archive ends inside {path}: {} of {size} bytes read", size - left + n as u64),
                ));
            }
            left -= n as u64;
            if tx.blocking_send(Ok(Event::Chunk(Bytes::from(buf)))).is_err() {
                return Ok(());
            }
        }
        if tx.blocking_send(Ok(Event::End)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Fills `buf` unless the reader ends first; the bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// An archive path relative to its root, `/`-separated, with `.` and
/// `..` resolved; `None` for one that climbs out of the root.
pub fn normalize(p: &Path) -> Option<String> {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop()?;
            }
        }
    }
    (!out.is_empty()).then(|| out.join("/"))
}

/// The file, counting what is read (and seeked over) for progress.
struct Counted {
    inner: File,
    pos: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Seek for Counted {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let at = self.inner.seek(to)?;
        self.pos.store(at, Ordering::Relaxed);
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_told_by_magic_bytes() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(Compression::sniff(b"oci-"), Compression::None);
        assert_eq!(Compression::sniff(b""), Compression::None);
    }

    #[test]
    fn paths_are_normalized_inside_the_root() {
        let n = |p: &str| normalize(Path::new(p));
        assert_eq!(n("./blobs/sha256/ab").as_deref(), Some("blobs/sha256/ab"));
        assert_eq!(n("/index.json").as_deref(), Some("index.json"));
        assert_eq!(n("abc/../def/layer.tar").as_deref(), Some("def/layer.tar"));
        assert_eq!(n("../etc/passwd"), None);
        assert_eq!(n("."), None);
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        b.append_link(&mut h, "b/layer.tar", "../a/layer.tar").unwrap();
        b.into_inner().unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn entries_stream_in_order_whatever_the_compression() {
        let big: Vec<u8> = (0..(CHUNK * 2 + 5)).map(|i| (i % 253) as u8).collect();
        let plain = tar_of(&[("./a/layer.tar", &big), ("skipped", b"xyz"), ("index.json", b"{}")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes, want) in
            [("p", &plain, Compression::None), ("g", &gz, Compression::Gzip), ("z", &zst, Compression::Zstd)]
        {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let mut a = Archive::open(&path).unwrap();
            assert_eq!(a.compression, want);
            let e = a.next_entry().await.unwrap().unwrap();
            assert_eq!((e.path.as_str(), e.size), ("a/layer.tar", big.len() as u64));
            e.take();
            let mut got = Vec::new();
            while let Some(c) = a.chunk().await.unwrap() {
                got.extend_from_slice(&c);
            }
            assert!(got == big, "{name}: the bytes come through");
            let e = a.next_entry().await.unwrap().unwrap();
            assert_eq!(e.path, "skipped");
            drop(e);
            let e = a.next_entry().await.unwrap().unwrap();
            assert_eq!(&a.read_small(e, 10).await.unwrap()[..], b"{}");
            let e = a.next_entry().await.unwrap().unwrap();
            assert_eq!((e.path.as_str(), e.link.as_deref()), ("b/layer.tar", Some("a/layer.tar")));
            drop(e);
            assert!(a.next_entry().await.unwrap().is_none());
            assert_eq!(a.consumed(), bytes.len() as u64, "{name}: all of the file read");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_archive_cut_inside_an_entry_is_an_error() {
        let big = vec![1u8; 100_000];
        let plain = tar_of(&[("blob", &big)]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.tar");
        std::fs::write(&path, &plain[..60_000]).unwrap();
        let mut a = Archive::open(&path).unwrap();
        let e = a.next_entry().await.unwrap().unwrap();
        e.take();
        let err = loop {
            match a.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("a cut entry must not end normally"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        assert!(err.to_string().contains("inside blob"), "{err}");
    }
}
