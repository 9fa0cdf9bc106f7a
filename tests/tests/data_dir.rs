//! One data directory, one process: a second agent or control plane on the
//! same directory exits at once, naming the one that holds it. Re-enrolling
//! (after a revocation) archives the earlier identity, audit log and journal
//! instead of mixing them with the new enrollment's, and the archived log
//! still verifies with the earlier key.

// Helpers fail the test by panicking with a message.
#![allow(clippy::expect_used)]

use std::time::Duration;

use byoc_tests::{SimDelays, World, cluster, op, wait_for};
use serde_json::Value;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn results(cp: &byoc_tests::ControlPlane, id: &str) -> usize {
    cp.get(id)["results"].as_array().map_or(0, Vec::len)
}

#[test]
fn a_second_agent_or_control_plane_on_the_same_data_directory_exits_at_once() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = w.agent(&cp, SimDelays::default());

    // A burst of operations while a second agent tries to start on the same
    // directory again and again.
    let ids: Vec<String> = (0..10)
        .map(|i| cp.submit_json(&op("apply", "cluster", cluster(&format!("c{i}")))))
        .collect();
    for _ in 0..3 {
        let second = agent
            .cli()
            .args(["run", "--config"])
            .arg(&agent.config)
            .output()
            .expect("second agent");
        assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
        let msg = stderr(&second);
        assert!(
            msg.contains("is using the data directory") && msg.contains("only one agent may run on it at a time"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("(pid {})", agent.pid())),
            "names the holder: {msg}"
        );
    }
    // Enrolling while the agent runs is refused the same way, before the token is used.
    let token = cp.token("15m");
    let enroll = agent.enroll_with(&token, &cp.url, &["--reenroll"]);
    assert_eq!(enroll.status.code(), Some(2), "{}", stderr(&enroll));
    assert!(
        stderr(&enroll).contains("only one agent may run on it"),
        "{}",
        stderr(&enroll)
    );

    for id in &ids {
        assert!(cp.watch(id).success, "{}", agent.log());
        assert_eq!(results(&cp, id), 1, "{id} has exactly one result");
    }
    // Each operation ran once: one create call per cluster.
    let creates = agent
        .audit()
        .into_iter()
        .filter(|e| e["kind"] == "provider.call" && e["detail"]["action"] == "sim:CreateCluster")
        .count();
    assert_eq!(creates, ids.len());
    assert!(agent.audit_verify().status.success());

    // A second control plane on the first one's directory exits too, and the
    // first keeps its admin socket.
    let second = cp
        .cli()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .expect("second control plane");
    assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("only one control plane may run on it at a time"),
        "{}",
        stderr(&second)
    );
    assert!(cp.agents().contains(" connected "), "{}", cp.agents());
}

#[test]
fn re_enrolling_after_a_revocation_archives_the_earlier_log_and_sequence_one_runs() {
    let w = World::new();
    let cp = w.control_plane();
    let mut agent = w.agent(&cp, SimDelays::default());
    let first = cp.submit_json(&op("apply", "cluster", cluster("before")));
    assert!(cp.watch(&first).success, "{}", agent.log());
    let old_id = agent.agent_id();
    let old_key = std::fs::read_to_string(agent.data_dir().join("audit/verifier.key"))
        .expect("verifier key")
        .trim()
        .to_string();

    let out = cp.cli().args(["revoke", &old_id]).output().expect("revoke");
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the agent to be refused", Duration::from_secs(20), || {
        agent.log().contains("have been revoked").then_some(())
    });
    agent.stop();

    // Without --reenroll: refused before the token is spent.
    let token = cp.token("15m");
    let refused = agent.enroll(&token, &cp.url);
    assert_eq!(refused.status.code(), Some(2));
    let msg = stderr(&refused);
    assert!(
        msg.contains("already holds an enrollment (identity/, audit/, journal.log)")
            && msg.contains("the token was not used")
            && msg.contains("--reenroll"),
        "{msg}"
    );
    // The same token then works, with --reenroll.
    let out = agent.enroll_with(&token, &cp.url, &["--reenroll"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("the earlier enrollment is archived in"), "{stdout}");
    let new_id = agent.agent_id();
    assert_ne!(new_id, old_id);

    // The archived log verifies with the earlier key, and ends with the
    // record of why it was closed, under a final checkpoint.
    let archives: Vec<_> = std::fs::read_dir(agent.data_dir().join("archive"))
        .expect("archive dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(archives.len(), 1, "{archives:?}");
    let archived_log = archives[0].join("audit");
    let verify = agent
        .cli()
        .args(["audit", "verify", "--dir"])
        .arg(&archived_log)
        .args(["--key", &old_key])
        .output()
        .expect("verify archived");
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        stderr(&verify)
    );
    let old_entries: Vec<Value> = std::fs::read_to_string(archived_log.join("log.jsonl"))
        .expect("archived log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("entry"))
        .collect();
    let kinds: Vec<&str> = old_entries.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["agent.archived", "audit.checkpoint"],
        "{kinds:?}"
    );
    assert_eq!(
        old_entries[old_entries.len() - 2]["detail"]["next_agent_id"],
        new_id.as_str()
    );
    assert!(archives[0].join("journal.log").exists());

    // The new log starts with the new enrollment, naming the archived one.
    let enrolled = agent
        .audit()
        .into_iter()
        .find(|e| e["kind"] == "agent.enrolled")
        .expect("agent.enrolled");
    assert_eq!(enrolled["detail"]["previous"]["agent_id"], old_id.as_str());
    assert!(
        enrolled["detail"]["previous"]["checkpoint"]
            .as_str()
            .is_some_and(|c| c.starts_with(&format!("byoc-agent/audit/{old_id}\n"))),
        "{enrolled}"
    );

    // The re-enrolled agent runs its first operation: sequence 1.
    agent.start();
    agent.wait_connected(&cp);
    let next = cp.submit_json(&op("apply", "cluster", cluster("after")));
    assert!(cp.watch(&next).success, "{}", agent.log());
    assert_eq!(cp.get(&next)["sequence"], 1);
    assert!(agent.audit_verify().status.success());
}
