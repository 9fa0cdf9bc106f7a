//! The in-process tier: the agent's real executor, outbox, journal and audit
//! log over the simulated cloud, in one process, under paused tokio time.
//! No socket and no control plane: a result is what the outbox sends on the
//! session's queue, and the evidence is what a user would look at (the audit
//! log, the simulated cloud's resources, the result's problem code).
//!
//! Paused time: the simulated cloud and the agent share a clock that moves
//! only with tokio's. Tokio's own auto-advance (jump to the next timer when
//! idle) would also jump while the agent waits for the audit log's fsync on
//! its writer thread, straight to the operation's deadline; so the rig holds
//! auto-advance off and a driver task moves time at a fixed rate instead
//! ([`STEP`] of virtual time per millisecond of real time): an hour in the
//! cloud takes a third of a second here, whatever the disk does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use byoc_agent::config::ExecutorConfig;
use byoc_agent::executor::{Executor, Parts};
use byoc_agent::journal::Journal;
use byoc_agent::outbound::SessionSender;
use byoc_agent::outbox::{Cmd, Outbox};
use byoc_audit::{AuditLog, Options};
use byoc_gate::policy::{Loaded, PolicyHandle};
use byoc_gate::{Clock, TokioClock, Verified};
use byoc_proto::agent::v1::{
    self as pb, AgentMessage, Operation, OperationProgress, OperationResult, Outcome, agent_message,
};
use byoc_provider_sim::{Faults, ResourceStatus, SimCloud, SimConfig};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::mpsc;

/// 2023-11-14T22:13:20Z: the clock's start.
const START_MS: i64 = 1_700_000_000_000;
/// Virtual time per millisecond of real time.
const STEP: Duration = Duration::from_secs(10);

/// Moves paused time by [`STEP`] every millisecond. While one of its blocking
/// sleeps runs, tokio does not auto-advance (a blocking task in flight
/// inhibits it on a current-thread runtime), and one is always in flight.
fn drive_time() {
    tokio::spawn(async {
        loop {
            let _ = tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1))).await;
            tokio::time::advance(STEP).await;
        }
    });
}

struct Rig {
    dir: TempDir,
    executor: Arc<Executor>,
    rx: mpsc::Receiver<AgentMessage>,
    sim: Arc<SimCloud>,
    clock: Arc<TokioClock>,
    /// Progress seen while waiting for results, oldest first.
    progress: Vec<OperationProgress>,
}

impl Rig {
    /// An executor over a simulated cloud whose changes take `cloud_delay`,
    /// with the given deadline and policy (None: the default policy).
    async fn new(cloud_delay: Duration, deadline: Duration, policy: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        let clock = Arc::new(TokioClock::starting_at(START_MS));
        drive_time();
        let mut sim_cfg = SimConfig::new(data.join("sim")).with_delays(cloud_delay);
        sim_cfg.poll_interval = Duration::from_secs(5);
        let sim = Arc::new(SimCloud::open_with_clock(sim_cfg, clock.clone()).unwrap());
        let (signer, _) = byoc_audit::load_or_create_key(&data.join("audit.key"), "byoc-agent/audit/agt-test").unwrap();
        let audit = AuditLog::open(
            &data.join("audit"),
            signer,
            Options {
                checkpoint_every: 1000,
                checkpoint_interval: Duration::from_secs(24 * 3600),
            },
        )
        .unwrap();
        let (journal, _) = Journal::open(&data.join("journal.log")).unwrap();
        let (fatal, _fatal_rx) = mpsc::unbounded_channel();
        let (outbox, _) = Outbox::start(journal, Default::default(), 0, 0, fatal);
        let policy = match policy {
            None => Loaded::default_policy(),
            Some(text) => {
                let path = data.join("policy.toml");
                std::fs::write(&path, text).unwrap();
                Loaded::load(Some(&path)).unwrap()
            }
        };
        let (tx, rx) = mpsc::channel(4096);
        let session = SessionSender::default();
        session.set(Some(tx.clone()));
        outbox.send(Cmd::Session(Some(tx)));
        byoc_gate::approval::prepare(&data).unwrap();
        let executor = Executor::new(
            Parts {
                provider: sim.clone(),
                audit,
                outbox,
                session,
                policy: Arc::new(PolicyHandle::new(policy)),
                data_dir: data,
                clock: clock.clone(),
            },
            &ExecutorConfig {
                max_concurrent_operations: 4,
                operation_deadline: deadline,
            },
        );
        Self {
            dir,
            executor,
            rx,
            sim,
            clock,
            progress: Vec::new(),
        }
    }

    fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    /// Runs an operation, as the intake does once it is accepted.
    fn spawn(
        &self,
        seq: u64,
        action: pb::Action,
        kind: pb::ResourceKind,
        spec: &str,
        approval: Option<&str>,
    ) -> String {
        let op = Operation {
            id: format!("op-{seq}"),
            idempotency_key: format!("key-{seq}"),
            sequence: seq,
            action: action as i32,
            kind: kind as i32,
            spec_json: spec.into(),
            target: Some(pb::Target {
                cloud: "sim".into(),
                account: "acct-1".into(),
                region: "sim-west-1".into(),
            }),
            ..Default::default()
        };
        let v: Verified = byoc_gate::checks::decode(op).unwrap();
        let id = v.id.clone();
        self.executor.spawn(v, false, approval.map(str::to_string));
        id
    }

    /// The next message matching `f`, keeping the progress seen on the way.
    /// Fails on a result it was not waiting for, and after a week of
    /// virtual time (a minute of real time).
    async fn next<T>(&mut self, what: &str, mut f: impl FnMut(&AgentMessage) -> Option<T>) -> T {
        let week = Duration::from_secs(7 * 24 * 3600);
        loop {
            let msg = tokio::time::timeout(week, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within a week of virtual time"))
                .expect("the session queue closed");
            if let Some(t) = f(&msg) {
                return t;
            }
            match msg.body {
                Some(agent_message::Body::Progress(p)) => self.progress.push(p),
                Some(agent_message::Body::Result(r)) => panic!("waiting for {what}, got {r:?}"),
                _ => {}
            }
        }
    }

    async fn result_of(&mut self, op_id: &str) -> OperationResult {
        let id = op_id.to_string();
        self.next(&format!("result of {op_id}"), |m| match &m.body {
            Some(agent_message::Body::Result(r)) if r.operation_id == id => Some(r.clone()),
            _ => None,
        })
        .await
    }

    /// The audit entries of `op_id`, as (kind, detail), in log order.
    fn audit_of(&self, op_id: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        byoc_audit::export::for_each_entry(&self.audit_dir(), |e, _| {
            if e.get("op").and_then(Value::as_str) == Some(op_id) {
                out.push((
                    e["kind"].as_str().unwrap_or_default().to_string(),
                    e.get("detail").cloned().unwrap_or(Value::Null),
                ));
            }
            Ok(())
        })
        .unwrap();
        out
    }

    fn resources(&self) -> Vec<byoc_provider_sim::ResourceRecord> {
        byoc_provider_sim::list_resources_at(self.sim.state_dir(), self.clock.now()).unwrap()
    }
}

const CLUSTER: &str = r#"{"name":"prod","kubernetes_version":"1.31"}"#;
const DATABASE: &str = r#"{"name":"orders","engine":"postgres","version":"16","size":"small","storage_gb":20}"#;
const DAY: Duration = Duration::from_secs(24 * 3600);

fn problem_code(r: &OperationResult) -> &str {
    r.problem.as_ref().map_or("", |p| p.code.as_str())
}

#[tokio::test(start_paused = true)]
async fn a_create_that_takes_ten_minutes_in_the_cloud_is_audited_and_converges_in_no_real_time() {
    let mut rig = Rig::new(Duration::from_secs(600), 30 * DAY, None).await;
    let real = std::time::Instant::now();
    let id = rig.spawn(1, pb::Action::Apply, pb::ResourceKind::Cluster, CLUSTER, None);
    let r = rig.result_of(&id).await;
    assert_eq!(Outcome::try_from(r.outcome), Ok(Outcome::Succeeded), "{r:?}");
    assert!(
        rig.clock.now_ms() - START_MS >= 600_000,
        "the cloud's ten minutes passed"
    );
    assert!(
        real.elapsed() < Duration::from_secs(20),
        "in paused time: {:?}",
        real.elapsed()
    );

    // The cloud has the cluster, active.
    let res = rig.resources();
    assert_eq!(res.len(), 1, "{res:?}");
    assert_eq!((res[0].name.as_str(), res[0].status), ("prod", ResourceStatus::Active));

    // Progress went out while it was creating, with a percentage.
    assert!(
        rig.progress
            .iter()
            .any(|p| p.phase == "creating" && (0..100).contains(&p.percent)),
        "{:?}",
        rig.progress
    );

    // The log: started, the create call recorded before it was made, the
    // outcome last, naming the call.
    let kinds: Vec<String> = rig.audit_of(&id).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("operation.started"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("operation.finished"),
        "{kinds:?}"
    );
    let entries = rig.audit_of(&id);
    let create = entries
        .iter()
        .position(|(k, d)| k == "provider.call" && d["action"] == "sim:CreateCluster")
        .expect("the create call is audited");
    assert!(create < entries.len() - 1);
    let finished = &entries.last().unwrap().1;
    assert_eq!(finished["outcome"], "OUTCOME_SUCCEEDED");
    let made = finished["calls"]["made"].as_array().unwrap();
    assert!(
        made.iter()
            .any(|c| c["action"] == "sim:CreateCluster" && c["mutating"] == true)
    );
}

#[tokio::test(start_paused = true)]
async fn an_operation_still_running_at_its_deadline_fails_and_says_so() {
    let mut rig = Rig::new(Duration::from_secs(2 * 3600), Duration::from_secs(30 * 60), None).await;
    let id = rig.spawn(1, pb::Action::Apply, pb::ResourceKind::Cluster, CLUSTER, None);
    let r = rig.result_of(&id).await;
    assert_eq!(Outcome::try_from(r.outcome), Ok(Outcome::Failed), "{r:?}");
    assert_eq!(problem_code(&r), "deadline_exceeded");
    assert!(r.problem.unwrap().message.contains("30m"));
    // Recorded as failed; the cloud goes on creating (a later apply converges).
    let finished = rig.audit_of(&id).pop().unwrap();
    assert_eq!(
        (finished.0.as_str(), &finished.1["outcome"]),
        ("operation.finished", &Value::from("OUTCOME_FAILED"))
    );
    assert_eq!(rig.resources()[0].status, ResourceStatus::Creating);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_stops_a_running_operation_and_it_ends_cancelled() {
    let mut rig = Rig::new(DAY, 30 * DAY, None).await;
    let id = rig.spawn(1, pb::Action::Apply, pb::ResourceKind::Cluster, CLUSTER, None);
    let op = id.clone();
    rig.next("progress while creating", |m| match &m.body {
        Some(agent_message::Body::Progress(p)) if p.operation_id == op && p.phase == "creating" => Some(()),
        _ => None,
    })
    .await;
    assert!(rig.executor.cancel(&id), "it is running");
    let r = rig.result_of(&id).await;
    assert_eq!(Outcome::try_from(r.outcome), Ok(Outcome::Cancelled), "{r:?}");
    assert_eq!(problem_code(&r), "cancelled");
    assert!(!rig.executor.is_in_flight(&id));
}

#[tokio::test(start_paused = true)]
async fn throttling_and_transient_errors_are_retried_until_the_operation_succeeds() {
    let mut rig = Rig::new(Duration::from_secs(60), 30 * DAY, None).await;
    rig.sim
        .set_faults(&Faults {
            throttle_next: 3,
            fail_next: 2,
            ..Default::default()
        })
        .unwrap();
    let id = rig.spawn(1, pb::Action::Apply, pb::ResourceKind::Cluster, CLUSTER, None);
    let r = rig.result_of(&id).await;
    assert_eq!(Outcome::try_from(r.outcome), Ok(Outcome::Succeeded), "{r:?}");
    // Every fault was consumed, and each failed call is in the outcome's record.
    assert_eq!(
        byoc_provider_sim::read_faults(rig.sim.state_dir()).unwrap(),
        Faults::default()
    );
    let finished = rig.audit_of(&id).pop().unwrap().1;
    let failed = finished["calls"]["made"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("error").is_some())
        .count();
    assert_eq!(failed, 5, "{finished}");
}

#[tokio::test(start_paused = true)]
async fn a_delete_held_for_approval_is_refused_when_its_window_closes_and_the_database_stays() {
    // The default policy holds database deletes for a local approval (1 h).
    let mut rig = Rig::new(Duration::from_secs(60), 30 * DAY, None).await;
    let created = rig.spawn(1, pb::Action::Apply, pb::ResourceKind::Database, DATABASE, None);
    assert_eq!(
        Outcome::try_from(rig.result_of(&created).await.outcome),
        Ok(Outcome::Succeeded)
    );
    let held_at = rig.clock.now_ms();
    let id = rig.spawn(
        2,
        pb::Action::Delete,
        pb::ResourceKind::Database,
        DATABASE,
        Some("default.database_delete_needs_approval"),
    );
    let op = id.clone();
    rig.next("awaiting approval", |m| match &m.body {
        Some(agent_message::Body::Progress(p)) if p.operation_id == op && p.phase == "awaiting_approval" => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(rig.executor.held_ids(), vec![id.clone()]);
    let r = rig.result_of(&id).await;
    assert_eq!(Outcome::try_from(r.outcome), Ok(Outcome::Refused), "{r:?}");
    assert_eq!(problem_code(&r), "approval_expired");
    assert!(
        rig.clock.now_ms() - held_at >= 3600 * 1000,
        "refused only once the hour passed"
    );
    // Nothing was deleted, and the log says why.
    assert_eq!(rig.resources().len(), 1);
    assert!(
        rig.audit_of(&id)
            .iter()
            .all(|(k, d)| !(k == "provider.call" && d["mutating"] == true))
    );
    assert!(rig.executor.held_ids().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_delete_of_a_resource_protected_in_the_cloud_is_refused_on_what_was_observed() {
    let policy = "[protected]\nnames = [\"prod\"]\n";
    let mut rig = Rig::new(Duration::from_secs(60), 30 * DAY, Some(policy)).await;
    let id = rig.spawn(1, pb::Action::Delete, pb::ResourceKind::Cluster, CLUSTER, None);
    // Not there: nothing to protect, the delete succeeds (a no-op).
    assert_eq!(
        Outcome::try_from(rig.result_of(&id).await.outcome),
        Ok(Outcome::Succeeded)
    );
    let created = rig.spawn(2, pb::Action::Apply, pb::ResourceKind::Cluster, CLUSTER, None);
    assert_eq!(
        Outcome::try_from(rig.result_of(&created).await.outcome),
        Ok(Outcome::Succeeded)
    );
    let id = rig.spawn(3, pb::Action::Delete, pb::ResourceKind::Cluster, CLUSTER, None);
    let r = rig.result_of(&id).await;
    assert_eq!(Outcome::try_from(r.outcome), Ok(Outcome::Refused), "{r:?}");
    assert_eq!(problem_code(&r), "policy_denied");
    let decision = rig
        .audit_of(&id)
        .into_iter()
        .find(|(k, _)| k == "policy.decision")
        .expect("the decision is audited");
    assert_eq!(
        (decision.1["decision"].as_str(), decision.1["observed"].as_bool()),
        (Some("deny"), Some(true))
    );
    assert_eq!(rig.resources().len(), 1, "the cluster is still there");
}
