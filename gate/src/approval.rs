//! Local approvals: the files through which `byoc-agent approve` / `reject`
//! reach the running agent, which has no listener of any kind.
//!
//! ```text
//! data_dir/approvals/pending/<op>.json    written by the agent: an operation held for
//!                                         approval, its plan, when it expires
//! data_dir/approvals/decisions/<op>.json  written by `approve` / `reject` on the host:
//!                                         the decision, who, why, when
//! ```
//!
//! The agent polls for a decision of each operation it holds; both files are
//! removed once the operation has finished (and, at start, for operations the
//! journal no longer holds). Each file is written atomically and durably
//! (`byoc_wal::write_atomic`). The agent audits every decision with the
//! user's name and the uid that owns the decision file; the CLI cannot write
//! the audit log, which has one writer.
//!
//! The hold is durable twice over: the journal records that the operation
//! needs approval (so a crash before the hold file exists holds it again), and
//! the hold file keeps its plan and its window across restarts.

use std::path::{Path, PathBuf};

use byoc_provider::Plan;
use serde::{Deserialize, Serialize};

/// An operation held for approval (`pending/<op>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub operation_id: String,
    pub sequence: u64,
    pub action: String,
    pub kind: String,
    pub name: String,
    /// The policy rule that asked for approval.
    pub rule: String,
    pub received_at_unix_ms: i64,
    /// Not approved by then: refused, `approval_expired`.
    pub expires_at_unix_ms: i64,
    /// What the operation would do; None while the agent is still planning.
    #[serde(default)]
    pub plan: Option<Plan>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    Approve,
    Reject,
}

/// A local decision (`decisions/<op>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalDecision {
    pub decision: Choice,
    /// `$SUDO_USER` or `$USER` of whoever ran the command.
    pub user: String,
    #[serde(default)]
    pub reason: String,
    pub at_unix_ms: i64,
}

/// A decision as the agent read it, with the uid that owns its file (what
/// the kernel says, unlike the name, which comes from the environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub decision: LocalDecision,
    pub uid: Option<u32>,
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("approvals")
}

/// A file name for an operation id, distinct for distinct ids and within
/// file-name limits (ids come from the control plane: none may name another
/// path or another operation's file):
/// - the id itself when it is plainly safe and does not begin like one of
///   the two encoded forms (`op-1.json`);
/// - else its hex, when that is short enough (`hex-6f702e31.json` for `op.1`);
/// - else the hex of its SHA-256 (`sha256-….json`), for ids too long for
///   either (the file holds the full id).
fn file_name(op_id: &str) -> String {
    const MAX_PLAIN: usize = 128;
    const MAX_HEX: usize = 100; // "hex-" + 200 + ".json" < 255 bytes
    let safe = !op_id.is_empty()
        && op_id.len() <= MAX_PLAIN
        && !op_id.starts_with('.')
        && !op_id.starts_with("hex-")
        && !op_id.starts_with("sha256-")
        && op_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if safe {
        format!("{op_id}.json")
    } else if op_id.len() <= MAX_HEX {
        format!("hex-{}.json", hex::encode(op_id))
    } else {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, op_id.as_bytes());
        format!("sha256-{}.json", hex::encode(digest.as_ref()))
    }
}

pub fn hold_path(data_dir: &Path, op_id: &str) -> PathBuf {
    dir(data_dir).join("pending").join(file_name(op_id))
}

pub fn decision_path(data_dir: &Path, op_id: &str) -> PathBuf {
    dir(data_dir).join("decisions").join(file_name(op_id))
}

fn create_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) => std::fs::create_dir_all(parent),
        None => Ok(()),
    }
}

