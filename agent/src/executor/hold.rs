//! Operations the policy holds for a local approval: planned (observe only),
//! shown in `byoc-agent approvals` and to the control plane, then run once
//! approved, or refused when rejected or not approved within the window.
//!
//! The window starts when the agent holds the operation and is the policy's
//! `approvals.window` (default 1 h), not the operation's `not_after`: that
//! deadline bounds how long a signed instruction may be *delivered* (it is
//! checked once, on receipt, and the sequence is then used up, so it cannot be
//! replayed), while the approval is the customer's own, fresh decision. The
//! control plane can still withdraw a held operation with `Cancel`.

use std::sync::Mutex;
use std::time::Duration;

use byoc_audit::Event;
use byoc_proto::agent::v1::{AgentMessage, OperationProgress, agent_message};
use byoc_provider::{CallContext, Plan};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Calls, Executor, Failure, Hooks, retry};
use byoc_gate::approval::{self, Choice, Decided, Hold, fmt_ms};
use byoc_gate::checks::{Action, Verified};
use byoc_gate::decide::decision_detail;
use byoc_gate::policy::{Decision, Request};

/// How often a held operation looks for a decision file.
const POLL: Duration = Duration::from_millis(200);

enum Waited {
    Decided(Decided),
    Expired,
    Cancelled,
}

type Held = Result<Plan, (Option<Plan>, Failure)>;

