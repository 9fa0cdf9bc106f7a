//! The control plane's durable state: tokens, agents, certificates, operations
//! and results. Every change is a JSON line in a group-committed log
//! (`state.log`), applied to the in-memory view only once it is on disk, so a
//! restart (even `kill -9`) loses nothing that was acknowledged. The log is
//! compacted into a snapshot of the same records at each start.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use byoc_proto::agent::v1::{Operation, OperationResult, Target};
use byoc_proto::record::{Damage, from_base64, to_base64};
use byoc_wal::{self as wal, Plain, Wal, WalError};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("control plane state")]
    Wal(#[from] WalError),
    #[error("{path} line {line} is not a valid record")]
    Corrupt {
        path: String,
        line: usize,
        #[source]
        source: Damage,
    },
}

/// One durable change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    Token {
        hash: String,
        expires_unix_ms: i64,
        /// Hex SHA-256 of the CA the token pins (absent in records from before
        /// CA rotation existed).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        ca: String,
    },
    TokenUsed {
        hash: String,
    },
    Agent {
        id: String,
        cloud: String,
        account: String,
        region: String,
        hostname: String,
    },
    Cert {
        agent: String,
        fingerprint: String,
        not_after_unix_ms: i64,
        /// Hex SHA-256 of the issuing CA (absent in records from before CA
        /// rotation existed).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        ca: String,
    },
    Op {
        b64: String,
    },
    Result {
        agent: String,
        b64: String,
    },
    /// Every certificate of the agent is revoked: it can no longer connect,
    /// renew, or be sent operations.
    Revoked {
        agent: String,
    },
}

#[derive(Debug, Clone)]
pub struct TokenState {
    pub expires_unix_ms: i64,
    pub used: bool,
    /// Hex SHA-256 of the CA the token pins ("" for old records).
    pub ca: String,
}

/// A certificate issued to an agent.
#[derive(Debug, Clone)]
pub struct CertRec {
    pub agent: String,
    pub not_after_unix_ms: i64,
    /// Hex SHA-256 of the CA that issued it ("" for old records).
    pub ca: String,
}

#[derive(Debug, Clone)]
pub struct AgentRec {
    pub id: String,
    pub target: Target,
    pub hostname: String,
    pub cert_not_after_unix_ms: i64,
    /// The CA that issued the agent's latest certificate ("" if unknown).
    pub cert_ca: String,
    /// Highest operation sequence assigned to this agent.
    pub last_seq: u64,
    /// Highest result sequence recorded from this agent.
    pub acked_result_seq: u64,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub struct OpRec {
    pub op: Operation,
    pub results: Vec<OperationResult>,
    pub duplicates_ignored: u64,
    /// A result is being written (not durable yet): a concurrent one is a duplicate.
    pub claimed: bool,
}

#[derive(Debug, Default)]
pub struct State {
    pub tokens: HashMap<String, TokenState>,
    pub agents: BTreeMap<String, AgentRec>,
    /// Certificate fingerprint -> what it was issued for.
    pub certs: HashMap<String, CertRec>,
    pub ops: HashMap<String, OpRec>,
    /// agent id -> sequence -> operation id.
    pub by_agent: HashMap<String, BTreeMap<u64, String>>,
}

impl State {
    fn apply(&mut self, r: &Record) -> Result<(), byoc_proto::record::RecordError> {
        match r {
            Record::Token {
                hash,
                expires_unix_ms,
                ca,
            } => {
                self.tokens.insert(
                    hash.clone(),
                    TokenState {
                        expires_unix_ms: *expires_unix_ms,
                        used: false,
                        ca: ca.clone(),
                    },
                );
            }
            Record::TokenUsed { hash } => {
                if let Some(t) = self.tokens.get_mut(hash) {
                    t.used = true;
                }
            }
            Record::Agent {
                id,
                cloud,
                account,
                region,
                hostname,
            } => {
                self.agents.insert(
                    id.clone(),
                    AgentRec {
                        id: id.clone(),
                        target: Target {
                            cloud: cloud.clone(),
                            account: account.clone(),
                            region: region.clone(),
                        },
                        hostname: hostname.clone(),
                        cert_not_after_unix_ms: 0,
                        cert_ca: String::new(),
                        last_seq: 0,
                        acked_result_seq: 0,
                        revoked: false,
                    },
                );
            }
            Record::Revoked { agent } => {
                if let Some(a) = self.agents.get_mut(agent) {
                    a.revoked = true;
                }
            }
            Record::Cert {
                agent,
                fingerprint,
                not_after_unix_ms,
                ca,
            } => {
                self.certs.insert(
                    fingerprint.clone(),
                    CertRec {
                        agent: agent.clone(),
                        not_after_unix_ms: *not_after_unix_ms,
                        ca: ca.clone(),
                    },
                );
                if let Some(a) = self
                    .agents
                    .get_mut(agent)
                    .filter(|a| *not_after_unix_ms >= a.cert_not_after_unix_ms)
                {
                    a.cert_not_after_unix_ms = *not_after_unix_ms;
                    a.cert_ca.clone_from(ca);
                }
            }
            Record::Op { b64 } => self.insert_op(from_base64::<Operation>(b64)?),
            Record::Result { agent, b64 } => {
                let res = from_base64::<OperationResult>(b64)?;
                if let Some(a) = self.agents.get_mut(agent) {
                    a.acked_result_seq = a.acked_result_seq.max(res.result_seq);
                }
                // Exactly one result per operation: commit_result only writes
                // the first, so a second can only come from a damaged log.
                if let Some(o) = self.ops.get_mut(&res.operation_id).filter(|o| o.results.is_empty()) {
                    o.results.push(res);
                }
            }
        }
        Ok(())
    }

