//! Golden files of the agent's on-disk formats, under `agent/tests/golden/`:
//! a change to one of them is a visible diff there and fails here.
//!
//! - `journal.log`: the journal (`byoc_agent::journal`) as written through
//!   `Journal` for a fixed sequence of records, every record kind (`op`,
//!   `held_op`, `result`, `ack`, `seen`); `journal.compacted.log`: the same
//!   journal once `Journal::open` has replayed and compacted it;
//! - `enrollment.json`: `identity/enrollment.json` for a fixed `Enrollment`;
//!   `identity-layout.txt`: the names and modes of the identity directory's
//!   files once the agent has renewed its certificate and stored a CA bundle;
//! - `status.json`: what `byoc-agent status --json` prints (`status::Report`);
//!   `status-never-ran.json`: the same for a data directory the agent never
//!   ran with; `status-file.json`: the `status.json` the running agent
//!   publishes in its data directory (`status::Status`).
//!
//! Each golden is checked both ways: what the code writes equals the file,
//! and what the file says is read back as the fixed value.
//!
//! After a deliberate format change (one that older files still read, or with
//! a migration), regenerate the files with
//! `BYOC_UPDATE_GOLDEN=1 cargo test -p byoc-agent --test golden`, run the
//! tests again without it, and review the diff of `agent/tests/golden/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use byoc_agent::identity::{self, Enrollment, Identity};
use byoc_agent::journal::Journal;
use byoc_agent::status::{Report, Status, StatusHandle};
use byoc_gate::Clock;
use byoc_gate::pause::Pause;
use byoc_proto::agent::v1::{
    Action, Change, Operation, OperationResult, Outcome, Outputs, Problem, ResourceKind, Target,
};
use byoc_testkit::{Golden, mode};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The golden files, in `agent/tests/golden/`.
const G: Golden = Golden::new(
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden"),
    "cargo test -p byoc-agent --test golden",
    "the agent's on-disk format changed",
);
/// 2023-11-14T22:13:20Z.
const START_MS: i64 = 1_700_000_000_000;
const AGENT_ID: &str = "agt-golden";

// ---------------------------------------------------------------- journal

fn target() -> Target {
    Target {
        cloud: "sim".into(),
        account: "acct-1".into(),
        region: "r1".into(),
    }
}

fn op(seq: u64, action: Action, kind: ResourceKind, name: &str) -> Operation {
    Operation {
        id: format!("op-{seq}"),
        idempotency_key: format!("idem-{seq}"),
        target: Some(target()),
        action: action as i32,
        kind: kind as i32,
        spec_json: format!(r#"{{"name":"{name}"}}"#),
        issued_at_unix_ms: START_MS + seq as i64 * 1000,
        not_after_unix_ms: START_MS + seq as i64 * 1000 + 900_000,
        sequence: seq,
        agent_id: AGENT_ID.into(),
        signature: vec![0xab; 64],
    }
}

fn op1() -> Operation {
    op(1, Action::Apply, ResourceKind::Cluster, "prod")
}

fn op2() -> Operation {
    op(2, Action::Delete, ResourceKind::Database, "orders")
}

fn op3() -> Operation {
    op(3, Action::Apply, ResourceKind::NodePool, "workers")
}

const HELD_BY: &str = "kinds.database.delete";

/// Maps have one entry each: prost encodes a HashMap in its iteration order.
fn result1() -> OperationResult {
    OperationResult {
        result_seq: 1,
        operation_id: "op-1".into(),
        sequence: 1,
        outcome: Outcome::Succeeded as i32,
        outputs: Some(Outputs {
            resource_id: "prod".into(),
            status: "ACTIVE".into(),
            endpoints: [("api".to_string(), "https://prod.example".to_string())].into(),
            secret_refs: [("kubeconfig".to_string(), "sim://secrets/prod".to_string())].into(),
            attributes: [("version".to_string(), "1.31".to_string())].into(),
        }),
        plan: vec![Change {
            path: "desired_size".into(),
            from_json: "2".into(),
            to_json: "3".into(),
            requires_replacement: false,
            kind: "update".into(),
        }],
        problem: None,
        finished_at_unix_ms: START_MS + 60_000,
    }
}

/// The refusal of operation 4, which has no `op` record (`seen` covers it).
fn result2() -> OperationResult {
    OperationResult {
        result_seq: 2,
        operation_id: "op-4".into(),
        sequence: 4,
        outcome: Outcome::Refused as i32,
        outputs: None,
        plan: vec![],
        problem: Some(Problem {
            code: "policy_denied".into(),
            message: "orders is protected".into(),
            field: String::new(),
            rule: "protected.name:orders".into(),
            retry_after_ms: 0,
        }),
        finished_at_unix_ms: START_MS + 61_000,
    }
}

fn result3() -> OperationResult {
    OperationResult {
        result_seq: 3,
        operation_id: "op-3".into(),
        sequence: 3,
        outcome: Outcome::Failed as i32,
        outputs: None,
        plan: vec![],
        problem: Some(Problem {
            code: "provider_error".into(),
            message: "throttled".into(),
            field: "desired_size".into(),
            rule: String::new(),
            retry_after_ms: 30_000,
        }),
        finished_at_unix_ms: START_MS + 62_000,
    }
}

/// Writes the fixed sequence of records through `Journal`, every record kind.
async fn write_journal(path: &Path) {
    {
        // Opening a new journal writes the snapshot of an empty one.
        let (j, replayed) = Journal::open(path).expect("open");
        assert!(replayed.pending.is_empty() && replayed.outbox.is_empty());
        j.accepted(&op1(), None).await.expect("op 1");
        j.accepted(&op2(), Some(HELD_BY)).await.expect("op 2, held");
        j.accepted(&op3(), None).await.expect("op 3");
        j.seen(4).await.expect("seen 4");
        j.result(&result1()).await.expect("result 1");
        j.result(&result2()).await.expect("result 2");
        j.acked(1).await.expect("ack 1");
        j.result(&result3()).await.expect("result 3");
    }
}

#[tokio::test]
async fn the_journal_is_written_as_its_golden_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.log");
    write_journal(&path).await;
    G.assert("journal.log", &std::fs::read(&path).expect("read"));
}

