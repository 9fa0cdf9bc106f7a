//! A valid signed operation, its fields mutated, then the agent's checks.
//!
//! Mutations made before signing reach every check past the signature with
//! any value (a control plane that signs garbage); mutations made after
//! signing are tampering, which must be refused as `bad_signature` unless
//! they left the signed bytes and the signature as they were. Every
//! operation also goes through the wire (`ControlMessage` encoding) first.
#![no_main]

use arbitrary::Arbitrary;
use byoc_fuzz::{HIGHEST_SEQ, NOW_MS, OPERATION_KEY, check_and_assert, checker, signed_operation};
use byoc_proto::agent::v1::{Action, ControlMessage, Operation, Target, control_message::Body};
use byoc_proto::signing;
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Which fixture spec (kind) the operation starts from.
    spec: u8,
    action: u8,
    paused: bool,
    /// Mutations made before the operation is signed.
    before: Vec<Mutation>,
    /// Mutations made after: tampering.
    after: Vec<Mutation>,
}

#[derive(Debug, Arbitrary)]
enum Mutation {
    Id(String),
    IdempotencyKey(String),
    Cloud(String),
    Account(String),
    Region(String),
    NoTarget,
    Action(i32),
    Kind(i32),
    Spec(String),
    /// Replaces the bytes `at..at+len` of the spec (kept if not UTF-8).
    SpecSplice {
        at: u16,
        len: u8,
        with: Vec<u8>,
    },
    IssuedAt(Time),
    NotAfter(Time),
    Sequence(Sequence),
    AgentId(String),
    Signature(Vec<u8>),
    FlipSignatureBit(u16),
}

impl Mutation {
    fn apply(&self, op: &mut Operation) {
        match self {
            Self::Id(s) => op.id.clone_from(s),
            Self::IdempotencyKey(s) => op.idempotency_key.clone_from(s),
            Self::Cloud(s) => target(op).cloud.clone_from(s),
            Self::Account(s) => target(op).account.clone_from(s),
            Self::Region(s) => target(op).region.clone_from(s),
            Self::NoTarget => op.target = None,
            Self::Action(a) => op.action = *a,
            Self::Kind(k) => op.kind = *k,
            Self::Spec(s) => op.spec_json.clone_from(s),
            Self::SpecSplice { at, len, with } => {
                let mut bytes = op.spec_json.clone().into_bytes();
                let at = usize::from(*at).min(bytes.len());
                let end = (at + usize::from(*len)).min(bytes.len());
                bytes.splice(at..end, with.iter().copied());
                if let Ok(s) = String::from_utf8(bytes) {
                    op.spec_json = s;
                }
            }
            Self::IssuedAt(t) => op.issued_at_unix_ms = t.ms(),
            Self::NotAfter(t) => op.not_after_unix_ms = t.ms(),
            Self::Sequence(s) => op.sequence = s.value(),
            Self::AgentId(s) => op.agent_id.clone_from(s),
            Self::Signature(s) => op.signature.clone_from(s),
            Self::FlipSignatureBit(bit) => {
                let bit = usize::from(*bit);
                if let Some(b) = op.signature.get_mut(bit / 8 % 64) {
                    *b ^= 1 << (bit % 8);
                }
            }
        }
    }
}

/// A time: near the agent's clock, to reach the edges of the time checks,
/// any value, or an extreme one.
#[derive(Debug, Arbitrary)]
enum Time {
    FromNow(i32),
    Exactly(i64),
    Min,
    Max,
}

impl Time {
    fn ms(&self) -> i64 {
        match self {
            Self::FromNow(d) => NOW_MS + i64::from(*d),
            Self::Exactly(t) => *t,
            Self::Min => i64::MIN,
            Self::Max => i64::MAX,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Sequence {
    FromHighest(i8),
    Exactly(u64),
    Max,
}

impl Sequence {
    fn value(&self) -> u64 {
        match self {
            Self::FromHighest(d) => HIGHEST_SEQ.saturating_add_signed(i64::from(*d)),
            Self::Exactly(s) => *s,
            Self::Max => u64::MAX,
        }
    }
}

fn target(op: &mut Operation) -> &mut Target {
    op.target.get_or_insert_with(Target::default)
}

const ACTIONS: [Action; 4] = [Action::Plan, Action::Apply, Action::Delete, Action::Unspecified];

fuzz_target!(|input: Input| {
    let mut op = signed_operation(
        usize::from(input.spec),
        ACTIONS[usize::from(input.action) % ACTIONS.len()],
    );
    for m in &input.before {
        m.apply(&mut op);
    }
    signing::sign(&mut op, &OPERATION_KEY);
    let (signed_bytes, signature) = (signing::signing_bytes(&op), op.signature.clone());
    for m in &input.after {
        m.apply(&mut op);
    }
    let tampered = signing::signing_bytes(&op) != signed_bytes || op.signature != signature;

    // As the session receives it: encoded, framed as a ControlMessage, decoded.
    let wire = ControlMessage {
        body: Some(Body::Operation(op.clone())),
    }
    .encode_to_vec();
    let Ok(ControlMessage {
        body: Some(Body::Operation(received)),
    }) = ControlMessage::decode(wire.as_slice())
    else {
        panic!("an encoded operation does not decode");
    };
    assert_eq!(received, op, "an operation changed on the wire");

    match check_and_assert(&checker(input.paused), &received) {
        Err(r) if tampered => assert_eq!(
            r.code, "bad_signature",
            "a tampered operation was refused for another reason"
        ),
        Ok(_) if tampered => panic!("a tampered operation was accepted"),
        Err(r) => assert_ne!(r.code, "bad_signature", "an untampered operation failed its signature"),
        Ok(_) => {}
    }
});
