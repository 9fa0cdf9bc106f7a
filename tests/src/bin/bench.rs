//! `byoc-bench` (`make bench`): dispatch latency, throughput and idle memory of
//! the real `byoc-control` and `byoc-agent` binaries over loopback mTLS.
//!
//! The harness ([`byoc_tests::World`]) starts a control plane and one agent on
//! the simulated cloud with zero create/update/delete delays, in a temporary
//! directory. The bench then talks to the control plane's admin API directly
//! over its Unix socket (`<cp>/admin.sock`) with tonic: an operation is a
//! `Submit` followed by a `Watch` that ends with its `result` event.
//!
//! Measured, with the goals they are checked against (a missed goal is printed
//! as MISS but is not an error; only a failing operation or setup is):
//!
//! 1. dispatch latency submit -> result, one operation at a time, for an
//!    `apply` that changes nothing (no mutating cloud call) and an `apply` that
//!    creates a new cluster each time: p50/p90/p99/max; goal p99 <= 5 ms;
//! 2. throughput with `BENCH_CONCURRENCY` (64) submit+watch loops in flight,
//!    `BENCH_THROUGHPUT_OPS` (10,000) operations, both kinds; goal >= 1,000 ops/s;
//! 3. resident memory of a fresh agent connected and idle for `BENCH_IDLE_SECS`
//!    (60) seconds: VmRSS and VmHWM; goal <= 24 MiB;
//! 4. audit log appends per second, each durable before it is acknowledged,
//!    `BENCH_AUDIT_WRITERS` (256) appending at once, `BENCH_AUDIT_ENTRIES`
//!    (1,000,000) entries, 6 per operation as the agent writes them, with the
//!    agent's checkpoint cadence and a receipt per operation;
//!    goal >= 20,000/s;
//! 5. verification speed of that log (tree, chain, every checkpoint signature
//!    and consistency proof, every receipt); goal >= 200,000 entries/s.
//!
//! `BENCH_ONLY=audit` runs sections 4 and 5 only; `BENCH_AUDIT_DIR=DIR` keeps
//! the log written there (to time `byoc-audit-verify DIR` on it).
//!
//! `BENCH_WARMUP` (200) and `BENCH_LATENCY_OPS` (2,000) size the latency runs.
//! Every durable record is an append plus `fdatasync`, so the bench also times
//! that on the temp directory's disk, before and after, to put the figures in
//! context. The client runs on a single-threaded runtime: at most one core.
//! Findings and recorded figures: `docs/benchmarks.md`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use byoc_proto::agent::v1::{Action, Outcome, ResourceKind, Target};
use byoc_proto::control::v1::admin_service_client::AdminServiceClient;
use byoc_proto::control::v1::{SubmitRequest, WatchRequest, watch_event};
use byoc_tests::{SimDelays, World};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

type Client = AdminServiceClient<Channel>;

const LATENCY_GOAL_MS: f64 = 5.0;
const THROUGHPUT_GOAL: f64 = 1000.0;
const IDLE_RSS_GOAL_MIB: f64 = 24.0;
/// The cluster every "unchanged apply" applies again.
const STEADY: &str = "bench-steady";

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let warmup = env_usize("BENCH_WARMUP", 200)?;
    let latency_ops = env_usize("BENCH_LATENCY_OPS", 2000)?;
    let concurrency = env_usize("BENCH_CONCURRENCY", 64)?.max(1);
    let throughput_ops = env_usize("BENCH_THROUGHPUT_OPS", 10_000)?;
    let idle_secs = env_usize("BENCH_IDLE_SECS", 60)? as u64;

    print_context()?;
    let mut misses = Vec::new();
    let only_audit = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "audit");
    if !only_audit {
        agent_sections(&mut misses, warmup, latency_ops, concurrency, throughput_ops, idle_secs)?;
    }
    audit_sections(&mut misses)?;

    println!("\n== Summary ==");
    println!("   disk flush now: {}", flush_probe()?);
    if misses.is_empty() {
        println!("   every goal met");
    } else {
        println!("   goals missed: {}", misses.join("; "));
    }
    Ok(())
}

