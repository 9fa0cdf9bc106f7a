//! Fixtures the fuzz targets share: a fixed operation key, agent and target,
//! one valid signed operation of each kind, the checks' invariants, and the
//! example audit log (`docs/audit-log-example/`) with its verifier key.
//!
//! Everything is fixed (no clock, no randomness) so that a crash found once
//! reproduces from its input alone.

use std::sync::LazyLock;

use aws_lc_rs::signature::Ed25519KeyPair;
use byoc_gate::TargetConfig;
use byoc_gate::checks::{self, Checker, MAX_CLOCK_SKEW_MS, Refusal, Verified};
use byoc_gate::pause::Pause;
use byoc_proto::agent::v1::{Action, Operation, ResourceKind, Target};
use byoc_proto::signing;

/// The agent the operations are addressed to.
pub const AGENT_ID: &str = "agt-fuzz";
/// The agent's clock: 2023-11-14T22:13:20Z.
pub const NOW_MS: i64 = 1_700_000_000_000;
/// Highest operation sequence already recorded.
pub const HIGHEST_SEQ: u64 = 10;
/// The default `checks.max_operation_lifetime`.
pub const MAX_LIFETIME_MS: i64 = 30 * 60 * 1000;

/// The control plane's operation key: a fixed seed, so signatures (and
/// therefore seeds and crash inputs) are the same on every run.
pub static OPERATION_KEY: LazyLock<Ed25519KeyPair> = LazyLock::new(|| {
    Ed25519KeyPair::from_seed_unchecked(&[0x42; 32]).unwrap_or_else(|e| panic!("fixed Ed25519 seed: {e}"))
});
pub static OPERATION_PUBLIC_KEY: LazyLock<Vec<u8>> = LazyLock::new(|| signing::public_key(&OPERATION_KEY));

pub static TARGET: LazyLock<TargetConfig> = LazyLock::new(|| TargetConfig {
    cloud: "sim".into(),
    account: "acct-1".into(),
    region: "eu-west-1".into(),
});

static PAUSE: LazyLock<Pause> = LazyLock::new(|| Pause {
    since_unix_ms: NOW_MS - 1000,
    by: "root".into(),
    reason: "fuzzing".into(),
});

/// The checker the agent's session would build, with the fixtures above.
pub fn checker(paused: bool) -> Checker<'static> {
    Checker {
        agent_id: AGENT_ID,
        target: &TARGET,
        operation_key: &OPERATION_PUBLIC_KEY,
        highest_seq: HIGHEST_SEQ,
        now_ms: NOW_MS,
        max_lifetime_ms: MAX_LIFETIME_MS,
        paused: paused.then_some(&*PAUSE),
    }
}

/// One valid spec of each kind, as the control plane would send it.
pub const SPECS: [(ResourceKind, &str); 4] = [
    (
        ResourceKind::Cluster,
        r#"{"name":"prod","kubernetes_version":"1.31","endpoint_access":"private","tags":{"team":"platform"}}"#,
    ),
    (
        ResourceKind::NodePool,
        r#"{"name":"general","cluster":"prod","instance_type":"m6i.large","min_size":2,"max_size":10,"desired_size":3,"capacity":"spot","disk_gb":200,"gpu":{"type":"nvidia-l4","count":1},"labels":{"workload":"general"},"taints":[{"key":"dedicated","value":"general","effect":"NoSchedule"}]}"#,
    ),
    (
        ResourceKind::Sandbox,
        r#"{"name":"untrusted","cluster":"prod","isolation":"gvisor","instance_type":"m6i.xlarge","min_size":1,"max_size":20,"desired_size":2,"labels":{"tier":"critical"}}"#,
    ),
    (
        ResourceKind::Database,
        r#"{"name":"orders","engine":"postgres","version":"16","size":"medium","storage_gb":100,"high_availability":true,"backups":{"retention_days":14,"window":"03:00-04:00"},"deletion_protection":true,"tags":{"env":"prod"}}"#,
    ),
];

/// A valid operation, signed with [`OPERATION_KEY`], that passes every check:
/// spec `which` of [`SPECS`] (modulo their number) with `action`.
pub fn signed_operation(which: usize, action: Action) -> Operation {
    let (kind, spec) = SPECS[which % SPECS.len()];
    let mut op = Operation {
        id: format!("op-{which}"),
        idempotency_key: format!("key-{which}"),
        target: Some(Target {
            cloud: TARGET.cloud.clone(),
            account: TARGET.account.clone(),
            region: TARGET.region.clone(),
        }),
        action: action as i32,
        kind: kind as i32,
        spec_json: spec.into(),
        issued_at_unix_ms: NOW_MS - 60_000,
        not_after_unix_ms: NOW_MS + 10 * 60_000,
        sequence: HIGHEST_SEQ + 1,
        agent_id: AGENT_ID.into(),
        signature: Vec::new(),
    };
    signing::sign(&mut op, &OPERATION_KEY);
    op
}

