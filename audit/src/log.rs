//! The audit log writer: an append-only file of JSON entries, hashed into an
//! RFC 6962 Merkle tree, with signed checkpoints and per-operation receipts.
//! `docs/audit-log.md` is the specification; in short, a log directory holds
//!
//! - `log.jsonl`: the entries, one JSON object per line, fields in this order:
//!   `seq`, `time`, `kind`, `op`, `actor`, `detail`, `prev` (hex leaf hash of the
//!   entry before, 64 zeros for the first). The leaf hash of an entry is
//!   `SHA-256(0x00 ‖ the line's bytes without its newline)`.
//! - Checkpoint entries (`kind` = `audit.checkpoint`), at most every
//!   [`Options::checkpoint_every`] entries or [`Options::checkpoint_interval`],
//!   when the log is opened over unsigned entries, and at [`AuditLog::close`]:
//!   `detail.note` is a C2SP signed note of the tree of every entry before it,
//!   `detail.frontier` the hashes of that tree's maximal perfect subtrees.
//! - `checkpoint`: the newest checkpoint note, verbatim.
//! - `receipts.jsonl`: a C2SP `tlog-proof` for each `operation.finished` and
//!   `operation.refused` entry, written once a checkpoint covers it.
//! - `verifier.key`: the note verifier key of the agent's audit key.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::merkle::{self, Frontier, Hash, Recent};
use crate::note::{Checkpoint, Signer, TlogProof, Verifier};
use byoc_wal::{self as wal, Sealer, Wal, WalError};

/// File names inside a log directory.
pub const ENTRIES: &str = "log.jsonl";
pub const LATEST_CHECKPOINT: &str = "checkpoint";
pub const RECEIPTS: &str = "receipts.jsonl";
pub const VERIFIER_KEY: &str = "verifier.key";

/// The kind of a checkpoint entry.
pub const CHECKPOINT_KIND: &str = "audit.checkpoint";
/// Entry kinds that get a receipt: an operation's outcome.
pub const RECEIPT_KINDS: &[&str] = &["operation.finished", "operation.refused"];

pub const GENESIS: Hash = [0; 32];

/// One security-relevant event, before it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Dotted event kind, e.g. `operation.received`, `provider.call`.
    pub kind: &'static str,
    /// The operation this event belongs to, if any.
    pub op: Option<String>,
    /// Who asked for it: the control plane (its identity and certificate
    /// fingerprint) or a local user. Never a secret.
    pub actor: Option<Value>,
    /// Event details. Must never hold a secret value.
    pub detail: Value,
}

impl Event {
    pub fn new(kind: &'static str, op: Option<&str>, detail: Value) -> Self {
        Self {
            kind,
            op: op.map(str::to_string),
            actor: None,
            detail,
        }
    }

    pub fn with_actor(mut self, actor: Value) -> Self {
        self.actor = Some(actor);
        self
    }
}

/// Where an event landed in the log: its index and leaf hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub hash: Hash,
}

#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: String,
    kind: &'a str,
    op: Option<&'a str>,
    actor: Option<&'a Value>,
    detail: &'a Value,
    prev: String,
}

/// A parsed entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub op: Option<String>,
    pub actor: Option<Value>,
    pub detail: Value,
    pub prev: String,
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// When checkpoints are made.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A checkpoint once this many entries are not covered by one.
    pub checkpoint_every: u64,
    /// A checkpoint once the newest is this old and entries are not covered.
    pub checkpoint_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}

pub enum Item {
    Event(Event),
    /// Checkpoint if the interval has passed and entries are unsigned.
    Tick,
    /// Checkpoint if entries are unsigned.
    Checkpoint,
}

struct Due {
    index: u64,
    op: String,
    line: Vec<u8>,
}

