//! `byoc-agent run`: opens what the agent keeps on disk, wires the parts
//! together and runs its named tasks until shutdown:
//!
//! | task | what it does |
//! |---|---|
//! | `connection` ([`crate::connection`]) | keeps one session alive; the session decodes and forwards to the intake |
//! | `outbox` ([`crate::outbox`]) | numbers, journals and (re)sends results |
//! | `executor` ([`crate::executor`]) | one task per operation, bounded |
//! | `status` ([`crate::status`]) | rewrites `status.json`; a ticker keeps its lists current and watches the kill switch |
//! | `policy-reload` ([`crate::reload`]) | SIGHUP |
//! | `audit-checkpoint` (in `byoc-audit`) | signs a checkpoint every interval |
//!
//! Shutdown is a [`CancellationToken`] (SIGINT/SIGTERM in [`run`]; a test's
//! own in [`run_until`]), and time comes from an injected [`Clock`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use byoc_audit::Event;
use byoc_gate::pause::Watcher;
use byoc_gate::policy::{Loaded, PolicyHandle};
use byoc_gate::{Clock, Gate, SystemClock};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Config;
use crate::credentials::Credentials;
use crate::dial::Dialer;
use crate::executor::Executor;
use crate::identity::Identity;
use crate::intake::Intake;
use crate::journal::Journal;
use crate::outbound::SessionSender;
use crate::outbox::{Outbox, OutboxStats};
use crate::session::Session;
use crate::status::{Status, StatusHandle};

/// Runs the agent until SIGINT/SIGTERM or a fatal error.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            shutdown.cancel();
        });
    }
    run_until(cfg, Arc::new(SystemClock), shutdown).await
}

