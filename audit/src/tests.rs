use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::log::{ENTRIES, LATEST_CHECKPOINT, RECEIPTS, VERIFIER_KEY};
use crate::note::{Signer, TlogProof, Verifier};
use crate::verify::{self, Options as VerifyOptions};
use crate::{AuditLog, Event, Options};

const NAME: &str = "byoc-agent/audit/test-agent";

fn key(dir: &Path) -> Signer {
    crate::load_or_create_key(&dir.join("audit.key"), NAME).expect("key").0
}

fn opts(every: u64) -> Options {
    Options {
        checkpoint_every: every,
        checkpoint_interval: Duration::from_secs(3600),
    }
}

/// Writes `n` events; every third is an operation outcome (gets a receipt).
async fn write_log(dir: &Path, n: usize, every: u64) {
    let log = AuditLog::open(&dir.join("audit"), key(dir), opts(every)).expect("open");
    for i in 0..n {
        let kind = if i % 3 == 2 {
            "operation.finished"
        } else {
            "operation.received"
        };
        log.record(Event::new(kind, Some(&format!("op-{i}")), json!({"i": i})))
            .await
            .expect("record");
    }
    log.close().await.expect("close");
}

fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("audit").join(ENTRIES))
        .expect("read")
        .lines()
        .map(str::to_string)
        .collect()
}

fn put(dir: &Path, lines: &[String]) {
    std::fs::write(dir.join("audit").join(ENTRIES), lines.join("\n") + "\n").expect("write");
}

fn check(dir: &Path) -> Result<verify::Summary, verify::Failure> {
    verify::verify_dir(&dir.join("audit"), &VerifyOptions::default())
}

#[tokio::test]
async fn log_verifies_with_checkpoints_and_receipts_and_continues_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 25, 10).await;
    write_log(dir.path(), 7, 10).await;
    let s = check(dir.path()).expect("verifies");
    // 32 events; checkpoints after events 10, 20, at close (25), after 30+..., at close.
    assert_eq!(s.entries - s.checkpoints, 32);
    assert!(s.checkpoints >= 4, "{s:?}");
    assert_eq!(s.unsigned_tail, 0, "close signs everything");
    let outcomes = (0..25).filter(|i| i % 3 == 2).count() + (0..7).filter(|i| i % 3 == 2).count();
    assert_eq!(s.receipts, outcomes as u64);
    // The newest checkpoint file is a note over the whole log but its own entry.
    let vkey = std::fs::read_to_string(dir.path().join("audit").join(VERIFIER_KEY)).expect("vkey");
    let v = Verifier::parse(&vkey).expect("parses");
    let note = std::fs::read_to_string(dir.path().join("audit").join(LATEST_CHECKPOINT)).expect("cp");
    let cp = crate::note::Checkpoint::parse(v.open(&note).expect("signed")).expect("checkpoint");
    assert_eq!(cp.size, s.entries - 1);
}

#[tokio::test]
async fn a_receipt_is_a_self_contained_tlog_proof() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 6, 1000).await;
    let proofs = crate::export::receipts_for(&dir.path().join("audit"), "op-5").expect("receipts");
    assert_eq!(proofs.len(), 1);
    let p = TlogProof::parse(&proofs[0]).expect("tlog-proof");
    let vkey = std::fs::read_to_string(dir.path().join("audit").join(VERIFIER_KEY)).expect("vkey");
    let cp = crate::note::Checkpoint::parse(
        Verifier::parse(&vkey)
            .expect("vkey")
            .open(&p.checkpoint)
            .expect("signed"),
    )
    .expect("checkpoint");
    let entry = p.extra.expect("the entry travels in the proof");
    assert!(String::from_utf8_lossy(&entry).contains("\"op-5\""));
    assert!(crate::merkle::verify_inclusion(
        &crate::merkle::leaf_hash(&entry),
        p.index,
        cp.size,
        &p.proof,
        &cp.root
    ));
}

