//! The agent-facing gRPC service: Enroll, Renew and the Connect session.
//! Handlers decode and check; the store records; the hub moves live events.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use byoc_proto::agent::v1::agent_service_server::AgentService;
use byoc_proto::agent::v1::{
    AgentMessage, ControlMessage, EnrollRequest, EnrollResponse, RenewRequest, RenewResponse, ResultAck, Welcome,
    agent_message, control_message,
};
use byoc_proto::control::v1::watch_event;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::hub::Hub;
use crate::pki::Pki;
use crate::store::{Record, ResultDisposition, Store};
pub use crate::sys::{RngUnavailable, now_ms, random_hex};

/// Settings of the agent-facing service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub cert_lifetime: Duration,
    pub heartbeat_interval: Duration,
    pub control_plane_id: String,
}

#[derive(Clone)]
pub struct AgentApi {
    pub store: Store,
    pub hub: Hub,
    pub pki: Arc<Pki>,
    pub cfg: Arc<ServiceConfig>,
}

pub fn token_hash(secret: &str) -> String {
    hex::encode(byoc_proto::transport::fingerprint(secret.as_bytes()))
}

/// A state store failure, as the control plane's answer (and its log).
pub(crate) fn store_err(e: crate::store::StoreError) -> Status {
    let error = byoc_errors::chain(&e);
    warn!(%error, "state store failed");
    Status::unavailable(format!("control plane state store failed: {error}"))
}

impl AgentApi {
    /// Checks that an enrollment token exists, is unused and unexpired; with
    /// `claim`, marks it used in memory (the caller then makes that durable).
    /// Returns the CA the token pins (hex SHA-256, "" for an old token).
    fn check_token(&self, hash: &str, claim: bool) -> Result<String, Status> {
        let mut st = self.store.lock();
        let t = st
            .tokens
            .get_mut(hash)
            .ok_or_else(|| Status::permission_denied("unknown enrollment token"))?;
        if t.used {
            return Err(Status::permission_denied(
                "this enrollment token has already been used; create a new one",
            ));
        }
        if t.expires_unix_ms <= now_ms() {
            return Err(Status::permission_denied(
                "this enrollment token has expired; create a new one",
            ));
        }
        t.used |= claim;
        Ok(t.ca.clone())
    }

    /// The agent a request comes from, by the fingerprint of its client certificate.
    fn authenticate<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required: enroll first"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
        let fp = hex::encode(byoc_proto::transport::fingerprint(leaf.as_ref()));
        let st = self.store.lock();
        let agent =
            st.certs.get(&fp).map(|c| c.agent.clone()).ok_or_else(|| {
                Status::permission_denied("this client certificate was not issued to an enrolled agent")
            })?;
        if st.agents.get(&agent).is_some_and(|a| a.revoked) {
            return Err(Status::permission_denied(format!(
                "the certificates of agent {agent} have been revoked; enroll it again with a new token"
            )));
        }
        Ok(agent)
    }
}

