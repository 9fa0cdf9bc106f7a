//! `byoc-wal`: a durable, append-only file of lines with group commit.
//!
//! Used by the agent's audit log (`byoc-audit`), the agent's journal and the
//! reference control plane's state log: the one place where "durable" is
//! decided. It knows nothing of what the lines mean.
//!
//! One writer thread owns the file. Callers hand it items; it turns each into a
//! line with a [`Sealer`] (in submission order), writes every pending line in one
//! `write`, calls `fdatasync` once, and only then answers each caller. So an
//! append that returned `Ok` is on disk, and many concurrent appends share one
//! sync. After any write or sync error the file is poisoned: every later append
//! fails, because what reached the disk is no longer known. No record, no action.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use tokio::sync::oneshot;

mod lock;
pub use lock::{DirLock, LOCK_FILE, LockError};

/// Largest batch written with one sync.
const MAX_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {} durably", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is unavailable after an earlier write error; nothing more is recorded", path.display())]
    Poisoned { path: PathBuf },
    #[error("the writer of {} has stopped", path.display())]
    Closed { path: PathBuf },
}

/// Turns items into lines, in order.
pub trait Sealer: Send + 'static {
    type Item: Send + 'static;
    type Receipt: Send + 'static;
    /// Appends the line(s) for `item` to `out`, each ending in a newline.
    /// Usually one; a sealer may add lines of its own (the audit log's
    /// checkpoints) or none.
    fn seal(&mut self, item: Self::Item, out: &mut Vec<u8>) -> Self::Receipt;

    /// Called in the writer thread after each batch is on disk: where a
    /// sealer writes what must follow the durable lines (never before).
    fn synced(&mut self) {}

    /// Lines that say everything the file says so far, if this sealer keeps
    /// such a model. With [`Wal::compact_after`] set, the writer replaces the
    /// file with them once that many bytes have been appended: a file of
    /// state (a journal) stays bounded while an append-only record (the audit
    /// log, which returns None) is never rewritten.
    fn snapshot(&self) -> Option<Vec<Vec<u8>>> {
        None
    }
}

/// A sealer for callers that already have their line.
#[derive(Debug, Default)]
pub struct Plain;

impl Sealer for Plain {
    type Item = Vec<u8>;
    type Receipt = ();
    fn seal(&mut self, item: Vec<u8>, out: &mut Vec<u8>) {
        out.extend_from_slice(&item);
        out.push(b'\n');
    }
}

type Reply<R> = oneshot::Sender<Result<R, WalError>>;

/// Handle to the writer thread. Cheap to clone.
pub struct Wal<S: Sealer> {
    tx: mpsc::Sender<(S::Item, Reply<S::Receipt>)>,
    poisoned: Arc<AtomicBool>,
    path: Arc<PathBuf>,
}

impl<S: Sealer> Clone for Wal<S> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            poisoned: self.poisoned.clone(),
            path: self.path.clone(),
        }
    }
}

/// Opens `path` for reading and cutting a torn tail; None if it does not exist.
fn open_existing(path: &Path) -> Result<Option<File>, WalError> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(WalError::Open {
            path: path.into(),
            source,
        }),
    }
}

/// Reads the complete lines of `path` (missing file: none). A last line without
/// its newline was never acknowledged to anyone (the crash came before the sync
/// finished), so it is cut off the file and not returned.
pub fn read_lines(path: &Path) -> Result<Vec<Vec<u8>>, WalError> {
    let Some(file) = open_existing(path)? else {
        return Ok(Vec::new());
    };
    let read_err = |source| WalError::Read {
        path: path.into(),
        source,
    };
    let mut reader = BufReader::new(&file);
    let mut lines = Vec::new();
    let mut complete_len: u64 = 0;
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line).map_err(read_err)?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            // Torn tail: drop it so the next append starts on a line boundary.
            file.set_len(complete_len).map_err(read_err)?;
            file.sync_all().map_err(read_err)?;
            break;
        }
        complete_len += n as u64;
        line.pop();
        lines.push(line);
    }
    Ok(lines)
}

/// The last complete line of `path` (None when the file is missing or
/// empty), reading only the end of the file. Like [`read_lines`], cuts off a
/// torn tail first.
pub fn last_line(path: &Path) -> Result<Option<Vec<u8>>, WalError> {
    Ok(tail_lines(path, |_| true)?.pop())
}