#[tokio::test]
async fn each_kind_of_tampering_is_named_at_its_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 30, 8).await;
    let orig = lines(dir.path());
    check(dir.path()).expect("verifies before");

    // One byte of entry 4's detail.
    let mut l = orig.clone();
    l[4] = l[4].replacen("\"i\":4", "\"i\":5", 1);
    put(dir.path(), &l);
    let f = check(dir.path()).expect_err("edit");
    assert_eq!(f.entry, 4, "{f}");
    assert!(f.reason.contains("was changed"), "{f}");

    // Entry 6 deleted.
    let mut l = orig.clone();
    l.remove(6);
    put(dir.path(), &l);
    let f = check(dir.path()).expect_err("deletion");
    assert_eq!(f.entry, 6, "{f}");
    assert!(f.reason.contains("missing"), "{f}");

    // Entries 2 and 3 swapped.
    let mut l = orig.clone();
    l.swap(2, 3);
    put(dir.path(), &l);
    let f = check(dir.path()).expect_err("reorder");
    assert_eq!(f.entry, 2, "{f}");

    // The last 5 entries cut off (the newest checkpoint file remains).
    let l = orig[..orig.len() - 5].to_vec();
    put(dir.path(), &l);
    let f = check(dir.path()).expect_err("truncation");
    assert_eq!(f.entry, l.len() as u64, "{f}");
    assert!(f.reason.contains("truncated") || f.reason.contains("cut off"), "{f}");

    // A whole rewrite with recomputed links is caught by the signatures.
    let mut l = orig.clone();
    l[1] = l[1].replacen("\"i\":1", "\"i\":9", 1);
    let mut prev = [0u8; 32];
    for line in l.iter_mut() {
        let mut v: serde_json::Value = serde_json::from_str(line).expect("json");
        v["prev"] = json!(hex::encode(prev));
        // Same field order as the writer.
        let e: crate::Entry = serde_json::from_value(v).expect("entry");
        *line = serde_json::to_string(&e).expect("ser");
        prev = crate::merkle::leaf_hash(line.as_bytes());
    }
    put(dir.path(), &l);
    let f = check(dir.path()).expect_err("rewrite");
    assert!(
        f.reason.contains("not the ones it signed") || f.reason.contains("receipt"),
        "{f}"
    );

    // Restored, it verifies again.
    put(dir.path(), &orig);
    check(dir.path()).expect("verifies after");
}

#[tokio::test]
async fn a_trusted_checkpoint_catches_a_log_cut_back_with_its_checkpoint_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 12, 5).await;
    let audit = dir.path().join("audit");
    let kept = std::fs::read_to_string(audit.join(LATEST_CHECKPOINT)).expect("cp");
    let orig = lines(dir.path());
    // Cut back to the first checkpoint (entry 5), and remove every file that
    // would give it away.
    put(dir.path(), &orig[..6]);
    std::fs::remove_file(audit.join(LATEST_CHECKPOINT)).expect("rm");
    std::fs::remove_file(audit.join(RECEIPTS)).expect("rm");
    check(dir.path()).expect("a consistent prefix verifies on its own");
    let f = verify::verify_dir(
        &audit,
        &VerifyOptions {
            key: None,
            trusted_checkpoints: vec![kept],
            ..Default::default()
        },
    )
    .expect_err("caught");
    assert_eq!(f.entry, 6, "{f}");
}

#[tokio::test]
async fn a_foreign_key_is_refused_by_the_writer_and_the_verifier() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 3, 1000).await;
    let (other, _) = Signer::generate(NAME).expect("key");
    match AuditLog::open(&dir.path().join("audit"), other, opts(1000)) {
        Err(crate::AuditError::KeyMismatch { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened with another key"),
    }
    let (other, _) = Signer::generate(NAME).expect("key");
    let f = verify::verify_dir(
        &dir.path().join("audit"),
        &VerifyOptions {
            key: Some(Verifier::parse(&other.verifier_key()).expect("vkey")),
            trusted_checkpoints: vec![],
            ..Default::default()
        },
    )
    .expect_err("another key");
    assert!(
        f.reason.contains("not signed by") || f.reason.contains("signature"),
        "{f}"
    );
}

#[tokio::test]
async fn entries_left_unsigned_by_a_crash_are_signed_at_the_next_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit");
    {
        let log = AuditLog::open(&audit, key(dir.path()), opts(1000)).expect("open");
        for i in 0..4 {
            log.record(Event::new("operation.finished", Some(&format!("op-{i}")), json!({})))
                .await
                .expect("record");
        }
        // No close: as if killed.
    }
    // Chained but never signed: nothing proves who wrote it, so it does not
    // verify (a fabricated log would look just the same).
    let f = check(dir.path()).expect_err("no checkpoint: not proven");
    assert_eq!(f.entry, 0);
    assert!(
        f.reason.contains("no checkpoint signs any of the log's 4 entries"),
        "{f}"
    );
    let log = AuditLog::open(&audit, key(dir.path()), opts(1000)).expect("reopen");
    log.record(Event::new("agent.started", None, json!({})))
        .await
        .expect("record");
    let s = check(dir.path()).expect("verifies");
    assert_eq!(s.checkpoints, 1, "the crashed tail was signed first");
    assert_eq!(s.signed_size, 4);
    assert_eq!(s.receipts, 4);
}

#[tokio::test]
async fn the_interval_signs_an_idle_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit");
    let log = AuditLog::open(
        &audit,
        key(dir.path()),
        Options {
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_millis(200),
        },
    )
    .expect("open");
    log.record(Event::new("agent.started", None, json!({})))
        .await
        .expect("record");
    let mut signed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Until the interval signs it, the lone entry does not verify.
        if check(dir.path()).is_ok_and(|s| s.checkpoints == 1) {
            signed = true;
            break;
        }
    }
    assert!(signed, "no checkpoint within 5 s of a 200 ms interval");
}

#[tokio::test]
async fn a_record_queued_before_the_next_is_durable_once_the_next_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::open(&dir.path().join("audit"), key(dir.path()), opts(1000)).expect("open");
    log.record_before_next(Event::new("operation.started", Some("op-1"), json!({})))
        .expect("queue");
    let r = log
        .record(Event::new("provider.call", Some("op-1"), json!({})))
        .await
        .expect("record");
    assert_eq!(r.seq, 1, "the queued record took the sequence before it");
    let l = lines(dir.path());
    assert!(l[0].contains("operation.started") && l[1].contains("provider.call"));
}

