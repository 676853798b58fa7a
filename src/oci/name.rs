//! Repository names, tags and references, parsed at the HTTP edge.
//!
//! Grammar from the OCI distribution spec:
//! - name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
//! - tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
//!
//! Because a valid name has no empty component, no `..`, no `%` and no
//! leading `_`, it can be used as an object-store key prefix without escaping
//! and cannot collide with the `_tags`/`_uploads` keys of `storage::paths`.

use std::fmt;
use std::str::FromStr;

use super::digest::{Digest, DigestError};

/// Longest repository name accepted (distribution uses the same bound).
const MAX_NAME_LEN: usize = 255;

/// A repository name such as `kube-apiserver` or `library/busybox`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name {0:?} is invalid")]
    InvalidName(String),
    #[error("tag {0:?} is invalid")]
    InvalidTag(String),
    #[error(transparent)]
    InvalidDigest(#[from] DigestError),
}

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Path components of the name.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Number of `/`-separated components.
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// Splits off the first component: `(first, rest)` when there is a rest.
    pub fn split_first(&self) -> Option<(&str, RepoName)> {
        let (first, rest) = self.0.split_once('/')?;
        Some((first, RepoName(rest.to_string())))
    }

    /// `prefix/self`; both sides are valid names so the result is too.
    pub fn prefixed(&self, prefix: &str) -> RepoName {
        debug_assert!(valid_component(prefix));
        RepoName(format!("{prefix}/{}", self.0))
    }
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        // one alphanumeric run
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // one separator
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_NAME_LEN || !s.split('/').all(valid_component) {
            return Err(NameError::InvalidName(s.to_string()));
        }
        Ok(RepoName(s.to_string()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A tag such as `v1.18.20-lts.2`.
///
/// Invariant: matches the tag grammar, so it has no `/` and is not `.`/`..`
/// (it cannot start with `.`), which makes it a safe key segment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..].iter().all(|&c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
        if ok {
            Ok(Tag(s.to_string()))
        } else {
            Err(NameError::InvalidTag(s.to_string()))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// What a manifest request names: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// A repository's canonical identity after routing: the upstream's canonical
/// name (aliases resolved) and the repository path on that upstream.
///
/// `kube-apiserver?ns=registry.k8s.io`, `/v2/registry.k8s.io/kube-apiserver`,
/// `/v2/k8s.gcr.io/kube-apiserver` and a bare `kube-apiserver` (with the
/// default upstream registry.k8s.io) all have the same key, and so share
/// tags and cache entries.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoKey {
    /// Shared: routing hands out clones of one `Arc` per upstream.
    upstream: std::sync::Arc<str>,
    repo: RepoName,
}

impl RepoKey {
    /// `upstream` must be a validated upstream name (see `config`).
    pub fn new(upstream: std::sync::Arc<str>, repo: RepoName) -> RepoKey {
        RepoKey { upstream, repo }
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn repo(&self) -> &RepoName {
        &self.repo
    }
}

impl fmt::Display for RepoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.upstream, self.repo)
    }
}

impl fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for ok in [
            "pause",
            "kube-apiserver",
            "library/busybox",
            "coredns/coredns",
            "klts-io/kubernetes-lts/kube-proxy",
            "a__b",
            "a_b.c---d",
            "registry.k8s.io/pause",
            "0",
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok:?} must be valid");
        }
    }

    #[test]
    fn rejects_invalid_names_and_traversal() {
        for bad in [
            "",
            "..",
            "a/../b",
            "a/./b",
            "a//b",
            "/a",
            "a/",
            "A",
            "a___b",
            "-a",
            "a-",
            "_a",
            "a/_tags",
            "a%2e%2e",
            "a:b",
            "a b",
            "a\\b",
            &"a".repeat(256),
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?} must be invalid");
        }
    }

    #[test]
    fn tags_follow_the_grammar() {
        for ok in ["v1.18.20-lts.2", "latest", "3.9", "_x", "V1", &"a".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok:?} must be a tag");
        }
        for bad in ["", ".hidden", "..", "-x", "a/b", "a:b", &"a".repeat(129), "a%2f"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?} must not be a tag");
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert!(matches!("v1.30.0".parse::<Reference>(), Ok(Reference::Tag(_))));
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(matches!(d.parse::<Reference>(), Ok(Reference::Digest(_))));
        assert!(matches!("sha256:zz".parse::<Reference>(), Err(NameError::InvalidDigest(_))));
    }

    #[test]
    fn split_and_prefix() {
        let n: RepoName = "docker.io/library/busybox".parse().unwrap();
        let (first, rest) = n.split_first().unwrap();
        assert_eq!(first, "docker.io");
        assert_eq!(rest.as_str(), "library/busybox");
        assert_eq!(rest.depth(), 2);
        let b: RepoName = "busybox".parse().unwrap();
        assert!(b.split_first().is_none());
        assert_eq!(b.prefixed("library").as_str(), "library/busybox");
    }
}
