//! The bearer tokens of the registry token flow: made by `GET /auth/token`
//! (see [`super::auth`]) and carried by later requests instead of a
//! password.
//!
//! A token is `base64url(payload) "." base64url(HMAC-SHA256(key, payload))`
//! (unpadded), the payload being JSON `{"sub":"alice","exp":1700000300}`:
//! the user it speaks for (no `sub`: anonymous) and when it stops being
//! valid, in unix seconds. Not a JWT on purpose: only the process that made
//! a token ever reads it, so a fixed algorithm with nothing for the token
//! itself to choose leaves no `alg` to downgrade and no parser to trust.
//! Tokens carry no scope: what a request may do is decided from its user,
//! as for Basic credentials.
//!
//! Tokens are bearer secrets: like passwords, they are never logged.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How long a token is valid. Clients fetch a new one when theirs runs out
/// (containers/image and moby both track `expires_in`), so this only bounds
/// how long a token that leaked stays useful.
pub const TOKEN_TTL: Duration = Duration::from_secs(300);
/// Longest token even looked at: ours are under 200 bytes; anything much
/// longer is not one, and is refused before it is decoded or hashed.
const MAX_TOKEN_LEN: usize = 1024;
/// Bytes of HMAC key drawn at start-up: SHA-256's output length, which
/// RFC 2104 gives as the least a key should have.
const KEY_LEN: usize = 32;

/// What a token says.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    exp: u64,
}

/// The key tokens are signed with, and the only place it is made or held.
///
/// It is drawn at random when the process starts, so tokens are valid only
/// on the replica that issued them and die with it (clients then simply
/// fetch a new one). Sharing tokens across replicas means giving them all
/// the same key: that belongs here, in [`TokenKey::random`]'s place, and
/// nowhere else.
pub struct TokenKey {
    /// The HMAC state after absorbing the key; cloned per token, so the key
    /// bytes themselves are not kept anywhere else.
    mac: Hmac<Sha256>,
}

impl fmt::Debug for TokenKey {
    /// The key signs every token: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A fresh key from the operating system's random source.
    pub fn random() -> Result<TokenKey, getrandom::Error> {
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key)?;
        let mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
        key.fill(0);
        Ok(TokenKey { mac })
    }

    /// A token for `user` (`None`: anonymous) valid for [`TOKEN_TTL`] from
    /// `now`.
    pub fn issue(&self, user: Option<&str>, now: SystemTime) -> String {
        let exp = unix_seconds(now).saturating_add(TOKEN_TTL.as_secs());
        let payload = serde_json::to_vec(&Claims { sub: user.map(str::to_string), exp }).expect("plain struct");
        let mut mac = self.mac.clone();
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(tag))
    }

    /// Checks a token made by [`TokenKey::issue`] with this key: the user it
    /// speaks for (`None`: anonymous), or why it is refused (for the log;
    /// never the token itself).
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Option<String>, &'static str> {
        if token.len() > MAX_TOKEN_LEN {
            return Err("token too long");
        }
        let (payload, tag) = token.split_once('.').ok_or("malformed token")?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| "malformed token")?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| "malformed token")?;
        let mut mac = self.mac.clone();
        mac.update(&payload);
        // Constant-time: a forger learns nothing from how long a wrong tag
        // took to refuse.
        mac.verify_slice(&tag).map_err(|_| "token signature does not match")?;
        // Past the signature, the payload is ours: it parses unless this
        // code changed its format under a running process.
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| "malformed token payload")?;
        if claims.exp <= unix_seconds(now) {
            return Err("token expired");
        }
        Ok(claims.sub)
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::random().unwrap()
    }

    #[test]
    fn a_token_speaks_for_its_user_until_it_expires() {
        let k = key();
        let now = SystemTime::now();
        let t = k.issue(Some("alice"), now);
        assert_eq!(k.verify(&t, now).unwrap().as_deref(), Some("alice"));
        assert_eq!(k.verify(&t, now + TOKEN_TTL - Duration::from_secs(1)).unwrap().as_deref(), Some("alice"));
        assert_eq!(k.verify(&t, now + TOKEN_TTL).unwrap_err(), "token expired");
        let anon = k.issue(None, now);
        assert_eq!(k.verify(&anon, now).unwrap(), None);
        assert!(t.len() < 200 && !t.contains(['=', '+', '/']), "{t}");
    }

    #[test]
    fn another_key_a_changed_payload_or_garbage_is_refused() {
        let (k, other) = (key(), key());
        let now = SystemTime::now();
        let t = k.issue(Some("alice"), now);
        assert!(other.verify(&t, now).is_err(), "tokens are valid only where they were made");

        // Same signature over another user or a later expiry.
        let (_, tag) = t.split_once('.').unwrap();
        for claims in [r#"{"sub":"bob","exp":99999999999}"#, r#"{"exp":99999999999}"#] {
            let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(claims));
            assert_eq!(k.verify(&forged, now).unwrap_err(), "token signature does not match");
        }
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(k.verify(std::str::from_utf8(&flipped).unwrap(), now).is_err());

        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        for garbage in ["", ".", "abc", "abc.def", "a.b.c", "%%%.%%%", &long, &t[..t.len() - 2], &format!("{t}.x")] {
            assert!(k.verify(garbage, now).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn nothing_secret_in_debug() {
        assert_eq!(format!("{:?}", key()), "TokenKey(..)");
    }
}
