//! The byoc agent.
//!
//! Tasks and channels of a running agent (`run`):
//! - the **connection loop** ([`run`]) keeps one [`session`] alive, reconnecting
//!   with jittered exponential backoff;
//! - a **session** decodes control-plane messages, has each operation checked
//!   ([`checks`]: signature, addressee, sequence, expiry, target, spec), records
//!   it in the audit log and the [`journal`], and hands it to the executor;
//! - the **[`executor`]** runs operations through the `Provider` with bounded
//!   concurrency and a deadline, auditing every cloud call before it is made;
//! - the **[`outbox`]** task numbers results, journals them and sends them,
//!   again after every reconnect, until acknowledged;
//! - [`connect`] dials out, directly or through an HTTPS proxy ([`proxy`],
//!   [`tunnel`]);
//! - the **[`status`]** writer publishes `status.json` (the agent has no listener).

pub mod approval;
pub mod auditlog;
pub mod checks;
pub mod config;
pub mod connect;
pub mod enroll;
pub mod executor;
pub mod identity;
pub mod journal;
pub mod localuser;
pub mod opfile;
pub mod outbox;
pub mod pause;
pub mod policy;
pub mod policy_cmd;
pub mod proxy;
pub mod run;
pub mod session;
pub mod status;
pub mod trust;
pub mod tunnel;

/// Wall-clock time in milliseconds since the Unix epoch, as the protocol carries it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
