//! The gate: one operation in, one typed [`Verdict`] out. It runs the checks
//! (with the kill switch as last audited), then the customer's policy, and
//! queues the policy's decision in the audit log; it acts on nothing. The
//! agent's intake carries the verdict out: records and hands an accepted
//! operation to the executor, or audits and answers a refusal.

use std::sync::Arc;

use byoc_audit::{AuditLog, Event};
use byoc_proto::agent::v1::Operation;
use serde_json::json;

use crate::TargetConfig;
use crate::checks::{Checker, Refusal, Verified};
use crate::pause;
use crate::policy::{Decision, PolicyHandle, Request};
use byoc_provider::Clock;

/// What the gate decided about one operation.
#[derive(Debug)]
pub enum Verdict {
    /// Passed every check, and the policy allows it (`approval` None) or holds
    /// it for a local approval (`approval` names the rule).
    Accept {
        op: Box<Verified>,
        approval: Option<String>,
    },
    /// Refused by a check or the policy: to be audited, then answered.
    Refuse(Refusal),
    /// Refused because the audit log cannot record: answered, and not audited
    /// (nothing is done, so nothing goes unrecorded).
    RefuseUnaudited(Refusal),
}

/// What the gate needs of the running agent.
pub struct Gate {
    pub agent_id: String,
    pub target: TargetConfig,
    /// The control plane's operation key, pinned at enrollment.
    pub operation_key: Vec<u8>,
    /// Longest `not_after - issued_at` accepted.
    pub max_lifetime_ms: i64,
    pub policy: Arc<PolicyHandle>,
    pub audit: AuditLog,
    pub pause: Arc<pause::Watcher>,
    pub clock: Arc<dyn Clock>,
}

impl Gate {
    /// Decides `op`, given the highest sequence already recorded.
    pub async fn decide(&self, op: Operation, highest_seq: u64) -> Verdict {
        let paused = self.pause.observe().await;
        let checker = Checker {
            agent_id: &self.agent_id,
            target: &self.target,
            operation_key: &self.operation_key,
            highest_seq,
            now_ms: self.clock.now_ms(),
            max_lifetime_ms: self.max_lifetime_ms,
            paused: paused.as_ref(),
        };
        let v = match checker.check(op) {
            Ok(v) => v,
            Err(refusal) => return Verdict::Refuse(refusal),
        };
        // The checks come first even when the audit log cannot record: only an
        // operation that passed them may move the sequence mark.
        if self.audit.is_failed() {
            return Verdict::RefuseUnaudited(
                Refusal::audit_unavailable("an earlier write failed", self.audit.dir()).with_trust(true),
            );
        }
        match self.policy_decision(&v) {
            Err(e) => Verdict::RefuseUnaudited(
                Refusal::audit_unavailable(&byoc_errors::chain(&e), self.audit.dir()).with_trust(true),
            ),
            Ok(Decision::Allow { .. }) => Verdict::Accept {
                op: Box::new(v),
                approval: None,
            },
            Ok(Decision::NeedsApproval { rule, .. }) => Verdict::Accept {
                op: Box::new(v),
                approval: Some(rule),
            },
            Ok(Decision::Deny { rule, message, field }) => Verdict::Refuse(Refusal::policy(&rule, &message, &field)),
        }
    }

    /// Asks the policy in force about `v` and queues the `policy.decision`
    /// record. It is made durable by the record the caller awaits next
    /// (`operation.received` or `operation.refused`): the log is ordered, so
    /// no operation is accepted or refused before its decision is recorded.
    /// The policy cannot be swapped between the decision and the queuing.
    fn policy_decision(&self, v: &Verified) -> Result<Decision, byoc_audit::AuditError> {
        self.policy.decide_with(|loaded| {
            let decision = loaded.policy.evaluate(&Request {
                action: v.action,
                region: Some(&v.region),
                spec: &v.spec,
            });
            self.audit
                .record_before_next(decision_event(&v.id, &decision, &loaded.sha256))?;
            Ok(decision)
        })
    }
}

/// The audit record of a policy decision about operation `op_id`.
pub fn decision_event(op_id: &str, d: &Decision, policy_sha256: &str) -> Event {
    Event::new("policy.decision", Some(op_id), decision_detail(d, policy_sha256))
}

/// The detail of a `policy.decision` record.
pub fn decision_detail(d: &Decision, policy_sha256: &str) -> serde_json::Value {
    json!({ "decision": d.as_str(), "rule": d.rule(), "policy_sha256": policy_sha256 })
}
