//! The gate, table by table: one operation in, one verdict out, and the
//! records it leaves in a real audit log. Each row changes one thing about a
//! valid operation (or the agent's state) and names the verdict, code, rule
//! and whether the refusal may move the replay mark.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use byoc_audit::{AuditLog, Event, Options};
use byoc_gate::pause::Watcher;
use byoc_gate::policy::{Loaded, PolicyHandle};
use byoc_gate::{Clock, Gate, TargetConfig, Verdict};
use byoc_proto::agent::v1::{Action, Operation, ResourceKind, Target};
use serde_json::Value;

const NOW_MS: i64 = 1_700_000_000_000;
const AGENT: &str = "agt-1";
const HIGHEST: u64 = 10;

#[derive(Debug)]
struct Fixed;
impl Clock for Fixed {
    fn now_ms(&self) -> i64 {
        NOW_MS
    }
}

fn key() -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap()
}

fn target() -> TargetConfig {
    TargetConfig {
        cloud: "sim".into(),
        account: "acct-1".into(),
        region: "eu-west-1".into(),
    }
}

/// A valid, signed apply of a cluster (or of `kind` with `spec`).
fn op(action: Action, kind: ResourceKind, spec: &str) -> Operation {
    Operation {
        id: "op-11".into(),
        idempotency_key: "key-11".into(),
        agent_id: AGENT.into(),
        sequence: HIGHEST + 1,
        target: Some(Target {
            cloud: "sim".into(),
            account: "acct-1".into(),
            region: "eu-west-1".into(),
        }),
        action: action as i32,
        kind: kind as i32,
        spec_json: spec.into(),
        issued_at_unix_ms: NOW_MS - 1000,
        not_after_unix_ms: NOW_MS + 60_000,
        ..Default::default()
    }
}

const CLUSTER: &str = r#"{"name":"prod","kubernetes_version":"1.31"}"#;
const DATABASE: &str = r#"{"name":"orders","engine":"postgres","version":"16","size":"small","storage_gb":20}"#;

fn sign(mut o: Operation) -> Operation {
    byoc_proto::signing::sign(&mut o, &key());
    o
}

struct Rig {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    audit: AuditLog,
    gate: Gate,
}

fn rig(policy: Option<&str>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let (signer, _) = byoc_audit::load_or_create_key(&data.join("audit.key"), "byoc-agent/audit/agt-1").unwrap();
    let audit = AuditLog::open(&data.join("audit"), signer, Options::default()).unwrap();
    let loaded = match policy {
        None => Loaded::default_policy(),
        Some(text) => {
            let p = data.join("policy.toml");
            std::fs::write(&p, text).unwrap();
            Loaded::load(Some(&p)).unwrap()
        }
    };
    let gate = Gate {
        agent_id: AGENT.into(),
        target: target(),
        operation_key: key().public_key().as_ref().to_vec(),
        max_lifetime_ms: 15 * 60 * 1000,
        policy: Arc::new(PolicyHandle::new(loaded)),
        audit: audit.clone(),
        pause: Arc::new(Watcher::new(&data, audit.clone())),
        clock: Arc::new(Fixed),
    };
    Rig {
        _dir: dir,
        data,
        audit,
        gate,
    }
}

/// The audit entries, as (kind, op, detail).
fn entries(dir: &Path) -> Vec<(String, Option<String>, Value)> {
    let mut out = Vec::new();
    byoc_audit::export::for_each_entry(&dir.join("audit"), |e, _| {
        out.push((
            e["kind"].as_str().unwrap().to_string(),
            e.get("op").and_then(Value::as_str).map(str::to_string),
            e.get("detail").cloned().unwrap_or(Value::Null),
        ));
        Ok(())
    })
    .unwrap();
    out
}

