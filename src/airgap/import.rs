//! `bundle import`: an archive's images into the store as pinned content.
//!
//! ```text
//! archive ─▶ entries in tar order ─┬─ blobs/<alg>/<hex>, <hex>.json ─▶ BlobWriter (verified by name) ─▶ blob
//!                                  ├─ <id>/layer.tar (docker save) ─▶ BlobWriter (named by its hash) ─▶ blob
//!                                  ├─ index.json, manifest.json, oci-layout ─▶ memory
//!                                  └─ anything else: skipped
//! end of archive ─▶ for each named image: whole tree here? ─▶ pin leaves → root (holds, records,
//!                                                            referrers) ─▶ tag, last
//! ```
//!
//! Guarantees:
//! - **Verified while read.** Every blob goes through a [`BlobWriter`] and is
//!   committed only when it hashes to the digest in its file name; one that
//!   does not is refused and named, and every image needing it is left out.
//! - **Streamed.** Nothing is staged in a copy of the archive: blobs may come
//!   before `index.json` (they usually do), so they are written as they
//!   arrive, and only `index.json`/`manifest.json` wait in memory.
//! - **No tag at an incomplete image.** Tags are written after the whole
//!   archive was read, only for images whose whole tree (index, children,
//!   configs, layers; non-distributable layers excepted) is in the store;
//!   the rest are reported with the blobs they lack (an incremental bundle
//!   whose base was never imported says which).
//! - **Resumable.** A blob already in the store with the size the archive
//!   announces is skipped without reading it (a plain tar is seeked over), so
//!   running an interrupted import again finishes it without redoing what
//!   was done. A read error stops the import before any tag is written.
//! - **Beside a running server.** Same store, other process: pinned tags are
//!   seen by `serve` within [`crate::registry::LOCAL_TAG_RECHECK`].
//!
//! Pinned manifests are held ([`crate::storage::Class::Pinned`]) and listed
//! as referrers of their `subject`, exactly like published ones
//! ([`crate::registry::pin`]). An `index.json` entry without a name whose
//! `subject` is part of an imported image (a signature, an SBOM) is pinned in
//! that image's repository by digest.

mod docker_save;
mod names;
pub mod progress;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;

use self::docker_save::{FileBlob, Files};
use self::names::ImageName;
pub use self::progress::Progress;
use super::archive::{Archive, Compression, Entry};
use crate::config::{Backend, Config};
use crate::oci::manifest::Manifest;
use crate::oci::{media, Algorithm, Digest, RepoKey};
use crate::proxy::routing::RoutingTable;
use crate::registry::Registry;
use crate::storage::spool::{Batch, BlobWriter};
use crate::storage::{self, Store};

/// Largest `index.json` or `manifest.json` read (they are held in memory).
const LISTING_LIMIT: u64 = 64 * 1024 * 1024;
/// Largest `oci-layout` read.
const LAYOUT_LIMIT: u64 = 64 * 1024;
/// Deepest index nesting followed.
const MAX_DEPTH: usize = 8;

/// Why an import could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error("bundle import needs storage.backend = \"filesystem\": the memory backend forgets the import when the command exits")]
    MemoryBackend,
}

/// What an import did, and what it could not do.
#[derive(Debug, Default)]
pub struct Report {
    /// `None` when the archive could not be read at all.
    pub compression: Option<Compression>,
    /// `OCI image layout` or `docker save`, once known.
    pub format: Option<&'static str>,
    /// Every name pinned, as `<upstream>/<repo>[:<tag>]@<digest>`.
    pub images: Vec<String>,
    pub blobs_imported: u64,
    pub bytes_imported: u64,
    pub blobs_skipped: u64,
    pub bytes_skipped: u64,
    /// What went wrong, each naming what it is about. Any makes the import
    /// a failure (the command exits non-zero).
    pub problems: Vec<String>,
    /// Worth knowing, not wrong.
    pub notes: Vec<String>,
    /// The archive could not be read to its end: no tag was written.
    pub interrupted: bool,
}