/// The complete lines of `path` from the last one for which `from` holds to
/// the end (all lines if none does), reading the file backwards only as far
/// as that line. Like [`read_lines`], cuts off a torn tail first.
pub fn tail_lines(path: &Path, from: impl Fn(&[u8]) -> bool) -> Result<Vec<Vec<u8>>, WalError> {
    let read_err = |source| WalError::Read {
        path: path.into(),
        source,
    };
    let Some(mut file) = open_existing(path)? else {
        return Ok(Vec::new());
    };
    let len = file.metadata().map_err(read_err)?.len();
    let mut tail: Vec<u8> = Vec::new();
    let mut start = len;
    let mut cut = false;
    loop {
        let chunk = (64 * 1024u64).min(start);
        let from_pos = start.saturating_sub(chunk);
        let mut buf = vec![0u8; (start - from_pos) as usize];
        file.seek(SeekFrom::Start(from_pos)).map_err(read_err)?;
        io::Read::read_exact(&mut file, &mut buf).map_err(read_err)?;
        buf.extend_from_slice(&tail);
        tail = buf;
        start = from_pos;
        if !cut {
            // Complete lines end at the last newline; a torn tail follows it.
            match tail.iter().rposition(|b| *b == b'\n') {
                Some(i) => {
                    let complete_len = start + i as u64 + 1;
                    if complete_len < len {
                        file.set_len(complete_len).map_err(read_err)?;
                        file.sync_all().map_err(read_err)?;
                    }
                    tail.truncate(i + 1);
                    cut = true;
                }
                None if start == 0 => {
                    if len > 0 {
                        file.set_len(0).map_err(read_err)?;
                        file.sync_all().map_err(read_err)?;
                    }
                    return Ok(Vec::new());
                }
                None => continue,
            }
        }
        // Lines wholly inside `tail`: all of them once the start of the file
        // is reached, otherwise those after the first newline.
        let first = if start == 0 {
            0
        } else {
            match tail.iter().position(|b| *b == b'\n') {
                Some(i) => i + 1,
                None => continue,
            }
        };
        let lines: Vec<&[u8]> = if first >= tail.len() {
            Vec::new()
        } else {
            tail[first..tail.len() - 1].split(|b| *b == b'\n').collect()
        };
        if let Some(at) = lines.iter().rposition(|l| from(l)) {
            return Ok(lines[at..].iter().map(|l| l.to_vec()).collect());
        }
        if start == 0 {
            return Ok(lines.iter().map(|l| l.to_vec()).collect());
        }
    }
}

/// Replaces `path` with `lines` atomically: write a temporary file, sync it,
/// rename it over `path`, sync the directory.
pub fn rewrite(path: &Path, lines: &[Vec<u8>]) -> Result<(), WalError> {
    let mut buf = Vec::new();
    for l in lines {
        buf.extend_from_slice(l);
        buf.push(b'\n');
    }
    write_atomic(path, &buf, 0o600).map_err(|source| WalError::Write {
        path: path.into(),
        source,
    })
}

/// Replaces `path` with `bytes` so that a crash at any point leaves either the
/// old file or the new one, and the new one is durable on return: a temporary
/// file beside it (mode `mode`) is written and synced, renamed over `path`,
/// and the directory synced.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace(path, bytes, mode, true)?;
    sync_dir(path)
}

/// Replaces `path` with `bytes` for readers (never half a file, mode `mode`),
/// without making it durable: for files that are rewritten often and only
/// report (a status file), so they do not add syncs beside the logs'.
pub fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace(path, bytes, mode, false)
}

