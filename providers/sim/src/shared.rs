//! What every `SimCloud` of this process on one state directory shares: its
//! store and the provider side's decision locks, found by canonical path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use crate::store::Store;

/// What all `SimCloud`s of this process on one state directory share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Store,
    /// Held by the provider side from a describe to the create, update or
    /// delete it decides on, so two operations on the same resource in this
    /// process cannot both decide to create it. One lock a cluster (shared by
    /// its node pools and sandboxes, whose create and the cluster's delete
    /// check each other) and one a database: unrelated resources do not wait
    /// for each other.
    pub(crate) decisions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The `Shared` of every state directory open in this process, by canonical path.
static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> = OnceLock::new();

pub(crate) fn open_dirs() -> std::sync::MutexGuard<'static, HashMap<PathBuf, Weak<Shared>>> {
    OPEN.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` holding the store lock of the `SimCloud`s open on `dir` in this
/// process, if any, so it does not interleave with a call they are processing.
pub(crate) fn with_open_store_lock<T>(dir: &Path, f: impl FnOnce() -> T) -> T {
    let shared = dir
        .canonicalize()
        .ok()
        .and_then(|d| open_dirs().get(&d).and_then(Weak::upgrade));
    match shared {
        Some(shared) => {
            let _guard = shared.store.lock();
            f()
        }
        None => f(),
    }
}
