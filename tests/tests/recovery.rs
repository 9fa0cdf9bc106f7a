//! Crashes mid-operation: the control plane or the agent is killed and
//! restarted; every operation converges, once, and its result arrives once.

use std::time::Duration;

use byoc_tests::{SimDelays, World, cluster, op, wait_for};
use serde_json::json;

fn audit_has(agent: &byoc_tests::Agent, op_id: &str, kind: &str) -> bool {
    agent.audit().iter().any(|e| e["op"] == op_id && e["kind"] == kind)
}

/// Waits until the control plane has recorded every result the agent sent
/// on its current session so far, including the unacknowledged ones it
/// (re)sends as the session starts. It submits a probe the agent refuses at
/// once (an invalid spec: no cloud call, no resource) and waits for the
/// probe's result: the outbox sends results in order on the session's one
/// stream, after the resends of the session's start, and the control plane
/// records them in the order they arrive.
fn results_sent_so_far_recorded(cp: &byoc_tests::ControlPlane) {
    let probe = cp.submit_json(&op(
        "apply",
        "node_pool",
        json!({"name": "probe", "cluster": "c", "instance_type": "g5.xlarge", "min_size": 1, "max_size": 5000, "desired_size": 2}),
    ));
    let r = wait_for("the probe's result", Duration::from_secs(20), || {
        cp.get(&probe)["results"].as_array().and_then(|r| r.first()).cloned()
    });
    assert_eq!(r["problem"]["code"], "invalid_spec", "{r}");
}

#[test]
fn control_plane_killed_mid_operation_gets_the_result_exactly_once() {
    let w = World::new();
    let mut cp = w.control_plane();
    let agent = w.agent(&cp, SimDelays::all(Duration::from_secs(2)));

    let id = cp.submit_json(&op("apply", "cluster", cluster("survivor")));
    wait_for("the agent to start the operation", Duration::from_secs(20), || {
        audit_has(&agent, &id, "operation.started").then_some(())
    });
    cp.kill9();
    // The agent finishes while the control plane is down, keeps the result in
    // its outbox, and delivers it after the control plane comes back.
    wait_for("the agent to finish", Duration::from_secs(20), || {
        audit_has(&agent, &id, "operation.finished").then_some(())
    });
    // The result is in the outbox's journal, not acknowledged (nothing could be).
    agent.wait_unacknowledged_results(1, Duration::from_secs(20));
    cp.start();
    let watched = cp.watch(&id);
    assert!(watched.success, "{watched:?}");

    let got = cp.get(&id);
    assert_eq!(got["results"].as_array().map(Vec::len), Some(1), "{got}");
    // Restart it once more: still one result, and the agent does not send it again.
    cp.restart();
    agent.wait_connected(&cp);
    // The agent resends unacknowledged results when a session starts: wait
    // until the control plane has recorded everything the agent sent so far,
    // and only then look for a resend.
    results_sent_so_far_recorded(&cp);
    let got = cp.get(&id);
    assert_eq!(got["results"].as_array().map(Vec::len), Some(1), "{got}");
    assert_eq!(
        got["duplicate_results_ignored"], 0,
        "the acknowledged result was not resent: {got}"
    );
    // One cluster in the cloud.
    let n = byoc_provider_sim::list_resources(&agent.sim_dir()).expect("list").len();
    assert_eq!(n, 1);
}

#[test]
fn a_result_sent_but_not_acknowledged_is_resent_and_recorded_once() {
    let w = World::new();
    let mut cp = w.control_plane();
    let mut agent = w.agent(&cp, SimDelays::default());
    // Many quick operations; kill the control plane while results are flowing.
    let ids: Vec<String> = (0..20)
        .map(|i| cp.submit_json(&op("apply", "cluster", cluster(&format!("c{i}")))))
        .collect();
    cp.kill9();
    cp.start();
    for id in &ids {
        assert!(cp.watch(id).success, "{id}");
        let got = cp.get(id);
        assert_eq!(got["results"].as_array().map(Vec::len), Some(1), "{got}");
    }
    assert!(agent.is_running());
}

