//! Trust boundaries, end to end through the real binaries: single-use and
//! short-lived enrollment tokens, mutual TLS with the control plane's own CA
//! only, the server pinned by the token, no inbound port, a private key kept
//! private.

// The helpers below fail the test the way a test does: by panicking.
#![allow(clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use byoc_proto::agent::v1::agent_service_client::AgentServiceClient;
use byoc_proto::agent::v1::{AgentMessage, Hello, RenewRequest, agent_message};
use byoc_tests::{SimDelays, World, cluster, op};
use common::Ca;
use rustls_pki_types::CertificateDer;

/// A refused command: a non-zero exit of its own (not a signal, not a panic),
/// with `needle` in its error output.
fn assert_refused(what: &str, out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} succeeded: {stderr}");
    assert!(
        out.status.code().is_some_and(|c| c != 101),
        "{what} crashed ({:?}): {stderr}",
        out.status
    );
    assert!(stderr.contains(needle), "{what}: expected {needle:?} in: {stderr}");
}

/// No identity material at all was written in `data_dir`.
fn assert_no_identity(data_dir: &Path) {
    let dir = data_dir.join("identity");
    for f in [
        "enrollment.json",
        "agent.key",
        "agent.der",
        "ca.der",
        "operation-key.pub",
    ] {
        assert!(!dir.join(f).exists(), "{} was written", dir.join(f).display());
    }
}

#[test]
fn an_enrollment_token_works_only_once() {
    let w = World::new();
    let cp = w.control_plane();
    let token = cp.token("15m");

    let first = w.agent_config("agent1", SimDelays::default());
    let out = first.enroll(&token, &cp.url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(first.data_dir().join("identity/enrollment.json").exists());

    let second = w.agent_config("agent2", SimDelays::default());
    assert_refused(
        "a second enrollment with the same token",
        &second.enroll(&token, &cp.url),
        "already been used",
    );
    assert_no_identity(&second.data_dir());
}

#[test]
fn an_expired_enrollment_token_is_refused() {
    let w = World::new();
    let cp = w.control_plane();
    let token = cp.token("1s");
    std::thread::sleep(Duration::from_millis(2500));
    let agent = w.agent_config("agent", SimDelays::default());
    assert_refused(
        "an enrollment with an expired token",
        &agent.enroll(&token, &cp.url),
        "expired",
    );
    assert_no_identity(&agent.data_dir());
}

fn hello(agent_id: &str) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Hello(Hello {
            agent_id: agent_id.into(),
            agent_version: "test".into(),
            ..Default::default()
        })),
    }
}

/// How a Connect attempt failed.
#[derive(Debug)]
struct Refused {
    /// The gRPC status code, when the call got as far as one.
    code: Option<tonic::Code>,
    /// Whether the connection itself failed (TLS, TCP, HTTP/2).
    transport: bool,
    text: String,
}

