//! The agent's journal: a durable record of every operation it accepted and
//! every result it owes the control plane.
//!
//! `journal.log` holds JSON lines, each fsync'd before the step it records is
//! taken (group-committed, see `byoc_wal`):
//!
//! - `op`: an operation was accepted (the signed protobuf, base64): from now on
//!   it is resumed after any crash until it has a result;
//! - `held_op`: the same, for an operation that must wait for a local approval
//!   first (`approval` names the policy rule): resumed, it is held again, not
//!   run. A record kind of its own, so that an older agent that knows nothing
//!   of approvals refuses the journal instead of running it unapproved;
//! - `result`: its result (protobuf, base64) with the agent's result sequence;
//!   it stays in the outbox until acknowledged;
//! - `ack`: the control plane acknowledged every result up to `result_seq`;
//! - `seen`: the highest operation sequence seen (also covers refusals, which
//!   have no `op` record).
//!
//! At start the journal is replayed and compacted to what is still live, and
//! while the agent runs its writer compacts it again after every 4 MiB appended
//! (from a model of the live records it keeps as it writes them), so the file
//! stays the size of what is in flight.

use std::collections::BTreeMap;
use std::path::Path;

use byoc_proto::agent::v1::{Operation, OperationResult};
use byoc_proto::record::{Damage, RecordError, from_base64, to_base64};
use byoc_wal::{self as wal, Sealer, Wal, WalError};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal")]
    Wal(#[from] WalError),
    #[error("journal {path} line {line} is damaged; the agent will not guess what it had promised")]
    Corrupt {
        path: String,
        /// 0: the damage is in what the lines say together, not in one line.
        line: usize,
        #[source]
        source: Damage,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Record {
    Op { b64: String },
    HeldOp { b64: String, approval: String },
    Result { b64: String },
    Ack { result_seq: u64 },
    Seen { seq: u64 },
}

/// An accepted operation without a result.
#[derive(Debug, Clone)]
pub struct Pending {
    pub op: Operation,
    /// The policy rule that holds it for a local approval, if any.
    pub approval: Option<String>,
}

/// What the journal says after replay.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Accepted operations without a result: to resume, in sequence order.
    pub pending: Vec<Pending>,
    /// Results not yet acknowledged, by result sequence.
    pub outbox: BTreeMap<u64, OperationResult>,
    pub acked_result_seq: u64,
    pub highest_result_seq: u64,
    pub highest_op_seq: u64,
}

/// Once this many bytes have been appended, the journal is rewritten from its
/// model: a long-running agent's journal stays the size of what is live.
const COMPACT_AFTER_BYTES: u64 = 4 * 1024 * 1024;

fn line(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_default()
}

/// What is live in the journal: the state replay rebuilds, and the state the
/// writer keeps current as it seals records, to rewrite the file from.
#[derive(Debug, Default)]
struct Model {
    highest_op_seq: u64,
    highest_result_seq: u64,
    acked: u64,
    /// Accepted, no result yet: operation id -> (sequence, record, approval rule).
    pending: BTreeMap<String, (u64, String, Option<String>)>,
    /// Results not acknowledged: result sequence -> record.
    outbox: BTreeMap<u64, String>,
}

impl Model {
    fn accept(&mut self, b64: &str, approval: Option<String>) -> Result<(), RecordError> {
        let op: Operation = from_base64(b64)?;
        self.highest_op_seq = self.highest_op_seq.max(op.sequence);
        self.pending.insert(op.id, (op.sequence, b64.to_string(), approval));
        Ok(())
    }

    fn apply(&mut self, rec: &Record) -> Result<(), RecordError> {
        match rec {
            Record::Op { b64 } => self.accept(b64, None)?,
            Record::HeldOp { b64, approval } => self.accept(b64, Some(approval.clone()))?,
            Record::Result { b64 } => {
                let r: OperationResult = from_base64(b64)?;
                self.highest_result_seq = self.highest_result_seq.max(r.result_seq);
                // A result does not move the sequence mark: an accepted
                // operation's `op` record did, a trusted refusal's `seen` record
                // did, and a refusal of a forged operation must not (its
                // sequence is whatever the forger wrote).
                self.pending.remove(&r.operation_id);
                if r.result_seq > self.acked {
                    self.outbox.insert(r.result_seq, b64.clone());
                }
            }
            Record::Ack { result_seq } => {
                self.acked = self.acked.max(*result_seq);
                self.highest_result_seq = self.highest_result_seq.max(self.acked);
                let acked = self.acked;
                self.outbox.retain(|seq, _| *seq > acked);
            }
            Record::Seen { seq } => self.highest_op_seq = self.highest_op_seq.max(*seq),
        }
        Ok(())
    }

    /// Records that rebuild this model.
    fn snapshot(&self) -> Vec<Vec<u8>> {
        let mut out = vec![
            line(&Record::Seen {
                seq: self.highest_op_seq,
            }),
            line(&Record::Ack { result_seq: self.acked }),
        ];
        let mut pending: Vec<_> = self.pending.values().collect();
        pending.sort_by_key(|(seq, _, _)| *seq);
        out.extend(pending.into_iter().map(|(_, b64, approval)| {
            line(&match approval {
                None => Record::Op { b64: b64.clone() },
                Some(a) => Record::HeldOp {
                    b64: b64.clone(),
                    approval: a.clone(),
                },
            })
        }));
        out.extend(
            self.outbox
                .values()
                .map(|b64| line(&Record::Result { b64: b64.clone() })),
        );
        out
    }
}

/// Seals journal records into lines, keeping the model current.
struct JournalSealer(Model);

impl Sealer for JournalSealer {
    type Item = Record;
    type Receipt = ();

    fn seal(&mut self, rec: Record, out: &mut Vec<u8>) {
        // Records are built from values this process encoded: they decode.
        let _ = self.0.apply(&rec);
        out.extend_from_slice(&line(&rec));
        out.push(b'\n');
    }

    fn snapshot(&self) -> Option<Vec<Vec<u8>>> {
        Some(self.0.snapshot())
    }
}

/// The journal's file name inside the data directory.
pub const FILE: &str = "journal.log";

/// The journal of the agent whose data directory is `data_dir`.
pub fn path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join(FILE)
}

