//! The customer's policy through the real binaries: denials reach the control
//! plane with their rule and are audited with the policy's hash, allowed
//! operations run, read-only and protected resources hold, SIGHUP reloads
//! (keeping the old policy when the new file is invalid), and `policy check`
//! answers offline with documented exit codes.

// Helpers fail the test by panicking with a message.
#![allow(clippy::expect_used)]

use std::time::Duration;

use byoc_tests::{Agent, SimDelays, World, cluster, op, wait_for};
use serde_json::{Value, json};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

/// The `policy.decision` audit record of `op`.
fn decision(agent: &Agent, op: &str) -> Value {
    agent
        .audit()
        .into_iter()
        .find(|e| e["op"] == op && e["kind"] == "policy.decision")
        .unwrap_or_else(|| panic!("no policy.decision for {op}"))["detail"]
        .clone()
}

/// Waits for `op`'s result and returns its problem (Null when none).
fn problem(cp: &byoc_tests::ControlPlane, op: &str) -> Value {
    let _ = cp.watch(op);
    cp.get(op)["results"][0]["problem"].clone()
}

fn pool(name: &str, max_size: u32) -> Value {
    json!({"name": name, "cluster": "prod", "instance_type": "m6i.large", "min_size": 1, "max_size": max_size,
           "desired_size": 1})
}

fn sim_names(agent: &Agent) -> Vec<String> {
    let mut n: Vec<String> = byoc_provider_sim::list_resources(&agent.sim_dir())
        .expect("sim resources")
        .into_iter()
        .map(|r| r.name)
        .collect();
    n.sort();
    n
}

/// An agent started with `policy` as its policy file.
fn agent_with_policy(w: &World, cp: &byoc_tests::ControlPlane, policy: &str) -> Agent {
    let a = w.agent_config("agent", SimDelays::default());
    a.use_policy(policy);
    w.start_agent(a, cp)
}

const LIMITS: &str = r#"# the vendor's pools stay small
instance_types = ["m6i.*"]

[limits.node_pool]
max_size = 5
"#;

#[test]
fn a_denial_reaches_the_control_plane_with_its_rule_and_is_audited_with_the_policy_hash() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = agent_with_policy(&w, &cp, LIMITS);
    let hash = sha256_hex(LIMITS.as_bytes());

    let ok = cp.submit_json(&op("apply", "cluster", cluster("prod")));
    assert!(cp.watch(&ok).success, "{}", agent.log());
    let ok_pool = cp.submit_json(&op("apply", "node_pool", pool("small", 5)));
    assert!(cp.watch(&ok_pool).success, "{}", agent.log());

    let big = cp.submit_json(&op("apply", "node_pool", pool("big", 50)));
    let watched = cp.watch(&big);
    assert_eq!(watched.code, Some(1), "{watched:?}");
    assert!(
        watched.stdout.contains("REFUSED") && watched.stdout.contains("(rule limits.node_pool.max_size)"),
        "{}",
        watched.stdout
    );
    let r = &cp.get(&big)["results"][0];
    assert_eq!(r["outcome"], "OUTCOME_REFUSED");
    assert_eq!(r["problem"]["code"], "policy_denied");
    assert_eq!(r["problem"]["rule"], "limits.node_pool.max_size");
    assert_eq!(r["problem"]["field"], "node_pool.max_size");
    assert_eq!(
        r["problem"]["message"],
        "node_pool.max_size 50 is above the policy's limit of 5 (policy.toml line 5)"
    );
    let other = cp.submit_json(&op(
        "apply",
        "node_pool",
        json!({"name": "arm", "cluster": "prod", "instance_type": "c7g.large", "min_size": 1, "max_size": 2,
               "desired_size": 1}),
    ));
    assert_eq!(problem(&cp, &other)["rule"], "instance_types");

    // Nothing of the refused operations reached the cloud.
    assert_eq!(sim_names(&agent), ["prod", "small"]);

    // Every decision is audited with the rule and the hash of the policy file.
    assert_eq!(
        decision(&agent, &ok),
        json!({"decision": "allow", "rule": "default.allow", "policy_sha256": hash})
    );
    assert_eq!(
        decision(&agent, &big),
        json!({"decision": "deny", "rule": "limits.node_pool.max_size", "policy_sha256": hash})
    );
    let refused = agent
        .audit()
        .into_iter()
        .find(|e| e["op"] == big.as_str() && e["kind"] == "operation.refused")
        .expect("refusal audited");
    assert_eq!(refused["detail"]["code"], "policy_denied");
    assert_eq!(refused["detail"]["rule"], "limits.node_pool.max_size");
    let loaded = agent
        .audit()
        .into_iter()
        .find(|e| e["kind"] == "policy.loaded")
        .expect("policy.loaded");
    assert_eq!(loaded["detail"]["policy_sha256"], hash.as_str());
    assert!(agent.audit_verify().status.success());
}

