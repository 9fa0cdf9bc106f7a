//! The intake: what happens to an operation between the session that decoded
//! it and the executor that runs it. It asks the [`Gate`] for a verdict, then
//! carries the verdict out:
//! - **accept**: `operation.received` in the audit log and the operation in
//!   the journal, both durable, before the sequence mark moves, the control
//!   plane hears "accepted", and the executor gets it;
//! - **refuse**: `operation.refused` in the audit log (with the rule that
//!   decided), the sequence recorded if it can be believed, and a REFUSED
//!   result through the outbox;
//! - **refuse unaudited**: the audit log cannot record, so nothing is done and
//!   the refusal is answered all the same.
//!
//! It also resumes what the journal holds at start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use byoc_audit::{AuditLog, Event};
use byoc_gate::checks::{self, Refusal, Verified};
use byoc_gate::{Clock, Gate, Verdict};
use byoc_proto::agent::v1::{AgentMessage, Operation, OperationAccepted, OperationResult, Outcome, agent_message};
use serde_json::json;
use tracing::{error, info, warn};

use crate::credentials::Credentials;
use crate::executor::Executor;
use crate::journal::{Journal, JournalError, Pending};
use crate::outbound::SessionSender;
use crate::outbox::{Cmd, Outbox};
use crate::status::StatusHandle;

/// An operation's intake could not be made durable: the session must end
/// (the operation is not accepted; the control plane sends it again).
#[derive(Debug, thiserror::Error)]
#[error("cannot journal operation {op_id}")]
pub struct IntakeError {
    pub op_id: String,
    #[source]
    pub source: JournalError,
}

/// What the intake works with.
pub struct Intake {
    pub gate: Gate,
    pub audit: AuditLog,
    pub journal: Journal,
    pub outbox: Outbox,
    pub executor: Arc<Executor>,
    pub session: SessionSender,
    pub status: StatusHandle,
    pub credentials: Arc<Credentials>,
    pub clock: Arc<dyn Clock>,
    /// The highest operation sequence recorded (accepted, or refused with a
    /// trusted sequence): the replay mark.
    highest_seq: AtomicU64,
}

