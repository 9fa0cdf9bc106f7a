//! The real agent binary against a scripted control plane that sends what the
//! reference control plane never would: bytes that are not an operation, a
//! message over the size limit, invalid specs and forged signatures. The agent
//! must reject each without crashing, keep reconnecting, and keep serving.

// The helpers below fail the test the way a test does: by panicking.
#![allow(clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::Ed25519KeyPair;
use byoc_proto::agent::v1::{
    Action, AgentMessage, ControlMessage, Hello, Operation, OperationResult, Outcome, ResourceKind, ResultAck, Target,
    Welcome, agent_message, control_message,
};
use byoc_tests::{SimDelays, World};
use common::raw::agent_service_server::{AgentService, AgentServiceServer};
use common::raw::{RawAgentMessage, RawControlMessage, raw_control_message};
use common::{Ca, within};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

const AGENT_ID: &str = "agt-scripted";
/// How long any one expected message may take.
const TIMEOUT_SECS: u64 = 20;

/// What the scripted control plane saw.
#[derive(Debug)]
enum Seen {
    /// Session `n` (from 1) opened with this hello; `tx` sends on it.
    Session(usize, Hello, mpsc::Sender<Result<RawControlMessage, Status>>),
    Message(AgentMessage),
}

/// Serves Connect with the raw protocol: reports what the agent sends, and
/// sends only what the test puts on a session's sender.
struct Scripted {
    seen: mpsc::UnboundedSender<Seen>,
    sessions: Arc<AtomicUsize>,
    /// Every message payload received, as bytes on the wire.
    received: Arc<std::sync::Mutex<Vec<u8>>>,
}

#[tonic::async_trait]
impl AgentService for Scripted {
    type ConnectStream = ReceiverStream<Result<RawControlMessage, Status>>;

