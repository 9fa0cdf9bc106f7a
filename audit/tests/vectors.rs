//! The example log checked in beside docs/audit-log.md (the page's test
//! vectors) still verifies, and the figures the page quotes are its own.
//! Regenerate it with `BYOC_WRITE_AUDIT_VECTORS=1 cargo test -p byoc-audit --test vectors`
//! (then update the figures in the page: the test prints them).

#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use byoc_audit::note::{Checkpoint, TlogProof, Verifier};
use byoc_audit::{AuditLog, Event, Options, load_or_create_key, merkle, verify};
use serde_json::json;

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/audit-log-example")
}

async fn write_example(dir: &Path) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (signer, _) = load_or_create_key(&tmp.path().join("audit.key"), "byoc-agent/audit/agt-example").expect("key");
    for f in ["log.jsonl", "checkpoint", "receipts.jsonl", "verifier.key"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let log = AuditLog::open(
        dir,
        signer,
        Options {
            checkpoint_every: 4,
            checkpoint_interval: Duration::from_secs(3600),
        },
    )
    .expect("open");
    let actor = json!({"control_plane": "https://control.example.com:7443", "ca_sha256": "8f4c…", "operation_key_sha256": "2b1e…"});
    let events = vec![
        Event::new(
            "agent.enrolled",
            None,
            json!({"agent_id": "agt-example", "control_plane": "https://control.example.com:7443"}),
        ),
        Event::new(
            "agent.started",
            None,
            json!({"version": "0.1.0", "resuming": 0, "unacknowledged_results": 0}),
        ),
        Event::new(
            "session.connected",
            None,
            json!({"control_plane": "https://control.example.com:7443", "control_plane_id": "cp-1"}),
        ),
        Event::new(
            "operation.received",
            Some("op-1"),
            json!({"sequence": 1, "action": "apply", "kind": "cluster", "name": "prod"}),
        )
        .with_actor(actor.clone()),
        Event::new(
            "policy.decision",
            Some("op-1"),
            json!({"decision": "allow", "rule": "kinds.cluster.apply"}),
        ),
        Event::new(
            "operation.started",
            Some("op-1"),
            json!({"action": "apply", "kind": "cluster", "name": "prod"}),
        ),
        Event::new(
            "provider.call",
            Some("op-1"),
            json!({"action": "eks:CreateCluster", "resource": "cluster/prod", "mutating": true}),
        ),
        Event::new(
            "operation.finished",
            Some("op-1"),
            json!({"outcome": "OUTCOME_SUCCEEDED", "resource_id": "prod",
            "calls": {"made": [{"action": "eks:CreateCluster", "resource": "cluster/prod", "mutating": true, "request_id": "6c1e0f51-0e0b-4b7e-9f55-0d7d1b0d3a10"}], "read_only_not_listed": 0}}),
        ),
        Event::new(
            "operation.received",
            Some("op-2"),
            json!({"sequence": 2, "action": "delete", "kind": "database", "name": "orders"}),
        )
        .with_actor(actor),
        Event::new(
            "operation.refused",
            Some("op-2"),
            json!({"sequence": 2, "code": "policy_denied", "rule": "protected.name:orders", "message": "orders is protected"}),
        ),
    ];
    for e in events {
        log.record(e).await.expect("record");
    }
    log.close().await.expect("close");
}

#[tokio::test]
async fn the_checked_in_example_log_verifies_and_matches_the_page() {
    let dir = example_dir();
    if std::env::var_os("BYOC_WRITE_AUDIT_VECTORS").is_some() {
        write_example(&dir).await;
    }
    let s = verify::verify_dir(&dir, &verify::Options::default()).expect("the example verifies");
    let text = std::fs::read_to_string(dir.join("log.jsonl")).expect("log");
    let lines: Vec<&str> = text.lines().collect();
    let leaves: Vec<merkle::Hash> = lines.iter().map(|l| merkle::leaf_hash(l.as_bytes())).collect();
    let vkey = std::fs::read_to_string(dir.join("verifier.key")).expect("vkey");
    let v = Verifier::parse(&vkey).expect("vkey");
    let note = std::fs::read_to_string(dir.join("checkpoint")).expect("checkpoint");
    let cp = Checkpoint::parse(v.open(&note).expect("signed")).expect("checkpoint");
    let receipts = std::fs::read_to_string(dir.join("receipts.jsonl")).expect("receipts");
    let first: serde_json::Value = serde_json::from_str(receipts.lines().next().expect("a receipt")).expect("json");
    let proof = TlogProof::parse(first["proof"].as_str().expect("proof")).expect("tlog-proof");

    let b64 = |h: &merkle::Hash| base64::engine::general_purpose::STANDARD.encode(h);
    println!(
        "entries {} checkpoints {} receipts {}",
        s.entries, s.checkpoints, s.receipts
    );
    println!("leaf 0 {}", hex::encode(leaves[0]));
    println!("head of the first 4 {}", b64(&merkle::root(&leaves[..4])));
    println!("newest checkpoint size {} root {}", cp.size, b64(&cp.root));
    println!(
        "first receipt index {} proof {:?}",
        proof.index,
        proof.proof.iter().map(b64).collect::<Vec<_>>()
    );

    // The figures docs/audit-log.md quotes.
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/audit-log.md")).expect("page");
    for quoted in [
        hex::encode(leaves[0]),
        b64(&merkle::root(&leaves[..4])),
        b64(&cp.root),
        vkey.trim().to_string(),
    ] {
        assert!(page.contains(&quoted), "docs/audit-log.md does not quote {quoted}");
    }
    assert_eq!(cp.size as usize, lines.len() - 1);
    assert!(merkle::verify_inclusion(
        &leaves[proof.index as usize],
        proof.index,
        {
            Checkpoint::parse(v.open(&proof.checkpoint).expect("signed"))
                .expect("cp")
                .size
        },
        &proof.proof,
        &Checkpoint::parse(v.open(&proof.checkpoint).expect("signed"))
            .expect("cp")
            .root
    ));
}
