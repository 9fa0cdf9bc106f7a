//! Golden file of the reference control plane's durable state,
//! `control/tests/golden/state.log`: the JSON lines `byoc_control::store`
//! writes, one of each record type (`token`, with and without the pinned CA;
//! `token_used`; `agent`; `cert`, with and without the issuing CA; `op`;
//! `result`; `revoked`), written through the store's API as the control plane
//! writes them (control/src/admin.rs, service.rs). A change to the format is a
//! diff of that file and fails here; the golden file is also replayed by
//! `Store::open` and the state it rebuilds is checked, so files written by an
//! older control plane keep their meaning.
//!
//! After a deliberate format change (one that older logs still read),
//! regenerate it with `BYOC_UPDATE_GOLDEN=1 cargo test -p byoc-control --test state_log`,
//! run the test again without it, and review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use aws_lc_rs::signature::Ed25519KeyPair;
use byoc_control::store::{Record, ResultDisposition, State, Store};
use byoc_proto::agent::v1::{Action, Change, Operation, OperationResult, Outcome, Outputs, ResourceKind, Target};
use byoc_testkit::Golden;

/// The golden file, in `control/tests/golden/`.
const G: Golden = Golden::new(
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden"),
    "cargo test -p byoc-control --test state_log",
    "the control plane's state format changed",
);
/// 2023-11-14T22:13:20Z.
const START_MS: i64 = 1_700_000_000_000;
const DAY_MS: i64 = 24 * 3600 * 1000;
const AGENT: &str = "agt-0123456789abcdef";
const OLD_AGENT: &str = "agt-fedcba9876543210";
/// Hex SHA-256 of a token secret, of a CA, of certificates (fixed stand-ins).
const TOKEN_HASH: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const OLD_TOKEN_HASH: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const CA: &str = "caca000000000000000000000000000000000000000000000000000000000001";
const CERT_1: &str = "c1c1000000000000000000000000000000000000000000000000000000000001";
const CERT_2: &str = "c2c2000000000000000000000000000000000000000000000000000000000002";
const OLD_CERT: &str = "c0c0000000000000000000000000000000000000000000000000000000000000";

/// The operation-signing key, fixed (Ed25519 signatures are deterministic).
fn op_key() -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[9; 32]).expect("key")
}

fn target() -> Target {
    Target {
        cloud: "sim".into(),
        account: "acct-1".into(),
        region: "r1".into(),
    }
}

/// What `Submit` builds under the store's lock (control/src/admin.rs).
fn op(st: &State, n: i64, action: Action, kind: ResourceKind, spec: &str) -> Operation {
    let agent = st.agents.get(AGENT).expect("the agent");
    let mut op = Operation {
        id: format!("op-{n:016x}"),
        idempotency_key: format!("idem-{n}"),
        target: Some(agent.target.clone()),
        action: action as i32,
        kind: kind as i32,
        spec_json: spec.into(),
        issued_at_unix_ms: START_MS + n * 1000,
        not_after_unix_ms: START_MS + n * 1000 + 900_000,
        sequence: agent.last_seq + 1,
        agent_id: AGENT.into(),
        signature: Vec::new(),
    };
    byoc_proto::signing::sign(&mut op, &op_key());
    op
}

/// One entry per map: prost encodes a HashMap in its iteration order.
fn result_of_op_1() -> OperationResult {
    OperationResult {
        result_seq: 1,
        operation_id: format!("op-{:016x}", 1),
        sequence: 1,
        outcome: Outcome::Succeeded as i32,
        outputs: Some(Outputs {
            resource_id: "prod".into(),
            status: "ACTIVE".into(),
            endpoints: [("api".to_string(), "https://prod.example".to_string())].into(),
            secret_refs: Default::default(),
            attributes: [("version".to_string(), "1.31".to_string())].into(),
        }),
        plan: vec![Change {
            path: String::new(),
            from_json: String::new(),
            to_json: r#"{"name":"prod"}"#.into(),
            requires_replacement: false,
            kind: "create".into(),
        }],
        problem: None,
        finished_at_unix_ms: START_MS + 120_000,
    }
}

