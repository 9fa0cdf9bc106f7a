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
    pub paused: Option<byoc_gate::pause::Pause>,
    pub updated_unix_ms: i64,
}

/// What `byoc-agent status --json` prints: whether the agent runs, and its
/// last published state, with the kill switch as it is now (not as the
/// agent last saw it). Frozen by `agent/tests/golden/status.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// A process with the published pid exists and the agent has not stopped.
    pub running: bool,
    pub enrolled: bool,
    /// The agent's last published state (None: it never ran with this data
    /// directory). `connection` is `stopped` when not running.
    pub agent: Option<Status>,
}

/// `status.json` exists but cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("reading {}", path.display())]
pub struct ReportError {
    pub path: PathBuf,
    #[source]
    pub source: serde_json::Error,
}

impl Report {
    pub fn read(data_dir: &Path) -> Result<Self, ReportError> {
        let enrolled = crate::identity::Identity::is_enrolled(data_dir);
        let path = path(data_dir);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(Self {
                running: false,
                enrolled,
                agent: None,
            });
        };
        let mut s: Status = serde_json::from_str(&text).map_err(|source| ReportError { path, source })?;
        let running = Path::new(&format!("/proc/{}", s.pid)).exists() && s.connection != "stopped";
        if !running {
            s.connection = "stopped".into();
        }
        s.paused = byoc_gate::pause::read(data_dir);
        Ok(Self {
            running,
            enrolled,
            agent: Some(s),
        })
    }
}

#[derive(Clone)]
pub struct StatusHandle {
    inner: Arc<Mutex<Status>>,
    dirty: Arc<Notify>,
    clock: Arc<dyn byoc_gate::Clock>,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("status.json")
}

impl StatusHandle {
    /// Starts the writer task for `data_dir/status.json`.
    pub fn start(data_dir: &Path, initial: Status, clock: Arc<dyn byoc_gate::Clock>) -> Self {
        let handle = Self {
            inner: Arc::new(Mutex::new(initial)),
            dirty: Arc::new(Notify::new()),
            clock,
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
            s.updated_unix_ms = self.clock.now_ms();
        }
        self.dirty.notify_one();
    }

    /// Writes now (used at shutdown).
    pub fn write(&self, file: &Path) {
        let bytes = {
            let s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            serde_json::to_vec_pretty(&*s).unwrap_or_default()
        };
        // With its mode set, not the process umask's; never half a file for
        // a reader. Not synced: it only reports, and is rewritten often.
        if byoc_wal::write_replacing(file, &bytes, 0o644).is_err() {
            tracing::warn!(path = %file.display(), "cannot write the status file");
        }
    }
}
