//! `X-Request-Id`: one id per request, on every response and in the error
//! log line, so that a client's report can be matched to the log.
//!
//! A well-formed id sent by the client (a load balancer or another proxy in
//! front of us) is reused, so one id follows the request across hops. Any
//! other value is replaced, never trusted into the log or echoed back.
//!
//! Generated ids are a per-process prefix plus a counter, in hex: unique
//! within the process by construction, unlikely to collide across replicas
//! and restarts, and costing one atomic add and one small allocation (the
//! header value itself) per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// The header name; a fixed interface that clients and other components
/// rely on.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied id that is reused.
pub const MAX_LEN: usize = 64;

/// Length of a generated id: 8 hex digits of prefix, `-`, 16 of counter.
const GENERATED_LEN: usize = 25;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The id for a request with these headers: the client's when well-formed,
/// else a fresh one.
pub fn for_request(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if is_well_formed(v.as_bytes()) => v.clone(),
        _ => generate(),
    }
}

/// 1 to [`MAX_LEN`] characters of `[A-Za-z0-9._-]`: safe to log and to echo
/// without quoting, too short to bloat either.
pub fn is_well_formed(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A new id, such as `5c1e93a7-000000000000002a`.
pub fn generate() -> HeaderValue {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; GENERATED_LEN];
    write_hex(&mut buf[..8], u64::from(prefix()));
    buf[8] = b'-';
    write_hex(&mut buf[9..], n);
    // Hex digits and `-` are always a valid header value.
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

/// Per process: different across restarts and replicas (clock and pid),
/// computed once.
fn prefix() -> u32 {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    *PREFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let seed = nanos ^ (u64::from(std::process::id()) << 32);
        (splitmix64(seed) >> 32) as u32
    })
}

/// One round of SplitMix64: spreads clock and pid bits over the prefix so
/// that close start times do not give close prefixes.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `out` with the low `2 * out.len()` hex digits of `v`, zero-padded.
fn write_hex(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_and_well_formed() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        for v in [&a, &b] {
            assert_eq!(v.len(), GENERATED_LEN);
            assert!(is_well_formed(v.as_bytes()), "{v:?}");
        }
        assert_eq!(a.as_bytes()[..9], b.as_bytes()[..9], "one prefix per process");
    }

    #[test]
    fn hex_is_zero_padded() {
        let mut buf = [0u8; 16];
        write_hex(&mut buf, 0x2a);
        assert_eq!(&buf, b"000000000000002a");
        write_hex(&mut buf, u64::MAX);
        assert_eq!(&buf, b"ffffffffffffffff");
    }

    #[test]
    fn client_ids_are_reused_only_when_well_formed() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(X_REQUEST_ID, HeaderValue::from_str(v).unwrap());
            for_request(&h)
        };
        for ok in ["abc", "A.b_c-9", &"x".repeat(MAX_LEN), "0"] {
            assert_eq!(with(ok), ok);
        }
        for bad in ["", "a b", "a/b", "a\tb", "%41", "é", &"x".repeat(MAX_LEN + 1), &"y".repeat(300)] {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(bad.as_bytes()) {
                h.insert(X_REQUEST_ID, v);
            }
            let got = for_request(&h);
            assert_ne!(got.as_bytes(), bad.as_bytes(), "{bad:?}");
            assert_eq!(got.len(), GENERATED_LEN);
        }
        assert_eq!(for_request(&HeaderMap::new()).len(), GENERATED_LEN);
    }
}
