//! Decode, then check: turns an `Operation` from the wire into a typed,
//! verified value, or a refusal that says why. No provider is called before
//! every check here has passed.

use std::borrow::Cow;

use byoc_proto::agent::v1::{self as pb, Operation};
use byoc_provider::{ProviderError, ResourceKind, ResourceSpec};

use crate::TargetConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Plan,
    Apply,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plan => "plan",
            Self::Apply => "apply",
            Self::Delete => "delete",
        }
    }
}

/// An operation that passed every check, as typed values: what the gate
/// decides on and the executor acts on. The signed message it came from is
/// kept only to be journaled (a resumed operation is verified again).
#[derive(Debug, Clone)]
pub struct Verified {
    pub id: String,
    pub sequence: u64,
    /// Stable across retries: providers pass it to the cloud as the request token.
    pub idempotency_key: String,
    /// The target's region, as the operation names it.
    pub region: String,
    pub issued_at_unix_ms: i64,
    pub not_after_unix_ms: i64,
    pub action: Action,
    pub spec: ResourceSpec,
    signed: Operation,
}

impl Verified {
    /// The operation as the control plane signed it, for the journal.
    pub fn signed(&self) -> &Operation {
        &self.signed
    }
}

/// Why an operation was refused. `rule` names the check (or policy rule) that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub rule: Cow<'static, str>,
    pub message: String,
    pub field: String,
    /// Whether the operation's sequence number can be believed: only once the
    /// signature verified, the operation is addressed to this agent, and it is
    /// not a replay. Only then may a refusal move the sequence high-water mark.
    pub sequence_trusted: bool,
}

impl Refusal {
    fn new(code: &'static str, rule: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            rule: Cow::Borrowed(rule),
            message: message.into(),
            field: String::new(),
            sequence_trusted: true,
        }
    }

    /// The audit log cannot record: every operation is refused, unrecorded
    /// (nothing is done, so nothing goes unrecorded), and the control plane
    /// is told why. Its sequence is not trusted unless the caller says the
    /// operation passed the checks ([`Refusal::with_trust`]).
    pub fn audit_unavailable(reason: &str, dir: &std::path::Path) -> Self {
        Self::untrusted(Self::new(
            "audit_unavailable",
            "audit.fail_closed",
            format!(
                "the agent's audit log in {} cannot record ({reason}); the agent acts on nothing it cannot record and refuses every operation until it can: free space or fix the disk, then restart the agent",
                dir.display()
            ),
        ))
    }

    /// Whether the refused operation's sequence can be believed (see `sequence_trusted`).
    pub fn with_trust(mut self, trusted: bool) -> Self {
        self.sequence_trusted = trusted;
        self
    }

    /// A denial by the customer's policy (checked after every check here).
    pub fn policy(rule: &str, message: &str, field: &str) -> Self {
        Self {
            code: "policy_denied",
            rule: Cow::Owned(rule.to_string()),
            message: message.to_string(),
            field: field.to_string(),
            sequence_trusted: true,
        }
    }

    fn untrusted(mut self) -> Self {
        self.sequence_trusted = false;
        self
    }

    pub fn to_problem(&self) -> pb::Problem {
        pb::Problem {
            code: self.code.to_string(),
            message: self.message.clone(),
            field: self.field.clone(),
            rule: self.rule.to_string(),
            retry_after_ms: 0,
        }
    }
}

pub struct Checker<'a> {
    pub agent_id: &'a str,
    pub target: &'a TargetConfig,
    pub operation_key: &'a [u8],
    pub highest_seq: u64,
    pub now_ms: i64,
    /// Longest `not_after - issued_at` accepted: a signed operation is a
    /// bearer instruction, so it must not stay usable for long.
    pub max_lifetime_ms: i64,
    /// The local kill switch, when set.
    pub paused: Option<&'a crate::pause::Pause>,
}

/// Clock skew tolerated between the control plane and the agent for `issued_at`.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