#[test]
fn agent_killed_mid_operation_converges_without_a_duplicate() {
    let w = World::new();
    let cp = w.control_plane();
    let mut agent = w.agent(&cp, SimDelays::all(Duration::from_secs(2)));

    let id = cp.submit_json(&op("apply", "cluster", cluster("phoenix")));
    wait_for("the create call", Duration::from_secs(20), || {
        agent
            .audit()
            .iter()
            .any(|e| e["op"] == id.as_str() && e["detail"]["action"] == "sim:CreateCluster")
            .then_some(())
    });
    // The call is audited before it is made; wait until the cloud has it.
    wait_for("the cluster to exist in the cloud", Duration::from_secs(20), || {
        (byoc_provider_sim::list_resources(&agent.sim_dir()).expect("list").len() == 1).then_some(())
    });
    agent.kill9();
    // The cluster is creating in the cloud; nothing has reported it yet.
    assert_eq!(cp.get(&id)["state"], "pending");

    agent.start();
    let watched = cp.watch(&id);
    assert!(watched.success, "{watched:?}\n{}", agent.log());
    assert!(
        audit_has(&agent, &id, "operation.resumed"),
        "the restarted agent resumed from its journal"
    );

    // Exactly one cluster named phoenix, created once.
    let resources = byoc_provider_sim::list_resources(&agent.sim_dir()).expect("list");
    assert_eq!(
        resources.iter().filter(|r| r.name == "phoenix").count(),
        1,
        "{resources:?}"
    );
    let calls = byoc_provider_sim::call_counts(&agent.sim_dir()).expect("calls");
    assert_eq!(calls.get("sim:CreateCluster"), Some(&1), "{calls:?}");
    let got = cp.get(&id);
    assert_eq!(got["results"].as_array().map(Vec::len), Some(1), "{got}");
    assert_eq!(got["results"][0]["outputs"]["resource_id"], resources[0].id.as_str());
    assert!(agent.audit_verify().status.success());
}

#[test]
fn agent_killed_before_delivering_a_result_delivers_it_after_restart() {
    let w = World::new();
    let mut cp = w.control_plane();
    let mut agent = w.agent(&cp, SimDelays::all(Duration::from_millis(800)));
    let id = cp.submit_json(&op("apply", "cluster", cluster("late")));
    wait_for("the operation to start", Duration::from_secs(20), || {
        audit_has(&agent, &id, "operation.started").then_some(())
    });
    // Control plane away: the result can only wait in the outbox.
    cp.kill9();
    wait_for("the operation to finish", Duration::from_secs(20), || {
        audit_has(&agent, &id, "operation.finished").then_some(())
    });
    // Killed once the result is durable in the outbox, before it can be sent.
    agent.wait_unacknowledged_results(1, Duration::from_secs(20));
    agent.kill9();
    agent.start();
    cp.start();
    assert!(cp.watch(&id).success);
    assert_eq!(cp.get(&id)["results"].as_array().map(Vec::len), Some(1));
    let calls = byoc_provider_sim::call_counts(&agent.sim_dir()).expect("calls");
    assert_eq!(calls.get("sim:CreateCluster"), Some(&1), "{calls:?}");
}

#[test]
fn an_invalid_spec_is_refused_before_any_provider_call_naming_the_field() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = w.agent(&cp, SimDelays::default());
    let id = cp.submit_json(&op(
        "apply",
        "node_pool",
        json!({"name": "gpu", "cluster": "c", "instance_type": "g5.xlarge", "min_size": 1, "max_size": 5000, "desired_size": 2}),
    ));
    let watched = cp.watch(&id);
    assert!(!watched.success);
    assert_eq!(watched.code, Some(1));
    assert!(watched.stdout.contains("REFUSED"), "{}", watched.stdout);
    assert!(watched.stdout.contains("node_pool.max_size"), "{}", watched.stdout);
    assert!(watched.stdout.contains("between 1 and 1000"), "{}", watched.stdout);
    let r = &cp.get(&id)["results"][0];
    assert_eq!(r["outcome"], "OUTCOME_REFUSED");
    assert_eq!(r["problem"]["code"], "invalid_spec");
    assert_eq!(r["problem"]["field"], "node_pool.max_size");

    let entries: Vec<_> = agent.audit().into_iter().filter(|e| e["op"] == id.as_str()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["kind"], "operation.refused");
    assert_eq!(entries[0]["detail"]["field"], "node_pool.max_size");
    assert!(
        byoc_provider_sim::call_counts(&agent.sim_dir())
            .expect("calls")
            .is_empty()
    );
    // The agent keeps serving.
    assert!(
        cp.watch(&cp.submit_json(&op("apply", "cluster", cluster("ok"))))
            .success
    );
}