#[derive(Clone)]
pub struct Journal {
    wal: Wal<JournalSealer>,
}

impl Journal {
    /// Replays and compacts `path`, then opens it for appending.
    pub fn open(path: &Path) -> Result<(Self, Replayed), JournalError> {
        let lines = wal::read_lines(path)?;
        let mut model = Model::default();
        for (i, l) in lines.iter().enumerate() {
            let corrupt = |source: Damage| JournalError::Corrupt {
                path: path.display().to_string(),
                line: i + 1,
                source,
            };
            let rec: Record = serde_json::from_slice(l).map_err(|e| corrupt(e.into()))?;
            model.apply(&rec).map_err(|e| corrupt(e.into()))?;
        }
        wal::rewrite(path, &model.snapshot())?;
        let corrupt = |e: RecordError| JournalError::Corrupt {
            path: path.display().to_string(),
            line: 0,
            source: e.into(),
        };
        let mut pending: Vec<Pending> = model
            .pending
            .values()
            .map(|(_, b64, approval)| {
                from_base64(b64).map(|op| Pending {
                    op,
                    approval: approval.clone(),
                })
            })
            .collect::<Result<_, _>>()
            .map_err(corrupt)?;
        pending.sort_by_key(|p| p.op.sequence);
        let outbox = model
            .outbox
            .iter()
            .map(|(seq, b64)| from_base64(b64).map(|r| (*seq, r)))
            .collect::<Result<_, _>>()
            .map_err(corrupt)?;
        let replayed = Replayed {
            pending,
            outbox,
            acked_result_seq: model.acked,
            highest_result_seq: model.highest_result_seq,
            highest_op_seq: model.highest_op_seq,
        };
        let wal = Wal::open_compacting(path, JournalSealer(model), Some(COMPACT_AFTER_BYTES))?;
        Ok((Self { wal }, replayed))
    }

    /// `approval`: the policy rule that holds the operation for a local approval.
    pub async fn accepted(&self, op: &Operation, approval: Option<&str>) -> Result<(), JournalError> {
        let b64 = to_base64(op);
        let rec = match approval {
            None => Record::Op { b64 },
            Some(a) => Record::HeldOp {
                b64,
                approval: a.to_string(),
            },
        };
        Ok(self.wal.append(rec).await?)
    }

    pub async fn result(&self, r: &OperationResult) -> Result<(), JournalError> {
        Ok(self.wal.append(Record::Result { b64: to_base64(r) }).await?)
    }

