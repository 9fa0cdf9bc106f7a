//! Test-only protobuf code (e.g. a deliberately malformed control plane) goes
//! in tests/proto and is compiled here; nothing yet.
fn main() {}
