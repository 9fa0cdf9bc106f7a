//! A real HTTPS proxy on loopback for the proxy tests: Debian's `tinyproxy`,
//! one per test, with a generated configuration (its port, the one port it
//! may CONNECT to, Basic credentials, loopback clients only), in the
//! foreground, logging every request to a file the test reads.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::{Agent, wait_for};

/// A running tinyproxy; killed on drop.
pub struct Tinyproxy {
    pub port: u16,
    pub log: PathBuf,
    child: Child,
}

/// The tinyproxy binary. Without it the proxy tests cannot prove anything, so
/// they fail (loudly) rather than pass: `scripts/test.sh` installs it.
pub fn tinyproxy_bin() -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("tinyproxy"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "tinyproxy is not installed, so the proxy tests cannot run: `apt-get install -y tinyproxy` \
             (scripts/test.sh does this on Debian)"
        )
    })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Tinyproxy {
    /// Starts tinyproxy in `dir`, allowed to tunnel to `connect_port` only,
    /// requiring `auth` (user, password) when given.
    pub fn start(dir: &Path, connect_port: u16, auth: Option<(&str, &str)>) -> Self {
        let bin = tinyproxy_bin();
        std::fs::create_dir_all(dir).expect("proxy dir");
        let log = dir.join("tinyproxy.log");
        // The port is free when picked; another process may take it before
        // tinyproxy binds it, so try a few.
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.join("tinyproxy.conf");
            let mut text = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{log}\"\nLogLevel Info\nMaxClients 50\n\
                 Allow 127.0.0.1\nConnectPort {connect_port}\nDisableViaHeader Yes\n",
                log = log.display()
            );
            if let Some((user, password)) = auth {
                text.push_str(&format!("BasicAuth {user} {password}\n"));
            }
            std::fs::write(&conf, text).expect("tinyproxy.conf");
            let out = std::fs::File::create(dir.join("tinyproxy.out")).expect("out");
            let mut child = Command::new(&bin)
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::from(out.try_clone().expect("out")))
                .stderr(Stdio::from(out))
                .spawn()
                .expect("spawn tinyproxy");
            let up = wait_for("tinyproxy to listen", Duration::from_secs(10), || {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return Some(false);
                }
                std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| true)
            });
            if up {
                return Self { port, log, child };
            }
        }
        panic!("tinyproxy did not start: {}", crate::read(&dir.join("tinyproxy.out")));
    }

    /// `http://host:port` with `user:password@` when given.
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((u, p)) => format!("http://{u}:{p}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    pub fn log(&self) -> String {
        crate::read(&self.log)
    }

    /// The CONNECT requests tinyproxy received, e.g. `CONNECT 127.0.0.1:7443 HTTP/1.1`.
    pub fn connect_requests(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("): ").map(|(_, r)| r.to_string()))
            .filter(|r| r.starts_with("CONNECT "))
            .collect()
    }

    /// Tunnels tinyproxy actually opened to the upstream (bytes went through).
    pub fn established(&self) -> usize {
        self.log().matches("Established connection to host").count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds `lines` to the `[connection]` table of an agent's config.
pub fn add_connection_settings(agent: &Agent, lines: &str) {
    let text = std::fs::read_to_string(&agent.config).expect("config");
    assert!(text.contains("[connection]\n"), "{text}");
    std::fs::write(
        &agent.config,
        text.replace("[connection]\n", &format!("[connection]\n{lines}\n")),
    )
    .expect("config");
}

/// `byoc-agent enroll` with extra environment variables.
pub fn enroll_with_env(agent: &Agent, token: &str, url: &str, env: &[(&str, &str)]) -> Output {
    agent
        .cli()
        .envs(env.iter().copied())
        .args(["enroll", "--config"])
        .arg(&agent.config)
        .args(["--token", token, "--control-plane", url])
        .output()
        .expect("enroll")
}