type ControlStream = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn enroll(&self, req: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let r = req.into_inner();
        let target = r.target.clone().unwrap_or_default();
        if target.cloud.is_empty() || target.account.is_empty() || target.region.is_empty() {
            return Err(Status::invalid_argument(
                "target.cloud, target.account and target.region are required",
            ));
        }
        let hash = token_hash(&r.token);
        // Check the token, then the CSR, and only then use the token up: a
        // malformed request must not burn a valid token.
        self.check_token(&hash, false)?;
        let agent_id = format!("agt-{}", random_hex(8)?);
        let (cert, not_after, issuer) = self
            .pki
            .issue_client_cert(&agent_id, &r.csr_der, self.cfg.cert_lifetime)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Claimed under the lock, so two concurrent uses cannot both pass.
        let pinned = self.check_token(&hash, true)?;
        self.store.commit(Record::TokenUsed { hash }).await.map_err(store_err)?;
        let not_after_ms = not_after.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        self.store
            .commit(Record::Agent {
                id: agent_id.clone(),
                cloud: target.cloud.clone(),
                account: target.account.clone(),
                region: target.region.clone(),
                hostname: r.hostname.clone(),
            })
            .await
            .map_err(store_err)?;
        self.store
            .commit(Record::Cert {
                agent: agent_id.clone(),
                fingerprint: hex::encode(byoc_proto::transport::fingerprint(&cert)),
                not_after_unix_ms: not_after_ms,
                ca: issuer,
            })
            .await
            .map_err(store_err)?;
        info!(agent = %agent_id, cloud = %target.cloud, account = %target.account, region = %target.region, "agent enrolled");
        Ok(Response::new(EnrollResponse {
            agent_id,
            certificate_der: cert.to_vec(),
            // The CA the token pins: during a CA rotation a token made before
            // it pins the previous CA, which the server still presents.
            ca_certificate_der: self.pki.ca_der_for(&pinned).to_vec(),
            operation_signing_public_key: byoc_proto::signing::public_key(&self.pki.op_key),
            certificate_not_after_unix_ms: not_after_ms,
        }))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let agent = self.authenticate(&req)?;
        let (cert, not_after, issuer) = self
            .pki
            .issue_client_cert(&agent, &req.get_ref().csr_der, self.cfg.cert_lifetime)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let not_after_ms = not_after.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        self.store
            .commit(Record::Cert {
                agent: agent.clone(),
                fingerprint: hex::encode(byoc_proto::transport::fingerprint(&cert)),
                not_after_unix_ms: not_after_ms,
                ca: issuer.clone(),
            })
            .await
            .map_err(store_err)?;
        info!(agent = %agent, ca = %issuer, "certificate renewed");
        Ok(Response::new(RenewResponse {
            certificate_der: cert.to_vec(),
            certificate_not_after_unix_ms: not_after_ms,
            ca_certificates_der: self.pki.trust_bundle(),
        }))
    }

    type ConnectStream = ControlStream;

    async fn connect(&self, req: Request<Streaming<AgentMessage>>) -> Result<Response<ControlStream>, Status> {
        let agent = self.authenticate(&req)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let hello = match first.and_then(|m| m.body) {
            Some(agent_message::Body::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be a hello",
                ));
            }
        };
        if hello.agent_id != agent {
            return Err(Status::permission_denied(format!(
                "hello names agent {:?} but the client certificate belongs to {agent}",
                hello.agent_id
            )));
        }
        let enrolled = self.store.lock().agents.get(&agent).map(|a| a.target.clone());
        if enrolled.is_some() && hello.target != enrolled {
            let t = hello.target.clone().unwrap_or_default();
            return Err(Status::permission_denied(format!(
                "hello says this agent serves {}/{}/{}, not the target it enrolled for",
                t.cloud, t.account, t.region
            )));
        }
        let sent = self.store.lock().agents.get(&agent).map_or(0, |a| a.last_seq);
        if hello.highest_operation_sequence > sent {
            // Operations up to the agent's mark would never be sent: its
            // journal is not this enrollment's (a data directory copied or
            // re-enrolled by hand), or this control plane's state was rolled
            // back. Said loudly: nothing else would show it.
            warn!(
                agent = %agent,
                agent_mark = hello.highest_operation_sequence,
                highest_sent = sent,
                "the agent says it has recorded operation sequence {}, above the highest this control plane \
                 ever assigned it ({sent}): operations up to that sequence will not reach it; re-enroll the \
                 agent (byoc-agent enroll --reenroll) or restore this control plane's state",
                hello.highest_operation_sequence
            );
        }
        let (tx, rx) = mpsc::channel::<Result<ControlMessage, Status>>(1024);
        let live = self.hub.connect(&agent, &hello.agent_version, now_ms(), tx.clone());
        info!(agent = %agent, version = %hello.agent_version, highest_seq = hello.highest_operation_sequence,
              acked = hello.last_acked_result_seq, "agent connected");
        let welcome = ControlMessage {
            body: Some(control_message::Body::Welcome(Welcome {
                heartbeat_interval_ms: self.cfg.heartbeat_interval.as_millis() as u32,
                server_time_unix_ms: now_ms(),
                control_plane_id: self.cfg.control_plane_id.clone(),
                ca_certificates_der: self.pki.trust_bundle(),
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("session closed"))?;
        tokio::spawn(self.clone().dispatch(
            agent.clone(),
            live.session,
            hello.highest_operation_sequence,
            tx.clone(),
            live.notify.clone(),
        ));
        tokio::spawn(self.clone().read(agent, live.session, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl AgentApi {
    /// Sends the agent its durable operations in sequence order, starting after
    /// the highest one it has recorded, and waits for more.
    async fn dispatch(
        self,
        agent: String,
        session: u64,
        highest: u64,
        tx: mpsc::Sender<Result<ControlMessage, Status>>,
        notify: Arc<tokio::sync::Notify>,
    ) {
        let mut next = highest.saturating_add(1);
        loop {
            // A replaced session sends nothing more.
            if !self.hub.is_current(&agent, session) {
                return;
            }
            let batch: Vec<_> = {
                let st = self.store.lock();
                let mut batch = Vec::new();
                if let Some(seqs) = st.by_agent.get(&agent) {
                    // Sequences are assigned contiguously; a gap is one still
                    // being written, so stop there and keep the order.
                    while let Some(id) = seqs.get(&next) {
                        if let Some(o) = st.ops.get(id).filter(|o| o.results.is_empty()) {
                            batch.push(o.op.clone());
                        }
                        next += 1;
                    }
                }
                batch
            };
            for op in batch {
                let id = op.id.clone();
                let msg = ControlMessage {
                    body: Some(control_message::Body::Operation(op)),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                self.hub.publish(id, watch_event::Body::State("delivered".into()));
            }
            if !self.hub.is_current(&agent, session) {
                return;
            }
            tokio::select! {
                _ = notify.notified() => {}
                _ = tx.closed() => return,
            }
        }
    }

    /// Reads the agent's messages until the session ends.
    async fn read(
        self,
        agent: String,
        session: u64,
        mut inbound: Streaming<AgentMessage>,
        tx: mpsc::Sender<Result<ControlMessage, Status>>,
    ) {
        let silence = self.cfg.heartbeat_interval * 3;
        let reason = loop {
            let msg = match tokio::time::timeout(silence, inbound.message()).await {
                Err(_) => break format!("no message for {} s", silence.as_secs()),
                Ok(Err(status)) => break format!("stream error: {}", status.message()),
                Ok(Ok(None)) => break "agent closed the session".to_string(),
                Ok(Ok(Some(m))) => m,
            };
            match msg.body {
                Some(agent_message::Body::Heartbeat(h)) => self.hub.heartbeat(&agent, now_ms(), h.operations_in_flight),
                Some(agent_message::Body::Accepted(a)) => {
                    self.hub.publish(a.operation_id.clone(), watch_event::Body::Accepted(a));
                }
                Some(agent_message::Body::Progress(p)) => {
                    self.hub.publish(p.operation_id.clone(), watch_event::Body::Progress(p));
                }
                Some(agent_message::Body::Result(r)) => {
                    let disposition = match self.store.commit_result(&agent, &r).await {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = tx.send(Err(store_err(e))).await;
                            break "state store failed".to_string();
                        }
                    };
                    if disposition == ResultDisposition::BeingRecorded {
                        continue;
                    }
                    let ack = ControlMessage {
                        body: Some(control_message::Body::ResultAck(ResultAck {
                            result_seq: r.result_seq,
                        })),
                    };
                    if tx.send(Ok(ack)).await.is_err() {
                        break "session closed".to_string();
                    }
                    // Acknowledged in every case, so the agent stops resending;
                    // only a first result for one of its own operations is recorded.
                    match disposition {
                        ResultDisposition::Recorded => {}
                        ResultDisposition::Duplicate => continue,
                        other => {
                            warn!(agent = %agent, op = %r.operation_id, ?other, "result for an operation this agent was not sent; ignored");
                            continue;
                        }
                    }
                    self.hub.publish(r.operation_id.clone(), watch_event::Body::Result(r));
                }
                Some(agent_message::Body::Hello(_)) => {
                    let _ = tx
                        .send(Err(Status::invalid_argument(
                            "hello is only valid as the first message",
                        )))
                        .await;
                    break "protocol error: second hello".to_string();
                }
                // A message kind from a newer agent (or an empty one): skip it,
                // as protobuf's compatibility rules intend.
                None => warn!(agent = %agent, "ignoring an agent message of an unknown kind"),
            }
        };
        info!(agent = %agent, %reason, "agent session ended");
        self.hub.disconnect(&agent, session);
        // Ends the response stream (if the agent is still there to read it), which
        // also stops this session's dispatcher.
        let _ = tx.send(Err(Status::aborted(format!("session ended: {reason}")))).await;
    }
}