    async fn connect(&self, req: Request<Streaming<RawAgentMessage>>) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = req.into_inner();
        // The raw messages are wire-compatible with the real ones.
        let decode = |m: RawAgentMessage| AgentMessage::decode(m.encode_to_vec().as_slice()).expect("agent message");
        let Some(agent_message::Body::Hello(hello)) = inbound.message().await?.map(decode).and_then(|m| m.body) else {
            // The test then times out waiting for this session, saying which.
            return Err(Status::invalid_argument("the first message must be a hello"));
        };
        let n = self.sessions.fetch_add(1, Ordering::SeqCst) + 1;
        let (tx, rx) = mpsc::channel(16);
        let _ = self.seen.send(Seen::Session(n, hello, tx));
        let seen = self.seen.clone();
        let received = self.received.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                received.lock().expect("received").extend_from_slice(&m.encode_to_vec());
                let _ = seen.send(Seen::Message(decode(m)));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The scripted control plane: its URL, CA and operation key, and what it saw.
struct ControlPlane {
    url: String,
    ca: Ca,
    op_key: Ed25519KeyPair,
    seen: mpsc::UnboundedReceiver<Seen>,
    sessions: Arc<AtomicUsize>,
    received: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl ControlPlane {
    async fn start() -> Self {
        let ca = Ca::new("scripted CA");
        let (chain, key) = ca.server();
        let tls = byoc_proto::transport::server_config(chain, key, ca.der.clone()).expect("server TLS");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("addr"));
        let (conn_tx, conn_rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, conn_tx) = (acceptor.clone(), conn_tx.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = conn_tx.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                });
            }
        });
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let sessions = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let svc = Scripted {
            seen: seen_tx,
            sessions: sessions.clone(),
            received: received.clone(),
        };
        // Far above the agent's limit, so the oversized message does go out.
        let svc = AgentServiceServer::new(svc).max_encoding_message_size(16 << 20);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(ReceiverStream::new(conn_rx)),
        );
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).expect("keygen");
        let op_key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("op key");
        Self {
            url,
            ca,
            op_key,
            seen,
            sessions,
            received,
        }
    }

    /// Writes an enrolled identity for this control plane into `data`, as
    /// `byoc-agent enroll` would (layout in agent/src/identity.rs).
    fn write_identity(&self, data: &Path) {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = data.join("identity");
        std::fs::create_dir_all(&dir).expect("identity dir");
        let (cert, key) = self.ca.client(AGENT_ID);
        let now = now_ms();
        let enrollment = json!({
            "agent_id": AGENT_ID, "control_plane": self.url,
            "certificate_issued_unix_ms": now, "certificate_not_after_unix_ms": now + 24 * 3600 * 1000,
        });
        for (name, bytes, mode) in [
            ("agent.key", key.serialize_pem().into_bytes(), 0o600),
            ("agent.der", cert.to_vec(), 0o644),
            ("ca.der", self.ca.der.to_vec(), 0o644),
            (
                "operation-key.pub",
                byoc_proto::signing::public_key(&self.op_key),
                0o644,
            ),
            ("enrollment.json", enrollment.to_string().into_bytes(), 0o644),
        ] {
            let mut opts = std::fs::OpenOptions::new();
            let mut f = opts
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(dir.join(name))
                .expect(name);
            std::io::Write::write_all(&mut f, &bytes).expect(name);
        }
    }

    /// Waits for the next thing seen that `f` picks, skipping the rest.
    async fn expect<T>(&mut self, what: &str, mut f: impl FnMut(Seen) -> Option<T>) -> T {
        within(TIMEOUT_SECS, what, async {
            loop {
                let seen = self.seen.recv().await.expect("the scripted control plane stopped");
                if let Some(v) = f(seen) {
                    return v;
                }
            }
        })
        .await
    }

    /// Waits for session `n` to open, and welcomes it.
    async fn session(&mut self, n: usize) -> Session {
        let (hello, tx) = self
            .expect(&format!("session {n}"), |s| match s {
                Seen::Session(m, hello, tx) if m == n => Some((hello, tx)),
                _ => None,
            })
            .await;
        assert_eq!(hello.agent_id, AGENT_ID);
        let s = Session(tx);
        s.send(control_message::Body::Welcome(Welcome {
            heartbeat_interval_ms: 1000,
            server_time_unix_ms: now_ms(),
            control_plane_id: "scripted".into(),
            // A control plane without CA rotation: the agent keeps its trust.
            ca_certificates_der: Vec::new(),
        }))
        .await;
        s
    }

    /// Waits for the result of operation `id` (on any session).
    async fn result(&mut self, id: &str) -> OperationResult {
        self.expect(&format!("the result of {id}"), |s| match s {
            Seen::Message(AgentMessage {
                body: Some(agent_message::Body::Result(r)),
            }) if r.operation_id == id => Some(r),
            _ => None,
        })
        .await
    }

    /// A correctly signed operation for the harness's agent target.
    fn operation(&self, id: &str, sequence: u64, kind: ResourceKind, spec: Value) -> Operation {
        let mut op = Operation {
            id: id.into(),
            idempotency_key: format!("key-{id}"),
            target: Some(Target {
                cloud: "sim".into(),
                account: "acct-1".into(),
                region: "sim-1".into(),
            }),
            action: Action::Apply as i32,
            kind: kind as i32,
            spec_json: spec.to_string(),
            issued_at_unix_ms: now_ms(),
            not_after_unix_ms: now_ms() + 10 * 60 * 1000,
            sequence,
            agent_id: AGENT_ID.into(),
            signature: Vec::new(),
        };
        byoc_proto::signing::sign(&mut op, &self.op_key);
        op
    }
}

struct Session(mpsc::Sender<Result<RawControlMessage, Status>>);

impl Session {
    /// Sends `body` as is, where the agent expects a ControlMessage member.
    async fn send_raw(&self, body: raw_control_message::Body) {
        let msg = RawControlMessage { body: Some(body) };
        self.0.send(Ok(msg)).await.expect("the session is open");
    }

    async fn send(&self, body: control_message::Body) {
        let bytes = ControlMessage { body: Some(body) }.encode_to_vec();
        let msg = RawControlMessage::decode(bytes.as_slice()).expect("wire-compatible");
        self.0.send(Ok(msg)).await.expect("the session is open");
    }

    async fn operation(&self, op: Operation) {
        self.send(control_message::Body::Operation(op)).await;
    }

