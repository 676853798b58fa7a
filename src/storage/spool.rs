//! Spool files: where bytes wait while they are hashed, before they become
//! a blob (or are thrown away).
//!
//! Each process spools into a directory of its own, claimed with a lock
//! file that it holds for its whole life:
//!
//! ```text
//! <spool root>/
//! ├── <owner>.lock        flock(LOCK_EX) held by the owning process
//! └── <owner>/<n>         that process's spool files
//! ```
//!
//! At start-up every owner whose lock can be taken is dead, so its whole
//! directory goes, whatever its age: a crash loop cannot accumulate
//! leftovers, and two processes that share a store path by mistake never
//! delete each other's live files. The kernel drops an flock when its
//! holder dies, `kill -9` included, so no stale lock survives a crash.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// This process's claimed spool directory.
#[derive(Debug)]
pub struct SpoolDir {
    dir: PathBuf,
    /// Holds the flock for as long as the store lives.
    _lock: File,
    seq: AtomicU64,
    /// Tests: spool files whose writes fail with ENOSPC, as on a full disk.
    #[cfg(test)]
    pub(crate) full: std::sync::atomic::AtomicBool,
}

impl SpoolDir {
    /// Removes the directories of dead owners under `root`, then claims a
    /// fresh directory for this process.
    pub fn claim(root: &Path) -> io::Result<SpoolDir> {
        std::fs::create_dir_all(root)?;
        remove_dead_owners(root);
        loop {
            let owner = format!("{}-{:x}", std::process::id(), unique());
            let lock_path = root.join(format!("{owner}.lock"));
            let lock = OpenOptions::new().read(true).write(true).create_new(true).open(&lock_path)?;
            flock(&lock, libc::LOCK_EX | libc::LOCK_NB)?;
            // A concurrent cleanup may have taken the lock in the instant
            // between create and flock and unlinked the file: then this lock
            // guards nothing, so start over with a new name.
            let same = std::fs::metadata(&lock_path).is_ok_and(|m| m.ino() == lock.metadata().map_or(0, |l| l.ino()));
            if !same {
                continue;
            }
            let dir = root.join(&owner);
            std::fs::create_dir(&dir)?;
            return Ok(SpoolDir {
                dir,
                _lock: lock,
                seq: AtomicU64::new(0),
                #[cfg(test)]
                full: Default::default(),
            });
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates a new, empty spool file.
    pub fn create(&self) -> io::Result<(PathBuf, File)> {
        let path = self.dir.join(self.seq.fetch_add(1, Ordering::Relaxed).to_string());
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        #[cfg(test)]
        if self.full.load(Ordering::Relaxed) {
            return Ok((path, OpenOptions::new().read(true).write(true).open("/dev/full")?));
        }
        Ok((path, file))
    }
}

/// Deletes every owner directory under `root` whose lock nobody holds, and
/// any loose file left by an older layout.
fn remove_dead_owners(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        let Ok(kind) = e.file_type() else { continue };
        if let Some(owner) = name.strip_suffix(".lock") {
            let Ok(lock) = OpenOptions::new().read(true).write(true).open(&path) else { continue };
            if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
                continue; // a live process owns it
            }
            let dir = root.join(owner);
            let freed = dir_size(&dir);
            // The directory before the lock: while the lock file exists no
            // one else can claim this owner name.
            let removed =
                std::fs::remove_dir_all(&dir).or_else(not_found_ok).and_then(|()| std::fs::remove_file(&path));
            match removed {
                Ok(()) => tracing::info!(owner, bytes = freed, "removed spool files of a process that is gone"),
                Err(err) => tracing::warn!(owner, error = %err, "cannot remove spool files of a process that is gone"),
            }
        } else if kind.is_dir() {
            // Removed only if its lock is gone too (a cleanup interrupted
            // between the two removals), never while a lock file names it.
            if !root.join(format!("{name}.lock")).exists() {
                let _ = std::fs::remove_dir_all(&path);
            }
        } else if kind.is_file() && !name.starts_with(".probe") {
            // Spool files of the flat layout used before owner directories.
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn not_found_ok(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn unique() -> u128 {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    t ^ ((N.fetch_add(1, Ordering::Relaxed) as u128) << 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_owner_is_removed_whatever_the_age_and_a_live_one_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let live = SpoolDir::claim(root.path()).unwrap();
        let (live_file, _) = live.create().unwrap();
        // A dead owner: its lock file exists but nobody holds it.
        let dead = SpoolDir::claim(root.path()).unwrap();
        let (dead_file, mut f) = dead.create().unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 4096]).unwrap();
        let dead_dir = dead.path().to_path_buf();
        drop(dead); // releases the flock, as a crash would
                    // A loose file from the flat layout.
        std::fs::write(root.path().join("123-4-5"), b"old").unwrap();

        let third = SpoolDir::claim(root.path()).unwrap();
        assert!(!dead_file.exists() && !dead_dir.exists(), "a dead owner's files are gone at once");
        assert!(live_file.exists(), "a live owner's files are kept");
        assert!(!root.path().join("123-4-5").exists());
        assert!(third.path().exists());
        let locks = std::fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".lock"))
            .count();
        assert_eq!(locks, 2, "one lock per live owner");
    }

    #[test]
    fn spool_files_are_distinct() {
        let root = tempfile::tempdir().unwrap();
        let s = SpoolDir::claim(root.path()).unwrap();
        let (a, _) = s.create().unwrap();
        let (b, _) = s.create().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(s.path()));
    }
}
