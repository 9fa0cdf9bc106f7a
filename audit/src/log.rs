//! The hash-chained audit log: one JSON object a line, each bound to the one
//! before it.
//!
//! A line is the entry's body, a JSON object with the fields, in this order,
//! `seq` (0, 1, 2, ...), `time` (RFC 3339, UTC, milliseconds), `kind`, `op`
//! (operation id or null), `detail` (an object), `prev` (hex SHA-256 of the
//! previous entry, 64 zeros for the first), followed by `"hash"`: the hex
//! SHA-256 of `prev` (32 raw bytes) followed by the exact bytes of the body as
//! written, that is the line up to `,"hash":` with a closing `}` appended.
//! Editing, deleting or reordering any entry breaks every hash after it.

use std::path::Path;
use std::time::SystemTime;

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wal::{self, Sealer, Wal, WalError};

pub const GENESIS: [u8; 32] = [0; 32];

/// One security-relevant event, before it is sealed into the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Dotted event kind, e.g. `operation.received`, `provider.call`.
    pub kind: &'static str,
    /// The operation this event belongs to, if any.
    pub op: Option<String>,
    /// Event details. Must never hold a secret value.
    pub detail: Value,
}

impl Event {
    pub fn new(kind: &'static str, op: Option<&str>, detail: Value) -> Self {
        Self {
            kind,
            op: op.map(str::to_string),
            detail,
        }
    }
}

/// Where an event landed in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub hash: [u8; 32],
}

#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: String,
    kind: &'a str,
    op: Option<&'a str>,
    detail: &'a Value,
    prev: String,
}

/// A parsed entry, as `audit show` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub op: Option<String>,
    pub detail: Value,
    pub prev: String,
    pub hash: String,
}

/// Computes an entry hash: SHA-256(prev ‖ body).
pub fn entry_hash(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev);
    ctx.update(body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

struct ChainSealer {
    next_seq: u64,
    prev: [u8; 32],
}

impl Sealer for ChainSealer {
    type Item = Event;
    type Receipt = Receipt;

    fn seal(&mut self, ev: Event) -> (Vec<u8>, Receipt) {
        let body = Body {
            seq: self.next_seq,
            time: now_rfc3339(),
            kind: ev.kind,
            op: ev.op.as_deref(),
            detail: &ev.detail,
            prev: hex::encode(self.prev),
        };
        // Serializing a struct of strings, numbers and a Value cannot fail.
        let mut line = serde_json::to_vec(&body).unwrap_or_default();
        let hash = entry_hash(&self.prev, &line);
        line.pop(); // the closing brace
        line.extend_from_slice(b",\"hash\":\"");
        line.extend_from_slice(hex::encode(hash).as_bytes());
        line.extend_from_slice(b"\"}");
        let receipt = Receipt {
            seq: self.next_seq,
            hash,
        };
        self.next_seq += 1;
        self.prev = hash;
        (line, receipt)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log: {0}")]
    Wal(#[from] WalError),
    #[error(
        "the last entry of audit log {path} is damaged: {reason}; run `byoc-agent audit verify` and keep a copy before doing anything else"
    )]
    Damaged { path: String, reason: String },
}

/// The audit log writer. Every `record` returns only once the entry is on disk.
#[derive(Clone)]
pub struct AuditLog {
    wal: Wal<ChainSealer>,
}

impl AuditLog {
    /// Opens (or creates) the log and continues its chain. Refuses to continue a
    /// chain whose last entry does not parse: appending to it would hide damage.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        // Only the last entry is needed to continue the chain: read the tail,
        // not the whole log (it grows for the life of the agent).
        let (next_seq, prev) = match wal::last_line(path)? {
            None => (0, GENESIS),
            Some(last) => {
                let damaged = |reason: String| AuditError::Damaged {
                    path: path.display().to_string(),
                    reason,
                };
                let e: Entry = serde_json::from_slice(&last).map_err(|e| damaged(e.to_string()))?;
                let mut h = [0u8; 32];
                hex::decode_to_slice(&e.hash, &mut h).map_err(|e| damaged(format!("hash: {e}")))?;
                (e.seq + 1, h)
            }
        };
        Ok(Self {
            wal: Wal::open(path, ChainSealer { next_seq, prev })?,
        })
    }

    /// Queues `event` without waiting for it to reach the disk. Use only when
    /// the caller's next step is a `record` it waits for before acting: the log
    /// is ordered, so that wait covers this event too (see `Wal::submit`).
    pub fn record_before_next(&self, event: Event) -> Result<(), AuditError> {
        // The future is dropped: durability comes from the next awaited record.
        drop(self.wal.submit(event)?);
        Ok(())
    }

    /// Records `event` durably.
    pub async fn record(&self, event: Event) -> Result<Receipt, AuditError> {
        Ok(self.wal.append(event).await?)
    }

    /// True once a write failed: the agent must refuse to act from then on.
    pub fn is_failed(&self) -> bool {
        self.wal.is_poisoned()
    }

    pub fn path(&self) -> &Path {
        self.wal.path()
    }
}
