//! The referrers list (distribution-spec 1.1 `GET /v2/<name>/referrers/<digest>`):
//! one descriptor per manifest whose `subject` is the digest asked about,
//! answered as an OCI image index.
//!
//! The same descriptor shape is what the store keeps per referrer and what
//! an upstream's list is read into, so a local and a remote list merge
//! without translation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::manifest::{Descriptor, Manifest};
use super::media;
use super::Digest;

/// `OCI-Filters-Applied` names this filter when `?artifactType=` was used.
pub const FILTER_ARTIFACT_TYPE: &str = "artifactType";

/// One entry of a referrers list. `artifactType` is the referrer's own,
/// else its config's media type (image-spec 1.1); `annotations` are the
/// referrer's top-level annotations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referrer {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(rename = "artifactType", default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Referrer {
    /// The entry for manifest `m`, stored as `digest` with `size` bytes.
    pub fn of(m: &Manifest, digest: &Digest, size: u64) -> Referrer {
        Referrer {
            media_type: m.media_type.clone(),
            digest: digest.clone(),
            size,
            artifact_type: m.effective_artifact_type().map(str::to_string),
            annotations: m.annotations.clone(),
        }
    }

    /// Whether this entry passes an `?artifactType=` filter (`None`: no filter).
    pub fn matches(&self, artifact_type: Option<&str>) -> bool {
        artifact_type.is_none_or(|t| self.artifact_type.as_deref() == Some(t))
    }
}

impl From<&Descriptor> for Referrer {
    /// An entry of someone else's referrers index, as listed there.
    fn from(d: &Descriptor) -> Referrer {
        Referrer {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            artifact_type: d.artifact_type.clone(),
            annotations: d.annotations.clone(),
        }
    }
}

/// The body of a referrers answer: an OCI image index of `entries`.
pub fn index_body(entries: &[Referrer]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Index<'a> {
        #[serde(rename = "schemaVersion")]
        schema_version: u32,
        #[serde(rename = "mediaType")]
        media_type: &'static str,
        manifests: &'a [Referrer],
    }
    serde_json::to_vec(&Index { schema_version: 2, media_type: media::OCI_INDEX, manifests: entries })
        .expect("a referrers index always serializes")
}

/// Reads a referrers index (an upstream's answer) into its entries.
pub fn parse_index(body: &[u8]) -> Result<Vec<Referrer>, super::manifest::ManifestError> {
    let index = Manifest::parse(Some(media::OCI_INDEX), body)?;
    Ok(index.manifests.iter().map(Referrer::from).collect())
}

/// `local` then every entry of `remote` not already listed, each digest
/// once: what this site published is listed as published.
pub fn merge(mut local: Vec<Referrer>, remote: Vec<Referrer>) -> Vec<Referrer> {
    for r in remote {
        if !local.iter().any(|l| l.digest == r.digest) {
            local.push(r);
        }
    }
    local
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        format!("sha256:{}", format!("{n:02x}").repeat(32)).parse().unwrap()
    }

    fn artifact(artifact_type: Option<&str>) -> Manifest {
        let at = artifact_type.map(|t| format!(r#""artifactType":"{t}","#)).unwrap_or_default();
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}",{at}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[],"subject":{{"mediaType":"{}","digest":"{}","size":9}},"annotations":{{"k":"v"}}}}"#,
            media::OCI_MANIFEST,
            d(1),
            media::OCI_MANIFEST,
            d(2)
        );
        Manifest::parse(Some(media::OCI_MANIFEST), body.as_bytes()).unwrap()
    }

    #[test]
    fn an_entry_shows_the_effective_artifact_type_and_annotations() {
        let r = Referrer::of(&artifact(Some("application/vnd.example.sig")), &d(3), 42);
        assert_eq!(r.artifact_type.as_deref(), Some("application/vnd.example.sig"));
        assert_eq!(r.annotations["k"], "v");
        let r = Referrer::of(&artifact(None), &d(3), 42);
        assert_eq!(r.artifact_type.as_deref(), Some("application/vnd.oci.image.config.v1+json"));
        assert!(r.matches(None));
        assert!(r.matches(Some("application/vnd.oci.image.config.v1+json")));
        assert!(!r.matches(Some("application/vnd.example.sig")));
    }

    #[test]
    fn the_index_body_round_trips() {
        let entries = vec![Referrer::of(&artifact(Some("a/b")), &d(3), 42), Referrer::of(&artifact(None), &d(4), 7)];
        let body = index_body(&entries);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], media::OCI_INDEX);
        assert_eq!(v["manifests"][0]["digest"], d(3).as_str());
        assert_eq!(v["manifests"][0]["artifactType"], "a/b");
        assert_eq!(parse_index(&body).unwrap(), entries);
        let empty: serde_json::Value = serde_json::from_slice(&index_body(&[])).unwrap();
        assert_eq!(empty["manifests"], serde_json::json!([]));
    }

    #[test]
    fn merging_lists_each_digest_once_local_first() {
        let local = vec![Referrer::of(&artifact(Some("local")), &d(3), 1)];
        let remote = vec![Referrer::of(&artifact(Some("remote")), &d(3), 1), Referrer::of(&artifact(None), &d(5), 2)];
        let merged = merge(local, remote);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].artifact_type.as_deref(), Some("local"));
        assert_eq!(merged[1].digest, d(5));
    }
}
