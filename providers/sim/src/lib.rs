//! A simulated cloud behind the [`Provider`](byoc_provider::Provider) trait: the
//! embedded default cloud for demos and the test double for agent tests.
//!
//! # Model
//!
//! [`SimCloud`] behaves like a small real cloud API, seen through a provider:
//!
//! - **Resources** (clusters, node pools, sandboxes, databases) are addressed by
//!   kind and name (plus their cluster, for node pools and sandboxes) and get a
//!   generated id such as `sim-cluster-3f9a0c1b2d4e` when created.
//! - **State is persisted** in a state directory, one JSON file per resource
//!   under `resources/`, each written atomically (temporary file, fsync, rename,
//!   fsync of the directory). A process killed with `kill -9` at any point leaves
//!   every file either in its old or its new version, and a new process on the
//!   same directory (an agent after a restart) carries on from there.
//! - **Work is asynchronous** and derived from wall-clock timestamps, so it
//!   survives restarts: a create, update or delete request stores when it was
//!   made and when the cloud's work will be done (now plus the configured
//!   [`create_delay`](SimConfig::create_delay), [`update_delay`](SimConfig::update_delay)
//!   or [`delete_delay`](SimConfig::delete_delay) of the instance that made the
//!   request). A resource is `creating` or `updating` until then and `active`
//!   after; a deleted one is `deleting` until then and gone after, and its file
//!   is removed by the next describe that sees it gone.
//! - **Every cloud call** (`sim:DescribeCluster`, `sim:CreateNodePool`,
//!   `sim:DeleteDatabase`, ...) first goes through the operation's
//!   [`CallHooks::before_call`](byoc_provider::CallHooks::before_call) (the audit
//!   log fails closed there), then through the injected [`Faults`]; mutating
//!   calls that reach the cloud are counted in `calls.json` ([`call_counts`]).
//! - **The provider side** is written like a real one: `apply` describes first,
//!   creates what is absent (with the operation's idempotency key as client
//!   token), updates in place what differs, refuses what would need a
//!   replacement, and polls until the resource is `active`; `delete` polls until
//!   it is gone. Calling either again after a crash waits for the work already
//!   under way instead of starting it twice.
//! - **Secrets** never leave the state directory: a database's master password
//!   is stored in `secrets/<id>` (mode 0600) and outputs carry only the reference
//!   `sim://secrets/<id>/master-password`.
//!
//! # State directory layout
//!
//! ```text
//! <state_dir>/                       mode 0700
//!   resources/<kind>.<name>.json           clusters, databases
//!   resources/<kind>.<cluster>.<name>.json node pools, sandboxes
//!   secrets/<id>                           database master passwords, mode 0600
//!   faults.json                            injected faults (see Faults), optional
//!   calls.json                             mutating calls made, per action
//! ```
//!
//! Within one process, provider-side decisions (describe, then create, update
//! or delete) are serialized per cluster (a cluster with its node pools and
//! sandboxes) and per database, so unrelated resources proceed in parallel;
//! the describe's before-call hook runs before that lock is taken. Reads and
//! writes of the state files are serialized per state directory; across
//! processes, a create is still exclusive (the resource file is linked into
//! place only if absent), which is what an agent restarting on the same
//! directory needs.

mod cloud;
mod faults;
mod provider;
mod record;
mod shared;
mod store;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use byoc_provider::ProviderError;
use serde::{Deserialize, Serialize};

pub use cloud::SimCloud;
pub use faults::{Faults, read_faults, write_faults};
pub use record::{ResourceRecord, ResourceStatus};
pub use store::{call_counts, list_resources, list_resources_at};

/// Configuration of a [`SimCloud`], e.g. from the agent's config file:
///
/// ```toml
/// state_dir = "/var/lib/byoc-agent/sim"
/// create_delay = "3s"
/// update_delay = "2s"
/// delete_delay = "2s"
/// poll_interval = "100ms"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Where the simulated cloud keeps its state; created (mode 0700) if missing.
    pub state_dir: PathBuf,
    /// How long a resource stays `creating` before it is `active`.
    #[serde(default, with = "humantime_serde")]
    pub create_delay: Duration,
    /// How long a resource stays `updating` before it is `active` again.
    #[serde(default, with = "humantime_serde")]
    pub update_delay: Duration,
    /// How long a resource stays `deleting` before it is gone.
    #[serde(default, with = "humantime_serde")]
    pub delete_delay: Duration,
    /// How often the provider describes a resource while waiting for it.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
}

fn default_poll_interval() -> Duration {
    Duration::from_millis(50)
}

impl SimConfig {
    /// A configuration with no delays and the default poll interval (50ms).
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            create_delay: Duration::ZERO,
            update_delay: Duration::ZERO,
            delete_delay: Duration::ZERO,
            poll_interval: default_poll_interval(),
        }
    }

    /// Sets the same delay for creates, updates and deletes.
    pub fn with_delays(mut self, delay: Duration) -> Self {
        self.create_delay = delay;
        self.update_delay = delay;
        self.delete_delay = delay;
        self
    }
}

/// A failure of the simulated cloud's own machinery (its state directory), as
/// opposed to the cloud errors it simulates, which are [`ProviderError`]s.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Reading or writing a state file failed.
    #[error("sim cloud state {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A state file exists but cannot be decoded; `path` names it.
    #[error("sim cloud state file {} is corrupt: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    /// The system random number generator failed.
    #[error("sim cloud: the system random number generator failed")]
    Random,
    /// A background file task did not complete.
    #[error("sim cloud: background state task failed: {0}")]
    Task(String),
}

impl SimError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, message: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// I/O failures may clear on retry (a full disk, say); a corrupt state file will
/// not, so it is reported as a conflict naming the file.
impl From<SimError> for ProviderError {
    fn from(e: SimError) -> Self {
        match e {
            SimError::Io { .. } | SimError::Random | SimError::Task(_) => ProviderError::Transient {
                message: byoc_errors::chain(&e),
            },
            SimError::Corrupt { .. } => ProviderError::Conflict {
                message: byoc_errors::chain(&e),
            },
        }
    }
}

/// The simulated cloud, as the registry opens it (`[provider.sim]`).
#[derive(Debug)]
pub struct Sim;

#[async_trait::async_trait]
impl byoc_provider::Cloud for Sim {
    const NAME: &'static str = "sim";
    type Config = SimConfig;

    fn check_target(
        _cfg: &SimConfig,
        _target: &byoc_provider::TargetRef<'_>,
    ) -> Result<(), byoc_provider::TargetMismatch> {
        Ok(())
    }

    async fn open(
        cfg: SimConfig,
        clock: std::sync::Arc<dyn byoc_provider::Clock>,
    ) -> Result<std::sync::Arc<dyn byoc_provider::Provider>, byoc_provider::BoxError> {
        Ok(std::sync::Arc::new(SimCloud::open_with_clock(cfg, clock)?))
    }

    /// The simulated cloud runs in the agent's own process: no identity needed.
    fn permissions(_kinds: &[byoc_provider::ResourceKind]) -> Option<serde_json::Value> {
        None
    }
}
