//! The one key mapper: every object the mirror stores is named here.
//!
//! ```text
//! <root>/
//! ├── blobs/<alg>/<hex[0..2]>/<hex>             blob bytes (<alg>: sha256 | sha512); verified
//! │                                             before commit, immutable, stored once and
//! │                                             shared by every repository, upstream and class
//! ├── manifests/<alg>/<hex[0..2]>/<hex>         manifest record: "<media type>\n" + the
//! │                                             manifest bytes exactly as upstream (or the
//! │                                             publisher) sent them
//! ├── holds/<alg>/<hex[0..2]>/<hex>/            who keeps content <alg>:<hex> (a blob or a
//! │   └── <class>/<upstream>/<repo…>/           manifest): one empty marker per holder, a
//! │       └── _by/<alg>-<hex>                   manifest of <class> (published | pinned) in
//! │                                             <repo>. A manifest holds itself, its config,
//! │                                             its layers and its child manifests. Written
//! │                                             before the manifest is stored, removed when it
//! │                                             is deleted: "may this go?" is one listing
//! ├── repos/<class>/<upstream>/<repo…>/
//! │   ├── _tags/<tag>                           tag link: {"digest": …, "checked": unix secs}
//! │   ├── _referrers/<alg>/<hex>/<alg>-<hex>    referrers index: the descriptor JSON of a
//! │   │                                         manifest of this class and repository whose
//! │   │                                         subject is <alg>:<hex> (which need not exist)
//! │   └── _taglist                              last upstream tags/list answer (class cached)
//! └── _spool/                                   in-progress fills (filesystem backend only;
//!     ├── <owner>.lock                          same filesystem, so commit is one rename):
//!     └── <owner>/<n>                           one directory per live process, see `spool`
//! ```
//!
//! `<class>` is one of `published` (patched images, always win), `pinned`
//! (air-gap imports) and `cached` (pull-through; the only evictable class).
//! `<upstream>` is the canonical upstream name after alias resolution, so
//! `k8s.gcr.io/pause` and `registry.k8s.io/pause` share keys.
//!
//! Every segment comes from a parsed newtype (`Digest`, `RepoName`, `Tag`) or
//! a validated upstream name, so none can contain `/`, `..` or `%`, and repo
//! components never start with `_`, so `_tags`, `_taglist`, `_referrers`
//! and `_by` cannot collide with a nested repository name. A digest as a
//! file name is `<alg>-<hex>` (the spec's referrers fallback tag shape).

use object_store::path::Path;

use crate::oci::RepoKey;
use crate::oci::{Digest, Tag};

/// Which content class a tag belongs to. Blobs have no class of their own:
/// a blob is kept while any manifest of a non-evictable class refers to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Published,
    Pinned,
    Cached,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Published => "published",
            Class::Pinned => "pinned",
            Class::Cached => "cached",
        }
    }
}

pub const SPOOL_DIR: &str = "_spool";

pub fn blob(d: &Digest) -> Path {
    let h = d.hex();
    Path::from(format!("blobs/{}/{}/{}", d.algorithm().as_str(), &h[..2], h))
}

pub fn manifest(d: &Digest) -> Path {
    let h = d.hex();
    Path::from(format!("manifests/{}/{}/{}", d.algorithm().as_str(), &h[..2], h))
}

fn repo(class: Class, key: &RepoKey) -> String {
    format!("repos/{}/{}/{}", class.as_str(), key.upstream(), key.repo())
}

pub fn tag(class: Class, key: &RepoKey, tag: &Tag) -> Path {
    Path::from(format!("{}/_tags/{}", repo(class, key), tag))
}

/// The directory of everything that holds `content`.
pub fn holds(content: &Digest) -> Path {
    let h = content.hex();
    Path::from(format!("holds/{}/{}/{}", content.algorithm().as_str(), &h[..2], h))
}

/// The marker "`holder`, a manifest of `class` in `key`, keeps `content`".
pub fn hold(content: &Digest, class: Class, key: &RepoKey, holder: &Digest) -> Path {
    Path::from(format!(
        "{}/{}/{}/{}/_by/{}",
        holds(content).as_ref(),
        class.as_str(),
        key.upstream(),
        key.repo(),
        file_name(holder)
    ))
}