impl Intake {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gate: Gate,
        audit: AuditLog,
        journal: Journal,
        outbox: Outbox,
        executor: Arc<Executor>,
        session: SessionSender,
        status: StatusHandle,
        credentials: Arc<Credentials>,
        clock: Arc<dyn Clock>,
        highest_seq: u64,
    ) -> Self {
        Self {
            gate,
            audit,
            journal,
            outbox,
            executor,
            session,
            status,
            credentials,
            clock,
            highest_seq: AtomicU64::new(highest_seq),
        }
    }

    pub fn highest_seq(&self) -> u64 {
        self.highest_seq.load(Ordering::Acquire)
    }

    fn set_highest_seq(&self, seq: u64) {
        self.highest_seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// One operation from the control plane.
    pub async fn operation(&self, op: Operation) -> Result<(), IntakeError> {
        if self.executor.is_in_flight(&op.id) {
            warn!(op = %op.id, "operation already running; ignoring the duplicate");
            return Ok(());
        }
        let (id, sequence) = (op.id.clone(), op.sequence);
        match self.gate.decide(op, self.highest_seq()).await {
            Verdict::Accept { op, approval } => self.accept(*op, approval).await,
            Verdict::Refuse(refusal) => self.refuse(&id, sequence, refusal).await,
            Verdict::RefuseUnaudited(refusal) => self.refuse_unaudited(&id, sequence, refusal).await,
        }
    }

    /// Resumes what the journal accepted and did not finish: the provider
    /// converges, and what waited for approval waits again.
    pub async fn resume(&self, pending: Vec<Pending>) -> Result<(), IntakeError> {
        for p in pending {
            match checks::resume(p.op.clone(), &self.gate.operation_key, &self.gate.agent_id) {
                Ok(v) => {
                    info!(op = %v.id, awaiting_approval = p.approval.is_some(), "resuming operation");
                    self.executor.spawn(v, true, p.approval);
                }
                // Accepted once, not signed or undecodable now (an altered
                // journal, an agent downgrade): answer it rather than leave it
                // pending for ever.
                Err(r) => self.refuse(&p.op.id, p.op.sequence, r).await?,
            }
        }
        Ok(())
    }

    /// Records an accepted operation in the audit log and the journal (both
    /// writes share their fsyncs with others), then acknowledges it and hands
    /// it to the executor, which holds it first if `approval` names a rule.
    async fn accept(&self, v: Verified, approval: Option<String>) -> Result<(), IntakeError> {
        let received = Event::new(
            "operation.received",
            Some(&v.id),
            json!({
                "sequence": v.sequence, "action": v.action.as_str(), "kind": v.spec.kind().as_str(),
                "name": v.spec.name(), "idempotency_key": v.idempotency_key,
                "issued_at_unix_ms": v.issued_at_unix_ms, "not_after_unix_ms": v.not_after_unix_ms,
            }),
        )
        .with_actor(self.credentials.actor());
        let (a, j) = tokio::join!(
            self.audit.record(received),
            self.journal.accepted(v.signed(), approval.as_deref())
        );
        j.map_err(|source| IntakeError {
            op_id: v.id.clone(),
            source,
        })?;
        if let Err(e) = a {
            // Not recorded, so not done: the journal's acceptance is closed
            // with this refusal, so a restart does not resume it.
            let refusal = Refusal::audit_unavailable(&byoc_errors::chain(&e), self.audit.dir()).with_trust(true);
            return self.refuse_unaudited(&v.id, v.sequence, refusal).await;
        }
        self.set_highest_seq(v.sequence);
        self.session.try_send(AgentMessage {
            body: Some(agent_message::Body::Accepted(OperationAccepted {
                operation_id: v.id.clone(),
                sequence: v.sequence,
            })),
        });
        self.executor.spawn(v, false, approval);
        Ok(())
    }

    /// Refuses an operation: audited, then answered through the outbox.
    async fn refuse(&self, id: &str, sequence: u64, refusal: Refusal) -> Result<(), IntakeError> {
        let recorded = self
            .audit
            .record(
                Event::new(
                    "operation.refused",
                    Some(id),
                    json!({ "sequence": sequence, "code": refusal.code, "rule": refusal.rule, "message": refusal.message, "field": refusal.field }),
                )
                .with_actor(self.credentials.actor()),
            )
            .await;
        if let Err(e) = recorded {
            let unaudited = Refusal::audit_unavailable(&byoc_errors::chain(&e), self.audit.dir())
                .with_trust(refusal.sequence_trusted);
            return self.refuse_unaudited(id, sequence, unaudited).await;
        }
        warn!(op = %id, code = refusal.code, rule = %refusal.rule, message = %refusal.message, "operation refused");
        self.answer_refusal(id, sequence, refusal).await
    }

    /// Refuses an operation when the audit log cannot record: nothing is
    /// done, the refusal is journaled and sent, and the agent's own log says so.
    async fn refuse_unaudited(&self, id: &str, sequence: u64, refusal: Refusal) -> Result<(), IntakeError> {
        error!(op = %id, code = refusal.code, message = %refusal.message, "operation refused: the audit log cannot record");
        self.status.update(|s| s.last_error = Some(refusal.message.clone()));
        self.answer_refusal(id, sequence, refusal).await
    }

    async fn answer_refusal(&self, id: &str, sequence: u64, refusal: Refusal) -> Result<(), IntakeError> {
        // A refused operation that is genuinely ours is done with: record its
        // sequence so it is never taken again. A forged, misaddressed or
        // replayed one must not move the mark (a forged u64::MAX would lock
        // the agent out).
        if refusal.sequence_trusted && sequence > self.highest_seq() {
            self.journal.seen(sequence).await.map_err(|source| IntakeError {
                op_id: id.to_string(),
                source,
            })?;
            self.set_highest_seq(sequence);
        }
        self.outbox.send(Cmd::Result(Box::new(OperationResult {
            result_seq: 0,
            operation_id: id.to_string(),
            sequence,
            outcome: Outcome::Refused as i32,
            outputs: None,
            plan: Vec::new(),
            problem: Some(refusal.to_problem()),
            finished_at_unix_ms: self.clock.now_ms(),
        })));
        Ok(())
    }

    /// The control plane withdraws an operation.
    pub async fn cancel(&self, op_id: &str, reason: &str) {
        let running = self.executor.cancel(op_id);
        let _ = self
            .audit
            .record(Event::new(
                "operation.cancel_requested",
                Some(op_id),
                json!({ "reason": reason, "running": running }),
            ))
            .await;
    }
}