/// Runs the agent until `shutdown` is cancelled or a fatal error.
pub async fn run_until(cfg: Config, clock: Arc<dyn Clock>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data = cfg.data_dir.clone();
    // An invalid policy is a startup error naming the file and line.
    let policy = Arc::new(PolicyHandle::new(Loaded::load(cfg.policy.as_deref())?));
    // Installed before anything else can take time: SIGHUP's default action
    // would end the agent.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let identity = Identity::load(&data)?;
    // One agent per data directory, held until the process ends: a second
    // one would fork the audit chain and run operations twice.
    let _lock = byoc_wal::DirLock::acquire(&data, "agent")?;
    let dialer = Dialer::from_config(&cfg.connection)?;
    let url = cfg
        .control_plane
        .clone()
        .unwrap_or_else(|| identity.enrollment.control_plane.clone());
    info!(control_plane = %url, route = %dialer.describe(&url), "dialing the control plane");
    let agent_id = identity.enrollment.agent_id.clone();
    let audit = crate::auditlog::open(&data, &agent_id, &cfg.audit)?;
    let (journal, replayed) = Journal::open(&crate::journal::path(&data))?;
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel();
    let (outbox, outbox_stats) = Outbox::start(
        journal.clone(),
        replayed.outbox.clone(),
        replayed.acked_result_seq,
        replayed.highest_result_seq,
        fatal_tx,
    );
    let sender = SessionSender::default();
    let provider = byoc_providers::open(&cfg.provider, clock.clone()).await?;
    let executor = Executor::new(
        crate::executor::Parts {
            provider,
            audit: audit.clone(),
            outbox: outbox.clone(),
            session: sender.clone(),
            policy: policy.clone(),
            data_dir: data.clone(),
            clock: clock.clone(),
        },
        &cfg.executor,
    );
    let status = StatusHandle::start(
        &data,
        Status {
            pid: std::process::id(),
            agent_id: agent_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            control_plane: url,
            connection: "connecting".into(),
            since_unix_ms: clock.now_ms(),
            certificate_not_after_unix_ms: identity.enrollment.certificate_not_after_unix_ms,
            results_unacknowledged: replayed.outbox.len(),
            ..Default::default()
        },
        clock.clone(),
    );
    let operation_key = identity.operation_key.clone();
    let credentials = Arc::new(Credentials::new(
        identity,
        cfg.control_plane.clone(),
        audit.clone(),
        status.clone(),
        clock.clone(),
    ));
    let pause = Arc::new(Watcher::new(&data, audit.clone()));
    let gate = Gate {
        agent_id: agent_id.clone(),
        target: cfg.target.clone(),
        operation_key,
        max_lifetime_ms: cfg.checks.max_operation_lifetime.as_millis() as i64,
        policy: policy.clone(),
        audit: audit.clone(),
        pause: pause.clone(),
        clock: clock.clone(),
    };
    let intake = Arc::new(Intake::new(
        gate,
        audit.clone(),
        journal,
        outbox.clone(),
        executor.clone(),
        sender.clone(),
        status.clone(),
        credentials.clone(),
        clock.clone(),
        replayed.highest_op_seq,
    ));

    audit
        .record(Event::new(
            "agent.started",
            None,
            json!({ "version": env!("CARGO_PKG_VERSION"), "resuming": replayed.pending.len(), "unacknowledged_results": replayed.outbox.len() }),
        ))
        .await
        // Start anyway: connected, the agent refuses every operation and tells
        // the control plane why, which a stopped agent could not.
        .map_err(|e| error!(error = %byoc_errors::Chain(&e), "the audit log cannot record; every operation will be refused until it can"))
        .ok();
    {
        let p = policy.current();
        audit
            .record(Event::new(
                "policy.loaded",
                None,
                json!({ "path": p.path, "policy_sha256": p.sha256 }),
            ))
            .await
            .map_err(|e| error!(error = %byoc_errors::Chain(&e), "cannot record policy.loaded"))
            .ok();
        info!(path = ?p.path, sha256 = %p.sha256, "policy in force");
    }
    tokio::spawn(crate::reload::on_hangup(
        hangup,
        cfg.policy.clone(),
        policy.clone(),
        audit.clone(),
        shutdown.clone(),
    ));

    // Approval holds: only those of operations the journal still holds.
    byoc_gate::approval::prepare(&data).context("creating the approvals directory")?;
    let held: Vec<String> = replayed
        .pending
        .iter()
        .filter(|p| p.approval.is_some())
        .map(|p| p.op.id.clone())
        .collect();
    byoc_gate::approval::gc(&data, &held);
    intake.resume(replayed.pending).await?;

    tokio::spawn(status_ticker(
        status.clone(),
        executor.clone(),
        pause,
        outbox_stats.clone(),
        shutdown.clone(),
    ));

    let session = Session {
        agent_id,
        target: cfg.target.clone(),
        dialer,
        credentials,
        intake,
        executor,
        outbox,
        outbox_stats,
        sender,
        audit: audit.clone(),
        status: status.clone(),
        clock,
    };
    let connection = {
        let shutdown = shutdown.clone();
        let c = cfg.connection.clone();
        tokio::spawn(async move { crate::connection::run(&session, &c, &shutdown).await })
    };

    let mut connection = connection;
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        Some(fatal) = fatal_rx.recv() => Err(anyhow::Error::new(fatal)),
        // The connection task ends only at shutdown. Ending otherwise (the
        // journal failed, or a panic) ends the agent with an error, so the
        // service manager restarts it: an agent that stays up without a
        // connection would look alive and do nothing.
        ended = &mut connection => match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the journal cannot record; stopping")),
            Err(e) => Err(anyhow::Error::new(e).context("the connection task failed")),
        },
    };
    shutdown.cancel();
    if !connection.is_finished() {
        let _ = connection.await;
    }
    status.update(|s| s.connection = "stopped".into());
    status.write(&crate::status::path(&data));
    let _ = audit
        .record(Event::new(
            "agent.stopped",
            None,
            json!({ "error": outcome.as_ref().err().map(|e| format!("{e:#}")) }),
        ))
        .await;
    // Sign everything recorded: a checkpoint at shutdown.
    if let Err(e) = audit.close().await {
        error!(error = %byoc_errors::Chain(&e), "cannot write the shutdown checkpoint");
    }
    outcome
}

/// Keeps the status file's lists current, and looks at the kill switch
/// twice a second (so that a change is audited even with no operation).
async fn status_ticker(
    status: StatusHandle,
    executor: Arc<Executor>,
    pause: Arc<Watcher>,
    outbox_stats: tokio::sync::watch::Receiver<OutboxStats>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let paused = pause.observe().await;
        let ids = executor.in_flight_ids();
        let held = executor.held_ids();
        let unacked = outbox_stats.borrow().unacked;
        status.update(|s| {
            s.operations_in_flight = ids;
            s.awaiting_approval = held;
            s.results_unacknowledged = unacked;
            s.paused = paused;
        });
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
