//! `/v2/...` request paths → typed routes.
//!
//! Repository names are nested (`klts-io/kubernetes-lts/kube-proxy`), so the
//! path cannot be matched with fixed router patterns; it is parsed from the
//! end instead, where the endpoint keyword sits. Parsing works on the raw
//! (still percent-encoded) path: a `%` anywhere in a name is rejected, which
//! closes `%2e%2e`-style traversal before anything is decoded.

use super::digest::{Digest, DigestError};
use super::name::{NameError, Reference, RepoName};

/// A registry API endpoint with its parsed parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2Route {
    /// `GET /v2/`: API version check.
    Base,
    /// `/v2/_catalog`: the repositories this site holds.
    Catalog,
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: RepoName, reference: Reference },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: RepoName, digest: Digest },
    /// `/v2/<name>/blobs/uploads/` (`id: None`: start an upload) and
    /// `/v2/<name>/blobs/uploads/<id>` (one upload session).
    Upload { name: RepoName, id: Option<UploadId> },
    /// `/v2/<name>/tags/list`
    TagsList { name: RepoName },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: RepoName, digest: Digest },
}

/// An upload session id as it appears in a path. Ids are ours and opaque
/// to clients; this only guarantees a shape that is safe everywhere (a
/// path segment, a storage key, a header): 1–64 of `[A-Za-z0-9_-]`. That a
/// well-formed id names a live session of that repository is checked by
/// the upload store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Option<UploadId> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| UploadId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Not a registry API path at all.
    #[error("not a registry API path")]
    NotFound,
    #[error("invalid repository name {0:?}")]
    NameInvalid(String),
    #[error("invalid reference {0:?}")]
    ReferenceInvalid(String),
    #[error(transparent)]
    DigestInvalid(#[from] DigestError),
    /// An upload id that cannot be one of ours: no such session.
    #[error("unknown upload {0:?}")]
    UploadUnknown(String),
}

impl From<NameError> for RouteError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::InvalidName(n) => RouteError::NameInvalid(n),
            NameError::InvalidTag(t) => RouteError::ReferenceInvalid(t),
            NameError::InvalidDigest(d) => RouteError::DigestInvalid(d),
        }
    }
}

fn name(joined: &str) -> Result<RepoName, RouteError> {
    if joined.contains('%') {
        return Err(RouteError::NameInvalid(joined.to_string()));
    }
    Ok(joined.parse()?)
}

/// Percent-decodes a single reference/digest segment. Clients do not encode
/// `:` in practice, but decoding it is harmless because the result is then
/// checked against the tag/digest grammar, which admits neither `/` nor `%`.
fn segment(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') {
        return std::borrow::Cow::Borrowed(s); // the common case, for free
    }
    percent_encoding::percent_decode_str(s).decode_utf8_lossy()
}

