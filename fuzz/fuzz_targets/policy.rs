//! The customer's policy file: `policy::parse` on any text, then the parsed
//! policy evaluated against fixed requests (every kind and action, a region
//! in, out of and absent from the request) and described as `policy show`
//! prints it.
//!
//! Asserted: errors point inside the file; evaluation is deterministic, names
//! its rule, and obeys the rules that must win (read-only, a denied kind);
//! `*` patterns match as a reference matcher does.
#![no_main]

use std::sync::LazyLock;

use byoc_gate::checks::{Action, kind};
use byoc_gate::policy::{self, Decision, Effect, Pattern, Policy, Request};
use byoc_fuzz::SPECS;
use byoc_provider::ResourceSpec;
use libfuzzer_sys::fuzz_target;

static SPEC_VALUES: LazyLock<Vec<ResourceSpec>> = LazyLock::new(|| {
    SPECS
        .iter()
        .map(|(k, json)| {
            let k = kind(*k as i32).unwrap_or_else(|| panic!("fixture kind {k:?}"));
            ResourceSpec::from_json(k, json).unwrap_or_else(|e| panic!("fixture spec {json}: {e}"))
        })
        .collect()
});

const REGIONS: [Option<&str>; 3] = [Some("eu-west-1"), Some("us-east-1"), None];
const ACTIONS: [Action; 3] = [Action::Plan, Action::Apply, Action::Delete];
/// Strings patterns are matched against, beyond those in the fixtures.
const SUBJECTS: [&str; 6] = ["", "a", "eu-west-1", "m6i.large", "nvidia-l4", "**"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let p = match policy::parse(text) {
        Ok(p) => p,
        Err(e) => {
            // The position named is in the file (or 0: unknown).
            assert!(e.line <= text.split('\n').count(), "{e} is past the end of the file");
            let _ = e.to_string();
            return;
        }
    };
    let _ = p.describe();
    for spec in SPEC_VALUES.iter() {
        for action in ACTIONS {
            for region in REGIONS {
                decide(&p, &Request { action, region, spec });
            }
        }
    }
    // Every pattern in the file against fixed strings and against the
    // file's other patterns (their text, and with the `*` taken out).
    let patterns: Vec<&Pattern> = [&p.regions, &p.instance_types, &p.gpu_types]
        .into_iter()
        .flatten()
        .flat_map(|s| s.value.iter())
        .chain(p.protected.names.iter().map(|n| &n.value))
        .chain(
            p.protected
                .tags
                .iter()
                .chain(&p.protected.labels)
                .map(|(_, v)| &v.value),
        )
        .filter(|p| p.0.len() <= 64) // keeps the reference matcher cheap
        .take(16)
        .collect();
    let mut subjects: Vec<String> = SUBJECTS.iter().map(|s| s.to_string()).collect();
    for pattern in &patterns {
        subjects.push(pattern.0.clone());
        subjects.push(pattern.0.replace('*', ""));
    }
    for pattern in &patterns {
        for s in &subjects {
            assert_eq!(pattern.matches(s), reference_match(pattern, s), "{pattern:?} on {s:?}");
        }
    }
});

fn decide(p: &Policy, req: &Request<'_>) {
    let d = p.evaluate(req);
    assert_eq!(d, p.evaluate(req), "the same request decided twice differently");
    assert!(!d.rule().is_empty(), "a decision names no rule: {d:?}");
    let kind = req.spec.kind().as_str();
    let action = req.action.as_str();
    if p.read_only.value && req.action != Action::Plan {
        assert_eq!(d.rule(), "read_only", "a read-only policy let {action} through: {d:?}");
    }
    let verdict = p.kinds.get(&(kind, action)).map(|v| v.value);
    if verdict == Some(Effect::Deny) {
        assert!(
            matches!(d, Decision::Deny { .. }),
            "kinds.{kind}.{action} = deny did not deny: {d:?}"
        );
    }
    if let Decision::Allow { .. } = d {
        assert_ne!(
            verdict,
            Some(Effect::Approve),
            "kinds.{kind}.{action} = approve allowed without approval"
        );
        assert!(!(p.read_only.value && req.action != Action::Plan));
    }
}

/// `*` matches any run of characters, everything else itself: the textbook
/// dynamic programme, to compare the agent's matcher against.
fn reference_match(p: &Pattern, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (p.0.chars().collect(), s.chars().collect());
    // m[j]: the pattern so far matches s[..j].
    let mut m = vec![false; s.len() + 1];
    m[0] = true;
    for c in p {
        if c == '*' {
            for j in 1..=s.len() {
                m[j] = m[j] || m[j - 1];
            }
        } else {
            for j in (1..=s.len()).rev() {
                m[j] = m[j - 1] && s[j - 1] == c;
            }
            m[0] = false;
        }
    }
    m[s.len()]
}