impl Checker<'_> {
    /// Runs every check, cheapest trust decision first: nothing in an operation
    /// is believed before its signature verifies.
    pub fn check(&self, op: Operation) -> Result<Verified, Refusal> {
        byoc_proto::signing::verify(&op, self.operation_key)
            .map_err(|e| Refusal::new("bad_signature", "signature", e.to_string()).untrusted())?;
        if op.agent_id != self.agent_id {
            return Err(Refusal::new(
                "wrong_target",
                "agent_id",
                format!(
                    "operation is addressed to agent {:?}, this is {}",
                    op.agent_id, self.agent_id
                ),
            )
            .untrusted());
        }
        if op.sequence <= self.highest_seq {
            return Err(Refusal::new(
                "replayed",
                "sequence",
                format!(
                    "sequence {} is not above {} already recorded",
                    op.sequence, self.highest_seq
                ),
            )
            .untrusted());
        }
        if let Some(p) = self.paused {
            return Err(Refusal::new(
                "paused",
                "local_kill_switch",
                format!(
                    "the agent is paused on its host by {}: {}; nothing runs until `byoc-agent resume`",
                    p.by, p.reason
                ),
            ));
        }
        if op.not_after_unix_ms <= self.now_ms {
            return Err(Refusal::new(
                "expired",
                "not_after",
                format!(
                    "operation expired {} ms ago",
                    self.now_ms.saturating_sub(op.not_after_unix_ms)
                ),
            ));
        }
        let lifetime = op.not_after_unix_ms.saturating_sub(op.issued_at_unix_ms);
        if lifetime > self.max_lifetime_ms {
            return Err(Refusal::new(
                "lifetime_too_long",
                "max_operation_lifetime",
                format!(
                    "operation is valid for {} s (issued_at to not_after); this agent accepts at most {} s \
                     (checks.max_operation_lifetime)",
                    lifetime / 1000,
                    self.max_lifetime_ms / 1000
                ),
            ));
        }
        if op.issued_at_unix_ms > self.now_ms + MAX_CLOCK_SKEW_MS {
            return Err(Refusal::new(
                "not_yet_valid",
                "issued_at",
                format!(
                    "operation is issued {} s in the future; check the clocks of the agent and the control plane",
                    (op.issued_at_unix_ms - self.now_ms) / 1000
                ),
            ));
        }
        let t = op.target.clone().unwrap_or_default();
        if t.cloud != self.target.cloud || t.account != self.target.account || t.region != self.target.region {
            return Err(Refusal::new(
                "wrong_target",
                "target",
                format!(
                    "operation targets {}/{}/{}; this agent serves {}/{}/{}",
                    t.cloud, t.account, t.region, self.target.cloud, self.target.account, self.target.region
                ),
            ));
        }
        decode(op)
    }
}

/// What a journaled operation is checked for when it is resumed: its
/// signature again (whoever can write the journal cannot add to it what the
/// control plane never signed), addressee, then decoding. Expiry is not
/// checked again: it was accepted in time, and its sequence is used up.
pub fn resume(op: Operation, operation_key: &[u8], agent_id: &str) -> Result<Verified, Refusal> {
    byoc_proto::signing::verify(&op, operation_key).map_err(|e| {
        Refusal::new(
            "bad_signature",
            "signature",
            format!(
                "the journaled operation's signature does not verify ({e}): the journal was altered; nothing was done"
            ),
        )
        .untrusted()
    })?;
    if op.agent_id != agent_id {
        return Err(Refusal::new(
            "wrong_target",
            "agent_id",
            format!(
                "the journaled operation is addressed to agent {:?}, this is {agent_id}",
                op.agent_id
            ),
        )
        .untrusted());
    }
    decode(op)
}

