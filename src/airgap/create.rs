//! `bundle create`: resolve every image through the proxy, exactly as a
//! pull through `serve` would (published, then pinned, then cached
//! content, then the upstreams), then stream it all into one archive.
//!
//! ```text
//! ImageRef ──route──▶ RepoKey ──Proxy::manifest──▶ index ──children (--platform)──▶ manifests ──▶ configs, layers
//!                                                   └─ referrers, cosign sha256-<hex>.sig|.att|.sbom ──▶ same walk
//!             all images ──▶ Lock (minus --since base) ──▶ site.tar.partial ──rename──▶ site.tar, site.lock
//! ```
//!
//! # Guarantees
//! - Manifests travel byte-exact: an index is always carried as stored,
//!   even when `--platform` leaves some of its children behind. A pull of
//!   a left-out platform from a site loaded with this bundle gets
//!   `MANIFEST_UNKNOWN` for that child's digest (a sealed site asks no
//!   upstream for it); the lock lists each left-out child and its platform.
//! - Nothing is written until every image resolved: all problems (bad
//!   references, unknown images, unreachable upstreams) are reported
//!   together, one line each, and no archive is left behind.
//! - Memory stays flat: blobs stream from the proxy into the tar (the size
//!   comes from the descriptor), hashed on the way; bytes that do not match
//!   their digest and size fail the bundle. The archive is written as
//!   `<output>.partial` and renamed when complete and synced.
//!   (Blobs fetched from upstream are also kept in the mirror's store, as a
//!   pull through `serve` would keep them.)

use std::collections::{BTreeSet, HashSet};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures::stream::{self, StreamExt};

use super::bundle::{self, ArchiveWriter, IndexEntry};
use super::images::{ImageRef, Platform};
use super::lock::{self, Content, Lock, LockedImage};
use super::progress::{human_bytes, ImageProgress, Progress};
use super::resolve::{describe, Resolved, Resolver};
use super::BundleError;
use crate::oci::manifest::Descriptor;
use crate::oci::{Digest, RepoKey};
use crate::proxy::{self, Proxy};
use crate::storage::{ByteStream, StoredManifest};

/// Blob downloads kept going ahead of the writer.
const PREFETCH: usize = 3;
/// Bytes buffered between the tar and the output file.
const WRITE_BUFFER: usize = 1024 * 1024;

/// What to bundle, parsed at the edge.
#[derive(Debug, Clone)]
pub struct Request {
    pub output: PathBuf,
    pub images: Vec<ImageRef>,
    /// Empty: every platform.
    pub platforms: Vec<Platform>,
    /// `--since OLD.lock`.
    pub since: Option<PathBuf>,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub archive: PathBuf,
    pub lock: PathBuf,
    /// References named in `index.json`, attachments included.
    pub images: usize,
    /// Of those, signatures, attestations and SBOMs.
    pub attachments: usize,
    /// Manifests and blobs in the archive.
    pub blobs: usize,
    pub bytes: u64,
    pub carried_by_base: usize,
    pub left_out: usize,
}

/// Makes the bundle `req` asks for.
pub async fn create(proxy: Arc<Proxy>, req: Request, progress: Progress) -> Result<Summary, BundleError> {
    let base = req.since.as_deref().map(Lock::read).transpose()?;
    let resolver = Resolver { proxy: &proxy, platforms: &req.platforms, progress: &progress };
    let resolved = resolver.all(&req.images).await?;
    let mut plan = Plan::new(resolved, &req.platforms);
    if let (Some((base, digest)), Some(path)) = (base, &req.since) {
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        plan.lock.subtract(&base, digest, file);
    }
    write(proxy, plan, &req.output, progress).await
}

// ---- planning ----------------------------------------------------------

/// The lock, `index.json`, and what the archive carries, per image.
struct Plan {
    lock: Lock,
    index: Vec<IndexEntry>,
    images: Vec<Resolved>,
}

