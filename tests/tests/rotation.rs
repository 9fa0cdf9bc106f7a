//! Rotating the control plane's CA with an overlap, end to end: agents keep
//! working through `ca rotate`, renewal and `ca finish`; enrollment during the
//! overlap pins the new CA; an agent that slept through the whole overlap is
//! locked out with a clear message; revocation still holds.

#![allow(clippy::expect_used)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use byoc_tests::{Agent, ControlPlane, SimDelays, World, cluster, wait_for};
use serde_json::json;

fn ca(cp: &ControlPlane, args: &[&str]) -> Output {
    cp.cli().arg("ca").args(args).output().expect("byoc-control ca")
}

fn ok(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// The active CA's SHA-256, from `ca status`.
fn active_ca(cp: &ControlPlane) -> String {
    let text = ok(&ca(cp, &["status"]));
    let after = text.split_once("active CA").expect("an active CA").1;
    after
        .lines()
        .find_map(|l| l.trim().strip_prefix("sha256:"))
        .expect("sha256")
        .trim()
        .to_string()
}

/// An agent serving sim account `account`, enrolled with `token`, started.
fn agent_for(w: &World, cp: &ControlPlane, name: &str, account: &str, token: &str) -> Agent {
    let mut agent = w.agent_config(name, SimDelays::default());
    let text = std::fs::read_to_string(&agent.config).expect("config");
    std::fs::write(
        &agent.config,
        text.replace("account = \"acct-1\"", &format!("account = \"{account}\"")),
    )
    .expect("config");
    let out = agent.enroll(token, &cp.url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    agent.start();
    wait_for("the agent to connect", Duration::from_secs(20), || {
        sessions(&agent).gt(&0).then_some(())
    });
    agent
}

fn sessions(agent: &Agent) -> usize {
    agent
        .audit()
        .iter()
        .filter(|e| e["kind"] == "session.connected")
        .count()
}

fn apply(cp: &ControlPlane, account: &str, name: &str) {
    let doc = json!({
        "target": {"cloud": "sim", "account": account, "region": "sim-1"},
        "action": "apply", "kind": "cluster", "spec": cluster(name),
    });
    let watched = cp.watch(&cp.submit_json(&doc));
    assert!(watched.success, "{name} on {account}: {watched:?}");
}

fn sha256(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

/// The SHA-256 of each CA the agent trusts: `ca-bundle.pem`, else `ca.der`.
fn trusted(agent: &Agent) -> Vec<String> {
    let dir = agent.data_dir().join("identity");
    match std::fs::read(dir.join("ca-bundle.pem")) {
        Ok(pem) => {
            use rustls_pki_types::pem::PemObject as _;
            rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .map(|c| sha256(&c.expect("pem")))
                .collect()
        }
        Err(_) => vec![sha256(&std::fs::read(dir.join("ca.der")).expect("ca.der"))],
    }
}

fn wait_trusting(agent: &Agent, expected: &[&str]) {
    wait_for(
        &format!("the agent to trust exactly {expected:?}"),
        Duration::from_secs(30),
        || (trusted(agent) == expected).then_some(()),
    );
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn agents_keep_working_across_rotate_renewal_and_finish() {
    let w = World::new();
    let mut cp = w.control_plane_with("cp", &["--cert-lifetime", "6s"]);
    let old = active_ca(&cp);
    let first = agent_for(&w, &cp, "first", "acct-1", &cp.token("15m"));
    apply(&cp, "acct-1", "before");

    let out = ok(&ca(&cp, &["rotate"]));
    assert!(out.contains("previous CA") && out.contains(&old), "{out}");
    let new = active_ca(&cp);
    assert_ne!(new, old);
    assert_eq!(
        std::fs::read(cp.dir.join("ca.der"))
            .map(|d| sha256(&d))
            .expect("ca.der"),
        new
    );
    for entry in std::fs::read_dir(cp.dir.join("ca")).expect("ca dir").flatten() {
        if entry.path().extension().is_some_and(|e| e == "key") {
            assert_eq!(mode(&entry.path()), 0o600, "{}", entry.path().display());
        }
    }

    // The running agent renews (short certificates), gets a certificate of
    // the new CA and the two-CA bundle; operations go on meanwhile.
    wait_trusting(&first, &[&new, &old]);
    apply(&cp, "acct-1", "during");
    wait_for("the agent to be on the new CA", Duration::from_secs(30), || {
        ok(&ca(&cp, &["status"]))
            .contains("`byoc-control ca finish` is safe")
            .then_some(())
    });
    let updated = first.audit();
    let update = updated
        .iter()
        .find(|e| e["kind"] == "trust.updated")
        .expect("the new CAs are audited");
    assert_eq!(update["detail"]["ca_sha256"], json!([new, old]));

    // A token made now pins the new CA; an agent enrolls with it during the overlap.
    let token = cp.token("15m");
    assert_eq!(token.split('.').nth(1), Some(new.as_str()), "{token}");
    let second = agent_for(&w, &cp, "second", "acct-2", &token);
    assert_eq!(trusted(&second)[0], new);
    apply(&cp, "acct-2", "enrolled-during-overlap");

    // The overlap survives a restart of the control plane.
    cp.restart();
    assert_eq!(active_ca(&cp), new);
    apply(&cp, "acct-1", "after-restart");

    let (before_first, before_second) = (sessions(&first), sessions(&second));
    let out = ok(&ca(&cp, &["finish"]));
    assert!(out.contains("no rotation under way") && !out.contains(&old), "{out}");
    // Live sessions are closed; agents reconnect against the new CA's server
    // certificate and drop the old CA.
    wait_for("both agents to reconnect", Duration::from_secs(30), || {
        (sessions(&first) > before_first && sessions(&second) > before_second).then_some(())
    });
    wait_trusting(&first, &[&new]);
    wait_trusting(&second, &[&new]);
    apply(&cp, "acct-1", "after");
    apply(&cp, "acct-2", "after");

    // Revocation holds across the rotation.
    let id = second.agent_id();
    ok(&cp.cli().args(["revoke", &id]).output().expect("revoke"));
    wait_for("the revoked agent to be refused", Duration::from_secs(20), || {
        second.log().contains("have been revoked").then_some(())
    });
    assert!(
        first.log().lines().all(|l| !l.contains("refused the CAs")),
        "{}",
        first.log()
    );
}

#[test]
fn an_agent_that_slept_through_the_overlap_is_locked_out_and_told_to_enroll_again() {
    let w = World::new();
    let mut cp = w.control_plane();
    let old = active_ca(&cp);
    let mut sleeper = agent_for(&w, &cp, "sleeper", "acct-1", &cp.token("15m"));
    let awake = agent_for(&w, &cp, "awake", "acct-2", &cp.token("15m"));
    apply(&cp, "acct-1", "before");
    sleeper.stop();

    ok(&ca(&cp, &["rotate"]));
    let new = active_ca(&cp);
    // With day-long certificates the awake agent moves when it next connects
    // (its Welcome carries the new CAs and it renews at once).
    cp.restart();
    wait_trusting(&awake, &[&new, &old]);
    wait_for(
        "the awake agent's certificate from the new CA",
        Duration::from_secs(30),
        || {
            let status = ok(&ca(&cp, &["status"]));
            let waiting = status
                .lines()
                .find(|l| l.starts_with("agents still on the previous CA"))?;
            (waiting.contains(&sleeper.agent_id()) && !waiting.contains(&awake.agent_id())).then_some(())
        },
    );
    apply(&cp, "acct-2", "awake-during");

    // Finishing would lock the sleeper out: refused unless forced.
    let refused = ca(&cp, &["finish"]);
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains(&sleeper.agent_id()) && err.contains("--force"), "{err}");
    assert_eq!(active_ca(&cp), new);
    assert!(ok(&ca(&cp, &["status"])).contains("previous CA"));
    ok(&ca(&cp, &["finish", "--force"]));
    apply(&cp, "acct-2", "awake-after");

    sleeper.start();
    wait_for("the sleeper's certificate error", Duration::from_secs(20), || {
        sleeper.log().contains("enroll the agent again").then_some(())
    });
    let log = sleeper.log();
    assert!(log.contains("UnknownIssuer") && log.contains(&old), "{log}");
    assert!(sleeper.is_running(), "it keeps retrying rather than crash");
    assert_eq!(trusted(&sleeper), vec![old]);
    let agents = cp.agents();
    let line = agents
        .lines()
        .find(|l| l.contains(&sleeper.agent_id()))
        .expect("listed");
    assert!(line.contains("offline"), "{agents}");
}
