//! The lock: what a bundle's references resolved to, and everything each
//! one needs, written beside the archive (`site.tar` → `site.lock`) and
//! inside it (`klts-mirror.lock`).
//!
//! It serves three readers. An auditor sees which digest every tag meant
//! on the day the bundle was made. `bundle verify` knows what the archive
//! must hold. And next month's `bundle create --since site.lock` leaves out
//! every manifest and blob listed here, because the site already has them:
//! the new lock still lists everything its references need (so it can be
//! the base of the one after), names its base by the base lock's own
//! digest, and says which digests that base carries.
//!
//! ```json
//! {
//!   "version": 1,
//!   "base": { "digest": "sha256:…", "file": "2024-05.lock" },
//!   "platforms": ["linux/amd64"],
//!   "images": {
//!     "registry.k8s.io/pause:3.9": {
//!       "digest": "sha256:…", "media_type": "application/vnd.oci.image.index.v1+json", "size": 1624,
//!       "needs": [ { "digest": "sha256:…", "size": 527, "media_type": "…manifest.v1+json" }, … ],
//!       "left_out": [ { "digest": "sha256:…", "platform": "linux/arm64/v8" } ]
//!     },
//!     "registry.k8s.io/pause:sha256-….sig": { …, "attached_to": "registry.k8s.io/pause:3.9" }
//!   },
//!   "carried_by_base": ["sha256:…"]
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BundleError;
use crate::oci::Digest;

/// The format written; a reader refuses others. Readers ignore fields they
/// do not know, so a field can be added without a new version; a change
/// that an older reader would misread takes one.
pub const VERSION: u32 = 1;

/// Largest lock read (a lock lists every blob of a bundle: thousands of
/// entries are a few MiB).
const MAX_LOCK_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub version: u32,
    /// The lock this bundle was made `--since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Base>,
    /// `--platform` as given; empty: every platform travels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// By full reference (`registry.k8s.io/kube-apiserver:v1.30.0`).
    pub images: BTreeMap<String, LockedImage>,
    /// Digests listed here that the archive leaves out because the base
    /// lists them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub carried_by_base: BTreeSet<Digest>,
}

/// The lock a bundle was made `--since`: the sha256 of its file, and its
/// file name for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    pub digest: Digest,
    pub file: String,
}

/// What one reference resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedImage {
    /// The manifest (or index) the reference names, kept byte-exact.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// For a signature, attestation or SBOM: the reference it was found for
    /// (as an OCI referrer of it or a cosign `sha256-<hex>.sig|.att|.sbom` tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_to: Option<String>,
    /// Every other manifest and blob the reference needs: carried child
    /// manifests, configs, layers.
    pub needs: Vec<Content>,
    /// Children of an index that `--platform` kept out of the bundle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOut>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOut {
    pub digest: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

impl Lock {
    pub fn new() -> Lock {
        Lock { version: VERSION, ..Lock::default() }
    }

    /// Every digest this lock lists: each reference's own manifest and
    /// everything it needs. What a bundle made `--since` this lock leaves
    /// out.
    pub fn listed(&self) -> BTreeSet<Digest> {
        self.images
            .values()
            .flat_map(|i| std::iter::once(&i.digest).chain(i.needs.iter().map(|c| &c.digest)))
            .cloned()
            .collect()
    }

    /// Children deliberately not carried (`--platform`).
    pub fn left_out(&self) -> BTreeSet<Digest> {
        self.images.values().flat_map(|i| i.left_out.iter().map(|l| l.digest.clone())).collect()
    }

    /// Records `base` as this lock's base and returns what it carries of
    /// this lock's content: every digest this lock lists that `base`
    /// lists too.
    pub fn subtract(&mut self, base: &Lock, base_digest: Digest, base_file: String) -> &BTreeSet<Digest> {
        let theirs = base.listed();
        self.carried_by_base = self.listed().intersection(&theirs).cloned().collect();
        self.base = Some(Base { digest: base_digest, file: base_file });
        &self.carried_by_base
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut body = serde_json::to_vec_pretty(self).expect("a lock always serializes");
        body.push(b'\n');
        body
    }

    pub fn from_json(body: &[u8]) -> Result<Lock, String> {
        let lock: Lock = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if lock.version != VERSION {
            return Err(format!("lock format version {} is not supported ({VERSION} is)", lock.version));
        }
        Ok(lock)
    }

    /// Reads a lock file and the digest of its bytes (what a bundle made
    /// `--since` it records as its base).
    pub fn read(path: &Path) -> Result<(Lock, Digest), BundleError> {
        let lock_err = |why: String| BundleError::Lock { path: path.to_path_buf(), why };
        let len = std::fs::metadata(path).map_err(BundleError::io(path))?.len();
        if len > MAX_LOCK_BYTES {
            return Err(lock_err(format!("{len} bytes is more than a lock can be ({MAX_LOCK_BYTES})")));
        }
        let body = std::fs::read(path).map_err(BundleError::io(path))?;
        Ok((Lock::from_json(&body).map_err(lock_err)?, Digest::of(&body)))
    }
}