#[test]
fn the_damaged_end_of_a_log_is_refused_not_continued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit");
    std::fs::create_dir_all(&audit).expect("mkdir");
    std::fs::write(audit.join(ENTRIES), "{\"seq\":0,\"garbage\n").expect("write");
    let k = key(dir.path());
    match AuditLog::open(&audit, k, opts(10)) {
        Err(crate::AuditError::Damaged { reason, .. }) => assert!(reason.contains("parse"), "{reason}"),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("continued a damaged log"),
    }
}

#[tokio::test]
async fn an_unsigned_tail_longer_than_the_writers_bound_does_not_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit");
    {
        let log = AuditLog::open(&audit, key(dir.path()), opts(1000)).expect("open");
        log.record(Event::new("agent.enrolled", None, json!({})))
            .await
            .expect("record");
        log.close().await.expect("signed");
        for i in 0..5 {
            log.record(Event::new("operation.finished", Some(&format!("op-{i}")), json!({})))
                .await
                .expect("record");
        }
        // No close: five entries after the checkpoint, unsigned.
    }
    let with_bound = |max| {
        crate::verify::verify_dir(
            &audit,
            &VerifyOptions {
                max_unsigned: Some(max),
                ..Default::default()
            },
        )
    };
    let s = with_bound(5).expect("within the bound");
    assert_eq!(s.unsigned_tail, 5);
    let f = with_bound(4).expect_err("beyond the bound");
    assert_eq!(
        f.entry, 2,
        "the first unsigned entry (after the enrollment and its checkpoint)"
    );
    assert!(
        f.reason
            .contains("the last 5 entries, from this one on, are chained but not signed"),
        "{f}"
    );
}

#[tokio::test]
async fn a_relabelled_receipt_does_not_verify_and_is_not_shown_as_the_other_operation() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 6, 1000).await;
    let audit = dir.path().join("audit");
    let receipts = audit.join(RECEIPTS);
    let text = std::fs::read_to_string(&receipts).expect("receipts");
    // Operation op-2's receipt, labelled as op-5's; op-5's own taken out.
    let relabelled: String = text
        .lines()
        .filter(|l| !l.contains("\"op\":\"op-5\""))
        .map(|l| l.replace("\"op\":\"op-2\"", "\"op\":\"op-5\""))
        .map(|l| l + "\n")
        .collect();
    assert_ne!(relabelled, text);
    std::fs::write(&receipts, relabelled).expect("write");
    let f = check(dir.path()).expect_err("a relabelled receipt");
    assert!(
        f.reason
            .contains("the receipt says it is of operation op-5, but the entry it proves is of operation op-2"),
        "{f}"
    );
    assert!(
        crate::export::receipts_for(&audit, "op-5")
            .expect("receipts")
            .is_empty(),
        "op-2's receipt is not shown as op-5's"
    );
}

#[tokio::test]
async fn a_rolled_back_log_is_not_continued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit");
    write_log(dir.path(), 4, 1000).await;
    let snapshot = std::fs::read(audit.join(ENTRIES)).expect("snapshot");
    write_log(dir.path(), 6, 1000).await;
    // The host is restored from the snapshot: the log goes back, the
    // checkpoint file and receipts written since stay.
    std::fs::write(audit.join(ENTRIES), &snapshot).expect("restore");
    let err = AuditLog::open(&audit, key(dir.path()), opts(1000))
        .err()
        .expect("a rolled-back log is refused");
    assert!(matches!(err, crate::AuditError::RolledBack { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("the log was rolled back"), "{msg}");
    // Nothing was written: the proof of the longer tree is still there.
    assert_eq!(std::fs::read(audit.join(ENTRIES)).expect("log"), snapshot);
    // Receipts alone prove it too.
    std::fs::remove_file(audit.join(LATEST_CHECKPOINT)).expect("rm checkpoint");
    let err = AuditLog::open(&audit, key(dir.path()), opts(1000))
        .err()
        .expect("refused by a receipt");
    assert!(err.to_string().contains("the receipt of entry"), "{err}");
}

#[test]
fn a_signing_key_others_can_read_is_refused_and_a_loose_log_directory_is_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.key");
    crate::load_or_create_key(&path, "byoc-agent/audit/t").expect("made");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let Err(err) = crate::load_or_create_key(&path, "byoc-agent/audit/t") else {
        panic!("a key others can read must be refused");
    };
    assert!(
        err.to_string()
            .contains("mode 0644 lets other users read the audit signing key"),
        "{err}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (signer, made) = crate::load_or_create_key(&path, "byoc-agent/audit/t").expect("accepted at 0600");
    assert!(!made);

    let audit = dir.path().join("audit");
    std::fs::create_dir(&audit).expect("mkdir");
    std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    drop(AuditLog::open(&audit, signer, opts(1000)).expect("open"));
    let mode = std::fs::metadata(&audit).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}
