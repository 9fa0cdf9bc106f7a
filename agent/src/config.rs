//! `agent.toml`: parsed once, at start, into typed and validated values. Errors
//! name the file and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use byoc_gate::TargetConfig;
use byoc_providers::ProviderConfig;
use serde::Deserialize;

use crate::dial::ConnectionConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity, journal, audit log and status live here.
    pub data_dir: PathBuf,
    /// Overrides the control plane URL recorded at enrollment.
    #[serde(default)]
    pub control_plane: Option<String>,
    /// What this agent serves: cloud, account and region.
    pub target: TargetConfig,
    #[serde(default)]
    pub executor: ExecutorConfig,
    #[serde(default)]
    pub connection: ConnectionConfig,
    #[serde(default)]
    pub checks: ChecksConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    /// The customer's policy file (docs/policy.md), read at start and on
    /// SIGHUP. Absent: the default policy (everything allowed, database
    /// deletes need a local approval).
    #[serde(default)]
    pub policy: Option<PathBuf>,
    pub provider: ProviderConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    /// Operations run at once; more wait their turn.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_operations: usize,
    /// An operation still running after this long is stopped and fails.
    #[serde(default = "default_deadline", with = "humantime_serde")]
    pub operation_deadline: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            max_concurrent_operations: default_concurrency(),
            operation_deadline: default_deadline(),
        }
    }
}

fn default_concurrency() -> usize {
    16
}
fn default_deadline() -> Duration {
    Duration::from_secs(30 * 60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksConfig {
    /// Operations whose `not_after - issued_at` is longer are refused.
    #[serde(default = "default_max_lifetime", with = "humantime_serde")]
    pub max_operation_lifetime: Duration,
}

impl Default for ChecksConfig {
    fn default() -> Self {
        Self {
            max_operation_lifetime: default_max_lifetime(),
        }
    }
}

fn default_max_lifetime() -> Duration {
    Duration::from_secs(15 * 60)
}

/// When the audit log signs a checkpoint: after this many entries, or once
/// the newest checkpoint is this old, whichever comes first (and at shutdown).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: default_checkpoint_every(),
            checkpoint_interval: default_checkpoint_interval(),
        }
    }
}

fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}", path.display())]
    Provider {
        path: PathBuf,
        #[source]
        source: byoc_providers::RegistryError,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.into(),
            message,
        };
        let cfg: Config = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if cfg.executor.max_concurrent_operations == 0 || cfg.executor.max_concurrent_operations > 1024 {
            return Err(invalid(
                "executor.max_concurrent_operations must be between 1 and 1024".into(),
            ));
        }
        if cfg.executor.operation_deadline < Duration::from_secs(1) {
            return Err(invalid("executor.operation_deadline must be at least 1s".into()));
        }
        if cfg.checks.max_operation_lifetime < Duration::from_secs(10)
            || cfg.checks.max_operation_lifetime > Duration::from_secs(24 * 3600)
        {
            return Err(invalid(
                "checks.max_operation_lifetime must be between 10s and 24h".into(),
            ));
        }
        if cfg.connection.min_backoff.is_zero() || cfg.connection.max_backoff < cfg.connection.min_backoff {
            return Err(invalid(
                "connection.min_backoff must be above 0 and at most connection.max_backoff".into(),
            ));
        }
        let t = &cfg.target;
        if t.cloud.is_empty() || t.account.is_empty() || t.region.is_empty() {
            return Err(invalid(
                "target.cloud, target.account and target.region must not be empty".into(),
            ));
        }
        // The registry knows the clouds: whether this build has the one named,
        // and whether its settings agree with the target.
        cfg.provider
            .check(&cfg.target.as_ref())
            .map_err(|source| ConfigError::Provider {
                path: path.into(),
                source,
            })?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_example_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let cfg = Config::load(&dir.join("agent.toml")).unwrap_or_else(|e| panic!("examples/agent.toml: {e}"));
        assert_eq!(cfg.provider.cloud(), "sim");
        let aws = Config::load(&dir.join("agent-aws.toml"));
        if cfg!(feature = "aws") {
            let cfg = aws.unwrap_or_else(|e| panic!("examples/agent-aws.toml: {}", byoc_errors::chain(&e)));
            assert_eq!(cfg.provider.cloud(), "aws");
        } else {
            // A build without the AWS provider names the feature to turn on.
            let Err(e) = aws else {
                panic!("a build without the aws feature took examples/agent-aws.toml");
            };
            let msg = byoc_errors::chain(&e);
            assert!(msg.contains("`aws` cargo feature"), "{msg}");
        }
    }
}
