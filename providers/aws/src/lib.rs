//! The AWS provider, on the official AWS SDK for Rust (rustls on aws-lc, no
//! OpenSSL). Credentials come only from the SDK's standard chain (environment,
//! profile, IRSA web identity, EKS Pod Identity, instance profile); the
//! endpoint can be overridden in the agent's config for emulators only.
//!
//! Kinds: `cluster` (EKS, [`eks`]), `node_pool` (EKS managed node groups) and
//! `sandbox` (a dedicated managed node group whose launch template installs
//! gVisor or Kata; [`nodegroup`], [`sandbox`]), `database` (RDS PostgreSQL and
//! MySQL, [`rds`]). The SDK's standard retry owns per-call retries; an error
//! that still surfaces is mapped onto the provider error taxonomy ([`error`]),
//! and every call's AWS request id reaches the audit log through
//! [`CallContext::called`].

mod eks;
pub mod error;
pub mod iam;
mod nodegroup;
mod rds;
pub mod sandbox;

use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_eks::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_eks::operation::RequestId;
use byoc_provider::{CallContext, Observed, Outputs, Provider, ProviderError, ResourceSpec};
use error::Response;
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
    /// Security groups attached to every cluster's control plane ENIs; they
    /// are also the only sources a database's security group lets in.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// The IAM role of the nodes of the node groups and sandbox pools the
    /// agent creates (made by the install module).
    #[serde(default)]
    pub node_role_arn: Option<String>,
    /// The VPC databases' security groups are made in.
    #[serde(default)]
    pub vpc_id: Option<String>,
    /// Private subnets for databases' DB subnet groups; `subnets` when empty.
    #[serde(default)]
    pub database_subnets: Vec<String>,
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

impl AwsConfig {
    /// The node role, or an error naming the setting.
    fn node_role(&self) -> Result<&str, ProviderError> {
        self.node_role_arn.as_deref().ok_or_else(|| {
            ProviderError::invalid(
                "provider.aws.node_role_arn",
                "node groups and sandbox pools need the nodes' IAM role: set provider.aws.node_role_arn in agent.toml (the install module outputs it)",
            )
        })
    }
}

/// Environment variables through which the SDK would take an endpoint other
/// than AWS's. The agent refuses to start with any of them set: the endpoint
/// is overridable in agent.toml only, for emulators, so that nobody can point
/// the agent's credentials at another server through its environment.
pub const ENDPOINT_ENV: &[&str] = &["AWS_ENDPOINT_URL"];

/// The first endpoint-overriding variable set in `vars` (the process
/// environment), e.g. `AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_EKS`.
/// Only the names are looked at, as the OS gives them: a variable whose
/// name or value is not UTF-8 is not an endpoint override, and must not stop
/// the agent (`std::env::vars` would panic on it).
pub fn endpoint_override_in_env(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Option<String> {
    vars.into_iter()
        .filter_map(|(k, _)| k.into_string().ok())
        .find(|k| ENDPOINT_ENV.iter().any(|p| k == p || k.starts_with(&format!("{p}_"))))
}

/// Tag key (and EKS label) the agent puts on what it creates, holding the
/// creating operation's request token: a create retried after a lost
/// response or a restart adopts a resource only if it carries the token.
/// Not part of any observed spec.
pub(crate) const TOKEN_TAG: &str = "byoc:create-token";

/// Why the AWS provider could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "{var} is set: the AWS endpoint can be overridden only by provider.aws.endpoint_url in agent.toml (for emulators); unset {var}"
    )]
    EndpointInEnvironment { var: String },
    #[error(
        "the AWS configuration (profile {profile}) sets endpoint_url {url:?}: the endpoint can be overridden only by provider.aws.endpoint_url in agent.toml; remove it from the profile"
    )]
    EndpointInProfile { profile: String, url: String },
}

/// AWS, as the registry opens it (`[provider.aws]`).
#[derive(Debug)]
pub struct Aws;

#[async_trait]
impl byoc_provider::Cloud for Aws {
    const NAME: &'static str = "aws";
    type Config = AwsConfig;

