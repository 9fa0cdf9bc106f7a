//! Local approvals through the real binaries: an operation the policy holds
//! waits (the control plane sees it awaiting approval), runs once someone on
//! the agent host approves it, is refused when rejected or not approved in
//! time, and survives a restart of the agent (and of the control plane).

// Helpers fail the test by panicking with a message.
#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use byoc_tests::{Agent, ControlPlane, SimDelays, Watched, World, op, wait_for};
use serde_json::{Value, json};

fn database(name: &str) -> Value {
    json!({"name": name, "engine": "postgres", "version": "16", "size": "small", "storage_gb": 50,
           "deletion_protection": false})
}

fn sim_names(agent: &Agent) -> Vec<String> {
    byoc_provider_sim::list_resources(&agent.sim_dir())
        .expect("sim resources")
        .into_iter()
        .map(|r| r.name)
        .collect()
}

/// A database `name` exists, and a delete of it has been submitted and is held.
fn held_delete(cp: &ControlPlane, name: &str) -> String {
    assert!(
        cp.watch(&cp.submit_json(&op("apply", "database", database(name))))
            .success
    );
    let id = cp.submit_json(&op("delete", "database", database(name)));
    wait_for(
        "the control plane to show the delete awaiting approval",
        Duration::from_secs(20),
        || (cp.get(&id)["progress"]["phase"] == "awaiting_approval").then_some(()),
    );
    id
}

/// Runs `byoc-agent <verb> OP --reason REASON` as local user `user`.
fn decide(agent: &Agent, verb: &str, op: &str, reason: &str, user: &str) -> Output {
    agent
        .cli()
        .args([verb, op, "--reason", reason, "--config"])
        .arg(&agent.config)
        .env("USER", user)
        .env_remove("SUDO_USER")
        .output()
        .expect("decide")
}

fn approvals(agent: &Agent) -> Vec<Value> {
    let out = agent
        .cli()
        .args(["approvals", "--json", "--config"])
        .arg(&agent.config)
        .output()
        .expect("approvals");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("approvals json")
}

fn audited(agent: &Agent, op: &str, kind: &str) -> Value {
    agent
        .audit()
        .into_iter()
        .find(|e| e["op"] == op && e["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} for {op}"))
}

/// A `byoc-control watch` running in the background, its output in files.
struct Watching {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Watching {
    fn start(cp: &ControlPlane, op: &str) -> Self {
        let stdout = cp.dir.join(format!("watch-{op}.out"));
        let stderr = cp.dir.join(format!("watch-{op}.err"));
        let file = |p: &PathBuf| std::fs::File::create(p).expect("watch output");
        let child = cp
            .cli()
            .args(["watch", op])
            .stdout(Stdio::from(file(&stdout)))
            .stderr(Stdio::from(file(&stderr)))
            .spawn()
            .expect("watch");
        Self { child, stdout, stderr }
    }

    /// What it has written to its standard error so far.
    fn stderr(&self) -> String {
        byoc_tests::read(&self.stderr)
    }

