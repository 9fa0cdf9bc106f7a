//! Operation handling through the real binaries: cancellation, retries of
//! cloud throttling and transient errors, a queue that survives restarts,
//! certificate renewal, clean shutdown.

use std::time::Duration;

use byoc_tests::{SimDelays, World, cluster, op, wait_for};

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

fn audit_has(agent: &byoc_tests::Agent, op_id: &str, kind: &str) -> bool {
    agent.audit().iter().any(|e| e["op"] == op_id && e["kind"] == kind)
}

#[test]
fn a_running_operation_can_be_cancelled() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = w.agent(&cp, SimDelays::all(Duration::from_secs(30)));
    let id = cp.submit_json(&op("apply", "cluster", cluster("slow")));
    wait_for("the operation to start", Duration::from_secs(20), || {
        audit_has(&agent, &id, "operation.started").then_some(())
    });
    let out = cp.cli().args(["cancel", &id]).output().expect("cancel");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let watched = cp.watch(&id);
    assert_eq!(watched.code, Some(1), "{watched:?}");
    assert!(watched.stdout.contains("CANCELLED"), "{}", watched.stdout);
    assert_eq!(cp.get(&id)["results"][0]["problem"]["code"], "cancelled");
    assert!(audit_has(&agent, &id, "operation.cancel_requested"));
    // A finished operation cannot be cancelled, and says so.
    let out = cp.cli().args(["cancel", &id]).output().expect("cancel");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already finished"));
}

#[test]
fn throttling_and_transient_cloud_errors_are_retried_to_success() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = w.agent(&cp, SimDelays::default());
    byoc_provider_sim::write_faults(
        &agent.sim_dir(),
        &serde_json::from_value(serde_json::json!({"throttle_next": 2, "fail_next": 2})).expect("faults"),
    )
    .expect("write faults");
    let id = cp.submit_json(&op("apply", "cluster", cluster("bumpy")));
    let watched = cp.watch(&id);
    assert!(watched.success, "{watched:?}\n{}", agent.log());
    assert!(
        agent.log().matches("retrying provider call").count() >= 4,
        "{}",
        agent.log()
    );
    let faults = byoc_provider_sim::read_faults(&agent.sim_dir()).expect("faults");
    assert_eq!(
        (faults.throttle_next, faults.fail_next),
        (0, 0),
        "every injected fault was hit"
    );
    assert_eq!(
        byoc_provider_sim::list_resources(&agent.sim_dir()).expect("list").len(),
        1
    );
}

#[test]
fn a_permission_error_fails_the_operation_naming_the_permission() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = w.agent(&cp, SimDelays::default());
    byoc_provider_sim::write_faults(
        &agent.sim_dir(),
        &serde_json::from_value(serde_json::json!({"deny": ["sim:CreateCluster"]})).expect("faults"),
    )
    .expect("write faults");
    let id = cp.submit_json(&op("apply", "cluster", cluster("denied")));
    let watched = cp.watch(&id);
    assert_eq!(watched.code, Some(1));
    let r = &cp.get(&id)["results"][0];
    assert_eq!(r["outcome"], "OUTCOME_FAILED");
    assert_eq!(r["problem"]["code"], "permission_denied");
    assert!(
        r["problem"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("sim:CreateCluster"),
        "{r}"
    );
}