impl Executor {
    /// Holds `v` until a local decision. Ok: approved, with the plan that was
    /// approved; Err: the plan (if any) and why it must not run.
    pub(super) async fn hold(&self, v: &Verified, resumed: bool, rule: &str, cancel: &CancellationToken) -> Held {
        let op_id = &v.id;
        let audit = |e: byoc_audit::AuditError| Failure::AuditUnavailable(byoc_errors::chain(&e));
        let mut hold = match approval::read_hold(&self.data_dir, op_id) {
            Some(h) => h,
            None => {
                let now = self.clock.now_ms();
                let window = self.policy.current().policy.approval_window();
                Hold {
                    operation_id: op_id.clone(),
                    sequence: v.sequence,
                    action: v.action.as_str().into(),
                    kind: v.spec.kind().as_str().into(),
                    name: v.spec.name().into(),
                    rule: rule.into(),
                    received_at_unix_ms: now,
                    expires_at_unix_ms: now.saturating_add(window.as_millis() as i64),
                    plan: None,
                }
            }
        };
        let unavailable = |e: std::io::Error| Failure::HoldUnavailable(e.to_string());
        let plan = match hold.plan.clone() {
            Some(plan) => {
                // Held before a restart: the same plan, the same window.
                let ev = Event::new(
                    "approval.resumed",
                    Some(op_id),
                    json!({ "rule": rule, "expires_at_unix_ms": hold.expires_at_unix_ms, "resumed": resumed }),
                );
                self.audit
                    .record(ev)
                    .await
                    .map_err(|e| (Some(plan.clone()), audit(e)))?;
                plan
            }
            None => {
                // The window is fixed from here on, whatever happens next.
                approval::write_hold(&self.data_dir, &hold).map_err(|e| (None, unavailable(e)))?;
                let plan = self.plan_for_approval(v, cancel).await.map_err(|f| (None, f))?;
                if v.action == Action::Delete {
                    // A protected resource is refused now, not shown for approval.
                    self.check_protection(v, &plan)
                        .await
                        .map_err(|f| (Some(plan.clone()), f))?;
                }
                hold.plan = Some(plan.clone());
                approval::write_hold(&self.data_dir, &hold).map_err(|e| (Some(plan.clone()), unavailable(e)))?;
                let ev = Event::new(
                    "approval.awaiting",
                    Some(op_id),
                    json!({
                        "rule": rule, "received_at_unix_ms": hold.received_at_unix_ms,
                        "expires_at_unix_ms": hold.expires_at_unix_ms, "plan": approval::plan_lines(&plan),
                    }),
                );
                self.audit
                    .record(ev)
                    .await
                    .map_err(|e| (Some(plan.clone()), audit(e)))?;
                plan
            }
        };
        info!(op = %op_id, %rule, expires = %fmt_ms(hold.expires_at_unix_ms), "operation awaits a local approval");
        self.announce(
            op_id,
            "awaiting_approval",
            format!(
                "waiting for a local approval (rule {rule}) until {}: on the agent host, `byoc-agent approve {op_id}` \
                 or `byoc-agent reject {op_id}`",
                fmt_ms(hold.expires_at_unix_ms)
            ),
            true,
        );
        let waited = self.wait_for_decision(op_id, hold.expires_at_unix_ms, cancel).await;
        self.held().remove(op_id);
        let fail = |f: Failure| (Some(plan.clone()), f);
        let refused = |code: &'static str, message: String| Failure::Refused {
            code,
            rule: rule.to_string(),
            message,
            field: String::new(),
        };
        match waited {
            Waited::Cancelled => Err(fail(Failure::Cancelled)),
            Waited::Decided(d)
                if d.decision.decision == Choice::Approve && d.decision.at_unix_ms <= hold.expires_at_unix_ms =>
            {
                let who = who(&d);
                let ev = Event::new(
                    "approval.granted",
                    Some(op_id),
                    json!({ "rule": rule, "user": d.decision.user, "uid": d.uid, "reason": d.decision.reason }),
                )
                .with_actor(json!({ "local_user": d.decision.user, "uid": d.uid }));
                self.audit.record(ev).await.map_err(|e| fail(audit(e)))?;
                info!(op = %op_id, by = %who, "operation approved locally");
                // Decided again by the policy in force now: one reloaded since
                // may deny what was held.
                self.decide_again(v).await.map_err(fail)?;
                self.announce(op_id, "approved", format!("approved on the agent host by {who}"), false);
                Ok(plan)
            }
            Waited::Decided(d) if d.decision.decision == Choice::Reject => {
                let who = who(&d);
                let ev = Event::new(
                    "approval.rejected",
                    Some(op_id),
                    json!({ "rule": rule, "user": d.decision.user, "uid": d.uid, "reason": d.decision.reason }),
                )
                .with_actor(json!({ "local_user": d.decision.user, "uid": d.uid }));
                self.audit.record(ev).await.map_err(|e| fail(audit(e)))?;
                let reason = if d.decision.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", d.decision.reason)
                };
                Err(fail(refused(
                    "approval_rejected",
                    format!("rejected on the agent host by {who}{reason}; nothing was done"),
                )))
            }
            Waited::Decided(_) | Waited::Expired => {
                let ev = Event::new(
                    "approval.expired",
                    Some(op_id),
                    json!({ "rule": rule, "expires_at_unix_ms": hold.expires_at_unix_ms }),
                );
                self.audit.record(ev).await.map_err(|e| fail(audit(e)))?;
                Err(fail(refused(
                    "approval_expired",
                    format!(
                        "not approved on the agent host before its approval window closed at {} (policy \
                         approvals.window); nothing was done",
                        fmt_ms(hold.expires_at_unix_ms)
                    ),
                )))
            }
        }
    }

    /// The plan shown for approval: observe only, audited like any run's.
    async fn plan_for_approval(&self, v: &Verified, cancel: &CancellationToken) -> Result<Plan, Failure> {
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return Err(Failure::Cancelled);
        };
        let op_id = &v.id;
        let planning = Event::new(
            "approval.planning",
            Some(op_id),
            json!({ "action": v.action.as_str(), "kind": v.spec.kind().as_str(), "name": v.spec.name() }),
        );
        // Made durable by the first provider call's record, as operation.started is.
        self.audit
            .record_before_next(planning)
            .map_err(|e| Failure::AuditUnavailable(byoc_errors::chain(&e)))?;
        let hooks = Hooks {
            calls: Mutex::new(Calls::default()),
            audit: &self.audit,
            session: &self.session,
            op_id,
            last: Mutex::new(None),
        };
        let ctx = CallContext {
            operation_id: op_id,
            idempotency_key: &v.idempotency_key,
            hooks: &hooks,
        };
        use byoc_provider::CallHooks as _;
        hooks.progress("planning", "computing the plan to show for approval", Some(0));
        let delete = v.action == Action::Delete;
        let p = &*self.provider;
        tokio::select! {
            r = tokio::time::timeout(self.deadline, retry(|| p.plan(&ctx, &v.spec, delete))) => match r {
                Ok(Ok(plan)) => Ok(plan),
                Ok(Err(e)) => Err(Failure::Provider(e)),
                Err(_) => Err(Failure::Deadline(self.deadline)),
            },
            _ = cancel.cancelled() => Err(Failure::Cancelled),
        }
    }

    async fn wait_for_decision(&self, op_id: &str, expires_at: i64, cancel: &CancellationToken) -> Waited {
        let mut warned = false;
        loop {
            match approval::read_decision(&self.data_dir, op_id) {
                Ok(Some(d)) => return Waited::Decided(d),
                Ok(None) => {}
                Err(e) => {
                    // Fails closed: an unreadable decision approves nothing.
                    if !warned {
                        warn!(op = %op_id, error = %byoc_errors::Chain(&e), "ignoring an approval decision the agent cannot read");
                        warned = true;
                    }
                }
            }
            let left = expires_at.saturating_sub(self.clock.now_ms());
            if left <= 0 {
                return Waited::Expired;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL.min(Duration::from_millis(left as u64))) => {}
                _ = cancel.cancelled() => return Waited::Cancelled,
            }
        }
    }

    /// The policy in force decides the approved operation again; a denial refuses it.
    async fn decide_again(&self, v: &Verified) -> Result<(), Failure> {
        // Decided and its record queued under the policy's read lock, like
        // every decision: a reload's record is either before it or after it.
        let (record, d) = self.policy.decide_with(|loaded| {
            let d = loaded.policy.evaluate(&Request {
                action: v.action,
                region: Some(&v.region),
                spec: &v.spec,
            });
            let mut detail = decision_detail(&d, &loaded.sha256);
            detail["stage"] = json!("approved");
            (self.audit.submit(Event::new("policy.decision", Some(&v.id), detail)), d)
        });
        let unavailable = |e: byoc_audit::AuditError| Failure::AuditUnavailable(byoc_errors::chain(&e));
        record.map_err(unavailable)?.await.map_err(unavailable)?;
        match d {
            Decision::Deny { rule, message, field } => Err(Failure::Refused {
                code: "policy_denied",
                rule,
                message: format!("{message} (the policy in force when it was approved)"),
                field,
            }),
            _ => Ok(()),
        }
    }

    /// Tells the control plane (best effort, like all progress); a held
    /// operation's notice is also kept and sent again on every new session.
    fn announce(&self, op_id: &str, phase: &str, message: String, keep: bool) {
        let p = OperationProgress {
            operation_id: op_id.to_string(),
            phase: phase.to_string(),
            message,
            percent: -1,
        };
        if keep {
            self.held().insert(op_id.to_string(), p.clone());
        }
        self.session.try_send(AgentMessage {
            body: Some(agent_message::Body::Progress(p)),
        });
    }

    fn held(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, OperationProgress>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The notices of every held operation, for a new session.
    pub fn held_progress(&self) -> Vec<AgentMessage> {
        self.held()
            .values()
            .map(|p| AgentMessage {
                body: Some(agent_message::Body::Progress(p.clone())),
            })
            .collect()
    }

    /// Ids of the operations awaiting approval.
    pub fn held_ids(&self) -> Vec<String> {
        self.held().keys().cloned().collect()
    }
}

