//! `/v2/<name>/tags/list`: published ∪ pinned ∪ upstream tags, sorted,
//! with `n`/`last` pagination and a `Link` to the next page.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, Subject};
use super::headers::insert_text;
use super::{AppState, Params};
use crate::oci::{ErrorCode, RepoKey, RepoName};

/// What a repository name may keep unescaped in the path of a `Link`:
/// everything else is percent-encoded, so the header is valid whatever the
/// name (the name grammar makes this a no-op today; the header must not
/// depend on that).
const LINK_PATH: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'.').remove(b'_').remove(b'-');

pub async fn list(app: &AppState, key: &RepoKey, name: &RepoName, params: &Params) -> Result<Response, ApiError> {
    let n = match params.n.as_deref() {
        None => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            ApiError::new(ErrorCode::Unsupported, "n must be a non-negative integer")
                .status(StatusCode::BAD_REQUEST)
                .detail(v.to_string())
        })?),
    };
    let tags = app.proxy.tags(key).await.map_err(|e| ApiError::from_proxy(e, Subject::Repository))?;
    let (page, next) = paginate(&tags, n, params.last.as_deref());
    let body = serde_json::json!({ "name": name.as_str(), "tags": page }).to_string();
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let (Some(n), Some(last)) = (n, next) {
        insert_text(resp.headers_mut(), header::LINK, &next_link(name.as_str(), n, last, params.ns.as_deref()));
    }
    Ok(resp)
}

/// The `Link` to the next page of a tags list. Every part that comes from
/// a request or an upstream is percent-encoded, so the result is always a
/// valid header value.
fn next_link(name: &str, n: usize, last: &str, ns: Option<&str>) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("n", &n.to_string()).append_pair("last", last);
    if let Some(ns) = ns {
        q.append_pair("ns", ns);
    }
    let path = percent_encoding::utf8_percent_encode(name, LINK_PATH);
    format!("</v2/{path}/tags/list?{}>; rel=\"next\"", q.finish())
}

/// One page of a sorted tag list: tags after `last` (exclusive), at most
/// `n`; and the tag to continue after when more remain.
pub(super) fn paginate<'a>(
    tags: &'a [String],
    n: Option<usize>,
    last: Option<&str>,
) -> (&'a [String], Option<&'a str>) {
    let start = last.map_or(0, |l| tags.partition_point(|t| t.as_str() <= l));
    let rest = &tags[start..];
    match n {
        Some(n) if n < rest.len() => {
            let page = &rest[..n];
            (page, page.last().map(String::as_str))
        }
        _ => (rest, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn tags(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pagination() {
        let t = tags(&["a", "b", "c", "d"]);
        assert_eq!(paginate(&t, None, None), (&t[..], None));
        assert_eq!(paginate(&t, Some(2), None), (&t[..2], Some("b")));
        assert_eq!(paginate(&t, Some(2), Some("b")), (&t[2..], None));
        assert_eq!(paginate(&t, Some(0), None), (&t[..0], None));
        assert_eq!(paginate(&t, None, Some("bb")), (&t[2..], None));
        assert_eq!(paginate(&t, Some(10), Some("d")), (&t[4..], None));
    }

    #[test]
    fn next_links_are_always_valid_header_values() {
        assert_eq!(
            next_link("coredns/coredns", 2, "b", Some("k8s.gcr.io")),
            "</v2/coredns/coredns/tags/list?n=2&last=b&ns=k8s.gcr.io>; rel=\"next\""
        );
        let hostile = "a b\"<>\r\n\u{7f};,é%";
        let link = next_link(hostile, 1, hostile, Some(hostile));
        assert!(HeaderValue::from_str(&link).is_ok(), "{link}");
        assert!(link.is_ascii(), "{link}");
        let target = link.strip_prefix('<').and_then(|l| l.split_once('>')).unwrap().0;
        assert!(!target.contains(['<', '>', '"', ' ', '\r', '\n']), "{target}");
    }
}