/// Runs `op` through `checker` and asserts what must hold of the outcome
/// whatever the operation: an operation is accepted only if it meets every
/// check, and a refusal trusts the sequence number only once the signature,
/// the addressee and the sequence have been checked. Also resumes `op` as
/// if read back from the journal (`checks::resume`), which must accept only
/// what the control plane signed for this agent. Returns the check's outcome.
pub fn check_and_assert(checker: &Checker<'_>, op: &Operation) -> Result<Verified, Refusal> {
    let signed = signing::verify(op, checker.operation_key).is_ok();
    let result = checker.check(op.clone());
    match &result {
        Ok(v) => {
            assert!(signed, "accepted an operation whose signature does not verify");
            assert_eq!(v.signed(), op, "the verified operation is not the one checked");
            assert_eq!((v.id.as_str(), v.sequence), (op.id.as_str(), op.sequence), "the verified id or sequence is not the operation's");
            assert_eq!(op.agent_id, checker.agent_id, "accepted an operation for another agent");
            assert!(op.sequence > checker.highest_seq, "accepted a replayed sequence");
            assert!(checker.paused.is_none(), "accepted an operation while paused");
            assert!(op.not_after_unix_ms > checker.now_ms, "accepted an expired operation");
            assert!(
                op.not_after_unix_ms.saturating_sub(op.issued_at_unix_ms) <= checker.max_lifetime_ms,
                "accepted an operation valid for longer than the maximum lifetime"
            );
            assert!(
                op.issued_at_unix_ms <= checker.now_ms + MAX_CLOCK_SKEW_MS,
                "accepted an operation issued in the future"
            );
            let t = op.target.clone().unwrap_or_default();
            assert_eq!(
                (t.cloud.as_str(), t.account.as_str(), t.region.as_str()),
                (
                    checker.target.cloud.as_str(),
                    checker.target.account.as_str(),
                    checker.target.region.as_str()
                ),
                "accepted an operation for another target"
            );
            assert_eq!(
                checks::kind(op.kind),
                Some(v.spec.kind()),
                "the spec's kind is not the operation's"
            );
            assert!(v.spec.validate().is_ok(), "accepted a spec that does not validate");
        }
        Err(r) => {
            assert!(
                !r.code.is_empty() && !r.rule.is_empty(),
                "a refusal names no rule: {r:?}"
            );
            if r.sequence_trusted {
                assert!(signed, "trusted the sequence of an unsigned operation: {r:?}");
                assert_eq!(
                    op.agent_id, checker.agent_id,
                    "trusted the sequence of another agent's operation"
                );
                assert!(op.sequence > checker.highest_seq, "trusted a replayed sequence: {r:?}");
            }
            if !signed {
                assert_eq!(
                    r.code, "bad_signature",
                    "an unsigned operation refused for another reason"
                );
            }
            let _ = r.to_problem();
        }
    }
    // The same operation read back from the journal on a restart.
    match (
        checks::resume(op.clone(), checker.operation_key, checker.agent_id),
        &result,
    ) {
        (Ok(resumed), Ok(v)) => assert_eq!(
            (resumed.signed(), resumed.action, &resumed.spec),
            (v.signed(), v.action, &v.spec),
            "resumed differently than checked"
        ),
        (Err(r), Ok(_)) => panic!("an accepted operation cannot be resumed: {r:?}"),
        (Ok(_), Err(_)) => {
            assert!(signed, "resumed a journaled operation whose signature does not verify");
            assert_eq!(op.agent_id, checker.agent_id, "resumed another agent's operation");
        }
        (Err(r), Err(_)) => {
            if !signed {
                assert_eq!((r.code, r.sequence_trusted), ("bad_signature", false), "{r:?}");
            }
        }
    }
    result
}

/// The example audit log in `docs/audit-log-example/`: a real log written by
/// the agent, its receipts, its `checkpoint` file and its verifier key.
pub mod audit_example {
    pub const LOG: &str = include_str!("../../docs/audit-log-example/log.jsonl");
    pub const RECEIPTS: &str = include_str!("../../docs/audit-log-example/receipts.jsonl");
    pub const CHECKPOINT: &str = include_str!("../../docs/audit-log-example/checkpoint");
    pub const VERIFIER_KEY: &str = include_str!("../../docs/audit-log-example/verifier.key");
}

/// Separates the parts of an `audit_verify` input: log, receipts, then
/// checkpoint notes kept outside the log. NUL appears in none of them (JSON
/// escapes it, a note may hold no control character but newline).
pub const PART_SEPARATOR: u8 = 0;

/// The input of `audit_verify` whose parts are `parts`.
pub fn join_parts(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&[PART_SEPARATOR][..])
}