fn who(d: &Decided) -> String {
    match d.uid {
        Some(uid) => format!("{} (uid {uid})", d.decision.user),
        None => d.decision.user.clone(),
    }
}

/// An approval is for the plan that was shown. If the resource changed since
/// and the plan now differs, the approved operation is not carried out (a plan
/// that changes nothing any more is fine: the operation then does nothing).
pub(super) fn still_as_approved(rule: &str, approved: &Plan, now: &Plan) -> Result<(), Failure> {
    if !now.is_mutating() || now == approved {
        return Ok(());
    }
    Err(Failure::Refused {
        code: "approval_stale",
        rule: rule.to_string(),
        message: format!(
            "the plan changed since it was approved (approved: {}; now: {}); nothing was done: submit the \
             operation again to have the new plan approved",
            approval::plan_lines(approved).join("; "),
            approval::plan_lines(now).join("; ")
        ),
        field: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use byoc_provider::{Change, PlanSummary};

    use super::*;

    #[test]
    fn an_approval_holds_for_the_plan_that_was_shown() {
        let plan = |to: u32| Plan {
            summary: PlanSummary::Update,
            changes: vec![Change {
                path: "desired_size".into(),
                from: Some(2.into()),
                to: Some(to.into()),
                requires_replacement: false,
            }],
        };
        assert!(still_as_approved("r", &plan(4), &plan(4)).is_ok());
        assert!(still_as_approved("r", &plan(4), &Plan::no_change()).is_ok());
        match still_as_approved("r", &plan(4), &plan(9)) {
            Err(Failure::Refused {
                code, rule, message, ..
            }) => {
                assert_eq!((code, rule.as_str()), ("approval_stale", "r"));
                assert!(message.contains("2 -> 9"), "{message}");
            }
            _ => panic!("a changed plan is stale"),
        }
    }
}
