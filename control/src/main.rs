//! `byoc-control`: the reference control plane and its operator CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use byoc_control::{client, opfile, server};
use byoc_proto::agent::v1::{OperationResult, Outcome};
use byoc_proto::control::v1::{
    CaStatus, CancelRequest, CreateTokenRequest, FinishCaRotationRequest, GetCaStatusRequest, GetOperationRequest,
    ListAgentsRequest, RevokeRequest, RotateCaRequest, SubmitRequest, WatchRequest, watch_event,
};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Reference control plane for byoc agents.
///
/// Agents dial in over mutual TLS; operators use the commands below, which talk
/// to the running server over a Unix socket in its data directory.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Data directory: CA, operation-signing key, state, admin socket.
    #[arg(
        long,
        env = "BYOC_CONTROL_DATA_DIR",
        default_value = "/var/lib/byoc-control",
        global = true
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane (creates its CA and signing key on first start).
    Serve {
        /// Address to listen on for agents; port 0 picks a free port (written to DATA_DIR/listen.url).
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// DNS names and IP addresses the server certificate is valid for.
        #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        server_names: Vec<String>,
        /// Lifetime of agent client certificates (e.g. 24h, 90m).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        cert_lifetime: Duration,
        /// How often agents send heartbeats; a session silent for 3 intervals is closed.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        heartbeat_interval: Duration,
    },
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Submit the operations in FILE (YAML or JSON), signed, in file order.
    ///
    /// With --wait, each operation is watched to its result before the next is
    /// submitted (a node pool needs its cluster first), and the exit code says
    /// whether all succeeded.
    Submit {
        /// One operation (`action`, `kind`, `spec`, optional `target`) or a plan
        /// (`target`, then `operations: [...]`), YAML or JSON; see examples/plan.yaml.
        file: PathBuf,
        /// Send to this agent instead of the one enrolled for the target.
        #[arg(long)]
        agent: Option<String>,
        /// Watch each operation to its result before submitting the next.
        #[arg(long)]
        wait: bool,
    },
    /// Show an operation's progress until its result. Exit code 0: succeeded, 1: did not.
    Watch { operation_id: String },
    /// Ask the agent to stop a running operation (it ends as CANCELLED).
    Cancel {
        operation_id: String,
        #[arg(long, default_value = "cancelled by an operator")]
        reason: String,
    },
    /// Revoke every certificate of an agent: its session is closed and it can no
    /// longer connect, renew, or be sent operations (until enrolled again).
    Revoke { agent_id: String },
    /// Print an operation's state and results as JSON.
    Get { operation_id: String },
    /// List enrolled agents: connected, version, last heartbeat, certificate expiry.
    Agents,
    /// The control plane's CA and its rotation.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Which CAs are in force, their fingerprints, and the agents not yet moved to the active one.
    Status,
    /// Start a rotation: a new CA issues every certificate from now on, the current one stays
    /// trusted until `ca finish`; agents receive the new CA in band and renew.
    Rotate,
    /// End the rotation: drop the previous CA. Refused while an agent still holds only
    /// certificates of the previous CA, unless --force (such agents must then enroll again).
    Finish {
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a single-use enrollment token that also pins this control plane's CA.
    Create {
        /// How long the token stays valid.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = cli.data_dir;
    match cli.cmd {
        Cmd::Serve {
            listen,
            server_names,
            cert_lifetime,
            heartbeat_interval,
        } => {
            let cfg = server::ServeConfig {
                data_dir: dir,
                listen,
                server_names,
                cert_lifetime,
                heartbeat_interval,
            };
            server::serve(cfg, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Token {
            cmd: TokenCmd::Create { ttl },
        } => {
            let mut c = client::connect(&dir).await?;
            let r = c
                .create_token(CreateTokenRequest {
                    ttl_seconds: ttl.as_secs().max(1),
                })
                .await?
                .into_inner();
            println!("{}", r.token);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Submit { file, agent, wait } => submit(&dir, &file, agent, wait).await,
        Cmd::Watch { operation_id } => {
            let ok = watch(&dir, &operation_id, &operation_id).await?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Cmd::Cancel { operation_id, reason } => {
            let mut c = client::connect(&dir).await?;
            c.cancel(CancelRequest {
                operation_id: operation_id.clone(),
                reason,
            })
            .await?;
            println!(
                "cancel sent to the agent running {operation_id}; `byoc-control watch {operation_id}` shows the outcome"
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Revoke { agent_id } => {
            let mut c = client::connect(&dir).await?;
            c.revoke(RevokeRequest {
                agent_id: agent_id.clone(),
            })
            .await?;
            println!("revoked {agent_id}: its session is closed and its certificates are refused");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Get { operation_id } => {
            let mut c = client::connect(&dir).await?;
            let s = c
                .get_operation(GetOperationRequest { operation_id })
                .await?
                .into_inner();
            let results: Vec<_> = s.results.iter().map(result_json).collect();
            let progress = s
                .last_progress
                .as_ref()
                .map(|p| serde_json::json!({ "phase": p.phase, "message": p.message, "percent": p.percent }));
            let v = serde_json::json!({
                "operation_id": s.operation_id, "agent_id": s.agent_id, "sequence": s.sequence,
                "state": s.state, "progress": progress, "results": results,
                "duplicate_results_ignored": s.duplicate_results_ignored,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ca { cmd } => {
            let mut c = client::connect(&dir).await?;
            let st = match cmd {
                CaCmd::Status => c.get_ca_status(GetCaStatusRequest {}).await?.into_inner(),
                CaCmd::Rotate => c.rotate_ca(RotateCaRequest {}).await?.into_inner(),
                CaCmd::Finish { force } => c
                    .finish_ca_rotation(FinishCaRotationRequest { force })
                    .await?
                    .into_inner(),
            };
            print_ca_status(&st);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Agents => {
            let mut c = client::connect(&dir).await?;
            let r = c.list_agents(ListAgentsRequest {}).await?.into_inner();
            println!(
                "{:<22} {:<28} {:<10} {:<10} {:<22} CERT EXPIRES",
                "AGENT", "TARGET", "STATE", "VERSION", "LAST HEARTBEAT"
            );
            for a in r.agents {
                let t = a.target.unwrap_or_default();
                println!(
                    "{:<22} {:<28} {:<10} {:<10} {:<22} {}",
                    a.agent_id,
                    format!("{}/{}/{}", t.cloud, t.account, t.region),
                    if a.revoked {
                        "revoked"
                    } else if a.connected {
                        "connected"
                    } else {
                        "offline"
                    },
                    if a.version.is_empty() { "-" } else { &a.version },
                    fmt_ms(a.last_heartbeat_unix_ms),
                    fmt_ms(a.certificate_not_after_unix_ms),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_ca_status(st: &CaStatus) {
    for ca in &st.cas {
        let what = if ca.role == "active" {
            "active CA (issues certificates; new tokens pin it)"
        } else {
            "previous CA (still trusted until `ca finish`)"
        };
        println!("{what}");
        println!("  sha256:    {}", ca.sha256);
        println!("  subject:   CN={}", ca.subject);
        println!("  not after: {}", fmt_ms(ca.not_after_unix_ms));
    }
    if st.overlap_since_unix_ms > 0 {
        let age = (byoc_control::service::now_ms() - st.overlap_since_unix_ms).max(0) / 1000;
        println!(
            "rotation under way since {} ({} ago)",
            fmt_ms(st.overlap_since_unix_ms),
            humantime::format_duration(Duration::from_secs(age as u64))
        );
        if st.agents_on_previous_ca.is_empty() {
            println!("every enrolled agent has a certificate from the active CA: `byoc-control ca finish` is safe");
        } else {
            println!(
                "agents still on the previous CA ({}): {}",
                st.agents_on_previous_ca.len(),
                st.agents_on_previous_ca.join(", ")
            );
        }
    } else {
        println!("no rotation under way");
    }
}

fn fmt_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn submit(dir: &Path, file: &Path, agent: Option<String>, wait: bool) -> anyhow::Result<ExitCode> {
    let reqs = opfile::load(file)?;
    let mut c = client::connect(dir).await?;
    let mut all_ok = true;
    for req in reqs {
        let label = format!("{} {}", action_name(req.action), kind_label(&req));
        let req = SubmitRequest {
            agent_id: agent.clone().unwrap_or_default(),
            ..req
        };
        let r = c
            .submit(req)
            .await
            .with_context(|| format!("submitting {label}"))?
            .into_inner();
        println!(
            "submitted {} ({label}) to {} as sequence {}",
            r.operation_id, r.agent_id, r.sequence
        );
        if wait && !watch(dir, &r.operation_id, &label).await? {
            all_ok = false;
            break;
        }
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn action_name(a: i32) -> &'static str {
    match byoc_proto::agent::v1::Action::try_from(a) {
        Ok(byoc_proto::agent::v1::Action::Plan) => "plan",
        Ok(byoc_proto::agent::v1::Action::Apply) => "apply",
        Ok(byoc_proto::agent::v1::Action::Delete) => "delete",
        _ => "?",
    }
}

fn kind_label(req: &SubmitRequest) -> String {
    let kind = match byoc_proto::agent::v1::ResourceKind::try_from(req.kind) {
        Ok(k) => k.as_str_name().trim_start_matches("RESOURCE_KIND_").to_lowercase(),
        Err(_) => "?".into(),
    };
    let name = serde_json::from_str::<serde_json::Value>(&req.spec_json)
        .ok()
        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .unwrap_or_default();
    format!("{kind} {name}")
}

/// Follows one operation to its result; true when it succeeded.
async fn watch(dir: &Path, op_id: &str, label: &str) -> anyhow::Result<bool> {
    let mut c = client::connect(dir).await?;
    let mut stream = c
        .watch(WatchRequest {
            operation_id: op_id.to_string(),
        })
        .await?
        .into_inner();
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:.bold} [{bar:30}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    let hidden = bar.is_hidden();
    let mut last_line = String::new();
    while let Some(ev) = stream.message().await? {
        match ev.body {
            Some(watch_event::Body::State(s)) => bar.set_message(s),
            Some(watch_event::Body::Accepted(_)) => bar.set_message("accepted by the agent"),
            Some(watch_event::Body::Progress(p)) => {
                if p.percent >= 0 {
                    bar.set_position(p.percent as u64);
                }
                let msg = format!("{}: {}", p.phase, p.message);
                if hidden {
                    // Not a terminal (CI, logs): a line when the phase or the
                    // tens digit of the percentage changes.
                    let line = format!("{msg} [{}%]", (p.percent.max(0) / 10) * 10);
                    if line != last_line {
                        eprintln!("{label}: {line}");
                        last_line = line;
                    }
                }
                bar.set_message(msg);
            }
            Some(watch_event::Body::Result(r)) => {
                let ok = r.outcome == Outcome::Succeeded as i32;
                if ok {
                    bar.set_position(100);
                }
                bar.finish_and_clear();
                println!("{}", summarize(label, &r));
                return Ok(ok);
            }
            None => {}
        }
    }
    bar.finish_and_clear();
    anyhow::bail!("the control plane closed the watch of {op_id} before its result")
}

fn summarize(label: &str, r: &OperationResult) -> String {
    let outcome = Outcome::try_from(r.outcome).map_or("unknown", |o| match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "FAILED",
        Outcome::Refused => "REFUSED",
        Outcome::Cancelled => "CANCELLED",
        Outcome::Unspecified => "unknown",
    });
    let mut s = format!("{label}: {outcome} ({})", r.operation_id);
    if let Some(o) = &r.outputs {
        s.push_str(&format!("\n  id: {}  status: {}", o.resource_id, o.status));
        for (k, v) in &o.endpoints {
            s.push_str(&format!("\n  endpoint {k}: {v}"));
        }
        for (k, v) in &o.secret_refs {
            s.push_str(&format!("\n  secret {k}: {v} (reference)"));
        }
    }
    if !r.plan.is_empty() {
        s.push_str("\n  plan:");
        for c in &r.plan {
            let path = if c.path.is_empty() { "(resource)" } else { &c.path };
            s.push_str(&format!(
                "\n    {} {path}: {} -> {}",
                c.kind,
                or_dash(&c.from_json),
                or_dash(&c.to_json)
            ));
        }
    }
    if let Some(p) = &r.problem {
        s.push_str(&format!("\n  {}: {}", p.code, p.message));
        if !p.field.is_empty() {
            s.push_str(&format!(" (field {})", p.field));
        }
        if !p.rule.is_empty() {
            s.push_str(&format!(" (rule {})", p.rule));
        }
    }
    s
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn result_json(r: &OperationResult) -> serde_json::Value {
    serde_json::json!({
        "result_seq": r.result_seq,
        "operation_id": r.operation_id,
        "outcome": Outcome::try_from(r.outcome).map(|o| o.as_str_name()).unwrap_or("?"),
        "outputs": r.outputs.as_ref().map(|o| serde_json::json!({
            "resource_id": o.resource_id, "status": o.status, "endpoints": o.endpoints,
            "secret_refs": o.secret_refs, "attributes": o.attributes,
        })),
        "plan": r.plan.iter().map(|c| serde_json::json!({
            "path": c.path, "kind": c.kind, "from": c.from_json, "to": c.to_json,
            "requires_replacement": c.requires_replacement,
        })).collect::<Vec<_>>(),
        "problem": r.problem.as_ref().map(|p| serde_json::json!({
            "code": p.code, "message": p.message, "field": p.field, "rule": p.rule,
        })),
        "finished_at_unix_ms": r.finished_at_unix_ms,
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
