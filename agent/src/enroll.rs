//! `byoc-agent enroll`: make a key pair here, send only a CSR, pin the control
//! plane's CA by the fingerprint in the token, store the issued certificate.

use std::path::Path;

use anyhow::{Context as _, bail};
use byoc_audit::Event;
use byoc_proto::agent::v1::agent_service_client::AgentServiceClient;
use byoc_proto::agent::v1::{EnrollRequest, Target};
use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::json;

use crate::config::Config;
use crate::identity::{self, Enrollment, Identity, write_atomic};
use byoc_gate::{Clock as _, SystemClock};

/// A parsed enrollment token: `byoc1.<hex SHA-256 of the CA certificate>.<secret>`.
#[derive(Debug)]
pub struct Token {
    pub ca_fingerprint: [u8; 32],
    pub secret: String,
}

pub fn parse_token(token: &str) -> anyhow::Result<Token> {
    let mut parts = token.trim().splitn(3, '.');
    let (Some("byoc1"), Some(fp), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        bail!(
            "this is not an enrollment token: expected byoc1.<ca-sha256>.<secret>, as printed by `byoc-control token create`"
        );
    };
    let mut ca_fingerprint = [0u8; 32];
    hex::decode_to_slice(fp, &mut ca_fingerprint)
        .context("the token's CA fingerprint is not 64 hex digits: was the token cut short?")?;
    if secret.is_empty() {
        bail!("the token has no secret part: was it cut short?");
    }
    Ok(Token {
        ca_fingerprint,
        secret: secret.to_string(),
    })
}

/// A PKCS#10 request for `key`. The control plane sets the subject itself.
pub fn csr(key: &KeyPair) -> Result<Vec<u8>, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, "byoc-agent");
    Ok(p.serialize_request(key)?.der().to_vec())
}

pub async fn enroll(cfg: &Config, token: &str, control_plane: &str) -> anyhow::Result<Enrollment> {
    let data = &cfg.data_dir;
    if Identity::is_enrolled(data) {
        bail!(
            "already enrolled (see {}); to enroll again, stop the agent and move that directory away",
            identity::dir(data).display()
        );
    }
    let token = parse_token(token)?;
    crate::dial::parse_url(control_plane)?;
    create_private_dir(data)?;
    let dir = identity::dir(data);
    create_private_dir(&dir)?;

    // The private key is made here and never sent anywhere.
    let key = KeyPair::generate().context("generating the agent key pair")?;
    let tls = byoc_proto::transport::pinned_ca_client_config(token.ca_fingerprint)?;
    let dialer = crate::dial::Dialer::from_config(&cfg.connection)?;
    let channel = match dialer.channel(control_plane, tls).await {
        Ok(c) => c,
        Err(e) if e.is_certificate_rejected() => bail!(
            "{}: the control plane's certificate does not chain to the CA the token pins; \
             is {control_plane} the control plane that made this token?",
            byoc_errors::chain(&e)
        ),
        Err(e) => return Err(e.into()),
    };
    let mut client = AgentServiceClient::new(channel);
    let t = &cfg.target;
    let resp = client
        .enroll(EnrollRequest {
            token: token.secret.clone(),
            csr_der: csr(&key)?,
            target: Some(Target {
                cloud: t.cloud.clone(),
                account: t.account.clone(),
                region: t.region.clone(),
            }),
            hostname: hostname(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("the control plane refused enrollment: {}", s.message()))?
        .into_inner();
    if byoc_proto::transport::fingerprint(&resp.ca_certificate_der) != token.ca_fingerprint {
        bail!("the control plane returned a CA other than the one the token pins; refusing it");
    }
    if resp.operation_signing_public_key.len() != 32 {
        bail!(
            "the control plane returned an operation key of {} bytes, not an Ed25519 key",
            resp.operation_signing_public_key.len()
        );
    }
    write_atomic(&dir.join("agent.key"), key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&dir.join("agent.der"), &resp.certificate_der, 0o644)?;
    write_atomic(&dir.join("ca.der"), &resp.ca_certificate_der, 0o644)?;
    write_atomic(
        &dir.join("operation-key.pub"),
        &resp.operation_signing_public_key,
        0o644,
    )?;
    let enrollment = Enrollment {
        agent_id: resp.agent_id.clone(),
        control_plane: control_plane.to_string(),
        certificate_not_after_unix_ms: resp.certificate_not_after_unix_ms,
        certificate_issued_unix_ms: SystemClock.now_ms(),
    };
    // enrollment.json last: its presence means the identity is complete.
    write_atomic(
        &dir.join("enrollment.json"),
        &serde_json::to_vec_pretty(&enrollment)?,
        0o644,
    )?;
    // The audit key is made here, with the identity; its verifier key is
    // printed for the customer to keep outside this host.
    let audit = crate::auditlog::open(data, &resp.agent_id, &cfg.audit)?;
    audit
        .record(Event::new(
            "agent.enrolled",
            None,
            json!({
                "agent_id": resp.agent_id, "control_plane": control_plane,
                "ca_sha256": hex::encode(token.ca_fingerprint),
                "operation_key": hex::encode(&resp.operation_signing_public_key),
                "certificate_not_after_unix_ms": resp.certificate_not_after_unix_ms,
            }),
        ))
        .await?;
    Ok(enrollment)
}

fn create_private_dir(p: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", p.display()))?;
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