    pub async fn acked(&self, result_seq: u64) -> Result<(), JournalError> {
        Ok(self.wal.append(Record::Ack { result_seq }).await?)
    }

    pub async fn seen(&self, seq: u64) -> Result<(), JournalError> {
        Ok(self.wal.append(Record::Seen { seq }).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(seq: u64) -> Operation {
        Operation {
            id: format!("op-{seq}"),
            sequence: seq,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn replay_resumes_pending_and_keeps_unacked_results() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.log");
        {
            let (j, st) = Journal::open(&path).expect("open");
            assert!(st.pending.is_empty());
            for s in 1..=3 {
                let approval = (s == 3).then_some("kinds.database.delete");
                j.accepted(&op(s), approval).await.expect("accept");
            }
            for (rs, s) in [(1u64, 1u64), (2, 2)] {
                let r = OperationResult {
                    result_seq: rs,
                    operation_id: format!("op-{s}"),
                    sequence: s,
                    ..Default::default()
                };
                j.result(&r).await.expect("result");
            }
            j.acked(1).await.expect("ack");
        }
        for _ in 0..2 {
            // Twice: compaction must keep the same meaning.
            let (_j, st) = Journal::open(&path).expect("reopen");
            assert_eq!(st.pending.iter().map(|p| p.op.sequence).collect::<Vec<_>>(), vec![3]);
            assert_eq!(st.pending[0].approval.as_deref(), Some("kinds.database.delete"));
            // A record kind an agent without approvals refuses rather than runs.
            let text = std::fs::read_to_string(&path).expect("read");
            assert!(text.contains(r#"{"t":"held_op""#), "{text}");
            assert_eq!(st.outbox.keys().copied().collect::<Vec<_>>(), vec![2]);
            assert_eq!(st.acked_result_seq, 1);
            assert_eq!(st.highest_result_seq, 2);
            assert_eq!(st.highest_op_seq, 3);
        }
    }

    #[tokio::test]
    async fn the_refusal_of_a_forged_operation_does_not_move_the_mark_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.log");
        {
            let (j, _) = Journal::open(&path).expect("open");
            j.seen(4).await.expect("seen");
            // The REFUSED result of a forged operation carries the forger's sequence.
            let r = OperationResult {
                result_seq: 1,
                operation_id: "op-forged".into(),
                sequence: u64::MAX,
                ..Default::default()
            };
            j.result(&r).await.expect("result");
        }
        let (_j, st) = Journal::open(&path).expect("reopen");
        assert_eq!(st.highest_op_seq, 4);
    }

    #[tokio::test]
    async fn a_long_run_is_compacted_to_what_is_live_without_losing_anything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.log");
        let (j, _) = Journal::open(&path).expect("open");
        let spec = "x".repeat(1000);
        // Far more than the compaction threshold of records, most of them done with.
        for s in 1..=6000u64 {
            let o = Operation {
                id: format!("op-{s}"),
                sequence: s,
                spec_json: spec.clone(),
                ..Default::default()
            };
            j.accepted(&o, None).await.expect("accept");
            if s % 1000 != 0 {
                let r = OperationResult {
                    result_seq: s,
                    operation_id: o.id.clone(),
                    sequence: s,
                    ..Default::default()
                };
                j.result(&r).await.expect("result");
                if s < 5990 {
                    j.acked(s).await.expect("ack");
                }
            }
        }
        let size = std::fs::metadata(&path).expect("meta").len();
        assert!(
            size < COMPACT_AFTER_BYTES + 64 * 1024,
            "compacted while running: {size} bytes"
        );
        drop(j);
        let (_j, st) = Journal::open(&path).expect("reopen");
        let pending: Vec<u64> = st.pending.iter().map(|p| p.op.sequence).collect();
        assert_eq!(pending, vec![1000, 2000, 3000, 4000, 5000, 6000]);
        assert_eq!(
            st.outbox.keys().copied().collect::<Vec<_>>(),
            (5990..=5999).collect::<Vec<_>>()
        );
        assert_eq!(st.acked_result_seq, 5989);
        assert_eq!(st.highest_op_seq, 6000);
        assert_eq!(st.highest_result_seq, 5999);
    }

    #[tokio::test]
    async fn a_damaged_line_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.log");
        std::fs::write(&path, b"{\"t\":\"seen\",\"seq\":1}\nnot json\n").expect("write");
        let err = Journal::open(&path).err().expect("damaged");
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