    /// Waits for it to end.
    fn finish(mut self) -> Watched {
        let status = wait_for("the watch to end", Duration::from_secs(60), || {
            self.child.try_wait().expect("watch")
        });
        Watched {
            success: status.success(),
            code: status.code(),
            stdout: byoc_tests::read(&self.stdout),
            stderr: byoc_tests::read(&self.stderr),
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn my_uid() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("uid")
}

#[test]
fn a_database_delete_waits_for_a_local_approval_then_runs_audited_with_the_user() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = w.agent(&cp, SimDelays::default());
    let id = held_delete(&cp, "orders");

    // The control plane sees it waiting, with what to do about it.
    let got = cp.get(&id);
    assert_eq!(got["state"], "pending", "{got}");
    let message = got["progress"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("default.database_delete_needs_approval")
            && message.contains(&format!("byoc-agent approve {id}")),
        "{message}"
    );
    // The agent host sees it with its plan.
    let held = approvals(&agent);
    assert_eq!(held.len(), 1, "{held:?}");
    let h = &held[0];
    assert_eq!(
        (
            h["operation_id"].as_str(),
            h["action"].as_str(),
            h["kind"].as_str(),
            h["name"].as_str()
        ),
        (Some(id.as_str()), Some("delete"), Some("database"), Some("orders"))
    );
    assert_eq!(h["state"], "awaiting approval");
    assert_eq!(h["plan"]["summary"], "delete");
    assert_eq!(
        h["expires_at_unix_ms"].as_i64().unwrap_or(0) - h["received_at_unix_ms"].as_i64().unwrap_or(0),
        3_600_000,
        "default window: 1 h"
    );
    let table = agent
        .cli()
        .args(["approvals", "--config"])
        .arg(&agent.config)
        .output()
        .expect("approvals");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&id) && table.contains("delete (resource): {") && table.contains("EXPIRES"),
        "{table}"
    );
    let st = String::from_utf8_lossy(&agent.status().stdout).to_string();
    wait_for("status to list the held operation", Duration::from_secs(5), || {
        String::from_utf8_lossy(&agent.status().stdout)
            .contains(&format!("awaiting approval: {id}"))
            .then_some(())
    });
    // It really waits: the agent decided to hold it (audited), and did not
    // start it nor make a mutating call for it (the plan's reads are made
    // before the hold), so nothing is deleted. (That nothing starts before
    // the approval is also proven below, by the order of its audit entries.)
    wait_for("the hold to be audited", Duration::from_secs(20), || {
        agent
            .audit()
            .iter()
            .any(|e| e["op"] == id.as_str() && e["kind"] == "approval.awaiting")
            .then_some(())
    });
    let acted: Vec<Value> = agent
        .audit()
        .into_iter()
        .filter(|e| {
            e["op"] == id.as_str()
                && (e["kind"] == "operation.started"
                    || (e["kind"] == "provider.call" && e["detail"]["mutating"] != false))
        })
        .collect();
    assert!(acted.is_empty(), "acted on while held: {acted:?}");
    assert_eq!(sim_names(&agent), ["orders"], "{st}");

    // A watch that starts while the operation is held hears why it waits:
    // approve only once it has said so.
    let watcher = Watching::start(&cp, &id);
    wait_for(
        "the watch to say the operation awaits approval",
        Duration::from_secs(20),
        || watcher.stderr().contains("awaiting_approval").then_some(()),
    );
    let out = decide(&agent, "approve", &id, "change 7", "alice");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("approved"));
    let watched = watcher.finish();
    assert!(watched.success, "{watched:?}\n{}", agent.log());
    assert!(watched.stderr.contains("awaiting_approval"), "{}", watched.stderr);
    assert!(sim_names(&agent).is_empty(), "deleted once approved");
    let granted = audited(&agent, &id, "approval.granted");
    assert_eq!(granted["detail"]["user"], "alice");
    assert_eq!(granted["detail"]["uid"].as_u64(), Some(my_uid()));
    assert_eq!(granted["actor"]["local_user"], "alice", "the approver is the actor");
    assert_eq!(granted["detail"]["reason"], "change 7");
    assert_eq!(granted["detail"]["rule"], "default.database_delete_needs_approval");

    // In order: decided, received, planned and shown, approved, decided again, run.
    let kinds: Vec<String> = agent
        .audit()
        .into_iter()
        .filter(|e| e["op"] == id.as_str() && e["kind"] != "provider.call")
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "policy.decision",
            "operation.received",
            "approval.planning",
            "approval.awaiting",
            "approval.granted",
            "policy.decision",
            "operation.started",
            "operation.finished"
        ]
    );
    assert_eq!(
        audited(&agent, &id, "policy.decision")["detail"]["decision"],
        "approval_required"
    );
    // Done with: no longer listed, and cannot be approved again.
    assert!(approvals(&agent).is_empty());
    let again = decide(&agent, "approve", &id, "", "alice");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("awaiting approval"));
    assert!(agent.audit_verify().status.success());
}

#[test]
fn a_rejected_operation_is_refused_with_the_rule_and_the_reason() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = w.agent(&cp, SimDelays::default());
    let id = held_delete(&cp, "orders");
    let out = decide(&agent, "reject", &id, "not during the sale", "bob");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let watched = cp.watch(&id);
    assert_eq!(watched.code, Some(1), "{watched:?}");
    let r = &cp.get(&id)["results"][0];
    assert_eq!(r["outcome"], "OUTCOME_REFUSED");
    assert_eq!(r["problem"]["code"], "approval_rejected");
    assert_eq!(r["problem"]["rule"], "default.database_delete_needs_approval");
    let message = r["problem"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("bob") && message.contains("not during the sale"),
        "{message}"
    );
    assert_eq!(r["plan"][0]["kind"], "delete", "the plan that was refused");
    assert_eq!(sim_names(&agent), ["orders"]);
    let rejected = audited(&agent, &id, "approval.rejected");
    assert_eq!(rejected["detail"]["user"], "bob");
    assert_eq!(rejected["detail"]["reason"], "not during the sale");
    assert!(approvals(&agent).is_empty());
}

