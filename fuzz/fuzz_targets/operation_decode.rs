//! Arbitrary bytes from the control plane's stream: `ControlMessage` and
//! `Operation` protobuf decoding, then the agent's checks.
//!
//! Random bytes almost never carry a valid signature, so `Checker::check`
//! stops at the signature; `checks::decode` (action, kind, spec) is driven
//! directly as well so the spec decoding behind the signature is reached.
//! The seeds are valid operations signed with the fixture key, so mutations
//! of their unsigned bytes (the signature field, unknown fields, field
//! order) go through every check. `operation_signed` reaches past the
//! signature with any field value.
#![no_main]

use byoc_fuzz::{check_and_assert, checker};
use byoc_proto::agent::v1::{ControlMessage, Operation, control_message::Body};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ControlMessage::decode(data) {
        // What was decoded encodes to bytes that decode to the same message.
        let again = ControlMessage::decode(msg.encode_to_vec().as_slice());
        assert_eq!(again.as_ref(), Ok(&msg), "ControlMessage does not round-trip");
        if let Some(Body::Operation(op)) = msg.body {
            operation(&op);
        }
    }
    if let Ok(op) = Operation::decode(data) {
        let again = Operation::decode(op.encode_to_vec().as_slice());
        assert_eq!(again.as_ref(), Ok(&op), "Operation does not round-trip");
        operation(&op);
    }
});

fn operation(op: &Operation) {
    let checked = check_and_assert(&checker(false), op);
    let decoded = byoc_gate::checks::decode(op.clone());
    // Once every other check passed, the outcome is the decoder's.
    if let Ok(v) = &checked {
        let d = decoded.as_ref().map(|d| (d.signed(), d.action, &d.spec));
        assert_eq!(d, Ok((v.signed(), v.action, &v.spec)));
    }
}
