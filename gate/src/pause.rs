//! The local kill switch: `byoc-agent pause` and `byoc-agent resume`.
//!
//! A file in the data directory (`paused.json`), so the switch works whether or
//! not the agent is running, survives restarts, and needs no listener. While
//! it exists every operation is refused (rule `local_kill_switch`). The
//! running agent audits each change of the switch (`agent.paused`,
//! `agent.resumed`) with who set it and why: the CLI cannot write the audit
//! log itself, which has one writer, the agent.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub since_unix_ms: i64,
    /// The local user who paused the agent.
    pub by: String,
    pub reason: String,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("paused.json")
}

/// The switch's state. A pause file that cannot be read still pauses: the
/// switch fails closed.
pub fn read(data_dir: &Path) -> Option<Pause> {
    let p = path(data_dir);
    match std::fs::read(&p) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| Pause {
            since_unix_ms: 0,
            by: "unknown".into(),
            reason: format!(
                "{} is unreadable ({e}); remove it with `byoc-agent resume`",
                p.display()
            ),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Pause {
            since_unix_ms: 0,
            by: "unknown".into(),
            reason: format!("{} cannot be read ({e})", p.display()),
        }),
    }
}

/// Pauses the agent (replacing an earlier pause's reason).
pub fn pause(data_dir: &Path, reason: &str, now_ms: i64) -> std::io::Result<Pause> {
    let p = Pause {
        since_unix_ms: now_ms,
        by: crate::localuser::describe(),
        reason: reason.to_string(),
    };
    let bytes = serde_json::to_vec_pretty(&p).map_err(std::io::Error::other)?;
    byoc_wal::write_atomic(&path(data_dir), &bytes, 0o600)?;
    Ok(p)
}

/// Lifts the pause; false if the agent was not paused.
pub fn resume(data_dir: &Path) -> std::io::Result<bool> {
    let p = path(data_dir);
    match std::fs::remove_file(&p) {
        Ok(()) => {
            byoc_wal::sync_dir(&p)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Watches the switch for the running agent and audits each change of it
/// (`agent.paused` with who and why, or `agent.resumed`). Looked at for each
/// operation and twice a second, so even a short pause that refused an
/// operation is in the log before that refusal.
pub struct Watcher {
    data_dir: PathBuf,
    audit: byoc_audit::AuditLog,
    /// The switch as last audited. Starts as "not paused", so a pause set
    /// while the agent was stopped is audited at start.
    seen: tokio::sync::Mutex<Option<Pause>>,
}

impl Watcher {
    pub fn new(data_dir: &Path, audit: byoc_audit::AuditLog) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            audit,
            seen: tokio::sync::Mutex::new(None),
        }
    }

    /// The switch now, audited first if it changed since last seen.
    pub async fn observe(&self) -> Option<Pause> {
        let now = read(&self.data_dir);
        let mut seen = self.seen.lock().await;
        if *seen != now {
            let ev = match &now {
                Some(p) => byoc_audit::Event::new(
                    "agent.paused",
                    None,
                    serde_json::json!({ "by": p.by, "reason": p.reason, "since_unix_ms": p.since_unix_ms }),
                )
                .with_actor(serde_json::json!({ "local_user": p.by })),
                None => byoc_audit::Event::new("agent.resumed", None, serde_json::json!({})),
            };
            // If this cannot be recorded, the next look tries again; the switch
            // itself applies either way.
            if self.audit.record(ev).await.is_ok() {
                tracing::warn!(paused = now.is_some(), "local kill switch changed");
                seen.clone_from(&now);
            }
        }
        now
    }
}
