//! Response headers every resource shares, and the one way text that is
//! not known to be a valid header value becomes one.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::oci::Digest;
use crate::proxy::CacheStatus;

pub const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
pub const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");

/// The `Range` of an upload session that holds `offset` bytes:
/// `0-<last byte>`, without distribution-spec's unit, and `0-0` before the
/// first byte (as distribution sends; clients read it as "continue at 0"
/// only together with their own count, which the spec leaves ambiguous).
pub fn upload_range(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

/// Sets a header built from text that is not known to be a valid header
/// value (upstream media types, values derived from input). A value that
/// cannot be represented is left out rather than replaced: a missing header
/// is honest, a substituted one is wrong.
pub fn insert_text(h: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            h.insert(name, v);
        }
        Err(_) => tracing::debug!(header = %name, value, "header value not representable; not sent"),
    }
}

/// `ETag`, `Docker-Content-Digest` and `X-Cache` of a manifest or blob.
pub fn content_headers(h: &mut HeaderMap, digest: &Digest, cache: CacheStatus) {
    // Both values are slices of the digest's shared text: no allocation.
    if let Ok(v) = HeaderValue::from_maybe_shared(digest.quoted_bytes()) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(digest.text_bytes()) {
        h.insert(DOCKER_CONTENT_DIGEST, v);
    }
    h.insert(X_CACHE, HeaderValue::from_static(cache.as_str()));
}

/// The manifest media types every client uses are static header values;
/// any other is sent as stored when it is a valid header value, else not at
/// all.
pub fn insert_media_type(h: &mut HeaderMap, m: &str) {
    use crate::oci::media::*;
    for known in [OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2] {
        if m == known {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(known));
            return;
        }
    }
    insert_text(h, header::CONTENT_TYPE, m);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ranges_name_the_last_byte() {
        assert_eq!(upload_range(0), "0-0");
        assert_eq!(upload_range(1), "0-0");
        assert_eq!(upload_range(1024), "0-1023");
    }

    #[test]
    fn unrepresentable_values_are_left_out_not_replaced() {
        let mut h = HeaderMap::new();
        insert_media_type(&mut h, "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(h[header::CONTENT_TYPE], "application/vnd.oci.image.manifest.v1+json");
        insert_media_type(&mut h, "application/x-custom+json");
        assert_eq!(h[header::CONTENT_TYPE], "application/x-custom+json");
        let mut h = HeaderMap::new();
        insert_media_type(&mut h, "text/plain\r\nx-injected: 1");
        assert!(h.is_empty(), "{h:?}");
        insert_text(&mut h, header::CONTENT_RANGE, "bytes 0-1/2\n");
        assert!(h.is_empty(), "{h:?}");
    }
}
