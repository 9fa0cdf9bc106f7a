//! The outbox: every result the control plane has not acknowledged.
//!
//! One task owns it, so results get their sequence numbers, reach the journal
//! and go out on the session in one order. It works in batches: every result
//! and acknowledgement waiting in its queue is written with one group commit.
//! A result is sent only after it is durable, and resent after each reconnect
//! until acknowledged.

use std::collections::BTreeMap;

use byoc_proto::agent::v1::{AgentMessage, OperationResult, agent_message};
use tokio::sync::mpsc;
use tracing::{debug, error};

use crate::journal::{Journal, JournalError};

/// The outbox cannot keep results durably: the agent stops rather than lose one.
#[derive(Debug, thiserror::Error)]
#[error("cannot record operation results durably")]
pub struct OutboxFailed(#[source] pub JournalError);

pub enum Cmd {
    /// A finished operation's result (its `result_seq` is assigned here).
    Result(Box<OperationResult>),
    /// The control plane recorded every result up to this sequence.
    Ack(u64),
    /// A session started (Some) or ended (None).
    Session(Option<mpsc::Sender<AgentMessage>>),
}

#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl Outbox {
    /// Starts the outbox task. `fatal` receives the error that stops it (the
    /// journal cannot be written: the agent must stop rather than lose a result).
    pub fn start(
        journal: Journal,
        pending: BTreeMap<u64, OperationResult>,
        acked: u64,
        highest: u64,
        fatal: mpsc::UnboundedSender<OutboxFailed>,
    ) -> (Self, tokio::sync::watch::Receiver<OutboxStats>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stats_tx, stats_rx) = tokio::sync::watch::channel(OutboxStats {
            unacked: pending.len(),
            acked,
        });
        let task = Task {
            journal,
            pending,
            acked,
            next_seq: highest.max(acked) + 1,
            session: None,
            stats: stats_tx,
        };
        tokio::spawn(task.run(rx, fatal));
        (Self { tx }, stats_rx)
    }

    pub fn send(&self, cmd: Cmd) {
        // The task only stops when the agent is stopping.
        let _ = self.tx.send(cmd);
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct OutboxStats {
    pub unacked: usize,
    pub acked: u64,
}

struct Task {
    journal: Journal,
    pending: BTreeMap<u64, OperationResult>,
    acked: u64,
    next_seq: u64,
    session: Option<mpsc::Sender<AgentMessage>>,
    stats: tokio::sync::watch::Sender<OutboxStats>,
}

fn message(r: &OperationResult) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Result(r.clone())),
    }
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>, fatal: mpsc::UnboundedSender<OutboxFailed>) {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 1024).await > 0 {
            let mut results = Vec::new();
            let mut ack = None;
            for cmd in batch.drain(..) {
                match cmd {
                    Cmd::Result(r) => {
                        let mut r = *r;
                        r.result_seq = self.next_seq;
                        self.next_seq += 1;
                        results.push(r);
                    }
                    // An ack beyond what was ever assigned is not believed: it
                    // would make results not yet sent count as delivered.
                    Cmd::Ack(n) if n > self.acked && n < self.next_seq => ack = Some(ack.unwrap_or(0).max(n)),
                    Cmd::Ack(_) => {}
                    Cmd::Session(s) => {
                        self.session = s;
                        // A new session gets every unacknowledged result, in order.
                        self.send_all().await;
                    }
                }
            }
            let writes = results.iter().map(|r| self.journal.result(r)).collect::<Vec<_>>();
            let ack_write = async {
                match ack {
                    Some(n) => self.journal.acked(n).await.map(|()| Some(n)),
                    None => Ok(None),
                }
            };
            let (written, acked) = tokio::join!(futures::future::join_all(writes), ack_write);
            if let Err(e) = written.into_iter().collect::<Result<Vec<()>, _>>() {
                error!(error = %byoc_errors::Chain(&e), "cannot record results durably");
                let _ = fatal.send(OutboxFailed(e));
                return;
            }
            match acked {
                Ok(Some(n)) => {
                    self.acked = n;
                    self.pending.retain(|seq, _| *seq > n);
                }
                Ok(None) => {}
                Err(e) => {
                    // Not fatal: the control plane dedups a resend.
                    error!(error = %byoc_errors::Chain(&e), "cannot record an acknowledgement");
                }
            }
            for r in results {
                if let Some(s) = &self.session
                    && s.send(message(&r)).await.is_err()
                {
                    self.session = None;
                }
                debug!(result_seq = r.result_seq, op = %r.operation_id, "result queued");
                self.pending.insert(r.result_seq, r);
            }
            let _ = self.stats.send(OutboxStats {
                unacked: self.pending.len(),
                acked: self.acked,
            });
        }
    }

    async fn send_all(&mut self) {
        let Some(s) = &self.session else { return };
        for r in self.pending.values() {
            if s.send(message(r)).await.is_err() {
                self.session = None;
                return;
            }
        }
    }
}