fn replace(path: &Path, bytes: &[u8], mode: u32, sync: bool) -> io::Result<()> {
    // A fresh name each time, created new: a temporary file left by a crash
    // (or put there by someone else) is never reused with its old mode.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
        let mut f = opts.open(&tmp)?;
        // The mode asked for, whatever the umask took away or left.
        #[cfg(unix)]
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        #[cfg(not(unix))]
        let _ = mode;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Syncs the directory holding `path`, so a create or rename in it is durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

impl<S: Sealer> Wal<S> {
    /// Opens `path` for appending (creating it, mode 0600) and starts its writer.
    pub fn open(path: &Path, sealer: S) -> Result<Self, WalError> {
        Self::open_compacting(path, sealer, None)
    }

    /// Like [`open`](Self::open); with `compact_after`, the writer rewrites
    /// the file from [`Sealer::snapshot`] each time that many bytes have been
    /// appended since the last rewrite. The rewrite happens in the writer
    /// thread, between batches, so no append can fall between the snapshot
    /// and the file that replaces it.
    pub fn open_compacting(path: &Path, sealer: S, compact_after: Option<u64>) -> Result<Self, WalError> {
        let open_err = |source| WalError::Open {
            path: path.into(),
            source,
        };
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut file = opts.open(path).map_err(open_err)?;
        file.seek(SeekFrom::End(0)).map_err(open_err)?;
        sync_dir(path).map_err(open_err)?;
        let (tx, rx) = mpsc::channel();
        let poisoned = Arc::new(AtomicBool::new(false));
        let path = Arc::new(path.to_path_buf());
        let writer = Writer {
            file,
            sealer,
            rx,
            poisoned: poisoned.clone(),
            path: path.clone(),
            compact_after,
            appended: 0,
        };
        std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run())
            .map_err(open_err)?;
        Ok(Self { tx, poisoned, path })
    }

    /// Appends one item; returns once its line is on disk.
    pub async fn append(&self, item: S::Item) -> Result<S::Receipt, WalError> {
        self.submit(item)?.await
    }

    /// Queues one item now and returns a future that resolves once its line is
    /// on disk. Lines reach the disk in submission order, so once any later
    /// append has returned `Ok`, this one is durable too; and if this one
    /// fails, the file is poisoned and every later append fails. A caller may
    /// therefore drop the future when its next step is another append it waits
    /// for, and save a flush.
    pub fn submit(
        &self,
        item: S::Item,
    ) -> Result<impl std::future::Future<Output = Result<S::Receipt, WalError>> + Send + 'static, WalError> {
        let path = self.path.clone();
        if self.poisoned.load(Ordering::Acquire) {
            return Err(WalError::Poisoned { path: (*path).clone() });
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((item, reply))
            .map_err(|_| WalError::Closed { path: (*path).clone() })?;
        Ok(async move { rx.await.map_err(|_| WalError::Closed { path: (*path).clone() })? })
    }

    /// Whether an earlier write failed (the file accepts nothing more).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

struct Writer<S: Sealer> {
    file: File,
    sealer: S,
    rx: mpsc::Receiver<(S::Item, Reply<S::Receipt>)>,
    poisoned: Arc<AtomicBool>,
    path: Arc<PathBuf>,
    compact_after: Option<u64>,
    /// Bytes appended since the file was opened or last rewritten.
    appended: u64,
}

impl<S: Sealer> Writer<S> {
    /// Replaces the file with the sealer's snapshot. The new file is written
    /// and synced under a temporary name and kept open, then renamed over the
    /// old one: at every instant the path holds a complete file. On any error
    /// the old file stays in use (it is still correct, only longer).
    fn compact(&mut self) {
        let Some(lines) = self.sealer.snapshot() else { return };
        let tmp = self.path.with_extension("compact.tmp");
        let write_tmp = || -> io::Result<File> {
            let mut opts = OpenOptions::new();
            opts.create(true).write(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            let mut buf = Vec::new();
            for l in &lines {
                buf.extend_from_slice(l);
                buf.push(b'\n');
            }
            f.write_all(&buf)?;
            f.sync_all()?;
            Ok(f)
        };
        // Try again after as many bytes more, whatever happens.
        self.appended = 0;
        let Ok(new_file) = write_tmp() else {
            let _ = std::fs::remove_file(&tmp);
            return;
        };
        if std::fs::rename(&tmp, &*self.path).is_err() {
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        // The path now names the new file: append there from now on.
        self.file = new_file;
        if sync_dir(&self.path).is_err() {
            // The rename may not survive a crash, and appends to the new file
            // would then be lost with it: accept nothing more.
            self.poisoned.store(true, Ordering::Release);
        }
    }

    fn run(mut self) {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut pending = Vec::with_capacity(256);
        while let Ok(first) = self.rx.recv() {
            pending.push(first);
            while pending.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(next) => pending.push(next),
                    Err(_) => break,
                }
            }
            if self.poisoned.load(Ordering::Acquire) {
                for (_, reply) in pending.drain(..) {
                    let _ = reply.send(Err(WalError::Poisoned {
                        path: (*self.path).clone(),
                    }));
                }
                continue;
            }
            buf.clear();
            let mut receipts = Vec::with_capacity(pending.len());
            for (item, reply) in pending.drain(..) {
                let receipt = self.sealer.seal(item, &mut buf);
                receipts.push((receipt, reply));
            }
            if buf.is_empty() {
                // Nothing to write (an item that made no line): no sync.
                for (receipt, reply) in receipts {
                    let _ = reply.send(Ok(receipt));
                }
                continue;
            }
            match self.file.write_all(&buf).and_then(|()| self.file.sync_data()) {
                Ok(()) => {
                    self.sealer.synced();
                    for (receipt, reply) in receipts {
                        let _ = reply.send(Ok(receipt));
                    }
                    self.appended += buf.len() as u64;
                    if self.compact_after.is_some_and(|limit| self.appended >= limit) {
                        self.compact();
                    }
                }
                Err(e) => {
                    self.poisoned.store(true, Ordering::Release);
                    let kind = e.kind();
                    let msg = e.to_string();
                    for (_, reply) in receipts {
                        let source = io::Error::new(kind, msg.clone());
                        let _ = reply.send(Err(WalError::Write {
                            path: (*self.path).clone(),
                            source,
                        }));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_are_durable_lines_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.log");
        let wal = Wal::open(&path, Plain).expect("open");
        let mut tasks = Vec::new();
        for i in 0..100u32 {
            let w = wal.clone();
            tasks.push(tokio::spawn(
                async move { w.append(format!("line {i}").into_bytes()).await },
            ));
        }
        for t in tasks {
            t.await.expect("join").expect("append");
        }
        drop(wal);
        // A crash mid-write leaves a line without its newline.
        let mut f = OpenOptions::new().append(true).open(&path).expect("reopen");
        f.write_all(b"half a li").expect("write");
        drop(f);
        let lines = read_lines(&path).expect("read");
        assert_eq!(lines.len(), 100);
        assert!(lines.iter().all(|l| l.starts_with(b"line ")));
        let raw = std::fs::read(&path).expect("raw");
        assert!(raw.ends_with(b"\n"), "torn tail was cut");
    }

    #[test]
    fn last_line_reads_the_tail_and_cuts_a_torn_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.log");
        assert_eq!(last_line(&path).expect("missing"), None);
        std::fs::write(&path, b"").expect("write");
        assert_eq!(last_line(&path).expect("empty"), None);
        std::fs::write(&path, b"only\n").expect("write");
        assert_eq!(last_line(&path).expect("one"), Some(b"only".to_vec()));
        // Long enough to need several chunks from the end.
        let long = "x".repeat(200_000);
        std::fs::write(&path, format!("a\n{long}\nhalf")).expect("write");
        assert_eq!(last_line(&path).expect("long"), Some(long.clone().into_bytes()));
        assert_eq!(
            std::fs::read(&path).expect("read").len(),
            2 + long.len() + 1,
            "torn tail cut"
        );
        std::fs::write(&path, b"torn only").expect("write");
        assert_eq!(last_line(&path).expect("torn"), None);
        assert_eq!(std::fs::read(&path).expect("read").len(), 0);
    }

    #[test]
    fn tail_lines_reads_back_to_the_wanted_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.log");
        let mut text = String::new();
        for i in 0..50_000 {
            text.push_str(&format!("{}{i}\n", if i % 9_000 == 0 { "mark " } else { "line " }));
        }
        text.push_str("torn");
        std::fs::write(&path, &text).expect("write");
        let tail = tail_lines(&path, |l| l.starts_with(b"mark")).expect("tail");
        assert_eq!(tail.first().map(Vec::as_slice), Some(&b"mark 45000"[..]));
        assert_eq!(tail.last().map(Vec::as_slice), Some(&b"line 49999"[..]));
        assert_eq!(tail.len(), 5_000);
        let all = tail_lines(&path, |_| false).expect("all");
        assert_eq!(all.len(), 50_000);
        assert_eq!(all[0], b"mark 0");
    }

    #[cfg(unix)]
    #[test]
    fn rewritten_files_stay_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.log");
        rewrite(&path, &[b"a".to_vec()]).expect("rewrite");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn rewrite_replaces_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.log");
        std::fs::write(&path, b"old\n").expect("write");
        rewrite(&path, &[b"a".to_vec(), b"b".to_vec()]).expect("rewrite");
        assert_eq!(read_lines(&path).expect("read"), vec![b"a".to_vec(), b"b".to_vec()]);
    }
}
