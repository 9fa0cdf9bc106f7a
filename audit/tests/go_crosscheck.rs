//! Cross-checks the log format with an independent implementation: Go's
//! `golang.org/x/mod/sumdb/note` and `.../tlog` (Debian packages golang-go
//! and golang-golang-x-mod-dev, which `make test` installs), through
//! `audit/xcheck/main.go`.

#![allow(clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use byoc_audit::{AuditLog, Event, Options, load_or_create_key, verify};
use serde_json::json;

fn go_xcheck(dir: &Path) -> (bool, String) {
    let gopath = "/usr/share/gocode";
    assert!(
        Path::new(gopath).join("src/golang.org/x/mod/sumdb/tlog").exists(),
        "Go's x/mod is missing: apt-get install golang-go golang-golang-x-mod-dev (scripts/test.sh does)"
    );
    let out = Command::new("go")
        .args(["run", "."])
        .arg(dir)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("xcheck"))
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOFLAGS", "")
        .output()
        .expect("go is not installed: apt-get install golang-go golang-golang-x-mod-dev (scripts/test.sh does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn go_sumdb_note_and_tlog_verify_our_logs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("audit");
    let (signer, _) = load_or_create_key(&tmp.path().join("audit.key"), "byoc-agent/audit/xcheck").expect("key");
    let log = AuditLog::open(
        &dir,
        signer,
        Options {
            checkpoint_every: 37,
            checkpoint_interval: Duration::from_secs(3600),
        },
    )
    .expect("open");
    for i in 0..500u32 {
        let kind = if i % 4 == 3 {
            "operation.finished"
        } else {
            "provider.call"
        };
        log.record(Event::new(
            kind,
            Some(&format!("op-{}", i / 4)),
            json!({"i": i, "text": "ünïcode ✓"}),
        ))
        .await
        .expect("record");
    }
    log.close().await.expect("close");
    drop(log);
    let ours = verify::verify_dir(&dir, &verify::Options::default()).expect("we verify it");
    let (ok, text) = go_xcheck(&dir);
    assert!(ok, "Go's tlog and note refuse our log: {text}");
    assert!(
        text.contains(&format!(
            "ok {} entries, {} checkpoints, {} receipts",
            ours.entries, ours.checkpoints, ours.receipts
        )),
        "{text} vs {ours:?}"
    );

    // And they catch what we catch: a checkpoint whose tree was rewritten.
    let path = dir.join("log.jsonl");
    let orig = std::fs::read_to_string(&path).expect("read");
    let edited = orig.replacen("\"i\":10,", "\"i\":11,", 1);
    assert_ne!(orig, edited);
    std::fs::write(&path, edited).expect("write");
    let (ok, text) = go_xcheck(&dir);
    assert!(!ok, "Go accepted an edited log: {text}");
    assert!(verify::verify_dir(&dir, &verify::Options::default()).is_err());
}
