//! Content digests.
//!
//! The store is content-addressed by sha256 only: it is what every registry
//! on the path (registry.k8s.io, Docker Hub, ghcr.io) uses, and accepting an
//! algorithm we cannot verify would let unverified bytes into the cache.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A parsed `sha256:<64 lowercase hex>` digest.
///
/// Invariant: the hex part is exactly 64 characters of `[0-9a-f]`, so it is
/// safe to use as a path segment and never needs escaping.
///
/// Stored once as the quoted text `"sha256:<hex>"`: cloning is a reference
/// count, and the `Docker-Content-Digest` and `ETag` header values are
/// slices of it, so a warm response allocates nothing for them.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    quoted: bytes::Bytes,
}

/// `"sha256:` — the quote plus the algorithm prefix.
const PREFIX: usize = 8;
const QUOTED_LEN: usize = PREFIX + 64 + 1;

/// Why a digest string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest must have the form <algorithm>:<hex>")]
    Malformed,
    #[error("unsupported digest algorithm {0:?}; only sha256 is accepted")]
    UnsupportedAlgorithm(String),
    #[error("sha256 digest must be 64 lowercase hex characters")]
    BadHex,
}

impl Digest {
    /// Computes the digest of a complete byte slice (manifests; blobs are
    /// hashed incrementally with [`Verifier`]).
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hex(&hex::encode(Sha256::digest(bytes)))
    }

    fn from_hex(hex: &str) -> Digest {
        debug_assert_eq!(hex.len(), 64);
        let mut quoted = Vec::with_capacity(QUOTED_LEN);
        quoted.extend_from_slice(b"\"sha256:");
        quoted.extend_from_slice(hex.as_bytes());
        quoted.push(b'"');
        Digest { quoted: quoted.into() }
    }

    /// `sha256:<hex>`, as sent in `Docker-Content-Digest`.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.quoted[1..QUOTED_LEN - 1]).expect("digest text is ASCII")
    }

    /// `sha256:<hex>` as shared bytes (for header values).
    pub fn text_bytes(&self) -> bytes::Bytes {
        self.quoted.slice(1..QUOTED_LEN - 1)
    }

    /// `"sha256:<hex>"` with quotes, as shared bytes (an ETag).
    pub fn quoted_bytes(&self) -> bytes::Bytes {
        self.quoted.clone()
    }

    /// The 64 hex characters, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.as_str()[PREFIX - 1..]
    }

    /// The algorithm name; always `sha256` for now.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s.split_once(':').ok_or(DigestError::Malformed)?;
        if alg.is_empty() || hex.is_empty() {
            return Err(DigestError::Malformed);
        }
        // Grammar from the OCI image spec: algorithm-component [+._-] separated.
        if alg != "sha256" && !alg.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        {
            return Err(DigestError::Malformed);
        }
        if alg != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(alg.to_string()));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::BadHex);
        }
        Ok(Digest::from_hex(hex))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Incremental sha256 over a stream of chunks, compared against the digest
/// the bytes were requested by.
pub struct Verifier {
    hasher: Sha256,
    len: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    pub fn new() -> Self {
        Verifier { hasher: Sha256::new(), len: 0 }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finishes hashing and returns the digest of everything seen.
    pub fn finish(self) -> Digest {
        Digest::from_hex(&hex::encode(self.hasher.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays_sha256() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.hex(), &EMPTY[7..]);
        assert_eq!(d.as_str(), EMPTY);
        assert_eq!(&d.text_bytes()[..], EMPTY.as_bytes());
        assert_eq!(d.quoted_bytes(), format!("\"{EMPTY}\""));
        assert_eq!(Digest::of(b""), d);
    }

    #[test]
    fn rejects_malformed_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "sha256:abc",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
            "sha256:../../../../etc/passwd",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/..",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} must be rejected");
        }
        assert_eq!("sha512:abcd".parse::<Digest>(), Err(DigestError::UnsupportedAlgorithm("sha512".into())));
    }

    #[test]
    fn verifier_matches_one_shot_digest() {
        let mut v = Verifier::new();
        v.update(b"hello ");
        v.update(b"world");
        assert_eq!(v.len(), 11);
        assert_eq!(v.finish(), Digest::of(b"hello world"));
    }
}