/// Writes the fixed history through the store's API.
async fn write_state(path: &Path) {
    let store = Store::open(path).expect("open");
    // A token from before CA rotation existed (no pinned CA), never used.
    store
        .commit(Record::Token {
            hash: OLD_TOKEN_HASH.into(),
            expires_unix_ms: START_MS - DAY_MS,
            ca: String::new(),
        })
        .await
        .expect("old token");
    // An agent enrolled before CA rotation existed, since revoked.
    store
        .commit(Record::Agent {
            id: OLD_AGENT.into(),
            cloud: "aws".into(),
            account: "123456789012".into(),
            region: "eu-west-1".into(),
            hostname: "old-host".into(),
        })
        .await
        .expect("old agent");
    store
        .commit(Record::Cert {
            agent: OLD_AGENT.into(),
            fingerprint: OLD_CERT.into(),
            not_after_unix_ms: START_MS + DAY_MS,
            ca: String::new(),
        })
        .await
        .expect("old cert");
    // `token create`, then an enrollment with it.
    store
        .commit(Record::Token {
            hash: TOKEN_HASH.into(),
            expires_unix_ms: START_MS + 900_000,
            ca: CA.into(),
        })
        .await
        .expect("token");
    store
        .commit(Record::TokenUsed {
            hash: TOKEN_HASH.into(),
        })
        .await
        .expect("token used");
    store
        .commit(Record::Agent {
            id: AGENT.into(),
            cloud: target().cloud,
            account: target().account,
            region: target().region,
            hostname: "host-1".into(),
        })
        .await
        .expect("agent");
    store
        .commit(Record::Cert {
            agent: AGENT.into(),
            fingerprint: CERT_1.into(),
            not_after_unix_ms: START_MS + 30 * DAY_MS,
            ca: CA.into(),
        })
        .await
        .expect("cert");
    // Two operations, the first with its result.
    store
        .commit_op(|st| op(st, 1, Action::Apply, ResourceKind::Cluster, r#"{"name":"prod"}"#))
        .await
        .expect("op 1");
    store
        .commit_op(|st| op(st, 2, Action::Delete, ResourceKind::Database, r#"{"name":"orders"}"#))
        .await
        .expect("op 2");
    let d = store.commit_result(AGENT, &result_of_op_1()).await.expect("result");
    assert_eq!(d, ResultDisposition::Recorded);
    // A renewal, then the old agent revoked.
    store
        .commit(Record::Cert {
            agent: AGENT.into(),
            fingerprint: CERT_2.into(),
            not_after_unix_ms: START_MS + 50 * DAY_MS,
            ca: CA.into(),
        })
        .await
        .expect("renewed cert");
    store
        .commit(Record::Revoked {
            agent: OLD_AGENT.into(),
        })
        .await
        .expect("revoked");
}

#[tokio::test]
async fn the_state_log_is_written_as_its_golden_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.log");
    write_state(&path).await;
    G.assert("state.log", &std::fs::read(&path).expect("read"));
}

fn check_state(st: &State) {
    assert_eq!(st.tokens.len(), 2);
    let t = &st.tokens[TOKEN_HASH];
    assert_eq!(
        (t.expires_unix_ms, t.used, t.ca.as_str()),
        (START_MS + 900_000, true, CA)
    );
    let t = &st.tokens[OLD_TOKEN_HASH];
    assert_eq!(
        (t.expires_unix_ms, t.used, t.ca.as_str()),
        (START_MS - DAY_MS, false, "")
    );

    assert_eq!(st.agents.keys().collect::<Vec<_>>(), vec![AGENT, OLD_AGENT]);
    let a = &st.agents[AGENT];
    assert_eq!(a.id, AGENT);
    assert_eq!(a.target, target());
    assert_eq!(a.hostname, "host-1");
    assert_eq!(
        a.cert_not_after_unix_ms,
        START_MS + 50 * DAY_MS,
        "the renewed certificate"
    );
    assert_eq!(a.cert_ca, CA);
    assert_eq!(a.last_seq, 2);
    assert_eq!(a.acked_result_seq, 1);
    assert!(!a.revoked);
    let old = &st.agents[OLD_AGENT];
    assert_eq!(
        old.target,
        Target {
            cloud: "aws".into(),
            account: "123456789012".into(),
            region: "eu-west-1".into(),
        }
    );
    assert_eq!(old.hostname, "old-host");
    assert_eq!(old.cert_not_after_unix_ms, START_MS + DAY_MS);
    assert_eq!(old.cert_ca, "");
    assert_eq!((old.last_seq, old.acked_result_seq), (0, 0));
    assert!(old.revoked);

    assert_eq!(st.certs.len(), 3);
    for (fp, agent, not_after, ca) in [
        (CERT_1, AGENT, START_MS + 30 * DAY_MS, CA),
        (CERT_2, AGENT, START_MS + 50 * DAY_MS, CA),
        (OLD_CERT, OLD_AGENT, START_MS + DAY_MS, ""),
    ] {
        let c = &st.certs[fp];
        assert_eq!(
            (c.agent.as_str(), c.not_after_unix_ms, c.ca.as_str()),
            (agent, not_after, ca),
            "{fp}"
        );
    }

    let ids: Vec<_> = st.by_agent[AGENT].iter().map(|(s, id)| (*s, id.clone())).collect();
    assert_eq!(ids, vec![(1, format!("op-{:016x}", 1)), (2, format!("op-{:016x}", 2))]);
    assert_eq!(st.by_agent.len(), 1);
    assert_eq!(st.ops.len(), 2);
    let public = byoc_proto::signing::public_key(&op_key());
    for (n, action, kind, spec, results) in [
        (
            1,
            Action::Apply,
            ResourceKind::Cluster,
            r#"{"name":"prod"}"#,
            vec![result_of_op_1()],
        ),
        (
            2,
            Action::Delete,
            ResourceKind::Database,
            r#"{"name":"orders"}"#,
            vec![],
        ),
    ] {
        let o = &st.ops[&format!("op-{n:016x}")];
        assert_eq!(o.op.sequence, n as u64);
        assert_eq!(o.op.idempotency_key, format!("idem-{n}"));
        assert_eq!(o.op.target, Some(target()));
        assert_eq!((o.op.action, o.op.kind), (action as i32, kind as i32));
        assert_eq!(o.op.spec_json, spec);
        assert_eq!(o.op.issued_at_unix_ms, START_MS + n * 1000);
        assert_eq!(o.op.not_after_unix_ms, START_MS + n * 1000 + 900_000);
        assert_eq!(o.op.agent_id, AGENT);
        assert_eq!(
            byoc_proto::signing::verify(&o.op, &public),
            Ok(()),
            "op {n}'s signature"
        );
        assert_eq!(o.results, results);
        assert_eq!((o.duplicates_ignored, o.claimed), (0, false));
    }
}

#[tokio::test]
async fn the_golden_state_log_replays_to_its_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.log");
    if Golden::updating() {
        write_state(&path).await;
    } else {
        std::fs::write(&path, G.read("state.log")).expect("copy the golden file");
    }
    {
        let store = Store::open(&path).expect("replay the golden state log");
        check_state(&store.lock());
    }
    // Replay compacted it into a snapshot of the same records: same state.
    let store = Store::open(&path).expect("replay the compacted log");
    check_state(&store.lock());
}
