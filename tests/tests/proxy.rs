//! The agent behind an HTTPS proxy: enrollment and the session go through a
//! real proxy (tinyproxy, on loopback) with HTTP CONNECT and Basic
//! credentials, TLS stays end to end, refusals are clear, the password never
//! shows, and NO_PROXY bypasses the proxy.

#![allow(clippy::expect_used)]

use std::process::Output;
use std::time::Duration;

use byoc_tests::proxy::{Tinyproxy, add_connection_settings, enroll_with_env};
use byoc_tests::{Agent, ControlPlane, SimDelays, World, cluster, op, wait_for};

fn port_of(cp: &ControlPlane) -> u16 {
    cp.url.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("port")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Everything the agent printed or wrote for others to read.
fn agent_outputs(agent: &Agent, extra: &[&Output]) -> String {
    let mut all = agent.log();
    all.push_str(&byoc_tests::read(&agent.data_dir().join("audit").join("log.jsonl")));
    all.push_str(&byoc_tests::read(&agent.data_dir().join("status.json")));
    all.push_str(&String::from_utf8_lossy(&agent.status().stdout));
    for out in extra {
        all.push_str(&String::from_utf8_lossy(&out.stdout));
        all.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    all
}

fn assert_secret_absent(text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !text.contains(s),
            "the proxy password ({s}) appears in the agent's output:\n{text}"
        );
    }
}

fn applies(cp: &ControlPlane, name: &str) {
    let watched = cp.watch(&cp.submit_json(&op("apply", "cluster", cluster(name))));
    assert!(watched.success, "{watched:?}");
}

#[test]
fn enrollment_the_session_and_operations_go_through_the_proxy_set_in_the_config() {
    let w = World::new();
    let cp = w.control_plane();
    let target = format!("CONNECT 127.0.0.1:{} HTTP/1.1", port_of(&cp));
    // Percent-encoded in the URL (tinyproxy's own passwords are [-A-Za-z0-9._]).
    let proxy = Tinyproxy::start(&w.path("proxy"), port_of(&cp), Some(("byoc", "pass-w0rd.x")));
    let mut agent = w.agent_config("agent", SimDelays::default());
    let url = proxy.url(Some(("byoc", "pass%2Dw0rd%2Ex")));
    add_connection_settings(&agent, &format!("proxy = \"{url}\""));
    // The config wins over the environment: this proxy does not exist.
    let env = [("HTTPS_PROXY", "http://127.0.0.1:1")];

    let enrolled = enroll_with_env(&agent, &cp.token("15m"), &cp.url, &env);
    assert!(enrolled.status.success(), "{}", stderr(&enrolled));
    assert_eq!(proxy.connect_requests(), vec![target.clone()], "{}", proxy.log());

    agent.start_with_env(&env);
    agent.wait_connected(&cp);
    applies(&cp, "through-the-proxy");
    let requests = proxy.connect_requests();
    assert!(
        requests.len() >= 2 && requests.iter().all(|r| *r == target),
        "{requests:?}"
    );
    assert!(proxy.established() >= 2, "{}", proxy.log());
    assert!(
        agent.log().contains(&format!(
            "through the proxy http://byoc@127.0.0.1:{} (from agent.toml)",
            proxy.port
        )),
        "{}",
        agent.log()
    );
    // "byoc:pass-w0rd.x" in Basic encoding, too.
    assert_secret_absent(
        &agent_outputs(&agent, &[&enrolled]),
        &["pass-w0rd.x", "pass%2Dw0rd%2Ex", "YnlvYzpwYXNzLXcwcmQueA"],
    );
}

#[test]
fn the_https_proxy_environment_variable_works_like_the_setting() {
    let w = World::new();
    let cp = w.control_plane();
    let proxy = Tinyproxy::start(&w.path("proxy"), port_of(&cp), Some(("envuser", "env-pw")));
    let mut agent = w.agent_config("agent", SimDelays::default());
    let url = proxy.url(Some(("envuser", "env-pw")));
    let env = [
        ("HTTPS_PROXY", url.as_str()),
        ("NO_PROXY", "localhost,.internal.example"),
    ];

    let enrolled = enroll_with_env(&agent, &cp.token("15m"), &cp.url, &env);
    assert!(enrolled.status.success(), "{}", stderr(&enrolled));
    agent.start_with_env(&env);
    agent.wait_connected(&cp);
    applies(&cp, "via-env");
    assert!(proxy.connect_requests().len() >= 2, "{}", proxy.log());
    assert!(proxy.established() >= 2, "{}", proxy.log());
    assert!(agent.log().contains("(from HTTPS_PROXY)"), "{}", agent.log());
    assert_secret_absent(&agent_outputs(&agent, &[&enrolled]), &["env-pw"]);
}