    /// Makes `op` visible: to its agent's sequence and to dispatch.
    fn insert_op(&mut self, op: Operation) {
        if let Some(a) = self.agents.get_mut(&op.agent_id) {
            a.last_seq = a.last_seq.max(op.sequence);
        }
        self.by_agent
            .entry(op.agent_id.clone())
            .or_default()
            .insert(op.sequence, op.id.clone());
        self.ops.insert(
            op.id.clone(),
            OpRec {
                op,
                results: Vec::new(),
                duplicates_ignored: 0,
                claimed: false,
            },
        );
    }

    /// Snapshot records that rebuild this state.
    fn snapshot(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for (hash, t) in &self.tokens {
            out.push(Record::Token {
                hash: hash.clone(),
                expires_unix_ms: t.expires_unix_ms,
                ca: t.ca.clone(),
            });
            if t.used {
                out.push(Record::TokenUsed { hash: hash.clone() });
            }
        }
        for a in self.agents.values() {
            out.push(Record::Agent {
                id: a.id.clone(),
                cloud: a.target.cloud.clone(),
                account: a.target.account.clone(),
                region: a.target.region.clone(),
                hostname: a.hostname.clone(),
            });
        }
        // Oldest first, so that replaying them leaves each agent's latest last.
        let mut certs: Vec<_> = self.certs.iter().collect();
        certs.sort_by_key(|(fp, c)| (c.not_after_unix_ms, fp.as_str()));
        for (fp, c) in certs {
            out.push(Record::Cert {
                agent: c.agent.clone(),
                fingerprint: fp.clone(),
                not_after_unix_ms: c.not_after_unix_ms,
                ca: c.ca.clone(),
            });
        }
        for a in self.agents.values().filter(|a| a.revoked) {
            out.push(Record::Revoked { agent: a.id.clone() });
        }
        for seqs in self.by_agent.values() {
            for id in seqs.values() {
                if let Some(o) = self.ops.get(id) {
                    out.push(Record::Op { b64: to_base64(&o.op) });
                    for r in &o.results {
                        out.push(Record::Result {
                            agent: o.op.agent_id.clone(),
                            b64: to_base64(r),
                        });
                    }
                }
            }
        }
        out
    }
}

/// What became of a result an agent sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultDisposition {
    Recorded,
    Duplicate,
    BeingRecorded,
    UnknownOperation,
    NotThisAgents,
}

