//! `status.json` in the data directory: what `byoc-agent status` shows. The
//! agent has no listener of any kind, so it publishes its state as a file,
//! rewritten (atomically) at most a few times a second.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub agent_id: String,
    pub version: String,
    pub control_plane: String,
    /// `connecting`, `connected`, `disconnected` or `stopped`.
    pub connection: String,
    pub since_unix_ms: i64,
    pub last_error: Option<String>,
    pub certificate_not_after_unix_ms: i64,
    pub operations_in_flight: Vec<String>,
    /// Of those, the ones waiting for `byoc-agent approve`.
    #[serde(default)]
    pub awaiting_approval: Vec<String>,
    pub results_unacknowledged: usize,
    pub paused: Option<crate::pause::Pause>,
    pub updated_unix_ms: i64,
}

#[derive(Clone)]
pub struct StatusHandle {
    inner: Arc<Mutex<Status>>,
    dirty: Arc<Notify>,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("status.json")
}

impl StatusHandle {
    /// Starts the writer task for `data_dir/status.json`.
    pub fn start(data_dir: &Path, initial: Status) -> Self {
        let handle = Self {
            inner: Arc::new(Mutex::new(initial)),
            dirty: Arc::new(Notify::new()),
        };
        let h = handle.clone();
        let file = path(data_dir);
        tokio::spawn(async move {
            loop {
                h.write(&file);
                h.dirty.notified().await;
                // Coalesce bursts (a thousand operations a second is a thousand updates).
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        handle
    }

    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        {
            let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut s);
            s.updated_unix_ms = crate::now_ms();
        }
        self.dirty.notify_one();
    }

    /// Writes now (used at shutdown).
    pub fn write(&self, file: &Path) {
        let bytes = {
            let s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            serde_json::to_vec_pretty(&*s).unwrap_or_default()
        };
        let tmp = file.with_extension("tmp");
        if std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, file))
            .is_err()
        {
            tracing::warn!(path = %file.display(), "cannot write the status file");
        }
    }
}
