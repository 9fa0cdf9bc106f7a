//! Offline verification of an audit log directory, with no network and no
//! trust in the writer. One pass over the entries:
//!
//! - each entry parses, has the next sequence number and the leaf hash of
//!   the entry before it in `prev` (an edit, deletion, insertion or move is
//!   named at the first entry it breaks);
//! - each checkpoint entry's note is signed by the audit key, signs the tree
//!   of exactly the entries before it, with the head recomputed here, and is
//!   consistent with the checkpoint before it (RFC 6962 consistency proof);
//! - each receipt's inclusion proof holds against its signed checkpoint, for
//!   the entry at its index;
//! - the newest checkpoint file, and any checkpoint the caller kept
//!   elsewhere, sign a tree this log still contains: cutting entries off the
//!   end is detected.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use crate::log::{CHECKPOINT_KIND, ENTRIES, Entry, GENESIS, LATEST_CHECKPOINT, RECEIPTS, VERIFIER_KEY};
use crate::merkle::{self, Frontier, Hash, Recent};
use crate::note::{Checkpoint, TlogProof, Verifier};

/// What to verify against.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The verifier key to trust. Default: `verifier.key` beside the log,
    /// which proves nothing against someone who could rewrite the log; a
    /// compliance team passes the key it recorded at enrollment.
    pub key: Option<Verifier>,
    /// Checkpoint notes kept outside this host (e.g. copied to a SIEM): the
    /// log must still contain each tree they sign.
    pub trusted_checkpoints: Vec<String>,
    /// How many entries may follow the newest checkpoint unsigned. Default
    /// [`DEFAULT_MAX_UNSIGNED`], the writer's own bound: it signs at least
    /// that often, so a longer unsigned tail was not written by it (or its
    /// checkpoints were taken out) and is not accepted as proven.
    pub max_unsigned: Option<u64>,
}

/// The writer's default checkpoint bound (`checkpoint_every`).
pub const DEFAULT_MAX_UNSIGNED: u64 = 1000;

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub entries: u64,
    pub checkpoints: u64,
    pub receipts: u64,
    /// Entries after the newest checkpoint (signed at the next one).
    pub unsigned_tail: u64,
    /// Size and base64 head of the newest checkpoint.
    pub signed_size: u64,
    pub signed_root: String,
    pub key: String,
    pub key_from_log_dir: bool,
}

/// The first problem found: the entry it is at (0-based; for a truncation,
/// the first missing entry) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry {entry}: {reason}")]
pub struct Failure {
    pub entry: u64,
    pub reason: String,
}

fn fail(entry: u64, reason: impl Into<String>) -> Failure {
    Failure {
        entry,
        reason: reason.into(),
    }
}

/// The fields verification reads, borrowed: `detail` is only parsed for checkpoints.
#[derive(Deserialize)]
struct Head<'a> {
    seq: u64,
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    prev: std::borrow::Cow<'a, str>,
    /// The operation the entry is about; a receipt of it must name the same.
    #[serde(borrow, default)]
    op: Option<std::borrow::Cow<'a, str>>,
}

struct ReceiptCheck {
    op: String,
    proof: TlogProof,
    cp: Checkpoint,
}

/// `receipts.jsonl`, read alongside the log: the writer appends receipts in
/// the order of their entries, so one pass over both suffices and memory
/// stays bounded whatever the size of the log.
struct Receipts<R> {
    lines: R,
    line: u64,
    buf: String,
    /// Receipts made at one checkpoint share its note: each is verified once.
    opened: HashMap<String, Checkpoint>,
    next: Option<(u64, ReceiptCheck)>,
    count: u64,
}

impl<R: BufRead> Receipts<R> {
    fn new(lines: R) -> Self {
        Self {
            lines,
            line: 0,
            buf: String::new(),
            opened: HashMap::new(),
            next: None,
            count: 0,
        }
    }

