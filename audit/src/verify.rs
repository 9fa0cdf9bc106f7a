//! Offline verification of an audit log, with no network and no trust in the
//! writer: recompute every hash and check the chain.

use std::io::BufRead;
use std::path::Path;

use crate::log::{Entry, GENESIS, entry_hash};

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub entries: u64,
    /// Hex hash of the last entry: the head a later check can compare against.
    pub head: String,
}

/// The first problem found, with the line (1-based) and sequence it is at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} (entry {expected_seq}): {reason}")]
pub struct Failure {
    pub line: u64,
    pub expected_seq: u64,
    pub reason: String,
}

/// Verifies the log at `path`. Detects any edit, deletion, insertion or
/// reordering of entries. Cutting entries off the end leaves a valid shorter
/// chain: compare `Summary::head` with a head recorded elsewhere to detect it.
pub fn verify_file(path: &Path) -> Result<Summary, Failure> {
    let file = std::fs::File::open(path).map_err(|e| Failure {
        line: 0,
        expected_seq: 0,
        reason: format!("cannot open {}: {e}", path.display()),
    })?;
    let mut prev = GENESIS;
    let mut n: u64 = 0;
    for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let fail = |reason: String| Failure {
            line: i as u64 + 1,
            expected_seq: n,
            reason,
        };
        let line = line.map_err(|e| fail(format!("read error: {e}")))?;
        prev = verify_line(&line, n, &prev).map_err(fail)?;
        n += 1;
    }
    Ok(Summary {
        entries: n,
        head: hex::encode(prev),
    })
}

/// Checks one line against the expected sequence and previous hash; returns its hash.
pub fn verify_line(line: &[u8], seq: u64, prev: &[u8; 32]) -> Result<[u8; 32], String> {
    const MARK: &[u8] = b",\"hash\":\"";
    let entry: Entry = serde_json::from_slice(line).map_err(|e| format!("not a valid entry: {e}"))?;
    if entry.seq != seq {
        return Err(format!(
            "sequence is {}, expected {seq}: an entry was removed, added or moved",
            entry.seq
        ));
    }
    if entry.prev != hex::encode(prev) {
        return Err("prev does not match the hash of the entry before: an entry was removed, added or moved".into());
    }
    // The body is the line up to the hash field, closed again.
    let tail_len = MARK.len() + 64 + 2;
    if line.len() < tail_len || &line[line.len() - tail_len..line.len() - 66] != MARK || !line.ends_with(b"\"}") {
        return Err("the hash field is not the last field of the entry".into());
    }
    let mut body = line[..line.len() - tail_len].to_vec();
    body.push(b'}');
    let computed = entry_hash(prev, &body);
    if hex::encode(computed) != entry.hash {
        return Err("hash does not match the entry's contents: the entry was edited".into());
    }
    Ok(computed)
}
