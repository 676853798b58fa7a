//! The htpasswd file: `user:hash` lines, as `htpasswd -B` writes them.
//!
//! Only bcrypt entries (`$2a$`, `$2b$`, `$2y$`) are accepted. The other
//! schemes htpasswd can write (`$apr1$` MD5, `{SHA}`, crypt, plain text) are
//! fast to brute-force from a leaked file, and a mirror that silently
//! accepted them would let a weak entry in unnoticed; each is refused at
//! start-up with the line it is on. `$2x$` is refused too: it marks hashes
//! made by the buggy pre-2011 crypt_blowfish.
//!
//! Parsing only: verification is `http::auth`'s job.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// bcrypt's cost bounds (log2 of the rounds), as the `bcrypt` crate checks
/// them; an entry outside them could never verify.
const COSTS: std::ops::RangeInclusive<u32> = 4..=31;

/// One user and their bcrypt hash.
#[derive(Clone)]
pub struct Entry {
    pub user: String,
    pub hash: String,
    /// The bcrypt cost (log2 of the rounds) the hash was made with.
    pub cost: u32,
}

impl fmt::Debug for Entry {
    /// The hash stays out of logs and panics: it can be attacked offline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry").field("user", &self.user).field("cost", &self.cost).finish_non_exhaustive()
    }
}

/// Why a line of the file was refused.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct Error {
    pub line: usize,
    pub message: String,
}

/// Parses the whole file. Blank lines and lines starting with `#` are
/// skipped; every other line must be a bcrypt entry for a user not seen
/// before, and there must be at least one.
pub fn parse(text: &str) -> Result<Vec<Entry>, Error> {
    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let fail = |message: String| Error { line, message };
        // The hash is never echoed: it is the secret part of the line.
        let Some((user, hash)) = l.split_once(':') else {
            return Err(fail("expected user:hash".into()));
        };
        if user.is_empty() {
            return Err(fail("empty user name".into()));
        }
        if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
            return Err(fail(format!(
                "user {user:?}: not a bcrypt hash (only $2a$, $2b$ and $2y$ entries are accepted; \
                 create them with `htpasswd -B`)"
            )));
        }
        let parts =
            bcrypt::HashParts::from_str(hash).map_err(|_| fail(format!("user {user:?}: malformed bcrypt hash")))?;
        let cost = parts.get_cost();
        if !COSTS.contains(&cost) {
            return Err(fail(format!("user {user:?}: bcrypt cost {cost} is outside 4..=31")));
        }
        if !seen.insert(user.to_string()) {
            return Err(fail(format!("user {user:?} appears more than once")));
        }
        entries.push(Entry { user: user.to_string(), hash: hash.to_string(), cost });
    }
    if entries.is_empty() {
        return Err(Error { line: text.lines().count(), message: "no users".into() });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, version: &str) -> String {
        let h = bcrypt::hash_with_salt("pw", 4, [7; 16]).unwrap();
        let v = match version {
            "2a" => bcrypt::Version::TwoA,
            "2b" => bcrypt::Version::TwoB,
            "2x" => bcrypt::Version::TwoX,
            _ => bcrypt::Version::TwoY,
        };
        format!("{user}:{}", h.format_for_version(v))
    }

    #[test]
    fn bcrypt_entries_parse() {
        let text = format!("# users\n\n{}\n{}\r\n{}\n", entry("alice", "2y"), entry("bob", "2b"), entry("eve", "2a"));
        let e = parse(&text).unwrap();
        assert_eq!(e.iter().map(|e| e.user.as_str()).collect::<Vec<_>>(), ["alice", "bob", "eve"]);
        assert!(e.iter().all(|e| e.cost == 4 && e.hash.len() == 60));
        assert!(bcrypt::verify("pw", &e[0].hash).unwrap());
    }

    #[test]
    fn other_schemes_are_refused_with_their_line() {
        let good = entry("alice", "2y");
        for bad in [
            "bob:$apr1$salt$hash",
            "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
            "bob:abJnggxhB/yWI",
            "bob:plaintext",
            &entry("bob", "2x"),
        ] {
            let e = parse(&format!("{good}\n\n{bad}\n")).unwrap_err();
            assert_eq!(e.line, 3, "{bad}: {e}");
            assert!(e.to_string().starts_with("line 3: user \"bob\""), "{e}");
            let hash = bad.split_once(':').unwrap().1;
            assert!(!e.to_string().contains(hash), "the hash is not echoed: {e}");
        }
    }

    #[test]
    fn malformed_files_are_refused() {
        let good = entry("alice", "2y");
        assert_eq!(parse(&format!("{good}\nno-colon\n")).unwrap_err().line, 2);
        assert_eq!(parse(&format!(":{}\n", &good[6..])).unwrap_err().line, 1);
        assert!(parse(&format!("{good}\n{good}\n")).unwrap_err().to_string().contains("more than once"));
        assert!(parse("alice:$2y$04$short\n").unwrap_err().to_string().contains("malformed"));
        assert!(parse("# nobody\n").unwrap_err().to_string().contains("no users"));
        assert!(parse("").is_err());
    }

    #[test]
    fn debug_leaves_the_hash_out() {
        let e = &parse(&entry("alice", "2y")).unwrap()[0];
        let d = format!("{e:?}");
        assert!(d.contains("alice") && !d.contains(&e.hash), "{d}");
    }
}
