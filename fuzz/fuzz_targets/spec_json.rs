//! Resource spec JSON (`Operation.spec_json`) as the providers decode it:
//! `ResourceSpec::from_json` for each kind, then what the agent does with an
//! accepted spec (its JSON form, a plan against itself).
//!
//! Input: the first byte picks the kind, the rest is the JSON text.
#![no_main]

use byoc_provider::plan::Plan;
use byoc_provider::{ResourceKind, ResourceSpec};
use libfuzzer_sys::fuzz_target;

const KINDS: [ResourceKind; 4] = [
    ResourceKind::Cluster,
    ResourceKind::NodePool,
    ResourceKind::Sandbox,
    ResourceKind::Database,
];

fuzz_target!(|data: &[u8]| {
    let Some((&k, json)) = data.split_first() else {
        return;
    };
    // `spec_json` is a protobuf string: prost refuses bytes that are not UTF-8.
    let Ok(json) = std::str::from_utf8(json) else {
        return;
    };
    let kind = KINDS[usize::from(k) % KINDS.len()];
    let Ok(spec) = ResourceSpec::from_json(kind, json) else {
        return;
    };
    assert_eq!(spec.kind(), kind);
    assert!(
        spec.validate().is_ok(),
        "from_json returned a spec that does not validate"
    );
    // The JSON form (what plans are computed on and providers store) decodes
    // to the same spec.
    let value = spec.to_value();
    let again = ResourceSpec::from_json(kind, &value.to_string());
    assert_eq!(
        again.as_ref(),
        Ok(&spec),
        "the spec does not round-trip through {value}"
    );
    let plan = Plan::for_apply(&spec, Some(&spec));
    assert!(!plan.is_mutating(), "a spec differs from itself: {plan:?}");
    assert!(Plan::for_apply(&spec, None).is_mutating());
});
