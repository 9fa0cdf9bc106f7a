//! One session with the control plane: hello, welcome, then operations in,
//! heartbeats, progress and results out, until the stream ends. The caller
//! (`run`) reconnects with backoff.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use byoc_audit::Event;
use byoc_proto::agent::v1::agent_service_client::AgentServiceClient;
use byoc_proto::agent::v1::{
    AgentMessage, ControlMessage, Heartbeat, Hello, OperationAccepted, RenewRequest, Target, agent_message,
    control_message,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{error, info, warn};

use crate::checks::{Checker, Refusal, Verified};
use crate::now_ms;
use crate::outbox::Cmd;
use crate::policy::Decision;
use crate::run::Agent;

/// The current session's outbound queue, if connected. Progress is best
/// effort; results go through the outbox, which resends.
#[derive(Clone, Default)]
pub struct SessionSender(Arc<Mutex<Option<mpsc::Sender<AgentMessage>>>>);

impl SessionSender {
    pub fn set(&self, tx: Option<mpsc::Sender<AgentMessage>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = tx;
    }

    pub fn try_send(&self, msg: AgentMessage) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.try_send(msg);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Connect(#[from] crate::connect::ConnectError),
    #[error("TLS: {0}")]
    Tls(#[from] byoc_proto::transport::TransportError),
    #[error("the control plane refused the session: {0}")]
    Refused(tonic::Status),
    #[error("session failed: {0}")]
    Stream(tonic::Status),
    #[error("the control plane broke the protocol: {0}")]
    Protocol(String),
    #[error("cannot record: {0}")]
    Durable(String),
}

/// How a session ended without error.
pub enum Ended {
    ByControlPlane,
    Shutdown,
}

/// Runs one session. Returns once it ends; `connected` is set once welcomed
/// (the caller resets its backoff if the session then lasted a while).
pub async fn run_session(
    agent: &Agent,
    shutdown: &tokio_util::sync::CancellationToken,
    connected: &mut bool,
) -> Result<Ended, SessionError> {
    let url = agent.control_plane_url();
    let tls = agent.identity_client_config()?;
    let (channel, server) = agent.dialer.channel_observed(&url, tls).await?;
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(byoc_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(byoc_proto::MAX_MESSAGE_BYTES);
    agent.maybe_renew(&mut client, &server, false).await;

    let (tx, rx) = mpsc::channel::<AgentMessage>(4096);
    let t = &agent.cfg.target;
    let hello = Hello {
        agent_id: agent.agent_id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        target: Some(Target {
            cloud: t.cloud.clone(),
            account: t.account.clone(),
            region: t.region.clone(),
        }),
        capabilities: capabilities(),
        last_acked_result_seq: agent.outbox_stats().acked,
        highest_operation_sequence: agent.highest_seq(),
    };
    let _ = tx
        .send(AgentMessage {
            body: Some(agent_message::Body::Hello(hello)),
        })
        .await;
    let mut inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(SessionError::Refused)?
        .into_inner();
    let welcome = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
        Err(_) => return Err(SessionError::Protocol("no welcome within 10 s".into())),
        Ok(Err(s)) => return Err(SessionError::Refused(s)),
        Ok(Ok(Some(ControlMessage {
            body: Some(control_message::Body::Welcome(w)),
        }))) => w,
        Ok(Ok(_)) => return Err(SessionError::Protocol("the first message was not a welcome".into())),
    };
    agent
        .audit
        .record(Event::new(
            "session.connected",
            None,
            json!({ "control_plane": url, "control_plane_id": welcome.control_plane_id }),
        ))
        .await
        // A log that cannot record does not keep the agent off the line: the
        // session is how the control plane hears that every operation is
        // refused until the log records again.
        .map_err(
            |e| error!(error = %e, "cannot record session.connected in the audit log; every operation will be refused"),
        )
        .ok();
    *connected = true;
    info!(%url, control_plane = %welcome.control_plane_id, "connected");
    agent.status.update(|s| {
        s.connection = "connected".into();
        s.since_unix_ms = now_ms();
        s.last_error = None;
    });
    agent.session.set(Some(tx.clone()));
    agent.outbox.send(Cmd::Session(Some(tx.clone())));
    // A CA rotation: take the new CAs, and move to a certificate of the new CA now.
    agent
        .consider_trust(&welcome.ca_certificates_der, &server, "welcome")
        .await;
    if agent.certificate_from_another_ca() {
        agent.maybe_renew(&mut client, &server, true).await;
    }
    // Progress is not resent, but "awaiting approval" must not be lost with a
    // session: a held operation may wait for hours.
    for m in agent.executor.held_progress() {
        let _ = tx.try_send(m);
    }

    let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms).clamp(500, 300_000));
    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renew_check = tokio::time::interval(agent.renew_check_interval());
    renew_check.tick().await;

    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(Ended::Shutdown),
            _ = heartbeat.tick() => {
                let hb = Heartbeat { agent_time_unix_ms: now_ms(), operations_in_flight: agent.executor.in_flight_count() as u32 };
                let _ = tx.try_send(AgentMessage { body: Some(agent_message::Body::Heartbeat(hb)) });
            }
            _ = renew_check.tick() => agent.maybe_renew(&mut client, &server, false).await,
            msg = inbound.message() => match msg {
                Ok(Some(m)) => {
                    if let Err(e) = handle(agent, m, &tx).await {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(Ended::ByControlPlane),
                Err(status) => break Err(SessionError::Stream(status)),
            },
        }
    };
    agent.session.set(None);
    agent.outbox.send(Cmd::Session(None));
    let reason = match &result {
        Ok(Ended::Shutdown) => "agent shutting down".to_string(),
        Ok(Ended::ByControlPlane) => "control plane closed the session".to_string(),
        Err(e) => e.to_string(),
    };
    let _ = agent
        .audit
        .record(Event::new("session.disconnected", None, json!({ "reason": reason })))
        .await;
    result
}

fn capabilities() -> Vec<String> {
    [
        "action:plan",
        "action:apply",
        "action:delete",
        "resource:cluster",
        "resource:node_pool",
        "resource:sandbox",
        "resource:database",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Handles one decoded control-plane message.
async fn handle(agent: &Agent, msg: ControlMessage, tx: &mpsc::Sender<AgentMessage>) -> Result<(), SessionError> {
    match msg.body {
        Some(control_message::Body::Operation(op)) => {
            if agent.executor.is_in_flight(&op.id) {
                warn!(op = %op.id, "operation already running; ignoring the duplicate");
                return Ok(());
            }
            let paused = agent.observe_pause().await;
            let checker = Checker {
                agent_id: &agent.agent_id,
                target: &agent.cfg.target,
                operation_key: &agent.operation_key,
                highest_seq: agent.highest_seq(),
                now_ms: now_ms(),
                max_lifetime_ms: agent.cfg.checks.max_operation_lifetime.as_millis() as i64,
                paused: paused.as_ref(),
            };
            match checker.check(op.clone()) {
                // The checks come first even when the audit log cannot record:
                // only an operation that passed them may move the sequence mark.
                Ok(_) if agent.audit.is_failed() => {
                    let refusal =
                        Refusal::audit_unavailable("an earlier write failed", agent.audit.dir()).with_trust(true);
                    agent
                        .refuse_unaudited(&op, refusal)
                        .await
                        .map_err(SessionError::Durable)?;
                }
                Ok(v) => match agent.decide(&v).map_err(SessionError::Durable)? {
                    Decision::Allow { .. } => accept(agent, v, None, tx).await?,
                    Decision::Deny { rule, message, field } => agent
                        .refuse(&op, Refusal::policy(&rule, &message, &field))
                        .await
                        .map_err(SessionError::Durable)?,
                    Decision::NeedsApproval { rule, .. } => accept(agent, v, Some(rule), tx).await?,
                },
                Err(refusal) => agent.refuse(&op, refusal).await.map_err(SessionError::Durable)?,
            }
        }
        Some(control_message::Body::Cancel(c)) => {
            let found = agent.executor.cancel(&c.operation_id);
            let _ = agent
                .audit
                .record(Event::new(
                    "operation.cancel_requested",
                    Some(&c.operation_id),
                    json!({ "reason": c.reason, "running": found }),
                ))
                .await;
        }
        Some(control_message::Body::ResultAck(a)) => agent.outbox.send(Cmd::Ack(a.result_seq)),
        Some(control_message::Body::Welcome(_)) => {
            return Err(SessionError::Protocol("a second welcome".into()));
        }
        // A message kind from a newer control plane (or an empty one): skip it,
        // as protobuf's compatibility rules intend.
        None => warn!("ignoring a control-plane message of an unknown kind"),
    }
    Ok(())
}

/// Accepts a verified operation the policy allows (or holds for approval:
/// `approval` names the rule): recorded in the audit log and the journal
/// before anything else happens (both writes share their fsyncs with others),
/// then acknowledged and handed to the executor, which holds it if need be.
async fn accept(
    agent: &Agent,
    v: Verified,
    approval: Option<String>,
    tx: &mpsc::Sender<AgentMessage>,
) -> Result<(), SessionError> {
    let (seq, op_id) = (v.op.sequence, v.op.id.clone());
    let received = Event::new(
        "operation.received",
        Some(&op_id),
        json!({
            "sequence": seq, "action": v.action.as_str(), "kind": v.spec.kind().as_str(),
            "name": v.spec.name(), "idempotency_key": v.op.idempotency_key,
            "issued_at_unix_ms": v.op.issued_at_unix_ms, "not_after_unix_ms": v.op.not_after_unix_ms,
        }),
    )
    .with_actor(agent.actor());
    // Recorded in the audit log and the journal before anything else
    // happens; both writes share their fsyncs with others.
    let (a, j) = tokio::join!(
        agent.audit.record(received),
        agent.journal.accepted(&v.op, approval.as_deref())
    );
    j.map_err(|e| SessionError::Durable(e.to_string()))?;
    if let Err(e) = a {
        // Not recorded, so not done: the journal's acceptance is closed with
        // this refusal, so a restart does not resume it.
        let refusal = Refusal::audit_unavailable(&e.to_string(), agent.audit.dir()).with_trust(true);
        return agent
            .refuse_unaudited(&v.op, refusal)
            .await
            .map_err(SessionError::Durable);
    }
    agent.set_highest_seq(seq);
    let accepted = OperationAccepted {
        operation_id: op_id,
        sequence: seq,
    };
    let _ = tx.try_send(AgentMessage {
        body: Some(agent_message::Body::Accepted(accepted)),
    });
    agent.executor.spawn(v, false, approval);
    Ok(())
}

/// Renews the client certificate over `client` (same connection).
pub async fn renew(
    client: &mut AgentServiceClient<Channel>,
) -> Result<(String, byoc_proto::agent::v1::RenewResponse), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let csr = crate::enroll::csr(&key).map_err(|e| e.to_string())?;
    let resp = client
        .renew(RenewRequest { csr_der: csr })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    Ok((key.serialize_pem(), resp))
}
