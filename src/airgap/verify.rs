//! `bundle verify`: is this archive whole and undamaged?
//!
//! One streaming pass over the tar re-hashes every blob against the digest
//! its name claims (memory: one read buffer, plus the bodies of small JSON
//! blobs, which may be manifests). Then, from `index.json` down, every
//! descriptor must be in the archive with its size, unless the lock says
//! why not: carried by the base the bundle was made `--since`, or left out
//! by `--platform`. The lock is the archive's own `klts-mirror.lock`, else
//! the `.lock` file beside it; it must agree with `index.json`, and every
//! digest it says an image needs must be accounted for.
//!
//! Problems are collected, never fatal: one run names every damaged blob
//! and every missing one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use super::bundle::{self, REF_NAME};
use super::lock::{self, Lock};
use super::progress::{human_bytes, ImageProgress, Progress};
use super::BundleError;
use crate::oci::manifest::{kind_of, Descriptor, Manifest};
use crate::oci::{media, Digest, Verifier};

/// Largest `index.json` read (thousands of images are a few MiB).
const MAX_INDEX_BYTES: u64 = 64 * 1024 * 1024;
const READ_BUFFER: usize = 1024 * 1024;

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// References named in `index.json`.
    pub images: usize,
    /// Of those, signatures, attestations and SBOMs (per the lock).
    pub attachments: usize,
    /// Blob entries (manifests included) and their bytes.
    pub blobs: usize,
    pub bytes: u64,
    /// Descriptors not in the archive because the base carries them.
    pub carried_by_base: usize,
    /// Platform manifests left out by `--platform`.
    pub left_out: usize,
    /// Where the lock was read from, if there was one.
    pub lock: Option<String>,
    /// One line each; empty when the bundle is good.
    pub problems: Vec<String>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The summary line.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} images ({} signatures/attestations), {} blobs, {}",
            self.images,
            self.attachments,
            self.blobs,
            human_bytes(self.bytes)
        );
        if self.carried_by_base > 0 {
            s += &format!(", {} carried by the base", self.carried_by_base);
        }
        if self.left_out > 0 {
            s += &format!(", {} platform manifests left out", self.left_out);
        }
        s
    }
}

/// A blob entry as it was read.
struct Blob {
    size: u64,
    /// Hashed to the digest its name claims.
    intact: bool,
}

/// What the streaming pass collected.
#[derive(Default)]
struct Contents {
    layout: Option<Vec<u8>>,
    index: Option<Vec<u8>>,
    lock: Option<Vec<u8>>,
    blobs: HashMap<Digest, Blob>,
    /// Bodies of intact blobs that look like manifests (JSON no larger than
    /// a manifest may be, with a manifest's shape): all the walk reads.
    bodies: HashMap<Digest, Vec<u8>>,
}

/// Verifies the archive at `path`; with `base`, also that everything it
/// leaves to its base is listed in that lock (and that it is the lock the
/// bundle was made `--since`). `Err` only when the archive cannot be opened.
pub fn verify(path: &Path, base: Option<&Path>, progress: &Progress) -> Result<Report, BundleError> {
    let file = File::open(path).map_err(BundleError::io(path))?;
    let len = file.metadata().map_err(BundleError::io(path))?.len();
    progress.start("verifying", len);
    let line = progress.image(&path.display().to_string(), len);
    let mut report = Report::default();
    let contents = read(Counted { inner: BufReader::with_capacity(READ_BUFFER, file), line: &line }, &mut report);
    line.done("read");
    progress.finish();

    let (lock, source) = find_lock(path, &contents, &mut report.problems);
    report.lock = source;
    let index = check_layout(&contents, &mut report.problems);
    report.images = index.iter().filter(|d| d.annotations.contains_key(REF_NAME)).count();
    let lock = lock.unwrap_or_default();
    report.attachments = lock.images.values().filter(|i| i.attached_to.is_some()).count();
    // Each missing digest is reported once, with the first thing found to name it.
    let mut missing = BTreeMap::new();
    Graph::new(&contents, &lock).check(&index, &mut report, &mut missing);
    if !lock.images.is_empty() {
        check_lock(&index, &lock, &contents, &mut report.problems, &mut missing);
    }
    report.problems.extend(missing.into_values());
    // Below a manifest the base carries the walk cannot see: count from the lock.
    report.carried_by_base = lock.carried_by_base.iter().filter(|d| !contents.blobs.contains_key(*d)).count();
    if let Some(base) = base {
        check_base(&lock, base, &mut report.problems)?;
    }
    Ok(report)
}

