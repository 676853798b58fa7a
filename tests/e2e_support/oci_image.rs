//! Builds a small, deterministic multi-arch image as an OCI image layout on
//! disk, so the test needs no internet and every run pushes the same digests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use super::process::run_tool;
use super::sha256_digest;

pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The tag (`org.opencontainers.image.ref.name`) under which the layout holds
/// the index; skopeo reads it as `oci:<dir>:<LAYOUT_TAG>`.
pub const LAYOUT_TAG: &str = "e2e";

/// Size of the pseudo-random payload in each layer: large enough that blob
/// bodies span many HTTP frames, small enough to keep the test fast.
const PAYLOAD_BYTES: usize = 192 * 1024;

/// One platform-specific image of the index.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    pub os: String,
    pub architecture: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
}

/// The generated layout and the digests a registry must serve for it.
#[derive(Debug, Clone)]
pub struct ImageLayout {
    pub dir: PathBuf,
    pub index_digest: String,
    pub index_size: u64,
    pub platforms: Vec<PlatformImage>,
}

impl ImageLayout {
    /// Every digest reachable from the index (index, manifests, configs,
    /// layers): what a full `--all-platforms` pull must have fetched.
    pub fn all_digests(&self) -> Vec<String> {
        let mut digests = vec![self.index_digest.clone()];
        for p in &self.platforms {
            digests.push(p.manifest_digest.clone());
            digests.push(p.config_digest.clone());
            digests.push(p.layer_digest.clone());
        }
        digests
    }

    /// `oci:` transport reference skopeo uses to read the layout.
    pub fn skopeo_ref(&self) -> String {
        format!("oci:{}:{LAYOUT_TAG}", self.dir.display())
    }
}

/// Writes `oci-layout`, `index.json` and `blobs/sha256/*` under `root/name`
/// for linux/amd64 and linux/arm64, each with one gzip'd tar layer.
pub fn build_multi_arch_layout(root: &Path, name: &str) -> ImageLayout {
    let dir = root.join(name);
    fs::create_dir_all(dir.join("blobs/sha256")).expect("create layout blobs dir");
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write oci-layout");

    let work = root.join(format!("{name}-work"));
    let platforms: Vec<PlatformImage> = [("linux", "amd64"), ("linux", "arm64")]
        .iter()
        .map(|(os, arch)| build_platform_image(&dir, &work, os, arch))
        .collect();

    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": platforms.iter().map(|p| {
            let size = blob_size(&dir, &p.manifest_digest);
            json!({
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": p.manifest_digest,
                "size": size,
                "platform": platform_json(&p.os, &p.architecture),
            })
        }).collect::<Vec<_>>(),
    });
    let (index_digest, index_size) = write_json_blob(&dir, &index);

    let layout_index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": INDEX_MEDIA_TYPE,
            "digest": index_digest,
            "size": index_size,
            "annotations": { "org.opencontainers.image.ref.name": LAYOUT_TAG },
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&layout_index).unwrap()).expect("write index.json");

    ImageLayout { dir, index_digest, index_size, platforms }
}

fn platform_json(os: &str, arch: &str) -> serde_json::Value {
    if arch == "arm64" {
        json!({ "os": os, "architecture": arch, "variant": "v8" })
    } else {
        json!({ "os": os, "architecture": arch })
    }
}

/// Layer, config and manifest for one platform; returns their digests.
fn build_platform_image(layout: &Path, work: &Path, os: &str, arch: &str) -> PlatformImage {
    let (tar, tar_gz) = build_layer(work, os, arch);
    let diff_id = sha256_digest(&tar);
    let layer_digest = write_blob(layout, &tar_gz);

    let config = json!({
        "created": "1970-01-01T00:00:00Z",
        "os": os,
        "architecture": arch,
        "config": { "Cmd": ["/bin/sh"], "Env": [format!("KLTS_E2E_PLATFORM={os}/{arch}")] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "klts-mirror e2e" }],
    });
    let (config_digest, config_size) = write_json_blob(layout, &config);

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size },
        "layers": [{
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": layer_digest,
            "size": tar_gz.len(),
        }],
    });
    let (manifest_digest, _) = write_json_blob(layout, &manifest);

    PlatformImage { os: os.to_string(), architecture: arch.to_string(), manifest_digest, config_digest, layer_digest }
}

/// Returns `(tar, tar.gz)` bytes of a tiny root filesystem. Uses GNU tar and
/// gzip with fixed mtime, owner, mode, ordering and no gzip name/timestamp so
/// the digests are identical on every run.
fn build_layer(work: &Path, os: &str, arch: &str) -> (Vec<u8>, Vec<u8>) {
    let src = work.join(format!("rootfs-{os}-{arch}"));
    let etc = src.join("etc/klts-e2e");
    fs::create_dir_all(&etc).expect("create layer source dir");
    fs::write(etc.join("platform"), format!("{os}/{arch}\n")).expect("write platform file");
    fs::write(etc.join("payload.bin"), pseudo_random(PAYLOAD_BYTES, arch)).expect("payload");

    let tar_path = work.join(format!("layer-{os}-{arch}.tar"));
    run_tool(
        "tar (build layer)",
        Command::new("tar")
            .arg("--sort=name")
            .arg("--mtime=@0")
            .arg("--owner=0")
            .arg("--group=0")
            .arg("--numeric-owner")
            .arg("--mode=u=rwX,go=rX")
            .arg("--format=ustar")
            .arg("-C")
            .arg(&src)
            .arg("-cf")
            .arg(&tar_path)
            .arg("etc"),
    );
    let tar = fs::read(&tar_path).expect("read layer tar");
    let gz =
        run_tool("gzip (compress layer)", Command::new("gzip").arg("-n").arg("-6").arg("-c").arg(&tar_path)).stdout;
    (tar, gz)
}

/// Deterministic incompressible bytes (xorshift seeded by the architecture),
/// so each platform's layer is distinct and gzip cannot shrink it to nothing.
fn pseudo_random(len: usize, seed: &str) -> Vec<u8> {
    let mut state: u64 = seed.bytes().fold(0x9E37_79B9_7F4A_7C15, |acc, b| acc.rotate_left(5) ^ b as u64);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write_json_blob(layout: &Path, value: &serde_json::Value) -> (String, u64) {
    let bytes = serde_json::to_vec(value).expect("serialize json blob");
    let digest = write_blob(layout, &bytes);
    (digest, bytes.len() as u64)
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let hex = digest.trim_start_matches("sha256:");
    fs::write(layout.join("blobs/sha256").join(hex), bytes).expect("write blob");
    digest
}

fn blob_size(layout: &Path, digest: &str) -> u64 {
    let hex = digest.trim_start_matches("sha256:");
    fs::metadata(layout.join("blobs/sha256").join(hex)).expect("stat blob").len()
}