/// `site.tar` → `site.lock`: the lock beside an archive.
pub fn beside(archive: &Path) -> PathBuf {
    archive.with_extension("lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        format!("sha256:{}", format!("{n:02x}").repeat(32)).parse().unwrap()
    }

    fn content(n: u8) -> Content {
        Content { digest: d(n), size: n as u64 * 10, media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into() }
    }

    fn image(top: u8, needs: &[u8]) -> LockedImage {
        LockedImage {
            digest: d(top),
            media_type: crate::oci::media::OCI_INDEX.into(),
            size: 100,
            attached_to: None,
            needs: needs.iter().map(|&n| content(n)).collect(),
            left_out: vec![],
        }
    }

    fn lock(images: &[(&str, LockedImage)]) -> Lock {
        let mut l = Lock::new();
        for (name, i) in images {
            l.images.insert(name.to_string(), i.clone());
        }
        l
    }

    #[test]
    fn a_lock_round_trips_through_json() {
        let mut l = lock(&[("registry.k8s.io/pause:3.9", image(1, &[2, 3]))]);
        let mut sig = image(9, &[10]);
        sig.attached_to = Some("registry.k8s.io/pause:3.9".into());
        l.images.insert(format!("registry.k8s.io/pause:sha256-{}.sig", d(1).hex()), sig);
        l.images.get_mut("registry.k8s.io/pause:3.9").unwrap().left_out =
            vec![LeftOut { digest: d(4), platform: Some("linux/arm64/v8".into()) }];
        l.platforms = vec!["linux/amd64".into()];
        l.subtract(&lock(&[("x:1", image(3, &[]))]), d(7), "old.lock".into());
        let body = l.to_json();
        assert_eq!(Lock::from_json(&body).unwrap(), l);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["images"]["registry.k8s.io/pause:3.9"]["needs"][0]["digest"], d(2).as_str());
        assert_eq!(v["images"]["registry.k8s.io/pause:3.9"]["left_out"][0]["platform"], "linux/arm64/v8");
        assert_eq!(v["base"]["digest"], d(7).as_str());
        assert_eq!(v["carried_by_base"], serde_json::json!([d(3).as_str()]));
        assert_eq!(l.left_out(), BTreeSet::from([d(4)]));
    }

    #[test]
    fn a_plain_lock_has_no_empty_fields() {
        let v: serde_json::Value = serde_json::from_slice(&lock(&[("a:1", image(1, &[]))]).to_json()).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["images", "version"]);
        let image_keys: Vec<&String> = v["images"]["a:1"].as_object().unwrap().keys().collect();
        assert_eq!(image_keys, ["digest", "media_type", "needs", "size"]);
    }

    #[test]
    fn since_subtracts_everything_the_base_lists_and_nothing_else() {
        // Last month: pause (index 1 → 2, 3) and proxy (index 4 → 5, 6).
        let old = lock(&[("pause:3.9", image(1, &[2, 3])), ("proxy:v1", image(4, &[5, 6]))]);
        // This month: pause unchanged, proxy moved to index 7 sharing blob 5,
        // and a new image whose top manifest is one the base had as a child.
        let mut new =
            lock(&[("pause:3.9", image(1, &[2, 3])), ("proxy:v2", image(7, &[5, 8])), ("other:1", image(2, &[9]))]);
        let carried = new.subtract(&old, d(99), "old.lock".into()).clone();
        assert_eq!(carried, BTreeSet::from([d(1), d(2), d(3), d(5)]));
        let to_carry: BTreeSet<Digest> = new.listed().difference(&carried).cloned().collect();
        assert_eq!(to_carry, BTreeSet::from([d(7), d(8), d(9)]));
        assert_eq!(new.base.as_ref().unwrap().digest, d(99));
        assert_eq!(new.images.len(), 3, "the new lock still lists everything");
    }

    #[test]
    fn bad_locks_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        std::fs::write(&p, br#"{"version":2,"images":{}}"#).unwrap();
        let e = Lock::read(&p).unwrap_err().to_string();
        assert!(e.contains("x.lock") && e.contains("version 2"), "{e}");
        std::fs::write(&p, b"not json").unwrap();
        assert!(Lock::read(&p).is_err());
        std::fs::write(&p, lock(&[("a:1", image(1, &[]))]).to_json()).unwrap();
        let (l, digest) = Lock::read(&p).unwrap();
        assert_eq!(l.images.len(), 1);
        assert_eq!(digest, Digest::of(&std::fs::read(&p).unwrap()));
        assert_eq!(beside(Path::new("/x/site.tar")), Path::new("/x/site.lock"));
    }
}