/// The streaming pass: every entry once, blobs hashed as they pass.
fn read(input: impl Read, report: &mut Report) -> Contents {
    let mut c = Contents::default();
    let mut archive = tar::Archive::new(input);
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            report.problems.push(format!("not a tar archive: {e}"));
            return c;
        }
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                report.problems.push(format!("the archive is damaged or ends early: {e}"));
                break;
            }
        };
        if entry.header().entry_type().is_dir() {
            continue;
        }
        let name = match entry.path() {
            Ok(p) => p.to_string_lossy().trim_start_matches("./").to_string(),
            Err(e) => {
                report.problems.push(format!("an entry has an unreadable name: {e}"));
                continue;
            }
        };
        let small = |what: &str, e: &mut tar::Entry<_>, problems: &mut Vec<String>| match read_small(e, MAX_INDEX_BYTES)
        {
            Ok(body) => Some(body),
            Err(why) => {
                problems.push(format!("{what}: {why}"));
                None
            }
        };
        match name.as_str() {
            bundle::OCI_LAYOUT => c.layout = small(&name, &mut entry, &mut report.problems),
            bundle::INDEX_JSON => c.index = small(&name, &mut entry, &mut report.problems),
            bundle::LOCK_ENTRY => c.lock = small(&name, &mut entry, &mut report.problems),
            _ => match bundle::blob_digest(&name) {
                Some(d) => match hash(&mut entry, &d) {
                    Ok((got, size, body)) => {
                        report.blobs += 1;
                        report.bytes += size;
                        let intact = got == d;
                        if !intact {
                            report.problems.push(format!("blob {d} is damaged: its bytes hash to {got}"));
                        } else if let Some(body) = body.filter(|b| media::sniff(b).is_some()) {
                            // Configs are JSON too; only manifests are kept.
                            c.bodies.insert(d.clone(), body);
                        }
                        c.blobs.insert(d, Blob { size, intact });
                    }
                    Err(e) => {
                        report.problems.push(format!("blob {d}: the archive is damaged or ends early: {e}"));
                        break;
                    }
                },
                None if name.starts_with("blobs/") => {
                    report.problems.push(format!("{name}: not named by a digest this build can check"))
                }
                None => {} // other files are allowed in a layout
            },
        }
    }
    // The end-of-archive blocks and padding: read, so progress reaches the end.
    let _ = io::copy(&mut archive.into_inner(), &mut io::sink());
    c
}

fn read_small(entry: &mut impl Read, max: u64) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    entry.take(max + 1).read_to_end(&mut body).map_err(|e| e.to_string())?;
    if body.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(body)
}

/// Hashes an entry with `d`'s algorithm; keeps the body when it may be a
/// manifest (JSON no larger than a manifest can be).
fn hash(entry: &mut impl Read, d: &Digest) -> io::Result<(Digest, u64, Option<Vec<u8>>)> {
    let mut v = Verifier::for_digest(d);
    let mut buf = vec![0u8; 256 * 1024];
    let mut kept: Option<Vec<u8>> = None;
    let mut first = true;
    loop {
        let n = entry.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        v.update(chunk);
        if first {
            first = false;
            if chunk[0] == b'{' {
                kept = Some(Vec::new());
            }
        }
        if let Some(k) = kept.as_mut() {
            if k.len() + n > media::MAX_MANIFEST_BYTES {
                kept = None;
            } else {
                k.extend_from_slice(chunk);
            }
        }
    }
    let size = v.len();
    Ok((v.finish(), size, kept))
}