#[tokio::test]
async fn the_golden_journal_replays_to_its_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.log");
    if Golden::updating() {
        write_journal(&path).await;
    } else {
        std::fs::write(&path, G.read("journal.log")).expect("copy");
    }
    let check = |st: &byoc_agent::journal::Replayed| {
        // Operation 1 has its result, operation 3 too; operation 2 is held.
        assert_eq!(st.pending.len(), 1, "{:?}", st.pending);
        assert_eq!(st.pending[0].op, op2());
        assert_eq!(st.pending[0].approval.as_deref(), Some(HELD_BY));
        // Result 1 was acknowledged; 2 and 3 were not.
        assert_eq!(st.outbox.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(st.outbox[&2], result2());
        assert_eq!(st.outbox[&3], result3());
        assert_eq!(st.acked_result_seq, 1);
        assert_eq!(st.highest_result_seq, 3);
        assert_eq!(st.highest_op_seq, 4);
    };
    let (j, st) = Journal::open(&path).expect("replay the golden journal");
    check(&st);
    drop(j);
    // Replay compacted the file to what is live.
    G.assert("journal.compacted.log", &std::fs::read(&path).expect("read"));
    let (_j, st) = Journal::open(&path).expect("replay the compacted journal");
    check(&st);
}

// ---------------------------------------------------------------- identity

fn enrollment() -> Enrollment {
    Enrollment {
        agent_id: AGENT_ID.into(),
        control_plane: "https://control.example.com:7443".into(),
        certificate_not_after_unix_ms: START_MS + 30 * 24 * 3600 * 1000,
        certificate_issued_unix_ms: START_MS,
    }
}

fn assert_enrollment(e: &Enrollment, want: &Enrollment) {
    assert_eq!(e.agent_id, want.agent_id);
    assert_eq!(e.control_plane, want.control_plane);
    assert_eq!(e.certificate_not_after_unix_ms, want.certificate_not_after_unix_ms);
    assert_eq!(e.certificate_issued_unix_ms, want.certificate_issued_unix_ms);
}

struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new(cn: &str) -> Self {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(1));
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().expect("key");
        let der = p.self_signed(&key).expect("ca").der().clone();
        Self {
            issuer: rcgen::Issuer::from_ca_cert_der(&der, key).expect("issuer"),
            der,
        }
    }

    fn leaf(&self, eku: rcgen::ExtendedKeyUsagePurpose, name: &str) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        p.extended_key_usages = vec![eku];
        let key = rcgen::KeyPair::generate().expect("key");
        (p.signed_by(&key, &self.issuer).expect("leaf").der().clone(), key)
    }
}

