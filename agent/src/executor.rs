//! The executor: runs verified operations through the provider, with bounded
//! concurrency, a deadline, cancellation, retries of throttled and transient
//! errors, progress reports, and an audit record before every cloud call.
//! Operations the policy holds for a local approval wait in [`hold`] first.

mod hold;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use byoc_audit::{AuditLog, Event};
use byoc_proto::agent::v1::{self as pb, AgentMessage, OperationProgress, OperationResult, Outcome, agent_message};
use byoc_provider::{CallContext, CallHooks, Outputs, Plan, PlanSummary, Provider, ProviderCall, ProviderError};
use futures::FutureExt as _;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use byoc_gate::Clock;
use byoc_gate::approval;
use byoc_gate::checks::{Action, Verified};
use byoc_gate::decide::decision_detail;
use byoc_gate::policy::{Decision, PolicyHandle};

use crate::config::ExecutorConfig;
use crate::outbound::SessionSender;
use crate::outbox::{Cmd, Outbox};

/// Retries of one provider step on throttling or transient errors.
const MAX_RETRIES: usize = 8;

pub struct Executor {
    provider: Arc<dyn Provider>,
    audit: AuditLog,
    outbox: Outbox,
    session: SessionSender,
    permits: Arc<Semaphore>,
    deadline: Duration,
    in_flight: Mutex<HashMap<String, CancellationToken>>,
    policy: Arc<PolicyHandle>,
    /// Where holds and decisions live (`approval`).
    data_dir: PathBuf,
    /// Operations waiting for approval, with the progress that says so
    /// (sent again on every new session: progress is not resent otherwise).
    held: Mutex<HashMap<String, OperationProgress>>,
    clock: Arc<dyn Clock>,
}

/// What an executor works with, from the running agent.
pub struct Parts {
    pub provider: Arc<dyn Provider>,
    pub audit: AuditLog,
    pub outbox: Outbox,
    pub session: SessionSender,
    pub policy: Arc<PolicyHandle>,
    pub data_dir: PathBuf,
    pub clock: Arc<dyn Clock>,
}