    /// Reads the next receipt into `self.next` (None at the end).
    fn advance(&mut self, key: &Verifier) -> Result<(), Failure> {
        #[derive(Deserialize)]
        struct Line {
            op: String,
            index: u64,
            proof: String,
        }
        self.next = None;
        self.buf.clear();
        let read = self
            .lines
            .read_line(&mut self.buf)
            .map_err(|e| fail(0, format!("{RECEIPTS}: read error: {e}")))?;
        if read == 0 {
            return Ok(());
        }
        self.line += 1;
        let line_no = self.line;
        let bad = |why: String| fail(0, format!("{RECEIPTS} line {line_no}: {why}"));
        let r: Line =
            serde_json::from_str(self.buf.trim_end_matches('\n')).map_err(|e| bad(format!("not a receipt: {e}")))?;
        let proof = TlogProof::parse(&r.proof).map_err(|e| bad(e.0))?;
        if proof.index != r.index {
            return Err(bad("the proof's index is not the receipt's".into()));
        }
        let cp = match self.opened.get(&proof.checkpoint) {
            Some(cp) => cp.clone(),
            None => {
                let text = key
                    .open(&proof.checkpoint)
                    .map_err(|e| fail(r.index, format!("the receipt of operation {}: {e}", r.op)))?;
                let cp = Checkpoint::parse(text).map_err(|e| bad(e.0))?;
                if self.opened.len() > 4096 {
                    self.opened.clear();
                }
                self.opened.insert(proof.checkpoint.clone(), cp.clone());
                cp
            }
        };
        self.count += 1;
        self.next = Some((r.index, ReceiptCheck { op: r.op, proof, cp }));
        Ok(())
    }
}