pub struct MerkleSealer {
    dir: PathBuf,
    signer: Signer,
    opts: Options,
    next_seq: u64,
    prev: Hash,
    /// The tree of every entry written.
    tree: Frontier,
    /// The tree at the newest checkpoint, and the leaves after it.
    base: Frontier,
    since: Vec<Hash>,
    /// Entries not yet covered by a checkpoint (checkpoint entries aside).
    unsigned: u64,
    last_checkpoint: Instant,
    due: Vec<Due>,
    /// Written after the batch holding them is durable.
    pending_receipts: Vec<u8>,
    pending_note: Option<String>,
}

impl MerkleSealer {
    fn push_line(
        &mut self,
        kind: &str,
        op: Option<&str>,
        actor: Option<&Value>,
        detail: &Value,
        out: &mut Vec<u8>,
    ) -> Receipt {
        let seq = self.next_seq;
        let body = Body {
            seq,
            time: now_rfc3339(),
            kind,
            op,
            actor,
            detail,
            prev: hex::encode(self.prev),
        };
        // A struct of strings, numbers and JSON values always serializes.
        let line = serde_json::to_vec(&body).unwrap_or_default();
        let leaf = merkle::leaf_hash(&line);
        out.extend_from_slice(&line);
        out.push(b'\n');
        self.tree.push(leaf);
        self.since.push(leaf);
        self.prev = leaf;
        self.next_seq += 1;
        if let Some(op) = op.filter(|_| RECEIPT_KINDS.contains(&kind)) {
            self.due.push(Due {
                index: seq,
                op: op.to_string(),
                line,
            });
        }
        Receipt { seq, hash: leaf }
    }

    fn checkpoint(&mut self, out: &mut Vec<u8>) {
        let size = self.tree.size();
        let cp = Checkpoint {
            origin: self.signer.name().to_string(),
            size,
            root: self.tree.root(),
        };
        let note = self.signer.sign(&cp.text());
        let mut recent = Recent::new(&self.base, &self.since);
        for d in self.due.drain(..) {
            let Some(proof) = merkle::inclusion_proof(&mut recent, d.index, size) else {
                continue;
            };
            let proof = TlogProof {
                extra: Some(d.line),
                index: d.index,
                proof,
                checkpoint: note.clone(),
            };
            let rec = json!({"op": d.op, "index": d.index, "proof": proof.to_text()});
            self.pending_receipts.extend_from_slice(rec.to_string().as_bytes());
            self.pending_receipts.push(b'\n');
        }
        let frontier: Vec<String> = self.tree.hashes().iter().map(hex::encode).collect();
        self.base = self.tree.clone();
        self.since.clear();
        self.push_line(
            CHECKPOINT_KIND,
            None,
            None,
            &json!({"note": note, "frontier": frontier}),
            out,
        );
        self.unsigned = 0;
        self.last_checkpoint = Instant::now();
        self.pending_note = Some(note);
    }
}

impl Sealer for MerkleSealer {
    type Item = Item;
    type Receipt = Option<Receipt>;

    fn seal(&mut self, item: Item, out: &mut Vec<u8>) -> Option<Receipt> {
        match item {
            Item::Event(ev) => {
                let r = self.push_line(ev.kind, ev.op.as_deref(), ev.actor.as_ref(), &ev.detail, out);
                self.unsigned += 1;
                if self.unsigned >= self.opts.checkpoint_every {
                    self.checkpoint(out);
                }
                Some(r)
            }
            Item::Tick => {
                if self.unsigned > 0 && self.last_checkpoint.elapsed() >= self.opts.checkpoint_interval {
                    self.checkpoint(out);
                }
                None
            }
            Item::Checkpoint => {
                if self.unsigned > 0 {
                    self.checkpoint(out);
                }
                None
            }
        }
    }

    fn synced(&mut self) {
        // Receipts and the newest checkpoint are copies of what the log holds
        // (a verifier recomputes them): written only once the log is durable,
        // and an error here loses nothing the log does not keep.
        if !self.pending_receipts.is_empty() {
            let path = self.dir.join(RECEIPTS);
            let res = append_private(&path, &self.pending_receipts);
            if let Err(e) = res {
                tracing::error!(path = %path.display(), error = %e, "cannot write operation receipts; `byoc-agent audit verify` still checks the log");
            }
            self.pending_receipts.clear();
        }
        if let Some(note) = self.pending_note.take() {
            let path = self.dir.join(LATEST_CHECKPOINT);
            if let Err(e) = wal::write_atomic(&path, note.as_bytes(), 0o644) {
                tracing::error!(path = %path.display(), error = %byoc_errors::Chain(&e), "cannot write the newest checkpoint");
            }
        }
    }
}

