//! `byoc-audit-verify`: the standalone offline verifier of a byoc-agent audit
//! log directory. No network code; see docs/audit-log.md.

use std::path::PathBuf;
use std::process::ExitCode;

use byoc_audit::note::Verifier;
use byoc_audit::verify::{self, Options};
use clap::Parser;

/// Verify a byoc-agent audit log offline: recompute the RFC 6962 tree,
/// check every checkpoint signature and the consistency between successive
/// checkpoints, check every receipt, and detect edited, deleted, reordered or
/// truncated entries. Exit status: 0 verified, 1 the log does not verify,
/// 2 the verifier could not run (bad arguments, unreadable key).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The audit log directory (holds log.jsonl, checkpoint, receipts.jsonl, verifier.key).
    dir: PathBuf,
    /// The verifier key to trust, `<name>+<id>+<key>`, as recorded at enrollment.
    /// Without it, verifier.key beside the log is used, which proves nothing
    /// against someone who could rewrite the log.
    #[arg(long, conflicts_with = "key_file")]
    key: Option<String>,
    /// A file holding the verifier key to trust.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// A checkpoint kept outside this host: the log must still contain the
    /// tree it signs (detects entries cut off the end). May be repeated.
    #[arg(long = "trusted-checkpoint")]
    trusted_checkpoints: Vec<PathBuf>,
    /// How many entries may follow the newest checkpoint unsigned: the
    /// writer's `checkpoint_every` (default 1000). A longer unsigned tail, or
    /// entries with no checkpoint at all, do not verify: a chain without a
    /// signature proves nothing about who wrote it.
    #[arg(long, value_name = "N")]
    max_unsigned: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let key = match (&cli.key, &cli.key_file) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(p)) => match std::fs::read_to_string(p) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        (None, None) => None,
    };
    let key = match key.map(|k| Verifier::parse(&k)).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: the verifier key: {e}");
            return ExitCode::from(2);
        }
    };
    let mut trusted = Vec::new();
    for p in &cli.trusted_checkpoints {
        match std::fs::read_to_string(p) {
            Ok(t) => trusted.push(t),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", p.display());
                return ExitCode::from(2);
            }
        }
    }
    let opts = Options {
        key,
        trusted_checkpoints: trusted,
        max_unsigned: cli.max_unsigned,
    };
    match verify::verify_dir(&cli.dir, &opts) {
        Ok(s) => {
            println!("{}", verify::describe(&cli.dir, &s));
            ExitCode::SUCCESS
        }
        Err(f) => {
            println!("audit log {} does NOT verify: {f}", cli.dir.display());
            ExitCode::from(1)
        }
    }
}
