//! moto in server mode: the real, independent AWS emulator the AWS provider
//! is tested against. `make test` installs it (pinned, `tests/moto/requirements.txt`)
//! into `.venv`; each test starts its own server on a port the OS picks.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root (the tests crate's parent).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn venv_bin(name: &str) -> PathBuf {
    let p = repo().join(".venv").join("bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: `make test` installs moto into .venv (python3 -m venv .venv && .venv/bin/pip install -r tests/moto/requirements.txt)",
        p.display()
    );
    p
}

/// A plain HTTP/1.1 request to a local test server; (status, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub struct Moto {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Moto {
    /// Starts `moto_server` on 127.0.0.1 and a free port, and waits until it answers.
    pub fn start(dir: &std::path::Path) -> Self {
        let log = dir.join("moto.log");
        let err = std::fs::File::create(&log).expect("moto log");
        let child = Command::new(venv_bin("python"))
            .arg(repo().join("tests").join("moto").join("moto_server.py"))
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start moto_server");
        let mut m = Self { child, port: 0, log };
        let start = Instant::now();
        // werkzeug prints " * Running on http://127.0.0.1:PORT" once it listens.
        while m.port == 0 {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            if let Some(p) = text
                .split("Running on http://127.0.0.1:")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse().ok())
            {
                m.port = p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto_server did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        while m.request("GET", "/moto-api/", "").0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(30), "moto_server does not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A plain HTTP/1.1 request to moto's own API; (status, body).
    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(self.port, method, path, body)
    }

    /// Forgets every resource.
    pub fn reset(&self) {
        assert_eq!(self.request("POST", "/moto-api/reset", "").0, 200, "moto reset");
    }

    /// Switches IAM enforcement on (every request must be signed by a known
    /// key whose policies allow its action) or off.
    pub fn enforce_iam(&self, on: bool) {
        let (status, body) = self.request("POST", "/moto-api/reset-auth", if on { "0" } else { "inf" });
        assert_eq!(status, 200, "moto reset-auth: {body}");
    }

    /// An independent look (boto3, not the agent's code): `tests/moto/aws.py`.
    pub fn aws(&self, args: &[&str]) -> Value {
        let out: Output = Command::new(venv_bin("python"))
            .arg(repo().join("tests").join("moto").join("aws.py"))
            .arg(self.url())
            .args(args)
            .output()
            .expect("aws.py");
        assert!(
            out.status.success(),
            "aws.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("aws.py json")
    }
}

/// `tests/moto/fault_proxy.py` in front of moto: throttling, server errors,
/// dropped connections, lost responses and slowness, in each service's wire
/// shape, for the resilience tests.
pub struct FaultProxy {
    child: Child,
    pub port: u16,
}

impl FaultProxy {
    pub fn start(moto: &Moto) -> Self {
        let mut child = Command::new(venv_bin("python"))
            .arg(repo().join("tests").join("moto").join("fault_proxy.py"))
            .arg(moto.port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fault_proxy.py");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("read port");
        let port = line
            .trim()
            .strip_prefix("PROXY_PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("fault_proxy.py said {line:?}"));
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sets the faults: `{"cycle": [...]}` or `{"queue": [...]}` (see the script).
    pub fn set(&self, faults: Value) {
        let (status, body) = http(self.port, "POST", "/__faults", &faults.to_string());
        assert_eq!(status, 200, "fault proxy: {body}");
    }

    /// Every request so far: `{"service", "action", "fault"}`.
    pub fn log(&self) -> Vec<Value> {
        let (status, body) = http(self.port, "GET", "/__log", "");
        assert_eq!(status, 200, "fault proxy: {body}");
        serde_json::from_str(&body).expect("fault proxy log")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
