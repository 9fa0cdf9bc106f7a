//! `byoc-agent run`: opens the audit log and journal, resumes unfinished
//! operations, and keeps one session with the control plane alive, reconnecting
//! with capped, jittered exponential backoff.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use backon::BackoffBuilder as _;
use byoc_audit::{AuditLog, Event};
use byoc_proto::agent::v1::agent_service_client::AgentServiceClient;
use byoc_proto::agent::v1::{OperationResult, Outcome};
use byoc_provider::Provider;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{error, info, warn};

use crate::checks::{self, Refusal, Verified};
use crate::config::{Config, ProviderConfig};
use crate::connect::ServerChain;
use crate::executor::Executor;
use crate::identity::Identity;
use crate::journal::Journal;
use crate::now_ms;
use crate::outbox::{Cmd, Outbox, OutboxStats};
use crate::policy::{Decision, Loaded, PolicyHandle, Request};
use crate::session::{self, SessionSender};
use crate::status::{Status, StatusHandle};
use crate::trust;
use rustls_pki_types::{ServerName, UnixTime};

/// The running agent: what every task shares.
pub struct Agent {
    pub cfg: Config,
    pub agent_id: String,
    pub operation_key: Vec<u8>,
    pub audit: AuditLog,
    pub journal: Journal,
    pub outbox: Outbox,
    pub executor: Arc<Executor>,
    pub session: SessionSender,
    pub status: StatusHandle,
    /// Dials the control plane (directly or through the proxy).
    pub dialer: crate::connect::Dialer,
    /// The customer's policy in force (swapped whole on SIGHUP).
    pub policy: Arc<PolicyHandle>,
    identity: Mutex<Identity>,
    highest_seq: AtomicU64,
    outbox_stats: tokio::sync::watch::Receiver<OutboxStats>,
    /// The kill switch as last audited. Starts as "not paused", so a pause set
    /// while the agent was stopped is audited at start.
    pause_seen: tokio::sync::Mutex<Option<crate::pause::Pause>>,
}

impl Agent {
    pub fn highest_seq(&self) -> u64 {
        self.highest_seq.load(Ordering::Acquire)
    }

    pub fn set_highest_seq(&self, seq: u64) {
        self.highest_seq.fetch_max(seq, Ordering::AcqRel);
    }

    pub fn outbox_stats(&self) -> OutboxStats {
        *self.outbox_stats.borrow()
    }

