//! One session with the control plane: hello, welcome, then messages in and
//! heartbeats out, until the stream ends. The session only decodes: each
//! message becomes a call on the [`Intake`] (operations, cancels), the outbox
//! (acknowledgements) or the [`Credentials`] (CAs offered, renewal). The
//! caller (the connection task) reconnects with backoff.

use std::sync::Arc;
use std::time::Duration;

use byoc_audit::{AuditLog, Event};
use byoc_gate::{Clock, TargetConfig};
use byoc_proto::agent::v1::agent_service_client::AgentServiceClient;
use byoc_proto::agent::v1::{AgentMessage, ControlMessage, Heartbeat, Hello, Target, agent_message, control_message};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{error, info, warn};

use crate::credentials::Credentials;
use crate::dial::Dialer;
use crate::executor::Executor;
use crate::intake::{Intake, IntakeError};
use crate::outbound::SessionSender;
use crate::outbox::{Cmd, Outbox, OutboxStats};
use crate::status::StatusHandle;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Connect(#[from] crate::dial::ConnectError),
    #[error("TLS configuration")]
    Tls(#[from] byoc_proto::transport::TransportError),
    #[error("the control plane refused the session")]
    Refused(#[source] tonic::Status),
    #[error("session failed")]
    Stream(#[source] tonic::Status),
    #[error("the control plane broke the protocol: {0}")]
    Protocol(&'static str),
    #[error(transparent)]
    Intake(#[from] IntakeError),
}

/// How a session ended without error.
pub enum Ended {
    ByControlPlane,
    Shutdown,
}

/// What a session works with.
pub struct Session {
    pub agent_id: String,
    pub target: TargetConfig,
    pub dialer: Dialer,
    pub credentials: Arc<Credentials>,
    pub intake: Arc<Intake>,
    pub executor: Arc<Executor>,
    pub outbox: Outbox,
    pub outbox_stats: tokio::sync::watch::Receiver<OutboxStats>,
    pub sender: SessionSender,
    pub audit: AuditLog,
    pub status: StatusHandle,
    pub clock: Arc<dyn Clock>,
}

impl Session {
    /// Runs one session. Returns once it ends; `connected` is set once
    /// welcomed (the caller resets its backoff if the session then lasted a
    /// while).
    pub async fn run(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
        connected: &mut bool,
    ) -> Result<Ended, SessionError> {
        let url = self.credentials.control_plane_url();
        let tls = self.credentials.client_config()?;
        let (channel, server) = self.dialer.channel_observed(&url, tls).await?;
        let mut client = AgentServiceClient::new(channel)
            .max_decoding_message_size(byoc_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(byoc_proto::MAX_MESSAGE_BYTES);
        self.credentials.maybe_renew(&mut client, &server, false).await;

        let (tx, rx) = mpsc::channel::<AgentMessage>(4096);
        let _ = tx
            .send(AgentMessage {
                body: Some(agent_message::Body::Hello(self.hello())),
            })
            .await;
        let mut inbound = client
            .connect(ReceiverStream::new(rx))
            .await
            .map_err(SessionError::Refused)?
            .into_inner();
        let welcome = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
            Err(_) => return Err(SessionError::Protocol("no welcome within 10 s")),
            Ok(Err(s)) => return Err(SessionError::Refused(s)),
            Ok(Ok(Some(ControlMessage {
                body: Some(control_message::Body::Welcome(w)),
            }))) => w,
            Ok(Ok(_)) => return Err(SessionError::Protocol("the first message was not a welcome")),
        };
        self.audit
            .record(Event::new(
                "session.connected",
                None,
                json!({ "control_plane": url, "control_plane_id": welcome.control_plane_id }),
            ))
            .await
            // A log that cannot record does not keep the agent off the line:
            // the session is how the control plane hears that every operation
            // is refused until the log records again.
            .map_err(|e| {
                error!(error = %byoc_errors::Chain(&e), "cannot record session.connected in the audit log; every operation will be refused")
            })
            .ok();
        *connected = true;
        info!(%url, control_plane = %welcome.control_plane_id, "connected");
        let now = self.clock.now_ms();
        self.status.update(|s| {
            s.connection = "connected".into();
            s.since_unix_ms = now;
            s.last_error = None;
        });
        self.sender.set(Some(tx.clone()));
        self.outbox.send(Cmd::Session(Some(tx.clone())));
        // A CA rotation: take the new CAs, and move to a certificate of the new CA now.
        self.credentials
            .consider_trust(&welcome.ca_certificates_der, &server, "welcome")
            .await;
        if self.credentials.certificate_from_another_ca() {
            self.credentials.maybe_renew(&mut client, &server, true).await;
        }
        // Progress is not resent, but "awaiting approval" must not be lost
        // with a session: a held operation may wait for hours.
        for m in self.executor.held_progress() {
            let _ = tx.try_send(m);
        }

        let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms).clamp(500, 300_000));
        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew_check = tokio::time::interval(self.credentials.renew_check_interval());
        renew_check.tick().await;

        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(Ended::Shutdown),
                _ = heartbeat.tick() => {
                    let hb = Heartbeat {
                        agent_time_unix_ms: self.clock.now_ms(),
                        operations_in_flight: self.executor.in_flight_count() as u32,
                    };
                    let _ = tx.try_send(AgentMessage { body: Some(agent_message::Body::Heartbeat(hb)) });
                }
                _ = renew_check.tick() => self.credentials.maybe_renew(&mut client, &server, false).await,
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        if let Err(e) = self.handle(m).await {
                            break Err(e);
                        }
                    }
                    Ok(None) => break Ok(Ended::ByControlPlane),
                    Err(status) => break Err(SessionError::Stream(status)),
                },
            }
        };
        self.sender.set(None);
        self.outbox.send(Cmd::Session(None));
        let reason = match &result {
            Ok(Ended::Shutdown) => "agent shutting down".to_string(),
            Ok(Ended::ByControlPlane) => "control plane closed the session".to_string(),
            Err(e) => byoc_errors::chain(e),
        };
        let _ = self
            .audit
            .record(Event::new("session.disconnected", None, json!({ "reason": reason })))
            .await;
        result
    }

    fn hello(&self) -> Hello {
        let t = &self.target;
        Hello {
            agent_id: self.agent_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            target: Some(Target {
                cloud: t.cloud.clone(),
                account: t.account.clone(),
                region: t.region.clone(),
            }),
            capabilities: capabilities(),
            last_acked_result_seq: self.outbox_stats.borrow().acked,
            highest_operation_sequence: self.intake.highest_seq(),
        }
    }

    /// Decodes one control-plane message and forwards it.
    async fn handle(&self, msg: ControlMessage) -> Result<(), SessionError> {
        match msg.body {
            Some(control_message::Body::Operation(op)) => self.intake.operation(op).await?,
            Some(control_message::Body::Cancel(c)) => self.intake.cancel(&c.operation_id, &c.reason).await,
            Some(control_message::Body::ResultAck(a)) => self.outbox.send(Cmd::Ack(a.result_seq)),
            Some(control_message::Body::Welcome(_)) => return Err(SessionError::Protocol("a second welcome")),
            // A message kind from a newer control plane (or an empty one): skip
            // it, as protobuf's compatibility rules intend.
            None => warn!("ignoring a control-plane message of an unknown kind"),
        }
        Ok(())
    }
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
