//! The audit log through the real binaries: it fails closed on a full disk
//! and says so at the control plane; `audit verify` (and the standalone
//! `byoc-audit-verify`) name the entry of any tampering, including entries
//! cut off the end; `audit export` feeds a SIEM.

#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use byoc_tests::{SimDelays, World, bin, cluster, op, wait_for};
use serde_json::Value;

/// A small tmpfs mounted over a directory for the length of a test.
struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs of `size` over `dir`, keeping what `dir` held.
    fn tmpfs_over(dir: &Path, size: &str) -> Self {
        let keep = dir.with_extension("before-mount");
        std::fs::rename(dir, &keep).expect("move aside");
        std::fs::create_dir(dir).expect("mkdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "this test fills a small tmpfs to make the disk full, and needs root to mount it: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = Self(dir.to_path_buf());
        let cp = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", keep.display()))
            .arg(dir)
            .status()
            .expect("cp");
        assert!(cp.success());
        m
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn with_a_full_disk_the_agent_refuses_says_why_and_records_nothing_half_done() {
    let w = World::new();
    let cp = w.control_plane();
    let mut agent = w.agent(&cp, SimDelays::default());
    assert!(
        cp.watch(&cp.submit_json(&op("apply", "cluster", cluster("before"))))
            .success
    );
    agent.stop();

    let audit_dir = agent.data_dir().join("audit");
    let _mount = Mount::tmpfs_over(&audit_dir, "512k");
    agent.start();
    agent.wait_connected(&cp);
    assert!(
        cp.watch(&cp.submit_json(&op("apply", "cluster", cluster("on-tmpfs"))))
            .success
    );

    fill(&audit_dir.join("filler"));
    // The log's last page may still have room for a few entries: operations
    // go on until one of its records does not fit. That one either is refused
    // (its `operation.received` did not fit) or has its result held (a later
    // record did not: it resumes at the next start).
    let mut first_failed = None;
    for i in 0..40 {
        let id = cp.submit_json(&op("apply", "cluster", cluster(&format!("fill-{i}"))));
        // Either its result, or the agent's word that it holds the result.
        let held = |log: &str| {
            log.lines()
                .any(|l| l.contains(&id) && l.contains("the result is held until the agent restarts"))
        };
        let outcome = || match cp.get(&id)["results"].as_array().and_then(|r| r.first()) {
            Some(r) => Some(Some(r.clone())),
            None => held(&agent.log()).then_some(None),
        };
        let result = wait_for("a result, or word that it is held", Duration::from_secs(20), outcome);
        match result {
            Some(r) if r["outcome"] == "OUTCOME_SUCCEEDED" => continue,
            Some(r) => {
                assert_eq!(r["problem"]["code"], "audit_unavailable", "{r}");
            }
            None => {
                assert!(
                    agent.log().contains("the result is held until the agent restarts"),
                    "no result and no word why: {}",
                    agent.log()
                );
                // The control plane hears it too.
                wait_for(
                    "the control plane to hear the result is held",
                    Duration::from_secs(20),
                    || (cp.get(&id)["progress"]["phase"] == "outcome_held").then_some(()),
                );
            }
        }
        first_failed = Some(i);
        break;
    }
    let first_failed = first_failed.expect("the disk never filled up");

    // From then on every operation is refused, with the reason, at once.
    let id = cp.submit_json(&op("apply", "cluster", cluster("disk-full")));
    let r = result_within(&cp, &id, Duration::from_secs(10)).expect("a refusal");
    assert_eq!(r["outcome"], "OUTCOME_REFUSED", "{r}");
    assert_eq!(r["problem"]["code"], "audit_unavailable", "{r}");
    let msg = r["problem"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&audit_dir.display().to_string()),
        "the message names the log: {msg}"
    );
    assert!(msg.contains("free space"), "the message says what to do: {msg}");
    assert!(agent.is_running(), "the agent stays up to say why");
    let exists = |name: &str| {
        byoc_provider_sim::list_resources(&agent.sim_dir())
            .expect("list")
            .iter()
            .any(|r| r.name == name)
    };
    assert!(!exists("disk-full"), "a refused operation did nothing");

    // Even once space is back: what reached the disk after the failed write
    // is not known until a restart reads the log again.
    std::fs::remove_file(audit_dir.join("filler")).expect("rm filler");
    let again = cp.submit_json(&op("apply", "cluster", cluster("disk-full")));
    let r = result_within(&cp, &again, Duration::from_secs(10)).expect("a refusal");
    assert_eq!(r["problem"]["code"], "audit_unavailable", "{r}");

    // Restarted with space, the agent continues the same log: a held
    // operation finishes, new ones run, and the log verifies.
    agent.stop();
    agent.start();
    agent.wait_connected(&cp);
    let after = cp.submit_json(&op("apply", "cluster", cluster("disk-full")));
    assert!(cp.watch(&after).success);
    let held = format!("fill-{first_failed}");
    agent.stop();
    let v = agent.audit_verify();
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(v.status.success(), "{out}");
    // Nothing was acted on unrecorded: every cluster in the cloud has its
    // create call in the audit log.
    let audit = agent.audit();
    for r in byoc_provider_sim::list_resources(&agent.sim_dir()).expect("list") {
        let recorded = audit
            .iter()
            .filter(|e| e["kind"] == "provider.call" && e["detail"]["action"] == "sim:CreateCluster")
            .any(|e| {
                e["detail"]["resource"]
                    .as_str()
                    .is_some_and(|res| res.ends_with(&r.name))
            });
        assert!(
            recorded,
            "{} was created without its call in the audit log ({held})",
            r.name
        );
    }
}

/// The operation's first result, if it arrives within `timeout`.
fn result_within(cp: &byoc_tests::ControlPlane, id: &str, timeout: Duration) -> Option<Value> {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        let got = cp.get(id);
        if let Some(r) = got["results"].as_array().and_then(|r| r.first()) {
            return Some(r.clone());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn log_lines(agent_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(agent_dir.join("audit").join("log.jsonl"))
        .expect("log")
        .lines()
        .map(str::to_string)
        .collect()
}

fn verify_with(args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(bin("byoc-audit-verify"))
        .args(args)
        .arg(dir)
        .output()
        .expect("byoc-audit-verify");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn tampering_is_named_by_both_verifiers_and_export_feeds_a_siem() {
    let w = World::new();
    let cp = w.control_plane();
    let mut agent = w.agent(&cp, SimDelays::default());
    for name in ["a", "b", "c"] {
        assert!(
            cp.watch(&cp.submit_json(&op("apply", "cluster", cluster(name))))
                .success
        );
    }
    agent.stop();
    let dir = agent.data_dir().join("audit");
    let vkey = std::fs::read_to_string(dir.join("verifier.key")).expect("vkey");
    let (code, out) = verify_with(&["--key", vkey.trim()], &dir);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("verifies"), "{out}");

    // Export: one JSON object per entry, with index and leaf hash.
    let export = agent
        .cli()
        .args(["audit", "export", "--config"])
        .arg(&agent.config)
        .output()
        .expect("export");
    assert!(export.status.success());
    let exported: Vec<Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let orig = log_lines(&agent.data_dir());
    assert_eq!(exported.len(), orig.len());
    assert_eq!(exported[3]["index"], 3);
    assert!(
        exported[0]["log"]
            .as_str()
            .is_some_and(|l| l.starts_with("byoc-agent/audit/"))
    );
    assert_eq!(exported[0]["leaf_hash"].as_str().map(str::len), Some(64));

    let put = |lines: &[String]| {
        std::fs::write(dir.join("log.jsonl"), lines.join("\n") + "\n").expect("write");
    };
    let check = |want_entry: usize| {
        let v = agent.audit_verify();
        let text = String::from_utf8_lossy(&v.stdout).to_string();
        assert_eq!(v.status.code(), Some(1), "{text}");
        assert!(
            text.contains(&format!("entry {want_entry}:")),
            "want entry {want_entry}: {text}"
        );
        let (code, out) = verify_with(&[], &dir);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(&format!("entry {want_entry}:")), "{out}");
    };
    // One byte of one entry.
    let target = orig
        .iter()
        .position(|l| l.contains("\"operation.received\""))
        .expect("a received entry");
    let mut l = orig.clone();
    l[target] = l[target].replacen("\"sequence\":", "\"sequence\":9", 1);
    put(&l);
    check(target);
    // An entry deleted.
    let mut l = orig.clone();
    l.remove(target);
    put(&l);
    check(target);
    // Two entries swapped.
    let mut l = orig.clone();
    l.swap(target, target + 1);
    put(&l);
    check(target);
    // The end cut off.
    let keep = orig.len() - 4;
    put(&orig[..keep]);
    check(keep);
    put(&orig);
    assert!(agent.audit_verify().status.success());
    // A key other than the one recorded at enrollment.
    let (code, out) = verify_with(&["--key", "someone+00000000+AQ=="], &dir);
    assert_eq!(code, Some(2), "{out}");
}

#[test]
fn enrollment_makes_the_audit_key_and_prints_its_verifier_key() {
    let w = World::new();
    let cp = w.control_plane();
    let a = w.agent_config("agent", SimDelays::default());
    let out = a.enroll(&cp.token("15m"), &cp.url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let vkey = std::fs::read_to_string(a.data_dir().join("audit").join("verifier.key")).expect("verifier.key");
    let vkey = vkey.trim();
    assert!(vkey.starts_with("byoc-agent/audit/agt-"), "{vkey}");
    assert!(
        stdout.contains(&format!("audit verifier key: {vkey}")),
        "enroll prints the key to keep off the host: {stdout}"
    );
    // The signing key is private and is not in the directory handed to auditors.
    let key = a.data_dir().join("identity").join("audit.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).expect("audit.key").permissions());
    assert_eq!(mode & 0o777, 0o600);
    for f in std::fs::read_dir(a.data_dir().join("audit")).expect("audit dir") {
        let f = f.expect("entry").path();
        let bytes = std::fs::read(&f).expect("read");
        let secret = std::fs::read(&key).expect("key");
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
            "{} holds the key",
            f.display()
        );
    }
}
