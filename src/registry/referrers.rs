//! The referrers index: for each subject digest, the manifests of a
//! repository that name it as their `subject` (signatures, SBOMs,
//! attestations).
//!
//! One small entry per referrer, written when the referrer is published and
//! removed when it is deleted (see `storage::paths`), so a listing is one
//! prefix listing and never parses manifests. The subject need not exist:
//! a signature may be pushed before, or without, what it signs.

use super::{Registry, Result};
use crate::oci::manifest::Manifest;
use crate::oci::referrers::{self, Referrer};
use crate::oci::{Digest, RepoKey};
use crate::storage::Class;

impl Registry {
    /// The referrers of `subject` published or pinned in `key`, published
    /// first, each digest once.
    pub async fn referrers(&self, key: &RepoKey, subject: &Digest) -> Result<Vec<Referrer>> {
        let published = self.store.list_referrers(Class::Published, key, subject).await?;
        let pinned = self.store.list_referrers(Class::Pinned, key, subject).await?;
        Ok(referrers::merge(published, pinned))
    }

    /// Lists manifest `m` (stored as `digest`, `size` bytes) as a referrer
    /// of `subject`.
    pub(super) async fn index_referrer(
        &self,
        class: Class,
        key: &RepoKey,
        subject: &Digest,
        m: &Manifest,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        Ok(self.store.put_referrer(class, key, subject, &Referrer::of(m, digest, size)).await?)
    }

    pub(super) async fn unindex_referrer(
        &self,
        class: Class,
        key: &RepoKey,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        Ok(self.store.delete_referrer(class, key, subject, referrer).await?)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::oci::{media, Digest, Reference};
    use crate::registry::tests::{key, registry};

    fn referrer(subject: &Digest, artifact_type: &str, n: u32) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","artifactType":"{artifact_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{}","size":2}},"layers":[],"subject":{{"mediaType":"{}","digest":"{subject}","size":7}},"annotations":{{"n":"{n}"}}}}"#,
            media::OCI_MANIFEST,
            Digest::of(b"{}"),
            media::OCI_MANIFEST
        )
    }

    #[tokio::test]
    async fn referrers_are_listed_per_repository_and_subject_until_deleted() {
        let (r, _dir) = registry();
        r.store().put_blob(&Digest::of(b"{}"), Bytes::from_static(b"{}")).await.unwrap();
        let (k, other) = (key("kube-apiserver"), key("kube-proxy"));
        let subject = Digest::of(b"never pushed");
        assert!(r.referrers(&k, &subject).await.unwrap().is_empty(), "an unknown subject has an empty list");

        let sig = referrer(&subject, "application/vnd.example.sig", 1);
        let sbom = referrer(&subject, "application/vnd.example.sbom", 2);
        let by_digest = |b: &str| Reference::Digest(Digest::of(b.as_bytes()));
        let p1 = r.publish(&k, &by_digest(&sig), None, Bytes::from(sig.clone())).await.unwrap();
        let p2 =
            r.publish(&k, &Reference::Tag("sbom".parse().unwrap()), None, Bytes::from(sbom.clone())).await.unwrap();
        assert_eq!(p1.subject.as_ref(), Some(&subject));

        let mut listed = r.referrers(&k, &subject).await.unwrap();
        listed.sort_by(|a, b| a.size.cmp(&b.size).then(a.digest.cmp(&b.digest)));
        let mut expected = vec![(p1.digest.clone(), sig.len() as u64), (p2.digest.clone(), sbom.len() as u64)];
        expected.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        let got: Vec<_> = listed.iter().map(|e| (e.digest.clone(), e.size)).collect();
        assert_eq!(got, expected);
        let entry = listed.iter().find(|e| e.digest == p1.digest).unwrap();
        assert_eq!(entry.media_type, media::OCI_MANIFEST);
        assert_eq!(entry.artifact_type.as_deref(), Some("application/vnd.example.sig"));
        assert_eq!(entry.annotations["n"], "1");
        assert!(r.referrers(&other, &subject).await.unwrap().is_empty(), "another repository's list is its own");

        r.delete_published_manifest(&k, &p1.digest).await.unwrap();
        let left: Vec<_> = r.referrers(&k, &subject).await.unwrap().into_iter().map(|e| e.digest).collect();
        assert_eq!(left, vec![p2.digest.clone()]);
        // Deleting only the tag keeps the referrer listed: the manifest is still published.
        r.delete_published_tag(&k, &"sbom".parse().unwrap()).await.unwrap();
        assert_eq!(r.referrers(&k, &subject).await.unwrap().len(), 1);
        r.delete_published_manifest(&k, &p2.digest).await.unwrap();
        assert!(r.referrers(&k, &subject).await.unwrap().is_empty());
    }
}
