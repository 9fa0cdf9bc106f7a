//! The agent's tamper-evident audit log.
//!
//! - [`wal`]: a durable, append-only, group-committed file of lines (also used
//!   by the agent's journal and the reference control plane's store);
//! - [`log`]: the hash-chained audit log writer ([`AuditLog`]);
//! - [`verify`]: the offline verifier.
//!
//! The log is written *before* the action it records: a caller acts only after
//! [`AuditLog::record`] returned `Ok`. This crate has no network code.
//!
//! This is the first, hash-chain format; the compliance-grade format (RFC 6962
//! Merkle tree, signed checkpoints, receipts) replaces the chain in a later
//! change without changing the writer's interface.

pub mod log;
pub mod verify;
pub mod wal;

pub use log::{AuditError, AuditLog, Entry, Event, Receipt};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn write_log(path: &std::path::Path, n: usize) {
        let log = AuditLog::open(path).expect("open");
        for i in 0..n {
            log.record(Event::new(
                "operation.received",
                Some(&format!("op-{i}")),
                json!({"i": i}),
            ))
            .await
            .expect("record");
        }
    }

    #[tokio::test]
    async fn chain_verifies_and_continues_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        write_log(&path, 5).await;
        write_log(&path, 3).await;
        let s = verify::verify_file(&path).expect("verifies");
        assert_eq!(s.entries, 8);
    }

    #[tokio::test]
    async fn a_record_queued_before_the_next_is_durable_once_the_next_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).expect("open");
        log.record_before_next(Event::new("operation.started", Some("op-1"), json!({})))
            .expect("queue");
        let r = log
            .record(Event::new("provider.call", Some("op-1"), json!({})))
            .await
            .expect("record");
        assert_eq!(r.seq, 1, "the queued record took the sequence before it");
        let text = std::fs::read_to_string(&path).expect("read");
        let kinds: Vec<&str> = text
            .lines()
            .map(|l| {
                if l.contains("operation.started") {
                    "started"
                } else {
                    "call"
                }
            })
            .collect();
        assert_eq!(kinds, vec!["started", "call"]);
        assert_eq!(verify::verify_file(&path).expect("verifies").entries, 2);
    }

    #[tokio::test]
    async fn tampering_names_the_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        write_log(&path, 5).await;
        let text = std::fs::read_to_string(&path).expect("read");
        // Edit one byte of entry 2.
        let edited = text.replacen("\"op-2\"", "\"op-X\"", 1);
        std::fs::write(&path, &edited).expect("write");
        let f = verify::verify_file(&path).expect_err("edit detected");
        assert_eq!((f.line, f.expected_seq), (3, 2));
        assert!(f.reason.contains("edited"), "{f}");
        // Delete entry 1.
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(1);
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        let f = verify::verify_file(&path).expect_err("deletion detected");
        assert_eq!(f.expected_seq, 1);
        // Swap entries 3 and 4.
        let mut lines: Vec<&str> = text.lines().collect();
        lines.swap(3, 4);
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        assert_eq!(
            verify::verify_file(&path).expect_err("reorder detected").expected_seq,
            3
        );
    }
}