/// Parses a raw request path.
pub fn parse(path: &str) -> Result<V2Route, RouteError> {
    let rest = match path {
        "/v2" | "/v2/" => return Ok(V2Route::Base),
        p => p.strip_prefix("/v2/").ok_or(RouteError::NotFound)?,
    };
    if rest == "_catalog" {
        return Ok(V2Route::Catalog);
    }
    // Every endpoint has at least one name component plus two more; the
    // name is everything before the last two components.
    let mut it = rest.rsplitn(3, '/');
    let (last, second, head) = match (it.next(), it.next(), it.next()) {
        (Some(l), Some(s), Some(h)) => (l, s, h),
        _ => return Err(if rest.is_empty() { RouteError::NotFound } else { RouteError::NameInvalid(rest.into()) }),
    };
    match (second, last) {
        ("tags", "list") => Ok(V2Route::TagsList { name: name(head)? }),
        ("manifests", r) => {
            let name = name(head)?;
            Ok(V2Route::Manifest { name, reference: segment(r).parse()? })
        }
        ("blobs", "uploads") => Ok(V2Route::Upload { name: name(head)?, id: None }),
        ("blobs", d) => {
            let name = name(head)?;
            Ok(V2Route::Blob { name, digest: segment(d).parse()? })
        }
        ("referrers", d) => {
            let name = name(head)?;
            Ok(V2Route::Referrers { name, digest: segment(d).parse()? })
        }
        // `/v2/<name>/blobs/uploads/<uuid>` and `/v2/<name>/blobs/uploads/`.
        ("uploads", id) if head.ends_with("/blobs") => {
            let name = name(&head[..head.len() - "/blobs".len()])?;
            let id = match id {
                "" => None,
                id => {
                    Some(UploadId::parse(id).ok_or_else(|| RouteError::UploadUnknown(id.chars().take(80).collect()))?)
                }
            };
            Ok(V2Route::Upload { name, id })
        }
        _ => {
            // Validate the name anyway, so traversal attempts get NAME_INVALID.
            name(head)?;
            Err(RouteError::NotFound)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_every_endpoint() {
        assert_eq!(parse("/v2/"), Ok(V2Route::Base));
        assert_eq!(parse("/v2"), Ok(V2Route::Base));
        assert_eq!(parse("/v2/_catalog"), Ok(V2Route::Catalog));
        match parse("/v2/klts-io/kubernetes-lts/kube-proxy/manifests/v1.18.20-lts.2").unwrap() {
            V2Route::Manifest { name, reference } => {
                assert_eq!(name.as_str(), "klts-io/kubernetes-lts/kube-proxy");
                assert_eq!(reference.to_string(), "v1.18.20-lts.2");
            }
            other => panic!("{other:?}"),
        }
        match parse(&format!("/v2/pause/blobs/{D}")).unwrap() {
            V2Route::Blob { name, digest } => {
                assert_eq!(name.as_str(), "pause");
                assert_eq!(digest.to_string(), D);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&format!("/v2/pause/manifests/{D}")),
            Ok(V2Route::Manifest { reference: Reference::Digest(_), .. })
        ));
        assert!(matches!(parse("/v2/library/busybox/tags/list"), Ok(V2Route::TagsList { .. })));
        assert!(matches!(parse("/v2/a/blobs/uploads/"), Ok(V2Route::Upload { id: None, .. })));
        assert!(matches!(parse("/v2/a/blobs/uploads"), Ok(V2Route::Upload { id: None, .. })));
        match parse("/v2/a/b/blobs/uploads/123-abc_X").unwrap() {
            V2Route::Upload { name, id } => {
                assert_eq!(name.as_str(), "a/b");
                assert_eq!(id.unwrap().as_str(), "123-abc_X");
            }
            other => panic!("{other:?}"),
        }
        for bad in ["..", "a.b", "a%2fb", &"x".repeat(65)] {
            assert!(matches!(parse(&format!("/v2/a/blobs/uploads/{bad}")), Err(RouteError::UploadUnknown(_))), "{bad}");
        }
        assert!(matches!(parse(&format!("/v2/a/referrers/{D}")), Ok(V2Route::Referrers { .. })));
    }

    #[test]
    fn names_may_contain_endpoint_words() {
        match parse("/v2/manifests/blobs/manifests/latest").unwrap() {
            V2Route::Manifest { name, .. } => assert_eq!(name.as_str(), "manifests/blobs"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn encoded_colon_in_digest_is_accepted() {
        let p = format!("/v2/pause/blobs/{}", D.replace(':', "%3A"));
        assert!(matches!(parse(&p), Ok(V2Route::Blob { .. })));
    }

    #[test]
    fn traversal_and_bad_names_are_name_invalid() {
        for p in [
            "/v2/../manifests/latest",
            "/v2/a/../b/manifests/latest",
            "/v2/%2e%2e/manifests/latest",
            "/v2/a/%2e%2e/%2e%2e/blobs/sha256:00",
            "/v2/a//b/manifests/latest",
            "/v2//manifests/latest",
            "/v2/UPPER/manifests/latest",
            "/v2/a/../../etc/passwd",
        ] {
            assert!(matches!(parse(p), Err(RouteError::NameInvalid(_))), "{p}: {:?}", parse(p));
        }
    }

    #[test]
    fn bad_references_and_digests() {
        assert!(matches!(parse("/v2/a/blobs/sha256:abc"), Err(RouteError::DigestInvalid(_))));
        assert!(matches!(parse("/v2/a/blobs/latest"), Err(RouteError::DigestInvalid(_))));
        assert!(matches!(parse("/v2/a/manifests/..%2f..%2fx"), Err(RouteError::ReferenceInvalid(_))));
        assert!(matches!(parse("/v2/a/manifests/%2e%2e"), Err(RouteError::ReferenceInvalid(_))));
        assert!(matches!(parse("/v2/a/manifests/md5:abc"), Err(RouteError::DigestInvalid(_))));
    }

    #[test]
    fn non_registry_paths_are_not_found() {
        assert_eq!(parse("/"), Err(RouteError::NotFound));
        assert_eq!(parse("/v1/x"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/a/b/c"), Err(RouteError::NotFound));
    }
}
