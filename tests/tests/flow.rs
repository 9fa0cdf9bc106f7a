//! The whole flow through the real binaries: enroll, connect, apply every
//! resource kind, results at the control plane, audit log verifies.

use byoc_tests::{SimDelays, World, cluster, op};
use serde_json::json;
use std::time::Duration;

#[test]
fn enroll_connect_apply_all_kinds_and_verify_the_audit_log() {
    let w = World::new();
    let cp = w.control_plane();
    let mut agent = w.agent(&cp, SimDelays::all(Duration::from_millis(300)));

    let specs = [
        ("cluster", cluster("prod")),
        (
            "node_pool",
            json!({"name": "general", "cluster": "prod", "instance_type": "m6i.large", "min_size": 1, "max_size": 5,
                   "desired_size": 2, "capacity": "spot", "labels": {"team": "a"},
                   "taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]}),
        ),
        (
            "sandbox",
            json!({"name": "untrusted", "cluster": "prod", "isolation": "gvisor", "instance_type": "m6i.xlarge",
                   "min_size": 1, "max_size": 4, "desired_size": 1}),
        ),
        (
            "database",
            json!({"name": "orders", "engine": "postgres", "version": "16", "size": "small", "storage_gb": 50}),
        ),
    ];
    let mut ids = Vec::new();
    for (kind, spec) in &specs {
        let id = cp.submit_json(&op("apply", kind, spec.clone()));
        let watched = cp.watch(&id);
        assert!(watched.success, "{kind}: {watched:?}");
        assert!(watched.stdout.contains("succeeded"), "{}", watched.stdout);
        ids.push(id);
    }

    // Results as the control plane recorded them: exactly one each, with outputs.
    for (id, (kind, _)) in ids.iter().zip(&specs) {
        let got = cp.get(id);
        assert_eq!(got["state"], "finished");
        let results = got["results"].as_array().expect("results");
        assert_eq!(results.len(), 1, "{got}");
        assert_eq!(results[0]["outcome"], "OUTCOME_SUCCEEDED");
        assert_eq!(results[0]["outputs"]["status"], "active");
        let rid = results[0]["outputs"]["resource_id"].as_str().expect("id");
        assert!(rid.starts_with(&format!("sim-{}", kind.replace('_', "-"))), "{rid}");
    }
    let db = &cp.get(&ids[3])["results"][0]["outputs"];
    let secret_ref = db["secret_refs"]["master_password"].as_str().expect("secret ref");
    assert!(secret_ref.starts_with("sim://secrets/"), "{secret_ref}");

    // The simulated cloud has each resource once, active.
    let resources = byoc_provider_sim::list_resources(&agent.sim_dir()).expect("list");
    assert_eq!(resources.len(), 4, "{resources:?}");

    // The database password never left the account: not in the control plane's
    // state, not in the agent's audit log, not in its logs.
    let secret_file = agent
        .sim_dir()
        .join("secrets")
        .join(secret_ref.split('/').nth(3).expect("id"));
    let password = std::fs::read_to_string(&secret_file).expect("secret file");
    assert!(password.len() >= 16);
    for (what, text) in [
        ("control plane state", byoc_tests::read(&cp.dir.join("state.log"))),
        (
            "audit log",
            byoc_tests::read(&agent.data_dir().join("audit").join("log.jsonl")),
        ),
        ("agent log", agent.log()),
        ("journal", byoc_tests::read(&agent.data_dir().join("journal.log"))),
    ] {
        assert!(!text.contains(password.trim()), "the password leaked into the {what}");
    }

    // The audit log recorded each step, in order, and verifies.
    let audit = agent.audit();
    let kinds_for = |op: &str| -> Vec<String> {
        audit
            .iter()
            .filter(|e| e["op"] == op)
            .map(|e| e["kind"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let k = kinds_for(&ids[0]);
    // The policy decided first, then the operation was recorded and started.
    assert_eq!(k.first().map(String::as_str), Some("policy.decision"), "{k:?}");
    assert_eq!(k.get(1).map(String::as_str), Some("operation.received"), "{k:?}");
    assert_eq!(k.get(2).map(String::as_str), Some("operation.started"), "{k:?}");
    assert!(k.iter().any(|x| x == "provider.call"), "{k:?}");
    assert_eq!(k.last().map(String::as_str), Some("operation.finished"), "{k:?}");
    assert!(audit.iter().any(|e| e["kind"] == "agent.enrolled"));
    assert!(audit.iter().any(|e| e["kind"] == "session.connected"));
    let create = audit
        .iter()
        .find(|e| e["op"] == ids[0].as_str() && e["detail"]["action"] == "sim:CreateCluster")
        .expect("the create call is audited");
    assert_eq!(create["detail"]["mutating"], true);
    // Who asked: the control plane, by the CA and operation key pinned at enrollment.
    let received = audit
        .iter()
        .find(|e| e["op"] == ids[0].as_str() && e["kind"] == "operation.received")
        .expect("received");
    assert_eq!(received["actor"]["control_plane"], cp.url.as_str());
    assert_eq!(
        received["actor"]["operation_key_sha256"].as_str().map(str::len),
        Some(64)
    );
    // The outcome lists the cloud calls with the cloud's request ids, to match
    // against the cloud's own audit trail.
    let finished = audit
        .iter()
        .find(|e| e["op"] == ids[0].as_str() && e["kind"] == "operation.finished")
        .expect("finished");
    let made = finished["detail"]["calls"]["made"].as_array().expect("calls");
    let create_call = made
        .iter()
        .find(|c| c["action"] == "sim:CreateCluster")
        .expect("the create call with its request id");
    assert!(
        create_call["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("sim-")),
        "{create_call}"
    );

    // Status shows a connected agent and a certificate expiry.
    let st = agent.status();
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(st.contains("connection:     connected"), "{st}");
    assert!(st.contains("certificate:    expires"), "{st}");

    // Stopped, the agent signs a last checkpoint: the log verifies whole,
    // every outcome has a receipt, against the key printed at enrollment.
    assert_eq!(agent.stop(), Some(0), "clean stop");
    let v = agent.audit_verify();
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(v.status.success(), "{out}");
    assert!(out.contains("verifies"), "{out}");
    assert!(out.contains(&format!("{} receipts", ids.len())), "{out}");
    assert!(!out.contains("not signed yet"), "{out}");
    let show = agent
        .cli()
        .args(["audit", "show", "--op", &ids[0], "--config"])
        .arg(&agent.config)
        .output()
        .expect("show");
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("c2sp.org/tlog-proof@v1"), "{show}");
}

#[test]
fn plan_shows_the_diff_and_reapply_makes_no_mutating_call() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = w.agent(&cp, SimDelays::default());
    let pool = |desired: u32| json!({"name": "p", "cluster": "c", "instance_type": "m6i.large", "min_size": 1, "max_size": 5, "desired_size": desired});
    assert!(cp.watch(&cp.submit_json(&op("apply", "cluster", cluster("c")))).success);
    assert!(cp.watch(&cp.submit_json(&op("apply", "node_pool", pool(2)))).success);

    let plan = cp.submit_json(&op("plan", "node_pool", pool(4)));
    assert!(cp.watch(&plan).success);
    let r = &cp.get(&plan)["results"][0];
    assert_eq!(r["plan"][0]["path"], "desired_size");
    assert_eq!(r["plan"][0]["from"], "2");
    assert_eq!(r["plan"][0]["to"], "4");
    assert_eq!(r["plan"][0]["kind"], "update");

    let before = byoc_provider_sim::call_counts(&agent.sim_dir()).expect("counts");
    let again = cp.submit_json(&op("apply", "node_pool", pool(2)));
    assert!(cp.watch(&again).success);
    assert_eq!(
        byoc_provider_sim::call_counts(&agent.sim_dir()).expect("counts"),
        before,
        "no mutating call"
    );
    assert_eq!(cp.get(&again)["results"][0]["plan"].as_array().map(Vec::len), Some(0));
}
