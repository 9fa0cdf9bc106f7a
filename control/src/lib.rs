//! The reference control plane.
//!
//! - [`pki`]: its CAs and operation-signing key, made on first start;
//!   [`rotation`]: the operator's side of a CA rotation (status, rotate, finish);
//! - [`store`]: durable state (tokens, agents, operations, results);
//! - [`service`]: the agent-facing `AgentService` (Enroll, Renew, Connect);
//!   each session runs a reader task (heartbeats, progress, results, acks) and a
//!   dispatcher task (operations in sequence order);
//! - [`hub`]: live sessions and the event feed `watch` reads;
//! - [`admin`]: the operator API on a Unix socket; [`client`] is its CLI side;
//! - [`server`]: wires it together.

pub mod admin;
pub mod client;
pub mod hub;
pub mod opfile;
pub mod pki;
pub mod rotation;
pub mod server;
pub mod service;
pub mod store;
pub mod sys;
