//! Deciding one operation. Pure: the same policy and request always give the
//! same decision. The order of the rules is documented in `docs/policy.md`.

use std::collections::BTreeMap;

use byoc_provider::{Plan, ResourceKind, ResourceSpec};
use serde_json::Value;

use super::{Effect, Pattern, Policy, Set};
use crate::checks::Action;

/// What the policy is asked about: an operation that passed every other check.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub action: Action,
    /// The operation's target region; None when unknown (`policy check` of a
    /// file without a target), and then the `regions` rule is not applied.
    pub region: Option<&'a str>,
    pub spec: &'a ResourceSpec,
}

/// The policy's answer. Every variant names the rule that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        rule: String,
    },
    Deny {
        rule: String,
        message: String,
        /// The spec field at fault, as `<kind>.<path>` (empty when none is).
        field: String,
    },
    NeedsApproval {
        rule: String,
        message: String,
    },
}

impl Decision {
    pub fn rule(&self) -> &str {
        match self {
            Self::Allow { rule } | Self::Deny { rule, .. } | Self::NeedsApproval { rule, .. } => rule,
        }
    }

    /// As audited in `policy.decision`: `allow`, `deny` or `approval_required`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Allow { .. } => "allow",
            Self::Deny { .. } => "deny",
            Self::NeedsApproval { .. } => "approval_required",
        }
    }

    fn deny(rule: impl Into<String>, field: impl Into<String>, message: String) -> Self {
        Self::Deny {
            rule: rule.into(),
            message,
            field: field.into(),
        }
    }
}

/// The rule id of the default that holds database deletes for approval when
/// the policy does not set `kinds.database.delete`.
pub const DEFAULT_DATABASE_DELETE: &str = "default.database_delete_needs_approval";
/// The rule id of an allow that no rule of the policy made explicitly.
pub const DEFAULT_ALLOW: &str = "default.allow";

impl Policy {
    /// Decides `req`. The first rule that denies decides; then approval; else allow.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        let kind = req.spec.kind().as_str();
        let action = req.action.as_str();
        let name = req.spec.name();
        let verdict = self.kinds.get(&(kind, action));
        let kind_rule = format!("kinds.{kind}.{action}");

