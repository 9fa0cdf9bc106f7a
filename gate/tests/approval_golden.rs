//! Golden files of the local approval files (`byoc_gate::approval`), under
//! `gate/tests/golden/`: the files through which `byoc-agent approve` and
//! `reject` (one binary version) reach the running agent (maybe another).
//!
//! - `pending-hold.json`: `approvals/pending/<op>.json` for a fixed `Hold`
//!   with its plan; `pending-hold-planning.json`: the same before the plan;
//! - `decision-approve.json`, `decision-reject.json`:
//!   `approvals/decisions/<op>.json` for a fixed `LocalDecision`.
//!
//! Each is checked both ways: what the code writes (through `write_hold` and
//! `decide`, at the paths and with the modes they use) equals the golden
//! file, and the golden file reads back (`read_hold`, `list`,
//! `read_decision`) as the fixed value. A decision names the local user from
//! the environment: the golden files say `alice`, and the user's name as
//! written is put back to `alice` before comparing.
//!
//! After a deliberate format change (one that older files still read),
//! regenerate the files with `BYOC_UPDATE_GOLDEN=1 cargo test -p byoc-gate --test approval_golden`,
//! run the test again without it, and review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::MetadataExt as _;

use byoc_gate::approval::{self, Choice, Decided, Hold, LocalDecision};
use byoc_provider::{Change, Plan, PlanSummary};
use byoc_testkit::{Golden, mode};
use serde_json::json;

/// The golden files, in `gate/tests/golden/`.
const G: Golden = Golden::new(
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden"),
    "cargo test -p byoc-gate --test approval_golden",
    "the approval file format changed",
);
/// 2023-11-14T22:13:20Z.
const START_MS: i64 = 1_700_000_000_000;
const OP: &str = "op-0000000000000007";
const USER: &str = "alice";

fn plan() -> Plan {
    // Values are scalars: an object's key order would depend on serde_json's features.
    Plan {
        summary: PlanSummary::Replace,
        changes: vec![
            Change {
                path: "desired_size".into(),
                from: Some(json!(2)),
                to: Some(json!(3)),
                requires_replacement: false,
            },
            Change {
                path: "labels.team".into(),
                from: None,
                to: Some(json!("payments")),
                requires_replacement: false,
            },
            Change {
                path: "instance_types".into(),
                from: Some(json!(["m5.large"])),
                to: Some(json!(["m6i.large", "m6a.large"])),
                requires_replacement: true,
            },
            Change {
                path: "spot".into(),
                from: Some(json!(true)),
                to: None,
                requires_replacement: false,
            },
        ],
    }
}

fn hold(plan: Option<Plan>) -> Hold {
    Hold {
        operation_id: OP.into(),
        sequence: 7,
        action: "apply".into(),
        kind: "node_pool".into(),
        name: "workers".into(),
        rule: "kinds.node_pool.apply".into(),
        received_at_unix_ms: START_MS,
        expires_at_unix_ms: START_MS + 3600 * 1000,
        plan,
    }
}

fn decision(choice: Choice) -> LocalDecision {
    LocalDecision {
        decision: choice,
        user: USER.into(),
        reason: match choice {
            Choice::Approve => "change ticket CHG-1234".into(),
            Choice::Reject => "not during the freeze".into(),
        },
        at_unix_ms: START_MS + 60_000,
    }
}

#[test]
fn a_hold_is_written_as_its_golden_file() {
    for (name, h) in [
        ("pending-hold.json", hold(Some(plan()))),
        ("pending-hold-planning.json", hold(None)),
    ] {
        let data = tempfile::tempdir().expect("tempdir");
        approval::write_hold(data.path(), &h).expect("write the hold");
        let path = approval::hold_path(data.path(), OP);
        assert_eq!(path, data.path().join(format!("approvals/pending/{OP}.json")));
        G.assert(name, &std::fs::read(&path).expect("read"));
        assert_eq!(mode(&path), 0o600, "{name}");
    }
}

#[test]
fn a_golden_hold_reads_back_as_its_value() {
    for (name, h) in [
        ("pending-hold.json", hold(Some(plan()))),
        ("pending-hold-planning.json", hold(None)),
    ] {
        let file = G.read_or(name, || serde_json::to_vec_pretty(&h).expect("json"));
        let parsed: Hold = serde_json::from_slice(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parsed, h, "{name}");
        // Where the agent keeps it, it is what `approvals` lists.
        let data = tempfile::tempdir().expect("tempdir");
        let path = approval::hold_path(data.path(), OP);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &file).expect("copy");
        assert_eq!(approval::read_hold(data.path(), OP), Some(h.clone()), "{name}");
        assert_eq!(approval::list(data.path()).expect("list"), vec![h], "{name}");
    }
}

#[test]
fn a_decision_is_written_as_its_golden_file() {
    let me = byoc_gate::localuser::name();
    let written_user = format!(r#""user": {}"#, serde_json::to_string(&me).expect("json"));
    let golden_user = format!(r#""user": "{USER}""#);
    for (name, choice) in [
        ("decision-approve.json", Choice::Approve),
        ("decision-reject.json", Choice::Reject),
    ] {
        let data = tempfile::tempdir().expect("tempdir");
        approval::write_hold(data.path(), &hold(Some(plan()))).expect("hold");
        let want = decision(choice);
        let decided = approval::decide(data.path(), OP, choice, &want.reason, want.at_unix_ms).expect("decide");
        assert_eq!(decided, hold(Some(plan())));
        let path = approval::decision_path(data.path(), OP);
        assert_eq!(path, data.path().join(format!("approvals/decisions/{OP}.json")));
        assert_eq!(mode(&path), 0o644, "{name}");
        let text = String::from_utf8(std::fs::read(&path).expect("read")).expect("utf-8");
        assert_eq!(text.matches(&written_user).count(), 1, "{name}: {text}");
        G.assert(name, text.replace(&written_user, &golden_user).as_bytes());
    }
}

#[test]
fn a_golden_decision_reads_back_as_its_value() {
    for (name, choice) in [
        ("decision-approve.json", Choice::Approve),
        ("decision-reject.json", Choice::Reject),
    ] {
        let want = decision(choice);
        let file = G.read_or(name, || serde_json::to_vec_pretty(&want).expect("json"));
        let parsed: LocalDecision = serde_json::from_slice(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parsed, want, "{name}");
        // Where `approve` leaves it, the agent reads it, with the file's owner.
        let data = tempfile::tempdir().expect("tempdir");
        let path = approval::decision_path(data.path(), OP);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &file).expect("copy");
        let uid = std::fs::metadata(&path).expect("metadata").uid();
        assert_eq!(
            approval::read_decision(data.path(), OP).expect("read"),
            Some(Decided {
                decision: want,
                uid: Some(uid),
            }),
            "{name}"
        );
    }
}
