//! Cloud-neutral resource specs, decoded from the JSON an operation carries and
//! validated before any provider call.
//!
//! Decoding rejects unknown fields, and every error names the field at fault and
//! says what is valid, e.g. `node_pool.max_size: 5000 is above the maximum 1000`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ProviderError;

/// The kinds of resource an operation can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Cluster,
    NodePool,
    Sandbox,
    Database,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 4] = [Self::Cluster, Self::NodePool, Self::Sandbox, Self::Database];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cluster => "cluster",
            Self::NodePool => "node_pool",
            Self::Sandbox => "sandbox",
            Self::Database => "database",
        }
    }

    /// Spec fields whose change cannot be made in place: the resource would have
    /// to be replaced, which the agent refuses to do implicitly.
    pub fn replacement_fields(self) -> &'static [&'static str] {
        match self {
            Self::Cluster => &["name", "network", "secrets_encryption_key"],
            Self::NodePool => &["name", "cluster", "instance_type", "capacity", "disk_gb", "gpu"],
            Self::Sandbox => &["name", "cluster", "isolation", "instance_type"],
            Self::Database => &["name", "engine"],
        }
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Kubernetes cluster (EKS, GKE, AKS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub name: String,
    /// `major.minor`, e.g. `1.31`.
    pub kubernetes_version: String,
    #[serde(default)]
    pub endpoint_access: EndpointAccess,
    /// Cloud network placement (VPC / subnets); the provider's defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// Control-plane logs sent to the cloud's log service (none by default).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub control_plane_logs: BTreeSet<ControlPlaneLog>,
    /// A key of the cloud's KMS (a key ARN on AWS) that encrypts Kubernetes
    /// secrets at rest. Set at creation; it cannot be changed or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_encryption_key: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// A control-plane log stream, named by what it records rather than by one
/// cloud's name for it. Not every cloud has every stream (`authenticator`,
/// the log of the cluster's authentication webhook, is EKS's and AKS's, not
/// GKE's): a provider whose cloud lacks a stream refuses a spec that asks for
/// it as `invalid_spec` on `cluster.control_plane_logs`, naming the streams it
/// has, before any call. Only the streams every cloud has may be assumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlPlaneLog {
    Api,
    Audit,
    Authenticator,
    ControllerManager,
    Scheduler,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointAccess {
    #[default]
    Private,
    Public,
    PublicAndPrivate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
}

/// A group of worker nodes in a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePoolSpec {
    pub name: String,
    /// Name of the cluster the pool belongs to.
    pub cluster: String,
    pub instance_type: String,
    pub min_size: u32,
    pub max_size: u32,
    pub desired_size: u32,
    #[serde(default)]
    pub capacity: Capacity,
    #[serde(default = "default_disk_gb")]
    pub disk_gb: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

fn default_disk_gb() -> u32 {
    100
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capacity {
    #[default]
    OnDemand,
    Spot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// Accelerator type, e.g. `nvidia-l4`.
    #[serde(rename = "type")]
    pub kind: String,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    pub effect: TaintEffect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// A sandbox runtime: a dedicated node pool whose pods run under a stronger
/// isolation boundary (gVisor, Kata Containers or Firecracker microVMs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    pub name: String,
    pub cluster: String,
    pub isolation: Isolation,
    pub instance_type: String,
    pub min_size: u32,
    pub max_size: u32,
    pub desired_size: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    Gvisor,
    Kata,
    Firecracker,
}

/// A managed relational database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSpec {
    pub name: String,
    pub engine: Engine,
    /// Engine version, e.g. `16` or `16.4`.
    pub version: String,
    pub size: DatabaseSize,
    pub storage_gb: u32,
    /// Storage may grow by itself up to this size (GB); none: it does not.
    /// Storage never shrinks: a smaller `storage_gb` than the database has is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_storage_gb: Option<u32>,
    #[serde(default)]
    pub high_availability: bool,
    #[serde(default)]
    pub backups: BackupSpec,
    #[serde(default = "default_true")]
    pub deletion_protection: bool,
    /// Whether a delete first takes a final snapshot (kept after the database).
    #[serde(default = "default_true")]
    pub final_snapshot: bool,
    /// Whether in-place changes apply now (`true`) or in the database's next
    /// maintenance window (`false`, the default, as the clouds do).
    #[serde(default)]
    pub apply_immediately: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Postgres,
    Mysql,
}

/// Cloud-neutral instance sizes; each provider maps a size to its nearest class.
/// small = 2 vCPU / 4 GiB, medium = 2 vCPU / 8 GiB, large = 4 vCPU / 16 GiB,
/// xlarge = 8 vCPU / 32 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseSize {
    Small,
    Medium,
    Large,
    Xlarge,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSpec {
    #[serde(default = "default_retention")]
    pub retention_days: u32,
    /// Daily backup window in UTC, `HH:MM-HH:MM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

fn default_retention() -> u32 {
    7
}

impl Default for BackupSpec {
    fn default() -> Self {
        Self {
            retention_days: default_retention(),
            window: None,
        }
    }
}

/// A validated resource spec of any kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ResourceSpec {
    Cluster(ClusterSpec),
    NodePool(NodePoolSpec),
    Sandbox(SandboxSpec),
    Database(DatabaseSpec),
}

impl ResourceSpec {
    /// Decodes and validates a spec of the given kind. Errors name the field
    /// (as a dotted path under the kind, e.g. `node_pool.taints[0].effect`).
    pub fn from_json(kind: ResourceKind, json: &str) -> Result<Self, ProviderError> {
        fn decode<T: serde::de::DeserializeOwned>(kind: ResourceKind, json: &str) -> Result<T, ProviderError> {
            let de = &mut serde_json::Deserializer::from_str(json);
            let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." || path.is_empty() {
                    kind.as_str().to_string()
                } else {
                    format!("{}.{}", kind.as_str(), path)
                };
                ProviderError::invalid(field, e.into_inner().to_string())
            })?;
            // Nothing may follow the object: the signed bytes are the whole spec.
            de.end()
                .map_err(|e| ProviderError::invalid(kind.as_str(), format!("trailing data after the spec: {e}")))?;
            Ok(value)
        }
        let spec = match kind {
            ResourceKind::Cluster => Self::Cluster(decode(kind, json)?),
            ResourceKind::NodePool => Self::NodePool(decode(kind, json)?),
            ResourceKind::Sandbox => Self::Sandbox(decode(kind, json)?),
            ResourceKind::Database => Self::Database(decode(kind, json)?),
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn kind(&self) -> ResourceKind {
        match self {
            Self::Cluster(_) => ResourceKind::Cluster,
            Self::NodePool(_) => ResourceKind::NodePool,
            Self::Sandbox(_) => ResourceKind::Sandbox,
            Self::Database(_) => ResourceKind::Database,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Cluster(s) => &s.name,
            Self::NodePool(s) => &s.name,
            Self::Sandbox(s) => &s.name,
            Self::Database(s) => &s.name,
        }
    }

    /// The cluster a node pool or sandbox belongs to.
    pub fn parent_cluster(&self) -> Option<&str> {
        match self {
            Self::NodePool(s) => Some(&s.cluster),
            Self::Sandbox(s) => Some(&s.cluster),
            _ => None,
        }
    }

    /// The spec as a JSON value (the form plans are computed on).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}