fn append_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_data()
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log")]
    Wal(#[from] WalError),
    #[error("audit log {path}: {reason}")]
    Io { path: String, reason: String },
    #[error(
        "the end of audit log {path} is damaged: {reason}; run `byoc-agent audit verify` and keep a copy before doing anything else"
    )]
    Damaged { path: String, reason: String },
    #[error(
        "{path} holds another key than this agent's audit key: the log was signed by another key; keep both and investigate before going on"
    )]
    KeyMismatch { path: String },
    #[error("audit key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error(
        "audit log {path} has {entries} entries, but {proof} signs a tree of {signed}: the log was rolled back \
         (a snapshot or backup restored, or the file cut short). The agent will not continue it and overwrite \
         that proof; keep copies of the log directory and investigate"
    )]
    RolledBack {
        path: String,
        entries: u64,
        signed: u64,
        /// What proves the longer tree: the checkpoint file or a receipt.
        proof: String,
    },
}

/// Loads the audit signing key at `path` (PKCS#8, mode 0600), making it on
/// first use. Returns whether it was made now.
pub fn load_or_create_key(path: &Path, name: &str) -> Result<(Signer, bool), AuditError> {
    let err = |reason: String| AuditError::Key {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(path) {
        Ok(pkcs8) => {
            // A key others could read may have been read: refuse rather than
            // sign with it, and say so.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)
                    .map_err(|e| err(e.to_string()))?
                    .permissions()
                    .mode()
                    & 0o777;
                if mode & 0o077 != 0 {
                    return Err(err(format!(
                        "mode {mode:04o} lets other users read the audit signing key; it must be 0600. Check who \
                         could have read it, then `chmod 600 {}`",
                        path.display()
                    )));
                }
            }
            Ok((Signer::from_pkcs8(name, &pkcs8).map_err(|e| err(e.0))?, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (signer, pkcs8) = Signer::generate(name).map_err(|e| err(e.0))?;
            wal::write_atomic(path, &pkcs8, 0o600).map_err(|e| err(e.to_string()))?;
            Ok((signer, true))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// The audit log writer. Every `record` returns only once the entry is on disk.
#[derive(Clone)]
pub struct AuditLog {
    wal: Wal<MerkleSealer>,
    dir: Arc<PathBuf>,
    verifier_key: Arc<String>,
    /// The ticker thread stops once every handle is gone.
    _alive: Arc<()>,
}

fn is_checkpoint_line(line: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    // A cheap filter first: most lines are not checkpoints.
    line.windows(CHECKPOINT_KIND.len())
        .any(|w| w == CHECKPOINT_KIND.as_bytes())
        && serde_json::from_slice::<Kind>(line).is_ok_and(|k| k.kind == CHECKPOINT_KIND)
}

impl AuditLog {
    /// Opens (or creates) the log in `dir` and continues it. Reads only the
    /// end of the log, back to its newest checkpoint. Refuses to continue a
    /// log whose end does not parse (appending would hide the damage) or
    /// that another key signed.
    pub fn open(dir: &Path, signer: Signer, opts: Options) -> Result<Self, AuditError> {
        let io = |e: std::io::Error| AuditError::Io {
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(io)?;
        // An existing directory keeps whatever mode it had: make it 0700.
        #[cfg(unix)]
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(io)?;
        let vkey = signer.verifier_key();
        let vkey_path = dir.join(VERIFIER_KEY);
        match std::fs::read_to_string(&vkey_path) {
            Ok(existing) if existing.trim() == vkey => {}
            Ok(_) => {
                return Err(AuditError::KeyMismatch {
                    path: vkey_path.display().to_string(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                wal::write_atomic(&vkey_path, format!("{vkey}\n").as_bytes(), 0o644).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        }
        let path = dir.join(ENTRIES);
        let sealer = restore(&path, dir, signer, opts)?;
        refuse_rollback(dir, &vkey, sealer.next_seq)?;
        let unsigned = sealer.unsigned;
        let alive = Arc::new(());
        let log = Self {
            wal: Wal::open(&path, sealer)?,
            dir: Arc::new(dir.to_path_buf()),
            verifier_key: Arc::new(vkey),
            _alive: alive.clone(),
        };
        if unsigned > 0 {
            // Entries a previous run wrote after its last checkpoint (it
            // crashed): sign them before anything new is added.
            drop(log.wal.submit(Item::Checkpoint)?);
        }
        spawn_ticker(log.wal.clone(), Arc::downgrade(&alive), opts.checkpoint_interval);
        Ok(log)
    }

    /// Queues `event` without waiting for it to reach the disk. Use only when
    /// the caller's next step is a `record` it waits for before acting: the log
    /// is ordered, so that wait covers this event too (see `Wal::submit`).
    pub fn record_before_next(&self, event: Event) -> Result<(), AuditError> {
        // The future is dropped: durability comes from the next awaited record.
        drop(self.wal.submit(Item::Event(event))?);
        Ok(())
    }

    /// Records `event` durably.
    pub async fn record(&self, event: Event) -> Result<Receipt, AuditError> {
        self.submit(event)?.await
    }

    /// Queues `event` now and returns a future that resolves once it is
    /// durable. Between the two a caller can make a change that every later
    /// entry must see (a policy swap): the change is ordered after the event in
    /// the log, and no reader sees the event before the change is made.
    pub fn submit(
        &self,
        event: Event,
    ) -> Result<impl std::future::Future<Output = Result<Receipt, AuditError>> + Send + 'static, AuditError> {
        let pending = self.wal.submit(Item::Event(event))?;
        let dir = self.dir.display().to_string();
        Ok(async move {
            pending.await?.ok_or_else(|| AuditError::Io {
                path: dir,
                reason: "the writer returned no receipt for an event".into(),
            })
        })
    }

    /// Writes a checkpoint now if any entry is not covered by one (at
    /// shutdown), and waits for it.
    pub async fn close(&self) -> Result<(), AuditError> {
        self.wal.append(Item::Checkpoint).await?;
        Ok(())
    }

    /// True once a write failed: the agent must refuse to act from then on.
    pub fn is_failed(&self) -> bool {
        self.wal.is_poisoned()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The note verifier key that checks this log's checkpoints.
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }
}

fn spawn_ticker(wal: Wal<MerkleSealer>, alive: Weak<()>, interval: Duration) {
    let step = interval.min(Duration::from_secs(1));
    let _ = std::thread::Builder::new()
        .name("audit-checkpoints".into())
        .spawn(move || {
            loop {
                std::thread::sleep(step);
                if alive.upgrade().is_none() {
                    return;
                }
                // A poisoned log refuses the tick: nothing to sign anyway.
                if let Ok(fut) = wal.submit(Item::Tick) {
                    drop(fut);
                }
            }
        });
}

/// Rebuilds the writer's state from the end of the log: the newest
/// checkpoint's frontier, then every entry after it.
fn restore(path: &Path, dir: &Path, signer: Signer, opts: Options) -> Result<MerkleSealer, AuditError> {
    let damaged = |reason: String| AuditError::Damaged {
        path: path.display().to_string(),
        reason,
    };
    let tail = wal::tail_lines(path, is_checkpoint_line)?;
    let mut s = MerkleSealer {
        dir: dir.to_path_buf(),
        opts,
        next_seq: 0,
        prev: GENESIS,
        tree: Frontier::default(),
        base: Frontier::default(),
        since: Vec::new(),
        unsigned: 0,
        last_checkpoint: Instant::now(),
        due: Vec::new(),
        pending_receipts: Vec::new(),
        pending_note: None,
        signer,
    };
    let verifier = Verifier::parse(&s.signer.verifier_key()).map_err(|e| damaged(e.0))?;
    for (i, line) in tail.iter().enumerate() {
        let e: Entry = serde_json::from_slice(line).map_err(|e| damaged(format!("an entry does not parse: {e}")))?;
        if i == 0 && e.kind == CHECKPOINT_KIND {
            let note = e.detail["note"].as_str().unwrap_or_default();
            let cp = verifier
                .open(note)
                .map_err(|e| damaged(format!("the newest checkpoint: {e}")))
                .and_then(|t| Checkpoint::parse(t).map_err(|e| damaged(e.0)))?;
            let hashes: Vec<Hash> = e.detail["frontier"]
                .as_array()
                .map(|a| a.iter().filter_map(|h| parse_hash(h.as_str()?)).collect())
                .unwrap_or_default();
            let tree = Frontier::from_parts(cp.size, &hashes)
                .filter(|f| f.root() == cp.root && cp.size == e.seq)
                .ok_or_else(|| damaged("the newest checkpoint's frontier does not match its tree head".into()))?;
            s.tree = tree.clone();
            s.base = tree;
            s.next_seq = e.seq;
            s.prev = parse_hash(&e.prev).ok_or_else(|| damaged("the newest checkpoint's prev is not a hash".into()))?;
        } else if i == 0 && e.seq != 0 {
            return Err(damaged(format!(
                "the log has no checkpoint and starts at entry {}",
                e.seq
            )));
        }
        if e.seq != s.next_seq || e.prev != hex::encode(s.prev) {
            return Err(damaged(format!(
                "entry {} does not follow entry {}: run `byoc-agent audit verify`",
                e.seq,
                s.next_seq.wrapping_sub(1)
            )));
        }
        let leaf = merkle::leaf_hash(line);
        s.tree.push(leaf);
        s.since.push(leaf);
        s.prev = leaf;
        s.next_seq += 1;
        if e.kind != CHECKPOINT_KIND {
            s.unsigned += 1;
            if let Some(op) = e.op.filter(|_| RECEIPT_KINDS.contains(&e.kind.as_str())) {
                s.due.push(Due {
                    index: e.seq,
                    op,
                    line: line.clone(),
                });
            }
        }
    }
    Ok(s)
}

/// Refuses a log shorter than what this host's own proofs say it was: the
/// `checkpoint` file (the newest signed tree) and the last receipt. Either
/// names a tree of entries that a log of `entries` cannot hold if it was
/// rolled back; continuing it would overwrite the proof of the rollback.
fn refuse_rollback(dir: &Path, vkey: &str, entries: u64) -> Result<(), AuditError> {
    let rolled_back = |signed: u64, proof: String| AuditError::RolledBack {
        path: dir.join(ENTRIES).display().to_string(),
        entries,
        signed,
        proof,
    };
    let cp_path = dir.join(LATEST_CHECKPOINT);
    if let Ok(note) = std::fs::read_to_string(&cp_path)
        && let Ok(verifier) = Verifier::parse(vkey)
        && let Ok(text) = verifier.open(&note)
        && let Ok(cp) = Checkpoint::parse(text)
        // A checkpoint of `size` entries is itself entry `size`.
        && cp.size >= entries
    {
        return Err(rolled_back(cp.size, cp_path.display().to_string()));
    }
    // The last receipt, once any torn tail a crash left is cut off.
    let receipts = dir.join(RECEIPTS);
    if let Some(line) = wal::last_line(&receipts)?
        && let Ok(v) = serde_json::from_slice::<Value>(&line)
        && let Some(index) = v["index"].as_u64()
        && index >= entries
    {
        return Err(rolled_back(
            index + 1,
            format!("the receipt of entry {index} in {}", receipts.display()),
        ));
    }
    Ok(())
}

pub(crate) fn parse_hash(s: &str) -> Option<Hash> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(s, &mut h).ok()?;
    Some(h)
}
