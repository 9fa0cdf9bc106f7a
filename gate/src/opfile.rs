//! Operation files, read by `byoc-agent policy check`: the same YAML/JSON
//! format `byoc-control submit` takes (one operation with `action`, `kind`,
//! `spec`, optional `target` and `idempotency_key`, or a plan: `target`, then
//! `operations: [...]`).
//!
//! The document is read by `byoc_proto::opfile`, shared with the control plane
//! (the agent must build and ship without the vendor's reference control
//! plane, so not through its crate). The spec is decoded and validated by the
//! same `ResourceSpec::from_json` as operations arriving over the wire.

use std::path::Path;

use byoc_proto::opfile;
use byoc_provider::{ResourceKind, ResourceSpec};

use crate::checks::Action;

/// One operation of a file, decoded and validated.
#[derive(Debug, Clone)]
pub struct FileOp {
    pub action: Action,
    pub spec: ResourceSpec,
    /// The target's region, when the file names a target.
    pub region: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpFileError {
    #[error(transparent)]
    File(#[from] opfile::OpFileError),
    #[error("{path} operation {index}: {message}")]
    Invalid {
        path: String,
        index: usize,
        message: String,
    },
}

pub fn parse_action(s: &str) -> Option<Action> {
    match s {
        "plan" => Some(Action::Plan),
        "apply" => Some(Action::Apply),
        "delete" => Some(Action::Delete),
        _ => None,
    }
}

pub fn parse_kind(s: &str) -> Option<ResourceKind> {
    ResourceKind::ALL.into_iter().find(|k| k.as_str() == s)
}

/// Reads `path` (JSON if it ends in `.json`, else YAML) into operations, in order.
pub fn load(path: &Path) -> Result<Vec<FileOp>, OpFileError> {
    let name = path.display().to_string();
    let ops = opfile::read(path)?;
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| {
            let invalid = |message: String| OpFileError::Invalid {
                path: name.clone(),
                index: i + 1,
                message,
            };
            let action = parse_action(&op.action)
                .ok_or_else(|| invalid(format!("action {:?} is not one of plan, apply, delete", op.action)))?;
            let kind = parse_kind(&op.kind).ok_or_else(|| {
                invalid(format!(
                    "kind {:?} is not one of cluster, node_pool, sandbox, database",
                    op.kind
                ))
            })?;
            let spec = ResourceSpec::from_json(kind, &op.spec.to_string()).map_err(|e| invalid(e.to_string()))?;
            let region = op.target.map(|t| t.region);
            Ok(FileOp { action, spec, region })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_single_operations_and_plans_in_yaml_and_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = dir.path().join("op.yaml");
        std::fs::write(
            &yaml,
            "action: delete\nkind: database\ntarget: {cloud: sim, account: a, region: r1}\n\
             spec: {name: orders, engine: postgres, version: \"16\", size: small, storage_gb: 50}\n",
        )
        .expect("write");
        let ops = load(&yaml).expect("yaml");
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].action, Action::Delete);
        assert_eq!(ops[0].spec.name(), "orders");
        assert_eq!(ops[0].region.as_deref(), Some("r1"));

        let plan = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plan.yaml");
        let ops = load(&plan).expect("the example plan");
        assert!(ops.len() >= 4 && ops.iter().all(|o| o.region.as_deref() == Some("sim-west-1")));

        let json = dir.path().join("op.json");
        std::fs::write(
            &json,
            r#"{"action":"apply","kind":"cluster","spec":{"name":"a","kubernetes_version":"1.31"}}"#,
        )
        .expect("write");
        let ops = load(&json).expect("json");
        assert_eq!((ops[0].action, ops[0].region.as_deref()), (Action::Apply, None));

        std::fs::write(&json, r#"{"action":"apply","kind":"cluster","spec":{"name":"a"}}"#).expect("write");
        let e = load(&json).expect_err("invalid spec").to_string();
        assert!(e.contains("operation 1") && e.contains("kubernetes_version"), "{e}");
        std::fs::write(&json, r#"{"action":"destroy","kind":"cluster","spec":{}}"#).expect("write");
        assert!(load(&json).expect_err("bad action").to_string().contains("destroy"));
    }
}
