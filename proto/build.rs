//! Generates the Rust code of the wire contract with protox (a pure-Rust
//! protobuf compiler), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["byoc/agent/v1/agent.proto", "byoc/control/v1/admin.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The generated `connect` constructor would clash with the `Connect` RPC;
        // both ends build their channels with their own TLS connector anyway.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
