//! Compiles the test-only protobuf in tests/proto (a control plane that can
//! send raw bytes where the agent expects a message) with protox, so building
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["byoc_test/raw_agent.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // The scripted control plane serves over its own TLS acceptor.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
