//! `byoc-testkit`: what the crates' tests share, and nothing else links.
//!
//! [`Golden`]: a directory of golden files that freeze an on-disk or
//! printed format. A test compares what the code writes with its file, and
//! reads the file back; `BYOC_UPDATE_GOLDEN=1` rewrites the files instead,
//! for a deliberate format change whose diff is then reviewed.

#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

/// Set (to anything) to rewrite golden files instead of comparing.
pub const ENV: &str = "BYOC_UPDATE_GOLDEN";

/// A directory of golden files.
#[derive(Debug, Clone, Copy)]
pub struct Golden {
    dir: &'static str,
    /// The command that regenerates them, e.g. `cargo test -p byoc-agent --test golden`.
    regenerate: &'static str,
    /// What a mismatch means, e.g. "the agent's on-disk format changed".
    changed: &'static str,
}

impl Golden {
    pub const fn new(dir: &'static str, regenerate: &'static str, changed: &'static str) -> Self {
        Self {
            dir,
            regenerate,
            changed,
        }
    }

    /// Whether this run rewrites the golden files.
    pub fn updating() -> bool {
        std::env::var_os(ENV).is_some()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        Path::new(self.dir).join(name)
    }

    /// The golden file `name`.
    pub fn read(&self, name: &str) -> Vec<u8> {
        let path = self.path(name);
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; write it with `{ENV}=1 {}`", path.display(), self.regenerate))
    }

    /// The golden file `name` to read back; while the files are being
    /// regenerated, `fresh` (what the writing test writes to it), so that one
    /// run regenerates everything whatever order the tests run in.
    pub fn read_or(&self, name: &str, fresh: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
        if Self::updating() { fresh() } else { self.read(name) }
    }

    /// `actual` equals the golden file `name` (rewritten instead while updating).
    pub fn assert(&self, name: &str, actual: &[u8]) {
        let path = self.path(name);
        if Self::updating() {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, actual).expect("write the golden file");
            eprintln!("rewrote {}", path.display());
            return;
        }
        let expected = self.read(name);
        assert!(
            expected == actual,
            "{} no longer matches what is written now: {}.\n\
             If that is deliberate (and files written before still read), regenerate it with \
             `{ENV}=1 {}` and review the diff.\n\
             --- golden\n{}\n--- now\n{}",
            path.display(),
            self.changed,
            self.regenerate,
            String::from_utf8_lossy(&expected),
            String::from_utf8_lossy(actual),
        );
    }
}

/// A file's permission bits.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}