    /// Who sends operations, as the audit log records it: the control plane
    /// this agent enrolled with, the CAs it trusts for it and the key that
    /// signs operations (SHA-256 fingerprints).
    pub fn actor(&self) -> serde_json::Value {
        let sha = |b: &[u8]| hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b));
        let id = self.identity();
        json!({
            "control_plane": self.cfg.control_plane.clone().unwrap_or_else(|| id.enrollment.control_plane.clone()),
            "ca_sha256": crate::trust::fingerprints(&id.trust),
            "operation_key_sha256": sha(&self.operation_key),
        })
    }

    fn identity(&self) -> std::sync::MutexGuard<'_, Identity> {
        self.identity.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn control_plane_url(&self) -> String {
        self.cfg
            .control_plane
            .clone()
            .unwrap_or_else(|| self.identity().enrollment.control_plane.clone())
    }

    pub fn identity_client_config(&self) -> Result<rustls::ClientConfig, byoc_proto::transport::TransportError> {
        self.identity().client_config()
    }

    /// How often to check whether the certificate is due for renewal.
    pub fn renew_check_interval(&self) -> Duration {
        let e = &self.identity().enrollment;
        let lifetime = (e.certificate_not_after_unix_ms - e.certificate_issued_unix_ms).max(10_000) as u64;
        Duration::from_millis((lifetime / 20).clamp(500, 60_000))
    }

    /// Renews the client certificate once two thirds of its lifetime have
    /// passed, or now with `force`. `server` is the chain the control plane
    /// presented on this channel: the CAs a renewal offers are judged by it.
    pub async fn maybe_renew(&self, client: &mut AgentServiceClient<Channel>, server: &ServerChain, force: bool) {
        let (issued, not_after) = {
            let e = &self.identity().enrollment;
            (e.certificate_issued_unix_ms, e.certificate_not_after_unix_ms)
        };
        let now = now_ms();
        if !force && now < issued + (not_after - issued) * 2 / 3 {
            return;
        }
        match session::renew(client).await {
            Ok((key_pem, resp)) => {
                let stored = self.identity().store_renewal(
                    &key_pem,
                    resp.certificate_der,
                    resp.certificate_not_after_unix_ms,
                    now,
                );
                match stored {
                    Ok(()) => {
                        info!(
                            not_after_unix_ms = resp.certificate_not_after_unix_ms,
                            "client certificate renewed"
                        );
                        self.status
                            .update(|s| s.certificate_not_after_unix_ms = resp.certificate_not_after_unix_ms);
                        let _ = self
                            .audit
                            .record(Event::new(
                                "certificate.renewed",
                                None,
                                json!({ "not_after_unix_ms": resp.certificate_not_after_unix_ms }),
                            ))
                            .await;
                    }
                    Err(e) => error!(error = %e, "cannot store the renewed certificate"),
                }
                self.consider_trust(&resp.ca_certificates_der, server, "renew").await;
            }
            Err(e) => warn!(error = %e, "certificate renewal failed; will retry"),
        }
    }

    /// Takes the CAs the control plane offered on this session (in `Welcome`
    /// or `RenewResponse`) if [`trust::accept_offer`] allows; either way the
    /// decision is audited (`trust.updated` / `trust.refused`).
    pub async fn consider_trust(&self, offered: &[Vec<u8>], server: &ServerChain, via: &str) {
        if offered.is_empty() {
            return;
        }
        let url = self.control_plane_url();
        let Some(name) = crate::connect::parse_url(&url)
            .ok()
            .and_then(|(host, _)| ServerName::try_from(host).ok())
        else {
            return;
        };
        let (before, decision) = {
            let id = self.identity();
            let decision = trust::accept_offer(&id.trust, offered, &server.get(), &name, UnixTime::now());
            (trust::fingerprints(&id.trust), decision)
        };
        let event = match decision {
            Ok(None) => return,
            Ok(Some(bundle)) => {
                let after = trust::fingerprints(bundle.certs());
                if let Err(e) = self.identity().store_trust(bundle) {
                    error!(error = %e, "cannot store the control plane's new CAs; keeping the old ones");
                    return;
                }
                warn!(via, trusted = ?after, before = ?before, "the control plane's CAs changed (CA rotation)");
                Event::new(
                    "trust.updated",
                    None,
                    json!({ "via": via, "ca_sha256": after, "previous_ca_sha256": before }),
                )
            }
            Err(e) => {
                warn!(via, error = %e, "refused the CAs the control plane offered");
                Event::new(
                    "trust.refused",
                    None,
                    json!({ "via": via, "reason": e.to_string(), "ca_sha256": before }),
                )
            }
        };
        let _ = self.audit.record(event).await;
    }

    /// True when the client certificate was not issued by the CA the control
    /// plane now issues with (first of the trusted CAs): during a CA rotation,
    /// renew at once rather than at two thirds of the lifetime.
    pub fn certificate_from_another_ca(&self) -> bool {
        let id = self.identity();
        id.trust
            .first()
            .is_some_and(|active| !trust::issued_by(&id.cert, active))
    }

    /// The CAs this agent trusts, for messages.
    pub fn trusted_cas(&self) -> Vec<String> {
        trust::fingerprints(&self.identity().trust)
    }

    /// Reads the kill switch and audits it if it changed since last seen
    /// (`agent.paused` with who and why, or `agent.resumed`). Called for each
    /// operation and twice a second, so even a short pause that refused an
    /// operation is in the log before that refusal.
    pub async fn observe_pause(&self) -> Option<crate::pause::Pause> {
        let now = crate::pause::read(&self.cfg.data_dir);
        let mut seen = self.pause_seen.lock().await;
        if *seen != now {
            let ev = match &now {
                Some(p) => Event::new(
                    "agent.paused",
                    None,
                    json!({ "by": p.by, "reason": p.reason, "since_unix_ms": p.since_unix_ms }),
                )
                .with_actor(json!({ "local_user": p.by })),
                None => Event::new("agent.resumed", None, json!({})),
            };
            // If this cannot be recorded, the next look tries again; the switch
            // itself applies either way.
            if self.audit.record(ev).await.is_ok() {
                warn!(paused = now.is_some(), "local kill switch changed");
                seen.clone_from(&now);
            }
        }
        now
    }

    /// Asks the policy in force about `v` and queues the `policy.decision`
    /// record. It is made durable by the record the caller awaits next
    /// (`operation.received` or `operation.refused`): the log is ordered, so
    /// no operation is accepted or refused before its decision is recorded.
    pub fn decide(&self, v: &Verified) -> Result<Decision, String> {
        self.policy.decide_with(|loaded| {
            let decision = loaded.policy.evaluate(&Request {
                action: v.action,
                region: v.op.target.as_ref().map(|t| t.region.as_str()),
                spec: &v.spec,
            });
            self.audit
                .record_before_next(decision_event(&v.op.id, &decision, &loaded.sha256))
                .map_err(|e| format!("cannot record the policy decision: {e}"))?;
            Ok(decision)
        })
    }

    /// Re-reads the policy file (SIGHUP). An invalid file is refused and the
    /// policy in force stays; a valid one replaces it, ordered after its
    /// `policy.reloaded` record.
    pub async fn reload_policy(&self) {
        let Some(path) = &self.cfg.policy else {
            info!("SIGHUP: no policy file is configured (agent.toml `policy`); the default policy stays in force");
            return;
        };
        let old = self.policy.current();
        match Loaded::load(Some(path)) {
            Err(e) => {
                let error = crate::connect::error_chain(&e);
                error!(%error, "policy reload refused; the policy in force stays");
                let _ = self
                    .audit
                    .record(Event::new(
                        "policy.reload_refused",
                        None,
                        json!({ "path": path, "error": error, "policy_sha256": old.sha256 }),
                    ))
                    .await;
            }
            Ok(new) => {
                let ev = Event::new(
                    "policy.reloaded",
                    None,
                    json!({ "path": path, "policy_sha256": new.sha256, "previous_sha256": old.sha256 }),
                );
                // The record is queued and the policy swapped with no decision
                // in between (`swap_with`), so every decision by the new policy
                // is after `policy.reloaded` in the log, and whoever has seen
                // that record gets decisions by the new policy. If the record
                // cannot be made durable the log is poisoned and no operation
                // runs under either policy (fail closed).
                let sha256 = new.sha256.clone();
                let pending = match self.policy.swap_with(new, || self.audit.submit(ev)) {
                    Ok(p) => p,
                    Err(e) => {
                        error!(error = %e, "cannot record the policy reload; the policy in force stays");
                        return;
                    }
                };
                match pending.await {
                    Ok(_) => info!(path = %path.display(), %sha256, "policy reloaded"),
                    Err(e) => {
                        error!(error = %e, "the policy reload could not be made durable; the audit log refuses every operation until it is writable")
                    }
                }
            }
        }
    }

    /// Refuses an operation: audited, then answered through the outbox.
    pub async fn refuse(&self, op: &byoc_proto::agent::v1::Operation, refusal: Refusal) -> Result<(), String> {
        let recorded = self
            .audit
            .record(Event::new(
                "operation.refused",
                Some(&op.id),
                json!({ "sequence": op.sequence, "code": refusal.code, "rule": refusal.rule, "message": refusal.message, "field": refusal.field }),
            ).with_actor(self.actor()))
            .await;
        if let Err(e) = recorded {
            return self
                .refuse_unaudited(
                    op,
                    Refusal::audit_unavailable(&e.to_string(), self.audit.dir()).with_trust(refusal.sequence_trusted),
                )
                .await;
        }
        warn!(op = %op.id, code = refusal.code, rule = %refusal.rule, message = %refusal.message, "operation refused");
        self.answer_refusal(op, refusal).await
    }

    /// Refuses an operation when the audit log cannot record: nothing is
    /// done, the refusal is journaled and sent, and the agent's own log says so.
    pub async fn refuse_unaudited(
        &self,
        op: &byoc_proto::agent::v1::Operation,
        refusal: Refusal,
    ) -> Result<(), String> {
        error!(op = %op.id, code = refusal.code, message = %refusal.message, "operation refused: the audit log cannot record");
        self.status.update(|s| s.last_error = Some(refusal.message.clone()));
        self.answer_refusal(op, refusal).await
    }

    async fn answer_refusal(&self, op: &byoc_proto::agent::v1::Operation, refusal: Refusal) -> Result<(), String> {
        // A refused operation that is genuinely ours is done with: record its
        // sequence so it is never taken again. A forged, misaddressed or replayed
        // one must not move the mark (a forged u64::MAX would lock the agent out).
        if refusal.sequence_trusted && op.sequence > self.highest_seq() {
            self.journal.seen(op.sequence).await.map_err(|e| e.to_string())?;
            self.set_highest_seq(op.sequence);
        }
        self.outbox.send(Cmd::Result(Box::new(OperationResult {
            result_seq: 0,
            operation_id: op.id.clone(),
            sequence: op.sequence,
            outcome: Outcome::Refused as i32,
            outputs: None,
            plan: Vec::new(),
            problem: Some(refusal.to_problem()),
            finished_at_unix_ms: now_ms(),
        })));
        Ok(())
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

async fn provider(cfg: &Config) -> anyhow::Result<Arc<dyn Provider>> {
    Ok(match &cfg.provider {
        ProviderConfig::Sim(sim) => {
            Arc::new(byoc_provider_sim::SimCloud::open(sim.clone()).context("opening the simulated cloud")?)
        }
        ProviderConfig::Aws(aws) => Arc::new(
            byoc_provider_aws::AwsCloud::connect(aws.clone())
                .await
                .map_err(|e| anyhow::anyhow!(e))
                .context("setting up the AWS provider")?,
        ),
    })
}

/// Runs the agent until SIGINT/SIGTERM or a fatal error.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let data = cfg.data_dir.clone();
    // An invalid policy is a startup error naming the file and line.
    let policy = Arc::new(PolicyHandle::new(Loaded::load(cfg.policy.as_deref())?));
    // Installed before anything else can take time: SIGHUP's default action
    // would end the agent.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let identity = Identity::load(&data)?;
    let dialer = crate::connect::Dialer::from_config(&cfg.connection)?;
    {
        let url = cfg.control_plane.as_ref().unwrap_or(&identity.enrollment.control_plane);
        info!(control_plane = %url, route = %dialer.describe(url), "dialing the control plane");
    }
    let audit = crate::auditlog::open(&data, &identity.enrollment.agent_id, &cfg.audit)?;
    let (journal, replayed) = Journal::open(&data.join("journal.log"))?;
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<String>();
    let (outbox, outbox_stats) = Outbox::start(
        journal.clone(),
        replayed.outbox.clone(),
        replayed.acked_result_seq,
        replayed.highest_result_seq,
        fatal_tx.clone(),
    );
    let session = SessionSender::default();
    let executor = Executor::new(
        crate::executor::Parts {
            provider: provider(&cfg).await?,
            audit: audit.clone(),
            outbox: outbox.clone(),
            session: session.clone(),
            policy: policy.clone(),
            data_dir: data.clone(),
        },
        &cfg.executor,
    );
    let status = StatusHandle::start(
        &data,
        Status {
            pid: std::process::id(),
            agent_id: identity.enrollment.agent_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            control_plane: cfg
                .control_plane
                .clone()
                .unwrap_or_else(|| identity.enrollment.control_plane.clone()),
            connection: "connecting".into(),
            since_unix_ms: now_ms(),
            certificate_not_after_unix_ms: identity.enrollment.certificate_not_after_unix_ms,
            results_unacknowledged: replayed.outbox.len(),
            ..Default::default()
        },
    );
    let agent = Arc::new(Agent {
        agent_id: identity.enrollment.agent_id.clone(),
        operation_key: identity.operation_key.clone(),
        identity: Mutex::new(identity),
        highest_seq: AtomicU64::new(replayed.highest_op_seq),
        cfg,
        audit,
        journal,
        outbox,
        executor,
        session,
        status,
        dialer,
        policy,
        outbox_stats,
        pause_seen: tokio::sync::Mutex::new(None),
    });
    agent
        .audit
        .record(Event::new(
            "agent.started",
            None,
            json!({ "version": env!("CARGO_PKG_VERSION"), "resuming": replayed.pending.len(), "unacknowledged_results": replayed.outbox.len() }),
        ))
        .await
        // Start anyway: connected, the agent refuses every operation and tells
        // the control plane why, which a stopped agent could not.
        .map_err(|e| error!(error = %e, "the audit log cannot record; every operation will be refused until it can"))
        .ok();
    {
        let p = agent.policy.current();
        agent
            .audit
            .record(Event::new(
                "policy.loaded",
                None,
                json!({ "path": p.path, "policy_sha256": p.sha256 }),
            ))
            .await
            .map_err(|e| error!(error = %e, "cannot record policy.loaded"))
            .ok();
        info!(path = ?p.path, sha256 = %p.sha256, "policy in force");
    }
    {
        let agent = agent.clone();
        let mut hangup = hangup;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                agent.reload_policy().await;
            }
        });
    }

    // Approval holds: only those of operations the journal still holds.
    crate::approval::prepare(&data).context("creating the approvals directory")?;
    let held: Vec<String> = replayed
        .pending
        .iter()
        .filter(|p| p.approval.is_some())
        .map(|p| p.op.id.clone())
        .collect();
    crate::approval::gc(&data, &held);

    // Resume what was accepted and not finished: the provider converges, and
    // what waited for approval waits again.
    for p in replayed.pending {
        match checks::resume(p.op.clone(), &agent.operation_key, &agent.agent_id) {
            Ok(v) => {
                info!(op = %v.op.id, awaiting_approval = p.approval.is_some(), "resuming operation");
                agent.executor.spawn(v, true, p.approval);
            }
            // Accepted once, not signed or undecodable now (an altered
            // journal, an agent downgrade): answer it rather than leave it
            // pending for ever.
            Err(r) => agent.refuse(&p.op, r).await.map_err(|e| anyhow::anyhow!(e))?,
        }
    }

    // Keep the status file's in-flight list current.
    {
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let now_paused = agent.observe_pause().await;
                let ids = agent.executor.in_flight_ids();
                let held = agent.executor.held_ids();
                let unacked = agent.outbox_stats().unacked;
                agent.status.update(|s| {
                    s.operations_in_flight = ids;
                    s.awaiting_approval = held;
                    s.results_unacknowledged = unacked;
                    s.paused = now_paused;
                });
            }
        });
    }

    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            shutdown.cancel();
        });
    }
    let conn = agent.clone();
    let conn_shutdown = shutdown.clone();
    let connection = tokio::spawn(async move { connection_loop(&conn, &conn_shutdown).await });

    let outcome = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        Some(reason) = fatal_rx.recv() => Err(anyhow::anyhow!(reason)),
    };
    shutdown.cancel();
    let _ = connection.await;
    agent.status.update(|s| s.connection = "stopped".into());
    agent.status.write(&crate::status::path(&agent.cfg.data_dir));
    let _ = agent
        .audit
        .record(Event::new(
            "agent.stopped",
            None,
            json!({ "error": outcome.as_ref().err().map(|e| e.to_string()) }),
        ))
        .await;
    // Sign everything recorded: a checkpoint at shutdown.
    if let Err(e) = agent.audit.close().await {
        tracing::error!(error = %e, "cannot write the shutdown checkpoint");
    }
    outcome
}