#[test]
fn read_only_refuses_apply_and_delete_but_plans_run() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = agent_with_policy(&w, &cp, "read_only = true\n");

    let plan = cp.submit_json(&op("plan", "cluster", cluster("prod")));
    assert!(cp.watch(&plan).success, "{}", agent.log());
    assert_eq!(cp.get(&plan)["results"][0]["plan"][0]["kind"], "create");
    for action in ["apply", "delete"] {
        let id = cp.submit_json(&op(action, "cluster", cluster("prod")));
        let p = problem(&cp, &id);
        assert_eq!(
            (p["code"].as_str(), p["rule"].as_str()),
            (Some("policy_denied"), Some("read_only"))
        );
        assert!(p["message"].as_str().unwrap_or("").contains("read-only"), "{p}");
    }
    assert!(sim_names(&agent).is_empty());
    assert_eq!(decision(&agent, &plan)["decision"], "allow");
}

#[test]
fn a_protected_resource_is_never_deleted() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = agent_with_policy(&w, &cp, "[protected]\nnames = [\"prod\"]\ntags = { env = \"prod\" }\n");
    for name in ["prod", "scratch"] {
        assert!(
            cp.watch(&cp.submit_json(&op("apply", "cluster", cluster(name))))
                .success
        );
    }
    let tagged = json!({"name": "tagged", "kubernetes_version": "1.31", "tags": {"env": "prod"}});
    assert!(
        cp.watch(&cp.submit_json(&op("apply", "cluster", tagged.clone())))
            .success
    );

    let del = cp.submit_json(&op("delete", "cluster", cluster("prod")));
    let p = problem(&cp, &del);
    assert_eq!(
        (p["code"].as_str(), p["rule"].as_str()),
        (Some("policy_denied"), Some("protected.name:prod"))
    );
    let del = cp.submit_json(&op("delete", "cluster", tagged));
    assert_eq!(problem(&cp, &del)["rule"], "protected.tag:env=prod");
    // A delete whose spec leaves the tag out: the resource in the cloud has it.
    let sneaky = cp.submit_json(&op("delete", "cluster", cluster("tagged")));
    let p = problem(&cp, &sneaky);
    assert_eq!(
        (p["code"].as_str(), p["rule"].as_str()),
        (Some("policy_denied"), Some("protected.tag:env=prod"))
    );
    assert!(
        p["message"].as_str().unwrap_or("").contains("as it is in the cloud"),
        "{p}"
    );
    assert_eq!(cp.get(&sneaky)["results"][0]["outcome"], "OUTCOME_REFUSED");
    let observed: Vec<Value> = agent
        .audit()
        .into_iter()
        .filter(|e| e["op"] == sneaky.as_str() && e["kind"] == "policy.decision")
        .map(|e| e["detail"].clone())
        .collect();
    assert_eq!(
        observed.len(),
        2,
        "on receipt, then on the observed resource: {observed:?}"
    );
    assert_eq!(observed[0]["decision"], "allow");
    assert_eq!(
        (observed[1]["decision"].as_str(), observed[1]["observed"].as_bool()),
        (Some("deny"), Some(true))
    );
    assert!(
        !agent
            .audit()
            .iter()
            .any(|e| e["op"] == sneaky.as_str() && e["detail"]["action"] == "sim:DeleteCluster"),
        "no delete call was made"
    );
    // Unprotected resources are deleted as usual.
    assert!(
        cp.watch(&cp.submit_json(&op("delete", "cluster", cluster("scratch"))))
            .success
    );
    assert_eq!(sim_names(&agent), ["prod", "tagged"]);
}

