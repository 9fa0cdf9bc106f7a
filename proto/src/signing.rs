//! The canonical bytes an operation signature covers, and Ed25519 signing and
//! verification over them.
//!
//! Protobuf encodings are not canonical (field order, unknown fields, default
//! values may vary between implementations), so a signature cannot cover the
//! wire bytes. It covers this encoding instead:
//!
//! ```text
//! "byoc.agent.v1.Operation\0"
//! field(id) field(idempotency_key) field(target.cloud) field(target.account)
//! field(target.region) u32be(action) u32be(kind) field(spec_json)
//! i64be(issued_at_unix_ms) i64be(not_after_unix_ms) u64be(sequence) field(agent_id)
//! ```
//!
//! where `field(s)` is the byte length of the UTF-8 string `s` as a big-endian
//! u32 followed by its bytes. The signature field itself is not covered.

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::agent::v1::Operation;

/// Domain separator, so these bytes can never be mistaken for another message.
pub const DOMAIN: &[u8] = b"byoc.agent.v1.Operation\0";

/// The canonical signing bytes of `op` (see the module docs).
pub fn signing_bytes(op: &Operation) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, s: &str) {
        // Strings longer than u32::MAX cannot pass the message size limit.
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let target = op.target.clone().unwrap_or_default();
    let mut out = Vec::with_capacity(DOMAIN.len() + 128 + op.spec_json.len());
    out.extend_from_slice(DOMAIN);
    field(&mut out, &op.id);
    field(&mut out, &op.idempotency_key);
    field(&mut out, &target.cloud);
    field(&mut out, &target.account);
    field(&mut out, &target.region);
    out.extend_from_slice(&(op.action as u32).to_be_bytes());
    out.extend_from_slice(&(op.kind as u32).to_be_bytes());
    field(&mut out, &op.spec_json);
    out.extend_from_slice(&op.issued_at_unix_ms.to_be_bytes());
    out.extend_from_slice(&op.not_after_unix_ms.to_be_bytes());
    out.extend_from_slice(&op.sequence.to_be_bytes());
    field(&mut out, &op.agent_id);
    out
}

/// Signs `op` in place with the control plane's operation key.
pub fn sign(op: &mut Operation, key: &Ed25519KeyPair) {
    op.signature = key.sign(&signing_bytes(op)).as_ref().to_vec();
}

/// The raw 32-byte public key of `key`.
pub fn public_key(key: &Ed25519KeyPair) -> Vec<u8> {
    key.public_key().as_ref().to_vec()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("operation carries no signature")]
    Missing,
    #[error("operation signature does not verify against the pinned operation key")]
    Invalid,
}

/// Verifies the signature of `op` against the raw Ed25519 `public_key`.
pub fn verify(op: &Operation, public_key: &[u8]) -> Result<(), SignatureError> {
    if op.signature.is_empty() {
        return Err(SignatureError::Missing);
    }
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&signing_bytes(op), &op.signature)
        .map_err(|_| SignatureError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::v1::{Action, ResourceKind, Target};

    fn op() -> Operation {
        Operation {
            id: "op-1".into(),
            idempotency_key: "k".into(),
            target: Some(Target {
                cloud: "sim".into(),
                account: "acct".into(),
                region: "r1".into(),
            }),
            action: Action::Apply as i32,
            kind: ResourceKind::Cluster as i32,
            spec_json: r#"{"name":"a"}"#.into(),
            issued_at_unix_ms: 1_700_000_000_000,
            not_after_unix_ms: 1_700_000_900_000,
            sequence: 7,
            agent_id: "agent-1".into(),
            signature: vec![],
        }
    }

    /// Golden bytes: a change to the canonical encoding must be a visible diff.
    #[test]
    fn signing_bytes_are_frozen() {
        let hex = hex::encode(signing_bytes(&op()));
        assert_eq!(
            hex,
            "62796f632e6167656e742e76312e4f7065726174696f6e00\
             000000046f702d31\
             000000016b\
             0000000373696d\
             0000000461636374\
             000000027231\
             00000002\
             00000001\
             0000000c7b226e616d65223a2261227d\
             0000018bcfe56800\
             0000018bcff323a0\
             0000000000000007\
             000000076167656e742d31"
        );
    }

    #[test]
    fn sign_then_verify_and_tamper() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse");
        let mut o = op();
        assert_eq!(verify(&o, &public_key(&key)), Err(SignatureError::Missing));
        sign(&mut o, &key);
        assert_eq!(verify(&o, &public_key(&key)), Ok(()));
        o.sequence = 8;
        assert_eq!(verify(&o, &public_key(&key)), Err(SignatureError::Invalid));
    }
}
