//! Resource records as the simulated cloud stores them, and the status derived
//! from their timestamps.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use byoc_provider::spec::Engine;
use byoc_provider::{Outputs, ResourceKind, ResourceSpec};
use serde::{Deserialize, Serialize};

use crate::SimError;

/// Where a resource lives: its kind, name and (for node pools and sandboxes)
/// cluster. Names are validated specs' names (lower-case letters, digits and
/// `-`), so they are safe in file names and `.` separates them unambiguously.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    pub kind: ResourceKind,
    pub name: String,
    pub cluster: Option<String>,
}

impl Address {
    pub fn of(spec: &ResourceSpec) -> Self {
        Self {
            kind: spec.kind(),
            name: spec.name().to_string(),
            cluster: spec.parent_cluster().map(str::to_string),
        }
    }

    pub fn cluster(name: &str) -> Self {
        Self {
            kind: ResourceKind::Cluster,
            name: name.to_string(),
            cluster: None,
        }
    }

    /// The resource's file name under `resources/`.
    pub fn file_name(&self) -> String {
        match &self.cluster {
            Some(c) => format!("{}.{c}.{}.json", self.kind, self.name),
            None => format!("{}.{}.json", self.kind, self.name),
        }
    }

    /// The resource as named in cloud calls: `name` or `cluster/name`.
    pub fn resource(&self) -> String {
        match &self.cluster {
            Some(c) => format!("{c}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The cloud action for `verb` on this kind, e.g. `sim:CreateNodePool`.
    pub fn action(&self, verb: &str) -> String {
        let noun = match self.kind {
            ResourceKind::Cluster => "Cluster",
            ResourceKind::NodePool => "NodePool",
            ResourceKind::Sandbox => "Sandbox",
            ResourceKind::Database => "Database",
        };
        format!("sim:{verb}{noun}")
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} \"{}\"", self.kind, self.resource())
    }
}

/// The status of a resource, derived from its timestamps at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceStatus {
    Creating,
    Active,
    Updating,
    Deleting,
    /// Deleted; the record is removed the next time the cloud looks at it.
    Gone,
}

impl ResourceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Active => "active",
            Self::Updating => "updating",
            Self::Deleting => "deleting",
            Self::Gone => "gone",
        }
    }

    /// Whether the cloud is still working on the resource.
    pub fn is_transitional(self) -> bool {
        matches!(self, Self::Creating | Self::Updating | Self::Deleting)
    }
}

impl fmt::Display for ResourceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One resource file, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Stored {
    pub id: String,
    pub kind: ResourceKind,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The idempotency key of the operation that created the resource.
    pub client_token: String,
    /// The current configuration, in spec form.
    pub spec: serde_json::Value,
    #[serde(with = "humantime_serde")]
    pub created_at: SystemTime,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub updated_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub delete_requested_at: Option<SystemTime>,
    /// When the cloud's current work (create, update or delete) is done.
    #[serde(with = "humantime_serde")]
    pub settles_at: SystemTime,
}

impl Stored {
    pub fn address(&self) -> Address {
        Address {
            kind: self.kind,
            name: self.name.clone(),
            cluster: self.cluster.clone(),
        }
    }

    pub fn status_at(&self, now: SystemTime) -> ResourceStatus {
        let busy = now < self.settles_at;
        match (self.delete_requested_at, self.updated_at, busy) {
            (Some(_), _, true) => ResourceStatus::Deleting,
            (Some(_), _, false) => ResourceStatus::Gone,
            (None, Some(_), true) => ResourceStatus::Updating,
            (None, None, true) => ResourceStatus::Creating,
            (None, _, false) => ResourceStatus::Active,
        }
    }

    /// When the current (or last) piece of work started.
    pub fn work_started_at(&self) -> SystemTime {
        self.delete_requested_at.or(self.updated_at).unwrap_or(self.created_at)
    }

    /// Progress of the current work at `now`, in percent (0..=100).
    pub fn percent_at(&self, now: SystemTime) -> u8 {
        let total = self
            .settles_at
            .duration_since(self.work_started_at())
            .unwrap_or_default();
        let done = now.duration_since(self.work_started_at()).unwrap_or_default();
        if total.is_zero() || done >= total {
            return 100;
        }
        let percent = done.as_millis().saturating_mul(100) / total.as_millis().max(1);
        u8::try_from(percent.min(100)).unwrap_or(100)
    }

    /// Decodes the stored spec; `path` names the file on failure.
    pub fn decode_spec(&self, path: &Path) -> Result<ResourceSpec, SimError> {
        ResourceSpec::from_json(self.kind, &self.spec.to_string())
            .map_err(|e| SimError::corrupt(path, format!("stored spec: {e}")))
    }