/// An identity directory as `byoc-agent enroll` leaves it (agent/src/enroll.rs),
/// with the golden `enrollment.json`. The files the agent rewrites later are
/// written here with mode 0640, so that the listing shows the agent's modes.
fn enrolled_data_dir(ca: &TestCa) -> tempfile::TempDir {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = identity::dir(data.path());
    assert_eq!(dir, data.path().join("identity"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (cert, key) = ca.leaf(rcgen::ExtendedKeyUsagePurpose::ClientAuth, AGENT_ID);
    for (name, bytes, mode) in [
        ("agent.key", key.serialize_pem().into_bytes(), 0o640),
        ("agent.der", cert.to_vec(), 0o640),
        ("ca.der", ca.der.to_vec(), 0o644),
        ("operation-key.pub", vec![7; 32], 0o644),
        (
            "enrollment.json",
            G.read_or("enrollment.json", || {
                serde_json::to_vec_pretty(&enrollment()).expect("json")
            }),
            0o640,
        ),
    ] {
        identity::write_atomic(&dir.join(name), &bytes, mode).expect(name);
    }
    data
}

#[test]
fn enrollment_json_is_written_as_its_golden_file() {
    let ca = TestCa::new("byoc-control CA");
    let (cert, key) = ca.leaf(rcgen::ExtendedKeyUsagePurpose::ClientAuth, AGENT_ID);
    let data = tempfile::tempdir().expect("tempdir");
    let dir = identity::dir(data.path());
    std::fs::create_dir_all(&dir).expect("mkdir");
    let id = Identity {
        dir: dir.clone(),
        enrollment: enrollment(),
        cert,
        key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key"),
        trust: vec![ca.der.clone()],
        operation_key: vec![7; 32],
    };
    id.save_enrollment().expect("save");
    let path = dir.join("enrollment.json");
    G.assert("enrollment.json", &std::fs::read(&path).expect("read"));
    assert_eq!(mode(&path), 0o644);
}

#[test]
fn the_golden_enrollment_json_loads_as_an_identity() {
    let file = G.read_or("enrollment.json", || {
        serde_json::to_vec_pretty(&enrollment()).expect("json")
    });
    let parsed: Enrollment = serde_json::from_slice(&file).expect("parse");
    assert_enrollment(&parsed, &enrollment());
    let ca = TestCa::new("byoc-control CA");
    let data = enrolled_data_dir(&ca);
    assert!(Identity::is_enrolled(data.path()));
    let id = Identity::load(data.path()).expect("load");
    assert_enrollment(&id.enrollment, &enrollment());
    assert_eq!(id.trust, vec![ca.der.clone()]);
    assert_eq!(id.operation_key, vec![7; 32]);
}

#[test]
fn the_identity_directory_has_its_golden_layout() {
    let ca = TestCa::new("byoc-control CA");
    let data = enrolled_data_dir(&ca);
    let mut id = Identity::load(data.path()).expect("load");

    // A renewal rewrites the key, the certificate and enrollment.json.
    let (cert, key) = ca.leaf(rcgen::ExtendedKeyUsagePurpose::ClientAuth, AGENT_ID);
    id.store_renewal(
        &key.serialize_pem(),
        cert.to_vec(),
        START_MS + 60 * 24 * 3600 * 1000,
        START_MS + 1000,
    )
    .expect("renewal");

    // A CA rotation stores a bundle (a new CA beside the old one), offered by a
    // server the agent already trusts.
    let next = TestCa::new("byoc-control CA 2");
    let (server, _) = ca.leaf(rcgen::ExtendedKeyUsagePurpose::ServerAuth, "127.0.0.1");
    let bundle = byoc_agent::trust::accept_offer(
        std::slice::from_ref(&ca.der),
        &[next.der.to_vec(), ca.der.to_vec()],
        &[server, ca.der.clone()],
        &ServerName::try_from("127.0.0.1").expect("name"),
        UnixTime::now(),
    )
    .expect("accept")
    .expect("a new bundle");
    id.store_trust(bundle).expect("store the bundle");
    let id = Identity::load(data.path()).expect("reload");
    assert_eq!(id.trust, vec![next.der.clone(), ca.der.clone()]);

    let dir = identity::dir(data.path());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut layout = String::from(
        "# <data_dir>/identity/ after enrollment, a certificate renewal and a CA rotation:\n\
         # file name, mode. Generated by agent/tests/golden.rs (BYOC_UPDATE_GOLDEN=1).\n\
         # ca.der and operation-key.pub are written only by `byoc-agent enroll`: the test\n\
         # writes them as enroll does, so their names (which Identity::load reads) are\n\
         # checked here, not their modes.\n",
    );
    for n in names {
        layout.push_str(&format!("{n} {:04o}\n", mode(&dir.join(&n))));
    }
    G.assert("identity-layout.txt", layout.as_bytes());
}

// ---------------------------------------------------------------- status

fn status() -> Status {
    Status {
        pid: 4242,
        agent_id: AGENT_ID.into(),
        version: "0.1.0".into(),
        control_plane: "https://control.example.com:7443".into(),
        connection: "connected".into(),
        since_unix_ms: START_MS,
        last_error: Some("connection reset by peer".into()),
        certificate_not_after_unix_ms: START_MS + 30 * 24 * 3600 * 1000,
        operations_in_flight: vec!["op-2".into(), "op-3".into()],
        awaiting_approval: vec!["op-2".into()],
        results_unacknowledged: 2,
        paused: Some(Pause {
            since_unix_ms: START_MS + 5000,
            by: "alice (uid 1000)".into(),
            reason: "incident 42".into(),
        }),
        updated_unix_ms: START_MS + 6000,
    }
}

fn report() -> Report {
    Report {
        running: true,
        enrolled: true,
        agent: Some(status()),
    }
}

fn never_ran() -> Report {
    Report {
        running: false,
        enrolled: false,
        agent: None,
    }
}

/// What `byoc-agent status --json` prints (agent/src/main.rs: `println!` of
/// `to_string_pretty`).
fn printed(r: &Report) -> Vec<u8> {
    format!("{}\n", serde_json::to_string_pretty(r).expect("json")).into_bytes()
}

#[test]
fn status_json_is_printed_as_its_golden_file() {
    G.assert("status.json", &printed(&report()));
    G.assert("status-never-ran.json", &printed(&never_ran()));
}

#[test]
fn the_golden_status_json_parses_to_its_report() {
    // Report has no PartialEq: its Debug form says every field.
    for (name, want) in [("status.json", report()), ("status-never-ran.json", never_ran())] {
        let file = G.read_or(name, || printed(&want));
        let parsed: Report = serde_json::from_slice(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(format!("{parsed:?}"), format!("{want:?}"), "{name}");
    }
}

#[derive(Debug)]
struct Fixed;
impl Clock for Fixed {
    fn now_ms(&self) -> i64 {
        START_MS
    }
}

#[tokio::test]
async fn the_published_status_file_is_written_as_its_golden_file() {
    let data = tempfile::tempdir().expect("tempdir");
    let file = byoc_agent::status::path(data.path());
    assert_eq!(file, data.path().join("status.json"));
    // The writer task publishes the initial state at once (through a
    // temporary file renamed into place: once there, it is whole).
    let _handle = StatusHandle::start(data.path(), status(), Arc::new(Fixed));
    let mut waited = Duration::ZERO;
    while !file.exists() {
        assert!(waited < Duration::from_secs(10), "status.json was never written");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    G.assert("status-file.json", &std::fs::read(&file).expect("read"));

    // The other way: the golden file is what `byoc-agent status` reads.
    let file = G.read_or("status-file.json", || std::fs::read(&file).expect("read"));
    let other = tempfile::tempdir().expect("tempdir");
    std::fs::write(byoc_agent::status::path(other.path()), &file).expect("copy");
    let parsed: Status = serde_json::from_slice(&file).expect("parse");
    assert_eq!(format!("{parsed:?}"), format!("{:?}", status()));
    let read = Report::read(other.path()).expect("read the report");
    let agent = read.agent.expect("the published state");
    assert_eq!(agent.agent_id, AGENT_ID);
    assert_eq!(agent.operations_in_flight, status().operations_in_flight);
}
