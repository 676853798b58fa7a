//! `docker save` archives: `manifest.json` lists each image's config file,
//! layer files and `RepoTags`, and no registry manifest travels with them,
//! so one is built here.
//!
//! The built manifest is an OCI image manifest (config
//! `application/vnd.oci.image.config.v1+json`, layers
//! `application/vnd.oci.image.layer.v1.tar`, `+gzip` or `+zstd` as their
//! first bytes say) serialized deterministically, so importing the same
//! archive twice gives the same digest. **It is not the manifest the
//! image's registry serves**: a pull by the registry's digest does not find
//! it; pull by tag, or carry the image as an OCI layout (`bundle create`,
//! `skopeo copy … oci-archive:`) to keep registry digests.
//!
//! Trust: a config is named by its digest (`<hex>.json`, or
//! `blobs/sha256/<hex>` in docker 25+), so the import verified it by name;
//! layers are either named by digest too, or (older docker, `<id>/layer.tar`)
//! hashed as they pass and must then equal the config's `rootfs.diff_ids`.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::oci::Digest;

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// One image of `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Item {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

pub fn parse(manifest_json: &[u8]) -> Result<Vec<Item>, String> {
    serde_json::from_slice(manifest_json).map_err(|e| format!("manifest.json: {e}"))
}

/// A file of the archive that became a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBlob {
    pub digest: Digest,
    pub size: u64,
    /// Named by its digest in the archive (verified against the name), as
    /// opposed to hashed on the way (checked against `diff_ids` here).
    pub by_name: bool,
}

/// The archive's files that became blobs, and its links, by path.
#[derive(Debug, Default)]
pub struct Files {
    pub blobs: HashMap<String, FileBlob>,
    pub links: HashMap<String, String>,
}

impl Files {
    /// The blob at `path`, following links (a few hops at most).
    pub fn resolve(&self, path: &str) -> Option<&FileBlob> {
        let mut p = path.trim_start_matches("./");
        for _ in 0..8 {
            if let Some(b) = self.blobs.get(p) {
                return Some(b);
            }
            p = self.links.get(p)?;
        }
        None
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: String,
    size: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Deserialize)]
struct Config {
    rootfs: Option<RootFs>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// What a layer's first bytes say about its compression.
pub fn layer_media_type(magic: &[u8]) -> String {
    match crate::airgap::archive::Compression::sniff(magic) {
        crate::airgap::archive::Compression::Gzip => format!("{LAYER_MEDIA_TYPE}+gzip"),
        crate::airgap::archive::Compression::Zstd => format!("{LAYER_MEDIA_TYPE}+zstd"),
        crate::airgap::archive::Compression::None => LAYER_MEDIA_TYPE.to_string(),
    }
}

/// A layer as the manifest will list it.
pub struct Layer {
    pub blob: FileBlob,
    pub media_type: String,
}

/// Builds the manifest of `item` from its config's bytes and its layers
/// (in order); checks hashed layers against `diff_ids`. Returns the body
/// and its digest.
pub fn build(item: &Item, config: &FileBlob, config_body: &[u8], layers: &[Layer]) -> Result<(Bytes, Digest), String> {
    let parsed: Config =
        serde_json::from_slice(config_body).map_err(|e| format!("config {} does not parse: {e}", item.config))?;
    let diff_ids = parsed.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    for (i, (layer, path)) in layers.iter().zip(&item.layers).enumerate() {
        if layer.blob.by_name {
            continue;
        }
        let expected = diff_ids.get(i).map(String::as_str);
        if expected != Some(layer.blob.digest.as_str()) {
            return Err(format!(
                "layer {path} hashes to {}, but the image config lists {} as layer {i}: refused",
                layer.blob.digest,
                expected.unwrap_or("nothing")
            ));
        }
    }
    let m = ImageManifest {
        schema_version: 2,
        media_type: crate::oci::media::OCI_MANIFEST,
        config: Descriptor { media_type: CONFIG_MEDIA_TYPE, digest: config.digest.to_string(), size: config.size },
        layers: layers
            .iter()
            .map(|l| Descriptor { media_type: &l.media_type, digest: l.blob.digest.to_string(), size: l.blob.size })
            .collect(),
    };
    let body = Bytes::from(serde_json::to_vec(&m).map_err(|e| e.to_string())?);
    let digest = Digest::of(&body);
    Ok((body, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(data: &[u8], by_name: bool) -> FileBlob {
        FileBlob { digest: Digest::of(data), size: data.len() as u64, by_name }
    }

    #[test]
    fn links_are_followed() {
        let mut f = Files::default();
        f.blobs.insert("a/layer.tar".into(), blob(b"x", false));
        f.links.insert("b/layer.tar".into(), "a/layer.tar".into());
        f.links.insert("c/layer.tar".into(), "b/layer.tar".into());
        f.links.insert("loop".into(), "loop".into());
        assert_eq!(f.resolve("./c/layer.tar"), Some(&blob(b"x", false)));
        assert_eq!(f.resolve("loop"), None);
        assert_eq!(f.resolve("nowhere"), None);
    }

    #[test]
    fn manifests_are_built_deterministically_and_layers_checked() {
        let layer = blob(b"layer bytes", false);
        let config_body = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#, layer.digest);
        let config = blob(config_body.as_bytes(), true);
        let item = Item { config: "c.json".into(), repo_tags: None, layers: vec!["1/layer.tar".into()] };
        let layers = [Layer { blob: layer.clone(), media_type: layer_media_type(b"ustar") }];
        let (body, digest) = build(&item, &config, config_body.as_bytes(), &layers).unwrap();
        assert_eq!(build(&item, &config, config_body.as_bytes(), &layers).unwrap().1, digest, "same bytes twice");
        let m = crate::oci::manifest::Manifest::parse(None, &body).unwrap();
        assert_eq!(m.config.unwrap().digest, config.digest);
        assert_eq!(m.layers[0].media_type, LAYER_MEDIA_TYPE);
        assert_eq!(m.layers[0].size, layer.size);

        let wrong = [Layer { blob: blob(b"other bytes", false), media_type: LAYER_MEDIA_TYPE.into() }];
        assert!(build(&item, &config, config_body.as_bytes(), &wrong).unwrap_err().contains("refused"));
        let named = [Layer { blob: blob(b"other bytes", true), media_type: LAYER_MEDIA_TYPE.into() }];
        assert!(build(&item, &config, config_body.as_bytes(), &named).is_ok(), "verified by its name");
        assert_eq!(layer_media_type(&[0x1f, 0x8b]), "application/vnd.oci.image.layer.v1.tar+gzip");
    }
}