        if self.read_only.value && req.action != Action::Plan {
            return Decision::deny(
                "read_only",
                "",
                format!(
                    "the agent's policy is read-only: only plan is allowed, not {action} ({})",
                    self.at(self.read_only.line)
                ),
            );
        }
        if let Some(v) = verdict.filter(|v| v.value == Effect::Deny) {
            return Decision::deny(
                kind_rule,
                "",
                format!("{action} of a {kind} is denied by the policy ({})", self.at(v.line)),
            );
        }
        if let (Some(allowed), Some(region)) = (&self.regions, req.region)
            && !matches_any(&allowed.value, region)
        {
            return Decision::deny(
                "regions",
                "target.region",
                format!(
                    "region {region:?} is not one the policy allows ({}; {})",
                    list(&allowed.value),
                    self.at(allowed.line)
                ),
            );
        }
        match req.action {
            Action::Delete => {
                if let Some(d) = self.protection(req.spec) {
                    return d;
                }
            }
            Action::Plan | Action::Apply => {
                if let Some(d) = self.spec_rules(req.spec) {
                    return d;
                }
            }
        }
        match verdict {
            Some(v) if v.value == Effect::Approve => Decision::NeedsApproval {
                message: format!("{action} of {kind} {name} needs a local approval ({})", self.at(v.line)),
                rule: kind_rule,
            },
            None if req.action == Action::Delete && kind == "database" => Decision::NeedsApproval {
                rule: DEFAULT_DATABASE_DELETE.into(),
                message: format!(
                    "deleting database {name} needs a local approval (the default when the policy does not set \
                     kinds.database.delete)"
                ),
            },
            Some(_) => Decision::Allow { rule: kind_rule },
            None => Decision::Allow {
                rule: DEFAULT_ALLOW.into(),
            },
        }
    }

    /// Whether deleting the resource `spec` describes is forbidden by `protected`.
    pub fn protection(&self, spec: &ResourceSpec) -> Option<Decision> {
        let (tags, labels) = tags_and_labels(spec);
        self.protected_by(spec.kind().as_str(), spec.name(), tags, labels)
    }

    /// `protection` for a resource as the provider observed it (its spec in
    /// JSON form), checked before a delete is carried out: the tags and labels
    /// the control plane sends with a delete are not the ones that count.
    pub fn protection_observed(&self, kind: ResourceKind, name: &str, observed: &Value) -> Option<Decision> {
        let map = |key: &str| -> Option<Map> {
            let obj = observed.get(key)?.as_object()?;
            Some(
                obj.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect(),
            )
        };
        let (tags, labels) = (map("tags"), map("labels"));
        self.protected_by(kind.as_str(), name, tags.as_ref(), labels.as_ref())
    }

    /// Whether applying `plan` would take a resource's protection away: a tag
    /// or label that a `protected` rule matches on the resource as the
    /// provider observed it, and that the apply would remove or change to a
    /// value the rule no longer matches. Stripping the tag first and deleting
    /// second would otherwise get around `protected.tags`.
    pub fn protection_removed(&self, kind: ResourceKind, name: &str, plan: &Plan) -> Option<Decision> {
        let kind = kind.as_str();
        for (what, rules) in [("tag", &self.protected.tags), ("label", &self.protected.labels)] {
            let field = format!("{what}s");
            for (key, pattern) in rules {
                let path = format!("{field}.{key}");
                // The value before and after, from the change that touches it:
                // the key itself, or the whole map added or removed at once.
                let touched = plan.changes.iter().find_map(|c| {
                    let get = |v: &Option<Value>, whole: bool| -> Option<String> {
                        let v = v.as_ref()?;
                        let v = if whole { v.get(key.as_str())? } else { v };
                        v.as_str().map(str::to_string)
                    };
                    if c.path == path {
                        Some((get(&c.from, false), get(&c.to, false)))
                    } else if c.path == field {
                        Some((get(&c.from, true), get(&c.to, true)))
                    } else {
                        None
                    }
                });
                let Some((Some(before), after)) = touched else {
                    continue;
                };
                if !pattern.value.matches(&before) || after.as_deref().is_some_and(|a| pattern.value.matches(a)) {
                    continue;
                }
                let change = match &after {
                    None => "remove it".to_string(),
                    Some(a) => format!("change it to {a:?}"),
                };
                return Some(Decision::deny(
                    format!("protected.{what}:{key}={}", pattern.value.0),
                    format!("{kind}.{path}"),
                    format!(
                        "{kind} {name} has {what} {key}={before}, which the policy protects; this apply would {change} \
                         and leave the resource unprotected ({})",
                        self.at(pattern.line)
                    ),
                ));
            }
        }
        None
    }

    fn protected_by(&self, kind: &str, name: &str, tags: Option<&Map>, labels: Option<&Map>) -> Option<Decision> {
        for n in &self.protected.names {
            if n.value.matches(name) {
                return Some(Decision::deny(
                    format!("protected.name:{}", n.value.0),
                    format!("{kind}.name"),
                    format!(
                        "{kind} {name} is protected by the policy and may not be deleted ({})",
                        self.at(n.line)
                    ),
                ));
            }
        }
        for (what, rules, values) in [
            ("tag", &self.protected.tags, tags),
            ("label", &self.protected.labels, labels),
        ] {
            for (key, pattern) in rules {
                if let Some(v) = values.and_then(|m| m.get(key))
                    && pattern.value.matches(v)
                {
                    return Some(Decision::deny(
                        format!("protected.{what}:{key}={}", pattern.value.0),
                        format!("{kind}.{what}s.{key}"),
                        format!(
                            "{kind} {name} has {what} {key}={v}, which the policy protects from deletion ({})",
                            self.at(pattern.line)
                        ),
                    ));
                }
            }
        }
        None
    }

    /// Rules on what a plan or apply asks for: instance and GPU types, limits.
    fn spec_rules(&self, spec: &ResourceSpec) -> Option<Decision> {
        let kind = spec.kind().as_str();
        let instance_type = match spec {
            ResourceSpec::NodePool(s) => Some(s.instance_type.as_str()),
            ResourceSpec::Sandbox(s) => Some(s.instance_type.as_str()),
            _ => None,
        };
        if let (Some(allowed), Some(t)) = (&self.instance_types, instance_type)
            && !matches_any(&allowed.value, t)
        {
            return Some(Decision::deny(
                "instance_types",
                format!("{kind}.instance_type"),
                format!(
                    "instance type {t:?} is not one the policy allows ({}; {})",
                    list(&allowed.value),
                    self.at(allowed.line)
                ),
            ));
        }
        let l = &self.limits;
        match spec {
            ResourceSpec::NodePool(s) => {
                if let (Some(allowed), Some(gpu)) = (&self.gpu_types, &s.gpu)
                    && !matches_any(&allowed.value, &gpu.kind)
                {
                    return Some(Decision::deny(
                        "gpu_types",
                        "node_pool.gpu.type",
                        format!(
                            "GPU type {:?} is not one the policy allows ({}; {})",
                            gpu.kind,
                            list(&allowed.value),
                            self.at(allowed.line)
                        ),
                    ));
                }
                let gpus = s.gpu.as_ref().map_or(0, |g| g.count);
                self.above(
                    &l.node_pool_max_size,
                    s.max_size,
                    "limits.node_pool.max_size",
                    "node_pool.max_size",
                )
                .or_else(|| {
                    self.above(
                        &l.node_pool_max_disk_gb,
                        s.disk_gb,
                        "limits.node_pool.max_disk_gb",
                        "node_pool.disk_gb",
                    )
                })
                .or_else(|| {
                    self.above(
                        &l.node_pool_max_gpu_count,
                        gpus,
                        "limits.node_pool.max_gpu_count",
                        "node_pool.gpu.count",
                    )
                })
            }
            ResourceSpec::Sandbox(s) => self.above(
                &l.sandbox_max_size,
                s.max_size,
                "limits.sandbox.max_size",
                "sandbox.max_size",
            ),
            ResourceSpec::Database(s) => self
                .above(
                    &l.database_max_storage_gb,
                    s.storage_gb,
                    "limits.database.max_storage_gb",
                    "database.storage_gb",
                )
                .or_else(|| {
                    let max = l.database_max_size.as_ref()?;
                    (s.size > max.value).then(|| {
                        Decision::deny(
                            "limits.database.max_size",
                            "database.size",
                            format!(
                                "database size {} is above the policy's limit of {} ({})",
                                size_name(s.size),
                                size_name(max.value),
                                self.at(max.line)
                            ),
                        )
                    })
                }),
            ResourceSpec::Cluster(_) => None,
        }
    }

    /// A denial by `rule` if `value` of spec field `field` exceeds `limit`.
    fn above(&self, limit: &Option<Set<u32>>, value: u32, rule: &str, field: &str) -> Option<Decision> {
        let limit = limit.as_ref()?;
        (value > limit.value).then(|| {
            Decision::deny(
                rule,
                field,
                format!(
                    "{field} {value} is above the policy's limit of {} ({})",
                    limit.value,
                    self.at(limit.line)
                ),
            )
        })
    }
}