/// Dials the control plane trusting its CA and presenting `identity`, and
/// opens a Connect session. Fails the test if a session opens.
async fn try_connect(
    url: &str,
    ca: CertificateDer<'static>,
    identity: Option<(CertificateDer<'static>, rcgen::KeyPair)>,
) -> Result<(), Refused> {
    let identity = identity.map(|(cert, key)| (vec![cert], common::pkcs8(&key)));
    let tls = byoc_proto::transport::client_config(ca, identity).expect("client config");
    let channel = common::channel(url, tls).await.map_err(|e| Refused {
        code: None,
        transport: true,
        text: format!("{e:?}"),
    })?;
    let mut client = AgentServiceClient::new(channel);
    let mut stream = client
        .connect(tokio_stream::iter(vec![hello("agt-intruder")]))
        .await
        .map_err(|s| Refused {
            code: Some(s.code()),
            transport: std::error::Error::source(&s).is_some_and(|e| e.is::<tonic::transport::Error>()),
            text: format!("{s:?}"),
        })?
        .into_inner();
    // A session was opened: whatever comes first is a failure of the test.
    let first = stream.message().await;
    panic!("the control plane opened a session for this client; first message: {first:?}")
}

/// Completes a TLS handshake as a client with `tls`, then reads without
/// sending anything: the error the server's answer turns into.
async fn tls_read(url: &str, tls: rustls::ClientConfig) -> String {
    use tokio::io::AsyncReadExt as _;
    let addr = url.strip_prefix("https://").expect("https URL");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("TCP");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    match connector.connect(name, tcp).await {
        Err(e) => e.to_string(),
        Ok(mut stream) => match stream.read(&mut [0u8; 64]).await {
            Ok(n) => format!("read {n} bytes"),
            Err(e) => e.to_string(),
        },
    }
}

#[test]
fn client_certificates_from_another_ca_or_none_are_refused() {
    let w = World::new();
    let cp = w.control_plane();
    let cp_ca = CertificateDer::from(std::fs::read(cp.dir.join("ca.der")).expect("the control plane's ca.der"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // A certificate from another CA, with the subject an enrolled agent could have.
    let foreign = Ca::new("byoc-control CA");
    let (cert, key) = foreign.client("agt-0000000000000000");
    let err = rt
        .block_on(common::within(
            20,
            "the foreign client's Connect",
            try_connect(&cp.url, cp_ca.clone(), Some((cert, key))),
        ))
        .expect_err("a client certificate from another CA opened a session");
    // Refused in the TLS handshake or by the service: never a session.
    let by_service = matches!(
        err.code,
        Some(tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
    );
    assert!(err.transport || by_service, "{err:?}");
    // And the handshake is where: the server answers the foreign certificate
    // with a fatal alert (transport::server_config verifies client certificates).
    // The foreign CA has the real one's name, so the alert is about the
    // signature (DecryptError) rather than an unknown issuer.
    let (cert, key) = foreign.client("agt-0000000000000000");
    let tls = byoc_proto::transport::client_config(cp_ca.clone(), Some((vec![cert], common::pkcs8(&key))));
    let alert = rt.block_on(common::within(
        20,
        "the server's alert",
        tls_read(&cp.url, tls.expect("config")),
    ));
    assert!(alert.contains("received fatal alert"), "{alert}");

    // No certificate at all: Connect and Renew both need one.
    let err = rt
        .block_on(common::within(
            20,
            "the anonymous client's Connect",
            try_connect(&cp.url, cp_ca.clone(), None),
        ))
        .expect_err("a client without a certificate opened a session");
    assert_eq!(err.code, Some(tonic::Code::Unauthenticated), "{err:?}");
    assert!(err.text.contains("client certificate is required"), "{err:?}");
    let renew = rt.block_on(common::within(20, "the anonymous client's Renew", async {
        let tls = byoc_proto::transport::client_config(cp_ca, None).expect("client config");
        let channel = common::channel(&cp.url, tls)
            .await
            .expect("TLS without a client certificate is allowed");
        AgentServiceClient::new(channel)
            .renew(RenewRequest { csr_der: vec![1, 2, 3] })
            .await
    }));
    assert_eq!(
        renew.expect_err("renewed without a certificate").code(),
        tonic::Code::Unauthenticated
    );

    // The control plane still serves a legitimate agent.
    let _agent = w.agent(&cp, SimDelays::default());
    let id = cp.submit_json(&op("apply", "cluster", cluster("after-intruders")));
    let watched = cp.watch(&id);
    assert!(watched.success, "{watched:?}");
}

#[test]
fn a_control_plane_whose_ca_the_token_does_not_pin_is_refused() {
    let w = World::new();
    let cp_a = w.control_plane_in("cpA");
    let cp_b = w.control_plane_in("cpB");
    let token_a = cp_a.token("15m");
    let agent = w.agent_config("agent", SimDelays::default());

    let out = agent.enroll(&token_a, &cp_b.url);
    assert_refused("an enrollment with A's token against B", &out, "certificate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not chain to the CA the token pins"), "{stderr}");
    assert_no_identity(&agent.data_dir());

    // The token was never shown to B, and still works with A.
    let out = agent.enroll(&token_a, &cp_a.url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(agent.data_dir().join("identity/enrollment.json").exists());
}

/// Socket inode -> (state, remote port) of the sockets in a /proc/net table.
fn sockets(table: &str) -> Vec<(u64, String, u16)> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(2)?.rsplit_once(':')?.1, 16).ok()?;
            Some((f.get(9)?.parse().ok()?, f.get(3)?.to_string(), port))
        })
        .collect()
}