fn agent_sections(
    misses: &mut Vec<String>,
    warmup: usize,
    latency_ops: usize,
    concurrency: usize,
    throughput_ops: usize,
    idle_secs: u64,
) -> anyhow::Result<()> {
    // Dispatch latency and throughput share one world: one control plane, one agent.
    {
        let world = World::new();
        let cp = world.control_plane();
        let agent = world.agent(&cp, SimDelays::default());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let client = connect(&cp.dir).await?;
            run(&client, STEADY).await.context("creating the steady cluster")?;

            println!("\n== 1. Dispatch latency, one operation at a time (submit -> result event) ==");
            println!("   warm-up {warmup} operations, then {latency_ops} measured");
            let kinds = [
                ("apply, unchanged cluster (no mutating cloud call)", None),
                ("apply, new cluster each time (sim:CreateCluster)", Some("c")),
            ];
            for (label, prefix) in kinds {
                for i in 1..=warmup {
                    run(&client, &cluster(prefix.map(|_| "w"), i)).await?;
                }
                let (mut lat, mut sub) = (Vec::with_capacity(latency_ops), Vec::with_capacity(latency_ops));
                for i in 1..=latency_ops {
                    let t = run(&client, &cluster(prefix, i)).await?;
                    lat.push(t.total);
                    sub.push(t.submit);
                }
                let s = Stats::of(&mut lat);
                println!("   {label}:\n      submit -> result: {s}");
                println!("      of which Submit RPC: {}", Stats::of(&mut sub));
                verdict(misses, label, s.p99 <= LATENCY_GOAL_MS, "p99 <= 5 ms");
            }

            println!("\n== 2. Throughput through one agent ({concurrency} submit+watch loops in flight) ==");
            println!("   {throughput_ops} operations per run; the harness's agent runs at most 16 at once");
            let kinds = [
                ("apply, unchanged cluster", None),
                ("apply, new cluster each time", Some("t")),
            ];
            for (label, prefix) in kinds {
                let (elapsed, mut lat) = throughput(&client, concurrency, throughput_ops, prefix).await?;
                let rate = throughput_ops as f64 / elapsed.as_secs_f64();
                let s = Stats::of(&mut lat);
                println!(
                    "   {label}: {rate:.0} ops/s ({throughput_ops} in {:.2} s)",
                    elapsed.as_secs_f64()
                );
                println!("      latency under load: {s}");
                verdict(misses, label, rate >= THROUGHPUT_GOAL, ">= 1,000 ops/s");
            }
            anyhow::Ok(())
        })?;
        let (rss, hwm) = memory(agent.pid())?;
        println!("\n   agent after the load runs: VmRSS {rss:.1} MiB, VmHWM {hwm:.1} MiB (for reference)");
    }

    // Idle memory: a fresh world, so the load above cannot inflate it.
    println!("\n== 3. Agent idle resident memory ({idle_secs} s connected, nothing to do) ==");
    let world = World::new();
    let cp = world.control_plane();
    let agent = world.agent(&cp, SimDelays::default());
    std::thread::sleep(Duration::from_secs(idle_secs));
    if !cp.agents().lines().any(|l| l.contains(" connected ")) {
        bail!(
            "the idle agent is no longer connected after {idle_secs} s; see {}",
            agent.log_path().display()
        );
    }
    let (rss, hwm) = memory(agent.pid())?;
    println!("   VmRSS {rss:.1} MiB, VmHWM {hwm:.1} MiB");
    verdict(misses, "idle agent VmRSS", rss <= IDLE_RSS_GOAL_MIB, "<= 24 MiB");
    if idle_secs < 60 {
        println!("   note: BENCH_IDLE_SECS={idle_secs}; the goal is stated for 60 s");
    }
    Ok(())
}

const AUDIT_APPEND_GOAL: f64 = 20_000.0;
const AUDIT_VERIFY_GOAL: f64 = 200_000.0;

