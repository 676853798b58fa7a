//! Upload sessions kept in the store: the bytes a client has pushed so far
//! and a small record of whose they are and how far they go, so that a
//! chunked upload survives a restart and is finished later.
//!
//! ```text
//! <uploads root>/                 <data root>/_uploads (filesystem), <spool root>/_uploads (memory)
//! └── <id>/                       one session; <id> is an UploadId this store generated
//!     ├── state.json              {"upstream","repo","offset","started_ms","updated_ms"}
//!     ├── state.json.new          the next record, renamed over state.json
//!     └── data                    the blob's bytes 0..offset
//! ```
//!
//! - **The record is the truth.** A chunk is written to `data` first and
//!   the record after it (written aside, then renamed over), so a crash in
//!   between leaves bytes past `offset`, which [`UploadDir::load`] cuts off.
//!   A `data` shorter than `offset` (bytes lost with the page cache in a
//!   power cut) cannot be trusted and the session is dropped: the client
//!   starts over, and nothing unverified is ever committed anyway.
//! - **Only our ids name files.** Every function takes a parsed
//!   [`UploadId`] (1–64 of `[A-Za-z0-9_-]`), ids are generated here from
//!   the OS's random source, and nothing in a record ever becomes a path.
//! - **Blocking.** Everything here is file I/O: call it from the blocking
//!   pool (or at start-up, before the runtime serves).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::oci::route::UploadId;
use crate::oci::RepoKey;

use super::paths::{self, UPLOAD_DATA as DATA_FILE, UPLOAD_STATE as STATE_FILE, UPLOAD_STATE_NEW as STATE_TMP};

/// Random bytes in a generated id (32 characters of URL-safe base64).
const ID_BYTES: usize = 24;

/// What is known of a session between requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadState {
    /// The repository the session was started in (its routed key).
    pub upstream: String,
    pub repo: String,
    /// Bytes received and kept.
    pub offset: u64,
    /// Unix milliseconds of the start and of the last chunk kept.
    pub started_ms: u64,
    pub updated_ms: u64,
}

impl UploadState {
    pub fn new(key: &RepoKey, now_ms: u64) -> UploadState {
        UploadState {
            upstream: key.upstream().to_string(),
            repo: key.repo().to_string(),
            offset: 0,
            started_ms: now_ms,
            updated_ms: now_ms,
        }
    }

    /// Whether this session belongs to `key`.
    pub fn is_of(&self, key: &RepoKey) -> bool {
        self.upstream == key.upstream() && self.repo == key.repo().as_str()
    }
}

/// Unix milliseconds, the clock of [`UploadState`].
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The directory of upload sessions (see the module doc).
#[derive(Debug)]
pub struct UploadDir {
    root: PathBuf,
}

