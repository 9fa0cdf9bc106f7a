//! Test harness: the real `byoc-control` and `byoc-agent` binaries, over real
//! mutual TLS on loopback, on ports the OS picks, in temporary directories.
//!
//! ```no_run
//! let w = byoc_tests::World::new();
//! let cp = w.control_plane();
//! let agent = w.agent(&cp, byoc_tests::SimDelays::default());
//! let op = cp.submit_json(&byoc_tests::op("apply", "cluster", serde_json::json!({"name": "a", "kubernetes_version": "1.31"})));
//! assert!(cp.watch(&op).success);
//! ```

// A test harness fails by panicking with a message: that is its error handling.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod moto;
pub mod proxy;

/// Directory of the workspace's built binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps.
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (make test does)",
        p.display()
    );
    p
}

/// The executor and connection settings of every test agent: quick reconnects.
const COMMON_AGENT_CONFIG: &str = r#"[executor]
max_concurrent_operations = 16
operation_deadline = "5m"
[connection]
min_backoff = "100ms"
max_backoff = "1s"
connect_timeout = "3s"
"#;

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temporary world; everything in it is removed (and every process killed) on drop.
pub struct World {
    pub dir: tempfile::TempDir,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new().prefix("byoc-e2e-").tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a control plane in `<world>/cp`.
    pub fn control_plane(&self) -> ControlPlane {
        self.control_plane_in("cp")
    }

    pub fn control_plane_in(&self, name: &str) -> ControlPlane {
        self.control_plane_with(name, &[])
    }

