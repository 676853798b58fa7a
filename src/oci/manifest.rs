//! What a manifest or index references: the one place manifests are parsed.
//!
//! Push validation (every referenced blob and child must exist), the
//! referrers API (`subject`), bundles (what travels with an image) and
//! garbage collection (what a manifest keeps alive) all need the same list
//! of descriptors. Parsing uses `oci-spec`'s image types, which also read
//! Docker schema 2 manifests and manifest lists (same shape, other media
//! types); our own [`Descriptor`] carries a parsed [`Digest`] so nothing
//! downstream handles digest strings.

use std::collections::BTreeMap;

use oci_spec::image::{ImageIndex, ImageManifest};

use super::media;
use super::Digest;

/// One reference from a manifest, with the fields the registry uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// `os/arch[/variant]` of an index entry, if it says.
    pub platform: Option<String>,
}

/// Whether a body is a single image (config + layers) or an index of
/// manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Index,
}

/// A parsed manifest or index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub kind: Kind,
    /// The media type it is stored and served with.
    pub media_type: String,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    /// An index's child manifests.
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to (signatures, SBOMs, attestations).
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("invalid manifest: {0}")]
    Invalid(String),
}

/// Media types stored as manifests, and which kind each is.
pub fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        media::OCI_MANIFEST | media::DOCKER_MANIFEST_V2 => Some(Kind::Image),
        media::OCI_INDEX | media::DOCKER_MANIFEST_LIST => Some(Kind::Index),
        _ => None,
    }
}

impl Manifest {
    /// Parses `body`, sent with `content_type` (the `Content-Type` of a push;
    /// `None` when unknown). A `mediaType` field in the body must agree with
    /// it; without either, the shape decides.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Manifest, ManifestError> {
        let declared = content_type.map(|c| c.split(';').next().unwrap_or("").trim()).filter(|c| !c.is_empty());
        let inner = media::sniff(body);
        let media_type = match (declared, inner.as_deref()) {
            (Some(d), Some(i)) if kind_of(d).is_some() && d != i && body_declares_media_type(body) => {
                return Err(ManifestError::Invalid(format!("mediaType {i:?} does not match Content-Type {d:?}")));
            }
            (Some(d), _) if kind_of(d).is_some() => d.to_string(),
            (Some(d), _) if d != "application/json" && d != "application/octet-stream" => {
                return Err(ManifestError::UnsupportedMediaType(d.to_string()))
            }
            (_, Some(i)) => i.to_string(),
            (_, None) => return Err(ManifestError::Invalid("not a manifest or index".into())),
        };
        let kind = kind_of(&media_type).ok_or_else(|| ManifestError::UnsupportedMediaType(media_type.clone()))?;
        match kind {
            Kind::Image => {
                let m: ImageManifest = serde_json::from_slice(body).map_err(invalid)?;
                check_schema(m.schema_version())?;
                Ok(Manifest {
                    kind,
                    media_type,
                    config: Some(descriptor(m.config())?),
                    layers: m.layers().iter().map(descriptor).collect::<Result<_, _>>()?,
                    manifests: Vec::new(),
                    subject: m.subject().as_ref().map(descriptor).transpose()?,
                    artifact_type: m.artifact_type().as_ref().map(|t| t.to_string()),
                    annotations: sorted(m.annotations()),
                })
            }
            Kind::Index => {
                let i: ImageIndex = serde_json::from_slice(body).map_err(invalid)?;
                check_schema(i.schema_version())?;
                Ok(Manifest {
                    kind,
                    media_type,
                    config: None,
                    layers: Vec::new(),
                    manifests: i.manifests().iter().map(descriptor).collect::<Result<_, _>>()?,
                    subject: i.subject().as_ref().map(descriptor).transpose()?,
                    artifact_type: i.artifact_type().as_ref().map(|t| t.to_string()),
                    annotations: sorted(i.annotations()),
                })
            }
        }
    }

    /// The blobs this manifest needs: its config and layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter())
    }

    /// The blobs a registry must hold before it accepts this manifest:
    /// every blob but non-distributable layers (clients fetch those from
    /// their `urls`; see [`media::is_non_distributable`]).
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.blobs().filter(|d| !media::is_non_distributable(&d.media_type))
    }

    /// The artifact type a referrers listing shows for this manifest: its
    /// `artifactType`, else its config's media type (image-spec 1.1).
    pub fn effective_artifact_type(&self) -> Option<&str> {
        self.artifact_type.as_deref().or(self.config.as_ref().map(|c| c.media_type.as_str()))
    }
}

fn body_declares_media_type(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(body).ok().and_then(|p| p.media_type).is_some_and(|m| !m.is_empty())
}

