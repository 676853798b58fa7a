//! Requests hyper rejects before they reach the router.
//!
//! A request line hyper cannot parse, headers over the size limit or an
//! unknown HTTP version are answered by hyper itself, with an empty body:
//!
//! ```text
//! HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: …\r\n\r\n
//! ```
//!
//! Registry clients print the error body, so the connection's writer
//! (`server`) swaps such an answer for the same status with a spec JSON
//! body. [`rewrite`] recognises hyper's answer exactly: a complete 4xx/5xx
//! head with `content-length: 0` and no `x-request-id` (every answer of the
//! router carries one), written while no request is in progress.

use crate::oci::ErrorCode;

/// The spec-shaped replacement for hyper's own rejection `head`, or `None`
/// when `head` is anything else.
pub fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    // Cheap tests first: this sees every write made while no request is in
    // progress, blob bytes included.
    if head.len() > 512 || !head.starts_with(b"HTTP/1.1 ") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let rest = text.strip_prefix("HTTP/1.1 ")?;
    if !(rest.starts_with('4') || rest.starts_with('5')) || !text.ends_with("\r\n\r\n") {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    if !lower.contains("\r\ncontent-length: 0\r\n") || lower.contains("\r\nx-request-id:") {
        return None;
    }
    let status_line = text.split("\r\n").next()?;
    let status: u16 = rest.get(..3)?.parse().ok()?;
    let message = match status {
        431 => "request headers too large",
        414 => "request target too long",
        505 => "HTTP version not supported",
        408 => "request headers arrived too slowly",
        _ => "malformed HTTP request",
    };
    let body = serde_json::json!({
        "errors": [{ "code": ErrorCode::Unsupported.as_str(), "message": message }]
    })
    .to_string();
    let id = super::request_id::generate();
    let id = id.to_str().unwrap_or("-");
    Some(
        format!(
            "{status_line}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             docker-distribution-api-version: registry/2.0\r\nx-request-id: {id}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_rejections_get_a_json_body() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 15:14:49 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(hyper).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{out}");
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        assert!(head.contains("x-request-id: "));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNSUPPORTED");
        assert_eq!(v["errors"][0]["message"], "request headers too large");
    }

    #[test]
    fn anything_else_is_left_alone() {
        for other in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nx-request-id: 1\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"\x1f\x8b binary blob bytes",
        ] {
            assert!(rewrite(other).is_none(), "{:?}", String::from_utf8_lossy(other));
        }
    }
}