    async fn ack(&self, r: &OperationResult) {
        let ack = ResultAck {
            result_seq: r.result_seq,
        };
        self.send(control_message::Body::ResultAck(ack)).await;
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64
}

fn cluster(name: &str) -> Value {
    json!({"name": name, "kubernetes_version": "1.31"})
}

/// The kinds of the audit entries of operation `id`.
fn audit_kinds(agent: &byoc_tests::Agent, id: &str) -> Vec<String> {
    let audit = agent.audit();
    let kinds = audit
        .iter()
        .filter(|e| e["op"] == id)
        .map(|e| e["kind"].as_str().unwrap_or("").to_string());
    kinds.collect()
}

fn assert_refused(r: &OperationResult, code: &str) -> byoc_proto::agent::v1::Problem {
    assert_eq!(r.outcome(), Outcome::Refused, "{r:?}");
    let problem = r.problem.clone().expect("a refusal carries a problem");
    assert_eq!(problem.code, code, "{problem:?}");
    problem
}

/// A scripted control plane, and an agent enrolled with it and running.
async fn start(w: &World) -> (ControlPlane, byoc_tests::Agent) {
    let cp = ControlPlane::start().await;
    let mut agent = w.agent_config("agent", SimDelays::default());
    cp.write_identity(&agent.data_dir());
    agent.start();
    (cp, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_invalid_operations_are_rejected_and_the_agent_keeps_serving() {
    let w = World::new();
    let (mut cp, mut agent) = start(&w).await;

    // Session 1: bytes where an Operation should be (field 1 with wire type 7).
    let s1 = cp.session(1).await;
    s1.send_raw(raw_control_message::Body::Operation(vec![0x0f, 0xff, 0xff, 0xff]))
        .await;

    // Session 2: a correctly signed operation, over the size limit.
    let s2 = cp.session(2).await;
    assert!(
        agent.is_running(),
        "the agent died on a malformed message:\n{}",
        agent.log()
    );
    let huge =
        json!({"name": "huge", "kubernetes_version": "1.31", "padding": "x".repeat(byoc_proto::MAX_MESSAGE_BYTES)});
    s2.operation(cp.operation("op-huge", 1, ResourceKind::Cluster, huge))
        .await;

    // Session 3: the agent still serves.
    let s3 = cp.session(3).await;
    assert!(
        agent.is_running(),
        "the agent died on an oversized message:\n{}",
        agent.log()
    );
    // A message kind from a newer control plane is skipped, not fatal: the
    // operation after it runs in this same session (the count of sessions
    // below stays 3).
    s3.send_raw(raw_control_message::Body::FromTheFuture(vec![1, 2, 3]))
        .await;
    s3.operation(cp.operation("op-ok", 1, ResourceKind::Cluster, cluster("a")))
        .await;
    let r = cp.result("op-ok").await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    s3.ack(&r).await;

    // A spec out of bounds, and one with a field no kind has: refused, naming the field.
    let pool = json!({"name": "gpu", "cluster": "a", "instance_type": "m6i.large", "min_size": 1, "max_size": 5000,
                      "desired_size": 2});
    s3.operation(cp.operation("op-big-pool", 2, ResourceKind::NodePool, pool))
        .await;
    let r = cp.result("op-big-pool").await;
    assert_eq!(assert_refused(&r, "invalid_spec").field, "node_pool.max_size");
    s3.ack(&r).await;
    let unknown = json!({"name": "b", "kubernetes_version": "1.31", "colour": "blue"});
    s3.operation(cp.operation("op-unknown-field", 3, ResourceKind::Cluster, unknown))
        .await;
    let r = cp.result("op-unknown-field").await;
    let problem = assert_refused(&r, "invalid_spec");
    assert_eq!(problem.field, "cluster.colour", "{problem:?}");
    s3.ack(&r).await;

    // A forged signature: one byte flipped.
    let mut forged = cp.operation("op-forged", 4, ResourceKind::Cluster, cluster("c"));
    forged.signature[0] ^= 1;
    s3.operation(forged).await;
    let r = cp.result("op-forged").await;
    assert_eq!(assert_refused(&r, "bad_signature").rule, "signature");
    s3.ack(&r).await;

    // No crash, and exactly one reconnection per rejected message.
    assert!(agent.is_running(), "{}", agent.log());
    assert_eq!(cp.sessions.load(Ordering::SeqCst), 3, "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains("failed to decode"),
        "the log does not name the decode error:\n{log}"
    );
    assert!(
        log.contains("too large"),
        "the log does not name the size limit:\n{log}"
    );
    let audit = agent.audit();
    let reasons: Vec<&str> = audit
        .iter()
        .filter(|e| e["kind"] == "session.disconnected")
        .filter_map(|e| e["detail"]["reason"].as_str())
        .collect();
    assert!(
        reasons.len() == 2 && reasons[0].contains("failed to decode"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("too large"), "{reasons:?}");

    // The audit log: the good operation reached the provider; no refused one did,
    // and the oversized one was never even received.
    assert!(audit_kinds(&agent, "op-ok").iter().any(|k| k == "provider.call"));
    for id in ["op-big-pool", "op-unknown-field", "op-forged"] {
        let kinds = audit_kinds(&agent, id);
        assert_eq!(kinds, ["operation.refused"], "{id}");
    }
    assert!(audit_kinds(&agent, "op-huge").is_empty());
    let clusters = byoc_provider_sim::list_resources(&agent.sim_dir()).expect("sim resources");
    assert_eq!(clusters.len(), 1, "only op-ok created anything: {clusters:?}");
}

/// The signature is checked first so that nothing in a forged operation is
/// believed, its sequence number included. Nor may an operation addressed to
/// another agent (another sequence space) move this agent's high-water mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_misaddressed_operation_does_not_use_up_sequence_numbers() {
    let w = World::new();
    let (mut cp, _agent) = start(&w).await;
    let s = cp.session(1).await;

    let mut forged = cp.operation("op-forged", 1000, ResourceKind::Cluster, cluster("x"));
    forged.signature[0] ^= 1;
    s.operation(forged).await;
    assert_refused(&cp.result("op-forged").await, "bad_signature");
    let mut other = cp.operation("op-other", 2000, ResourceKind::Cluster, cluster("y"));
    other.agent_id = "agt-other".into();
    byoc_proto::signing::sign(&mut other, &cp.op_key);
    s.operation(other).await;
    assert_eq!(
        assert_refused(&cp.result("op-other").await, "wrong_target").rule,
        "agent_id"
    );

    // The control plane's next genuine operation for this agent.
    s.operation(cp.operation("op-genuine", 1, ResourceKind::Cluster, cluster("a")))
        .await;
    let r = cp.result("op-genuine").await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_expired_over_long_lived_and_future_operations_are_refused_and_audited() {
    let w = World::new();
    let (mut cp, agent) = start(&w).await;
    let s = cp.session(1).await;
    let minute = 60 * 1000;
    // A correctly signed operation with the given validity window.
    let timed = |cp: &ControlPlane, id: &str, seq: u64, issued: i64, not_after: i64| {
        let mut op = cp.operation(id, seq, ResourceKind::Cluster, cluster("a"));
        op.issued_at_unix_ms = issued;
        op.not_after_unix_ms = not_after;
        byoc_proto::signing::sign(&mut op, &cp.op_key);
        op
    };

    s.operation(cp.operation("op-1", 1, ResourceKind::Cluster, cluster("a")))
        .await;
    let r = cp.result("op-1").await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    s.ack(&r).await;

    // The same sequence again, under a new id: a replay.
    s.operation(cp.operation("op-replay", 1, ResourceKind::Cluster, cluster("a")))
        .await;
    assert_eq!(
        assert_refused(&cp.result("op-replay").await, "replayed").rule,
        "sequence"
    );
    let now = now_ms();
    s.operation(timed(&cp, "op-expired", 2, now - 20 * minute, now - 5 * minute))
        .await;
    assert_eq!(
        assert_refused(&cp.result("op-expired").await, "expired").rule,
        "not_after"
    );
    s.operation(timed(&cp, "op-long", 3, now, now + 16 * minute)).await;
    let long = assert_refused(&cp.result("op-long").await, "lifetime_too_long");
    assert!(long.message.contains("at most 900 s"), "{long:?}");
    s.operation(timed(&cp, "op-future", 4, now + 10 * minute, now + 12 * minute))
        .await;
    assert_eq!(
        assert_refused(&cp.result("op-future").await, "not_yet_valid").rule,
        "issued_at"
    );

    // Each refusal is one audit entry, with its code, and nothing else ran.
    let audit = agent.audit();
    for (id, code) in [
        ("op-replay", "replayed"),
        ("op-expired", "expired"),
        ("op-long", "lifetime_too_long"),
        ("op-future", "not_yet_valid"),
    ] {
        let entries: Vec<_> = audit.iter().filter(|e| e["op"] == id).collect();
        assert_eq!(entries.len(), 1, "{id}: {entries:?}");
        assert_eq!(entries[0]["kind"], "operation.refused");
        assert_eq!(entries[0]["detail"]["code"], code);
    }
    // The genuine next operation still runs.
    s.operation(cp.operation("op-5", 5, ResourceKind::Cluster, cluster("b")))
        .await;
    assert_eq!(cp.result("op-5").await.outcome(), Outcome::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_byte_leaves_the_account_in_any_frame_log_or_record() {
    let w = World::new();
    let mut cp = ControlPlane::start().await;
    let mut agent = w.agent_config("agent", SimDelays::default());
    cp.write_identity(&agent.data_dir());
    // Credentials a cloud SDK would find in the environment: planted canaries.
    let planted = [
        ("AWS_SECRET_ACCESS_KEY", "CANARYawsSecretKey7f3e01"),
        ("AWS_SESSION_TOKEN", "CANARYawsSessionToken91ab"),
        ("AZURE_CLIENT_SECRET", "CANARYazureClientSecret02"),
        ("GOOGLE_OAUTH_ACCESS_TOKEN", "CANARYgoogleAccessToken55"),
    ];
    agent.start_with_env(&planted);
    let s = cp.session(1).await;
    s.operation(cp.operation("op-c", 1, ResourceKind::Cluster, cluster("a")))
        .await;
    assert_eq!(cp.result("op-c").await.outcome(), Outcome::Succeeded);
    let db = json!({"name": "orders", "engine": "postgres", "version": "16", "size": "small", "storage_gb": 50});
    s.operation(cp.operation("op-db", 2, ResourceKind::Database, db)).await;
    let r = cp.result("op-db").await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    let reference = r.outputs.as_ref().expect("outputs").secret_refs["master_password"].clone();
    s.ack(&r).await;

    // The password the simulated cloud generated, read where it lives.
    let id = reference.split('/').nth(3).expect("secret id");
    let password = std::fs::read_to_string(agent.sim_dir().join("secrets").join(id)).expect("secret");
    let mut canaries: Vec<&str> = planted.iter().map(|(_, v)| *v).collect();
    canaries.push(password.trim());

    let frames = cp.received.lock().expect("received").clone();
    assert!(frames.len() > 200, "frames were captured ({} bytes)", frames.len());
    let places = [
        ("frames sent to the control plane", frames),
        ("agent log", agent.log().into_bytes()),
        (
            "audit log",
            std::fs::read(agent.data_dir().join("audit").join("log.jsonl")).expect("audit"),
        ),
        (
            "journal",
            std::fs::read(agent.data_dir().join("journal.log")).expect("journal"),
        ),
        (
            "status",
            std::fs::read(agent.data_dir().join("status.json")).unwrap_or_default(),
        ),
    ];
    for (place, bytes) in &places {
        for canary in &canaries {
            let found = bytes.windows(canary.len()).any(|w| w == canary.as_bytes());
            assert!(!found, "a planted secret ({canary}) appeared in the {place}");
        }
    }
    // The reference does leave: it is what the control plane is meant to get.
    let frames = &places[0].1;
    assert!(frames.windows(reference.len()).any(|w| w == reference.as_bytes()));
}

/// Unmounts a test's tmpfs however the test ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_operation_cannot_move_the_sequence_mark_while_the_audit_log_is_failed() {
    use std::process::Command;
    use std::time::Duration;
    let w = World::new();
    let mut cp = ControlPlane::start().await;
    let mut agent = w.agent_config("agent", SimDelays::default());
    cp.write_identity(&agent.data_dir());
    let audit_dir = agent.data_dir().join("audit");
    std::fs::create_dir_all(&audit_dir).expect("mkdir");
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(&audit_dir)
        .output()
        .expect("mount");
    assert!(
        out.status.success(),
        "this test fills a small tmpfs, and needs root to mount it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _unmount = Unmount(audit_dir.clone());
    agent.start();
    let s = cp.session(1).await;
    s.operation(cp.operation("op-1", 1, ResourceKind::Cluster, cluster("a")))
        .await;
    let r = cp.result("op-1").await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    s.ack(&r).await;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(audit_dir.join("filler")).expect("filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // Genuine operations until the log is full and they are refused.
    let mut seq = 2;
    loop {
        let id = format!("op-{seq}");
        s.operation(cp.operation(&id, seq, ResourceKind::Cluster, cluster(&format!("c{seq}"))))
            .await;
        let got = tokio::time::timeout(Duration::from_secs(5), cp.result(&id)).await;
        seq += 1;
        if let Ok(r) = got {
            if r.outcome() == Outcome::Refused {
                assert_refused(&r, "audit_unavailable");
                break;
            }
            s.ack(&r).await;
        }
        assert!(seq < 60, "the audit log never failed");
    }
    // A forged operation (bad signature) with the highest sequence there is:
    // refused, and its sequence is not believed.
    let mut forged = cp.operation("op-forged", u64::MAX, ResourceKind::Cluster, cluster("x"));
    forged.signature[0] ^= 1;
    s.operation(forged).await;
    let r = cp.result("op-forged").await;
    assert_eq!(r.outcome(), Outcome::Refused, "{r:?}");
    // Space back and a restart: the next genuine operation runs.
    agent.stop();
    std::fs::remove_file(audit_dir.join("filler")).expect("rm");
    agent.start();
    let s2 = cp.session(2).await;
    s2.operation(cp.operation("op-next", seq, ResourceKind::Cluster, cluster("next")))
        .await;
    let r = cp.result("op-next").await;
    assert_eq!(
        r.outcome(),
        Outcome::Succeeded,
        "a forged sequence moved the mark: {:?}",
        r.problem
    );
    agent.stop();
}