fn size_name(s: byoc_provider::spec::DatabaseSize) -> &'static str {
    use byoc_provider::spec::DatabaseSize::*;
    match s {
        Small => "small",
        Medium => "medium",
        Large => "large",
        Xlarge => "xlarge",
    }
}

type Map = BTreeMap<String, String>;

/// A spec's tags and (node pools and sandboxes only) labels.
fn tags_and_labels(spec: &ResourceSpec) -> (Option<&Map>, Option<&Map>) {
    match spec {
        ResourceSpec::Cluster(s) => (Some(&s.tags), None),
        ResourceSpec::NodePool(s) => (Some(&s.tags), Some(&s.labels)),
        ResourceSpec::Sandbox(s) => (Some(&s.tags), Some(&s.labels)),
        ResourceSpec::Database(s) => (Some(&s.tags), None),
    }
}

fn matches_any(patterns: &[Pattern], s: &str) -> bool {
    patterns.iter().any(|p| p.matches(s))
}

fn list(patterns: &[Pattern]) -> String {
    if patterns.is_empty() {
        return "none".into();
    }
    patterns.iter().map(|p| p.0.as_str()).collect::<Vec<_>>().join(", ")
}

impl Pattern {
    /// `*` matches any run of characters (also none); everything else itself.
    pub fn matches(&self, s: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = s.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty(); // no `*`: exact
        };
        for part in middle {
            match rest.find(part) {
                Some(i) => rest = &rest[i + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}