/// Durable state with an in-memory view.
#[derive(Clone)]
pub struct Store {
    wal: Wal<Plain>,
    state: Arc<Mutex<State>>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let lines = wal::read_lines(path)?;
        let mut state = State::default();
        for (i, line) in lines.iter().enumerate() {
            let corrupt = |source: Damage| StoreError::Corrupt {
                path: path.display().to_string(),
                line: i + 1,
                source,
            };
            let rec: Record = serde_json::from_slice(line).map_err(|e| corrupt(e.into()))?;
            state.apply(&rec).map_err(|e| corrupt(e.into()))?;
        }
        let snapshot: Vec<Vec<u8>> = state
            .snapshot()
            .iter()
            .map(|r| serde_json::to_vec(r).unwrap_or_default())
            .collect();
        wal::rewrite(path, &snapshot)?;
        Ok(Self {
            wal: Wal::open(path, Plain)?,
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// Makes `rec` durable, then applies it to the in-memory state.
    pub async fn commit(&self, rec: Record) -> Result<(), StoreError> {
        self.append(&rec).await?;
        let mut st = self.lock();
        // A record we built ourselves always applies.
        let _ = st.apply(&rec);
        Ok(())
    }

    /// Makes an operation durable. `build` runs under the state lock to assign
    /// the agent's next sequence; the operation is visible to dispatch only once
    /// it is on disk, and dispatch sends in sequence order (see `hub`).
    pub async fn commit_op(&self, build: impl FnOnce(&mut State) -> Operation) -> Result<Operation, StoreError> {
        let op = {
            let mut st = self.lock();
            let op = build(&mut st);
            // Reserve the sequence now, so concurrent submits get the next ones;
            // the operation itself becomes visible only once durable.
            if let Some(a) = st.agents.get_mut(&op.agent_id) {
                a.last_seq = a.last_seq.max(op.sequence);
            }
            op
        };
        self.append(&Record::Op { b64: to_base64(&op) }).await?;
        self.lock().insert_op(op.clone());
        Ok(op)
    }

    /// Records the result of an operation once. A result for an operation this
    /// agent was never sent is not recorded; a second result for the same
    /// operation (a resend after a reconnect, or a race between an old and a new
    /// session) is counted and ignored.
    pub async fn commit_result(&self, agent: &str, res: &OperationResult) -> Result<ResultDisposition, StoreError> {
        {
            let mut st = self.lock();
            let Some(o) = st.ops.get_mut(&res.operation_id) else {
                return Ok(ResultDisposition::UnknownOperation);
            };
            if o.op.agent_id != agent {
                return Ok(ResultDisposition::NotThisAgents);
            }
            if o.claimed {
                // Another session is writing this operation's result right now;
                // it acks once that is durable. Acking here could ack a write
                // that then fails.
                o.duplicates_ignored += 1;
                return Ok(ResultDisposition::BeingRecorded);
            }
            if !o.results.is_empty() {
                o.duplicates_ignored += 1;
                return Ok(ResultDisposition::Duplicate);
            }
            o.claimed = true;
        }
        let written = self
            .commit(Record::Result {
                agent: agent.to_string(),
                b64: to_base64(res),
            })
            .await;
        if let Some(o) = self.lock().ops.get_mut(&res.operation_id) {
            o.claimed = false;
        }
        written.map(|()| ResultDisposition::Recorded)
    }

    async fn append(&self, rec: &Record) -> Result<(), StoreError> {
        // A record of strings and numbers always serializes.
        Ok(self.wal.append(serde_json::to_vec(rec).unwrap_or_default()).await?)
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied record:
        // records are applied whole. Keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