impl Plan {
    fn new(resolved: Vec<Resolved>, platforms: &[Platform]) -> Plan {
        let mut lock = Lock::new();
        lock.platforms = platforms.iter().map(|p| p.to_string()).collect();
        let mut images = Vec::new();
        for r in resolved {
            if lock.images.contains_key(&r.name) {
                continue; // two spellings of one reference (an alias, a default upstream)
            }
            let mut needs: Vec<Content> = r
                .manifests
                .iter()
                .map(|m| Content {
                    digest: m.digest.clone(),
                    size: m.body.len() as u64,
                    media_type: m.media_type.clone(),
                })
                .collect();
            needs.extend(r.blobs.iter().map(|b| Content {
                digest: b.digest.clone(),
                size: b.size,
                media_type: b.media_type.clone(),
            }));
            let mut seen = HashSet::new();
            needs.retain(|c| seen.insert(c.digest.clone()));
            lock.images.insert(
                r.name.clone(),
                LockedImage {
                    digest: r.top.digest.clone(),
                    media_type: r.top.media_type.clone(),
                    size: r.top.body.len() as u64,
                    attached_to: r.attached_to.clone(),
                    needs,
                    left_out: r.left_out.clone(),
                },
            );
            images.push(r);
        }
        let index = lock
            .images
            .iter()
            .map(|(name, i)| IndexEntry {
                name: name.clone(),
                media_type: i.media_type.clone(),
                digest: i.digest.clone(),
                size: i.size,
            })
            .collect();
        Plan { lock, index, images }
    }
}

/// One entry of the archive and where its bytes come from.
enum Source {
    Manifest(Arc<StoredManifest>),
    Blob(RepoKey, Descriptor),
}

impl Source {
    fn digest(&self) -> &Digest {
        match self {
            Source::Manifest(m) => &m.digest,
            Source::Blob(_, d) => &d.digest,
        }
    }

    fn size(&self) -> u64 {
        match self {
            Source::Manifest(m) => m.body.len() as u64,
            Source::Blob(_, d) => d.size,
        }
    }
}

/// One image's share of the archive: what it needs that no earlier image
/// brought and the base does not carry.
struct Batch {
    name: String,
    entries: Vec<Source>,
    /// Of what it needs, how much the base carries.
    from_base: usize,
}

/// Splits the plan into batches, each digest in the first that needs it.
fn batches(plan: Plan) -> (Lock, Vec<IndexEntry>, Vec<Batch>) {
    let base = &plan.lock.carried_by_base;
    let mut written: HashSet<Digest> = HashSet::new();
    let mut out = Vec::new();
    for r in plan.images {
        let (mut entries, mut from_base) = (Vec::new(), 0);
        let manifests = std::iter::once(r.top).chain(r.manifests).map(Source::Manifest);
        let blobs = r.blobs.into_iter().map(|b| Source::Blob(r.key.clone(), b));
        for s in manifests.chain(blobs) {
            if base.contains(s.digest()) {
                from_base += 1;
            } else if written.insert(s.digest().clone()) {
                entries.push(s);
            }
        }
        out.push(Batch { name: r.name, entries, from_base });
    }
    (plan.lock, plan.index, out)
}

// ---- writing -------------------------------------------------------------

