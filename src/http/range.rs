//! `Range: bytes=…` for blob GETs (containerd resumes and, since 2.1,
//! fetches layers in parallel chunks).
//!
//! RFC 9110 §14 splits range trouble in two, and so does this module:
//! a header we cannot or will not read (bad syntax, other units, several
//! ranges) is *ignored* and the whole body is sent with 200 ([`parse`]
//! yields `None`); a well-formed range that selects nothing of this blob is
//! *unsatisfiable* and answered 416 ([`resolve`] yields `None`). Positions
//! too large for a `u64` are syntactically fine, so they saturate to
//! `u64::MAX` and then behave like any other position past the end, rather
//! than falling into the "ignored" bucket by accident of integer width.

use std::cmp::Ordering;

/// One byte range as the client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-b` (inclusive)
    Bounded(u64, u64),
    /// `bytes=a-`
    From(u64),
    /// `bytes=-n`: the last n bytes
    Suffix(u64),
}

/// Parses a `Range` header. Anything we do not serve (other units, several
/// ranges, bad syntax) yields `None`, and RFC 9110 then says to ignore the
/// header and answer 200 with the whole body.
pub fn parse(header: &str) -> Option<RangeSpec> {
    let (unit, spec) = header.trim().split_once('=')?;
    // Range units are case-insensitive (RFC 9110 §14.1).
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let spec = spec.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, false) => Some(RangeSpec::Suffix(position(b)?)),
        (false, true) => Some(RangeSpec::From(position(a)?)),
        (false, false) => {
            let (first, last) = (position(a)?, position(b)?);
            // Compared as decimal text, not as saturated numbers: two
            // different overflowing positions must still be ordered right.
            (decimal_cmp(a, b) != Ordering::Greater).then_some(RangeSpec::Bounded(first, last))
        }
        (true, true) => None,
    }
}