#[test]
fn no_proxy_matching_the_control_plane_bypasses_the_proxy() {
    let w = World::new();
    let cp = w.control_plane();
    let proxy = Tinyproxy::start(&w.path("proxy"), port_of(&cp), Some(("byoc", "pw")));
    let url = proxy.url(Some(("byoc", "pw")));

    // From the environment, for enrollment and the session.
    let mut agent = w.agent_config("agent", SimDelays::default());
    let env = [("HTTPS_PROXY", url.as_str()), ("NO_PROXY", "localhost, 127.0.0.1")];
    let enrolled = enroll_with_env(&agent, &cp.token("15m"), &cp.url, &env);
    assert!(enrolled.status.success(), "{}", stderr(&enrolled));
    agent.start_with_env(&env);
    agent.wait_connected(&cp);
    applies(&cp, "direct");
    assert!(agent.log().contains("direct (no_proxy matches"), "{}", agent.log());

    // From the config, by CIDR.
    let other = w.agent_config("other", SimDelays::default());
    add_connection_settings(&other, &format!("proxy = \"{url}\"\nno_proxy = [\"127.0.0.0/8\"]"));
    let out = other.enroll(&cp.token("15m"), &cp.url);
    assert!(out.status.success(), "{}", stderr(&out));

    let log = proxy.log();
    assert!(proxy.connect_requests().is_empty(), "the proxy saw a request:\n{log}");
    assert_eq!(proxy.established(), 0, "{log}");
}

/// tinyproxy answers a CONNECT without credentials with 407 and one with
/// wrong credentials with 401 (RFC 9110 wants 407 for both); the agent reports
/// either as refused credentials, with the status line the proxy sent.
#[test]
fn wrong_or_missing_proxy_credentials_are_a_clear_refusal_that_names_the_proxy_and_not_the_password() {
    let w = World::new();
    let cp = w.control_plane();
    let proxy = Tinyproxy::start(&w.path("proxy"), port_of(&cp), Some(("byoc", "right-pw")));
    let mut agent = w.agent_config("agent", SimDelays::default());
    let config = std::fs::read_to_string(&agent.config).expect("config");
    let set_proxy = |url: String| {
        std::fs::write(&agent.config, &config).expect("config");
        add_connection_settings(&agent, &format!("proxy = \"{url}\""));
    };
    let named = format!("http://byoc@127.0.0.1:{}", proxy.port);

    set_proxy(proxy.url(Some(("byoc", "wrong-pw-1"))));
    let wrong = agent.enroll(&cp.token("15m"), &cp.url);
    let err = stderr(&wrong);
    assert_eq!(wrong.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("the proxy {named} refused the credentials")),
        "{err}"
    );
    assert!(err.contains("HTTP/1.0 401 Unauthorized"), "{err}");
    assert!(!agent.data_dir().join("identity/enrollment.json").exists());

    set_proxy(proxy.url(None));
    let missing = agent.enroll(&cp.token("15m"), &cp.url);
    let err = stderr(&missing);
    assert_eq!(missing.status.code(), Some(2), "{err}");
    let anonymous = format!("the proxy http://127.0.0.1:{} refused the credentials", proxy.port);
    assert!(err.contains(&anonymous), "{err}");
    assert!(err.contains("407 Proxy Authentication Required"), "{err}");

    // Enrolled with the right password, then run with a wrong one.
    set_proxy(proxy.url(Some(("byoc", "right-pw"))));
    let enrolled = agent.enroll(&cp.token("15m"), &cp.url);
    assert!(enrolled.status.success(), "{}", stderr(&enrolled));
    set_proxy(proxy.url(Some(("byoc", "wrong-pw-2"))));
    agent.start();
    wait_for("the refusal in the agent's log", Duration::from_secs(20), || {
        agent.log().contains("401 Unauthorized").then_some(())
    });
    assert!(
        agent
            .log()
            .contains(&format!("the proxy {named} refused the credentials")),
        "{}",
        agent.log()
    );
    assert!(agent.is_running(), "a refusing proxy is retried, not fatal");
    assert!(!cp.agents().contains(" connected "), "{}", cp.agents());
    assert_secret_absent(&agent_outputs(&agent, &[&wrong, &enrolled]), &["wrong-pw", "right-pw"]);
}

#[test]
fn a_proxy_that_refuses_the_tunnel_or_cannot_be_reached_is_named_with_the_reason() {
    let w = World::new();
    let cp = w.control_plane();
    // Allowed to tunnel to another port only: tinyproxy answers 403.
    let proxy = Tinyproxy::start(&w.path("proxy"), port_of(&cp).wrapping_add(1).max(1), None);
    let agent = w.agent_config("agent", SimDelays::default());
    let token = cp.token("15m");

    let url = proxy.url(None);
    let out = enroll_with_env(&agent, &token, &cp.url, &[("HTTPS_PROXY", url.as_str())]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "the proxy {url} refused the tunnel to 127.0.0.1:{}",
            port_of(&cp)
        )),
        "{err}"
    );
    assert!(err.contains("403 Access violation"), "{err}");

    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://127.0.0.1:{}", dead.local_addr().expect("addr").port());
    drop(dead);
    let out = enroll_with_env(&agent, &token, &cp.url, &[("https_proxy", dead_url.as_str())]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("cannot reach the proxy {dead_url}")), "{err}");

    // The token was never used: enrollment still works once the route is right.
    let out = agent.enroll(&token, &cp.url);
    assert!(out.status.success(), "{}", stderr(&out));
}
