//! The wire contract between a byoc-agent and a control plane.
//!
//! - [`agent::v1`]: the `AgentService` (Enroll, Renew, Connect) and its messages.
//! - [`control::v1`]: the reference control plane's operator API (Unix socket only).
//! - [`signing`]: the canonical bytes an operation signature covers.
//! - [`record`]: messages kept inside JSON-lines records (base64 of the encoding).
//! - [`transport`]: the TLS settings both ends share (TLS 1.3 only, aws-lc).

pub mod opfile;
pub mod record;
pub mod signing;
pub mod transport;

#[allow(clippy::all, missing_docs)]
pub mod agent {
    pub mod v1 {
        tonic::include_proto!("byoc.agent.v1");
    }
}

#[allow(clippy::all, missing_docs)]
pub mod control {
    pub mod v1 {
        tonic::include_proto!("byoc.control.v1");
    }
}

/// Largest encoded gRPC message either side accepts. Operations and results
/// are metadata, a few KiB; anything near this size is an error or an attack.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