/// Reads the lock from the archive, else from beside it.
fn find_lock(path: &Path, c: &Contents, problems: &mut Vec<String>) -> (Option<Lock>, Option<String>) {
    let beside = lock::beside(path);
    let beside_body = std::fs::read(&beside).ok();
    let (body, source) = match (&c.lock, &beside_body) {
        (Some(inside), Some(outside)) => {
            if inside != outside {
                problems.push(format!("{} differs from the lock inside the archive", beside.display()));
            }
            (inside, bundle::LOCK_ENTRY.to_string())
        }
        (Some(inside), None) => (inside, bundle::LOCK_ENTRY.to_string()),
        (None, Some(outside)) => (outside, beside.display().to_string()),
        (None, None) => return (None, None),
    };
    match Lock::from_json(body) {
        Ok(l) => (Some(l), Some(source)),
        Err(why) => {
            problems.push(format!("lock {source}: {why}"));
            (None, Some(source))
        }
    }
}

/// `oci-layout` and `index.json`; returns the index's descriptors.
fn check_layout(c: &Contents, problems: &mut Vec<String>) -> Vec<Descriptor> {
    #[derive(serde::Deserialize)]
    struct Layout {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    match c.layout.as_deref().map(serde_json::from_slice::<Layout>) {
        None => problems.push(format!("no {} file: not an OCI image layout", bundle::OCI_LAYOUT)),
        Some(Err(e)) => problems.push(format!("{}: {e}", bundle::OCI_LAYOUT)),
        Some(Ok(l)) if l.version != "1.0.0" => {
            problems.push(format!("{}: imageLayoutVersion {:?} is not 1.0.0", bundle::OCI_LAYOUT, l.version))
        }
        Some(Ok(_)) => {}
    }
    match c.index.as_deref().map(bundle::read_index_json) {
        None => {
            problems.push(format!("no {}: the archive names no images", bundle::INDEX_JSON));
            Vec::new()
        }
        Some(Err(why)) => {
            problems.push(format!("{}: {why}", bundle::INDEX_JSON));
            Vec::new()
        }
        Some(Ok(list)) => list,
    }
}

/// The walk from `index.json` down.
struct Graph<'a> {
    contents: &'a Contents,
    carried: &'a BTreeSet<Digest>,
    left_out: BTreeSet<Digest>,
}

impl<'a> Graph<'a> {
    fn new(contents: &'a Contents, lock: &'a Lock) -> Self {
        Graph { contents, carried: &lock.carried_by_base, left_out: lock.left_out() }
    }

    fn check(&self, index: &[Descriptor], report: &mut Report, missing: &mut BTreeMap<Digest, String>) {
        let mut left = BTreeSet::new();
        let mut seen = HashSet::new();
        let mut stack: Vec<(Descriptor, String)> = index
            .iter()
            .rev()
            .map(|d| {
                let name = d.annotations.get(REF_NAME).cloned().unwrap_or_else(|| "an unnamed entry".into());
                (d.clone(), format!("{} ({name})", bundle::INDEX_JSON))
            })
            .collect();
        while let Some((d, from)) = stack.pop() {
            if !seen.insert(d.digest.clone()) || media::is_non_distributable(&d.media_type) {
                continue;
            }
            let Some(blob) = self.contents.blobs.get(&d.digest) else {
                // Carried by the base: the site has it already.
                if self.left_out.contains(&d.digest) {
                    left.insert(d.digest.clone());
                } else if !self.carried.contains(&d.digest) {
                    missing
                        .entry(d.digest.clone())
                        .or_insert_with(|| format!("{} is missing: {from} names it", d.digest));
                }
                continue;
            };
            if !blob.intact {
                continue; // reported as damaged
            }
            if blob.size != d.size {
                report.problems.push(format!("blob {} is {} bytes; {from} says {}", d.digest, blob.size, d.size));
            }
            if kind_of(&d.media_type).is_none() {
                continue;
            }
            let parsed = self
                .contents
                .bodies
                .get(&d.digest)
                .ok_or_else(|| "not JSON".to_string())
                .and_then(|b| Manifest::parse(Some(&d.media_type), b).map_err(|e| e.to_string()));
            match parsed {
                Ok(m) => {
                    let here = format!("manifest {}", d.digest);
                    let children: Vec<&Descriptor> = m.manifests.iter().chain(m.blobs()).collect();
                    stack.extend(children.into_iter().rev().map(|c| (c.clone(), here.clone())));
                }
                Err(why) => report.problems.push(format!("manifest {} cannot be read: {why}", d.digest)),
            }
        }
        report.left_out = left.len();
    }
}