    fn check_target(
        cfg: &AwsConfig,
        target: &byoc_provider::TargetRef<'_>,
    ) -> Result<(), byoc_provider::TargetMismatch> {
        if cfg.region != target.region {
            return Err(byoc_provider::TargetMismatch {
                setting: "provider.aws.region".into(),
                value: cfg.region.clone(),
                key: "region",
                target: target.region.to_string(),
            });
        }
        Ok(())
    }

    /// AWS keeps its own time (the SDK signs requests with the system clock).
    async fn open(
        cfg: AwsConfig,
        _clock: std::sync::Arc<dyn byoc_provider::Clock>,
    ) -> Result<std::sync::Arc<dyn Provider>, byoc_provider::BoxError> {
        Ok(std::sync::Arc::new(AwsCloud::connect(cfg).await?))
    }

    fn permissions(kinds: &[byoc_provider::ResourceKind]) -> Option<serde_json::Value> {
        let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        Some(iam::policy(&kinds))
    }
}

/// The AWS cloud, as the executor sees it.
pub struct AwsCloud {
    cfg: AwsConfig,
    eks: aws_sdk_eks::Client,
    ec2: aws_sdk_ec2::Client,
    rds: aws_sdk_rds::Client,
}

impl AwsCloud {
    /// Builds the SDK clients from the standard credential chain. Refuses an
    /// endpoint that agent.toml did not set (an `AWS_ENDPOINT_URL*` variable,
    /// a profile's `endpoint_url`): the agent's credentials go to AWS, or to
    /// the emulator its own config names, and nowhere else.
    pub async fn connect(cfg: AwsConfig) -> Result<Self, SetupError> {
        if let Some(var) = endpoint_override_in_env(std::env::vars_os()) {
            return Err(SetupError::EndpointInEnvironment { var });
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(cfg.region.clone()));
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        if sdk.endpoint_url() != cfg.endpoint_url.as_deref() {
            return Err(SetupError::EndpointInProfile {
                profile: std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into()),
                url: sdk.endpoint_url().unwrap_or_default().to_string(),
            });
        }
        Ok(Self {
            eks: aws_sdk_eks::Client::new(&sdk),
            ec2: aws_sdk_ec2::Client::new(&sdk),
            rds: aws_sdk_rds::Client::new(&sdk),
            cfg,
        })
    }

    /// Audits the call (before it is made: no record, no call), runs it, and
    /// reports its request id and outcome.
    async fn call<T, E, F>(
        &self,
        ctx: &CallContext<'_>,
        action: &str,
        resource: &str,
        mutating: bool,
        f: F,
    ) -> Result<Result<T, SdkError<E, Response>>, ProviderError>
    where
        T: RequestId,
        E: ProvideErrorMetadata + std::error::Error + 'static,
        F: std::future::Future<Output = Result<T, SdkError<E, Response>>>,
    {
        ctx.before_call(action, resource, mutating).await?;
        let r = f.await;
        match &r {
            Ok(out) => ctx.called(action, resource, mutating, out.request_id().unwrap_or("-"), None),
            Err(e) => {
                let error::Failed { error, request_id } = error::map(action, e);
                ctx.called(
                    action,
                    resource,
                    mutating,
                    request_id.as_deref().unwrap_or("-"),
                    Some(&error.to_string()),
                );
            }
        }
        Ok(r)
    }

    /// [`call`](Self::call), with any error mapped onto the taxonomy.
    async fn must<T, E, F>(
        &self,
        ctx: &CallContext<'_>,
        action: &str,
        resource: &str,
        mutating: bool,
        f: F,
    ) -> Result<T, ProviderError>
    where
        T: RequestId,
        E: ProvideErrorMetadata + std::error::Error + 'static,
        F: std::future::Future<Output = Result<T, SdkError<E, Response>>>,
    {
        self.call(ctx, action, resource, mutating, f)
            .await?
            .map_err(|e| error::map(action, &e).error)
    }

    /// [`call`](Self::call), where "not found" is an answer (`None`), not an
    /// error: a describe of what may not exist, a delete of what may be gone.
    async fn found<T, E, F>(
        &self,
        ctx: &CallContext<'_>,
        action: &str,
        resource: &str,
        mutating: bool,
        f: F,
    ) -> Result<Option<T>, ProviderError>
    where
        T: RequestId,
        E: ProvideErrorMetadata + std::error::Error + 'static,
        F: std::future::Future<Output = Result<T, SdkError<E, Response>>>,
    {
        match self.call(ctx, action, resource, mutating, f).await? {
            Ok(t) => Ok(Some(t)),
            Err(e) if error::is_not_found(&e) => Ok(None),
            Err(e) => Err(error::map(action, &e).error),
        }
    }

    /// Polls `probe` until it says done (`Some`), reporting progress, within
    /// the configured wait.
    async fn wait_for<T, F, Fut>(&self, what: &str, mut probe: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, ProviderError>>,
    {
        let start = std::time::Instant::now();
        loop {
            if let Some(done) = probe().await? {
                return Ok(done);
            }
            if start.elapsed() > self.cfg.wait_timeout {
                return Err(ProviderError::Transient {
                    message: format!("{what} after {:?}", self.cfg.wait_timeout),
                });
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
        }
    }
}

/// The request token of an operation: the hex SHA-256 of its idempotency key,
/// truncated to 48 characters (EKS and EC2 take at most 64). Stable across
/// retries and restarts of the same operation.
pub(crate) fn request_token(key: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    hex::encode(&d.as_ref()[..24])
}

/// What to add (or change) and what to remove to bring tags `now` to `desired`.
pub(crate) fn tag_changes(
    now: &std::collections::BTreeMap<String, String>,
    desired: &std::collections::BTreeMap<String, String>,
) -> (std::collections::BTreeMap<String, String>, Vec<String>) {
    let added = desired
        .iter()
        .filter(|(k, v)| now.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let removed = now.keys().filter(|k| !desired.contains_key(*k)).cloned().collect();
    (added, removed)
}

/// User tags, without the agent's own token tag.
pub(crate) fn user_tags<'a>(
    tags: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> std::collections::BTreeMap<String, String> {
    tags.into_iter()
        .filter(|(k, _)| k.as_str() != TOKEN_TAG)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[async_trait]
impl Provider for AwsCloud {
    fn cloud(&self) -> &'static str {
        "aws"
    }

    async fn observe(&self, ctx: &CallContext<'_>, spec: &ResourceSpec) -> Result<Option<Observed>, ProviderError> {
        match spec {
            ResourceSpec::Cluster(c) => self.observe_cluster(ctx, c).await,
            ResourceSpec::NodePool(p) => self.observe_node_pool(ctx, p).await,
            ResourceSpec::Sandbox(s) => self.observe_sandbox(ctx, s).await,
            ResourceSpec::Database(d) => self.observe_database(ctx, d).await,
        }
    }

    async fn apply(&self, ctx: &CallContext<'_>, spec: &ResourceSpec) -> Result<Outputs, ProviderError> {
        match spec {
            ResourceSpec::Cluster(c) => self.apply_cluster(ctx, c).await,
            ResourceSpec::NodePool(p) => self.apply_node_pool(ctx, p).await,
            ResourceSpec::Sandbox(s) => self.apply_sandbox(ctx, s).await,
            ResourceSpec::Database(d) => self.apply_database(ctx, d).await,
        }
    }

    async fn delete(&self, ctx: &CallContext<'_>, spec: &ResourceSpec) -> Result<Outputs, ProviderError> {
        match spec {
            ResourceSpec::Cluster(c) => self.delete_cluster(ctx, &c.name).await,
            ResourceSpec::NodePool(p) => self.delete_nodegroup(ctx, &p.cluster, &p.name).await,
            ResourceSpec::Sandbox(s) => self.delete_sandbox(ctx, s).await,
            ResourceSpec::Database(d) => self.delete_database(ctx, d).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt as _;

    #[test]
    fn a_non_utf8_variable_is_not_an_override_and_does_not_panic() {
        let bad = OsString::from_vec(vec![b'X', 0xff]);
        let vars = vec![
            (bad.clone(), OsString::from("v")),
            (OsString::from("PATH"), bad),
            (
                OsString::from("AWS_ENDPOINT_URL_EKS"),
                OsString::from("http://127.0.0.1:1"),
            ),
        ];
        assert_eq!(
            super::endpoint_override_in_env(vars).as_deref(),
            Some("AWS_ENDPOINT_URL_EKS")
        );
        assert_eq!(
            super::endpoint_override_in_env(vec![(OsString::from("HOME"), OsString::from("/root"))]),
            None
        );
    }
}
