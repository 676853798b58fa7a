//! Manifest media types.

pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// What upstream is asked to send: every manifest kind, so that whatever it
/// holds is returned byte-exact and never converted by a negotiating server.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws, */*;q=0.1";

/// Layers that registries are not expected to hold: OCI's (deprecated)
/// non-distributable layers and Docker's foreign layers, fetched by clients
/// from their `urls` instead. A manifest naming one is accepted without it.
pub fn is_non_distributable(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
}

/// Largest manifest accepted (containerd refuses anything larger anyway).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Media type of a manifest body when upstream did not say (or said
/// something generic): the `mediaType` field, else the shape of the JSON.
pub fn sniff(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
        layers: Option<serde::de::IgnoredAny>,
    }
    let p: Probe = serde_json::from_slice(body).ok()?;
    match p.media_type {
        Some(m) if !m.is_empty() => Some(m),
        _ if p.manifests.is_some() => Some(OCI_INDEX.to_string()),
        _ if p.layers.is_some() => Some(OCI_MANIFEST.to_string()),
        _ => None,
    }
}

/// Picks the media type to store for a manifest fetched from upstream.
pub fn resolve(content_type: Option<&str>, body: &[u8]) -> String {
    match content_type.map(|c| c.split(';').next().unwrap_or("").trim()) {
        Some(c) if c.starts_with("application/vnd.") => c.to_string(),
        _ => sniff(body).unwrap_or_else(|| OCI_MANIFEST.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_media_type() {
        assert_eq!(
            sniff(br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#).as_deref(),
            Some(DOCKER_MANIFEST_V2)
        );
        assert_eq!(sniff(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(), Some(OCI_INDEX));
        assert_eq!(sniff(br#"{"schemaVersion":2,"layers":[]}"#).as_deref(), Some(OCI_MANIFEST));
        assert_eq!(sniff(b"not json"), None);
    }

    #[test]
    fn non_distributable_layers() {
        assert!(is_non_distributable("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"));
        assert!(is_non_distributable("application/vnd.oci.image.layer.nondistributable.v1.tar"));
        assert!(is_non_distributable("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"));
        assert!(!is_non_distributable("application/vnd.oci.image.layer.v1.tar+gzip"));
        assert!(!is_non_distributable("application/vnd.oci.empty.v1+json"));
    }

    #[test]
    fn upstream_content_type_wins_over_sniffing() {
        assert_eq!(resolve(Some("application/vnd.oci.image.index.v1+json; charset=utf-8"), b"{}"), OCI_INDEX);
        assert_eq!(resolve(Some("application/json"), br#"{"manifests":[]}"#), OCI_INDEX);
        assert_eq!(resolve(None, b"{}"), OCI_MANIFEST);
    }
}