impl UploadDir {
    /// Opens (creating it if needed) the sessions directory `root`.
    pub fn open(root: PathBuf) -> io::Result<UploadDir> {
        std::fs::create_dir_all(&root)?;
        Ok(UploadDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: &UploadId) -> PathBuf {
        paths::upload_dir(&self.root, id)
    }

    /// Where a session's bytes are.
    pub fn data_path(&self, id: &UploadId) -> PathBuf {
        self.dir(id).join(DATA_FILE)
    }

    /// Starts a session for `key` under a new id, with no bytes.
    pub fn create(&self, key: &RepoKey, now_ms: u64) -> io::Result<(UploadId, UploadState)> {
        let state = UploadState::new(key, now_ms);
        loop {
            let id = new_id()?;
            match std::fs::create_dir(self.dir(&id)) {
                Ok(()) => {}
                // 192 random bits do not collide; but never share a session.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            let made = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.data_path(&id))
                .and_then(|_| self.save(&id, &state));
            if let Err(e) = made {
                let _ = self.remove(&id);
                return Err(e);
            }
            return Ok((id, state));
        }
    }

    /// Replaces a session's record (atomically: aside, then renamed over).
    pub fn save(&self, id: &UploadId, state: &UploadState) -> io::Result<()> {
        let dir = self.dir(id);
        let body = serde_json::to_vec(state).map_err(io::Error::other)?;
        std::fs::write(dir.join(STATE_TMP), body)?;
        std::fs::rename(dir.join(STATE_TMP), dir.join(STATE_FILE))
    }

    /// A session's record, with its bytes cut back to the record's offset
    /// (see the module doc); `None` when there is no such session, or it
    /// cannot be trusted (then it is removed).
    pub fn load(&self, id: &UploadId) -> io::Result<Option<UploadState>> {
        let raw = match std::fs::read(self.dir(id).join(STATE_FILE)) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let Ok(state) = serde_json::from_slice::<UploadState>(&raw) else {
            tracing::warn!(upload = %id, "unreadable upload record; removing the upload");
            self.remove(id)?;
            return Ok(None);
        };
        let data = match OpenOptions::new().write(true).open(self.data_path(id)) {
            Ok(f) => f,
            // Committed (the bytes were renamed into the blob) just before
            // a crash, or damaged: either way not an upload any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.remove(id)?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let len = data.metadata()?.len();
        if len < state.offset {
            tracing::warn!(upload = %id, len, offset = state.offset, "upload bytes lost; removing the upload");
            self.remove(id)?;
            return Ok(None);
        }
        if len > state.offset {
            // A chunk that was cut off before its record was written.
            data.set_len(state.offset)?;
        }
        Ok(Some(state))
    }

    /// Opens a session's bytes for reading and writing.
    pub fn open_data(&self, id: &UploadId) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(self.data_path(id))
    }

    /// Removes a session and its bytes; a session already gone is fine.
    pub fn remove(&self, id: &UploadId) -> io::Result<()> {
        match std::fs::remove_dir_all(self.dir(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes every session last updated before `cutoff_ms` (unix ms),
    /// except those `keep` names (live in memory, swept there), and any
    /// entry that is not a session and is older than that. Returns the ids
    /// of the sessions removed.
    pub fn sweep(&self, cutoff_ms: u64, keep: impl Fn(&UploadId) -> bool) -> Vec<UploadId> {
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else { return removed };
        for e in entries.flatten() {
            let path = e.path();
            let id = e.file_name().to_str().and_then(UploadId::parse);
            let Some(id) = id else {
                // Not ours (a stray file, a foreign name): only once it is old,
                // so a name being created elsewhere is not raced.
                if modified_ms(&path).is_some_and(|m| m < cutoff_ms) {
                    let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                }
                continue;
            };
            if keep(&id) {
                continue;
            }
            let updated = std::fs::read(path.join(STATE_FILE))
                .ok()
                .and_then(|raw| serde_json::from_slice::<UploadState>(&raw).ok())
                .map(|s| s.updated_ms)
                // A session being created has no record yet: judged by the
                // directory's age.
                .or_else(|| modified_ms(&path));
            if updated.is_some_and(|u| u < cutoff_ms) {
                match self.remove(&id) {
                    Ok(()) => removed.push(id),
                    Err(err) => tracing::warn!(upload = %id, error = %err, "cannot remove an abandoned upload"),
                }
            }
        }
        removed
    }
}

fn modified_ms(path: &Path) -> Option<u64> {
    let m = std::fs::symlink_metadata(path).ok()?.modified().ok()?;
    Some(m.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64)
}

/// A new, unguessable session id: 192 bits from the kernel's random
/// source, as URL-safe base64 (always a valid [`UploadId`]).
pub fn new_id() -> io::Result<UploadId> {
    let mut buf = [0u8; ID_BYTES];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most the given length into the buffer.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf);
    UploadId::parse(&text).ok_or_else(|| io::Error::other("generated upload id is not valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(up: &str, repo: &str) -> RepoKey {
        RepoKey::new(up.into(), repo.parse().unwrap())
    }

    fn dir() -> (UploadDir, tempfile::TempDir) {
        let t = tempfile::tempdir().unwrap();
        (UploadDir::open(t.path().join("_uploads")).unwrap(), t)
    }

    #[test]
    fn generated_ids_are_valid_distinct_and_path_safe() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = new_id().unwrap();
            assert_eq!(id.as_str().len(), 32);
            assert_eq!(UploadId::parse(id.as_str()).as_ref(), Some(&id));
            assert!(seen.insert(id));
        }
        // What may reach a path is only ever a parsed id.
        for bad in ["..", ".", "a/b", "a.b", "", "%2e", &"x".repeat(65), "state.json"] {
            assert_eq!(UploadId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_session_round_trips_through_its_record() {
        let (d, _t) = dir();
        let k = key("registry.k8s.io", "klts/kube-apiserver");
        let (id, state) = d.create(&k, 1_000).unwrap();
        assert_eq!(state, UploadState::new(&k, 1_000));
        assert!(state.is_of(&k) && !state.is_of(&key("docker.io", "klts/kube-apiserver")));
        assert_eq!(d.load(&id).unwrap(), Some(state.clone()));
        assert_eq!(std::fs::metadata(d.data_path(&id)).unwrap().len(), 0);

        // Bytes, then the record: what a kept chunk does.
        let f = d.open_data(&id).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"hello world", 0).unwrap();
        let kept = UploadState { offset: 5, updated_ms: 2_000, ..state };
        d.save(&id, &kept).unwrap();
        // A fresh store (a restart) sees the record and only the kept bytes.
        let again = UploadDir::open(d.root().to_path_buf()).unwrap();
        assert_eq!(again.load(&id).unwrap(), Some(kept));
        assert_eq!(std::fs::read(again.data_path(&id)).unwrap(), b"hello");
        assert!(!d.root().join(id.as_str()).join(STATE_TMP).exists());

        d.remove(&id).unwrap();
        assert_eq!(d.load(&id).unwrap(), None);
        d.remove(&id).unwrap();
    }

    #[test]
    fn untrustworthy_sessions_are_dropped_on_load() {
        let (d, _t) = dir();
        let k = key("docker.io", "library/busybox");
        // Fewer bytes than the record says.
        let (short, s) = d.create(&k, 1).unwrap();
        d.save(&short, &UploadState { offset: 10, ..s.clone() }).unwrap();
        assert_eq!(d.load(&short).unwrap(), None);
        assert!(!d.root().join(short.as_str()).exists());
        // An unreadable record.
        let (garbled, _) = d.create(&k, 1).unwrap();
        std::fs::write(d.root().join(garbled.as_str()).join(STATE_FILE), b"{not json").unwrap();
        assert_eq!(d.load(&garbled).unwrap(), None);
        assert!(!d.root().join(garbled.as_str()).exists());
        // Committed just before a crash: the bytes are gone, the record not.
        let (committed, _) = d.create(&k, 1).unwrap();
        std::fs::remove_file(d.data_path(&committed)).unwrap();
        assert_eq!(d.load(&committed).unwrap(), None);
        // Never created.
        assert_eq!(d.load(&new_id().unwrap()).unwrap(), None);
    }

    #[test]
    fn sweep_removes_what_was_abandoned_and_nothing_else() {
        let (d, _t) = dir();
        let k = key("registry.k8s.io", "pause");
        let (old, _) = d.create(&k, 1_000).unwrap();
        let (fresh, _) = d.create(&k, 5_000).unwrap();
        let (live, _) = d.create(&k, 1_000).unwrap();
        let (no_record, _) = d.create(&k, 1_000).unwrap();
        std::fs::remove_file(d.root().join(no_record.as_str()).join(STATE_FILE)).unwrap();
        std::fs::write(d.root().join("stray.file"), b"x").unwrap();

        let removed = d.sweep(2_000, |id| *id == live);
        assert_eq!(removed, vec![old.clone()]);
        assert!(d.load(&old).unwrap().is_none());
        assert!(d.load(&fresh).unwrap().is_some(), "updated after the cutoff");
        assert!(d.load(&live).unwrap().is_some(), "kept by the caller");
        assert!(d.root().join(no_record.as_str()).exists(), "a directory just made is judged by its age");
        assert!(d.root().join("stray.file").exists(), "young strays are left alone");

        // Everything is older than a cutoff in the future.
        let mut removed = d.sweep(now_ms() + 60_000, |_| false);
        removed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut want = vec![fresh, live, no_record];
        want.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(removed, want);
        assert_eq!(std::fs::read_dir(d.root()).unwrap().count(), 0, "strays go once old");
    }
}