impl Executor {
    pub fn new(parts: Parts, cfg: &ExecutorConfig) -> Arc<Self> {
        Arc::new(Self {
            provider: parts.provider,
            audit: parts.audit,
            outbox: parts.outbox,
            session: parts.session,
            permits: Arc::new(Semaphore::new(cfg.max_concurrent_operations)),
            deadline: cfg.operation_deadline,
            in_flight: Mutex::new(HashMap::new()),
            policy: parts.policy,
            data_dir: parts.data_dir,
            held: Mutex::new(HashMap::new()),
            clock: parts.clock,
        })
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_in_flight(&self, op_id: &str) -> bool {
        self.in_flight().contains_key(op_id)
    }

    /// How many operations are accepted and not finished.
    pub fn in_flight_count(&self) -> usize {
        self.in_flight().len()
    }

    /// Ids of the operations accepted and not finished.
    pub fn in_flight_ids(&self) -> Vec<String> {
        self.in_flight().keys().cloned().collect()
    }

    /// Asks a running operation to stop. It ends as cancelled at its next await.
    pub fn cancel(&self, op_id: &str) -> bool {
        match self.in_flight().get(op_id) {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }

    /// Runs `v` in the background. Its acceptance is already durable.
    /// `approval`: the policy rule that holds it for a local approval first.
    pub fn spawn(self: &Arc<Self>, v: Verified, resumed: bool, approval: Option<String>) {
        let token = CancellationToken::new();
        self.in_flight().insert(v.id.clone(), token.clone());
        let this = self.clone();
        tokio::spawn(async move {
            let id = v.id.clone();
            // A panic (a bug, in the agent or a provider) becomes this
            // operation's failure, recorded and reported, instead of an
            // operation in flight for ever.
            let kept = v.clone();
            let ran = std::panic::AssertUnwindSafe(this.run(v, resumed, token, approval))
                .catch_unwind()
                .await;
            if let Err(payload) = ran {
                let why = panic_message(payload);
                error!(op = %id, panic = %why, "the operation's task panicked");
                this.finish(&kept, None, Err(Failure::Panicked(why)), serde_json::Value::Null)
                    .await;
            }
            this.in_flight().remove(&id);
        });
    }

    async fn run(&self, v: Verified, resumed: bool, cancel: CancellationToken, approval: Option<String>) {
        let approved = match &approval {
            None => None,
            Some(rule) => match self.hold(&v, resumed, rule, &cancel).await {
                Ok(plan) => Some((rule.as_str(), plan)),
                Err((plan, failure)) => {
                    if self.finish(&v, plan, Err(failure), serde_json::Value::Null).await {
                        approval::remove(&self.data_dir, &v.id);
                    }
                    return;
                }
            },
        };
        let Some((plan, outcome, calls)) = self.attempt(&v, resumed, &cancel, approved).await else {
            return;
        };
        if self.finish(&v, plan, outcome, calls).await && approval.is_some() {
            approval::remove(&self.data_dir, &v.id);
        }
    }

    /// One run: permit, `operation.started`, plan, apply or delete, within the
    /// deadline. `approved`: the rule and plan a local approval was given for.
    async fn attempt(
        &self,
        v: &Verified,
        resumed: bool,
        cancel: &CancellationToken,
        approved: Option<(&str, Plan)>,
    ) -> Option<(Option<Plan>, Result<Option<Outputs>, Failure>, serde_json::Value)> {
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return None;
        };
        let op_id = v.id.clone();
        let started = Event::new(
            if resumed {
                "operation.resumed"
            } else {
                "operation.started"
            },
            Some(&op_id),
            json!({ "action": v.action.as_str(), "kind": v.spec.kind().as_str(), "name": v.spec.name() }),
        );
        // Not awaited on its own: the next thing the executor does is a provider
        // call, whose audit record it awaits before the call; the log is ordered,
        // so that wait makes this record durable too (and fails if it failed).
        let hooks = Hooks {
            audit: &self.audit,
            session: &self.session,
            op_id: &op_id,
            last: Mutex::new(None),
            calls: Mutex::new(Calls::default()),
        };
        let (plan, outcome) = match self.audit.record_before_next(started) {
            Err(e) => (None, Err(Failure::AuditUnavailable(byoc_errors::chain(&e)))),
            Ok(_) => {
                let ctx = CallContext {
                    operation_id: &op_id,
                    idempotency_key: &v.idempotency_key,
                    hooks: &hooks,
                };
                tokio::select! {
                    r = tokio::time::timeout(self.deadline, self.execute(&ctx, v, approved.as_ref())) => match r {
                        Ok((plan, outcome)) => (plan, outcome),
                        Err(_) => (None, Err(Failure::Deadline(self.deadline))),
                    },
                    _ = cancel.cancelled() => (None, Err(Failure::Cancelled)),
                }
            }
        };
        let calls = hooks.calls.lock().unwrap_or_else(|e| e.into_inner()).to_json();
        Some((plan, outcome, calls))
    }

    /// Audits the outcome with the cloud calls made (`calls`), then hands the
    /// result to the outbox. False when the outcome could not be recorded (the
    /// result is held; the operation resumes from the journal at the next start).
    async fn finish(
        &self,
        v: &Verified,
        plan: Option<Plan>,
        outcome: Result<Option<Outputs>, Failure>,
        calls: serde_json::Value,
    ) -> bool {
        let op_id = v.id.clone();
        let result = to_result(v, plan, outcome, self.clock.now_ms());
        let finished = Event::new(
            "operation.finished",
            Some(&op_id),
            json!({
                "outcome": Outcome::try_from(result.outcome).map(|o| o.as_str_name()).unwrap_or("?"),
                "resource_id": result.outputs.as_ref().map(|o| o.resource_id.clone()),
                "problem": result.problem.as_ref().map(|p| json!({"code": p.code, "message": p.message})),
                "calls": calls,
            }),
        );
        // The outcome is recorded before the result can leave. If it cannot be,
        // the result is held: the operation stays open in the journal, resumes
        // at the next start with a working log and converges, and its result is
        // recorded and sent then. The control plane hears why it waits; the
        // agent stays up to refuse what comes next and say why.
        if let Err(e) = self.audit.record(finished).await {
            let msg = format!(
                "the audit log cannot record the outcome ({}); the result is held until the agent restarts with a working log",
                byoc_errors::chain(&e)
            );
            error!(op = %op_id, "{msg}");
            self.session.try_send(AgentMessage {
                body: Some(agent_message::Body::Progress(OperationProgress {
                    operation_id: op_id.clone(),
                    phase: "outcome_held".into(),
                    message: msg,
                    percent: -1,
                })),
            });
            return false;
        }
        info!(op = %op_id, outcome = ?Outcome::try_from(result.outcome), "operation finished");
        self.outbox.send(Cmd::Result(Box::new(result)));
        true
    }

    /// Plans, then applies or deletes. Returns the plan and the outcome.
    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        v: &Verified,
        approved: Option<&(&str, Plan)>,
    ) -> (Option<Plan>, Result<Option<Outputs>, Failure>) {
        let p = &*self.provider;
        let delete = v.action == Action::Delete;
        ctx.hooks
            .progress("planning", "comparing desired with observed", Some(0));
        let plan = match retry(|| p.plan(ctx, &v.spec, delete)).await {
            Ok(plan) => plan,
            Err(e) => return (None, Err(Failure::Provider(e))),
        };
        if let Err(f) = self.check_protection(v, &plan).await {
            return (Some(plan), Err(f));
        }
        if let Some((rule, approved)) = approved
            && let Err(f) = hold::still_as_approved(rule, approved, &plan)
        {
            return (Some(plan), Err(f));
        }
        let outcome = match v.action {
            Action::Plan => Ok(None),
            Action::Apply if plan.summary == PlanSummary::Replace => Err(ProviderError::Conflict {
                message: format!(
                    "changing {} requires replacing the resource; the agent does not replace implicitly: delete it, then apply",
                    plan.changes
                        .iter()
                        .filter(|c| c.requires_replacement)
                        .map(|c| c.path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
            Action::Apply => retry(|| p.apply(ctx, &v.spec)).await.map(Some),
            Action::Delete => retry(|| p.delete(ctx, &v.spec)).await.map(Some),
        };
        (Some(plan), outcome.map_err(Failure::Provider))
    }

    /// The policy's `protected` rules on the resource as the provider observed
    /// it while planning, not only on the spec the control plane sent (whose
    /// tags it chose): before a delete, whether the resource is protected;
    /// before an apply, whether the apply would remove or change a protecting
    /// tag or label (which would let a later delete through).
    async fn check_protection(&self, v: &Verified, plan: &Plan) -> Result<(), Failure> {
        // Decided and its record queued under the policy's read lock, as at
        // receipt: a reload's record is either before this decision or after.
        let queued = self.policy.decide_with(|loaded| {
            let decision = match v.action {
                Action::Delete => {
                    // None: already gone, nothing to protect.
                    let observed = plan.changes.iter().find_map(|c| c.from.as_ref())?;
                    loaded
                        .policy
                        .protection_observed(v.spec.kind(), v.spec.name(), observed)
                }
                Action::Apply => loaded.policy.protection_removed(v.spec.kind(), v.spec.name(), plan),
                Action::Plan => None,
            };
            let d @ Decision::Deny { .. } = decision? else {
                return None;
            };
            let mut detail = decision_detail(&d, &loaded.sha256);
            detail["observed"] = json!(true);
            Some((self.audit.submit(Event::new("policy.decision", Some(&v.id), detail)), d))
        });
        let Some((record, d)) = queued else {
            return Ok(());
        };
        let unavailable = |e: byoc_audit::AuditError| Failure::AuditUnavailable(byoc_errors::chain(&e));
        record.map_err(unavailable)?.await.map_err(unavailable)?;
        let Decision::Deny { rule, message, field } = d else {
            return Ok(());
        };
        Err(Failure::Refused {
            code: "policy_denied",
            rule,
            message: format!("{message}; checked on the resource as it is in the cloud"),
            field,
        })
    }
}

/// Retries throttled and transient errors with jittered exponential backoff,
/// honouring the cloud's retry-after.
async fn retry<T, F, Fut>(f: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    f.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(20))
            .with_max_times(MAX_RETRIES)
            .with_jitter(),
    )
    .sleep(tokio::time::sleep)
    .when(ProviderError::is_retryable)
    .adjust(|e, d| match e {
        ProviderError::Throttled { retry_after: Some(ra) } => Some(d.map_or(*ra, |d| d.max(*ra))),
        _ => d,
    })
    .notify(|e, d| warn!(error = %e, retry_in_ms = d.as_millis() as u64, "retrying provider call"))
    .await
}

/// Why an operation did not succeed.
enum Failure {
    Provider(ProviderError),
    /// The audit log could not record the start: nothing was done.
    AuditUnavailable(String),
    Deadline(Duration),
    /// Cancelled by the control plane. Work the cloud had already accepted
    /// goes on there; a later apply or delete converges from it.
    Cancelled,
    /// The approval hold could not be kept on disk: nothing was done.
    HoldUnavailable(String),
    /// The agent's task running the operation panicked (a bug). Cloud calls
    /// it made before may have taken effect: the outcome is unknown, and a
    /// later apply or delete converges from whatever is there.
    Panicked(String),
    /// Refused after acceptance: by the policy (on what the provider observed,
    /// or when approved), or by the local approval (rejected, expired, stale).
    Refused {
        code: &'static str,
        rule: String,
        message: String,
        field: String,
    },
}

fn to_result(
    v: &Verified,
    plan: Option<Plan>,
    outcome: Result<Option<Outputs>, Failure>,
    now_ms: i64,
) -> OperationResult {
    let plan = plan.map(|p| plan_to_wire(&p)).unwrap_or_default();
    let mut r = OperationResult {
        result_seq: 0,
        operation_id: v.id.clone(),
        sequence: v.sequence,
        outcome: Outcome::Succeeded as i32,
        outputs: None,
        plan,
        problem: None,
        finished_at_unix_ms: now_ms,
    };
    let failure = match outcome {
        Ok(out) => {
            r.outputs = out.map(outputs_to_wire);
            return r;
        }
        Err(f) => f,
    };
    let mut rule = String::new();
    let (outcome, code, message, field, retry_after_ms) = match failure {
        Failure::Provider(e) => {
            let (field, retry) = match &e {
                ProviderError::InvalidSpec { field, .. } => (field.clone(), 0),
                ProviderError::Throttled { retry_after } => {
                    (String::new(), retry_after.map_or(0, |d| d.as_millis() as u64))
                }
                _ => (String::new(), 0),
            };
            (Outcome::Failed, e.code(), e.to_string(), field, retry)
        }
        Failure::AuditUnavailable(e) => (
            Outcome::Failed,
            "audit_unavailable",
            format!("the audit log cannot record: {e}; the agent acts on nothing it cannot record"),
            String::new(),
            0,
        ),
        Failure::Deadline(d) => (
            Outcome::Failed,
            "deadline_exceeded",
            format!(
                "the operation did not finish within its deadline of {}",
                humantime::format_duration(d)
            ),
            String::new(),
            0,
        ),
        Failure::Cancelled => (
            Outcome::Cancelled,
            "cancelled",
            "cancelled by the control plane".to_string(),
            String::new(),
            0,
        ),
        Failure::Panicked(why) => (
            Outcome::Failed,
            "internal",
            format!(
                "the agent failed while running this operation ({why}); calls already made to the cloud may have \
                 taken effect: apply or delete again to converge"
            ),
            String::new(),
            0,
        ),
        Failure::HoldUnavailable(e) => (
            Outcome::Failed,
            "approval_unavailable",
            format!("the agent cannot keep this operation's approval hold on disk: {e}; nothing was done"),
            String::new(),
            0,
        ),
        Failure::Refused {
            code,
            rule: r,
            message,
            field,
        } => {
            rule = r;
            (Outcome::Refused, code, message, field, 0)
        }
    };
    r.outcome = outcome as i32;
    r.problem = Some(pb::Problem {
        code: code.to_string(),
        message,
        field,
        rule,
        retry_after_ms,
    });
    r
}

/// The text of a panic's payload (a `&str` or `String`), else a placeholder.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p
            .downcast::<&'static str>()
            .map_or_else(|_| "a panic without a message".to_string(), |s| (*s).to_string()),
    }
}

