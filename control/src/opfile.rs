//! Operation files for `byoc-control submit`: YAML or JSON, one operation or a
//! plan of several, applied in order.
//!
//! ```yaml
//! target: { cloud: sim, account: demo, region: sim-west-1 }   # default for all
//! operations:
//!   - action: apply          # plan | apply | delete
//!     kind: cluster          # cluster | node_pool | sandbox | database
//!     spec: { name: prod, kubernetes_version: "1.31" }
//! ```
//!
//! A file with `action`, `kind` and `spec` at the top is a single operation.

use std::path::Path;

use anyhow::{Context as _, bail};
use byoc_proto::agent::v1::{Action, ResourceKind, Target};
use byoc_proto::control::v1::SubmitRequest;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetDoc {
    cloud: String,
    account: String,
    region: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpDoc {
    action: String,
    kind: String,
    spec: serde_json::Value,
    #[serde(default)]
    target: Option<TargetDoc>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanDoc {
    #[serde(default)]
    target: Option<TargetDoc>,
    operations: Vec<OpDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Doc {
    Plan(PlanDoc),
    Single(OpDoc),
}

pub fn parse_action(s: &str) -> anyhow::Result<Action> {
    Ok(match s {
        "plan" => Action::Plan,
        "apply" => Action::Apply,
        "delete" => Action::Delete,
        other => bail!("action {other:?} is not one of plan, apply, delete"),
    })
}

pub fn parse_kind(s: &str) -> anyhow::Result<ResourceKind> {
    Ok(match s {
        "cluster" => ResourceKind::Cluster,
        "node_pool" => ResourceKind::NodePool,
        "sandbox" => ResourceKind::Sandbox,
        "database" => ResourceKind::Database,
        other => bail!("kind {other:?} is not one of cluster, node_pool, sandbox, database"),
    })
}

/// Reads `path` into submit requests, in file order.
pub fn load(path: &Path) -> anyhow::Result<Vec<SubmitRequest>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: Doc = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{} is not a valid operation file", path.display()))?
    } else {
        serde_norway::from_str(&text).with_context(|| format!("{} is not a valid operation file", path.display()))?
    };
    let (default_target, ops) = match doc {
        Doc::Plan(p) => (p.target, p.operations),
        Doc::Single(o) => (None, vec![o]),
    };
    let mut out = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        let at = || format!("{} operation {}", path.display(), i + 1);
        let target = op
            .target
            .as_ref()
            .or(default_target.as_ref())
            .with_context(|| format!("{}: no target (cloud, account, region) given", at()))?;
        if !op.spec.is_object() {
            bail!("{}: spec must be a mapping of fields", at());
        }
        out.push(SubmitRequest {
            agent_id: String::new(),
            target: Some(Target {
                cloud: target.cloud.clone(),
                account: target.account.clone(),
                region: target.region.clone(),
            }),
            action: parse_action(&op.action).with_context(at)? as i32,
            kind: parse_kind(&op.kind).with_context(at)? as i32,
            spec_json: serde_json::to_string(&op.spec)?,
            idempotency_key: op.idempotency_key.unwrap_or_default(),
            ttl_seconds: 0,
        });
    }
    Ok(out)
}