/// The lock agrees with `index.json`, and everything it says an image
/// needs is in the archive or carried by the base.
fn check_lock(
    index: &[Descriptor],
    lock: &Lock,
    c: &Contents,
    problems: &mut Vec<String>,
    missing: &mut BTreeMap<Digest, String>,
) {
    let named: HashMap<&str, &Descriptor> =
        index.iter().filter_map(|d| d.annotations.get(REF_NAME).map(|n| (n.as_str(), d))).collect();
    for (name, image) in &lock.images {
        match named.get(name.as_str()) {
            None => problems.push(format!("the lock lists {name}; {} does not", bundle::INDEX_JSON)),
            Some(d) if d.digest != image.digest => problems.push(format!(
                "{name}: {} says {}, the lock says {}",
                bundle::INDEX_JSON,
                d.digest,
                image.digest
            )),
            Some(_) => {}
        }
        for digest in std::iter::once(&image.digest).chain(image.needs.iter().map(|n| &n.digest)) {
            if !c.blobs.contains_key(digest) && !lock.carried_by_base.contains(digest) {
                missing
                    .entry(digest.clone())
                    .or_insert_with(|| format!("{digest} is missing: the lock says {name} needs it"));
            }
        }
    }
    for name in named.keys() {
        if !lock.images.contains_key(*name) {
            problems.push(format!("{} names {name}; the lock does not", bundle::INDEX_JSON));
        }
    }
}

/// With `--base`: the bundle was made since that very lock, and all it
/// leaves to the base is listed there.
fn check_base(lock: &Lock, base: &Path, problems: &mut Vec<String>) -> Result<(), BundleError> {
    let (base_lock, digest) = Lock::read(base)?;
    match &lock.base {
        None => problems.push(format!("the bundle was not made --since a lock; {} does not apply", base.display())),
        Some(b) if b.digest != digest => problems.push(format!(
            "the bundle was made --since {} ({}); {} is {digest}",
            b.file,
            b.digest,
            base.display()
        )),
        Some(_) => {}
    }
    let listed = base_lock.listed();
    for d in lock.carried_by_base.difference(&listed) {
        problems.push(format!("{d} is left to the base, but {} does not list it", base.display()));
    }
    Ok(())
}

