//! The agent's tamper-evident audit log.
//!
//! - [`log`]: the writer ([`AuditLog`]): JSON entries hashed into an RFC 6962
//!   Merkle tree, signed checkpoints, a receipt per operation outcome;
//! - [`merkle`]: RFC 6962 hashing and proofs;
//! - [`note`]: the C2SP formats (signed note, checkpoint, tlog-proof);
//! - [`verify`]: the offline verifier (also the `byoc-audit-verify` binary).
//!
//! Durability comes from `byoc-wal` (one group-committed `fdatasync` per
//! batch), the same file the agent's journal and the control plane's store use.
//!
//! The log is written *before* the action it records: a caller acts only after
//! [`AuditLog::record`] returned `Ok`. This crate has no network code.
//! `docs/audit-log.md` specifies the format.

pub mod export;
pub mod log;
pub mod merkle;
pub mod note;
pub mod verify;

pub use log::{AuditError, AuditLog, Entry, Event, Options, Receipt, load_or_create_key};

#[cfg(test)]
mod tests;
