//! `byoc-agent enroll`: make a key pair here, send only a CSR, pin the control
//! plane's CA by the fingerprint in the token, store the issued certificate.

use std::path::{Path, PathBuf};

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

/// What `enroll` did.
pub struct Enrolled {
    pub enrollment: Enrollment,
    /// Where an earlier enrollment's identity, audit log and journal were
    /// moved (`--reenroll`).
    pub archived: Option<PathBuf>,
}

/// What an earlier enrollment left in the data directory: the parts that
/// belong to one agent id and must not be mixed with another's.
fn previous_enrollment(data: &Path) -> Vec<&'static str> {
    let nonempty = |p: PathBuf| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
    let mut found = Vec::new();
    if Identity::is_enrolled(data) {
        found.push("identity/");
    }
    if nonempty(crate::auditlog::dir(data).join(byoc_audit::log::ENTRIES)) {
        found.push("audit/");
    }
    if nonempty(crate::journal::path(data)) {
        found.push(crate::journal::FILE);
    }
    found
}

/// Enrolls with the control plane at `control_plane` with `token`.
///
/// A data directory that holds an earlier enrollment is refused before the
/// token is used, unless `reenroll`: then the new identity is obtained first,
/// and only once the control plane has issued it is the earlier identity,
/// audit log (closed with a final signed checkpoint, so it still verifies)
/// and journal moved under `archive/`, and the agent starts clean. Mixing
/// them would fail: the old log is signed with the old audit key, and the old
/// journal's operation sequence would make the control plane skip the new
/// agent's first operations.
pub async fn enroll(cfg: &Config, token: &str, control_plane: &str, reenroll: bool) -> anyhow::Result<Enrolled> {
    let data = &cfg.data_dir;
    let token = parse_token(token)?;
    crate::dial::parse_url(control_plane)?;
    create_private_dir(data)?;
    // No agent may run on this directory while it is being enrolled.
    let _lock = byoc_wal::DirLock::acquire(data, "agent")?;
    let previous = previous_enrollment(data);
    if !previous.is_empty() && !reenroll {
        bail!(
            "{} already holds an enrollment ({}); the token was not used. To enroll again (after a \
             revocation, or when the certificate expired while the agent was stopped), stop the agent and \
             run enroll with --reenroll: it archives these under {} (the audit log closed with a final \
             signed checkpoint, so it still verifies) and starts clean",
            data.display(),
            previous.join(", "),
            data.join(ARCHIVE_DIR).display()
        );
    }
    let dir = identity::dir(data);

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
    // The certificate's own notAfter, not the response's word for it.
    let not_after = validate_issued(&resp, &key)?;
    // The control plane has issued the new identity: only now is the earlier
    // one moved away, so a refused or failed enrollment changes nothing here.
    let archived = if previous.is_empty() {
        None
    } else {
        Some(archive_previous(data, cfg, &resp.agent_id, control_plane).await?)
    };
    create_private_dir(&dir)?;
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
        certificate_not_after_unix_ms: not_after,
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
    let mut detail = json!({
        "agent_id": resp.agent_id, "control_plane": control_plane,
        "ca_sha256": hex::encode(token.ca_fingerprint),
        "operation_key": hex::encode(&resp.operation_signing_public_key),
        "certificate_not_after_unix_ms": not_after,
    });
    if let Some(a) = &archived {
        // The new log names the old one's place and final tree, so the two
        // form one chain of custody.
        detail["previous"] = a.to_json();
    }
    audit.record(Event::new("agent.enrolled", None, detail)).await?;
    audit.close().await?;
    Ok(Enrolled {
        enrollment,
        archived: archived.map(|a| a.dir),
    })
}

/// Where earlier enrollments are kept, inside the data directory.
pub const ARCHIVE_DIR: &str = "archive";

/// An earlier enrollment, archived.
struct Archived {
    dir: PathBuf,
    agent_id: Option<String>,
    /// The final signed checkpoint's text, when the old log could be closed.
    checkpoint: Option<String>,
    /// Why the old log could not be closed (it is archived as it was).
    not_closed: Option<String>,
}

impl Archived {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "agent_id": self.agent_id,
            "archive": self.dir.display().to_string(),
            "checkpoint": self.checkpoint,
            "not_closed": self.not_closed,
        })
    }
}

/// Closes the earlier enrollment's audit log with a record of why and a
/// final checkpoint, then moves its identity, audit log, journal and pending
/// approvals under `archive/<time>-<agent id>/`. The kill switch
/// (`paused.json`) stays: it is the customer's, not the enrollment's.
async fn archive_previous(
    data: &Path,
    cfg: &Config,
    next_agent_id: &str,
    control_plane: &str,
) -> anyhow::Result<Archived> {
    let old_id = Identity::load(data).ok().map(|i| i.enrollment.agent_id);
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let name = format!("{}-{}", stamp.replace(':', ""), old_id.as_deref().unwrap_or("unknown"));
    let archive = data.join(ARCHIVE_DIR).join(name);
    let mut archived = Archived {
        dir: archive.clone(),
        agent_id: old_id.clone(),
        checkpoint: None,
        not_closed: None,
    };
    let closed = async {
        let id = old_id
            .as_deref()
            .context("the earlier identity cannot be read, so neither can its audit key's name")?;
        let log = crate::auditlog::open(data, id, &cfg.audit)?;
        log.record(Event::new(
            "agent.archived",
            None,
            json!({
                "reason": "re-enrollment", "next_agent_id": next_agent_id,
                "control_plane": control_plane, "archive": archive.display().to_string(),
            }),
        ))
        .await?;
        log.close().await?;
        anyhow::Ok(())
    };
    match closed.await {
        Ok(()) => {
            archived.checkpoint =
                std::fs::read_to_string(crate::auditlog::dir(data).join(byoc_audit::log::LATEST_CHECKPOINT)).ok();
        }
        Err(e) => {
            let why = byoc_errors::chain(&*e);
            tracing::warn!(error = %why, "the earlier audit log could not be closed; it is archived as it is");
            archived.not_closed = Some(why);
        }
    }
    create_private_dir(&archive)?;
    for part in ["identity", "audit", crate::journal::FILE, "approvals"] {
        let from = data.join(part);
        if from.exists() {
            std::fs::rename(&from, archive.join(part))
                .with_context(|| format!("moving {} to {}", from.display(), archive.display()))?;
        }
    }
    byoc_wal::sync_dir(&archive.join("identity"))
        .and_then(|()| byoc_wal::sync_dir(&data.join("identity")))
        .with_context(|| format!("syncing {}", data.display()))?;
    Ok(archived)
}

/// Checks what the control plane issued before anything is written: an
/// agent id usable as a name, and a client certificate for this key, issued
/// by the pinned CA for client authentication, valid now.
fn validate_issued(resp: &byoc_proto::agent::v1::EnrollResponse, key: &KeyPair) -> anyhow::Result<i64> {
    let id = &resp.agent_id;
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        bail!(
            "the control plane returned the agent id {id:?}: an agent id is 1 to 64 letters, digits, '-' or '_'; refusing it"
        );
    }
    byoc_proto::transport::check_client_certificate(
        &resp.certificate_der,
        &[rustls_pki_types::CertificateDer::from(
            resp.ca_certificate_der.as_slice(),
        )],
        key.public_key_raw(),
        SystemClock.now_ms(),
    )
    .context("the control plane returned a client certificate this agent cannot use; refusing it")
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