/// Sections 4 and 5: the audit log on its own, as the agent configures it.
fn audit_sections(misses: &mut Vec<String>) -> anyhow::Result<()> {
    use byoc_audit::{AuditLog, Event, Options, load_or_create_key, verify};
    let writers = env_usize("BENCH_AUDIT_WRITERS", 256)?.max(1);
    let entries = env_usize("BENCH_AUDIT_ENTRIES", 1_000_000)?;
    let tmp = tempfile::tempdir()?;
    // BENCH_AUDIT_DIR keeps the log, to time `byoc-audit-verify DIR` on it.
    let dir = match std::env::var_os("BENCH_AUDIT_DIR") {
        Some(d) => {
            let d = std::path::PathBuf::from(d);
            if d.exists() {
                bail!("BENCH_AUDIT_DIR {} exists; give a new directory", d.display());
            }
            d
        }
        None => tmp.path().join("audit"),
    };
    println!("\n== 4. Audit log appends, each durable before it returns ({writers} appending at once) ==");
    println!("   {entries} entries, 6 per operation as the agent writes them (received, policy decision, started,");
    println!("   two cloud calls, finished with a receipt);");
    println!("   a signed checkpoint every 1,000 entries, as the agent does");
    let (signer, _) = load_or_create_key(&tmp.path().join("audit.key"), "byoc-agent/audit/bench")?;
    let log = AuditLog::open(&dir, signer, Options::default())?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut lat = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let (log, next) = (log.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= entries {
                        return anyhow::Ok(lat);
                    }
                    // The entries of one operation, as the agent writes them.
                    let op = format!("op-{:016x}", i / 6);
                    let name = format!("cluster/bench-{}", i / 6);
                    let ev = match i % 6 {
                        0 => Event::new("operation.received", Some(&op), serde_json::json!({
                            "sequence": i / 6, "action": "apply", "kind": "cluster", "name": name,
                            "idempotency_key": format!("idem-{i:016x}"), "issued_at_unix_ms": 1_795_000_000_000u64, "not_after_unix_ms": 1_795_000_300_000u64,
                        })).with_actor(serde_json::json!({
                            "control_plane": "https://control.example.com:7443", "ca_sha256": ["8f4c".repeat(16)], "operation_key_sha256": "2b1e".repeat(16),
                        })),
                        1 => Event::new("policy.decision", Some(&op), serde_json::json!({
                            "decision": "allow", "rule": "kinds.cluster.apply", "policy_sha256": "5a7d".repeat(16),
                        })),
                        2 => Event::new("operation.started", Some(&op), serde_json::json!({"action": "apply", "kind": "cluster", "name": name})),
                        3 => Event::new("provider.call", Some(&op), serde_json::json!({"action": "sim:DescribeCluster", "resource": name, "mutating": false})),
                        4 => Event::new("provider.call", Some(&op), serde_json::json!({"action": "sim:CreateCluster", "resource": name, "mutating": true})),
                        _ => Event::new("operation.finished", Some(&op), serde_json::json!({
                            "outcome": "OUTCOME_SUCCEEDED", "resource_id": format!("sim-cluster-{i:012x}"), "problem": null,
                            "calls": {"made": [
                                {"action": "sim:DescribeCluster", "resource": name, "mutating": false, "request_id": format!("sim-{i:024x}")},
                                {"action": "sim:CreateCluster", "resource": name, "mutating": true, "request_id": format!("sim-{:024x}", i + 1)},
                            ], "read_only_not_listed": 0},
                        })),
                    };
                    let t = Instant::now();
                    log.record(ev).await?;
                    lat.push(t.elapsed());
                }
            }));
        }
        let mut all = Vec::with_capacity(entries);
        for t in tasks {
            all.extend(t.await??);
        }
        anyhow::Ok(all)
    })?;
    let elapsed = start.elapsed();
    rt.block_on(log.close())?;
    drop(log);
    let rate = entries as f64 / elapsed.as_secs_f64();
    println!("   {rate:.0} appends/s ({entries} in {:.2} s)", elapsed.as_secs_f64());
    println!("      append latency: {}", Stats::of(&mut lat));
    let size = std::fs::metadata(dir.join("log.jsonl"))?.len();
    println!(
        "      log size {:.1} MiB, {:.0} bytes an entry",
        size as f64 / (1 << 20) as f64,
        size as f64 / entries as f64
    );
    verdict(
        misses,
        "audit appends",
        rate >= AUDIT_APPEND_GOAL,
        ">= 20,000 appends/s",
    );

    println!("\n== 5. Verifying that log (byoc_audit::verify, as `byoc-audit-verify` does) ==");
    let start = Instant::now();
    let s = verify::verify_dir(&dir, &verify::Options::default()).map_err(|f| anyhow::anyhow!("{f}"))?;
    let elapsed = start.elapsed();
    let rate = s.entries as f64 / elapsed.as_secs_f64();
    println!(
        "   {rate:.0} entries/s ({} entries, {} checkpoints, {} receipts in {:.2} s)",
        s.entries,
        s.checkpoints,
        s.receipts,
        elapsed.as_secs_f64()
    );
    verdict(
        misses,
        "audit verification",
        rate >= AUDIT_VERIFY_GOAL,
        ">= 200,000 entries/s",
    );
    Ok(())
}

/// Machine and build context, and how to reproduce.
fn print_context() -> anyhow::Result<()> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let bins = byoc_tests::bin_dir();
    let release = !cfg!(debug_assertions) && bins.ends_with("release");
    println!("byoc-bench: dispatch latency, throughput and idle memory");
    println!("   reproduce:  make bench   (cargo build --release --workspace --bins;");
    println!("               cargo run --release -p byoc-tests --bin byoc-bench)");
    println!(
        "   machine:    {cpus} CPUs ({model}), kernel {}",
        read("/proc/sys/kernel/osrelease").trim()
    );
    println!("   load avg:   {}", read("/proc/loadavg").trim());
    println!(
        "   binaries:   {} ({})",
        bins.display(),
        if release { "release" } else { "NOT release" }
    );
    println!(
        "   state dirs: {} (fsync'd files live here)",
        std::env::temp_dir().display()
    );
    println!("   sim cloud:  create/update/delete delay 0, poll interval 20 ms; loopback mTLS");
    println!("   disk flush: {}", flush_probe()?);
    println!("               (append 256 bytes + fdatasync, 200 times: the floor under every durable record)");
    Ok(())
}

