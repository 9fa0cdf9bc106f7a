//! Writes the seed corpora, `fuzz/corpus/<target>/seed-*`, from the fixtures
//! and from the project's real files (example policies, the example audit
//! log). Run it again after a change to a format, and commit the result:
//!
//! ```text
//! cd fuzz && cargo run --example make_seeds
//! ```
//!
//! Seeds it no longer makes are removed; inputs libFuzzer added are kept.

use std::path::Path;

use byoc_fuzz::{AGENT_ID, SPECS, audit_example, join_parts, signed_operation};
use byoc_proto::agent::v1::{Action, Cancel, ControlMessage, ResultAck, Welcome, control_message::Body};
use prost::Message;

type Seeds = Vec<(String, Vec<u8>)>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, seeds) in [
        ("operation_decode", operation_decode()),
        ("operation_signed", operation_signed()),
        ("spec_json", spec_json()),
        ("policy", policy()),
        ("audit_verify", audit_verify()),
        ("audit_note", audit_note()?),
    ] {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            {
                std::fs::remove_file(&path)?;
            }
        }
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
        println!("{target}: {} seeds", seeds.len());
    }
    Ok(())
}

const ACTIONS: [(Action, &str); 3] = [
    (Action::Plan, "plan"),
    (Action::Apply, "apply"),
    (Action::Delete, "delete"),
];

fn kind_name(i: usize) -> &'static str {
    ["cluster", "node_pool", "sandbox", "database"][i]
}

/// Every kind and action, as a `ControlMessage` and as a bare `Operation`,
/// and the other control messages.
fn operation_decode() -> Seeds {
    let mut seeds = Seeds::new();
    for i in 0..SPECS.len() {
        for (action, a) in ACTIONS {
            let op = signed_operation(i, action);
            seeds.push((format!("operation-{}-{a}", kind_name(i)), op.encode_to_vec()));
            let msg = ControlMessage {
                body: Some(Body::Operation(op)),
            };
            seeds.push((format!("control-{}-{a}", kind_name(i)), msg.encode_to_vec()));
        }
    }
    // Regression: a signed operation that expired at i64::MIN overflowed
    // the "expired ... ago" message (agent/src/checks.rs).
    let mut op = signed_operation(0, Action::Plan);
    op.not_after_unix_ms = i64::MIN;
    byoc_proto::signing::sign(&mut op, &byoc_fuzz::OPERATION_KEY);
    seeds.push(("regression-not-after-min".into(), op.encode_to_vec()));
    for (name, body) in [
        (
            "welcome",
            Body::Welcome(Welcome {
                heartbeat_interval_ms: 15_000,
                server_time_unix_ms: byoc_fuzz::NOW_MS,
                control_plane_id: "cp-1".into(),
                ca_certificates_der: vec![vec![0x30, 0x03, 0x02, 0x01, 0x01]],
            }),
        ),
        (
            "cancel",
            Body::Cancel(Cancel {
                operation_id: "op-1".into(),
                reason: format!("cancelled for {AGENT_ID}"),
            }),
        ),
        ("result-ack", Body::ResultAck(ResultAck { result_seq: 7 })),
    ] {
        seeds.push((
            format!("control-{name}"),
            ControlMessage { body: Some(body) }.encode_to_vec(),
        ));
    }
    seeds
}

/// `arbitrary` reads the spec, action and paused bytes first; the empty
/// rest means no mutation: each seed is a valid operation of one kind and
/// action, not paused.
fn operation_signed() -> Seeds {
    let mut seeds = Seeds::new();
    for i in 0..SPECS.len() {
        for (j, (_, a)) in ACTIONS.iter().enumerate() {
            seeds.push((format!("{}-{a}", kind_name(i)), vec![i as u8, j as u8, 0]));
        }
    }
    // Regression, found by this target: `before: [NotAfter(Time::Min)]` on a
    // cluster plan (agent/src/checks.rs, "expired ... ago"). What these bytes
    // mean follows the `Input` and `Mutation` types: `cargo fuzz fmt` shows it.
    seeds.push((
        "regression-not-after-min".into(),
        vec![0x00, 0x00, 0x00, 0xbd, 0xbd, 0xff, 0x01, 0xbd, 0x01, 0xff, 0x01, 0xbd],
    ));
    seeds
}

