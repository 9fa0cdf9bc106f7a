//! The audit log's open formats on any text: C2SP signed notes
//! (`Verifier::open`), verifier keys, `tlog-checkpoint` and `tlog-proof`
//! bodies, and an inclusion proof checked against a parsed checkpoint, as a
//! third party verifying a receipt would.
//!
//! Also signs the input (when it is note text) with a fixed key and asserts
//! that it opens to the same text.
#![no_main]

use std::sync::LazyLock;

use byoc_audit::merkle;
use byoc_audit::note::{Checkpoint, Signer, TlogProof, Verifier};
use byoc_fuzz::audit_example;
use libfuzzer_sys::fuzz_target;

static EXAMPLE_KEY: LazyLock<Verifier> = LazyLock::new(|| {
    Verifier::parse(audit_example::VERIFIER_KEY).unwrap_or_else(|e| panic!("example verifier key: {e}"))
});

/// A fixed audit key: the same signatures on every run.
static SIGNER: LazyLock<(Signer, Verifier)> = LazyLock::new(|| {
    let key = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&[0x17; 32])
        .unwrap_or_else(|e| panic!("fixed Ed25519 seed: {e}"));
    let pkcs8 = key.to_pkcs8().unwrap_or_else(|e| panic!("PKCS#8: {e}"));
    let signer = Signer::from_pkcs8("byoc-agent/audit/fuzz", pkcs8.as_ref()).unwrap_or_else(|e| panic!("signer: {e}"));
    let verifier = Verifier::parse(&signer.verifier_key()).unwrap_or_else(|e| panic!("verifier: {e}"));
    (signer, verifier)
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = Verifier::parse(text) {
        assert_eq!(v.key_id().len(), 8);
    }
    let body = EXAMPLE_KEY.open(text);
    if let Ok(body) = body {
        assert!(text.starts_with(body), "the opened text is not the note's");
    }
    let cp = Checkpoint::parse(body.unwrap_or(text));
    if let Ok(cp) = &cp {
        assert_eq!(
            Checkpoint::parse(&cp.text()).as_ref(),
            Ok(cp),
            "checkpoint does not round-trip"
        );
    }
    if let Ok(proof) = TlogProof::parse(text) {
        assert_eq!(
            TlogProof::parse(&proof.to_text()).as_ref(),
            Ok(&proof),
            "tlog-proof does not round-trip"
        );
        // The receipt's proof against its checkpoint, signed or not.
        let note = EXAMPLE_KEY.open(&proof.checkpoint).unwrap_or(&proof.checkpoint);
        if let Ok(cp) = Checkpoint::parse(note) {
            let leaf = merkle::leaf_hash(proof.extra.as_deref().unwrap_or_default());
            let _ = merkle::verify_inclusion(&leaf, proof.index, cp.size, &proof.proof, &cp.root);
            // And as a consistency proof from the tree of `index` entries
            // (any numbers: the verifier must not trust them).
            let _ = merkle::verify_consistency(proof.index, cp.size, &leaf, &cp.root, &proof.proof);
        }
    }
    // Any note text signed by the audit key opens to itself.
    let (signer, verifier) = &*SIGNER;
    if text.ends_with('\n') && !text.chars().any(|c| c.is_control() && c != '\n') {
        let note = signer.sign(text);
        assert_eq!(
            verifier.open(&note),
            Ok(text),
            "a signed note does not open to its text"
        );
    }
});
