//! `agent.toml`: parsed once, at start, into typed and validated values. Errors
//! name the file and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub cloud: String,
    pub account: String,
    pub region: String,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// First wait before reconnecting; doubles (with jitter) up to `max_backoff`.
    #[serde(default = "default_min_backoff", with = "humantime_serde")]
    pub min_backoff: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// HTTPS proxy to the control plane (HTTP CONNECT),
    /// `http://[user[:password]@]host[:port]`; wins over `HTTPS_PROXY`.
    #[serde(default)]
    pub proxy: Option<crate::proxy::ProxyUrl>,
    /// A file whose first line is the proxy password (mode 0600), so that it
    /// need not sit in agent.toml; the proxy URL then names only the user.
    #[serde(default)]
    pub proxy_password_file: Option<PathBuf>,
    /// Hosts reached without the proxy (`NO_PROXY` syntax, as a list); wins
    /// over `NO_PROXY`.
    #[serde(default)]
    pub no_proxy: Option<crate::proxy::NoProxy>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            min_backoff: default_min_backoff(),
            max_backoff: default_max_backoff(),
            connect_timeout: default_connect_timeout(),
            proxy: None,
            proxy_password_file: None,
            no_proxy: None,
        }
    }
}

fn default_min_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ProviderConfig {
    /// The embedded simulated cloud.
    Sim(byoc_provider_sim::SimConfig),
    /// Amazon Web Services (EKS clusters; more kinds to come).
    Aws(byoc_provider_aws::AwsConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
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
        match &cfg.provider {
            ProviderConfig::Sim(_) if t.cloud != "sim" => {
                return Err(invalid(format!(
                    "provider.sim serves target.cloud = \"sim\", not {:?}",
                    t.cloud
                )));
            }
            ProviderConfig::Sim(_) => {}
            ProviderConfig::Aws(_) if t.cloud != "aws" => {
                return Err(invalid(format!(
                    "provider.aws serves target.cloud = \"aws\", not {:?}",
                    t.cloud
                )));
            }
            ProviderConfig::Aws(a) if a.region != t.region => {
                return Err(invalid(format!(
                    "provider.aws.region {:?} is not target.region {:?}",
                    a.region, t.region
                )));
            }
            ProviderConfig::Aws(_) => {}
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_example_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for name in ["agent.toml", "agent-aws.toml"] {
            let cfg = Config::load(&dir.join(name)).unwrap_or_else(|e| panic!("examples/{name}: {e}"));
            assert_eq!(
                matches!(cfg.provider, ProviderConfig::Aws(_)),
                name == "agent-aws.toml",
                "{name}"
            );
        }
    }
}
