use byoc_provider::{ResourceKind, ResourceSpec};
use serde_json::json;

use super::*;
use crate::checks::Action;

fn spec(kind: ResourceKind, v: serde_json::Value) -> ResourceSpec {
    ResourceSpec::from_json(kind, &v.to_string()).expect("valid spec")
}

fn cluster(name: &str) -> ResourceSpec {
    spec(
        ResourceKind::Cluster,
        json!({"name": name, "kubernetes_version": "1.31"}),
    )
}

fn pool(instance_type: &str, max: u32) -> ResourceSpec {
    spec(
        ResourceKind::NodePool,
        json!({"name": "general", "cluster": "prod", "instance_type": instance_type,
               "min_size": 1, "max_size": max, "desired_size": 1}),
    )
}

fn database(name: &str, extra: serde_json::Value) -> ResourceSpec {
    let mut v = json!({"name": name, "engine": "postgres", "version": "16", "size": "medium", "storage_gb": 100});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    spec(ResourceKind::Database, v)
}

fn decide(p: &Policy, action: Action, s: &ResourceSpec) -> Decision {
    p.evaluate(&Request {
        action,
        region: Some("eu-west-1"),
        spec: s,
    })
}

fn denied_by(d: &Decision) -> &str {
    match d {
        Decision::Deny { rule, .. } => rule,
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn p(text: &str) -> Policy {
    parse(text).unwrap_or_else(|e| panic!("policy should parse: {e}"))
}

#[test]
fn the_default_allows_everything_but_holds_database_deletes_for_approval() {
    let d = Policy::default();
    assert_eq!(d, p(""), "an empty file is the default policy");
    for (action, s) in [
        (Action::Apply, cluster("a")),
        (Action::Delete, cluster("a")),
        (Action::Plan, database("db", json!({}))),
        (Action::Apply, database("db", json!({}))),
    ] {
        assert_eq!(
            decide(&d, action, &s),
            Decision::Allow {
                rule: "default.allow".into()
            }
        );
    }
    match decide(&d, Action::Delete, &database("db", json!({}))) {
        Decision::NeedsApproval { rule, message } => {
            assert_eq!(rule, "default.database_delete_needs_approval");
            assert!(message.contains("db"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(d.approval_window(), DEFAULT_APPROVAL_WINDOW);
}

#[test]
fn read_only_allows_only_plans() {
    let ro = p("read_only = true\n");
    assert!(matches!(
        decide(&ro, Action::Plan, &cluster("a")),
        Decision::Allow { .. }
    ));
    for action in [Action::Apply, Action::Delete] {
        let d = decide(&ro, action, &cluster("a"));
        assert_eq!(denied_by(&d), "read_only");
        let Decision::Deny { message, .. } = d else {
            unreachable!()
        };
        assert!(message.contains("policy line 1"), "{message}");
    }
}

#[test]
fn kinds_allow_deny_or_hold_each_action() {
    let pol = p(r#"
[kinds.cluster]
delete = "deny"
apply = "allow"
[kinds.node_pool]
apply = "approve"
[kinds.database]
delete = "allow"
"#);
    assert_eq!(
        denied_by(&decide(&pol, Action::Delete, &cluster("a"))),
        "kinds.cluster.delete"
    );
    assert_eq!(
        decide(&pol, Action::Apply, &cluster("a")),
        Decision::Allow {
            rule: "kinds.cluster.apply".into()
        }
    );
    assert!(matches!(
        decide(&pol, Action::Apply, &pool("m6i.large", 3)),
        Decision::NeedsApproval { rule, .. } if rule == "kinds.node_pool.apply"
    ));
    // Setting kinds.database.delete replaces the default hold.
    assert_eq!(
        decide(&pol, Action::Delete, &database("db", json!({}))),
        Decision::Allow {
            rule: "kinds.database.delete".into()
        }
    );
    let Decision::Deny { message, .. } = decide(&pol, Action::Delete, &cluster("a")) else {
        panic!()
    };
    assert!(message.contains("policy line 3"), "{message}");
}

#[test]
fn regions_are_matched_against_the_operation_target() {
    let pol = p("regions = [\"eu-*\", \"us-east-1\"]\n");
    let s = cluster("a");
    let at = |region| {
        pol.evaluate(&Request {
            action: Action::Apply,
            region: Some(region),
            spec: &s,
        })
    };
    assert!(matches!(at("eu-west-1"), Decision::Allow { .. }));
    assert!(matches!(at("us-east-1"), Decision::Allow { .. }));
    let d = at("us-west-2");
    assert_eq!(denied_by(&d), "regions");
    let Decision::Deny { field, message, .. } = d else {
        unreachable!()
    };
    assert_eq!(field, "target.region");
    assert!(message.contains("eu-*, us-east-1"), "{message}");
    // Unknown region (policy check without a target): not applied.
    let unknown = pol.evaluate(&Request {
        action: Action::Apply,
        region: None,
        spec: &s,
    });
    assert!(matches!(unknown, Decision::Allow { .. }));
}

#[test]
fn instance_and_gpu_types_are_matched_by_pattern() {
    let pol = p("instance_types = [\"m6i.*\", \"c7g.large\"]\ngpu_types = [\"nvidia-l4\"]\n");
    assert!(matches!(
        decide(&pol, Action::Apply, &pool("m6i.large", 3)),
        Decision::Allow { .. }
    ));
    assert!(matches!(
        decide(&pol, Action::Apply, &pool("c7g.large", 3)),
        Decision::Allow { .. }
    ));
    let d = decide(&pol, Action::Apply, &pool("p5.48xlarge", 3));
    assert_eq!(denied_by(&d), "instance_types");
    // A plan is refused too: it would show a change the policy refuses.
    assert_eq!(
        denied_by(&decide(&pol, Action::Plan, &pool("c7g.xlarge", 3))),
        "instance_types"
    );
    // Deleting something the policy would no longer create is allowed.
    assert!(matches!(
        decide(&pol, Action::Delete, &pool("p5.48xlarge", 3)),
        Decision::Allow { .. }
    ));

    let sandbox = spec(
        ResourceKind::Sandbox,
        json!({"name": "s", "cluster": "prod", "isolation": "gvisor", "instance_type": "t3.large",
               "min_size": 1, "max_size": 2, "desired_size": 1}),
    );
    assert_eq!(denied_by(&decide(&pol, Action::Apply, &sandbox)), "instance_types");

    let gpu = |t: &str| {
        spec(
            ResourceKind::NodePool,
            json!({"name": "gpu", "cluster": "prod", "instance_type": "m6i.large", "min_size": 0, "max_size": 2,
                   "desired_size": 0, "gpu": {"type": t, "count": 1}}),
        )
    };
    assert!(matches!(
        decide(&pol, Action::Apply, &gpu("nvidia-l4")),
        Decision::Allow { .. }
    ));
    let d = decide(&pol, Action::Apply, &gpu("nvidia-h100"));
    assert_eq!(denied_by(&d), "gpu_types");
    let Decision::Deny { field, .. } = d else {
        unreachable!()
    };
    assert_eq!(field, "node_pool.gpu.type");
}

#[test]
fn limits_name_the_field_the_limit_and_the_line() {
    let pol = p(r#"
[limits.node_pool]
max_size = 50
max_disk_gb = 200
max_gpu_count = 2

[limits.sandbox]
max_size = 10

[limits.database]
max_storage_gb = 500
max_size = "large"
"#);
    let d = decide(&pol, Action::Apply, &pool("m6i.large", 500));
    assert_eq!(
        d,
        Decision::Deny {
            rule: "limits.node_pool.max_size".into(),
            field: "node_pool.max_size".into(),
            message: "node_pool.max_size 500 is above the policy's limit of 50 (policy line 3)".into(),
        }
    );
    assert!(matches!(
        decide(&pol, Action::Apply, &pool("m6i.large", 50)),
        Decision::Allow { .. }
    ));
    let big_disk = spec(
        ResourceKind::NodePool,
        json!({"name": "p", "cluster": "c", "instance_type": "m6i.large", "min_size": 1, "max_size": 2,
               "desired_size": 1, "disk_gb": 300}),
    );
    assert_eq!(
        denied_by(&decide(&pol, Action::Apply, &big_disk)),
        "limits.node_pool.max_disk_gb"
    );
    let gpus = spec(
        ResourceKind::NodePool,
        json!({"name": "p", "cluster": "c", "instance_type": "m6i.large", "min_size": 1, "max_size": 2,
               "desired_size": 1, "gpu": {"type": "nvidia-l4", "count": 4}}),
    );
    assert_eq!(
        denied_by(&decide(&pol, Action::Apply, &gpus)),
        "limits.node_pool.max_gpu_count"
    );
    let sandbox = spec(
        ResourceKind::Sandbox,
        json!({"name": "s", "cluster": "prod", "isolation": "kata", "instance_type": "m6i.large",
               "min_size": 1, "max_size": 11, "desired_size": 1}),
    );
    assert_eq!(
        denied_by(&decide(&pol, Action::Apply, &sandbox)),
        "limits.sandbox.max_size"
    );
    assert_eq!(
        denied_by(&decide(
            &pol,
            Action::Apply,
            &database("db", json!({"storage_gb": 501}))
        )),
        "limits.database.max_storage_gb"
    );
    let d = decide(&pol, Action::Apply, &database("db", json!({"size": "xlarge"})));
    assert_eq!(denied_by(&d), "limits.database.max_size");
    let Decision::Deny { message, .. } = d else {
        unreachable!()
    };
    assert!(
        message.contains("xlarge is above the policy's limit of large"),
        "{message}"
    );
    assert!(matches!(
        decide(
            &pol,
            Action::Apply,
            &database("db", json!({"size": "large", "storage_gb": 500}))
        ),
        Decision::Allow { .. }
    ));
}

#[test]
fn protected_resources_are_never_deleted_by_name_tag_or_label() {
    let pol = p(r#"
[protected]
names = ["prod-db", "core-*"]
tags = { env = "prod" }
labels = { tier = "crit*" }
[kinds.database]
delete = "allow"
"#);
    assert_eq!(
        denied_by(&decide(&pol, Action::Delete, &database("prod-db", json!({})))),
        "protected.name:prod-db"
    );
    assert_eq!(
        denied_by(&decide(&pol, Action::Delete, &cluster("core-eu"))),
        "protected.name:core-*"
    );
    let d = decide(
        &pol,
        Action::Delete,
        &database("orders", json!({"tags": {"env": "prod"}})),
    );
    assert_eq!(denied_by(&d), "protected.tag:env=prod");
    let Decision::Deny { field, .. } = d else {
        unreachable!()
    };
    assert_eq!(field, "database.tags.env");
    let labelled = spec(
        ResourceKind::NodePool,
        json!({"name": "p", "cluster": "c", "instance_type": "m6i.large", "min_size": 1, "max_size": 2,
               "desired_size": 1, "labels": {"tier": "critical"}}),
    );
    assert_eq!(
        denied_by(&decide(&pol, Action::Delete, &labelled)),
        "protected.label:tier=crit*"
    );
    // Protection is about deletes: applying to a protected resource is fine.
    assert!(matches!(
        decide(&pol, Action::Apply, &database("prod-db", json!({}))),
        Decision::Allow { .. }
    ));
    assert!(matches!(
        decide(
            &pol,
            Action::Delete,
            &database("orders", json!({"tags": {"env": "dev"}}))
        ),
        Decision::Allow { .. }
    ));
}

#[test]
fn protection_is_also_checked_on_the_observed_resource() {
    let pol = p("[protected]\ntags = { env = \"prod\" }\nlabels = { tier = \"critical\" }\n");
    let observed = json!({"name": "orders", "tags": {"env": "prod", "team": "a"}});
    let d = pol
        .protection_observed(ResourceKind::Database, "orders", &observed)
        .expect("protected");
    assert_eq!(denied_by(&d), "protected.tag:env=prod");
    let pool = json!({"name": "p", "labels": {"tier": "critical"}});
    assert_eq!(
        denied_by(
            &pol.protection_observed(ResourceKind::NodePool, "p", &pool)
                .expect("protected")
        ),
        "protected.label:tier=critical"
    );
    assert!(
        pol.protection_observed(ResourceKind::Database, "orders", &json!({"tags": {"env": "dev"}}))
            .is_none()
    );
    assert!(
        pol.protection_observed(ResourceKind::Database, "orders", &json!({}))
            .is_none()
    );
}

#[test]
fn an_apply_may_not_take_a_protection_away() {
    use byoc_provider::Plan;
    let pol = p("[protected]\ntags = { env = \"prod*\" }\nlabels = { tier = \"critical\" }\n");
    let with = |tags: serde_json::Value| {
        spec(
            ResourceKind::Cluster,
            json!({"name": "c", "kubernetes_version": "1.31", "tags": tags}),
        )
    };
    let observed = with(json!({"env": "prod", "team": "a"}));
    let removed = |desired: &ResourceSpec, observed: &ResourceSpec| {
        pol.protection_removed(
            desired.kind(),
            desired.name(),
            &Plan::for_apply(desired, Some(observed)),
        )
    };
    // Removing every tag, or only the protecting one, or changing it: refused.
    for desired in [with(json!({})), with(json!({"team": "a"})), with(json!({"env": "dev"}))] {
        let d = removed(&desired, &observed).expect("protection taken away");
        assert_eq!(denied_by(&d), "protected.tag:env=prod*", "{desired:?}");
        let Decision::Deny { field, message, .. } = &d else {
            unreachable!()
        };
        assert_eq!(field, "cluster.tags.env");
        assert!(
            message.contains("has tag env=prod, which the policy protects"),
            "{message}"
        );
    }
    // Still protected (another value the pattern matches), other tags
    // changed, or an unprotected resource gaining or losing tags: allowed.
    for desired in [
        with(json!({"env": "prod-eu", "team": "a"})),
        with(json!({"env": "prod", "team": "b"})),
        with(json!({"env": "prod"})),
    ] {
        assert!(removed(&desired, &observed).is_none(), "{desired:?}");
    }
    let unprotected = with(json!({"env": "dev"}));
    assert!(removed(&with(json!({})), &unprotected).is_none());
    assert!(removed(&with(json!({"env": "prod"})), &unprotected).is_none());
    // A new resource has nothing to lose.
    assert!(
        pol.protection_removed(ResourceKind::Cluster, "c", &Plan::for_apply(&with(json!({})), None))
            .is_none()
    );
    // Labels on node pools, the same.
    let labelled = |labels: serde_json::Value| {
        spec(
            ResourceKind::NodePool,
            json!({"name": "p", "cluster": "c", "instance_type": "m6i.large", "min_size": 1, "max_size": 2,
                   "desired_size": 1, "labels": labels}),
        )
    };
    let d = removed(&labelled(json!({})), &labelled(json!({"tier": "critical"}))).expect("label taken away");
    assert_eq!(denied_by(&d), "protected.label:tier=critical");
}

#[test]
fn the_first_denial_in_the_documented_order_decides() {
    let pol = p(r#"
read_only = true
regions = ["us-*"]
[kinds.cluster]
delete = "deny"
[protected]
names = ["a"]
"#);
    // read_only before kinds, kinds before regions, regions before protected.
    assert_eq!(denied_by(&decide(&pol, Action::Delete, &cluster("a"))), "read_only");
    let pol = p("regions = [\"us-*\"]\n[kinds.cluster]\ndelete = \"deny\"\n[protected]\nnames = [\"a\"]\n");
    assert_eq!(
        denied_by(&decide(&pol, Action::Delete, &cluster("a"))),
        "kinds.cluster.delete"
    );
    let pol = p("regions = [\"us-*\"]\n[protected]\nnames = [\"a\"]\n");
    assert_eq!(denied_by(&decide(&pol, Action::Delete, &cluster("a"))), "regions");
    // A denial wins over an approval.
    let pol = p("[protected]\nnames = [\"db\"]\n");
    assert_eq!(
        denied_by(&decide(&pol, Action::Delete, &database("db", json!({})))),
        "protected.name:db"
    );
}

#[test]
fn errors_name_the_line_column_and_key() {
    let e = parse("read_only = false\n\n[limits.node_pool]\nmax_sise = 3\n").expect_err("unknown key");
    assert_eq!((e.line, e.column), (4, 1), "{e}");
    assert!(e.key.starts_with("limits.node_pool"), "{e}");
    assert!(e.message.contains("max_sise"), "{e}");
    assert!(e.message.contains("max_size"), "says what is valid: {e}");

    let e = parse("[limits.node_pool]\nmax_size = \"fifty\"\n").expect_err("wrong type");
    assert_eq!(e.line, 2, "{e}");
    assert_eq!(e.key, "limits.node_pool.max_size", "{e}");

    let e = parse("colour = 1\n").expect_err("unknown top-level key");
    assert_eq!((e.line, e.column), (1, 1), "{e}");
    assert!(e.message.contains("colour"), "{e}");

    let e = parse("[kinds.database]\ndelete = \"maybe\"\n").expect_err("bad verdict");
    assert_eq!(e.line, 2, "{e}");
    assert_eq!(e.key, "kinds.database.delete", "{e}");
    assert!(e.message.contains("approve"), "says what is valid: {e}");

    let e = parse("[kinds.volcano]\ndelete = \"deny\"\n").expect_err("unknown kind");
    assert!(e.message.contains("volcano"), "{e}");
    assert_eq!(e.line, 1, "{e}");

    let e = parse("[kinds.cluster]\n  plan = \"approve\"\n").expect_err("plan cannot need approval");
    assert_eq!((e.line, e.column, e.key.as_str()), (2, 10, "kinds.cluster.plan"), "{e}");

    let e = parse("[approvals]\nwindow = \"soon\"\n").expect_err("bad duration");
    assert_eq!((e.line, e.key.as_str()), (2, "approvals.window"), "{e}");
    let e = parse("[approvals]\nwindow = \"30d\"\n").expect_err("too long");
    assert!(e.message.contains("7 days"), "{e}");

    let e = parse("regions = [\"eu west\"]\n").expect_err("bad pattern");
    assert_eq!((e.line, e.key.as_str()), (1, "regions"), "{e}");

    let e = parse("[limits.sandbox]\nmax_size = 0\n").expect_err("zero limit");
    assert_eq!(e.key, "limits.sandbox.max_size", "{e}");

    let e = parse("read_only = tru\n").expect_err("not TOML");
    assert_eq!(e.line, 1, "{e}");

    let e = parse("[protected]\ntags = { env = 3 }\n").expect_err("tag value must be a string");
    assert_eq!(e.line, 2, "{e}");
    assert!(e.to_string().starts_with("line 2, column "), "{e}");
}

#[test]
fn patterns_match_literally_except_for_stars() {
    let m = |p: &str, s: &str| Pattern(p.into()).matches(s);
    assert!(m("m6i.large", "m6i.large"));
    assert!(!m("m6i.large", "m6i.largex"));
    assert!(!m("m6i.large", "xm6i.large"));
    assert!(m("m6i.*", "m6i.large"));
    assert!(m("m6i.*", "m6i."));
    assert!(!m("m6i.*", "m6ixlarge"), "the dot is literal");
    assert!(m("*", ""));
    assert!(m("*.large", "c7g.large"));
    assert!(m("m*.*large", "m6i.2xlarge"));
    assert!(!m("m*.*large", "m6i.large2"));
    assert!(m("a*a", "aa"));
    assert!(!m("a*a", "a"));
}

#[test]
fn describe_shows_every_rule_with_its_origin() {
    let text = p("[limits.node_pool]\nmax_size = 50\n").describe();
    assert!(text.contains("limits.node_pool.max_size"), "{text}");
    assert!(text.contains("50") && text.contains("(line 2)"), "{text}");
    let db_delete = text
        .lines()
        .find(|l| l.starts_with("kinds.database.delete"))
        .expect("row");
    assert!(db_delete.contains("approve") && db_delete.contains("default.database_delete_needs_approval"));
    assert!(text.contains("approvals.window") && text.contains("1h"), "{text}");
}

#[test]
fn loading_names_the_file_and_hashes_its_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, "read_only = true\n").expect("write");
    let l = Loaded::load(Some(&path)).expect("load");
    assert_eq!(l.sha256.len(), 64);
    assert_ne!(l.sha256, Loaded::default_policy().sha256);
    assert_eq!(l.policy.origin, "policy.toml");
    std::fs::write(&path, "read_only = 1\n").expect("write");
    let e = byoc_errors::chain(&Loaded::load(Some(&path)).expect_err("invalid"));
    assert!(e.contains("policy.toml") && e.contains("line 1"), "{e}");
    let e = Loaded::load(Some(&dir.path().join("missing.toml")))
        .expect_err("missing")
        .to_string();
    assert!(e.contains("missing.toml"), "{e}");
}

#[test]
fn the_examples_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/policy") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            Loaded::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2, "examples found: {n}");
}
