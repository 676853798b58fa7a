//! Content digests: sha256 (what every registry on the path uses) and
//! sha512 (OCI image-spec's other registered algorithm, which publishers
//! may push). Nothing else is accepted: an algorithm we cannot verify
//! would let unverified bytes into the store.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// A registered digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex encoding.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn parse(s: &str) -> Option<Algorithm> {
        match s {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// A parsed `<algorithm>:<lowercase hex>` digest.
///
/// Invariant: the algorithm is sha256 or sha512 and the hex part has
/// exactly its length of `[0-9a-f]`, so it is safe to use as a path segment
/// and never needs escaping.
///
/// Stored once as the quoted text `"sha256:<hex>"`: cloning is a reference
/// count, and the `Docker-Content-Digest` and `ETag` header values are
/// slices of it, so a warm response allocates nothing for them.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    quoted: bytes::Bytes,
}

/// Both algorithm names are 6 characters: `"sha256:` is the quote, the
/// name and the colon.
const PREFIX: usize = 8;

/// Why a digest string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest must have the form <algorithm>:<hex>")]
    Malformed,
    #[error("unsupported digest algorithm {0:?}; sha256 and sha512 are accepted")]
    UnsupportedAlgorithm(String),
    #[error("digest hex must be lowercase and as long as its algorithm requires")]
    BadHex,
}

impl Digest {
    /// The sha256 digest of a complete byte slice (manifests; blobs are
    /// hashed incrementally with [`Verifier`]).
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::of_with(Algorithm::Sha256, bytes)
    }

    /// The digest of `bytes` with `alg`.
    pub fn of_with(alg: Algorithm, bytes: &[u8]) -> Digest {
        let mut v = Verifier::with(alg);
        v.update(bytes);
        v.finish()
    }

    /// Whether `bytes` hash to this digest (with this digest's algorithm).
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Digest::of_with(self.algorithm(), bytes) == *self
    }

    fn from_hex(alg: Algorithm, hex: &str) -> Digest {
        debug_assert_eq!(hex.len(), alg.hex_len());
        let mut quoted = Vec::with_capacity(PREFIX + hex.len() + 1);
        quoted.push(b'"');
        quoted.extend_from_slice(alg.as_str().as_bytes());
        quoted.push(b':');
        quoted.extend_from_slice(hex.as_bytes());
        quoted.push(b'"');
        Digest { quoted: quoted.into() }
    }

    /// `sha256:<hex>`, as sent in `Docker-Content-Digest`.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.quoted[1..self.quoted.len() - 1]).expect("digest text is ASCII")
    }

    /// `sha256:<hex>` as shared bytes (for header values).
    pub fn text_bytes(&self) -> bytes::Bytes {
        self.quoted.slice(1..self.quoted.len() - 1)
    }

    /// `"sha256:<hex>"` with quotes, as shared bytes (an ETag).
    pub fn quoted_bytes(&self) -> bytes::Bytes {
        self.quoted.clone()
    }

    /// The hex characters, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.as_str()[PREFIX - 1..]
    }

    pub fn algorithm(&self) -> Algorithm {
        if &self.quoted[4..7] == b"512" {
            Algorithm::Sha512
        } else {
            Algorithm::Sha256
        }
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
        if !alg.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b)) {
            return Err(DigestError::Malformed);
        }
        let Some(algorithm) = Algorithm::parse(alg) else {
            return Err(DigestError::UnsupportedAlgorithm(alg.to_string()));
        };
        if hex.len() != algorithm.hex_len() || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::BadHex);
        }
        Ok(Digest::from_hex(algorithm, hex))
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

/// As its text, `sha256:<hex>` (descriptors, stored records); parsed and
/// checked on the way in like any other digest from outside.
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone)]
enum Hasher {
    Sha256(Sha256),
    Sha512(Box<Sha512>),
}

/// Incremental hashing over a stream of chunks, compared against the digest
/// the bytes were requested by. Cloning keeps the state so far: an upload
/// keeps a copy to fall back on when a chunk fails half-way.
#[derive(Clone)]
pub struct Verifier {
    hasher: Hasher,
    len: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    /// A sha256 verifier.
    pub fn new() -> Self {
        Verifier::with(Algorithm::Sha256)
    }

    pub fn with(alg: Algorithm) -> Self {
        let hasher = match alg {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Box::new(Sha512::new())),
        };
        Verifier { hasher, len: 0 }
    }

    /// A verifier with the algorithm of `d`, to check bytes against it.
    pub fn for_digest(d: &Digest) -> Self {
        Verifier::with(d.algorithm())
    }

    pub fn update(&mut self, chunk: &[u8]) {
        match &mut self.hasher {
            Hasher::Sha256(h) => h.update(chunk),
            Hasher::Sha512(h) => h.update(chunk),
        }
        self.len += chunk.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.hasher {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finishes hashing and returns the digest of everything seen.
    pub fn finish(self) -> Digest {
        match self.hasher {
            Hasher::Sha256(h) => Digest::from_hex(Algorithm::Sha256, &hex::encode(h.finalize())),
            Hasher::Sha512(h) => Digest::from_hex(Algorithm::Sha512, &hex::encode(h.finalize())),
        }
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
        assert_eq!("sha384:abcd".parse::<Digest>(), Err(DigestError::UnsupportedAlgorithm("sha384".into())));
        assert_eq!("sha512:abcd".parse::<Digest>(), Err(DigestError::BadHex));
        assert_eq!(format!("sha512:{}", "a".repeat(64)).parse::<Digest>(), Err(DigestError::BadHex));
        assert_eq!(format!("sha256:{}", "a".repeat(128)).parse::<Digest>(), Err(DigestError::BadHex));
    }

    #[test]
    fn verifier_matches_one_shot_digest() {
        let mut v = Verifier::new();
        v.update(b"hello ");
        v.update(b"world");
        assert_eq!(v.len(), 11);
        assert_eq!(v.finish(), Digest::of(b"hello world"));
    }

    #[test]
    fn sha512_digests_parse_hash_and_verify() {
        let d = Digest::of_with(Algorithm::Sha512, b"hello world");
        assert_eq!(d.algorithm(), Algorithm::Sha512);
        assert_eq!(d.hex().len(), 128);
        assert!(d.as_str().starts_with("sha512:"));
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
        assert!(d.matches(b"hello world") && !d.matches(b"hello"));
        let mut v = Verifier::for_digest(&d);
        v.update(b"hello ");
        v.update(b"world");
        assert_eq!(v.finish(), d);
        assert_ne!(Digest::of(b"hello world"), d);
        assert_eq!(Digest::of(b"").algorithm(), Algorithm::Sha256);
    }
}