#[derive(Debug, PartialEq)]
enum Want {
    Accept(Option<&'static str>),
    /// code, rule, sequence trusted
    Refuse(&'static str, &'static str, bool),
}

fn outcome(v: &Verdict) -> Want {
    match v {
        Verdict::Accept { approval, .. } => Want::Accept(approval.as_deref().map(|a| match a {
            "default.database_delete_needs_approval" => "default.database_delete_needs_approval",
            "kinds.cluster.apply" => "kinds.cluster.apply",
            other => panic!("unexpected approval rule {other}"),
        })),
        Verdict::Refuse(r) => Want::Refuse(r.code, leak(&r.rule), r.sequence_trusted),
        Verdict::RefuseUnaudited(r) => panic!("unaudited refusal {r:?}"),
    }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

#[tokio::test]
async fn each_check_refuses_with_its_rule_and_only_a_believable_sequence_is_trusted() {
    let cluster = || op(Action::Apply, ResourceKind::Cluster, CLUSTER);
    type Row = (&'static str, Box<dyn Fn() -> Operation>, Want);
    let rows: Vec<Row> = vec![
        ("valid", Box::new(move || sign(cluster())), Want::Accept(None)),
        (
            "signed by another key",
            Box::new(move || {
                let mut o = cluster();
                byoc_proto::signing::sign(&mut o, &Ed25519KeyPair::from_seed_unchecked(&[1; 32]).unwrap());
                o
            }),
            Want::Refuse("bad_signature", "signature", false),
        ),
        (
            "changed after signing",
            Box::new(move || {
                let mut o = sign(cluster());
                o.spec_json = r#"{"name":"other","kubernetes_version":"1.31"}"#.into();
                o
            }),
            Want::Refuse("bad_signature", "signature", false),
        ),
        (
            "another agent's",
            Box::new(move || {
                let mut o = cluster();
                o.agent_id = "agt-2".into();
                sign(o)
            }),
            Want::Refuse("wrong_target", "agent_id", false),
        ),
        (
            "a replayed sequence",
            Box::new(move || {
                let mut o = cluster();
                o.sequence = HIGHEST;
                sign(o)
            }),
            Want::Refuse("replayed", "sequence", false),
        ),
        (
            "expired",
            Box::new(move || {
                let mut o = cluster();
                o.not_after_unix_ms = NOW_MS;
                sign(o)
            }),
            Want::Refuse("expired", "not_after", true),
        ),
        (
            "valid for too long",
            Box::new(move || {
                let mut o = cluster();
                o.not_after_unix_ms = o.issued_at_unix_ms + 16 * 60 * 1000;
                sign(o)
            }),
            Want::Refuse("lifetime_too_long", "max_operation_lifetime", true),
        ),
        (
            "issued in the future",
            Box::new(move || {
                let mut o = cluster();
                o.issued_at_unix_ms = NOW_MS + 6 * 60 * 1000;
                o.not_after_unix_ms = NOW_MS + 7 * 60 * 1000;
                sign(o)
            }),
            Want::Refuse("not_yet_valid", "issued_at", true),
        ),
        (
            "another region",
            Box::new(move || {
                let mut o = cluster();
                o.target.as_mut().unwrap().region = "us-east-1".into();
                sign(o)
            }),
            Want::Refuse("wrong_target", "target", true),
        ),
        (
            "an invalid spec",
            Box::new(|| sign(op(Action::Apply, ResourceKind::Cluster, r#"{"name":""}"#))),
            Want::Refuse("invalid_spec", "spec", true),
        ),
        (
            "an unknown action",
            Box::new(move || {
                let mut o = cluster();
                o.action = 99;
                sign(o)
            }),
            Want::Refuse("invalid_spec", "action", true),
        ),
        (
            "a database delete (the default policy holds it)",
            Box::new(|| sign(op(Action::Delete, ResourceKind::Database, DATABASE))),
            Want::Accept(Some("default.database_delete_needs_approval")),
        ),
    ];
    for (name, make, want) in rows {
        let r = rig(None);
        let v = r.gate.decide(make(), HIGHEST).await;
        assert_eq!(outcome(&v), want, "{name}");
        // An accepted operation's policy decision is queued; it is durable
        // once the next record is.
        r.audit
            .record(Event::new("test.flush", None, Value::Null))
            .await
            .unwrap();
        let decisions: Vec<_> = entries(&r.data)
            .into_iter()
            .filter(|(k, _, _)| k == "policy.decision")
            .collect();
        match want {
            Want::Accept(_) => {
                assert_eq!(decisions.len(), 1, "{name}: {decisions:?}");
                assert_eq!(decisions[0].1.as_deref(), Some("op-11"), "{name}");
            }
            // The policy is not asked about what the checks refused.
            Want::Refuse(..) => assert!(decisions.is_empty(), "{name}: {decisions:?}"),
        }
    }
}

#[tokio::test]
async fn the_policy_decides_after_the_checks_and_its_decision_is_recorded_with_the_rule() {
    let policy = "[kinds.cluster]\napply = \"approve\"\ndelete = \"deny\"\n";
    let rows = [
        (Action::Plan, Want::Accept(None), "allow", "default.allow"),
        (
            Action::Apply,
            Want::Accept(Some("kinds.cluster.apply")),
            "approval_required",
            "kinds.cluster.apply",
        ),
        (
            Action::Delete,
            Want::Refuse("policy_denied", "kinds.cluster.delete", true),
            "deny",
            "kinds.cluster.delete",
        ),
    ];
    for (action, want, decision, rule) in rows {
        let r = rig(Some(policy));
        let v = r
            .gate
            .decide(sign(op(action, ResourceKind::Cluster, CLUSTER)), HIGHEST)
            .await;
        assert_eq!(outcome(&v), want, "{action:?}");
        r.audit
            .record(Event::new("test.flush", None, Value::Null))
            .await
            .unwrap();
        let d = entries(&r.data)
            .into_iter()
            .find(|(k, _, _)| k == "policy.decision")
            .unwrap_or_else(|| panic!("{action:?}: no policy.decision"));
        assert_eq!(d.2["decision"], decision, "{action:?}");
        assert_eq!(d.2["rule"], rule, "{action:?}");
        assert_eq!(d.2["policy_sha256"].as_str().map(str::len), Some(64));
    }
}

#[tokio::test]
async fn while_paused_a_valid_operation_is_refused_after_the_pause_is_audited() {
    let r = rig(None);
    byoc_gate::pause::pause(&r.data, "incident 42", NOW_MS).unwrap();
    let v = r
        .gate
        .decide(sign(op(Action::Apply, ResourceKind::Cluster, CLUSTER)), HIGHEST)
        .await;
    let Verdict::Refuse(refusal) = &v else { panic!("{v:?}") };
    assert_eq!((refusal.code, &*refusal.rule), ("paused", "local_kill_switch"));
    assert!(refusal.message.contains("incident 42"), "{}", refusal.message);
    // The switch was audited before the gate answered.
    let log = entries(&r.data);
    assert_eq!(log.last().map(|e| e.0.as_str()), Some("agent.paused"), "{log:?}");
    assert_eq!(log.last().unwrap().2["reason"], "incident 42");
    // Even paused, a forged operation does not get its sequence believed.
    let mut forged = op(Action::Apply, ResourceKind::Cluster, CLUSTER);
    forged.sequence = u64::MAX;
    let Verdict::Refuse(r2) = r.gate.decide(forged, HIGHEST).await else {
        panic!("forged accepted")
    };
    assert_eq!((r2.code, r2.sequence_trusted), ("bad_signature", false));
}