impl Report {
    pub fn is_success(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = self.format.unwrap_or("unknown format");
        let compression = self.compression.map_or("unreadable", Compression::as_str);
        writeln!(f, "archive: {format} ({compression})")?;
        writeln!(f, "images pinned: {}", self.images.len())?;
        for i in &self.images {
            writeln!(f, "  {i}")?;
        }
        writeln!(f, "blobs imported: {} ({})", self.blobs_imported, human(self.bytes_imported))?;
        writeln!(f, "blobs skipped (already stored): {} ({})", self.blobs_skipped, human(self.bytes_skipped))?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        if !self.problems.is_empty() {
            writeln!(f, "problems: {}", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
        }
        Ok(())
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Imports `archive` into the store `cfg` names, routing names with its
/// upstreams, as the command line does.
pub async fn run(cfg: &Config, archive: &Path, progress: &Progress) -> Result<Report, Error> {
    if cfg.storage.backend == Backend::Memory {
        return Err(Error::MemoryBackend);
    }
    let store = Arc::new(Store::open(&cfg.storage)?);
    let registry = Arc::new(Registry::new(store, cfg.storage.manifest_memory_bytes));
    import(&registry, &RoutingTable::new(cfg), archive, progress).await
}

/// Imports `path` into `registry` (see the module doc). Problems with the
/// archive's content are in the report; only an archive that cannot be
/// opened is an error.
pub async fn import(
    registry: &Arc<Registry>,
    routing: &RoutingTable,
    path: &Path,
    progress: &Progress,
) -> Result<Report, Error> {
    let archive = Archive::open(path).map_err(|source| Error::Open { path: path.display().to_string(), source })?;
    progress.start(archive.size);
    let mut run = Run {
        registry,
        store: registry.store().clone(),
        routing,
        progress,
        label: path.display().to_string(),
        report: Report { compression: Some(archive.compression), ..Default::default() },
        archive,
        listings: Listings::default(),
        files: Files::default(),
        refused: HashMap::new(),
        built: HashMap::new(),
        pinned: HashMap::new(),
    };
    match run.read_all().await {
        Ok(()) => run.pin_all().await,
        Err(stop) => {
            run.report.interrupted = true;
            run.report.problems.push(stop);
        }
    }
    progress.finish();
    Ok(run.report)
}

/// The small files that say what the archive holds.
#[derive(Default)]
struct Listings {
    oci_layout: Option<Bytes>,
    index: Option<Bytes>,
    docker: Option<Bytes>,
}

/// What an archive path is to the import.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    Layout,
    Index,
    DockerManifest,
    /// A file named by the digest of its bytes.
    Blob(Digest),
    /// A docker save layer named by an image id: hashed on the way.
    Unnamed,
    Other,
}

fn classify(path: &str) -> Item {
    match path {
        "oci-layout" => return Item::Layout,
        "index.json" => return Item::Index,
        "manifest.json" => return Item::DockerManifest,
        _ => {}
    }
    let sha256 = |hex: &str| format!("sha256:{hex}").parse::<Digest>().ok();
    let parts: Vec<&str> = path.split('/').collect();
    let named = match parts.as_slice() {
        ["blobs", alg, hex] => format!("{alg}:{hex}").parse().ok(),
        // docker save: the config, and podman's layers, named by digest.
        [file] => file.strip_suffix(".json").or_else(|| file.strip_suffix(".tar")).and_then(sha256),
        [_, "layer.tar"] => return Item::Unnamed,
        _ => None,
    };
    named.map_or(Item::Other, Item::Blob)
}

/// One import in progress.
struct Run<'a> {
    registry: &'a Arc<Registry>,
    store: Arc<Store>,
    routing: &'a RoutingTable,
    progress: &'a Progress,
    label: String,
    report: Report,
    archive: Archive,
    listings: Listings,
    files: Files,
    /// Blobs refused for their bytes: digest → why.
    refused: HashMap<Digest, String>,
    /// Manifests built here (docker save), not in the archive.
    built: HashMap<Digest, Bytes>,
    /// What this import pinned: digest → the repositories it is pinned in.
    pinned: HashMap<Digest, Vec<RepoKey>>,
}

/// A named image's tree, gathered before anything is pinned.
#[derive(Default)]
struct Tree {
    /// Manifests, leaves first: (digest, media type, body).
    order: Vec<(Digest, String, Bytes)>,
    seen: HashSet<Digest>,
    missing: Vec<String>,
    invalid: Vec<String>,
}

impl Run<'_> {
    /// A fatal read or storage error, as the report says it.
    fn stopped(&self, why: impl fmt::Display) -> String {
        format!(
            "reading {} stopped: {why}. No tag was written; the blobs imported so far are kept, so running the \
             import again with the whole archive finishes it",
            self.label
        )
    }

