//! `Range: bytes=…` for blob GETs (containerd resumes and, since 2.1,
//! fetches layers in parallel chunks).

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
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => Some(RangeSpec::Suffix(num(b)?)),
        (false, true) => Some(RangeSpec::From(num(a)?)),
        (false, false) => {
            let (a, b) = (num(a)?, num(b)?);
            (a <= b).then_some(RangeSpec::Bounded(a, b))
        }
        (true, true) => None,
    }
}

/// Resolves a range against the blob size: `Some((start, end_exclusive))`,
/// or `None` when unsatisfiable (416).
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

    #[test]
    fn parses_supported_forms() {
        assert_eq!(parse("bytes=0-99"), Some(RangeSpec::Bounded(0, 99)));
        assert_eq!(parse("bytes=100-"), Some(RangeSpec::From(100)));
        assert_eq!(parse("bytes=-5"), Some(RangeSpec::Suffix(5)));
        assert_eq!(parse(" bytes= 3 - 4 "), Some(RangeSpec::Bounded(3, 4)));
    }

    #[test]
    fn ignores_what_it_does_not_serve() {
        for h in [
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=-",
            "bytes=a-b",
            "bytes=1",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
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
        assert_eq!(resolve(RangeSpec::From(0), 0), None);
        assert_eq!(resolve(RangeSpec::Bounded(0, u64::MAX), 10), Some((0, 10)));
    }
}
