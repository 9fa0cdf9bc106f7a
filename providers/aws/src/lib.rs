//! The AWS provider, on the official AWS SDK for Rust (rustls on aws-lc, no
//! OpenSSL). Credentials come only from the SDK's standard chain (environment,
//! profile, IRSA web identity, EKS Pod Identity, instance profile); the
//! endpoint can be overridden in the agent's config for emulators only.
//!
//! Kinds: `cluster` (EKS). Node pools, sandbox pools and databases are refused
//! as `unsupported` until they land (issue 4). The SDK's standard retry owns
//! per-call retries; an error that still surfaces is mapped onto the provider
//! error taxonomy ([`error`]), and every call's AWS request id reaches the
//! audit log through [`CallContext::called`].

mod eks;
pub mod error;
pub mod iam;

use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region};
use byoc_provider::{CallContext, Observed, Outputs, Provider, ProviderError, ResourceSpec};
use serde::Deserialize;

/// `[provider.aws]` in agent.toml.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// The region the agent serves (the target's region).
    pub region: String,
    /// The IAM role EKS assumes for the clusters the agent creates (made by
    /// the install module).
    pub cluster_role_arn: String,
    /// Subnets for clusters whose spec names none (the install module's
    /// private subnets).
    #[serde(default)]
    pub subnets: Vec<String>,
    /// Security groups attached to every cluster's control plane ENIs.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Only for emulators (moto): every AWS API is reached at this URL.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// How often a long-running change is polled.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a cluster may take to become ACTIVE or to go.
    #[serde(default = "default_wait", with = "humantime_serde")]
    pub wait_timeout: Duration,
}

fn default_poll() -> Duration {
    Duration::from_secs(15)
}
fn default_wait() -> Duration {
    Duration::from_secs(40 * 60)
}

/// The AWS cloud, as the executor sees it.
pub struct AwsCloud {
    cfg: AwsConfig,
    eks: aws_sdk_eks::Client,
}

impl AwsCloud {
    /// Builds the SDK clients from the standard credential chain.
    pub async fn connect(cfg: AwsConfig) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(cfg.region.clone()));
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        Self {
            eks: aws_sdk_eks::Client::new(&sdk),
            cfg,
        }
    }
}

fn unsupported(spec: &ResourceSpec) -> ProviderError {
    ProviderError::Unsupported {
        message: format!(
            "the AWS provider does not manage {} resources yet (clusters only)",
            spec.kind().as_str()
        ),
    }
}

#[async_trait]
impl Provider for AwsCloud {
    fn cloud(&self) -> &'static str {
        "aws"
    }

    async fn observe(&self, ctx: &CallContext<'_>, spec: &ResourceSpec) -> Result<Option<Observed>, ProviderError> {
        match spec {
            ResourceSpec::Cluster(c) => self.observe_cluster(ctx, c).await,
            _ => Err(unsupported(spec)),
        }
    }

    async fn apply(&self, ctx: &CallContext<'_>, spec: &ResourceSpec) -> Result<Outputs, ProviderError> {
        match spec {
            ResourceSpec::Cluster(c) => self.apply_cluster(ctx, c).await,
            _ => Err(unsupported(spec)),
        }
    }

    async fn delete(&self, ctx: &CallContext<'_>, spec: &ResourceSpec) -> Result<Outputs, ProviderError> {
        match spec {
            ResourceSpec::Cluster(c) => self.delete_cluster(ctx, &c.name).await,
            _ => Err(unsupported(spec)),
        }
    }
}