pub fn plan_to_wire(p: &Plan) -> Vec<pb::Change> {
    let kind = match p.summary {
        PlanSummary::Create => "create",
        PlanSummary::Update => "update",
        PlanSummary::Replace => "replace",
        PlanSummary::Delete => "delete",
        PlanSummary::NoChange => "none",
    };
    p.changes
        .iter()
        .map(|c| pb::Change {
            path: c.path.clone(),
            from_json: c.from.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            to_json: c.to.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            requires_replacement: c.requires_replacement,
            kind: kind.to_string(),
        })
        .collect()
}

fn outputs_to_wire(o: Outputs) -> pb::Outputs {
    pb::Outputs {
        resource_id: o.resource_id,
        status: o.status,
        endpoints: o.endpoints.into_iter().collect(),
        secret_refs: o.secret_refs.into_iter().collect(),
        attributes: o.attributes.into_iter().collect(),
    }
}

/// Why a cloud call was not made: its record could not be made durable.
#[derive(Debug, thiserror::Error)]
#[error("audit log unavailable")]
struct AuditUnavailable(#[source] byoc_audit::AuditError);

/// What a provider reaches of the agent during one operation.
struct Hooks<'a> {
    audit: &'a AuditLog,
    session: &'a SessionSender,
    op_id: &'a str,
    /// Last progress sent: (phase, percent, when). Providers may report on every
    /// poll; the control plane hears of a change of phase, of 5 points, or once
    /// a second.
    last: Mutex<Option<(String, i32, std::time::Instant)>>,
    /// Cloud calls made, with their request ids, for the outcome's audit entry.
    calls: Mutex<Calls>,
}

