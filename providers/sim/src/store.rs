//! The state directory: crash-safe files for resources, secrets and counters.
//!
//! Every write goes to a temporary file in the target's directory, is fsynced,
//! then renamed (or, for an exclusive create, hard-linked) into place, and the
//! directory is fsynced: a reader sees the old or the new file, never a part.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::SimError;
use crate::record::{Address, ResourceRecord, Stored};

const RESOURCES: &str = "resources";
const SECRETS: &str = "secrets";
const CALLS: &str = "calls.json";
const TMP_PREFIX: &str = ".tmp-";
/// Temporary files older than this are left-overs of a killed process.
const STALE_TMP: Duration = Duration::from_secs(60);

/// One state directory, shared by all [`SimCloud`](crate::SimCloud)s of a process
/// that use it.
#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    /// Serializes the cloud side's read-modify-write sequences in this process.
    lock: Mutex<()>,
}

impl Store {
    /// Opens (creating it, mode 0700, if missing) the state directory at `dir`.
    pub fn open(dir: &Path) -> Result<Self, SimError> {
        for d in [dir.to_path_buf(), dir.join(RESOURCES), dir.join(SECRETS)] {
            create_private_dir(&d)?;
            sweep_stale_tmp(&d);
        }
        sweep_stale_tmp(dir);
        Ok(Self {
            dir: dir.to_path_buf(),
            lock: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Holds off the other cloud-side sequences of this process.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn resource_path(&self, address: &Address) -> PathBuf {
        self.dir.join(RESOURCES).join(address.file_name())
    }

    /// The resource at `address`, with the path of its file.
    pub fn load(&self, address: &Address) -> Result<Option<(PathBuf, Stored)>, SimError> {
        let path = self.resource_path(address);
        Ok(read_json::<Stored>(&path)?.map(|s| (path, s)))
    }

    /// All resource records, with the paths of their files.
    pub fn list(&self) -> Result<Vec<(PathBuf, Stored)>, SimError> {
        list_stored(&self.dir)
    }

    /// Writes a new resource; false (and nothing written) if one is already at
    /// its address, even if another process just created it.
    pub fn create(&self, stored: &Stored) -> Result<bool, SimError> {
        let path = self.resource_path(&stored.address());
        write_json(&path, stored, WriteMode::CreateNew)
    }

    /// Replaces the resource file.
    pub fn save(&self, stored: &Stored) -> Result<(), SimError> {
        let path = self.resource_path(&stored.address());
        write_json(&path, stored, WriteMode::Replace).map(|_| ())
    }

    /// Removes a deleted resource's file and its secret, if any.
    pub fn remove(&self, stored: &Stored) -> Result<(), SimError> {
        remove_file(&self.resource_path(&stored.address()))?;
        self.remove_secret(&stored.id)
    }

    pub fn remove_secret(&self, id: &str) -> Result<(), SimError> {
        remove_file(&self.dir.join(SECRETS).join(id))
    }

    /// Stores a secret value for resource `id` (mode 0600).
    pub fn write_secret(&self, id: &str, value: &str) -> Result<(), SimError> {
        let path = self.dir.join(SECRETS).join(id);
        write_atomic(&path, value.as_bytes(), WriteMode::Replace).map(|_| ())
    }

    /// Counts one mutating call of `action` in `calls.json`.
    pub fn count_call(&self, action: &str) -> Result<(), SimError> {
        let path = self.dir.join(CALLS);
        let mut counts: BTreeMap<String, u64> = read_json(&path)?.unwrap_or_default();
        *counts.entry(action.to_string()).or_default() += 1;
        write_json(&path, &counts, WriteMode::Replace).map(|_| ())
    }
}

/// Every resource in the state directory at `state_dir`, as an independent
/// observer sees it now: with the status computed from its timestamps,
/// including resources being deleted, excluding those already gone. Reads only.
pub fn list_resources(state_dir: &Path) -> Result<Vec<ResourceRecord>, SimError> {
    list_resources_at(state_dir, SystemTime::now())
}

/// As [`list_resources`], as they are at `now` (the clock the cloud was
/// opened with).
pub fn list_resources_at(state_dir: &Path, now: SystemTime) -> Result<Vec<ResourceRecord>, SimError> {
    let mut records: Vec<ResourceRecord> = list_stored(state_dir)?
        .into_iter()
        .map(|(_, s)| s.to_record(now))
        .filter(|r| r.status != crate::ResourceStatus::Gone)
        .collect();
    records.sort_by(|a, b| (a.kind.as_str(), &a.cluster, &a.name).cmp(&(b.kind.as_str(), &b.cluster, &b.name)));
    Ok(records)
}

/// The mutating calls made so far on the state directory at `state_dir`:
/// action (e.g. `sim:CreateCluster`) to count. Empty if none was made.
pub fn call_counts(state_dir: &Path) -> Result<BTreeMap<String, u64>, SimError> {
    Ok(read_json(&state_dir.join(CALLS))?.unwrap_or_default())
}

fn list_stored(state_dir: &Path) -> Result<Vec<(PathBuf, Stored)>, SimError> {
    let dir = state_dir.join(RESOURCES);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SimError::io(&dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| SimError::io(&dir, e))?.path();
        let is_record = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
            && path.extension().is_some_and(|e| e == "json");
        if is_record {
            // A file removed since the directory was read is simply gone.
            if let Some(stored) = read_json(&path)? {
                out.push((path, stored));
            }
        }
    }
    Ok(out)
}

/// Reads and decodes a JSON file; None if it does not exist.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, SimError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SimError::io(path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| SimError::corrupt(path, e))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// Replace the file if it exists.
    Replace,
    /// Write only if no file is there; report whether it was written.
    CreateNew,
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T, mode: WriteMode) -> Result<bool, SimError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| SimError::corrupt(path, e))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, mode)
}

/// Writes `bytes` to `path` (mode 0600) so that a crash at any point leaves
/// either the old file or the new one. Returns false if `mode` is
/// [`WriteMode::CreateNew`] and the file already exists.
fn write_atomic(path: &Path, bytes: &[u8], mode: WriteMode) -> Result<bool, SimError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!("{TMP_PREFIX}{}-{}", std::process::id(), random_hex(8)?));
    match place(&tmp, path, bytes, mode) {
        Ok(written) => {
            sync_dir(dir)?;
            Ok(written)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(SimError::io(path, e))
        }
    }
}

/// Writes and fsyncs `tmp`, then moves it to `path` as `mode` says.
fn place(tmp: &Path, path: &Path, bytes: &[u8], mode: WriteMode) -> std::io::Result<bool> {
    let mut file = private_file_options().open(tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    match mode {
        WriteMode::Replace => fs::rename(tmp, path).map(|()| true),
        WriteMode::CreateNew => {
            let linked = match fs::hard_link(tmp, path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            };
            fs::remove_file(tmp)?;
            linked
        }
    }
}

fn remove_file(path: &Path) -> Result<(), SimError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SimError::io(path, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), SimError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SimError::io(dir, e))
}

/// Removes temporary files a killed process left behind (best effort).
fn sweep_stale_tmp(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let is_tmp = entry.file_name().to_str().is_some_and(|n| n.starts_with(TMP_PREFIX));
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TMP);
        if is_tmp && stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(unix)]
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), SimError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| SimError::io(dir, e))
}

#[cfg(not(unix))]
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), SimError> {
    fs::create_dir_all(dir).map_err(|e| SimError::io(dir, e))
}

fn private_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// `n` random bytes, hex-encoded.
pub(crate) fn random_hex(n: usize) -> Result<String, SimError> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SimError::Random)?;
    Ok(hex::encode(bytes))
}
