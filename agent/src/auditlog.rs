//! Where the agent keeps its audit log and audit key, and how it opens them.
//!
//! - `<data_dir>/audit/`: the log directory (docs/audit-log.md): `log.jsonl`,
//!   `checkpoint`, `receipts.jsonl`, `verifier.key`. Hand this directory to
//!   a compliance team; it holds no secret.
//! - `<data_dir>/identity/audit.key`: the Ed25519 key that signs checkpoints
//!   (PKCS#8, mode 0600), made at enrollment. It never leaves the host.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use byoc_audit::{AuditLog, Options};

use crate::config::AuditConfig;

pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit")
}

pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity").join("audit.key")
}

/// The log's origin and key name: `byoc-agent/audit/<agent id>`.
pub fn key_name(agent_id: &str) -> String {
    format!("byoc-agent/audit/{agent_id}")
}

/// Opens the agent's audit log, making the audit key if there is none yet.
pub fn open(data_dir: &Path, agent_id: &str, cfg: &AuditConfig) -> anyhow::Result<AuditLog> {
    let key = key_path(data_dir);
    let (signer, _created) = byoc_audit::load_or_create_key(&key, &key_name(agent_id))?;
    let opts = Options {
        checkpoint_every: cfg.checkpoint_every,
        checkpoint_interval: cfg.checkpoint_interval,
    };
    AuditLog::open(&dir(data_dir), signer, opts)
        .with_context(|| format!("opening the audit log in {}", dir(data_dir).display()))
}