/// Verifies the log in `dir` (see the module documentation).
pub fn verify_dir(dir: &Path, opts: &Options) -> Result<Summary, Failure> {
    let (key, key_from_log_dir) = match &opts.key {
        Some(k) => (k.clone(), false),
        None => {
            let p = dir.join(VERIFIER_KEY);
            let text = std::fs::read_to_string(&p).map_err(|e| fail(0, format!("cannot read {}: {e}", p.display())))?;
            (
                Verifier::parse(&text).map_err(|e| fail(0, format!("{}: {e}", p.display())))?,
                true,
            )
        }
    };
    let read_optional = |name: &str| -> Result<Option<String>, Failure> {
        let p = dir.join(name);
        match std::fs::read_to_string(&p) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fail(0, format!("cannot read {}: {e}", p.display()))),
        }
    };
    let latest = read_optional(LATEST_CHECKPOINT)?;
    let receipts: Box<dyn BufRead> = match std::fs::File::open(dir.join(RECEIPTS)) {
        Ok(f) => Box::new(std::io::BufReader::with_capacity(1 << 20, f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Box::new(std::io::empty()),
        Err(e) => return Err(fail(0, format!("cannot read {}: {e}", dir.join(RECEIPTS).display()))),
    };
    let path = dir.join(ENTRIES);
    let file = std::fs::File::open(&path).map_err(|e| fail(0, format!("cannot open {}: {e}", path.display())))?;
    let mut outside: Vec<(String, String)> = Vec::new();
    if let Some(note) = latest {
        outside.push((dir.join(LATEST_CHECKPOINT).display().to_string(), note));
    }
    for (i, note) in opts.trusted_checkpoints.iter().enumerate() {
        outside.push((format!("trusted checkpoint {}", i + 1), note.clone()));
    }
    let mut s = verify_log(
        std::io::BufReader::with_capacity(1 << 20, file),
        receipts,
        &outside,
        &key,
    )?;
    s.key_from_log_dir = key_from_log_dir;
    check_signed(&s, opts.max_unsigned.unwrap_or(DEFAULT_MAX_UNSIGNED))?;
    Ok(s)
}

/// The verification itself, on a log's contents: its entries (`log`), its
/// receipts (`receipts.jsonl`) and checkpoints kept apart from the log
/// (`(name, note)`: the `checkpoint` file, trusted copies).
pub fn verify_log(
    mut log: impl BufRead,
    receipts: impl BufRead,
    outside: &[(String, String)],
    key: &Verifier,
) -> Result<Summary, Failure> {
    let mut receipts = Receipts::new(receipts);
    receipts.advance(key)?;
    let mut tree = Frontier::default();
    let mut prev = GENESIS;
    let mut n: u64 = 0;
    // The newest checkpoint seen, its frontier and the leaves since.
    let mut last_cp: Option<Checkpoint> = None;
    let mut base = Frontier::default();
    let mut since: Vec<Hash> = Vec::new();
    let mut heads: HashMap<u64, Hash> = HashMap::new();
    let mut checkpoints = 0u64;
    // The trees receipts are against (size -> head, and the first receipt
    // naming it), matched with the log's checkpoints after the pass.
    let mut signed_by_receipts: HashMap<u64, (Hash, u64, String)> = HashMap::new();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);

    loop {
        buf.clear();
        let read = log
            .read_until(b'\n', &mut buf)
            .map_err(|e| fail(n, format!("read error: {e}")))?;
        if read == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let line = buf.as_slice();
        let head: Head = serde_json::from_slice(line).map_err(|e| fail(n, format!("not a valid entry: {e}")))?;
        if head.seq != n {
            let reason = if head.seq > n {
                format!(
                    "is missing: entry {} comes where entry {n} should be (entries were deleted)",
                    head.seq
                )
            } else {
                format!(
                    "entry {} comes where entry {n} should be (entries were moved or repeated)",
                    head.seq
                )
            };
            return Err(fail(n, reason));
        }
        let mut linked = [0u8; 32];
        if hex::decode_to_slice(head.prev.as_bytes(), &mut linked).is_err() || linked != prev {
            let at = n.saturating_sub(1);
            return Err(fail(
                at,
                format!("was changed: its hash no longer matches the `prev` recorded in entry {n}"),
            ));
        }
        if head.kind == CHECKPOINT_KIND {
            let e: Entry = serde_json::from_slice(line).map_err(|e| fail(n, format!("not a valid entry: {e}")))?;
            let note = e.detail["note"].as_str().unwrap_or_default();
            let text = key
                .open(note)
                .map_err(|err| fail(n, format!("checkpoint signature: {err}")))?;
            let cp = Checkpoint::parse(text).map_err(|err| fail(n, format!("checkpoint: {err}")))?;
            if cp.origin != key.name() {
                return Err(fail(
                    n,
                    format!("checkpoint origin {:?} is not the key's {:?}", cp.origin, key.name()),
                ));
            }
            if cp.size != n {
                return Err(fail(
                    n,
                    format!(
                        "the checkpoint signs {} entries; it must sign the {n} before it",
                        cp.size
                    ),
                ));
            }
            if cp.root != tree.root() {
                return Err(fail(
                    n,
                    format!(
                        "the entries before this checkpoint are not the ones it signed: entries after {} were rewritten",
                        last_cp.as_ref().map_or(0, |c| c.size)
                    ),
                ));
            }
            let frontier: Vec<String> = tree.hashes().iter().map(hex::encode).collect();
            if e.detail["frontier"] != serde_json::json!(frontier) {
                return Err(fail(n, "the checkpoint's frontier does not match the tree"));
            }
            if let Some(old) = &last_cp {
                let proof = merkle::consistency_proof(&mut Recent::new(&base, &since), old.size, cp.size);
                let ok = proof.is_some_and(|p| merkle::verify_consistency(old.size, cp.size, &old.root, &cp.root, &p));
                if !ok {
                    return Err(fail(
                        n,
                        format!("the checkpoint is not consistent with the one at size {}", old.size),
                    ));
                }
            }
            heads.insert(cp.size, cp.root);
            base = tree.clone();
            since.clear();
            last_cp = Some(cp);
            checkpoints += 1;
        }
        let leaf = merkle::leaf_hash(line);
        while let Some((index, r)) = receipts.next.take() {
            if index > n {
                receipts.next = Some((index, r));
                break;
            }
            if index < n {
                return Err(fail(
                    index,
                    format!(
                        "{RECEIPTS} line {}: the receipt of operation {} comes after receipts of later entries (receipts are in log order)",
                        receipts.line, r.op
                    ),
                ));
            }
            // A receipt is bound to its entry's operation: relabelled, it
            // would prove operation A's outcome as B's.
            if head.op.as_deref() != Some(r.op.as_str()) {
                return Err(fail(
                    n,
                    format!(
                        "{RECEIPTS} line {}: the receipt says it is of operation {}, but the entry it proves is {} \
                         (the receipt was relabelled)",
                        receipts.line,
                        r.op,
                        head.op
                            .as_deref()
                            .map_or("of no operation".to_string(), |o| format!("of operation {o}"))
                    ),
                ));
            }
            if r.proof.extra.as_deref().is_some_and(|x| x != line) {
                return Err(fail(
                    n,
                    format!("differs from the copy in the receipt of operation {}", r.op),
                ));
            }
            if !merkle::verify_inclusion(&leaf, n, r.cp.size, &r.proof.proof, &r.cp.root) {
                return Err(fail(
                    n,
                    format!("is not the entry the receipt of operation {} proves", r.op),
                ));
            }
            // The receipt's checkpoint must be one this log holds: it comes
            // later in the log, so it is matched after the pass.
            match signed_by_receipts.get(&r.cp.size) {
                Some((root, _, op)) if *root != r.cp.root => {
                    return Err(fail(
                        n,
                        format!(
                            "the receipts of operations {op} and {} are against two different trees of {} entries",
                            r.op, r.cp.size
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    signed_by_receipts.insert(r.cp.size, (r.cp.root, n, r.op));
                }
            }
            receipts.advance(key)?;
        }
        tree.push(leaf);
        since.push(leaf);
        prev = leaf;
        n += 1;
    }

    // Receipts for entries the log no longer has.
    if let Some((index, r)) = &receipts.next {
        return Err(fail(
            n,
            format!(
                "is missing: the receipt of operation {} proves entry {index}, but the log ends before it (the log was truncated)",
                r.op
            ),
        ));
    }
    let mut by_size: Vec<_> = signed_by_receipts.into_iter().collect();
    by_size.sort_by_key(|(size, _)| *size);
    for (size, (root, index, op)) in by_size {
        if heads.get(&size) != Some(&root) {
            let reason = if size >= n {
                format!(
                    "is missing: the receipt of operation {op} (entry {index}) is against a tree of {size} entries, but the log ends after {n} (the log was truncated)"
                )
            } else {
                format!(
                    "the receipt of operation {op} (entry {index}) is against a tree of {size} entries that the log's checkpoints do not sign"
                )
            };
            return Err(fail(size.min(n), reason));
        }
    }
    for (name, note) in outside {
        let text = key.open(note).map_err(|e| fail(n, format!("{name}: {e}")))?;
        let cp = Checkpoint::parse(text).map_err(|e| fail(n, format!("{name}: {e}")))?;
        if cp.size > n {
            return Err(fail(
                n,
                format!(
                    "is missing: {name} signs {} entries but the log ends after {n} (entries were cut off the end)",
                    cp.size
                ),
            ));
        }
        match heads.get(&cp.size) {
            Some(root) if *root == cp.root => {}
            Some(_) => {
                return Err(fail(
                    cp.size.saturating_sub(1),
                    format!("{name} signs another tree of {} entries than this log's", cp.size),
                ));
            }
            None => {
                return Err(fail(
                    cp.size,
                    format!(
                        "{name} signs a tree of {} entries that no checkpoint in the log signs",
                        cp.size
                    ),
                ));
            }
        }
    }
    let (signed_size, signed_root) = last_cp.map_or((0, String::new()), |c| {
        (
            c.size,
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, c.root),
        )
    });
    Ok(Summary {
        entries: n,
        checkpoints,
        receipts: receipts.count,
        unsigned_tail: n.saturating_sub(signed_size + u64::from(checkpoints > 0)),
        signed_size,
        signed_root,
        key: format!("{}+{}", key.name(), key.key_id()),
        key_from_log_dir: false,
    })
}

/// A human summary of a successful verification.
pub fn describe(dir: &Path, s: &Summary) -> String {
    let mut out = format!(
        "audit log {} verifies: {} entries, {} checkpoints (each signed by {} and consistent with the one before), {} receipts",
        dir.display(),
        s.entries,
        s.checkpoints,
        s.key,
        s.receipts
    );
    if s.checkpoints > 0 {
        out.push_str(&format!(
            "\nnewest signed tree: {} entries, head {}",
            s.signed_size, s.signed_root
        ));
    }
    if s.unsigned_tail > 0 {
        out.push_str(&format!(
            "\n{} entries after the newest checkpoint are chained but not signed yet (the next checkpoint signs them)",
            s.unsigned_tail
        ));
    }
    if s.key_from_log_dir {
        out.push_str("\nnote: the key was read from verifier.key beside the log; pass --key with the key recorded at enrollment to rule out a re-signed log");
    }
    out
}

/// Chained entries prove nothing about who wrote them: anyone can compute the
/// chain. Only a signed checkpoint does. A log with entries and no
/// checkpoint, or more unsigned entries than the writer ever leaves, is
/// refused, whatever key was given.
fn check_signed(s: &Summary, max_unsigned: u64) -> Result<(), Failure> {
    let n = s.entries;
    if n > 0 && s.checkpoints == 0 {
        return Err(fail(
            0,
            format!(
                "no checkpoint signs any of the log's {n} entries: nothing in it is proven by the key (the agent \
                 signs its log when enrolled and at every start)"
            ),
        ));
    }
    if s.unsigned_tail > max_unsigned {
        return Err(fail(
            n - s.unsigned_tail,
            format!(
                "the last {} entries, from this one on, are chained but not signed; the writer signs at least \
                 every {max_unsigned} entries, so they were not written by it, or checkpoints were removed \
                 (--max-unsigned sets the bound for a writer configured otherwise)",
                s.unsigned_tail
            ),
        ));
    }
    Ok(())
}
