//! Reading a log for people and other tools: `audit show`, `audit export`
//! (JSON lines for a SIEM) and the receipts of an operation.

use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::{Map, Value};

use crate::log::{ENTRIES, RECEIPTS, VERIFIER_KEY};
use crate::merkle;

/// Calls `f` with each entry of the log in `dir` (as JSON) and its leaf hash.
/// Stops at the first line that is not an entry, naming it.
pub fn for_each_entry(
    dir: &Path,
    mut f: impl FnMut(Map<String, Value>, merkle::Hash) -> std::io::Result<()>,
) -> Result<u64> {
    let path = dir.join(ENTRIES);
    let file = std::fs::File::open(&path).map_err(|e| ReadError(format!("cannot open {}: {e}", path.display())))?;
    let mut n = 0u64;
    for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|e| ReadError(format!("reading {}: {e}", path.display())))?;
        let entry: Map<String, Value> = serde_json::from_slice(&line)
            .map_err(|e| ReadError(format!("{} line {} is not an audit entry: {e}", path.display(), i + 1)))?;
        f(entry, merkle::leaf_hash(&line)).map_err(|e| ReadError(format!("writing: {e}")))?;
        n += 1;
    }
    Ok(n)
}

/// Writes every entry from `from` on as one JSON object per line, with the
/// log's name (`log`), the entry's `index` and `leaf_hash` added, for a SIEM.
pub fn export(dir: &Path, from: u64, out: &mut impl Write) -> Result<u64> {
    let log = std::fs::read_to_string(dir.join(VERIFIER_KEY))
        .ok()
        .and_then(|k| k.split('+').next().map(str::to_string))
        .unwrap_or_default();
    let mut written = 0;
    for_each_entry(dir, |entry, leaf| {
        let seq = entry.get("seq").and_then(Value::as_u64).unwrap_or_default();
        if seq < from {
            return Ok(());
        }
        let mut obj = Map::new();
        obj.insert("log".into(), Value::String(log.clone()));
        obj.insert("index".into(), Value::from(seq));
        obj.insert("leaf_hash".into(), Value::String(hex::encode(leaf)));
        obj.extend(entry);
        serde_json::to_writer(&mut *out, &obj)?;
        out.write_all(b"\n")?;
        written += 1;
        Ok(())
    })?;
    Ok(written)
}

/// The `tlog-proof` receipts of operation `op` (none until a checkpoint covers
/// its outcome): those whose entry, in the log, is of `op`. A receipt's own
/// `op` label is not trusted alone (relabelled, it would show operation A's
/// outcome as B's); both must agree.
pub fn receipts_for(dir: &Path, op: &str) -> Result<Vec<String>> {
    let path = dir.join(RECEIPTS);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ReadError(format!("cannot read {}: {e}", path.display()))),
    };
    let mut entries = std::collections::HashSet::new();
    for_each_entry(dir, |e, _| {
        if e.get("op").and_then(Value::as_str) == Some(op) {
            entries.insert(e.get("seq").and_then(Value::as_u64).unwrap_or(u64::MAX));
        }
        Ok(())
    })?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["op"] == op && v["index"].as_u64().is_some_and(|i| entries.contains(&i)))
        .filter_map(|v| v["proof"].as_str().map(str::to_string))
        .collect())
}

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReadError(pub String);

type Result<T> = std::result::Result<T, ReadError>;
