//! `byoc-agent policy show`: the effective policy, defaults included, one rule
//! a line with its id and where it comes from.

use std::fmt::Write as _;

use super::eval::{DEFAULT_ALLOW, DEFAULT_DATABASE_DELETE};
use super::{Effect, Pattern, Policy, Set};

impl Policy {
    /// The effective policy as text: `rule id  setting  (origin)`.
    pub fn describe(&self) -> String {
        let mut rows: Vec<(String, String, String)> = Vec::new();
        let from = |line: Option<usize>| match line {
            Some(l) => format!("line {l}"),
            None => "default".to_string(),
        };
        rows.push((
            "read_only".into(),
            self.read_only.value.to_string(),
            from(self.read_only.line),
        ));
        for (id, v) in [
            ("regions", &self.regions),
            ("instance_types", &self.instance_types),
            ("gpu_types", &self.gpu_types),
        ] {
            rows.push(match v {
                Some(s) => (id.into(), patterns(&s.value), from(s.line)),
                None => (id.into(), "any".into(), "default".into()),
            });
        }
        for kind in ["cluster", "node_pool", "sandbox", "database"] {
            for action in ["plan", "apply", "delete"] {
                let id = format!("kinds.{kind}.{action}");
                rows.push(match self.kinds.get(&(kind, action)) {
                    Some(v) => (id, v.value.as_str().into(), from(v.line)),
                    None if kind == "database" && action == "delete" => (
                        id,
                        Effect::Approve.as_str().into(),
                        format!("default: rule {DEFAULT_DATABASE_DELETE}"),
                    ),
                    None => (
                        id,
                        Effect::Allow.as_str().into(),
                        format!("default: rule {DEFAULT_ALLOW}"),
                    ),
                });
            }
        }
        let l = &self.limits;
        for (id, v) in [
            ("limits.node_pool.max_size", &l.node_pool_max_size),
            ("limits.node_pool.max_disk_gb", &l.node_pool_max_disk_gb),
            ("limits.node_pool.max_gpu_count", &l.node_pool_max_gpu_count),
            ("limits.sandbox.max_size", &l.sandbox_max_size),
            ("limits.database.max_storage_gb", &l.database_max_storage_gb),
        ] {
            rows.push(limit(id, v, from));
        }
        rows.push(match &l.database_max_size {
            Some(s) => (
                "limits.database.max_size".into(),
                format!("{:?}", s.value).to_lowercase(),
                from(s.line),
            ),
            None => ("limits.database.max_size".into(), "none".into(), "default".into()),
        });
        let p = &self.protected;
        if p.names.is_empty() && p.tags.is_empty() && p.labels.is_empty() {
            rows.push(("protected".into(), "none".into(), "default".into()));
        }
        for n in &p.names {
            rows.push((
                format!("protected.name:{}", n.value.0),
                "never deleted".into(),
                from(n.line),
            ));
        }
        for (what, list) in [("tag", &p.tags), ("label", &p.labels)] {
            for (k, v) in list {
                rows.push((
                    format!("protected.{what}:{k}={}", v.value.0),
                    "never deleted".into(),
                    from(v.line),
                ));
            }
        }
        rows.push((
            "approvals.window".into(),
            humantime::format_duration(self.approval_window.value).to_string(),
            from(self.approval_window.line),
        ));
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (id, value, origin) in rows {
            let _ = writeln!(out, "{id:<width$}  {value:<24}  ({origin})");
        }
        out
    }
}

fn limit(id: &str, v: &Option<Set<u32>>, from: impl Fn(Option<usize>) -> String) -> (String, String, String) {
    match v {
        Some(s) => (id.into(), s.value.to_string(), from(s.line)),
        None => (id.into(), "none".into(), "default".into()),
    }
}

fn patterns(p: &[Pattern]) -> String {
    if p.is_empty() {
        return "none".into();
    }
    p.iter().map(|p| p.0.as_str()).collect::<Vec<_>>().join(", ")
}
