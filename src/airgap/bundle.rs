//! The bundle format: an OCI image layout (image-spec `image-layout.md`)
//! as one plain tar, so that `skopeo copy oci-archive:site.tar:<ref>`,
//! `oras`, `crane` and hauler read it as well as `bundle import` does.
//!
//! ```text
//! site.tar
//! ├── oci-layout               {"imageLayoutVersion":"1.0.0"}
//! ├── index.json               one descriptor per image, named by its full
//! │                            reference in org.opencontainers.image.ref.name
//! ├── klts-mirror.lock         the lock (see `lock`); extra root files are
//! │                            allowed in a layout and ignored by other tools
//! └── blobs/<alg>/<hex>        manifests, configs and layers, each once
//! ```
//!
//! The small files come first and the blobs after them, manifests before
//! the blobs they name, so that a reader learns what to expect before the
//! bytes arrive and never needs to seek.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::oci::manifest::{Descriptor, Manifest};
use crate::oci::{media, Digest};

/// The layout marker file and its only content.
pub const OCI_LAYOUT: &str = "oci-layout";
pub const OCI_LAYOUT_BODY: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// The layout's index of images.
pub const INDEX_JSON: &str = "index.json";
/// The lock, embedded so that the archive checks itself on its own.
pub const LOCK_ENTRY: &str = "klts-mirror.lock";
/// How an image is named in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why a bundle could not be made or read. Each variant is one line (a
/// list of problems is one line per problem), as the CLI prints it.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Everything wrong with the request, found before anything is written:
    /// bad references, unknown images, unreachable upstreams.
    #[error("{}", .0.join("\n"))]
    Problems(Vec<String>),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("lock {path}: {why}")]
    Lock { path: PathBuf, why: String },
    /// Bytes that did not match the digest they were fetched by; the bundle
    /// is not written.
    #[error("blob {digest}: {why}")]
    Corrupt { digest: Digest, why: String },
    #[error("internal: {0}")]
    Internal(String),
}

impl BundleError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> BundleError {
        let path = path.into();
        move |source| BundleError::Io { path, source }
    }
}

/// `blobs/<alg>/<hex>`: where a digest's bytes live in a layout.
pub fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

/// The digest a `blobs/<alg>/<hex>` entry claims to hold; `None` for any
/// other path (or a name that is not a digest we can check).
pub fn blob_digest(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("./").unwrap_or(path).strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    format!("{alg}:{hex}").parse().ok()
}

/// One image as `index.json` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The full reference (`registry.k8s.io/kube-apiserver:v1.30.0`).
    pub name: String,
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// The body of `index.json` for `entries`, in their order.
pub fn index_json(entries: &[IndexEntry]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "mediaType": e.media_type,
                "digest": e.digest,
                "size": e.size,
                "annotations": { REF_NAME: e.name },
            })
        })
        .collect();
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests });
    serde_json::to_vec_pretty(&index).expect("an index always serializes")
}

/// The descriptors of an `index.json` (named or not: other tools may write
/// unnamed ones).
pub fn read_index_json(body: &[u8]) -> Result<Vec<Descriptor>, String> {
    Manifest::parse(Some(media::OCI_INDEX), body).map(|m| m.manifests).map_err(|e| e.to_string())
}

/// Writes a layout archive entry by entry. Entries carry fixed metadata
/// (mode 0644/0755, owner 0, mtime 0), so the same content always makes
/// the same archive, byte for byte.
pub struct ArchiveWriter<W: Write> {
    tar: tar::Builder<W>,
}

impl<W: Write> ArchiveWriter<W> {
    pub fn new(out: W) -> Self {
        ArchiveWriter { tar: tar::Builder::new(out) }
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        // GNU headers: sizes over 8 GiB and names over 100 bytes (sha512).
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Directory, 0, 0o755);
        self.tar.append_data(&mut h, path, io::empty())
    }

    pub fn file(&mut self, path: &str, body: &[u8]) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Regular, body.len() as u64, 0o644);
        self.tar.append_data(&mut h, path, body)
    }

    /// A blob of `size` bytes read from `body`, which must yield exactly
    /// that many (a reader that checks its bytes fails the entry instead).
    pub fn blob(&mut self, d: &Digest, size: u64, body: impl Read) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Regular, size, 0o644);
        self.tar.append_data(&mut h, blob_path(d), body)
    }

    /// Writes the end-of-archive marker and hands back the writer.
    pub fn finish(self) -> io::Result<W> {
        self.tar.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_round_trip() {
        let d = Digest::of(b"x");
        assert_eq!(blob_path(&d), format!("blobs/sha256/{}", d.hex()));
        assert_eq!(blob_digest(&blob_path(&d)), Some(d.clone()));
        assert_eq!(blob_digest(&format!("./{}", blob_path(&d))), Some(d));
        assert_eq!(blob_digest("blobs/sha256/nothex"), None);
        assert_eq!(blob_digest("index.json"), None);
        assert_eq!(blob_digest("blobs/md5/abc"), None);
    }

    #[test]
    fn index_json_names_each_image_and_reads_back() {
        let e = IndexEntry {
            name: "registry.k8s.io/pause:3.9".into(),
            media_type: media::OCI_INDEX.into(),
            digest: Digest::of(b"i"),
            size: 7,
        };
        let body = index_json(std::slice::from_ref(&e));
        let read = read_index_json(&body).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].digest, e.digest);
        assert_eq!(read[0].annotations[REF_NAME], e.name);
        assert_eq!(read[0].size, 7);
    }

    #[test]
    fn the_archive_is_a_plain_tar_in_layout_order() {
        let d = Digest::of(b"layer bytes");
        let long = crate::oci::Digest::of_with(crate::oci::Algorithm::Sha512, b"x");
        let mut w = ArchiveWriter::new(Vec::new());
        w.file(OCI_LAYOUT, OCI_LAYOUT_BODY).unwrap();
        w.file(INDEX_JSON, b"{}").unwrap();
        w.dir("blobs/").unwrap();
        w.blob(&d, 11, &b"layer bytes"[..]).unwrap();
        w.blob(&long, 1, &b"x"[..]).unwrap();
        let bytes = w.finish().unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let names: Vec<(String, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().to_string_lossy().into_owned(), e.size(), e.header().mtime().unwrap())
            })
            .collect();
        let expected = vec![
            (OCI_LAYOUT.to_string(), OCI_LAYOUT_BODY.len() as u64, 0),
            (INDEX_JSON.to_string(), 2, 0),
            ("blobs/".to_string(), 0, 0),
            (blob_path(&d), 11, 0),
            (blob_path(&long), 1, 0),
        ];
        assert_eq!(names, expected, "sha512 names pass 100 bytes and still round-trip");
    }
}
