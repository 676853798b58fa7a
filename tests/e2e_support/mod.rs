//! Shared harness for the end-to-end tests (`tests/e2e.rs`, `tests/e2e_publish.rs`).
//!
//! Every piece drives a real tool (Debian's `docker-registry`, `skopeo`,
//! `containerd`/`ctr`) against 127.0.0.1 only, so the test proves the mirror
//! works with the clients kubeadm, dockerd and containerd users actually run.

// Each test binary uses a part of the harness.
#![allow(dead_code)]

pub mod containerd;
pub mod http;
pub mod mirror;
pub mod oci_image;
pub mod process;
pub mod skopeo;
pub mod upstream;

/// Hex sha256 of `data` as an OCI digest string (`sha256:<hex>`).
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Quotes `s` as a TOML basic string; temp paths are plain ASCII, but escape
/// anyway so an odd `TMPDIR` cannot produce a config the mirror rejects.
pub fn toml_str(s: &str) -> String {
    let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}