fn check_schema(v: u32) -> Result<(), ManifestError> {
    if v == 2 {
        Ok(())
    } else {
        Err(ManifestError::Invalid(format!("schemaVersion {v} is not supported (2 is)")))
    }
}

fn invalid(e: serde_json::Error) -> ManifestError {
    ManifestError::Invalid(e.to_string())
}

fn sorted(m: &Option<std::collections::HashMap<String, String>>) -> BTreeMap<String, String> {
    m.as_ref().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
}

fn descriptor(d: &oci_spec::image::Descriptor) -> Result<Descriptor, ManifestError> {
    let digest: Digest = d
        .digest()
        .as_ref()
        .parse()
        .map_err(|e| ManifestError::Invalid(format!("descriptor digest {:?}: {e}", d.digest().as_ref())))?;
    let platform = d.platform().as_ref().map(|p| {
        let mut s = format!("{}/{}", p.os(), p.architecture());
        if let Some(v) = p.variant() {
            s.push('/');
            s.push_str(v);
        }
        s
    });
    Ok(Descriptor {
        media_type: d.media_type().to_string(),
        digest,
        size: d.size(),
        artifact_type: d.artifact_type().as_ref().map(|t| t.to_string()),
        annotations: sorted(d.annotations()),
        platform,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":10}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":20}}]{extra}}}"#,
            media::OCI_MANIFEST,
            d(1),
            d(2)
        )
    }

    #[test]
    fn an_image_lists_config_layers_and_subject() {
        let body = image(&format!(
            r#","artifactType":"application/vnd.example.sig","subject":{{"mediaType":"{}","digest":"{}","size":5}},"annotations":{{"a":"b"}}"#,
            media::OCI_MANIFEST,
            d(3)
        ));
        let m = Manifest::parse(Some(media::OCI_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(m.kind, Kind::Image);
        let blobs: Vec<String> = m.blobs().map(|b| b.digest.to_string()).collect();
        assert_eq!(blobs, vec![d(1), d(2)]);
        assert_eq!(m.subject.as_ref().unwrap().digest.to_string(), d(3));
        assert_eq!(m.effective_artifact_type(), Some("application/vnd.example.sig"));
        assert_eq!(m.annotations["a"], "b");
    }

    #[test]
    fn an_index_lists_children_with_platforms() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{}","size":7,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            media::DOCKER_MANIFEST_LIST,
            media::DOCKER_MANIFEST_V2,
            d(4)
        );
        let m = Manifest::parse(None, body.as_bytes()).unwrap();
        assert_eq!(m.kind, Kind::Index);
        assert_eq!(m.media_type, media::DOCKER_MANIFEST_LIST);
        assert_eq!(m.manifests[0].digest.to_string(), d(4));
        assert_eq!(m.manifests[0].platform.as_deref(), Some("linux/arm64/v8"));
        assert_eq!(m.blobs().count(), 0);
    }

    #[test]
    fn without_artifact_type_the_config_media_type_is_shown() {
        let m = Manifest::parse(Some(media::OCI_MANIFEST), image("").as_bytes()).unwrap();
        assert_eq!(m.effective_artifact_type(), Some("application/vnd.oci.image.config.v1+json"));
    }

    #[test]
    fn non_distributable_layers_are_not_required() {
        let body = image("").replace(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        );
        let m = Manifest::parse(Some(media::OCI_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(m.blobs().count(), 2);
        let required: Vec<String> = m.required_blobs().map(|b| b.digest.to_string()).collect();
        assert_eq!(required, vec![d(1)], "the config only");
    }

    #[test]
    fn bad_manifests_are_refused() {
        assert!(matches!(Manifest::parse(Some(media::OCI_MANIFEST), b"not json"), Err(ManifestError::Invalid(_))));
        assert!(matches!(
            Manifest::parse(Some("application/vnd.example.unknown+json"), image("").as_bytes()),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        // Content-Type and mediaType disagree.
        assert!(matches!(
            Manifest::parse(Some(media::OCI_INDEX), image("").as_bytes()),
            Err(ManifestError::Invalid(_))
        ));
        let bad_digest = image("").replace(&d(2), "sha256:nothex");
        assert!(matches!(Manifest::parse(None, bad_digest.as_bytes()), Err(ManifestError::Invalid(_))));
        let v1 = image("").replace("\"schemaVersion\":2", "\"schemaVersion\":1");
        assert!(matches!(Manifest::parse(None, v1.as_bytes()), Err(ManifestError::Invalid(_))));
        // An index body pushed as an image manifest (no mediaType field).
        let idx = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(Manifest::parse(Some(media::OCI_MANIFEST), idx.as_bytes()).is_err());
    }
}