/// A session that lasted this long counts as healthy for the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

async fn connection_loop(agent: &Agent, shutdown: &CancellationToken) {
    let c = &agent.cfg.connection;
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(c.min_backoff)
        .with_max_delay(c.max_backoff)
        .with_jitter()
        .without_max_times();
    let mut backoff = builder.build();
    while !shutdown.is_cancelled() {
        let mut connected = false;
        let began = std::time::Instant::now();
        let result = session::run_session(agent, shutdown, &mut connected).await;
        // Start the backoff over only after a session that stayed up a while: a
        // control plane that welcomes and then breaks the session at once must
        // not be redialled in a tight loop.
        if connected && began.elapsed() >= HEALTHY_SESSION {
            backoff = builder.build();
        }
        let error = match result {
            Ok(session::Ended::Shutdown) => return,
            Ok(session::Ended::ByControlPlane) => "control plane closed the session".to_string(),
            Err(e @ session::SessionError::Connect(_)) if crate::connect::is_certificate_error(&e) => format!(
                "{}: the control plane's certificate does not chain to a CA this agent trusts (sha256 {}); \
                 if the control plane finished a CA rotation (`byoc-control ca finish`) while this agent was \
                 not connected, enroll the agent again with a new token",
                crate::connect::error_chain(&e),
                agent.trusted_cas().join(", ")
            ),
            Err(e) => crate::connect::error_chain(&e),
        };
        let wait = backoff.next().unwrap_or(c.max_backoff);
        warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "disconnected from the control plane");
        agent.status.update(|s| {
            s.connection = "disconnected".into();
            s.since_unix_ms = now_ms();
            s.last_error = Some(error.clone());
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("shutting down");
}