async fn write(proxy: Arc<Proxy>, plan: Plan, output: &Path, progress: Progress) -> Result<Summary, BundleError> {
    let (lock, index, batches) = batches(plan);
    let lock_path = lock::beside(output);
    let archive_tmp = partial(output);
    let lock_tmp = partial(&lock_path);
    let summary = Summary {
        archive: output.to_path_buf(),
        lock: lock_path.clone(),
        images: lock.images.len(),
        attachments: lock.images.values().filter(|i| i.attached_to.is_some()).count(),
        blobs: batches.iter().map(|b| b.entries.len()).sum(),
        bytes: batches.iter().flat_map(|b| &b.entries).map(Source::size).sum(),
        carried_by_base: lock.carried_by_base.len(),
        left_out: lock.left_out().len(),
    };
    let lock_body = lock.to_json();
    let upcoming: Vec<(RepoKey, Digest)> = batches
        .iter()
        .flat_map(|b| &b.entries)
        .filter_map(|s| match s {
            Source::Blob(key, d) => Some((key.clone(), d.digest.clone())),
            Source::Manifest(_) => None,
        })
        .collect();
    let prefetch = AbortOnDrop(tokio::spawn(prefetch(proxy.clone(), upcoming)));
    let rt = tokio::runtime::Handle::current();
    let (tmp, body, p) = (archive_tmp.clone(), lock_body.clone(), progress.clone());
    let total = summary.bytes;
    let written = tokio::task::spawn_blocking(move || -> Result<(), BundleError> {
        p.start("writing", total);
        let file = std::fs::File::create(&tmp).map_err(BundleError::io(&tmp))?;
        let mut w = ArchiveWriter::new(BufWriter::with_capacity(WRITE_BUFFER, file));
        write_archive(&rt, &proxy, &mut w, &index, &body, batches, &p).map_err(|e| match e {
            Failure::Io(e) => BundleError::Io { path: tmp.clone(), source: e },
            Failure::Bundle(e) => e,
        })?;
        let file =
            w.finish().and_then(|b| b.into_inner().map_err(|e| e.into_error())).map_err(BundleError::io(&tmp))?;
        file.sync_all().map_err(BundleError::io(&tmp))?;
        p.finish();
        Ok(())
    })
    .await
    .map_err(|e| BundleError::Internal(e.to_string()))
    .and_then(|r| r);
    drop(prefetch);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&archive_tmp);
        return Err(e);
    }
    let finished = std::fs::write(&lock_tmp, &lock_body)
        .map_err(BundleError::io(&lock_tmp))
        .and_then(|()| std::fs::rename(&archive_tmp, output).map_err(BundleError::io(output)))
        .and_then(|()| std::fs::rename(&lock_tmp, &lock_path).map_err(BundleError::io(&lock_path)));
    if let Err(e) = finished {
        let _ = std::fs::remove_file(&archive_tmp);
        let _ = std::fs::remove_file(&lock_tmp);
        return Err(e);
    }
    Ok(summary)
}

/// Starts the fills of the blobs the writer will want next, a few at a
/// time, so that downloads overlap instead of queueing behind the tar
/// (which takes one blob at a time). The writer joins a fill in progress
/// or finds the blob stored, so each blob is still fetched once; what is
/// prefetched is what a pull through `serve` would store anyway.
async fn prefetch(proxy: Arc<Proxy>, blobs: Vec<(RepoKey, Digest)>) {
    stream::iter(blobs)
        .for_each_concurrent(PREFETCH, |(key, d)| {
            let proxy = proxy.clone();
            async move {
                // Failures surface when the writer asks for the blob itself.
                if let Ok(proxy::BlobReply { source: proxy::BlobSource::Filling(fill), .. }) =
                    proxy.blob(&key, &d, false).await
                {
                    let _ = fill.wait_done().await;
                }
            }
        })
        .await
}

