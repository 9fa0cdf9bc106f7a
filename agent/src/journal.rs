//! The agent's journal: a durable record of every operation it accepted and
//! every result it owes the control plane.
//!
//! `journal.log` holds JSON lines, each fsync'd before the step it records is
//! taken (group-committed, see `byoc_audit::wal`):
//!
//! - `op`: an operation was accepted (the signed protobuf, base64): from now on
//!   it is resumed after any crash until it has a result;
//! - `result`: its result (protobuf, base64) with the agent's result sequence;
//!   it stays in the outbox until acknowledged;
//! - `ack`: the control plane acknowledged every result up to `result_seq`;
//! - `seen`: the highest operation sequence seen (also covers refusals, which
//!   have no `op` record).
//!
//! At start the journal is replayed and compacted to what is still live.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use byoc_audit::wal::{self, Plain, Wal, WalError};
use byoc_proto::agent::v1::{Operation, OperationResult};
use prost::Message as _;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal: {0}")]
    Wal(#[from] WalError),
    #[error("journal {path} line {line} is damaged: {message}; the agent will not guess what it had promised")]
    Corrupt { path: String, line: usize, message: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Record {
    Op { b64: String },
    Result { b64: String },
    Ack { result_seq: u64 },
    Seen { seq: u64 },
}

/// What the journal says after replay.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Accepted operations without a result: to resume, in sequence order.
    pub pending: Vec<Operation>,
    /// Results not yet acknowledged, by result sequence.
    pub outbox: BTreeMap<u64, OperationResult>,
    pub acked_result_seq: u64,
    pub highest_result_seq: u64,
    pub highest_op_seq: u64,
}

#[derive(Clone)]
pub struct Journal {
    wal: Wal<Plain>,
}

fn line(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_default()
}

impl Journal {
    /// Replays and compacts `path`, then opens it for appending.
    pub fn open(path: &Path) -> Result<(Self, Replayed), JournalError> {
        let lines = wal::read_lines(path)?;
        let mut ops: BTreeMap<u64, Operation> = BTreeMap::new();
        let mut done: std::collections::HashSet<String> = Default::default();
        let mut st = Replayed::default();
        for (i, l) in lines.iter().enumerate() {
            let corrupt = |message: String| JournalError::Corrupt {
                path: path.display().to_string(),
                line: i + 1,
                message,
            };
            let rec: Record = serde_json::from_slice(l).map_err(|e| corrupt(e.to_string()))?;
            match rec {
                Record::Op { b64 } => {
                    let op = Operation::decode(B64.decode(b64).map_err(|e| corrupt(e.to_string()))?.as_slice())
                        .map_err(|e| corrupt(e.to_string()))?;
                    st.highest_op_seq = st.highest_op_seq.max(op.sequence);
                    ops.insert(op.sequence, op);
                }
                Record::Result { b64 } => {
                    let r = OperationResult::decode(B64.decode(b64).map_err(|e| corrupt(e.to_string()))?.as_slice())
                        .map_err(|e| corrupt(e.to_string()))?;
                    st.highest_result_seq = st.highest_result_seq.max(r.result_seq);
                    st.highest_op_seq = st.highest_op_seq.max(r.sequence);
                    done.insert(r.operation_id.clone());
                    st.outbox.insert(r.result_seq, r);
                }
                Record::Ack { result_seq } => st.acked_result_seq = st.acked_result_seq.max(result_seq),
                Record::Seen { seq } => st.highest_op_seq = st.highest_op_seq.max(seq),
            }
        }
        let acked = st.acked_result_seq;
        st.outbox.retain(|seq, _| *seq > acked);
        st.highest_result_seq = st.highest_result_seq.max(acked);
        st.pending = ops.into_values().filter(|o| !done.contains(&o.id)).collect();

        let mut compact = vec![
            line(&Record::Seen { seq: st.highest_op_seq }),
            line(&Record::Ack { result_seq: acked }),
        ];
        for op in &st.pending {
            compact.push(line(&Record::Op {
                b64: B64.encode(op.encode_to_vec()),
            }));
        }
        for r in st.outbox.values() {
            compact.push(line(&Record::Result {
                b64: B64.encode(r.encode_to_vec()),
            }));
        }
        wal::rewrite(path, &compact)?;
        Ok((
            Self {
                wal: Wal::open(path, Plain)?,
            },
            st,
        ))
    }

    pub async fn accepted(&self, op: &Operation) -> Result<(), JournalError> {
        Ok(self
            .wal
            .append(line(&Record::Op {
                b64: B64.encode(op.encode_to_vec()),
            }))
            .await?)
    }

    pub async fn result(&self, r: &OperationResult) -> Result<(), JournalError> {
        Ok(self
            .wal
            .append(line(&Record::Result {
                b64: B64.encode(r.encode_to_vec()),
            }))
            .await?)
    }

    pub async fn acked(&self, result_seq: u64) -> Result<(), JournalError> {
        Ok(self.wal.append(line(&Record::Ack { result_seq })).await?)
    }

    pub async fn seen(&self, seq: u64) -> Result<(), JournalError> {
        Ok(self.wal.append(line(&Record::Seen { seq })).await?)
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
                j.accepted(&op(s)).await.expect("accept");
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
            assert_eq!(st.pending.iter().map(|o| o.sequence).collect::<Vec<_>>(), vec![3]);
            assert_eq!(st.outbox.keys().copied().collect::<Vec<_>>(), vec![2]);
            assert_eq!(st.acked_result_seq, 1);
            assert_eq!(st.highest_result_seq, 2);
            assert_eq!(st.highest_op_seq, 3);
        }
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