    fn problem(&mut self, text: String) {
        self.progress.line(&format!("problem: {text}"));
        self.report.problems.push(text);
    }

    // ---- reading -----------------------------------------------------

    async fn read_all(&mut self) -> Result<(), String> {
        loop {
            let entry = match self.archive.next_entry().await {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => return Err(self.stopped(e)),
            };
            self.progress.position(self.archive.consumed());
            if let Some(target) = &entry.link {
                self.files.links.insert(entry.path.clone(), target.clone());
                continue;
            }
            match classify(&entry.path) {
                Item::Layout => self.listings.oci_layout = Some(self.small(entry, LAYOUT_LIMIT).await?),
                Item::Index => self.listings.index = Some(self.small(entry, LISTING_LIMIT).await?),
                Item::DockerManifest => self.listings.docker = Some(self.small(entry, LISTING_LIMIT).await?),
                Item::Blob(d) => self.named_blob(entry, d).await?,
                Item::Unnamed => self.unnamed_blob(entry).await?,
                Item::Other => drop(entry),
            }
        }
        self.progress.position(self.archive.consumed());
        Ok(())
    }

    async fn small(&mut self, entry: Entry, limit: u64) -> Result<Bytes, String> {
        match self.archive.read_small(entry, limit).await {
            Ok(b) => Ok(b),
            Err(e) => Err(self.stopped(e)),
        }
    }

