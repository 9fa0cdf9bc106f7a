//! Operation files: the YAML or JSON documents `byoc-control submit` sends
//! and `byoc-agent policy check` decides on. One operation, or a plan of
//! several applied in order:
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
//! This module reads the document; what an operation's fields mean is each
//! reader's business (the control plane builds a request, the agent a spec).

use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetDoc {
    pub cloud: String,
    pub account: String,
    pub region: String,
}

/// One operation of a file, with the plan's target filled in when it names none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpDoc {
    pub action: String,
    pub kind: String,
    pub spec: serde_json::Value,
    #[serde(default)]
    pub target: Option<TargetDoc>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
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
}

/// Reads `path` (JSON if it ends in `.json`, else YAML): its operations, in
/// order, each with its own target or else the plan's.
pub fn read(path: &Path) -> Result<Vec<OpDoc>, OpFileError> {
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
    Ok(match doc {
        Doc::Plan(p) => p
            .operations
            .into_iter()
            .map(|mut op| {
                if op.target.is_none() {
                    op.target.clone_from(&p.target);
                }
                op
            })
            .collect(),
        Doc::Single(o) => vec![o],
    })
}
