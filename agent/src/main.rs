//! `byoc-agent`: the agent daemon and its local CLI.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use byoc_agent::config::Config;
use byoc_gate::approval::Choice;
use byoc_gate::{Clock as _, SystemClock};
use byoc_provider::ResourceKind;
use clap::{Parser, Subcommand};

/// The byoc agent: runs in your cloud account, dials out to a control plane over
/// mutual TLS, checks and records every operation locally, and applies it.
///
/// Typical use: `enroll` once with a token from the control plane, then `run`.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll with a control plane using a single-use token; makes this agent's
    /// key pair locally (the private key never leaves this host).
    Enroll {
        #[arg(long, short, default_value = "/etc/byoc-agent/agent.toml")]
        config: PathBuf,
        /// The token printed by `byoc-control token create` (or BYOC_ENROLL_TOKEN).
        #[arg(long, env = "BYOC_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// The control plane's URL, e.g. https://control.example.com:7443.
        #[arg(long)]
        control_plane: String,
        /// Enroll again on a data directory that holds an earlier enrollment
        /// (after a revocation, or when the certificate expired while the
        /// agent was stopped). Once the control plane has issued the new
        /// identity, the earlier identity, audit log (closed with a final
        /// signed checkpoint) and journal are moved to DATA_DIR/archive/ and
        /// the agent starts clean. Without it, such a directory is refused
        /// before the token is used. Stop the agent first.
        #[arg(long)]
        reenroll: bool,
    },
    /// Run the agent: connect out, receive operations, apply them.
    ///
    /// Stops on SIGTERM or SIGINT; operations in flight resume from the journal
    /// at the next start. Exit code 0 on a clean stop, 2 on an error (the
    /// message says which file or setting is at fault).
    Run {
        #[arg(long, short, default_value = "/etc/byoc-agent/agent.toml")]
        config: PathBuf,
    },
    /// Show connection state, certificate expiry and operations in flight.
    ///
    /// Exit code 0: running; 3: not running (or not enrolled).
    Status {
        #[arg(long, short, default_value = "/etc/byoc-agent/agent.toml")]
        config: PathBuf,
        /// Print one JSON object instead of text: `running`, `enrolled`, and
        /// `agent` (the state the agent last published, with `connection`
        /// "stopped" when it is not running and `paused` as the switch is
        /// now). Field names are stable.
        #[arg(long)]
        json: bool,
    },
    /// Local kill switch: refuse every operation until `resume`. Works whether
    /// or not the agent is running; the agent audits who paused it and why.
    Pause {
        #[arg(long, short, default_value = "/etc/byoc-agent/agent.toml")]
        config: PathBuf,
        /// Why (recorded in the audit log and shown to the control plane in each refusal).
        #[arg(long)]
        reason: String,
    },
    /// Lift the local kill switch.
    Resume {
        #[arg(long, short, default_value = "/etc/byoc-agent/agent.toml")]
        config: PathBuf,
    },
    /// Print the least-privilege cloud policy the agent's identity needs: every
    /// action the provider calls for the given resource kinds, nothing else.
    /// Attach it to the agent's role (the install module does). Offline.
    IamPolicy {
        /// The cloud (those built into this agent; the simulated cloud needs none).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(byoc_providers::built()))]
        cloud: String,
        /// Resource kinds the agent will manage (default: every kind the
        /// provider supports), comma-separated.
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
    },
    /// Read and verify the local audit log (works offline, trusts nothing).
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Operations the policy holds for a local approval, with their plans.
    Approvals {
        #[arg(long, short, default_value = "/etc/byoc-agent/agent.toml")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a held operation: the running agent carries it out (within a
    /// second) and audits who approved it. Talks to the agent through its data
    /// directory, not the network.
    Approve {
        /// The operation id (from `byoc-agent approvals`).
        op_id: String,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long, short, default_value = "/etc/byoc-agent/agent.toml")]
        config: PathBuf,
    },
    /// Reject a held operation: the agent refuses it (approval_rejected) and
    /// audits who rejected it and why.
    Reject {
        op_id: String,
        /// Why (recorded in the audit log and sent to the control plane).
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long, short, default_value = "/etc/byoc-agent/agent.toml")]
        config: PathBuf,
    },
    /// The customer policy (docs/policy.md): check an operation against it, or show it.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Decide an operation file under a policy, offline, and print the decision
    /// and the rule that made it.
    ///
    /// The operation file is what `byoc-control submit` takes (YAML, or JSON if
    /// it ends in .json): one operation (action, kind, spec, optional target) or
    /// a plan (target, operations). Every operation is checked.
    ///
    /// Exit codes: 0 every operation is allowed; 1 at least one is denied;
    /// 3 none is denied but at least one needs a local approval; 2 the policy or
    /// operation file is invalid (the message names the file and line).
    Check {
        /// The policy file (default: none, i.e. the default policy).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The operation file.
        #[arg(long)]
        operation: PathBuf,
    },
    /// Print the effective policy, defaults included: each rule id, its
    /// setting, and the line it comes from.
    Show {
        /// The policy file (default: the one agent.toml names, if any).
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long, short, default_value = "/etc/byoc-agent/agent.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify the audit log offline: recompute the RFC 6962 tree, check every
    /// checkpoint signature, the consistency between successive checkpoints
    /// and every receipt. Exit code 0: verified; 1: the log does not verify
    /// (the message names the first bad entry); 2: could not run.
    Verify {
        #[command(flatten)]
        at: LogDir,
        /// The verifier key to trust (`<name>+<id>+<key>`), as printed at
        /// enrollment. Default: verifier.key beside the log, which does not
        /// rule out a log re-signed by someone holding this host.
        #[arg(long)]
        key: Option<String>,
        /// A checkpoint kept outside this host; the log must still contain
        /// the tree it signs. May be repeated.
        #[arg(long = "trusted-checkpoint")]
        trusted_checkpoints: Vec<PathBuf>,
        /// How many entries may follow the newest checkpoint unsigned
        /// (default: the config's `audit.checkpoint_every`, else 1000). A
        /// longer unsigned tail, or entries with no checkpoint, do not verify.
        #[arg(long, value_name = "N")]
        max_unsigned: Option<u64>,
    },
    /// Print audit entries, optionally of one operation only (with its
    /// receipt, a C2SP tlog-proof, once a checkpoint covers its outcome).
    Show {
        #[arg(long)]
        op: Option<String>,
        #[command(flatten)]
        at: LogDir,
    },
    /// Write entries as JSON lines for a SIEM: each entry with the log's
    /// name, its index and its leaf hash added.
    Export {
        /// The first entry to export (to continue an earlier export).
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[command(flatten)]
        at: LogDir,
    },
}