    /// The record as an observer sees it at `now`.
    pub fn to_record(&self, now: SystemTime) -> ResourceRecord {
        ResourceRecord {
            id: self.id.clone(),
            kind: self.kind,
            name: self.name.clone(),
            cluster: self.cluster.clone(),
            status: self.status_at(now),
            spec: self.spec.clone(),
            client_token: self.client_token.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            delete_requested_at: self.delete_requested_at,
            settles_at: self.settles_at,
        }
    }
}

/// A resource as [`list_resources`](crate::list_resources) reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceRecord {
    /// The generated cloud id, e.g. `sim-cluster-3f9a0c1b2d4e`.
    pub id: String,
    pub kind: ResourceKind,
    pub name: String,
    /// The cluster of a node pool or sandbox.
    pub cluster: Option<String>,
    /// The status at the time of the listing.
    pub status: ResourceStatus,
    /// The current configuration, in spec form.
    pub spec: serde_json::Value,
    /// The idempotency key of the operation that created the resource.
    pub client_token: String,
    #[serde(with = "humantime_serde")]
    pub created_at: SystemTime,
    #[serde(with = "humantime_serde")]
    pub updated_at: Option<SystemTime>,
    #[serde(with = "humantime_serde")]
    pub delete_requested_at: Option<SystemTime>,
    /// When the cloud's current (or last) work on it is (or was) done.
    #[serde(with = "humantime_serde")]
    pub settles_at: SystemTime,
}

/// A resource found by a describe: its record, decoded spec and status.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub stored: Stored,
    pub spec: ResourceSpec,
    pub status: ResourceStatus,
}

impl Live {
    pub fn id(&self) -> &str {
        &self.stored.id
    }

    /// Outputs with the current status.
    pub fn outputs(&self) -> Outputs {
        self.outputs_with_status(self.status.as_str())
    }

    pub fn outputs_with_status(&self, status: &str) -> Outputs {
        let id = &self.stored.id;
        let mut out = Outputs {
            resource_id: id.clone(),
            status: status.to_string(),
            ..Outputs::default()
        };
        let attrs = &mut out.attributes;
        attrs.insert("kind".into(), self.stored.kind.to_string());
        attrs.insert("name".into(), self.stored.name.clone());
        if let Some(c) = &self.stored.cluster {
            attrs.insert("cluster".into(), c.clone());
        }
        match &self.spec {
            ResourceSpec::Cluster(c) => {
                out.endpoints.insert("api".into(), format!("https://{id}.sim.invalid"));
                attrs.insert("kubernetes_version".into(), c.kubernetes_version.clone());
                attrs.insert("endpoint_access".into(), json_str(&c.endpoint_access));
            }
            ResourceSpec::NodePool(p) => {
                attrs.insert("instance_type".into(), p.instance_type.clone());
                attrs.insert("capacity".into(), json_str(&p.capacity));
                insert_sizes(attrs, p.min_size, p.desired_size, p.max_size);
            }
            ResourceSpec::Sandbox(s) => {
                attrs.insert("instance_type".into(), s.instance_type.clone());
                attrs.insert("isolation".into(), json_str(&s.isolation));
                insert_sizes(attrs, s.min_size, s.desired_size, s.max_size);
            }
            ResourceSpec::Database(d) => {
                let port = match d.engine {
                    Engine::Postgres => 5432,
                    Engine::Mysql => 3306,
                };
                out.endpoints
                    .insert("host".into(), format!("{}.{id}.db.sim.invalid", d.name));
                out.endpoints.insert("port".into(), port.to_string());
                out.secret_refs.insert("master_password".into(), secret_ref(id));
                attrs.insert("engine".into(), json_str(&d.engine));
                attrs.insert("engine_version".into(), d.version.clone());
                attrs.insert("size".into(), json_str(&d.size));
                attrs.insert("storage_gb".into(), d.storage_gb.to_string());
                attrs.insert("deletion_protection".into(), d.deletion_protection.to_string());
            }
        }
        out
    }
}

/// Outputs of a finished delete.
pub(crate) fn deleted_outputs(address: &Address, id: Option<&str>) -> Outputs {
    let mut attributes = BTreeMap::from([
        ("kind".to_string(), address.kind.to_string()),
        ("name".to_string(), address.name.clone()),
    ]);
    if let Some(c) = &address.cluster {
        attributes.insert("cluster".into(), c.clone());
    }
    Outputs {
        resource_id: id.unwrap_or_default().to_string(),
        status: "deleted".into(),
        attributes,
        ..Outputs::default()
    }
}

/// The reference to a database's master password (never the value).
pub(crate) fn secret_ref(id: &str) -> String {
    format!("sim://secrets/{id}/master-password")
}

fn insert_sizes(attrs: &mut BTreeMap<String, String>, min: u32, desired: u32, max: u32) {
    attrs.insert("min_size".into(), min.to_string());
    attrs.insert("desired_size".into(), desired.to_string());
    attrs.insert("max_size".into(), max.to_string());
}

/// A unit enum's serde name (`on_demand`, `gvisor`, `postgres`).
fn json_str<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}