/// Times appending a line and `fdatasync`, as the logs do, in the temp directory.
fn flush_probe() -> anyhow::Result<Stats> {
    use std::io::Write as _;
    let mut f = tempfile::tempfile().context("creating a file for the disk flush probe")?;
    let mut lat = Vec::with_capacity(200);
    for _ in 0..200 {
        let start = Instant::now();
        f.write_all(&[b'x'; 256])?;
        f.sync_data()?;
        lat.push(start.elapsed());
    }
    Ok(Stats::of(&mut lat))
}

fn verdict(misses: &mut Vec<String>, what: &str, ok: bool, goal: &str) {
    println!("      goal {goal}: {}", if ok { "PASS" } else { "MISS" });
    if !ok {
        misses.push(format!("{what} ({goal})"));
    }
}

/// Connects to the admin API on `<data_dir>/admin.sock` (as `control::client` does).
async fn connect(data_dir: &Path) -> anyhow::Result<Client> {
    let sock = data_dir.join("admin.sock");
    let channel = Endpoint::from_static("http://control.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?)) }
        }))
        .await
        .context("connecting to the admin socket")?;
    Ok(AdminServiceClient::new(channel))
}

/// How long one operation took, from just before its Submit.
struct Timing {
    /// To the result event.
    total: Duration,
    /// To the Submit response (the control plane has signed and fsync'd it).
    submit: Duration,
}

/// Applies cluster `name`: Submit, then Watch until the result; an error
/// unless it succeeded.
async fn run(client: &Client, name: &str) -> anyhow::Result<Timing> {
    let mut c = client.clone();
    let spec = serde_json::json!({ "name": name, "kubernetes_version": "1.31" });
    let start = Instant::now();
    let submitted = c
        .submit(SubmitRequest {
            target: Some(Target {
                cloud: "sim".into(),
                account: "acct-1".into(),
                region: "sim-1".into(),
            }),
            action: Action::Apply as i32,
            kind: ResourceKind::Cluster as i32,
            spec_json: spec.to_string(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("submitting apply of cluster {name}"))?
        .into_inner();
    let submit = start.elapsed();
    let op = submitted.operation_id;
    // Watch returns the stored result at once if the operation already finished.
    let mut events = c
        .watch(WatchRequest {
            operation_id: op.clone(),
        })
        .await
        .with_context(|| format!("watching {op}"))?
        .into_inner();
    while let Some(ev) = events.message().await.with_context(|| format!("watching {op}"))? {
        if let Some(watch_event::Body::Result(r)) = ev.body {
            let total = start.elapsed();
            if r.outcome != Outcome::Succeeded as i32 {
                let problem = r
                    .problem
                    .as_ref()
                    .map(|p| format!("{}: {}", p.code, p.message))
                    .unwrap_or_default();
                bail!("{op} (apply cluster {name}) ended {:?}: {problem}", r.outcome());
            }
            return Ok(Timing { total, submit });
        }
    }
    bail!("the watch of {op} ended without a result")
}

/// The cluster an operation applies: the steady one, or `<prefix>-<i>` (new).
fn cluster(prefix: Option<&str>, i: usize) -> String {
    prefix.map_or_else(|| STEADY.to_string(), |p| format!("{p}-{i:05}"))
}

/// Runs `total` operations from `concurrency` loops; the wall time and each latency.
async fn throughput(
    client: &Client,
    concurrency: usize,
    total: usize,
    prefix: Option<&'static str>,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let next = Arc::new(AtomicUsize::new(1));
    let start = Instant::now();
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next) = (client.clone(), next.clone());
        loops.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > total {
                    return anyhow::Ok(lat);
                }
                lat.push(run(&client, &cluster(prefix, i)).await?.total);
            }
        });
    }
    let mut all = Vec::with_capacity(total);
    while let Some(done) = loops.join_next().await {
        all.extend(done??);
    }
    Ok((start.elapsed(), all))
}

/// VmRSS and VmHWM of `pid`, in MiB.
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in {path}"))?;
        let kib: f64 = line
            .trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{line:?} in {path}"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Latency percentiles in milliseconds (nearest rank).
struct Stats {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Stats {
    fn of(lat: &mut [Duration]) -> Self {
        lat.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let at = |q: f64| {
            let rank = ((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len().max(1));
            lat.get(rank - 1).copied().map_or(0.0, ms)
        };
        let sum: Duration = lat.iter().sum();
        Self {
            n: lat.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: lat.last().copied().map_or(0.0, ms),
            mean: if lat.is_empty() {
                0.0
            } else {
                ms(sum) / lat.len() as f64
            },
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (mean {:.2} ms)",
            self.n, self.p50, self.p90, self.p99, self.max, self.mean
        )
    }
}