/// The two-step attack: strip the protecting tag with an apply (allowed by
/// default), then delete. The apply is refused with the rule named, the tag
/// stays in the cloud, and so the delete is refused too.
#[test]
fn a_protecting_tag_cannot_be_stripped_to_delete_the_resource() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = agent_with_policy(&w, &cp, "[protected]\ntags = { env = \"prod\" }\n");
    let spec = |tags: Value| json!({"name": "orders", "kubernetes_version": "1.31", "tags": tags});
    assert!(
        cp.watch(&cp.submit_json(&op("apply", "cluster", spec(json!({"env": "prod", "team": "a"})))))
            .success,
        "{}",
        agent.log()
    );

    let strip = cp.submit_json(&op("apply", "cluster", spec(json!({"team": "a"}))));
    let p = problem(&cp, &strip);
    assert_eq!(
        (p["code"].as_str(), p["rule"].as_str(), p["field"].as_str()),
        (
            Some("policy_denied"),
            Some("protected.tag:env=prod"),
            Some("cluster.tags.env")
        )
    );
    assert!(
        p["message"]
            .as_str()
            .unwrap_or("")
            .contains("this apply would remove it"),
        "{p}"
    );
    assert_eq!(cp.get(&strip)["results"][0]["outcome"], "OUTCOME_REFUSED");
    assert!(
        !agent
            .audit()
            .iter()
            .any(|e| e["op"] == strip.as_str() && e["kind"] == "provider.call" && e["detail"]["mutating"] == true),
        "no mutating call was made for the stripping apply"
    );
    let tags = byoc_provider_sim::list_resources(&agent.sim_dir())
        .expect("sim resources")
        .into_iter()
        .find(|r| r.name == "orders")
        .expect("orders is still there")
        .spec["tags"]
        .clone();
    assert_eq!(
        tags,
        json!({"env": "prod", "team": "a"}),
        "the tag is still on the resource"
    );

    let del = cp.submit_json(&op("delete", "cluster", spec(json!({}))));
    assert_eq!(problem(&cp, &del)["rule"], "protected.tag:env=prod");
    assert_eq!(sim_names(&agent), ["orders"]);

    // Changing other tags of a protected resource still works.
    assert!(
        cp.watch(&cp.submit_json(&op("apply", "cluster", spec(json!({"env": "prod", "team": "b"})))))
            .success,
        "{}",
        agent.log()
    );
    assert!(agent.audit_verify().status.success());
}