/// Decodes an operation's action, kind and spec into typed values. Runs as
/// the last of the checks, and again when a journaled operation is resumed.
pub fn decode(op: Operation) -> Result<Verified, Refusal> {
    let action = match pb::Action::try_from(op.action) {
        Ok(pb::Action::Plan) => Action::Plan,
        Ok(pb::Action::Apply) => Action::Apply,
        Ok(pb::Action::Delete) => Action::Delete,
        _ => {
            return Err(Refusal::new(
                "invalid_spec",
                "action",
                format!("action {} is not plan, apply or delete", op.action),
            ));
        }
    };
    let kind = kind(op.kind).ok_or_else(|| {
        Refusal::new(
            "invalid_spec",
            "kind",
            format!("kind {} is not cluster, node_pool, sandbox or database", op.kind),
        )
    })?;
    let spec = ResourceSpec::from_json(kind, &op.spec_json).map_err(|e| match e {
        ProviderError::InvalidSpec { field, message } => Refusal {
            code: "invalid_spec",
            rule: Cow::Borrowed("spec"),
            message: format!("{field}: {message}"),
            field,
            sequence_trusted: true,
        },
        other => Refusal::new("invalid_spec", "spec", other.to_string()),
    })?;
    Ok(Verified {
        id: op.id.clone(),
        sequence: op.sequence,
        idempotency_key: op.idempotency_key.clone(),
        region: op.target.as_ref().map(|t| t.region.clone()).unwrap_or_default(),
        issued_at_unix_ms: op.issued_at_unix_ms,
        not_after_unix_ms: op.not_after_unix_ms,
        action,
        spec,
        signed: op,
    })
}

pub fn kind(k: i32) -> Option<ResourceKind> {
    match pb::ResourceKind::try_from(k) {
        Ok(pb::ResourceKind::Cluster) => Some(ResourceKind::Cluster),
        Ok(pb::ResourceKind::NodePool) => Some(ResourceKind::NodePool),
        Ok(pb::ResourceKind::Sandbox) => Some(ResourceKind::Sandbox),
        Ok(pb::ResourceKind::Database) => Some(ResourceKind::Database),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
    use byoc_proto::agent::v1::{Action as PbAction, ResourceKind as PbKind};

    use super::*;

    fn signed(key: &Ed25519KeyPair) -> Operation {
        let mut op = Operation {
            id: "op-1".into(),
            agent_id: "agt-1".into(),
            sequence: 7,
            action: PbAction::Apply as i32,
            kind: PbKind::Cluster as i32,
            spec_json: r#"{"name":"a","kubernetes_version":"1.31"}"#.into(),
            ..Default::default()
        };
        byoc_proto::signing::sign(&mut op, key);
        op
    }

    #[test]
    fn a_journaled_operation_is_resumed_only_if_the_control_plane_signed_it() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let public = key.public_key().as_ref().to_vec();
        let op = signed(&key);
        assert!(resume(op.clone(), &public, "agt-1").is_ok());
        // Written into the journal by someone else: a changed spec, or a
        // whole operation signed by another key.
        let mut changed = op.clone();
        changed.spec_json = r#"{"name":"b","kubernetes_version":"1.31"}"#.into();
        let r = resume(changed, &public, "agt-1").expect_err("altered");
        assert_eq!((r.code, r.sequence_trusted), ("bad_signature", false));
        let other = Ed25519KeyPair::from_pkcs8(
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .expect("key")
                .as_ref(),
        )
        .expect("key");
        assert_eq!(
            resume(signed(&other), &public, "agt-1").expect_err("foreign").code,
            "bad_signature"
        );
        assert_eq!(resume(op, &public, "agt-2").expect_err("not ours").code, "wrong_target");
    }

    /// Found by `fuzz/fuzz_targets/operation_signed.rs`: a signed operation
    /// with `not_after_unix_ms = i64::MIN` overflowed the "expired ... ago"
    /// arithmetic (a panic in debug builds, a wrong number in release).
    #[test]
    fn an_operation_that_expired_at_the_dawn_of_time_is_refused_not_a_panic() {
        let key = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("key");
        let mut op = signed(&key);
        op.not_after_unix_ms = i64::MIN;
        byoc_proto::signing::sign(&mut op, &key);
        let target = TargetConfig {
            cloud: String::new(),
            account: String::new(),
            region: String::new(),
        };
        let public = key.public_key().as_ref().to_vec();
        let checker = Checker {
            agent_id: "agt-1",
            target: &target,
            operation_key: &public,
            highest_seq: 0,
            now_ms: 1_700_000_000_000,
            max_lifetime_ms: 30 * 60 * 1000,
            paused: None,
        };
        let refusal = checker.check(op).expect_err("an expired operation");
        assert_eq!(refusal.code, "expired");
        assert_eq!(refusal.message, format!("operation expired {} ms ago", i64::MAX));
    }
}