/// Which audit log: `--dir`, or the one under the data directory of `--config`.
#[derive(clap::Args)]
struct LogDir {
    /// The audit log directory (default: DATA_DIR/audit from --config).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, short, default_value = "/etc/byoc-agent/agent.toml")]
    config: PathBuf,
}

impl LogDir {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        match &self.dir {
            Some(p) => Ok(p.clone()),
            None => Ok(byoc_agent::auditlog::dir(&Config::load(&self.config)?.data_dir)),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Enroll {
            config,
            token,
            control_plane,
            reenroll,
        } => {
            let cfg = Config::load(&config)?;
            let done = runtime()?.block_on(byoc_agent::enroll::enroll(&cfg, &token, &control_plane, reenroll))?;
            let e = done.enrollment;
            if let Some(dir) = &done.archived {
                println!(
                    "the earlier enrollment is archived in {}\n  verify its audit log with `byoc-agent audit verify --dir {}/audit --key OLD_KEY`",
                    dir.display(),
                    dir.display()
                );
            }
            println!("enrolled as {} with {}", e.agent_id, e.control_plane);
            let vkey = byoc_agent::auditlog::dir(&cfg.data_dir).join(byoc_audit::log::VERIFIER_KEY);
            if let Ok(k) = std::fs::read_to_string(&vkey) {
                println!(
                    "audit verifier key: {}\n  keep a copy outside this host: `byoc-agent audit verify --key KEY` then proves the log was not re-signed",
                    k.trim()
                );
            }
            println!(
                "client certificate valid until {}",
                fmt_ms(e.certificate_not_after_unix_ms)
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { config } => {
            let cfg = Config::load(&config)?;
            runtime()?.block_on(byoc_agent::run::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { config, json } => status(&Config::load(&config)?, json),
        Cmd::Pause { config, reason } => {
            let cfg = Config::load(&config)?;
            let p = byoc_gate::pause::pause(&cfg.data_dir, &reason, SystemClock.now_ms())
                .with_context(|| format!("writing {}", byoc_gate::pause::path(&cfg.data_dir).display()))?;
            println!(
                "paused by {}: every operation is refused until `byoc-agent resume`",
                p.by
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Resume { config } => {
            let cfg = Config::load(&config)?;
            let was = byoc_gate::pause::resume(&cfg.data_dir)
                .with_context(|| format!("removing {}", byoc_gate::pause::path(&cfg.data_dir).display()))?;
            println!(
                "{}",
                if was {
                    "resumed: operations run again"
                } else {
                    "the agent was not paused"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Approvals { config, json } => {
            let cfg = Config::load(&config)?;
            byoc_gate::approval::print_list(&cfg.data_dir, json, SystemClock.now_ms())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Approve { op_id, reason, config } => decide(&config, &op_id, Choice::Approve, &reason),
        Cmd::Reject { op_id, reason, config } => decide(&config, &op_id, Choice::Reject, &reason),
        Cmd::Policy {
            cmd: PolicyCmd::Check { policy, operation },
        } => Ok(ExitCode::from(byoc_agent::policy_cmd::check(
            policy.as_deref(),
            &operation,
        )?)),
        Cmd::Policy {
            cmd: PolicyCmd::Show { policy, config },
        } => {
            let policy = match policy {
                Some(p) => Some(p),
                None => Config::load(&config)?.policy,
            };
            byoc_agent::policy_cmd::show(policy.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::IamPolicy { cloud, kinds } => {
            let kinds: Vec<ResourceKind> = if kinds.is_empty() {
                ResourceKind::ALL.to_vec()
            } else {
                kinds
                    .iter()
                    .map(|k| {
                        ResourceKind::ALL.into_iter().find(|r| r.as_str() == k).ok_or_else(|| {
                            anyhow::anyhow!(
                                "{k:?} is not a resource kind; the kinds are: {}",
                                ResourceKind::ALL.map(|r| r.as_str()).join(", ")
                            )
                        })
                    })
                    .collect::<anyhow::Result<_>>()?
            };
            match byoc_providers::permissions(&cloud, &kinds)? {
                Some(doc) => println!("{}", serde_json::to_string_pretty(&doc)?),
                None => println!("the {cloud} cloud needs no permissions"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audit { cmd } => audit(cmd),
    }
}

fn audit(cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Verify {
            at,
            key,
            trusted_checkpoints,
            max_unsigned,
        } => {
            let dir = at.resolve()?;
            let max_unsigned = max_unsigned.or_else(|| Config::load(&at.config).ok().map(|c| c.audit.checkpoint_every));
            let key = key
                .map(|k| byoc_audit::note::Verifier::parse(&k))
                .transpose()
                .context("--key")?;
            let trusted_checkpoints = trusted_checkpoints
                .iter()
                .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
                .collect::<anyhow::Result<_>>()?;
            let opts = byoc_audit::verify::Options {
                key,
                trusted_checkpoints,
                max_unsigned,
            };
            match byoc_audit::verify::verify_dir(&dir, &opts) {
                Ok(s) => {
                    println!("{}", byoc_audit::verify::describe(&dir, &s));
                    Ok(ExitCode::SUCCESS)
                }
                Err(f) => {
                    println!("audit log {} does NOT verify: {f}", dir.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCmd::Show { op, at } => {
            let dir = at.resolve()?;
            byoc_audit::export::for_each_entry(&dir, |e, _| {
                let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
                if op.as_deref().is_some_and(|o| s("op") != o) {
                    return Ok(());
                }
                let actor = e.get("actor").filter(|a| !a.is_null()).map(|a| format!(" actor={a}"));
                println!(
                    "{:>6} {} {:<24} {:<20} {}{}",
                    e.get("seq").and_then(|v| v.as_u64()).unwrap_or_default(),
                    s("time"),
                    s("kind"),
                    s("op"),
                    e.get("detail").cloned().unwrap_or_default(),
                    actor.unwrap_or_default()
                );
                Ok(())
            })?;
            if let Some(op) = op {
                for proof in byoc_audit::export::receipts_for(&dir, &op)? {
                    println!("\nreceipt (c2sp.org/tlog-proof) of {op}:\n{proof}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Export { from, at } => {
            let dir = at.resolve()?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            byoc_audit::export::export(&dir, from, &mut out)?;
            std::io::Write::flush(&mut out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn decide(config: &Path, op_id: &str, verdict: Choice, reason: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let h = byoc_gate::approval::decide(&cfg.data_dir, op_id, verdict, reason, SystemClock.now_ms())?;
    let what = format!("{} {} {}", h.action, h.kind, h.name);
    match verdict {
        Choice::Approve => println!("approved {op_id} ({what}); the running agent carries it out and reports it"),
        Choice::Reject => println!("rejected {op_id} ({what}); the running agent refuses it"),
    }
    Ok(ExitCode::SUCCESS)
}

fn fmt_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)).to_string()
}

fn status(cfg: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let report = byoc_agent::status::Report::read(&cfg.data_dir)?;
    let code = if report.running {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(code);
    }
    let Some(s) = report.agent else {
        println!(
            "not running (no {}); enrolled: {}",
            byoc_agent::status::path(&cfg.data_dir).display(),
            report.enrolled
        );
        return Ok(code);
    };
    let alive = report.running;
    println!("agent:          {} (version {})", s.agent_id, s.version);
    println!(
        "process:        {}",
        if alive {
            format!("running, pid {}", s.pid)
        } else {
            "not running".to_string()
        }
    );
    println!("control plane:  {}", s.control_plane);
    println!(
        "connection:     {} since {}",
        if alive { s.connection.as_str() } else { "stopped" },
        fmt_ms(s.since_unix_ms)
    );
    if let Some(e) = &s.last_error {
        println!("last error:     {e}");
    }
    let left = (s.certificate_not_after_unix_ms - SystemClock.now_ms()) / 1000;
    println!(
        "certificate:    expires {} ({})",
        fmt_ms(s.certificate_not_after_unix_ms),
        if left > 0 {
            format!(
                "in {}",
                humantime::format_duration(std::time::Duration::from_secs(left as u64))
            )
        } else {
            "EXPIRED".into()
        }
    );
    println!(
        "in flight:      {}",
        if s.operations_in_flight.is_empty() {
            "none".to_string()
        } else {
            s.operations_in_flight.join(", ")
        }
    );
    if !s.awaiting_approval.is_empty() {
        println!(
            "awaiting approval: {} (see `byoc-agent approvals`)",
            s.awaiting_approval.join(", ")
        );
    }
    println!("unacked results: {}", s.results_unacknowledged);
    // The switch itself, not the agent's last view of it.
    if let Some(p) = &s.paused {
        println!(
            "PAUSED:         since {} by {}: {}",
            fmt_ms(p.since_unix_ms),
            p.by,
            p.reason
        );
    }
    Ok(code)
}