fn spec_json() -> Seeds {
    let mut seeds = Seeds::new();
    for (i, (_, json)) in SPECS.iter().enumerate() {
        let mut bytes = vec![i as u8];
        bytes.extend_from_slice(json.as_bytes());
        seeds.push((kind_name(i).to_string(), bytes));
    }
    // Only the required fields, so the fuzzer finds the defaults too.
    for (i, json) in [
        r#"{"name":"a","kubernetes_version":"1.31","network":{"vpc":"vpc-1","subnets":["s-1","s-2"]}}"#,
        r#"{"name":"a","cluster":"c","instance_type":"t","min_size":0,"max_size":1,"desired_size":1}"#,
        r#"{"name":"a","cluster":"c","isolation":"kata","instance_type":"t","min_size":0,"max_size":1,"desired_size":0}"#,
        r#"{"name":"a","engine":"mysql","version":"8.0","size":"xlarge","storage_gb":20}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let mut bytes = vec![i as u8];
        bytes.extend_from_slice(json.as_bytes());
        seeds.push((format!("{}-minimal", kind_name(i)), bytes));
    }
    seeds
}

fn policy() -> Seeds {
    let every_key = r#"read_only = false
regions = ["eu-*", "us-east-1"]
instance_types = ["m6i.*", "*.xlarge"]
gpu_types = ["nvidia-*"]

[kinds.cluster]
plan = "allow"
apply = "approve"
delete = "deny"

[kinds.node_pool]
delete = "approve"

[kinds.sandbox]
apply = "allow"

[kinds.database]
delete = "deny"

[limits.node_pool]
max_size = 5
max_disk_gb = 100
max_gpu_count = 0

[limits.sandbox]
max_size = 10

[limits.database]
max_storage_gb = 50
max_size = "small"

[protected]
names = ["prod*", "orders"]
tags = { env = "prod" }
labels = { tier = "crit*" }

[approvals]
window = "30m"
"#;
    vec![
        (
            "production.toml".into(),
            include_bytes!("../../examples/policy/production.toml").to_vec(),
        ),
        (
            "read-only.toml".into(),
            include_bytes!("../../examples/policy/read-only.toml").to_vec(),
        ),
        (
            "sandbox-only.toml".into(),
            include_bytes!("../../examples/policy/sandbox-only.toml").to_vec(),
        ),
        ("every-key.toml".into(), every_key.as_bytes().to_vec()),
        ("empty.toml".into(), Vec::new()),
    ]
}

/// The example log whole, and cut in the ways verification must catch.
fn audit_verify() -> Seeds {
    let (log, receipts, cp) = (
        audit_example::LOG.as_bytes(),
        audit_example::RECEIPTS.as_bytes(),
        audit_example::CHECKPOINT.as_bytes(),
    );
    let lines: Vec<&str> = audit_example::LOG.lines().collect();
    let first = |n: usize| {
        lines[..n.min(lines.len())]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    let swapped = {
        let mut l = lines.clone();
        if l.len() > 3 {
            l.swap(2, 3);
        }
        l.iter().map(|l| format!("{l}\n")).collect::<String>()
    };
    vec![
        ("whole".into(), join_parts(&[log, receipts, cp])),
        ("log-only".into(), log.to_vec()),
        ("no-checkpoint-file".into(), join_parts(&[log, receipts])),
        (
            "truncated".into(),
            join_parts(&[first(lines.len() - 1).as_bytes(), receipts, cp]),
        ),
        ("before-checkpoint".into(), join_parts(&[first(5).as_bytes(), b"", cp])),
        ("swapped".into(), join_parts(&[swapped.as_bytes(), receipts, cp])),
        ("checkpoint-twice".into(), join_parts(&[log, receipts, cp, cp])),
    ]
}

fn audit_note() -> Result<Seeds, Box<dyn std::error::Error>> {
    let mut seeds: Seeds = vec![
        ("verifier.key".into(), audit_example::VERIFIER_KEY.as_bytes().to_vec()),
        ("checkpoint".into(), audit_example::CHECKPOINT.as_bytes().to_vec()),
    ];
    let body = audit_example::CHECKPOINT.split_once("\n\n").map_or("", |(b, _)| b);
    seeds.push(("checkpoint-body".into(), format!("{body}\n").into_bytes()));
    for (i, line) in audit_example::RECEIPTS.lines().enumerate() {
        let receipt: serde_json::Value = serde_json::from_str(line)?;
        let proof = receipt["proof"].as_str().ok_or("a receipt without a proof")?;
        seeds.push((format!("receipt-{i}"), proof.as_bytes().to_vec()));
    }
    Ok(seeds)
}