/// Aborts a task when dropped (the prefetcher, once writing ended either way).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `site.tar` → `site.tar.partial`.
fn partial(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

/// Why the archive could not be written: the output failed, or a blob did.
enum Failure {
    Io(io::Error),
    Bundle(BundleError),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

/// Runs on a blocking thread (the tar writer is synchronous); each blob's
/// bytes are pulled from its async stream with `rt.block_on`.
fn write_archive<W: Write>(
    rt: &tokio::runtime::Handle,
    proxy: &Proxy,
    w: &mut ArchiveWriter<W>,
    index: &[IndexEntry],
    lock: &[u8],
    batches: Vec<Batch>,
    progress: &Progress,
) -> Result<(), Failure> {
    w.file(bundle::OCI_LAYOUT, bundle::OCI_LAYOUT_BODY)?;
    w.file(bundle::INDEX_JSON, &bundle::index_json(index))?;
    w.file(bundle::LOCK_ENTRY, lock)?;
    w.dir("blobs/")?;
    let algorithms: BTreeSet<&str> =
        batches.iter().flat_map(|b| &b.entries).map(|s| s.digest().algorithm().as_str()).collect();
    for alg in algorithms {
        w.dir(&format!("blobs/{alg}/"))?;
    }
    for batch in batches {
        let bytes = batch.entries.iter().map(Source::size).sum();
        let how = match (batch.entries.len(), batch.from_base) {
            (0, 0) => "written (with the images before it)".to_string(),
            (_, 0) => "written".to_string(),
            (0, _) => "carried by the base".to_string(),
            (_, n) => format!("written ({n} manifests and blobs carried by the base)"),
        };
        let line = progress.image(&batch.name, bytes);
        for source in batch.entries {
            match source {
                Source::Manifest(m) => {
                    w.blob(&m.digest, m.body.len() as u64, &m.body[..])?;
                    line.advance(m.body.len() as u64);
                }
                Source::Blob(key, d) => write_blob(rt, proxy, w, &key, &d, &line)?,
            }
        }
        line.done(&how);
    }
    Ok(())
}

fn write_blob<W: Write>(
    rt: &tokio::runtime::Handle,
    proxy: &Proxy,
    w: &mut ArchiveWriter<W>,
    key: &RepoKey,
    d: &Descriptor,
    line: &ImageProgress,
) -> Result<(), Failure> {
    let corrupt = |why: String| Failure::Bundle(BundleError::Corrupt { digest: d.digest.clone(), why });
    let reply = rt.block_on(proxy.blob(key, &d.digest, false)).map_err(|e| corrupt(describe(&e)))?;
    if let Some(size) = reply.size.filter(|&s| s != d.size) {
        return Err(corrupt(format!("is {size} bytes, its descriptor says {}", d.size)));
    }
    let mut reader = VerifiedStream::new(rt, reply.stream(0, None), d, line);
    match w.blob(&d.digest, d.size, &mut reader) {
        Ok(()) => Ok(()),
        Err(e) => Err(match reader.failure.take() {
            Some(why) => corrupt(why),
            None if reader.source_failed => corrupt(format!("fetching failed: {e}")),
            None => Failure::Io(e),
        }),
    }
}

/// A blob's byte stream as a `Read` for the tar writer, checked as it
/// goes: more bytes than the descriptor's size, fewer, or bytes that do not
/// hash to the digest end it with an error instead of its end, so the
/// entry (and the bundle) fails.
struct VerifiedStream<'a> {
    rt: &'a tokio::runtime::Handle,
    stream: ByteStream,
    pending: Bytes,
    verifier: Option<crate::oci::Verifier>,
    descriptor: &'a Descriptor,
    line: &'a ImageProgress,
    /// Why the bytes were refused, for the report.
    failure: Option<String>,
    /// The stream itself failed (upstream cut the body).
    source_failed: bool,
}

impl<'a> VerifiedStream<'a> {
    fn new(rt: &'a tokio::runtime::Handle, stream: ByteStream, d: &'a Descriptor, line: &'a ImageProgress) -> Self {
        VerifiedStream {
            rt,
            stream,
            pending: Bytes::new(),
            verifier: Some(crate::oci::Verifier::for_digest(&d.digest)),
            descriptor: d,
            line,
            failure: None,
            source_failed: false,
        }
    }

    fn refuse(&mut self, why: String) -> io::Error {
        let e = io::Error::new(io::ErrorKind::InvalidData, why.clone());
        self.failure = Some(why);
        e
    }
}

impl Read for VerifiedStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            let Some(verifier) = self.verifier.as_mut() else { return Ok(0) };
            match self.rt.block_on(self.stream.next()) {
                Some(Ok(chunk)) => {
                    verifier.update(&chunk);
                    if verifier.len() > self.descriptor.size {
                        let why = format!("more than the {} bytes its descriptor says", self.descriptor.size);
                        return Err(self.refuse(why));
                    }
                    self.pending = chunk;
                }
                Some(Err(e)) => {
                    self.source_failed = true;
                    return Err(e);
                }
                None => {
                    let verifier = self.verifier.take().expect("checked above");
                    let seen = verifier.len();
                    if seen != self.descriptor.size {
                        let why = format!("ended after {seen} of {} bytes", self.descriptor.size);
                        return Err(self.refuse(why));
                    }
                    let got = verifier.finish();
                    if got != self.descriptor.digest {
                        return Err(self.refuse(format!("streamed bytes hash to {got}")));
                    }
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.advance(n);
        self.line.advance(n as u64);
        Ok(n)
    }
}

impl Summary {
    /// The lines `bundle create` prints when done.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "{}: {} images ({} signatures/attestations), {} blobs, {}",
            self.archive.display(),
            self.images,
            self.attachments,
            self.blobs,
            human_bytes(self.bytes)
        )];
        if self.carried_by_base > 0 {
            out.push(format!("{} manifests and blobs left out: the base lock lists them", self.carried_by_base));
        }
        if self.left_out > 0 {
            out.push(format!("{} platform manifests left out by --platform", self.left_out));
        }
        out.push(format!("lock: {}", self.lock.display()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media;

    fn d(n: u8) -> Digest {
        format!("sha256:{}", format!("{n:02x}").repeat(32)).parse().unwrap()
    }

    fn stored(body: &str) -> Arc<StoredManifest> {
        let body = Bytes::from(body.to_string());
        Arc::new(StoredManifest { digest: Digest::of(&body), media_type: media::OCI_MANIFEST.into(), body })
    }

    fn blob(n: u8) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: d(n),
            size: n as u64,
            artifact_type: None,
            annotations: Default::default(),
            platform: None,
        }
    }

    fn resolved(name: &str, top: &str, blobs: &[u8]) -> Resolved {
        Resolved {
            name: name.into(),
            key: RepoKey::new("registry.k8s.io".into(), "pause".parse().unwrap()),
            top: stored(top),
            attached_to: None,
            manifests: vec![],
            blobs: blobs.iter().map(|&n| blob(n)).collect(),
            left_out: vec![],
        }
    }

    #[test]
    fn the_plan_carries_each_digest_once_and_nothing_the_base_has() {
        let a = resolved("registry.k8s.io/a:1", "{\"a\":1}", &[1, 2]);
        let b = resolved("registry.k8s.io/b:1", "{\"b\":1}", &[2, 3]);
        let dup = resolved("registry.k8s.io/a:1", "{\"a\":1}", &[1, 2]);
        let mut plan = Plan::new(vec![a, b, dup], &[]);
        assert_eq!(plan.index.len(), 2);
        assert_eq!(plan.index[0].name, "registry.k8s.io/a:1");
        let mut base = Lock::new();
        base.images.insert(
            "old".into(),
            LockedImage {
                digest: d(3),
                media_type: media::OCI_MANIFEST.into(),
                size: 1,
                attached_to: None,
                needs: vec![],
                left_out: vec![],
            },
        );
        plan.lock.subtract(&base, d(9), "old.lock".into());
        let (lock, _, batches) = batches(plan);
        let carried: Vec<Vec<Digest>> =
            batches.iter().map(|b| b.entries.iter().map(|s| s.digest().clone()).collect()).collect();
        let (ta, tb) = (Digest::of(b"{\"a\":1}"), Digest::of(b"{\"b\":1}"));
        assert_eq!(carried, vec![vec![ta, d(1), d(2)], vec![tb]], "blob 2 once, blob 3 is the base's");
        assert_eq!(lock.carried_by_base, BTreeSet::from([d(3)]));
        assert_eq!(lock.images["registry.k8s.io/b:1"].needs.len(), 2, "the lock still lists everything");
    }

    #[test]
    fn partial_names_sit_beside_the_output() {
        assert_eq!(partial(Path::new("/x/site.tar")), Path::new("/x/site.tar.partial"));
        assert_eq!(partial(Path::new("site")), Path::new("site.partial"));
    }

    fn read_all(body: &[u8], d: &Descriptor) -> Result<Vec<u8>, String> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let chunks: Vec<io::Result<Bytes>> = body.chunks(3).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let line = Progress::quiet().image("x", 0);
        let mut r = VerifiedStream::new(rt.handle(), Box::pin(stream::iter(chunks)), d, &line);
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|_| r.failure.clone().unwrap_or_default())?;
        Ok(out)
    }

    #[test]
    fn streamed_blobs_must_match_size_and_digest() {
        let body = b"some layer bytes";
        let good = Descriptor { digest: Digest::of(body), size: body.len() as u64, ..blob(1) };
        assert_eq!(read_all(body, &good).unwrap(), body);
        let short = Descriptor { size: body.len() as u64 + 1, ..good.clone() };
        assert!(read_all(body, &short).unwrap_err().contains("ended after 16 of 17"));
        let long = Descriptor { size: 4, ..good.clone() };
        assert!(read_all(body, &long).unwrap_err().contains("more than the 4 bytes"));
        let mut flipped = body.to_vec();
        flipped[5] ^= 1;
        assert!(read_all(&flipped, &good).unwrap_err().contains("hash to"));
    }
}