    /// A blob named by its digest: skipped when stored with this size,
    /// else written, verified and committed (or refused).
    async fn named_blob(&mut self, entry: Entry, d: Digest) -> Result<(), String> {
        let (path, size) = (entry.path.clone(), entry.size);
        self.files.blobs.insert(path.clone(), FileBlob { digest: d.clone(), size, by_name: true });
        match self.store.open_blob(&d).await {
            Ok(Some(h)) if h.size() == size => {
                drop(entry);
                self.skipped(&d, size);
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => return Err(self.stopped(e)),
        }
        entry.take();
        let mut w = BlobWriter::new(&self.store, &d);
        self.write(&mut w).await?;
        match w.verify(&d, Some(size)) {
            Ok(_) => self.commit(w, &d, size).await,
            Err(e) => {
                let why = format!("blob {d} ({path}) is refused: {e}");
                self.refused.insert(d, why.clone());
                self.problem(why);
                Ok(())
            }
        }
    }

    /// A docker save layer: named by its own hash, checked against the
    /// image config's `diff_ids` once `manifest.json` is read.
    async fn unnamed_blob(&mut self, entry: Entry) -> Result<(), String> {
        let path = entry.path.clone();
        entry.take();
        let mut w = BlobWriter::unnamed(&self.store, Algorithm::Sha256, path.clone());
        self.write(&mut w).await?;
        let (d, size) = w.seal().map_err(|e| self.stopped(e))?;
        self.files.blobs.insert(path, FileBlob { digest: d.clone(), size, by_name: false });
        match self.store.open_blob(&d).await {
            Ok(Some(h)) if h.size() == size => {
                self.skipped(&d, size);
                Ok(())
            }
            Ok(_) => self.commit(w, &d, size).await,
            Err(e) => Err(self.stopped(e)),
        }
    }

    fn skipped(&mut self, d: &Digest, size: u64) {
        self.report.blobs_skipped += 1;
        self.report.bytes_skipped += size;
        self.progress.blob(d, size, false);
    }

    async fn commit(&mut self, w: BlobWriter, d: &Digest, size: u64) -> Result<(), String> {
        match w.commit().await {
            Ok(true) => {
                self.report.blobs_imported += 1;
                self.report.bytes_imported += size;
                self.progress.blob(d, size, true);
                Ok(())
            }
            Ok(false) => Err(self.stopped(format!("blob {d} could not be written to the spool (is the disk full?)"))),
            Err(e) => Err(self.stopped(format!("blob {d}: {e}"))),
        }
    }

    /// Feeds the taken entry's bytes to `w`: the next chunk arrives (the
    /// reader thread decompresses it) while the previous one is written
    /// and hashed.
    async fn write(&mut self, w: &mut BlobWriter) -> Result<(), String> {
        let mut pending = None;
        let mut at = 0u64;
        loop {
            let chunk = match self.archive.chunk().await {
                Ok(c) => c,
                Err(e) => return Err(self.stopped(e)),
            };
            if let Some(p) = pending.take() {
                w.finish(p).await.map_err(|e| self.stopped(e))?;
            }
            let Some(chunk) = chunk else { break };
            let batch = Arc::new(Batch { start: at, chunks: vec![chunk] });
            at = batch.end();
            pending = Some(w.start(batch, |_| {}));
            self.progress.position(self.archive.consumed());
        }
        if !w.is_durable() {
            return Err(self.stopped("the spool file could not be written (is the disk full?)"));
        }
        Ok(())
    }

    // ---- pinning -----------------------------------------------------

    /// Pins every named image whose tree is whole, then tags it.
    async fn pin_all(&mut self) {
        let roots = if let Some(index) = self.listings.index.clone() {
            self.report.format = Some("OCI image layout");
            self.check_layout_version();
            self.layout_roots(&index)
        } else if let Some(listing) = self.listings.docker.clone() {
            self.report.format = Some("docker save");
            self.docker_roots(&listing).await
        } else {
            let why = "the archive has neither index.json (an OCI image layout) nor manifest.json (docker save): \
                       nothing names its images, so nothing was tagged";
            self.problem(why.to_string());
            return;
        };
        let (named, unnamed) = roots;
        for (name, digest, media_type) in named {
            self.pin_image(&name, &digest, &media_type).await;
        }
        for (digest, media_type) in unnamed {
            self.pin_referrer(&digest, &media_type).await;
        }
    }

    fn check_layout_version(&mut self) {
        #[derive(serde::Deserialize)]
        struct Layout {
            #[serde(rename = "imageLayoutVersion")]
            version: String,
        }
        let parsed = self.listings.oci_layout.as_ref().map(|b| serde_json::from_slice::<Layout>(b));
        match parsed {
            None => self.report.notes.push("no oci-layout file; read as an OCI image layout all the same".into()),
            Some(Ok(l)) if l.version.starts_with("1.") => {}
            Some(Ok(l)) => self.report.notes.push(format!("oci-layout version {:?}; read as 1.x", l.version)),
            Some(Err(e)) => self.problem(format!("oci-layout does not parse: {e}")),
        }
    }

    /// `index.json`'s entries: the named ones, and the unnamed ones
    /// (`digest`, media type) that may be referrers.
    #[allow(clippy::type_complexity)]
    fn layout_roots(&mut self, index: &[u8]) -> (Vec<(ImageName, Digest, String)>, Vec<(Digest, String)>) {
        let listing = match Manifest::parse(Some(media::OCI_INDEX), index) {
            Ok(m) => m,
            Err(e) => {
                self.problem(format!("index.json: {e}"));
                return Default::default();
            }
        };
        let (mut named, mut unnamed) = (Vec::new(), Vec::new());
        for d in listing.manifests {
            match names::of_index_entry(&d.annotations, &d.digest, self.routing) {
                Ok(Some(name)) => named.push((name, d.digest, d.media_type)),
                Ok(None) => unnamed.push((d.digest, d.media_type)),
                Err(why) => self.problem(format!("index.json: {why}")),
            }
        }
        (named, unnamed)
    }

    /// `manifest.json`'s images, with a manifest built for each.
    #[allow(clippy::type_complexity)]
    async fn docker_roots(&mut self, listing: &[u8]) -> (Vec<(ImageName, Digest, String)>, Vec<(Digest, String)>) {
        let items = match docker_save::parse(listing) {
            Ok(items) => items,
            Err(e) => {
                self.problem(e);
                return Default::default();
            }
        };
        self.report.notes.push(
            "docker save archive: each image's manifest was built here, so its digest differs from the one its \
             registry serves (pull by tag)"
                .into(),
        );
        let mut named = Vec::new();
        for item in items {
            let tags = item.repo_tags.clone().unwrap_or_default();
            let digest = match self.build_docker_manifest(&item).await {
                Ok(d) => d,
                Err(why) => {
                    self.problem(format!("{}: not imported: {why}", tags_or_config(&item)));
                    continue;
                }
            };
            if tags.is_empty() {
                self.report.notes.push(format!("image {} has no RepoTags: nothing to name it by", item.config));
            }
            for t in tags {
                match names::route(&t, &digest, self.routing) {
                    Ok(name) => named.push((name, digest.clone(), media::OCI_MANIFEST.to_string())),
                    Err(why) => self.problem(format!("manifest.json: {why}")),
                }
            }
        }
        (named, Vec::new())
    }

    async fn build_docker_manifest(&mut self, item: &docker_save::Item) -> Result<Digest, String> {
        let missing = |p: &str| format!("{p} is listed in manifest.json but not in the archive (or was refused)");
        let config = self.files.resolve(&item.config).cloned().ok_or_else(|| missing(&item.config))?;
        let config_body = self.read_blob(&config.digest, media::MAX_MANIFEST_BYTES as u64).await?;
        let config_body = config_body.ok_or_else(|| missing(&item.config))?;
        let mut layers = Vec::new();
        for path in &item.layers {
            let blob = self.files.resolve(path).cloned().ok_or_else(|| missing(path))?;
            let magic = self.read_magic(&blob.digest).await?;
            layers.push(docker_save::Layer { media_type: docker_save::layer_media_type(&magic), blob });
        }
        let (body, digest) = docker_save::build(item, &config, &config_body, &layers)?;
        self.built.insert(digest.clone(), body);
        Ok(digest)
    }

    /// A stored blob's bytes, if stored and at most `limit` long.
    async fn read_blob(&self, d: &Digest, limit: u64) -> Result<Option<Bytes>, String> {
        let Some(h) = self.store.open_blob(d).await.map_err(|e| e.to_string())? else { return Ok(None) };
        if h.size() > limit {
            return Err(format!("{d} is {} bytes, more than the {limit} a manifest or config may have", h.size()));
        }
        let size = h.size();
        let parts: Vec<Bytes> = h.stream(0, size).try_collect().await.map_err(|e| e.to_string())?;
        Ok(Some(parts.concat().into()))
    }

    async fn read_magic(&self, d: &Digest) -> Result<Vec<u8>, String> {
        let Some(h) = self.store.open_blob(d).await.map_err(|e| e.to_string())? else { return Ok(Vec::new()) };
        let end = h.size().min(4);
        let parts: Vec<Bytes> = h.stream(0, end).try_collect().await.map_err(|e| e.to_string())?;
        Ok(parts.concat())
    }

    /// Pins `name`'s tree and tags it, or says what it lacks.
    async fn pin_image(&mut self, name: &ImageName, root: &Digest, media_type: &str) {
        let mut tree = Tree::default();
        self.gather(&mut tree, root, media_type, 0).await;
        if !tree.invalid.is_empty() {
            self.problem(format!("{name}: not imported (no tag written): {}", tree.invalid.join("; ")));
            return;
        }
        if !tree.missing.is_empty() {
            self.problem(format!(
                "{name}: not imported (no tag written): {} blob(s) are in neither this bundle nor the store \
                 (an incremental bundle whose base was never imported?): {}",
                tree.missing.len(),
                tree.missing.join(", ")
            ));
            return;
        }
        if let Err(why) = self.pin_tree(&name.key, tree).await {
            self.problem(format!("{name}: not imported (no tag written): {why}"));
            return;
        }
        if let Some(tag) = &name.tag {
            if let Err(e) = self.registry.pin_tag(&name.key, tag, root).await {
                self.problem(format!("{name}: the tag could not be written: {e}"));
                return;
            }
        }
        let line = format!("{name}@{root}");
        self.progress.line(&format!("pinned {line}"));
        self.report.images.push(line);
    }

    /// Pins an unnamed `index.json` entry where its subject was pinned.
    async fn pin_referrer(&mut self, digest: &Digest, media_type: &str) {
        let mut tree = Tree::default();
        self.gather(&mut tree, digest, media_type, 0).await;
        let subject = tree
            .order
            .last()
            .and_then(|(_, mt, body)| Manifest::parse(Some(mt), body).ok())
            .and_then(|m| m.subject.map(|s| s.digest));
        let keys = subject.as_ref().and_then(|s| self.pinned.get(s)).cloned().unwrap_or_default();
        if keys.is_empty() {
            self.report.notes.push(format!(
                "index.json entry {digest} has no name and refers to no image of this import; not pinned"
            ));
            return;
        }
        if !tree.invalid.is_empty() || !tree.missing.is_empty() {
            let why = tree.invalid.into_iter().chain(tree.missing).collect::<Vec<_>>().join(", ");
            self.problem(format!("referrer {digest}: not imported: incomplete or invalid: {why}"));
            return;
        }
        for key in keys {
            let order = Tree { order: tree.order.clone(), ..Default::default() };
            match self.pin_tree(&key, order).await {
                Ok(()) => self.report.images.push(format!("{key}@{digest}")),
                Err(why) => self.problem(format!("referrer {digest} in {key}: not imported: {why}")),
            }
        }
    }

    /// Collects the manifests of the tree under `d`, leaves first, and what
    /// is missing or wrong in it.
    async fn gather(&mut self, tree: &mut Tree, d: &Digest, media_type: &str, depth: usize) {
        if !tree.seen.insert(d.clone()) {
            return;
        }
        if depth > MAX_DEPTH {
            tree.invalid.push(format!("indexes nested deeper than {MAX_DEPTH} at {d}"));
            return;
        }
        let body = match self.built.get(d) {
            Some(b) => Some(b.clone()),
            None => match self.read_blob(d, media::MAX_MANIFEST_BYTES as u64).await {
                // Not carried, but held already (published, pinned, cached):
                // an incremental bundle may leave it out.
                Ok(None) => self.registry.manifest(d).await.ok().flatten().map(|m| m.body.clone()),
                Ok(b) => b,
                Err(why) => {
                    tree.invalid.push(why);
                    return;
                }
            },
        };
        let Some(body) = body else {
            tree.missing.push(self.describe_missing(d));
            return;
        };
        let m = match Manifest::parse(Some(media_type), &body) {
            Ok(m) => m,
            Err(e) => {
                tree.invalid.push(format!("manifest {d}: {e}"));
                return;
            }
        };
        for child in &m.manifests {
            Box::pin(self.gather(tree, &child.digest, &child.media_type, depth + 1)).await;
        }
        for b in m.required_blobs() {
            match self.store.open_blob(&b.digest).await {
                Ok(Some(h)) if h.size() == b.size => {}
                Ok(Some(h)) => tree.invalid.push(format!(
                    "{} is {} bytes in the store, but manifest {d} says {}",
                    b.digest,
                    h.size(),
                    b.size
                )),
                Ok(None) => tree.missing.push(self.describe_missing(&b.digest)),
                Err(e) => tree.invalid.push(format!("{}: {e}", b.digest)),
            }
        }
        tree.order.push((d.clone(), m.media_type, body));
    }

    fn describe_missing(&self, d: &Digest) -> String {
        match self.refused.get(d) {
            Some(_) => format!("{d} (refused: it failed verification)"),
            None => d.to_string(),
        }
    }

    /// Pins a gathered tree's manifests in `key`, leaves first (each only
    /// once per repository and import).
    async fn pin_tree(&mut self, key: &RepoKey, tree: Tree) -> Result<(), String> {
        for (d, media_type, body) in tree.order {
            let keys = self.pinned.entry(d.clone()).or_default();
            if keys.contains(key) {
                continue;
            }
            self.registry.pin(key, &d, &media_type, body).await.map_err(|e| format!("manifest {d}: {e}"))?;
            self.pinned.entry(d).or_default().push(key.clone());
        }
        Ok(())
    }
}

fn tags_or_config(item: &docker_save::Item) -> String {
    match item.repo_tags.as_deref() {
        Some([first, ..]) => first.clone(),
        _ => item.config.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_are_classified() {
        let hex = "ab".repeat(32);
        let d: Digest = format!("sha256:{hex}").parse().unwrap();
        assert_eq!(classify("index.json"), Item::Index);
        assert_eq!(classify("oci-layout"), Item::Layout);
        assert_eq!(classify("manifest.json"), Item::DockerManifest);
        assert_eq!(classify(&format!("blobs/sha256/{hex}")), Item::Blob(d.clone()));
        assert_eq!(classify(&format!("{hex}.json")), Item::Blob(d.clone()), "docker save config");
        assert_eq!(classify(&format!("{hex}.tar")), Item::Blob(d), "podman layer");
        assert_eq!(classify(&format!("{hex}/layer.tar")), Item::Unnamed);
        assert_eq!(classify(&format!("{hex}/json")), Item::Other);
        assert_eq!(classify("blobs/sha256/nothex"), Item::Other);
        assert_eq!(classify("repositories"), Item::Other);
    }

    #[test]
    fn sizes_read_as_people_do() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
