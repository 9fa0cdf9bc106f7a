//! The seam between the agent and a cloud.
//!
//! A provider talks to one cloud and implements [`Provider`]; the agent's
//! executor only ever sees this trait, so the simulated cloud
//! (`byoc-provider-sim`) and the real clouds run through the same code.
//!
//! - [`spec`]: cloud-neutral resource specs (cluster, node pool, sandbox, database),
//!   decoded from JSON and validated with errors that name the field;
//! - [`plan`]: the diff of desired against observed;
//! - [`ProviderError`]: the error taxonomy the executor acts on;
//! - [`Outputs`]: what goes back to the control plane: ids, status, endpoints and
//!   secret *references*, never secret values.

pub mod clock;
mod error;
pub mod plan;
pub mod spec;
mod validate;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use clock::{Clock, SystemClock, TokioClock};
pub use error::ProviderError;
pub use plan::{Change, Plan, PlanSummary};
pub use spec::{ResourceKind, ResourceSpec};
pub use validate::MAX_POOL_SIZE;

/// The typed result of an apply or delete. Everything here may leave the
/// customer's account: secrets appear only as references (an ARN, a secret
/// manager URI), never as values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outputs {
    pub resource_id: String,
    pub status: String,
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    #[serde(default)]
    pub secret_refs: BTreeMap<String, String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// What a provider sees of a live resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The resource's current configuration, in spec form.
    pub spec: ResourceSpec,
    pub outputs: Outputs,
}

/// One call a provider is about to make to its cloud, for the audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderCall {
    /// The cloud API action, e.g. `eks:CreateCluster` or `sim:CreateCluster`.
    pub action: String,
    /// The resource it addresses (name or id).
    pub resource: String,
    /// Whether the call changes anything.
    pub mutating: bool,
}

/// Hooks the executor gives a provider for one operation.
#[async_trait]
pub trait CallHooks: Send + Sync {
    /// Called before every cloud call. The provider must not make the call
    /// unless this returns `Ok`: it is how the audit log fails closed.
    async fn before_call(&self, call: &ProviderCall) -> Result<(), BoxError>;
    /// Progress of a long-running step; `percent` is 0..=100 when known.
    fn progress(&self, phase: &str, message: &str, percent: Option<u8>);
    /// Called after a cloud call with the cloud's request id (what CloudTrail,
    /// Cloud Audit Logs or the Activity Log know the call by) and the error, if
    /// any. The agent puts these in the operation's outcome audit entry.
    fn called(&self, _call: &ProviderCall, _request_id: &str, _error: Option<&str>) {}
}

/// Per-operation context for provider calls.
pub struct CallContext<'a> {
    pub operation_id: &'a str,
    /// Stable across retries and restarts of the same operation: providers pass
    /// it to the cloud as the client request token where the API has one.
    pub idempotency_key: &'a str,
    pub hooks: &'a dyn CallHooks,
}

impl CallContext<'_> {
    /// Runs the before-call hook; maps a refusal to an error the provider returns.
    pub async fn before_call(&self, action: &str, resource: &str, mutating: bool) -> Result<(), ProviderError> {
        let call = ProviderCall {
            action: action.to_string(),
            resource: resource.to_string(),
            mutating,
        };
        self.hooks
            .before_call(&call)
            .await
            .map_err(|reason| ProviderError::Aborted {
                message: format!("{action}: {}", byoc_errors::chain(&*reason)),
            })
    }
}

impl CallContext<'_> {
    /// Reports a call's request id to the hooks (see [`CallHooks::called`]).
    pub fn called(&self, action: &str, resource: &str, mutating: bool, request_id: &str, error: Option<&str>) {
        let call = ProviderCall {
            action: action.to_string(),
            resource: resource.to_string(),
            mutating,
        };
        self.hooks.called(&call, request_id, error);
    }
}

/// A cloud, as the executor sees it. Implementations must be idempotent: the
/// executor may call `apply` or `delete` again for the same operation after a
/// crash, and the second call must converge without creating a duplicate.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// `sim`, `aws`, `gcp` or `azure`.
    fn cloud(&self) -> &'static str;

    /// Reads the live resource named by `spec` (None when it does not exist).
    async fn observe(&self, ctx: &CallContext<'_>, spec: &ResourceSpec) -> Result<Option<Observed>, ProviderError>;

    /// Brings the resource to `spec`, creating it or changing it in place, and
    /// waits until it is usable. Refuses changes that need replacement.
    async fn apply(&self, ctx: &CallContext<'_>, spec: &ResourceSpec) -> Result<Outputs, ProviderError>;

    /// Deletes the resource and waits until it is gone. Deleting a resource that
    /// does not exist succeeds.
    async fn delete(&self, ctx: &CallContext<'_>, spec: &ResourceSpec) -> Result<Outputs, ProviderError>;

    /// Diff of desired against observed; calls only `observe`.
    async fn plan(&self, ctx: &CallContext<'_>, spec: &ResourceSpec, delete: bool) -> Result<Plan, ProviderError> {
        let observed = self.observe(ctx, spec).await?;
        Ok(if delete {
            Plan::for_delete(observed.as_ref().map(|o| &o.spec))
        } else {
            Plan::for_apply(spec, observed.as_ref().map(|o| &o.spec))
        })
    }
}

/// How the agent opens a cloud: the one thing a provider crate exposes besides
/// its [`Provider`]. The registry (`byoc-providers`) lists the clouds that
/// implement it, each behind a cargo feature; nothing else in the agent names
/// a cloud.
#[async_trait]
pub trait Cloud {
    /// The cloud's name: the key of its `[provider.NAME]` table in agent.toml,
    /// `target.cloud`, and what its [`Provider::cloud`] returns.
    const NAME: &'static str;
    /// Its `[provider.NAME]` table in agent.toml.
    type Config: serde::de::DeserializeOwned + std::fmt::Debug + Clone + Send + Sync + 'static;

    /// Checks the provider's configuration against the agent's target, before
    /// anything is opened. `Err` says which setting disagrees with which.
    fn check_target(cfg: &Self::Config, target: &TargetRef<'_>) -> Result<(), TargetMismatch>;

    /// Sets up the provider: credentials from the cloud's own chain, clients.
    /// `clock` is the agent's: a provider that keeps time of its own (the
    /// simulated cloud) takes it from there.
    async fn open(
        cfg: Self::Config,
        clock: std::sync::Arc<dyn Clock>,
    ) -> Result<std::sync::Arc<dyn Provider>, BoxError>;

    /// The least-privilege permission document the agent's cloud identity
    /// needs to manage `kinds` (every action the provider calls, nothing
    /// else), or None when the cloud needs no permissions (the simulated one).
    fn permissions(kinds: &[ResourceKind]) -> Option<serde_json::Value>;
}

/// The agent's target, as a [`Cloud`] checks its configuration against it.
#[derive(Debug, Clone, Copy)]
pub struct TargetRef<'a> {
    pub cloud: &'a str,
    pub account: &'a str,
    pub region: &'a str,
}

/// A provider setting that disagrees with the agent's target, e.g.
/// `provider.aws.region "eu-west-1" is not target.region "us-east-1"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting} {value:?} is not target.{key} {target:?}")]
pub struct TargetMismatch {
    /// The provider's setting, as agent.toml names it.
    pub setting: String,
    pub value: String,
    /// `cloud`, `account` or `region`.
    pub key: &'static str,
    pub target: String,
}

/// A provider's own error type, boxed where the agent only reports it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
