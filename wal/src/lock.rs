//! One process per data directory. Two agents (or two control planes) on one
//! directory would both append to the same logs: the audit chain forks, a
//! journal compaction drops the other's records, operations run twice. So
//! every process that writes a data directory first takes an exclusive lock
//! on its `lock` file and holds it until it exits; the kernel releases it when
//! the process ends, however it ends (`kill -9` included), so there is no
//! stale lock to clean up.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "lock";

/// An exclusive lock on a data directory, held while this value lives.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "another process{} is using the data directory {}; only one {what} may run on it at a time",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        dir.display()
    )]
    Held {
        dir: PathBuf,
        what: &'static str,
        /// The pid the holder wrote into the lock file, if readable.
        holder: Option<u32>,
    },
    #[error("cannot lock the data directory {}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl DirLock {
    /// Takes the lock on `dir` (which must exist) without waiting. `what`
    /// names the kind of process for the error (`"agent"`, `"control plane"`).
    pub fn acquire(dir: &Path, what: &'static str) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io_err = |source| LockError::Io {
            dir: dir.into(),
            source,
        };
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut file = opts.open(&path).map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(LockError::Held {
                    dir: dir.into(),
                    what,
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
        // The holder's pid, for the next one's error message only: the lock
        // itself is the kernel's, not this text.
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(io_err)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DirLock::acquire(dir.path(), "agent").expect("first lock");
        let err = DirLock::acquire(dir.path(), "agent").expect_err("second lock refused");
        let LockError::Held { holder, .. } = &err else {
            panic!("expected Held, got {err:?}");
        };
        assert_eq!(*holder, Some(std::process::id()));
        assert!(
            err.to_string().contains("only one agent may run on it at a time"),
            "{err}"
        );
        drop(first);
        DirLock::acquire(dir.path(), "agent").expect("free again once the holder is gone");
    }
}
