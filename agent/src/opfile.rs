//! Operation files, read by `byoc-agent policy check`: the same YAML/JSON
//! format `byoc-control submit` takes (one operation with `action`, `kind`,
//! `spec`, optional `target` and `idempotency_key`, or a plan: `target`, then
//! `operations: [...]`).
//!
//! The agent reads only what the policy needs, and does not depend on the
//! control plane's crate for it: the agent must build and ship without the
//! vendor's reference control plane, and the format is small. The spec is
//! decoded and validated by the same `ResourceSpec::from_json` as operations
//! arriving over the wire.

use std::path::Path;

use byoc_provider::{ResourceKind, ResourceSpec};
use serde::Deserialize;

use crate::checks::Action;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetDoc {
    #[allow(dead_code)]
    cloud: String,
    #[allow(dead_code)]
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
    #[allow(dead_code)]
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
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not an operation file (action, kind, spec, optional target; or target and operations): {message}"
    )]
    Format { path: String, message: String },
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
    let text = std::fs::read_to_string(path).map_err(|source| OpFileError::Read {
        path: name.clone(),
        source,
    })?;
    let format = |message: String| OpFileError::Format {
        path: name.clone(),
        message,
    };
    let doc: Doc = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| format(e.to_string()))?
    } else {
        serde_norway::from_str(&text).map_err(|e| format(e.to_string()))?
    };
    let (default_target, ops) = match doc {
        Doc::Plan(p) => (p.target, p.operations),
        Doc::Single(o) => (None, vec![o]),
    };
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
            let region = op.target.as_ref().or(default_target.as_ref()).map(|t| t.region.clone());
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
