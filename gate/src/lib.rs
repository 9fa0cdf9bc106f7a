//! `byoc-gate`: everything that decides whether the agent acts on an
//! operation, and nothing that acts. It links no cloud SDK and no network
//! code, so its decisions are tested table by table and fuzzed on their own.
//!
//! - [`checks`]: an `Operation` from the wire becomes a [`checks::Verified`]
//!   value (signature, addressee, sequence, kill switch, expiry, lifetime,
//!   target, spec) or a [`checks::Refusal`] naming the rule;
//! - [`policy`]: the customer's policy file, parsed once and evaluated to a
//!   [`policy::Decision`] naming the rule;
//! - [`decide`]: the [`Gate`], which runs both and returns a typed
//!   [`Verdict`], queuing the policy decision's audit record;
//! - [`approval`]: the files of operations held for a local approval and the
//!   customer's [`approval::Choice`];
//! - [`pause`]: the local kill switch, and its [`pause::Watcher`], which
//!   audits every change of it;
//! - [`opfile`]: operation files (`byoc-agent policy check`);
//! - [`clock`] (from `byoc-provider`): wall-clock time, injected.

pub mod approval;
pub mod checks;
pub mod decide;
pub mod localuser;
pub mod opfile;
pub mod pause;
pub mod policy;

pub use byoc_provider::clock::{self, Clock, SystemClock, TokioClock};
pub use checks::{Action, Refusal, Verified};
pub use decide::{Gate, Verdict};

use serde::Deserialize;

/// What an agent serves: cloud, account and region (`[target]` in agent.toml).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub cloud: String,
    pub account: String,
    pub region: String,
}

impl TargetConfig {
    /// As a provider checks its configuration against it.
    pub fn as_ref(&self) -> byoc_provider::TargetRef<'_> {
        byoc_provider::TargetRef {
            cloud: &self.cloud,
            account: &self.account,
            region: &self.region,
        }
    }
}