#[test]
fn operations_queued_while_the_agent_is_away_survive_a_control_plane_restart() {
    let w = World::new();
    let mut cp = w.control_plane();
    let mut agent = w.agent(&cp, SimDelays::default());
    assert_eq!(
        agent.stop(),
        Some(0),
        "SIGTERM stops the agent cleanly\n{}",
        agent.log()
    );
    let st = String::from_utf8_lossy(&agent.status().stdout).to_string();
    assert!(st.contains("not running"), "{st}");
    let a = cp.submit_json(&op("apply", "cluster", cluster("queued-a")));
    let b = cp.submit_json(&op("apply", "cluster", cluster("queued-b")));
    cp.restart();
    agent.start();
    assert!(cp.watch(&a).success);
    assert!(cp.watch(&b).success);
    let names: Vec<_> = byoc_provider_sim::list_resources(&agent.sim_dir())
        .expect("list")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn the_client_certificate_is_renewed_in_band_before_it_expires() {
    let w = World::new();
    let mut cp = w.control_plane_with("cp", &["--cert-lifetime", "6s"]);
    let agent = w.agent(&cp, SimDelays::default());
    let before = std::fs::read(agent.data_dir().join("identity/agent.der")).expect("cert");
    let renewed_not_after = wait_for("a renewal", Duration::from_secs(30), || {
        agent
            .audit()
            .iter()
            .find(|e| e["kind"] == "certificate.renewed")
            .map(|e| e["detail"]["not_after_unix_ms"].as_i64())
    });
    // The renewal is audited before the certificate is stored: wait for the
    // agent's word that it stored it.
    wait_for("the renewed certificate to be stored", Duration::from_secs(20), || {
        agent.log().contains("client certificate renewed").then_some(())
    });
    let after = std::fs::read(agent.data_dir().join("identity/agent.der")).expect("cert");
    assert_ne!(before, after, "a new certificate was stored");
    // Past the first certificate's expiry, a new connection must use the
    // renewed one: restart the control plane to force a reconnect. The wait
    // is the expiry itself, as enrollment audited it.
    let first_not_after = agent
        .audit()
        .iter()
        .find(|e| e["kind"] == "agent.enrolled")
        .and_then(|e| e["detail"]["certificate_not_after_unix_ms"].as_i64())
        .expect("the first certificate's expiry, audited at enrollment");
    assert!(
        renewed_not_after.is_some_and(|t| t > first_not_after),
        "the renewed certificate outlives the first: {renewed_not_after:?} vs {first_not_after}"
    );
    wait_for("the first certificate to expire", Duration::from_secs(20), || {
        // X.509 validity has whole seconds: one more for the rounding.
        (now_ms() > first_not_after + 1000).then_some(())
    });
    cp.restart();
    agent.wait_connected(&cp);
    assert!(
        cp.watch(&cp.submit_json(&op("apply", "cluster", cluster("renewed"))))
            .success,
        "{}",
        agent.log()
    );
}

#[test]
fn a_paused_agent_refuses_every_operation_until_resumed_and_audits_the_switch() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = w.agent(&cp, SimDelays::default());
    let switch = |args: &[&str]| {
        let out = agent
            .cli()
            .args(args)
            .arg("--config")
            .arg(&agent.config)
            .output()
            .expect("switch");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    switch(&["pause", "--reason", "incident 42"]);
    let st = String::from_utf8_lossy(&agent.status().stdout).to_string();
    assert!(st.contains("PAUSED") && st.contains("incident 42"), "{st}");

    let id = cp.submit_json(&op("apply", "cluster", cluster("held")));
    let watched = cp.watch(&id);
    assert_eq!(watched.code, Some(1));
    let problem = &cp.get(&id)["results"][0]["problem"];
    assert_eq!(problem["code"], "paused");
    assert_eq!(problem["rule"], "local_kill_switch");
    assert!(
        problem["message"].as_str().unwrap_or("").contains("incident 42"),
        "{problem}"
    );
    assert!(
        byoc_provider_sim::call_counts(&agent.sim_dir())
            .expect("calls")
            .is_empty()
    );

    switch(&["resume"]);
    assert!(
        cp.watch(&cp.submit_json(&op("apply", "cluster", cluster("free"))))
            .success
    );
    wait_for("the resume to be audited", Duration::from_secs(10), || {
        agent.audit().iter().any(|e| e["kind"] == "agent.resumed").then_some(())
    });
    let audit = agent.audit();
    let paused = audit
        .iter()
        .find(|e| e["kind"] == "agent.paused")
        .expect("pause audited");
    assert_eq!(paused["detail"]["reason"], "incident 42");
    assert!(
        paused["detail"]["by"].as_str().unwrap_or("").contains("uid"),
        "{paused}"
    );
    let refused = audit.iter().find(|e| e["op"] == id.as_str()).expect("refusal audited");
    assert_eq!(refused["kind"], "operation.refused");
    assert_eq!(refused["detail"]["rule"], "local_kill_switch");
}
