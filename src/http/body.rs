//! Request bodies read whole with a bound, and bodies refused unread.
//!
//! An HTTP/1.1 client that is still sending when the answer arrives sees a
//! broken pipe (or a reset) instead of the answer: hyper stops reading a
//! body nobody polls and closes the connection. So a refusal is answered
//! only after the body was read to its end, up to [`MAX_DRAIN_BYTES`] and
//! [`DRAIN_DEADLINE`]; beyond those the connection is closed anyway (with
//! `Connection: close` on the answer), because a client may not make us
//! swallow unbounded bytes. A client that sent `Expect: 100-continue` has
//! not sent its body yet, so it is answered at once.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::error::ApiError;
use crate::oci::ErrorCode;

/// Most bytes read and thrown away to answer a refused request cleanly.
pub const MAX_DRAIN_BYTES: u64 = 16 * 1024 * 1024;
/// Longest time spent reading a refused body.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Why a body was not read whole.
#[derive(Debug)]
pub enum BodyError {
    /// Longer than the bound. `drained`: the rest was read and thrown away,
    /// so the client is reading our answer, not writing.
    TooLarge { limit: usize, drained: bool },
    /// The client's body broke off (a reset, a malformed chunk).
    Unreadable(String),
}

impl BodyError {
    /// The answer: 413 `SIZE_INVALID` on a connection that is then closed,
    /// or 400 with `code` for a body that broke off.
    pub fn into_api(self, unreadable: ErrorCode) -> ApiError {
        match self {
            BodyError::TooLarge { limit, drained } => {
                ApiError::new(ErrorCode::SizeInvalid, format!("request body larger than {limit} bytes"))
                    .status(StatusCode::PAYLOAD_TOO_LARGE)
                    .header(header::CONNECTION, "close")
                    .cause(if drained { "rest of the body drained" } else { "body left unread" })
            }
            BodyError::Unreadable(why) => {
                ApiError::new(unreadable, "request body could not be read").status(StatusCode::BAD_REQUEST).cause(why)
            }
        }
    }
}

/// `Content-Length`, when the client sent a valid one.
fn announced_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Whether the client waits for `100 Continue` before sending its body:
/// then an answer without reading is clean.
fn expects_continue(h: &HeaderMap) -> bool {
    h.get(header::EXPECT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

/// Reads a whole body of at most `limit` bytes. Over the limit, announced or
/// counted, the rest is drained (see the module doc) before the error is
/// returned.
pub async fn read_bounded(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, BodyError> {
    let announced = announced_length(headers);
    if announced.is_some_and(|n| n > limit as u64) {
        let drained = discard(body, headers).await;
        return Err(BodyError::TooLarge { limit, drained });
    }
    let mut buf = BytesMut::with_capacity(announced.unwrap_or(0) as usize);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            let seen = (buf.len() + chunk.len()) as u64;
            let drained = drain(stream, seen).await;
            return Err(BodyError::TooLarge { limit, drained });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads a body that will not be used, within the bounds; returns whether
/// it ended (else the answer should close the connection).
pub async fn discard(body: Body, headers: &HeaderMap) -> bool {
    if expects_continue(headers) {
        return true; // hyper never sends 100 Continue for a body left unpolled
    }
    if announced_length(headers).is_some_and(|n| n > MAX_DRAIN_BYTES) {
        return false;
    }
    drain(body.into_data_stream(), 0).await
}

/// Refuses a request whose body no handler read: drains it first (see the
/// module doc) and closes the connection when that was not possible.
pub async fn refuse(e: ApiError, headers: &HeaderMap, body: Body) -> ApiError {
    if discard(body, headers).await {
        e
    } else {
        e.header(header::CONNECTION, "close")
    }
}

async fn drain(mut stream: axum::body::BodyDataStream, mut seen: u64) -> bool {
    let read_all = async {
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { return false };
            seen += chunk.len() as u64;
            if seen > MAX_DRAIN_BYTES {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_DEADLINE, read_all).await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.clone(), v.parse().unwrap())).collect()
    }

    fn chunked(chunks: usize, size: usize) -> Body {
        let s = futures::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; size]))));
        Body::from_stream(s)
    }

    #[tokio::test]
    async fn reads_up_to_the_limit() {
        let b = read_bounded(chunked(4, 1024), &HeaderMap::new(), 4096).await.unwrap();
        assert_eq!(b.len(), 4096);
        let b = read_bounded(Body::empty(), &HeaderMap::new(), 0).await.unwrap();
        assert!(b.is_empty());
    }

    #[tokio::test]
    async fn over_the_limit_the_rest_is_drained() {
        let r = read_bounded(chunked(8, 1024), &HeaderMap::new(), 4096).await;
        assert!(matches!(r, Err(BodyError::TooLarge { limit: 4096, drained: true })), "{r:?}");
        let h = headers(&[(header::CONTENT_LENGTH, "8192")]);
        let r = read_bounded(chunked(8, 1024), &h, 4096).await;
        assert!(matches!(r, Err(BodyError::TooLarge { drained: true, .. })), "{r:?}");
        let e = r.unwrap_err().into_api(ErrorCode::ManifestInvalid);
        assert_eq!((e.status.as_u16(), e.code.as_str()), (413, "SIZE_INVALID"));
        assert!(e.headers.iter().any(|(k, v)| k == header::CONNECTION && v == "close"));
    }

    #[tokio::test]
    async fn beyond_the_drain_bound_nothing_more_is_read() {
        let chunks = (MAX_DRAIN_BYTES / 65536 + 10) as usize;
        let r = read_bounded(chunked(chunks, 65536), &HeaderMap::new(), 4096).await;
        assert!(matches!(r, Err(BodyError::TooLarge { drained: false, .. })), "{r:?}");
        let huge = headers(&[(header::CONTENT_LENGTH, &(MAX_DRAIN_BYTES + 1).to_string())]);
        assert!(!discard(chunked(1, 1), &huge).await, "not even started");
        let waiting = headers(&[(header::CONTENT_LENGTH, "99999999999"), (header::EXPECT, "100-continue")]);
        assert!(discard(chunked(1, 1), &waiting).await, "the client has not sent anything yet");
    }

    #[tokio::test]
    async fn a_broken_body_is_unreadable() {
        let s = futures::stream::iter([Ok(Bytes::from_static(b"{")), Err(std::io::Error::other("reset"))]);
        let r = read_bounded(Body::from_stream(s), &HeaderMap::new(), 4096).await;
        assert!(matches!(r, Err(BodyError::Unreadable(_))), "{r:?}");
    }
}