/// The referrers index of `subject` in one class of a repository.
pub fn referrers_dir(class: Class, key: &RepoKey, subject: &Digest) -> Path {
    Path::from(format!("{}/_referrers/{}/{}", repo(class, key), subject.algorithm().as_str(), subject.hex()))
}

/// One entry of a referrers index: the referrer `referrer` of `subject`.
pub fn referrer(class: Class, key: &RepoKey, subject: &Digest, referrer: &Digest) -> Path {
    Path::from(format!("{}/{}", referrers_dir(class, key, subject).as_ref(), file_name(referrer)))
}

/// A digest as one path segment: `<alg>-<hex>`.
fn file_name(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().as_str(), d.hex())
}

pub fn tags_dir(class: Class, key: &RepoKey) -> Path {
    Path::from(format!("{}/_tags", repo(class, key)))
}

pub fn taglist(key: &RepoKey) -> Path {
    Path::from(format!("{}/_taglist", repo(Class::Cached, key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn key(up: &str, repo: &str) -> RepoKey {
        RepoKey::new(up.into(), repo.parse().unwrap())
    }

    #[test]
    fn golden_keys() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(blob(&d).as_ref(), format!("blobs/sha256/e3/{HEX}"));
        assert_eq!(manifest(&d).as_ref(), format!("manifests/sha256/e3/{HEX}"));
        let k = key("registry.k8s.io", "kube-apiserver");
        let t: Tag = "v1.18.20-lts.2".parse().unwrap();
        assert_eq!(
            tag(Class::Published, &k, &t).as_ref(),
            "repos/published/registry.k8s.io/kube-apiserver/_tags/v1.18.20-lts.2"
        );
        assert_eq!(
            tag(Class::Cached, &key("docker.io", "library/busybox"), &"1.36".parse().unwrap()).as_ref(),
            "repos/cached/docker.io/library/busybox/_tags/1.36"
        );
        assert_eq!(tags_dir(Class::Pinned, &k).as_ref(), "repos/pinned/registry.k8s.io/kube-apiserver/_tags");
        assert_eq!(taglist(&k).as_ref(), "repos/cached/registry.k8s.io/kube-apiserver/_taglist");
        let m: Digest = format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
        let nested = key("ghcr.io", "klts-io/kubernetes-lts/kube-proxy");
        assert_eq!(holds(&d).as_ref(), format!("holds/sha256/e3/{HEX}"));
        assert_eq!(
            hold(&d, Class::Published, &nested, &m).as_ref(),
            format!(
                "holds/sha256/e3/{HEX}/published/ghcr.io/klts-io/kubernetes-lts/kube-proxy/_by/sha512-{}",
                "ab".repeat(64)
            )
        );
        assert_eq!(
            referrers_dir(Class::Published, &k, &d).as_ref(),
            format!("repos/published/registry.k8s.io/kube-apiserver/_referrers/sha256/{HEX}")
        );
        assert_eq!(
            referrer(Class::Pinned, &k, &m, &d).as_ref(),
            format!("repos/pinned/registry.k8s.io/kube-apiserver/_referrers/sha512/{}/sha256-{HEX}", "ab".repeat(64))
        );
    }

    #[test]
    fn keys_round_trip_through_object_store_paths() {
        // object_store would percent-encode anything unusual; our segments
        // must come through unchanged so the filesystem fast path agrees.
        let k = key("registry.k8s.io", "a_b/c--d.e");
        let p = tag(Class::Cached, &k, &"V_1.2-x".parse().unwrap());
        assert_eq!(Path::parse(p.as_ref()).unwrap(), p);
        assert!(!p.as_ref().contains('%'));
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        for p in [hold(&d, Class::Published, &k, &d), referrer(Class::Published, &k, &d, &d)] {
            assert_eq!(Path::parse(p.as_ref()).unwrap(), p);
            assert!(!p.as_ref().contains('%'));
        }
    }
}
