//! Offline audit-log verification on arbitrary files: `verify_log` with the
//! example log's verifier key (`docs/audit-log-example/verifier.key`).
//!
//! Input: parts separated by NUL bytes: the log (`log.jsonl`), the receipts
//! (`receipts.jsonl`), then any number of checkpoint notes kept outside the
//! log (the `checkpoint` file, trusted copies). The seeds are the example
//! log itself and variants of it, so mutations keep its valid signatures
//! and reach the Merkle checks.
#![no_main]

use std::sync::LazyLock;

use byoc_audit::note::Verifier;
use byoc_audit::verify::verify_log;
use byoc_fuzz::{PART_SEPARATOR, audit_example};
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<Verifier> = LazyLock::new(|| {
    Verifier::parse(audit_example::VERIFIER_KEY).unwrap_or_else(|e| panic!("example verifier key: {e}"))
});

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == PART_SEPARATOR);
    let log = parts.next().unwrap_or_default();
    let receipts = parts.next().unwrap_or_default();
    let outside: Vec<(String, String)> = parts
        .enumerate()
        .map(|(i, note)| (format!("checkpoint {i}"), String::from_utf8_lossy(note).into_owned()))
        .collect();
    if let Ok(s) = verify_log(log, receipts, &outside, &KEY) {
        // What a successful verification reports is what it was given.
        let lines = log.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count() as u64;
        assert_eq!(s.entries, lines, "{s:?}");
        assert!(s.signed_size < s.entries || s.checkpoints == 0, "{s:?}");
        assert!(s.checkpoints <= s.entries);
        assert_eq!(s.checkpoints == 0, s.signed_root.is_empty());
    }
});