/// The calls of one operation: every mutating call, and read-only ones up to
/// a bound (an operation that polls for minutes makes many).
#[derive(Default)]
struct Calls {
    listed: Vec<serde_json::Value>,
    read_only_left_out: u64,
}

const MAX_LISTED_READS: usize = 32;

impl Calls {
    fn add(&mut self, call: &ProviderCall, request_id: &str, error: Option<&str>) {
        let reads = self.listed.iter().filter(|c| c["mutating"] == false).count();
        if !call.mutating && reads >= MAX_LISTED_READS {
            self.read_only_left_out += 1;
            return;
        }
        let mut c = json!({ "action": call.action, "resource": call.resource, "mutating": call.mutating, "request_id": request_id });
        if let Some(e) = error {
            c["error"] = json!(e);
        }
        self.listed.push(c);
    }

    fn to_json(&self) -> serde_json::Value {
        json!({ "made": self.listed, "read_only_not_listed": self.read_only_left_out })
    }
}

#[async_trait]
impl CallHooks for Hooks<'_> {
    async fn before_call(&self, call: &ProviderCall) -> Result<(), byoc_provider::BoxError> {
        let ev = Event::new(
            "provider.call",
            Some(self.op_id),
            json!({ "action": call.action, "resource": call.resource, "mutating": call.mutating }),
        );
        self.audit
            .record(ev)
            .await
            .map(|_| ())
            .map_err(|e| Box::new(AuditUnavailable(e)) as byoc_provider::BoxError)
    }

    fn called(&self, call: &ProviderCall, request_id: &str, error: Option<&str>) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(call, request_id, error);
    }

    fn progress(&self, phase: &str, message: &str, percent: Option<u8>) {
        let percent = percent.map_or(-1, i32::from);
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((p, pc, at)) = last.as_ref()
                && p == phase
                && (percent - pc).abs() < 5
                && at.elapsed() < Duration::from_secs(1)
            {
                return;
            }
            *last = Some((phase.to_string(), percent, std::time::Instant::now()));
        }
        self.session.try_send(AgentMessage {
            body: Some(agent_message::Body::Progress(OperationProgress {
                operation_id: self.op_id.to_string(),
                phase: phase.to_string(),
                message: message.to_string(),
                percent,
            })),
        });
    }
}
