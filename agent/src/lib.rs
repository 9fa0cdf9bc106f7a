//! The byoc agent daemon and its CLI.
//!
//! An operation's way through the agent, one module a step, each depending
//! only on those after it:
//!
//! ```text
//! connection ─▶ session ─▶ intake ─▶ gate (byoc-gate) ─▶ Verdict
//!  (reconnect)  (decode)   (carry out the verdict)
//!                             │ accept: audit + journal, then
//!                             ▼
//!                          executor ─▶ Provider (byoc-providers) ─▶ outbox ─▶ session
//!                            (act)      (one cloud)                 (results, resent until acked)
//! ```
//!
//! - [`run`] opens the audit log, journal and identity, wires the parts and
//!   runs the named tasks (connection, outbox, status ticker, policy reload)
//!   with an injected clock and a shutdown token;
//! - [`connection`] keeps one [`session`] alive with backoff; the session
//!   only decodes control-plane messages and forwards them;
//! - [`intake`] asks the gate (`byoc_gate::Gate`: checks, policy, approval
//!   rule) for a typed verdict and carries it out: records and hands an
//!   operation to the [`executor`], or audits and answers a refusal;
//! - [`executor`] runs operations through the `Provider` with bounded
//!   concurrency and a deadline, holding those that need a local approval,
//!   auditing every cloud call before it is made;
//! - [`outbox`] numbers results, journals them and sends them, again after
//!   every reconnect, until acknowledged; [`outbound`] is the session's queue
//!   for best-effort messages (progress, heartbeats);
//! - [`credentials`] owns the identity while running: renewal in-band and
//!   CA rotation, each recorded before it is stored;
//! - [`dial`] dials out, directly or through an HTTPS proxy;
//! - [`reload`] swaps the policy on SIGHUP; [`status`] publishes
//!   `status.json` (the agent has no listener).
//!
//! No module here names a cloud: [`config`] holds `byoc_providers::ProviderConfig`,
//! and the cargo features `sim` and `aws` decide which clouds are built in.

pub mod auditlog;
pub mod config;
pub mod connection;
pub mod credentials;
pub mod dial;
pub mod enroll;
pub mod executor;
pub mod identity;
pub mod intake;
pub mod journal;
pub mod outbound;
pub mod outbox;
pub mod policy_cmd;
pub mod reload;
pub mod run;
pub mod session;
pub mod status;
pub mod trust;
