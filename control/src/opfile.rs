//! Operation files for `byoc-control submit` (format: `byoc_proto::opfile`),
//! turned into submit requests.

use std::path::Path;

use anyhow::{Context as _, bail};
use byoc_proto::agent::v1::{Action, ResourceKind, Target};
use byoc_proto::control::v1::SubmitRequest;
use byoc_proto::opfile;

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
    let ops = opfile::read(path)?;
    let mut out = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        let at = || format!("{} operation {}", path.display(), i + 1);
        let target = op
            .target
            .as_ref()
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