    /// Starts a control plane in `<world>/<name>` with extra `serve` arguments.
    pub fn control_plane_with(&self, name: &str, extra: &[&str]) -> ControlPlane {
        let mut cp = ControlPlane {
            dir: self.path(name),
            child: None,
            url: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        cp.start();
        cp
    }

    /// Writes an agent config in `<world>/agent`, enrolls it with `cp` and starts it.
    pub fn agent(&self, cp: &ControlPlane, delays: SimDelays) -> Agent {
        self.start_agent(self.agent_config("agent", delays), cp)
    }

    /// Enrolls a configured agent (see `agent_config`) with `cp` and starts it.
    pub fn start_agent(&self, a: Agent, cp: &ControlPlane) -> Agent {
        let out = a.enroll(&cp.token("15m"), &cp.url);
        assert!(
            out.status.success(),
            "enroll failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut a = a;
        a.start();
        a.wait_connected(cp);
        a
    }

    /// Writes the config of an agent serving AWS through `endpoint` (moto),
    /// without enrolling or starting it.
    pub fn aws_agent_config(&self, name: &str, endpoint: &str, net: &serde_json::Value) -> Agent {
        let dir = self.path(name);
        let list = |v: &serde_json::Value| serde_json::to_string(v).expect("json list");
        let text = format!(
            r#"data_dir = "{data}"
[target]
cloud = "aws"
account = "123456789012"
region = "us-east-1"
{common}[provider.aws]
region = "us-east-1"
cluster_role_arn = "arn:aws:iam::123456789012:role/byoc-eks-cluster"
node_role_arn = "arn:aws:iam::123456789012:role/byoc-eks-node"
subnets = {subnets}
security_groups = [{sg}]
vpc_id = {vpc}
endpoint_url = "{endpoint}"
poll_interval = "100ms"
"#,
            data = dir.join("data").display(),
            common = COMMON_AGENT_CONFIG,
            subnets = list(&net["subnets"]),
            sg = net["sg"],
            vpc = net["vpc"],
        );
        Agent::configured(dir, &text)
    }

    /// Writes an agent config without enrolling or starting it.
    pub fn agent_config(&self, name: &str, delays: SimDelays) -> Agent {
        let dir = self.path(name);
        let text = format!(
            r#"data_dir = "{data}"
[target]
cloud = "sim"
account = "acct-1"
region = "sim-1"
{common}[provider.sim]
state_dir = "{sim}"
create_delay = "{c}ms"
update_delay = "{u}ms"
delete_delay = "{d}ms"
poll_interval = "20ms"
"#,
            data = dir.join("data").display(),
            sim = dir.join("sim").display(),
            common = COMMON_AGENT_CONFIG,
            c = delays.create.as_millis(),
            u = delays.update.as_millis(),
            d = delays.delete.as_millis(),
        );
        Agent::configured(dir, &text)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SimDelays {
    pub create: Duration,
    pub update: Duration,
    pub delete: Duration,
}

impl SimDelays {
    pub fn all(d: Duration) -> Self {
        Self {
            create: d,
            update: d,
            delete: d,
        }
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

pub struct ControlPlane {
    pub dir: PathBuf,
    child: Option<Child>,
    pub url: String,
    /// Extra arguments for `serve`.
    pub extra: Vec<String>,
}

impl ControlPlane {
    pub fn cli(&self) -> Command {
        let mut c = Command::new(bin("byoc-control"));
        c.arg("--data-dir").arg(&self.dir);
        c
    }

    /// Starts `serve` (again, after a kill, on the same port when it had one).
    pub fn start(&mut self) {
        let listen = match self.url.strip_prefix("https://") {
            Some(addr) => addr.to_string(),
            None => "127.0.0.1:0".to_string(),
        };
        let _ = std::fs::remove_file(self.dir.join("listen.url"));
        std::fs::create_dir_all(&self.dir).expect("cp dir");
        let log = self.dir.parent().expect("parent").join(format!(
            "{}.log",
            self.dir.file_name().and_then(|n| n.to_str()).unwrap_or("cp")
        ));
        let child = self
            .cli()
            .args(["serve", "--listen", &listen, "--heartbeat-interval", "1s"])
            .args(&self.extra)
            .stdout(Stdio::from(log_file(&log)))
            .stderr(Stdio::from(log_file(&log)))
            .spawn()
            .expect("spawn byoc-control");
        self.child = Some(child);
        let url_file = self.dir.join("listen.url");
        self.url = wait_for("the control plane to listen", Duration::from_secs(20), || {
            std::fs::read_to_string(&url_file).ok().filter(|s| !s.is_empty())
        });
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.start();
    }

    pub fn token(&self, ttl: &str) -> String {
        let out = self
            .cli()
            .args(["token", "create", "--ttl", ttl])
            .output()
            .expect("token create");
        assert!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8").trim().to_string()
    }

    /// Submits an operation document (see `op`) and returns its id.
    pub fn submit_json(&self, doc: &Value) -> String {
        let path = self.dir.join(format!("submit-{}.json", rand_suffix()));
        std::fs::write(&path, serde_json::to_vec(doc).expect("json")).expect("write op");
        let out = self.cli().arg("submit").arg(&path).output().expect("submit");
        assert!(out.status.success(), "submit: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).expect("utf8");
        stdout
            .split_whitespace()
            .find(|w| w.starts_with("op-"))
            .unwrap_or_else(|| panic!("no operation id in {stdout:?}"))
            .to_string()
    }

    /// Runs `watch` to the end; its exit code and output.
    pub fn watch(&self, op: &str) -> Watched {
        let out = self.cli().args(["watch", op]).output().expect("watch");
        Watched {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// `get` as JSON.
    pub fn get(&self, op: &str) -> Value {
        let out = self.cli().args(["get", op]).output().expect("get");
        assert!(out.status.success(), "get: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("get json")
    }

    pub fn agents(&self) -> String {
        let out = self.cli().arg("agents").output().expect("agents");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn rand_suffix() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    u128::from(N.fetch_add(1, Ordering::Relaxed))
}

#[derive(Debug)]
pub struct Watched {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// An operation document for `submit` against the harness's agent target.
pub fn op(action: &str, kind: &str, spec: Value) -> Value {
    json!({
        "target": {"cloud": "sim", "account": "acct-1", "region": "sim-1"},
        "action": action, "kind": kind, "spec": spec,
    })
}

pub fn cluster(name: &str) -> Value {
    json!({"name": name, "kubernetes_version": "1.31"})
}

pub struct Agent {
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// An agent whose config `text` is written to `dir/agent.toml`.
    fn configured(dir: PathBuf, text: &str) -> Self {
        std::fs::create_dir_all(&dir).expect("agent dir");
        let config = dir.join("agent.toml");
        std::fs::write(&config, text).expect("write config");
        Self {
            dir,
            config,
            child: None,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The agent id of the current enrollment.
    pub fn agent_id(&self) -> String {
        let e: Value = serde_json::from_slice(
            &std::fs::read(self.data_dir().join("identity/enrollment.json")).expect("read enrollment.json"),
        )
        .expect("enrollment.json is JSON");
        e["agent_id"].as_str().expect("agent_id").to_string()
    }

    pub fn sim_dir(&self) -> PathBuf {
        self.dir.join("sim")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn cli(&self) -> Command {
        let mut c = Command::new(bin("byoc-agent"));
        c.env_remove("BYOC_ENROLL_TOKEN");
        // A proxy set for the machine running the tests must not reroute the
        // agent; proxy tests set these themselves (tests/src/proxy.rs).
        for var in ["HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"] {
            c.env_remove(var);
        }
        c
    }

    /// The agent's policy file (written by `use_policy`).
    pub fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }

    /// Writes `text` as the agent's policy file, and names it in agent.toml
    /// (read at the next start; a running agent re-reads it on SIGHUP).
    pub fn use_policy(&self, text: &str) {
        std::fs::write(self.policy_path(), text).expect("write policy");
        let config = std::fs::read_to_string(&self.config).expect("config");
        if !config.starts_with("policy = ") {
            let line = format!("policy = \"{}\"\n", self.policy_path().display());
            std::fs::write(&self.config, line + &config).expect("write config");
        }
    }

    /// Sends a signal (e.g. "HUP") to the running agent.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{name}");
    }

    pub fn enroll(&self, token: &str, url: &str) -> Output {
        self.enroll_with(token, url, &[])
    }

    /// `enroll` with extra arguments (e.g. `--reenroll`).
    pub fn enroll_with(&self, token: &str, url: &str, extra: &[&str]) -> Output {
        self.cli()
            .arg("enroll")
            .args(extra)
            .arg("--config")
            .arg(&self.config)
            .args(["--token", token, "--control-plane", url])
            .output()
            .expect("enroll")
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts `run` with extra environment variables (e.g. planted canaries).
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        let child = self
            .cli()
            .envs(env.iter().copied())
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::from(log_file(&self.log_path())))
            .stderr(Stdio::from(log_file(&self.log_path())))
            .spawn()
            .expect("spawn byoc-agent");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = c.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_connected(&self, cp: &ControlPlane) {
        wait_for("the agent to connect", Duration::from_secs(20), || {
            cp.agents().lines().any(|l| l.contains(" connected ")).then_some(())
        });
    }

    /// The audit log's entries.
    pub fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.data_dir().join("audit").join("log.jsonl")).unwrap_or_default();
        // The agent may be appending right now: a last line without its newline
        // is still being written, not damage.
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        complete
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit entry"))
            .collect()
    }

    pub fn audit_verify(&self) -> Output {
        self.cli()
            .args(["audit", "verify", "--config"])
            .arg(&self.config)
            .output()
            .expect("audit verify")
    }

    /// Every byte the agent wrote to its log so far, plus its status.
    pub fn status(&self) -> Output {
        self.cli()
            .args(["status", "--config"])
            .arg(&self.config)
            .output()
            .expect("status")
    }

    /// `status --json`: whether the agent runs, and under `agent` its last
    /// published state (agent/src/status.rs), e.g. `results_unacknowledged`.
    pub fn status_json(&self) -> Value {
        let out = self
            .cli()
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .output()
            .expect("status --json");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Waits until the agent's outbox holds `n` results the control plane has
    /// not acknowledged. The outbox counts a result only once the result is in
    /// its journal: from then on it survives a crash of the agent and is
    /// (re)sent at the start of every session until acknowledged.
    pub fn wait_unacknowledged_results(&self, n: u64, timeout: Duration) {
        wait_for(
            &format!("{n} unacknowledged result(s) in the agent's outbox"),
            timeout,
            || (self.status_json()["agent"]["results_unacknowledged"].as_u64() == Some(n)).then_some(()),
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Reads a whole file into a string (empty when missing).
pub fn read(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}
