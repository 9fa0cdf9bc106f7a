//! Plans: the diff between the desired spec and what the cloud has.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::ResourceSpec;

/// What an operation would do, field by field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub summary: PlanSummary,
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanSummary {
    /// The resource does not exist and would be created.
    Create,
    /// The resource exists and some fields would change in place.
    Update,
    /// The resource exists and some field can only change by replacing it.
    Replace,
    /// The resource would be deleted.
    Delete,
    /// Nothing to do: observed already matches desired (or, for delete, it is gone).
    NoChange,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Dotted path of the field, e.g. `labels.team` or `desired_size`.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
    pub requires_replacement: bool,
}

impl Plan {
    pub fn no_change() -> Self {
        Self {
            summary: PlanSummary::NoChange,
            changes: Vec::new(),
        }
    }

    /// True when applying this plan would change something in the cloud.
    pub fn is_mutating(&self) -> bool {
        self.summary != PlanSummary::NoChange
    }

    /// Plan to bring `observed` (None: absent) to `desired`.
    pub fn for_apply(desired: &ResourceSpec, observed: Option<&ResourceSpec>) -> Self {
        let to = desired.to_value();
        let Some(observed) = observed else {
            return Self {
                summary: PlanSummary::Create,
                changes: vec![Change {
                    path: String::new(),
                    from: None,
                    to: Some(to),
                    requires_replacement: false,
                }],
            };
        };
        let replace = desired.kind().replacement_fields();
        let mut changes = Vec::new();
        diff_values("", &observed.to_value(), &to, &mut changes);
        for c in &mut changes {
            let top = c.path.split(['.', '[']).next().unwrap_or("");
            c.requires_replacement = replace.contains(&top);
        }
        let summary = if changes.is_empty() {
            PlanSummary::NoChange
        } else if changes.iter().any(|c| c.requires_replacement) {
            PlanSummary::Replace
        } else {
            PlanSummary::Update
        };
        Self { summary, changes }
    }

    /// Plan to delete a resource that is (Some) or is not (None) there.
    pub fn for_delete(observed: Option<&ResourceSpec>) -> Self {
        match observed {
            None => Self::no_change(),
            Some(o) => Self {
                summary: PlanSummary::Delete,
                changes: vec![Change {
                    path: String::new(),
                    from: Some(o.to_value()),
                    to: None,
                    requires_replacement: false,
                }],
            },
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Field-level diff of two JSON values. Objects are compared key by key; arrays
/// and scalars as a whole (a changed taint list is one change).
fn diff_values(path: &str, from: &Value, to: &Value, out: &mut Vec<Change>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = join(path, k);
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff_values(&p, x, y, out),
                    (x, y) => out.push(Change {
                        path: p,
                        from: x.cloned(),
                        to: y.cloned(),
                        requires_replacement: false,
                    }),
                }
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Change {
            path: path.to_string(),
            from: Some(a.clone()),
            to: Some(b.clone()),
            requires_replacement: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ResourceKind, ResourceSpec};

    fn pool(extra: &str) -> ResourceSpec {
        ResourceSpec::from_json(
            ResourceKind::NodePool,
            &format!(r#"{{"name":"p","cluster":"c","instance_type":"m6i.large","min_size":1,"max_size":10,"desired_size":2{extra}}}"#),
        )
        .expect("valid pool")
    }

    #[test]
    fn in_place_change_is_an_update_naming_each_field() {
        let plan = Plan::for_apply(
            &pool(r#","labels":{"team":"a"}"#),
            Some(&pool(r#","labels":{"team":"b"}"#)),
        );
        assert_eq!(plan.summary, PlanSummary::Update);
        assert_eq!(plan.changes.len(), 1);
        assert_eq!(plan.changes[0].path, "labels.team");
        assert_eq!(plan.changes[0].from, Some(serde_json::json!("b")));
        assert_eq!(plan.changes[0].to, Some(serde_json::json!("a")));
    }

    #[test]
    fn instance_type_change_requires_replacement() {
        let a = pool("");
        let mut b = a.clone();
        if let ResourceSpec::NodePool(p) = &mut b {
            p.instance_type = "m6i.xlarge".into();
        }
        let plan = Plan::for_apply(&b, Some(&a));
        assert_eq!(plan.summary, PlanSummary::Replace);
        assert!(plan.changes[0].requires_replacement);
    }

    #[test]
    fn identical_is_no_change() {
        assert_eq!(
            Plan::for_apply(&pool(""), Some(&pool(""))).summary,
            PlanSummary::NoChange
        );
        assert_eq!(Plan::for_apply(&pool(""), None).summary, PlanSummary::Create);
        assert_eq!(Plan::for_delete(None).summary, PlanSummary::NoChange);
    }
}