/// Creates the directories at the agent's start, owned by the agent's user
/// and closed to everyone else: only that user (and root) may approve.
pub fn prepare(data_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let root = dir(data_dir);
    for d in [root.clone(), root.join("pending"), root.join("decisions")] {
        std::fs::create_dir_all(&d)?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes (or rewrites) a hold, durably.
pub fn write_hold(data_dir: &Path, hold: &Hold) -> std::io::Result<()> {
    let path = hold_path(data_dir, &hold.operation_id);
    create_dir(&path)?;
    let bytes = serde_json::to_vec_pretty(hold).map_err(std::io::Error::other)?;
    byoc_wal::write_atomic(&path, &bytes, 0o600)
}

pub fn read_hold(data_dir: &Path, op_id: &str) -> Option<Hold> {
    let bytes = std::fs::read(hold_path(data_dir, op_id)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every held operation, oldest first.
pub fn list(data_dir: &Path) -> std::io::Result<Vec<Hold>> {
    let pending = dir(data_dir).join("pending");
    let entries = match std::fs::read_dir(&pending) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut holds = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Ok(bytes) = std::fs::read(&path)
            && let Ok(h) = serde_json::from_slice::<Hold>(&bytes)
        {
            holds.push(h);
        }
    }
    holds.sort_by_key(|h| (h.received_at_unix_ms, h.sequence));
    Ok(holds)
}

/// The decision for `op_id`, if one was made. An unreadable or damaged file
/// is no decision (an approval fails closed); the error says why.
pub fn read_decision(data_dir: &Path, op_id: &str) -> Result<Option<Decided>, DecisionFileError> {
    use std::os::unix::fs::MetadataExt as _;
    let path = decision_path(data_dir, op_id);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(DecisionFileError::Read { path, source }),
    };
    let decision = serde_json::from_slice(&bytes).map_err(|source| DecisionFileError::Invalid {
        path: path.clone(),
        source,
    })?;
    let uid = std::fs::metadata(&path).ok().map(|m| m.uid());
    Ok(Some(Decided { decision, uid }))
}

/// A decision file that is there but cannot be used (no decision: an
/// approval fails closed).
#[derive(Debug, thiserror::Error)]
pub enum DecisionFileError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a decision", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Forgets an operation's hold and decision (it has finished).
pub fn remove(data_dir: &Path, op_id: &str) {
    for p in [hold_path(data_dir, op_id), decision_path(data_dir, op_id)] {
        let _ = std::fs::remove_file(p);
    }
}

/// Removes holds and decisions of operations not in `live` (operation ids the
/// journal still holds for approval): they finished before their files were
/// removed, or the files are strays.
pub fn gc(data_dir: &Path, live: &[String]) {
    let keep: std::collections::HashSet<String> = live.iter().map(|id| file_name(id)).collect();
    for sub in ["pending", "decisions"] {
        let Ok(entries) = std::fs::read_dir(dir(data_dir).join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no operation {0} is awaiting approval on this agent (`byoc-agent approvals` lists those that are)")]
    NotHeld(String),
    #[error("operation {0} is still being planned; look at its plan with `byoc-agent approvals` in a moment")]
    NotPlanned(String),
    #[error("the approval window of operation {op} closed at {at}; the agent refuses it as approval_expired")]
    Expired { op: String, at: String },
    #[error("operation {op} was already {verdict} by {user}")]
    AlreadyDecided {
        op: String,
        verdict: &'static str,
        user: String,
    },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// `byoc-agent approve` / `reject`: records the local user's decision for the
/// running agent to pick up. Returns the hold it decided.
pub fn decide(data_dir: &Path, op_id: &str, verdict: Choice, reason: &str, now_ms: i64) -> Result<Hold, DecideError> {
    let hold = read_hold(data_dir, op_id).ok_or_else(|| DecideError::NotHeld(op_id.to_string()))?;
    if hold.plan.is_none() {
        return Err(DecideError::NotPlanned(op_id.to_string()));
    }
    if now_ms >= hold.expires_at_unix_ms {
        return Err(DecideError::Expired {
            op: op_id.to_string(),
            at: fmt_ms(hold.expires_at_unix_ms),
        });
    }
    if let Ok(Some(d)) = read_decision(data_dir, op_id) {
        return Err(DecideError::AlreadyDecided {
            op: op_id.to_string(),
            verdict: match d.decision.decision {
                Choice::Approve => "approved",
                Choice::Reject => "rejected",
            },
            user: d.decision.user,
        });
    }
    let decision = LocalDecision {
        decision: verdict,
        user: crate::localuser::name(),
        reason: reason.to_string(),
        at_unix_ms: now_ms,
    };
    let path = decision_path(data_dir, op_id);
    let write = |source| DecideError::Write {
        path: path.display().to_string(),
        source,
    };
    create_dir(&path).map_err(write)?;
    let bytes = serde_json::to_vec_pretty(&decision).map_err(|e| write(std::io::Error::other(e)))?;
    // Readable by the agent's user even when written by root (sudo).
    byoc_wal::write_atomic(&path, &bytes, 0o644).map_err(write)?;
    Ok(hold)
}

/// RFC 3339, seconds.
pub fn fmt_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)).to_string()
}

/// The plan as lines a person reads: `kind path: from -> to`.
pub fn plan_lines(plan: &Plan) -> Vec<String> {
    if plan.changes.is_empty() {
        return vec!["no change".into()];
    }
    let summary = serde_json::to_value(plan.summary)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    plan.changes
        .iter()
        .map(|c| {
            let path = if c.path.is_empty() { "(resource)" } else { &c.path };
            let show = |v: &Option<serde_json::Value>| v.as_ref().map_or("-".to_string(), |v| v.to_string());
            format!("{summary} {path}: {} -> {}", show(&c.from), show(&c.to))
        })
        .collect()
}

/// `byoc-agent approvals`: the held operations, with their plans.
pub fn print_list(data_dir: &Path, json: bool, now_ms: i64) -> std::io::Result<()> {
    let holds = list(data_dir)?;
    if json {
        let v: Vec<serde_json::Value> = holds
            .iter()
            .map(|h| {
                let mut v = serde_json::to_value(h).unwrap_or_default();
                v["state"] = state(data_dir, h, now_ms).into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).map_err(std::io::Error::other)?);
        return Ok(());
    }
    if holds.is_empty() {
        println!("no operation is awaiting approval");
        return Ok(());
    }
    println!(
        "{:<22} {:<7} {:<10} {:<24} {:<21} {:<21} STATE",
        "OPERATION", "ACTION", "KIND", "NAME", "RECEIVED", "EXPIRES"
    );
    for h in &holds {
        println!(
            "{:<22} {:<7} {:<10} {:<24} {:<21} {:<21} {}",
            h.operation_id,
            h.action,
            h.kind,
            h.name,
            fmt_ms(h.received_at_unix_ms),
            fmt_ms(h.expires_at_unix_ms),
            state(data_dir, h, now_ms),
        );
        println!("    rule: {}", h.rule);
        match &h.plan {
            Some(p) => plan_lines(p).iter().for_each(|l| println!("    {l}")),
            None => println!("    (planning)"),
        }
    }
    Ok(())
}

fn state(data_dir: &Path, h: &Hold, now_ms: i64) -> String {
    match read_decision(data_dir, &h.operation_id) {
        Ok(Some(d)) => match d.decision.decision {
            Choice::Approve => format!("approved by {}", d.decision.user),
            Choice::Reject => format!("rejected by {}", d.decision.user),
        },
        Err(e) => format!("unreadable decision: {e}"),
        Ok(None) if h.plan.is_none() => "planning".into(),
        Ok(None) if now_ms >= h.expires_at_unix_ms => "expired".into(),
        Ok(None) => "awaiting approval".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(op: &str, expires: i64) -> Hold {
        Hold {
            operation_id: op.into(),
            sequence: 3,
            action: "delete".into(),
            kind: "database".into(),
            name: "orders".into(),
            rule: "default.database_delete_needs_approval".into(),
            received_at_unix_ms: 1_000,
            expires_at_unix_ms: expires,
            plan: Some(Plan::no_change()),
        }
    }

    #[test]
    fn a_decision_needs_a_planned_unexpired_undecided_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        assert!(matches!(
            decide(d, "op-1", Choice::Approve, "", 2_000),
            Err(DecideError::NotHeld(_))
        ));
        let mut h = hold("op-1", 10_000);
        h.plan = None;
        write_hold(d, &h).expect("write");
        assert!(matches!(
            decide(d, "op-1", Choice::Approve, "", 2_000),
            Err(DecideError::NotPlanned(_))
        ));
        write_hold(d, &hold("op-1", 10_000)).expect("write");
        assert!(matches!(
            decide(d, "op-1", Choice::Approve, "", 10_000),
            Err(DecideError::Expired { .. })
        ));
        decide(d, "op-1", Choice::Reject, "not now", 2_000).expect("decide");
        let got = read_decision(d, "op-1").expect("readable").expect("decided");
        assert_eq!(got.decision.decision, Choice::Reject);
        assert_eq!(got.decision.reason, "not now");
        assert_eq!(got.uid, crate::localuser::uid());
        assert!(matches!(
            decide(d, "op-1", Choice::Approve, "", 2_000),
            Err(DecideError::AlreadyDecided {
                verdict: "rejected",
                ..
            })
        ));
        assert_eq!(list(d).expect("list"), vec![hold("op-1", 10_000)]);
        remove(d, "op-1");
        assert!(list(d).expect("list").is_empty());
        assert_eq!(read_decision(d, "op-1").expect("readable"), None);
    }

    #[test]
    fn operation_ids_cannot_name_other_paths() {
        let d = Path::new("/data");
        assert_eq!(hold_path(d, "op-1a"), Path::new("/data/approvals/pending/op-1a.json"));
        for evil in ["../../etc/passwd", ".hidden", "a/b", ""] {
            let p = hold_path(d, evil);
            assert_eq!(p.parent(), Some(Path::new("/data/approvals/pending")), "{evil}");
            assert!(p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("hex-")));
        }
    }

    #[test]
    fn distinct_ids_get_distinct_file_names_within_limits() {
        let d = Path::new("/data");
        let name = |id: &str| {
            hold_path(d, id)
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        };
        // `op.1` is encoded as hex-6f702e31; an id that is literally that
        // text must not share its file.
        assert_eq!(name("op.1"), "hex-6f702e31.json");
        assert_ne!(name("hex-6f702e31"), name("op.1"));
        assert_ne!(name("sha256-00"), "sha256-00.json");
        assert_eq!(name("op-1"), "op-1.json");
        // Long ids stay within a file name's 255 bytes, and stay distinct.
        let long_a = "a".repeat(4096);
        let long_b = format!("{}b", "a".repeat(4095));
        let weird = "é/".repeat(300);
        for id in [&long_a, &long_b, &weird, &"x".repeat(129), &"y.".repeat(60)] {
            assert!(
                name(id).len() <= 255,
                "{} bytes for an id of {}",
                name(id).len(),
                id.len()
            );
        }
        assert_ne!(name(&long_a), name(&long_b));
        // And a long one really is written and read back.
        let dir = tempfile::tempdir().expect("tempdir");
        write_hold(dir.path(), &hold(&long_a, 10_000)).expect("write a hold with a 4 KiB id");
        decide(dir.path(), &long_a, Choice::Approve, "", 2_000).expect("decide");
        assert!(read_decision(dir.path(), &long_a).expect("read").is_some());
    }

    #[test]
    fn gc_keeps_only_live_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for op in ["op-live", "op-done"] {
            write_hold(d, &hold(op, 10_000)).expect("write");
            decide(d, op, Choice::Approve, "", 2_000).expect("decide");
        }
        gc(d, &["op-live".to_string()]);
        let left: Vec<String> = list(d).expect("list").into_iter().map(|h| h.operation_id).collect();
        assert_eq!(left, ["op-live"]);
        assert!(read_decision(d, "op-live").expect("ok").is_some());
        assert!(read_decision(d, "op-done").expect("ok").is_none());
    }

    #[test]
    fn plans_read_as_lines() {
        let plan = Plan {
            summary: byoc_provider::PlanSummary::Update,
            changes: vec![byoc_provider::Change {
                path: "desired_size".into(),
                from: Some(2.into()),
                to: Some(4.into()),
                requires_replacement: false,
            }],
        };
        assert_eq!(plan_lines(&plan), ["update desired_size: 2 -> 4"]);
        assert_eq!(plan_lines(&Plan::no_change()), ["no change"]);
    }
}