#[test]
fn the_agent_listens_on_no_port_and_keeps_its_key_private() {
    let w = World::new();
    let cp = w.control_plane();
    let agent = w.agent(&cp, SimDelays::default());
    let pid = agent.pid();
    let cp_port: u16 = cp.url.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("port");

    let own: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the agent's fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let table = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{name}")).unwrap_or_default();

    let mut established = 0;
    for name in ["tcp", "tcp6"] {
        for (inode, state, remote_port) in sockets(&table(name)).into_iter().filter(|s| own.contains(&s.0)) {
            assert_ne!(state, "0A", "the agent listens on a TCP socket ({name}, inode {inode})");
            assert_eq!(
                remote_port, cp_port,
                "the agent has a TCP socket to something else than the control plane"
            );
            established += usize::from(state == "01");
        }
    }
    assert!(
        established >= 1,
        "the agent has no established connection to the control plane"
    );
    for name in ["udp", "udp6", "raw", "raw6"] {
        let theirs: Vec<_> = sockets(&table(name))
            .into_iter()
            .filter(|s| own.contains(&s.0))
            .collect();
        assert!(theirs.is_empty(), "the agent has {name} sockets: {theirs:?}");
    }

    let identity = agent.data_dir().join("identity");
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&identity.join("agent.key")), 0o600, "agent.key");
    assert_eq!(mode(&identity), 0o700, "the identity directory");
}

#[test]
fn an_agent_cannot_claim_a_target_other_than_the_one_it_enrolled_for() {
    let w = World::new();
    let cp = w.control_plane();
    let mut agent = w.agent_config("agent", SimDelays::default());
    let out = agent.enroll(&cp.token("15m"), &cp.url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The installer (or an attacker with the host) edits the account afterwards.
    let text = std::fs::read_to_string(&agent.config).expect("config");
    std::fs::write(
        &agent.config,
        text.replace("account = \"acct-1\"", "account = \"acct-2\""),
    )
    .expect("config");
    agent.start();
    byoc_tests::wait_for(
        "the refusal in the agent's log",
        std::time::Duration::from_secs(20),
        || agent.log().contains("not the target it enrolled for").then_some(()),
    );
    assert!(agent.is_running(), "refused, not crashed");
    assert!(!cp.agents().contains(" connected "), "{}", cp.agents());
}

#[test]
fn a_revoked_agent_is_disconnected_and_cannot_come_back() {
    let w = World::new();
    let mut cp = w.control_plane();
    let agent = w.agent(&cp, SimDelays::default());
    let id = agent.agent_id();

    let out = cp.cli().args(["revoke", &id]).output().expect("revoke");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    byoc_tests::wait_for("the agent to be refused", std::time::Duration::from_secs(20), || {
        agent.log().contains("have been revoked").then_some(())
    });
    assert!(cp.agents().contains("revoked"), "{}", cp.agents());
    // Nothing can be sent to it, and the revocation survives a restart.
    let path = w.path("op.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&byoc_tests::op("apply", "cluster", byoc_tests::cluster("x"))).expect("json"),
    )
    .expect("write");
    let out = cp.cli().arg("submit").arg(&path).output().expect("submit");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stdout));
    cp.restart();
    // The agent keeps dialling: wait until the restarted control plane has
    // refused it. Two refusals logged after the restart: the first might be
    // the old process's answer, logged late; the attempt after it can only
    // have reached the new one.
    let refusals = || agent.log().lines().filter(|l| l.contains("have been revoked")).count();
    let before = refusals();
    byoc_tests::wait_for(
        "the restarted control plane to refuse the agent",
        std::time::Duration::from_secs(20),
        || (refusals() >= before + 2).then_some(()),
    );
    assert!(!cp.agents().contains(" connected "), "{}", cp.agents());
    assert!(cp.agents().contains("revoked"), "{}", cp.agents());
}

#[test]
fn a_certificate_lifetime_beyond_a_year_is_refused_at_start() {
    let w = World::new();
    let out = std::process::Command::new(byoc_tests::bin("byoc-control"))
        .arg("--data-dir")
        .arg(w.path("cp-long"))
        .args(["serve", "--listen", "127.0.0.1:0", "--cert-lifetime", "100years"])
        .output()
        .expect("serve");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cert-lifetime must be between 5s and 365days"), "{err}");
}