/// Counts the bytes read from the archive into the progress line.
struct Counted<'a, R> {
    inner: R,
    line: &'a ImageProgress,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.line.advance(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::airgap::bundle::{ArchiveWriter, IndexEntry};
    use crate::airgap::lock::{Content, LockedImage};

    /// A one-image layout archive (manifest → config + layer) with its
    /// lock; `edit` changes the blobs (manifest, config, layer) or the lock
    /// before they are written.
    fn layout(dir: &Path, edit: impl FnOnce(&mut Vec<(Digest, Vec<u8>)>, &mut Lock)) -> std::path::PathBuf {
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let layer = vec![7u8; 3000];
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
            media::OCI_MANIFEST,
            Digest::of(&config),
            config.len(),
            Digest::of(&layer),
            layer.len()
        )
        .into_bytes();
        let name = "registry.k8s.io/pause:3.9".to_string();
        let entry = IndexEntry {
            name: name.clone(),
            media_type: media::OCI_MANIFEST.into(),
            digest: Digest::of(&manifest),
            size: manifest.len() as u64,
        };
        let mut lock = Lock::new();
        let needs =
            [(&config, "application/vnd.oci.image.config.v1+json"), (&layer, "application/vnd.oci.image.layer.v1.tar")]
                .iter()
                .map(|(b, t)| Content { digest: Digest::of(b), size: b.len() as u64, media_type: t.to_string() })
                .collect();
        lock.images.insert(
            name,
            LockedImage {
                digest: entry.digest.clone(),
                media_type: entry.media_type.clone(),
                size: entry.size,
                attached_to: None,
                needs,
                left_out: vec![],
            },
        );
        let mut blobs: Vec<(Digest, Vec<u8>)> =
            [manifest, config, layer].into_iter().map(|b| (Digest::of(&b), b)).collect();
        edit(&mut blobs, &mut lock);
        let path = dir.join("site.tar");
        let mut w = ArchiveWriter::new(std::fs::File::create(&path).unwrap());
        w.file(bundle::OCI_LAYOUT, bundle::OCI_LAYOUT_BODY).unwrap();
        w.file(bundle::INDEX_JSON, &bundle::index_json(&[entry])).unwrap();
        w.file(bundle::LOCK_ENTRY, &lock.to_json()).unwrap();
        for (d, b) in &blobs {
            w.blob(d, b.len() as u64, &b[..]).unwrap();
        }
        w.finish().unwrap();
        path
    }

    fn run(path: &Path) -> Report {
        verify(path, None, &Progress::quiet()).unwrap()
    }

    #[test]
    fn a_whole_layout_passes_with_a_summary() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(&layout(dir.path(), |_, _| {}));
        assert!(r.is_ok(), "{:?}", r.problems);
        assert_eq!((r.images, r.blobs), (1, 3));
        assert!(r.bytes > 3000, "{}", r.bytes);
        assert!(r.summary().starts_with("1 images (0 signatures/attestations), 3 blobs"), "{}", r.summary());
    }

    #[test]
    fn damaged_and_missing_blobs_are_each_named() {
        let dir = tempfile::tempdir().unwrap();
        let (mut layer, mut config) = (None, None);
        let path = layout(dir.path(), |blobs, _| {
            blobs[2].1[1500] ^= 0x80; // the layer, damaged in place
            layer = Some(blobs[2].0.clone());
            config = Some(blobs.remove(1).0); // the config, gone
        });
        let r = run(&path);
        let (layer, config) = (layer.unwrap(), config.unwrap());
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
        assert!(r.problems[0].starts_with(&format!("blob {layer} is damaged")), "{:?}", r.problems);
        assert!(r.problems[1].starts_with(&format!("{config} is missing")), "{:?}", r.problems);
    }

    #[test]
    fn a_lock_that_disagrees_with_index_json_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = layout(dir.path(), |_, lock| {
            let image = lock.images.remove("registry.k8s.io/pause:3.9").unwrap();
            lock.images.insert("registry.k8s.io/pause:3.10".into(), image);
        });
        let r = run(&path);
        assert!(r.problems.iter().any(|p| p.contains("the lock lists registry.k8s.io/pause:3.10")), "{:?}", r.problems);
        assert!(
            r.problems.iter().any(|p| p.contains("index.json names registry.k8s.io/pause:3.9")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn a_truncated_archive_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = layout(dir.path(), |_, _| {});
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3000).unwrap();
        let r = run(&path);
        assert!(r.problems.iter().any(|p| p.contains("ends early")), "{:?}", r.problems);
        assert!(!r.is_ok());
    }

    #[test]
    fn a_layout_without_a_lock_is_checked_from_index_json_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = layout(dir.path(), |blobs, lock| {
            lock.images.clear();
            blobs.pop();
        });
        let r = run(&path);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].contains("is missing: manifest"), "{:?}", r.problems);
    }
}
