//! The operator API (tokens, submit, watch, agents), served only on a Unix
//! socket in the data directory.

use std::pin::Pin;
use std::time::Duration;

use byoc_proto::agent::v1::{Action, Cancel, ControlMessage, Operation, ResourceKind, control_message};
use byoc_proto::control::v1::admin_service_server::AdminService;
use byoc_proto::control::v1::{
    AgentInfo, CaStatus, CancelRequest, CancelResponse, CreateTokenRequest, CreateTokenResponse,
    FinishCaRotationRequest, GetCaStatusRequest, GetOperationRequest, ListAgentsRequest, ListAgentsResponse,
    OperationStatus, RevokeRequest, RevokeResponse, RotateCaRequest, SubmitRequest, SubmitResponse, WatchEvent,
    WatchRequest, watch_event,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::service::store_err;
use crate::service::{AgentApi, now_ms, random_hex, token_hash};
use crate::store::Record;

const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_OP_TTL: Duration = Duration::from_secs(15 * 60);
/// Bounds the arithmetic as well as the request: far beyond any agent's limit.
const MAX_OP_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest spec accepted; the agent's own limit is the gRPC message size.
const MAX_SPEC_BYTES: usize = 64 * 1024;

pub struct AdminApi(pub AgentApi);

/// Enrollment tokens read `byoc1.<hex SHA-256 of the CA certificate>.<secret>`.
pub fn format_token(ca_fingerprint: &[u8; 32], secret: &str) -> String {
    format!("byoc1.{}.{secret}", hex::encode(ca_fingerprint))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_token(&self, req: Request<CreateTokenRequest>) -> Result<Response<CreateTokenResponse>, Status> {
        let ttl = match req.get_ref().ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            s => Duration::from_secs(s),
        };
        if ttl > MAX_TOKEN_TTL {
            return Err(Status::invalid_argument(
                "token ttl may be at most 24h: enrollment tokens are short-lived",
            ));
        }
        let secret = random_hex(32)?;
        let expires = now_ms() + ttl.as_millis() as i64;
        // Pins the active CA: after `ca rotate`, the new one.
        let ca = self.0.pki.ca_fingerprint();
        self.0
            .store
            .commit(Record::Token {
                hash: token_hash(&secret),
                expires_unix_ms: expires,
                ca: hex::encode(ca),
            })
            .await
            .map_err(store_err)?;
        Ok(Response::new(CreateTokenResponse {
            token: format_token(&ca, &secret),
            expires_at_unix_ms: expires,
        }))
    }

    async fn submit(&self, req: Request<SubmitRequest>) -> Result<Response<SubmitResponse>, Status> {
        let r = req.into_inner();
        let action = Action::try_from(r.action).unwrap_or(Action::Unspecified);
        let kind = ResourceKind::try_from(r.kind).unwrap_or(ResourceKind::Unspecified);
        if action == Action::Unspecified {
            return Err(Status::invalid_argument("action must be plan, apply or delete"));
        }
        if kind == ResourceKind::Unspecified {
            return Err(Status::invalid_argument(
                "kind must be cluster, node_pool, sandbox or database",
            ));
        }
        if r.spec_json.len() > MAX_SPEC_BYTES {
            return Err(Status::invalid_argument(format!(
                "spec is {} bytes; at most {MAX_SPEC_BYTES}",
                r.spec_json.len()
            )));
        }
        match serde_json::from_str::<serde_json::Value>(&r.spec_json) {
            Ok(serde_json::Value::Object(_)) => {}
            _ => return Err(Status::invalid_argument("spec must be a JSON object")),
        }
        let target = r.target.clone().unwrap_or_default();
        let agent_id = {
            let st = self.0.store.lock();
            if !r.agent_id.is_empty() {
                match st.agents.get(&r.agent_id) {
                    None => return Err(Status::not_found(format!("no enrolled agent {}", r.agent_id))),
                    Some(a) if a.revoked => {
                        return Err(Status::failed_precondition(format!("agent {} is revoked", r.agent_id)));
                    }
                    Some(_) => {}
                }
                r.agent_id.clone()
            } else {
                let matches: Vec<&String> = st
                    .agents
                    .values()
                    .filter(|a| a.target == target && !a.revoked)
                    .map(|a| &a.id)
                    .collect();
                match matches.as_slice() {
                    [one] => (*one).clone(),
                    [] => {
                        return Err(Status::not_found(format!(
                            "no enrolled agent serves cloud {:?}, account {:?}, region {:?}",
                            target.cloud, target.account, target.region
                        )));
                    }
                    many => {
                        return Err(Status::failed_precondition(format!(
                            "several agents serve this target ({}); name one with --agent",
                            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        )));
                    }
                }
            }
        };
        let ttl = match r.ttl_seconds {
            0 => DEFAULT_OP_TTL,
            s => Duration::from_secs(s),
        };
        if ttl > MAX_OP_TTL {
            return Err(Status::invalid_argument(
                "operation ttl may be at most 24h (agents refuse lifetimes above their max_operation_lifetime, 15m by default)",
            ));
        }
        let key = self.0.pki.clone();
        let id = format!("op-{}", random_hex(8)?);
        let op = self
            .0
            .store
            .commit_op(|st| {
                let agent = st.agents.get(&agent_id);
                let now = now_ms();
                let mut op = Operation {
                    idempotency_key: if r.idempotency_key.is_empty() {
                        id.clone()
                    } else {
                        r.idempotency_key.clone()
                    },
                    id,
                    target: Some(agent.map(|a| a.target.clone()).unwrap_or(target)),
                    action: action as i32,
                    kind: kind as i32,
                    spec_json: r.spec_json.clone(),
                    issued_at_unix_ms: now,
                    not_after_unix_ms: now + ttl.as_millis() as i64,
                    sequence: agent.map_or(0, |a| a.last_seq) + 1,
                    agent_id: agent_id.clone(),
                    signature: Vec::new(),
                };
                byoc_proto::signing::sign(&mut op, &key.op_key);
                op
            })
            .await
            .map_err(store_err)?;
        self.0.hub.wake(&agent_id);
        Ok(Response::new(SubmitResponse {
            operation_id: op.id,
            agent_id,
            sequence: op.sequence,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let op_id = req.into_inner().operation_id;
        // Subscribe before reading the state, so no event falls in between.
        let mut events = self.0.hub.subscribe();
        let status = self.status(&op_id)?;
        let (tx, rx) = mpsc::channel(64);
        let api = self.0.clone();
        tokio::spawn(async move {
            if let Some(r) = status.results.into_iter().next() {
                let _ = tx
                    .send(Ok(WatchEvent {
                        body: Some(watch_event::Body::Result(r)),
                    }))
                    .await;
                return;
            }
            let _ = tx
                .send(Ok(WatchEvent {
                    body: Some(watch_event::Body::State(status.state)),
                }))
                .await;
            if let Some(p) = status.last_progress {
                let _ = tx
                    .send(Ok(WatchEvent {
                        body: Some(watch_event::Body::Progress(p)),
                    }))
                    .await;
            }
            loop {
                match events.recv().await {
                    Ok((id, ev)) if id == op_id => {
                        let done = matches!(ev.body, Some(watch_event::Body::Result(_)));
                        if tx.send(Ok(ev)).await.is_err() || done {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Missed events: the store still has the result if it came.
                        let res = api
                            .store
                            .lock()
                            .ops
                            .get(&op_id)
                            .and_then(|o| o.results.first().cloned());
                        if let Some(r) = res {
                            let _ = tx
                                .send(Ok(WatchEvent {
                                    body: Some(watch_event::Body::Result(r)),
                                }))
                                .await;
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn revoke(&self, req: Request<RevokeRequest>) -> Result<Response<RevokeResponse>, Status> {
        let agent = req.into_inner().agent_id;
        if !self.0.store.lock().agents.contains_key(&agent) {
            return Err(Status::not_found(format!("no enrolled agent {agent}")));
        }
        self.0
            .store
            .commit(Record::Revoked { agent: agent.clone() })
            .await
            .map_err(store_err)?;
        // Close its live session now; authentication refuses it from here on.
        if let Some(live) = self.0.hub.get(&agent) {
            let _ = live.tx.try_send(Err(Status::permission_denied(
                "this agent's certificates have been revoked",
            )));
            self.0.hub.disconnect(&agent, live.session);
        }
        tracing::warn!(agent = %agent, "agent revoked");
        Ok(Response::new(RevokeResponse {}))
    }

    async fn get_ca_status(&self, _req: Request<GetCaStatusRequest>) -> Result<Response<CaStatus>, Status> {
        Ok(Response::new(crate::rotation::status(&self.0)))
    }

    async fn rotate_ca(&self, _req: Request<RotateCaRequest>) -> Result<Response<CaStatus>, Status> {
        crate::rotation::rotate(&self.0).map(Response::new)
    }

    async fn finish_ca_rotation(&self, req: Request<FinishCaRotationRequest>) -> Result<Response<CaStatus>, Status> {
        crate::rotation::finish(&self.0, req.get_ref().force).map(Response::new)
    }

    async fn cancel(&self, req: Request<CancelRequest>) -> Result<Response<CancelResponse>, Status> {
        self.cancel_op(req.into_inner()).await?;
        Ok(Response::new(CancelResponse {}))
    }

    async fn get_operation(&self, req: Request<GetOperationRequest>) -> Result<Response<OperationStatus>, Status> {
        Ok(Response::new(self.status(&req.get_ref().operation_id)?))
    }

    async fn list_agents(&self, _req: Request<ListAgentsRequest>) -> Result<Response<ListAgentsResponse>, Status> {
        let agents = self.0.store.lock().agents.values().cloned().collect::<Vec<_>>();
        let agents = agents
            .into_iter()
            .map(|a| {
                let live = self.0.hub.get(&a.id);
                AgentInfo {
                    agent_id: a.id,
                    target: Some(a.target),
                    version: live.as_ref().map(|l| l.version.clone()).unwrap_or_default(),
                    connected: live.is_some(),
                    last_heartbeat_unix_ms: live.as_ref().map_or(0, |l| l.last_heartbeat_unix_ms),
                    certificate_not_after_unix_ms: a.cert_not_after_unix_ms,
                    operations_in_flight: live.as_ref().map_or(0, |l| l.in_flight),
                    revoked: a.revoked,
                }
            })
            .collect();
        Ok(Response::new(ListAgentsResponse { agents }))
    }
}

impl AdminApi {
    async fn cancel_op(&self, r: CancelRequest) -> Result<(), Status> {
        let status = self.status(&r.operation_id)?;
        if status.state == "finished" {
            return Err(Status::failed_precondition(format!(
                "operation {} has already finished",
                r.operation_id
            )));
        }
        let live = self.0.hub.get(&status.agent_id).ok_or_else(|| {
            Status::unavailable(format!(
                "agent {} is not connected; cancel again once it is",
                status.agent_id
            ))
        })?;
        let msg = ControlMessage {
            body: Some(control_message::Body::Cancel(Cancel {
                operation_id: r.operation_id,
                reason: r.reason,
            })),
        };
        live.tx
            .send(Ok(msg))
            .await
            .map_err(|_| Status::unavailable("the agent's session just ended; try again"))
    }

    fn status(&self, op_id: &str) -> Result<OperationStatus, Status> {
        let st = self.0.store.lock();
        let o = st
            .ops
            .get(op_id)
            .ok_or_else(|| Status::not_found(format!("no operation {op_id}")))?;
        Ok(OperationStatus {
            operation_id: o.op.id.clone(),
            agent_id: o.op.agent_id.clone(),
            sequence: o.op.sequence,
            state: if o.results.is_empty() {
                "pending".into()
            } else {
                "finished".into()
            },
            results: o.results.clone(),
            duplicate_results_ignored: o.duplicates_ignored,
            last_progress: if o.results.is_empty() {
                self.0.hub.last_progress(op_id)
            } else {
                None
            },
        })
    }
}