#[test]
fn an_operation_not_approved_within_the_window_is_refused_as_expired() {
    let w = World::new();
    let cp = w.control_plane();
    let a = w.agent_config("agent", SimDelays::default());
    a.use_policy("[approvals]\nwindow = \"2s\"\n");
    let agent = w.start_agent(a, &cp);
    let id = held_delete(&cp, "orders");
    let watched = cp.watch(&id);
    assert_eq!(watched.code, Some(1), "{watched:?}");
    let p = &cp.get(&id)["results"][0]["problem"];
    assert_eq!(p["code"], "approval_expired");
    assert_eq!(p["rule"], "default.database_delete_needs_approval");
    assert_eq!(sim_names(&agent), ["orders"]);
    let expired = audited(&agent, &id, "approval.expired");
    assert!(expired["detail"]["expires_at_unix_ms"].as_i64().is_some());
    // Too late now.
    let late = decide(&agent, "approve", &id, "", "alice");
    assert_eq!(late.status.code(), Some(2));
}

#[test]
fn a_held_operation_survives_restarts_of_the_agent_and_the_control_plane() {
    let w = World::new();
    let mut cp = w.control_plane();
    let mut agent = w.agent(&cp, SimDelays::default());
    let id = held_delete(&cp, "orders");
    let before = approvals(&agent);

    agent.kill9();
    cp.restart();
    agent.start();
    agent.wait_connected(&cp);
    // The restarted control plane knew nothing of the hold: the agent told it again.
    wait_for("the hold to be announced again", Duration::from_secs(20), || {
        (cp.get(&id)["progress"]["phase"] == "awaiting_approval").then_some(())
    });
    let after = approvals(&agent);
    assert_eq!(after.len(), 1);
    assert_eq!(
        after[0]["expires_at_unix_ms"], before[0]["expires_at_unix_ms"],
        "the same window"
    );
    assert_eq!(after[0]["plan"], before[0]["plan"], "the same plan");
    assert_eq!(audited(&agent, &id, "approval.resumed")["detail"]["resumed"], true);
    assert_eq!(sim_names(&agent), ["orders"]);

    let out = decide(&agent, "approve", &id, "", "alice");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(cp.watch(&id).success, "{}", agent.log());
    assert!(sim_names(&agent).is_empty());
}

#[test]
fn the_control_plane_can_withdraw_a_held_operation() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = w.agent(&cp, SimDelays::default());
    let id = held_delete(&cp, "orders");
    let out = cp.cli().args(["cancel", &id]).output().expect("cancel");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(cp.watch(&id).code, Some(1));
    assert_eq!(cp.get(&id)["results"][0]["outcome"], "OUTCOME_CANCELLED");
    assert_eq!(sim_names(&agent), ["orders"]);
    assert!(approvals(&agent).is_empty());
}

#[test]
fn a_policy_can_hold_any_action_and_a_denial_is_never_held() {
    let w = World::new();
    let cp = w.control_plane();
    let a = w.agent_config("agent", SimDelays::default());
    a.use_policy("[kinds.cluster]\napply = \"approve\"\n[protected]\nnames = [\"keep\"]\n");
    let agent = w.start_agent(a, &cp);
    let id = cp.submit_json(&op("apply", "cluster", byoc_tests::cluster("prod")));
    wait_for("the apply to be held", Duration::from_secs(20), || {
        (cp.get(&id)["progress"]["phase"] == "awaiting_approval").then_some(())
    });
    let held = approvals(&agent);
    assert_eq!(held[0]["rule"], "kinds.cluster.apply");
    assert_eq!(held[0]["plan"]["summary"], "create");
    assert!(sim_names(&agent).is_empty());
    assert!(decide(&agent, "approve", &id, "", "alice").status.success());
    assert!(cp.watch(&id).success);
    assert_eq!(sim_names(&agent), ["prod"]);

    // A protected database: refused at once (default hold or not).
    let keep = cp.submit_json(&op("delete", "database", database("keep")));
    let watched = cp.watch(&keep);
    assert_eq!(watched.code, Some(1));
    assert_eq!(cp.get(&keep)["results"][0]["problem"]["rule"], "protected.name:keep");
    assert!(approvals(&agent).is_empty());
}