/// A run of ASCII digits as a byte position; too large for `u64` means
/// `u64::MAX`, which is past the end of every blob.
fn position(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

/// Orders two runs of ASCII digits by value, whatever their length.
fn decimal_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Resolves a range against the blob size: `Some((start, end_exclusive))`,
/// or `None` when unsatisfiable (416). Nothing is satisfiable in an empty
/// blob, and a zero-length suffix selects nothing (RFC 9110 §14.1.1).
pub fn resolve(spec: RangeSpec, size: u64) -> Option<(u64, u64)> {
    match spec {
        RangeSpec::Bounded(a, b) if a < size => Some((a, b.saturating_add(1).min(size))),
        RangeSpec::From(a) if a < size => Some((a, size)),
        RangeSpec::Suffix(n) if n > 0 && size > 0 => Some((size - n.min(size), size)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUGE: &str = "99999999999999999999999";

    #[test]
    fn parses_supported_forms() {
        assert_eq!(parse("bytes=0-99"), Some(RangeSpec::Bounded(0, 99)));
        assert_eq!(parse("bytes=100-"), Some(RangeSpec::From(100)));
        assert_eq!(parse("bytes=-5"), Some(RangeSpec::Suffix(5)));
        assert_eq!(parse("bytes=-0"), Some(RangeSpec::Suffix(0)));
        assert_eq!(parse("bytes=7-7"), Some(RangeSpec::Bounded(7, 7)));
        assert_eq!(parse(" bytes= 3 - 4 "), Some(RangeSpec::Bounded(3, 4)));
        assert_eq!(parse("Bytes=0-1"), Some(RangeSpec::Bounded(0, 1)));
        assert_eq!(parse("bytes=00010-00020"), Some(RangeSpec::Bounded(10, 20)));
    }

    #[test]
    fn overflowing_positions_saturate() {
        let max = u64::MAX;
        assert_eq!(parse(&format!("bytes={HUGE}-")), Some(RangeSpec::From(max)));
        assert_eq!(parse(&format!("bytes=0-{HUGE}")), Some(RangeSpec::Bounded(0, max)));
        assert_eq!(parse(&format!("bytes=-{HUGE}")), Some(RangeSpec::Suffix(max)));
        assert_eq!(parse(&format!("bytes={HUGE}-{HUGE}")), Some(RangeSpec::Bounded(max, max)));
        assert_eq!(parse("bytes=18446744073709551615-"), Some(RangeSpec::From(max)));
        assert_eq!(parse("bytes=18446744073709551616-"), Some(RangeSpec::From(max)));
        // Still ordered by value, not by the saturated number.
        assert_eq!(parse(&format!("bytes=1{HUGE}-{HUGE}")), None);
        assert_eq!(parse(&format!("bytes={HUGE}-5")), None);
    }

    #[test]
    fn ignores_what_it_does_not_serve() {
        for h in [
            "items=0-1",
            "bytes 0-1",
            "bytes=0-1,5-6",
            "bytes=0-1, 5-6",
            "bytes=5-1",
            "bytes=-",
            "bytes=",
            "bytes=a-b",
            "bytes=1",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=--1",
            "bytes=1--2",
            "bytes=0x10-",
            "bytes=1.5-2",
            "",
        ] {
            assert_eq!(parse(h), None, "{h}");
        }
    }

    #[test]
    fn resolves_against_size() {
        assert_eq!(resolve(RangeSpec::Bounded(0, 99), 1000), Some((0, 100)));
        assert_eq!(resolve(RangeSpec::Bounded(900, 5000), 1000), Some((900, 1000)));
        assert_eq!(resolve(RangeSpec::Bounded(1000, 1001), 1000), None);
        assert_eq!(resolve(RangeSpec::From(999), 1000), Some((999, 1000)));
        assert_eq!(resolve(RangeSpec::From(1000), 1000), None);
        assert_eq!(resolve(RangeSpec::Suffix(10), 1000), Some((990, 1000)));
        assert_eq!(resolve(RangeSpec::Suffix(5000), 1000), Some((0, 1000)));
        assert_eq!(resolve(RangeSpec::Suffix(0), 1000), None);
        assert_eq!(resolve(RangeSpec::Bounded(0, u64::MAX), 10), Some((0, 10)));
        assert_eq!(resolve(RangeSpec::Suffix(u64::MAX), 10), Some((0, 10)));
        assert_eq!(resolve(RangeSpec::From(u64::MAX), 10), None);
        assert_eq!(resolve(RangeSpec::Bounded(u64::MAX, u64::MAX), u64::MAX), None);
        // An empty blob satisfies nothing.
        for spec in [RangeSpec::From(0), RangeSpec::Bounded(0, 0), RangeSpec::Suffix(1), RangeSpec::Suffix(0)] {
            assert_eq!(resolve(spec, 0), None, "{spec:?}");
        }
    }

    /// Header text → what a 1000-byte and an empty blob answer: `None` for
    /// 200 (ignored), `Some(None)` for 416, `Some(Some(range))` for 206.
    #[test]
    fn header_to_answer_table() {
        type Answer = Option<Option<(u64, u64)>>;
        let answer = |h: &str, size| -> Answer { parse(h).map(|s| resolve(s, size)) };
        let cases: &[(&str, Answer, Answer)] = &[
            ("bytes=0-99", Some(Some((0, 100))), Some(None)),
            ("bytes=990-", Some(Some((990, 1000))), Some(None)),
            ("bytes=-10", Some(Some((990, 1000))), Some(None)),
            ("bytes=0-", Some(Some((0, 1000))), Some(None)),
            ("bytes=999-999", Some(Some((999, 1000))), Some(None)),
            ("bytes=500-5000", Some(Some((500, 1000))), Some(None)),
            ("bytes=1000-", Some(None), Some(None)),
            ("bytes=1000-2000", Some(None), Some(None)),
            ("bytes=-0", Some(None), Some(None)),
            ("bytes=99999999999999999999999-", Some(None), Some(None)),
            ("bytes=0-99999999999999999999999", Some(Some((0, 1000))), Some(None)),
            ("bytes=10-99999999999999999999999", Some(Some((10, 1000))), Some(None)),
            ("bytes=-99999999999999999999999", Some(Some((0, 1000))), Some(None)),
            ("bytes=5-1", None, None),
            ("bytes=a-b", None, None),
            ("items=0-1", None, None),
            ("bytes=0-1,5-6", None, None),
        ];
        for (h, full, empty) in cases {
            assert_eq!(answer(h, 1000), *full, "{h} on 1000 bytes");
            assert_eq!(answer(h, 0), *empty, "{h} on an empty blob");
        }
    }
}