#[test]
fn sighup_reloads_the_policy_and_an_invalid_file_keeps_the_old_one() {
    let w = World::new();
    let cp = w.control_plane();
    let first = "[kinds.cluster]\ndelete = \"deny\"\n";
    let agent = agent_with_policy(&w, &cp, first);
    for name in ["a", "b"] {
        assert!(
            cp.watch(&cp.submit_json(&op("apply", "cluster", cluster(name))))
                .success
        );
    }
    let audit_count = |kind: &str| agent.audit().iter().filter(|e| e["kind"] == kind).count();

    // An invalid file: refused, logged with the file and line, audited; the
    // old policy still decides.
    std::fs::write(
        agent.policy_path(),
        "[kinds.cluster]\ndelete = \"deny\"\n\nread_only = yes\n",
    )
    .expect("write");
    agent.signal("HUP");
    wait_for("the refused reload to be audited", Duration::from_secs(10), || {
        (audit_count("policy.reload_refused") == 1).then_some(())
    });
    let refused = agent
        .audit()
        .into_iter()
        .find(|e| e["kind"] == "policy.reload_refused")
        .expect("reload_refused");
    assert_eq!(
        refused["detail"]["policy_sha256"],
        sha256_hex(first.as_bytes()).as_str()
    );
    let error = refused["detail"]["error"].as_str().unwrap_or("");
    assert!(error.contains("policy.toml") && error.contains("line 4"), "{error}");
    let log = agent.log();
    assert!(
        log.contains("policy reload refused") && log.contains("policy.toml") && log.contains("line 4"),
        "{log}"
    );
    let del = cp.submit_json(&op("delete", "cluster", cluster("a")));
    let p = problem(&cp, &del);
    assert_eq!(p["rule"], "kinds.cluster.delete", "the old policy still decides: {p}");
    assert_eq!(
        decision(&agent, &del)["policy_sha256"],
        sha256_hex(first.as_bytes()).as_str()
    );

    // A valid file takes effect once its reload is audited.
    let second = "# deletes allowed again\n";
    std::fs::write(agent.policy_path(), second).expect("write");
    agent.signal("HUP");
    wait_for("the reload to be audited", Duration::from_secs(10), || {
        (audit_count("policy.reloaded") == 1).then_some(())
    });
    let reloaded = agent
        .audit()
        .into_iter()
        .find(|e| e["kind"] == "policy.reloaded")
        .expect("reloaded");
    assert_eq!(
        reloaded["detail"]["policy_sha256"],
        sha256_hex(second.as_bytes()).as_str()
    );
    let del = cp.submit_json(&op("delete", "cluster", cluster("a")));
    assert!(cp.watch(&del).success, "{}", agent.log());
    assert_eq!(
        decision(&agent, &del),
        json!({"decision": "allow", "rule": "default.allow", "policy_sha256": sha256_hex(second.as_bytes())})
    );
    assert_eq!(sim_names(&agent), ["b"]);
}

#[test]
fn an_invalid_policy_stops_the_agent_at_start_naming_the_file_and_line() {
    let w = World::new();
    let a = w.agent_config("agent", SimDelays::default());
    a.use_policy("read_only = false\n[limits.node_pool]\nmax_nodes = 3\n");
    let out = a.cli().args(["run", "--config"]).arg(&a.config).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&a.policy_path().display().to_string()) && err.contains("line 3") && err.contains("max_nodes"),
        "{err}"
    );
}

#[test]
fn policy_check_decides_offline_with_documented_exit_codes() {
    let w = World::new();
    let a = w.agent_config("agent", SimDelays::default());
    let file = |name: &str, v: Value| {
        let p = w.path(name);
        std::fs::write(&p, serde_json::to_vec(&v).expect("json")).expect("write");
        p
    };
    let db = json!({"name": "orders", "engine": "postgres", "version": "16", "size": "small", "storage_gb": 50});
    let delete_db = file("delete-db.json", op("delete", "database", db.clone()));
    let apply_db = file("apply-db.json", op("apply", "database", db));
    let big_pool = file("big-pool.json", op("apply", "node_pool", pool("big", 50)));
    let policy = w.path("policy.toml");
    std::fs::write(&policy, LIMITS).expect("write");
    let check = |policy: Option<&std::path::Path>, operation: &std::path::Path| {
        let mut c = a.cli();
        c.args(["policy", "check", "--operation"]).arg(operation);
        if let Some(p) = policy {
            c.arg("--policy").arg(p);
        }
        let out = c.output().expect("policy check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
        )
    };

    let (code, out) = check(None, &apply_db);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ALLOW") && out.contains("rule:     default.allow"),
        "{out}"
    );

    let (code, out) = check(None, &delete_db);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("APPROVAL REQUIRED") && out.contains("default.database_delete_needs_approval"),
        "{out}"
    );

    let (code, out) = check(Some(&policy), &big_pool);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("DENY") && out.contains("limits.node_pool.max_size") && out.contains("policy.toml line 5"),
        "{out}"
    );

    // An invalid policy: exit 2, naming the file and line.
    std::fs::write(&policy, "[limits.node_pool]\nmax_size = -1\n").expect("write");
    let (code, out) = check(Some(&policy), &big_pool);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("policy.toml") && out.contains("line 2"), "{out}");

    let help = a.cli().args(["policy", "check", "--help"]).output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Exit codes") && help.contains("3 none is denied"),
        "{help}"
    );
}
