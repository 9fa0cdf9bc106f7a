//! The operator's side of a CA rotation (`byoc-control ca status|rotate|finish`),
//! over the admin socket: the running server changes its CAs in place, so no
//! restart is needed and it stays the only writer of its data directory.
//!
//! 1. `rotate`: a new CA issues every certificate from now on; the previous one
//!    stays trusted. Agents receive the new trust bundle in `Welcome` and in
//!    `RenewResponse`, and renew at once when their certificate is from a CA
//!    other than the active one (docs/protocol.md §4.1).
//! 2. `status`: the agents whose latest certificate is not yet from the new CA.
//! 3. `finish`: refused while any such agent remains (unless forced); then the
//!    previous CA is dropped and every live session is closed, so that agents
//!    reconnect against the server certificate of the new CA.

use byoc_proto::control::v1::{CaInfo, CaStatus};
use tonic::Status;
use tracing::{info, warn};

use crate::pki::{PkiError, fmt_ms};
use crate::service::AgentApi;

pub fn status(api: &AgentApi) -> CaStatus {
    let (cas, since) = api.pki.status();
    let active = cas.first().map(|c| c.sha256.clone()).unwrap_or_default();
    let agents_on_previous_ca = api
        .store
        .lock()
        .agents
        .values()
        .filter(|a| !a.revoked && a.cert_ca != active)
        .map(|a| a.id.clone())
        .collect();
    CaStatus {
        cas: cas
            .into_iter()
            .map(|c| CaInfo {
                sha256: c.sha256,
                subject: c.subject,
                role: if c.active { "active" } else { "previous" }.into(),
                not_after_unix_ms: c.not_after_unix_ms,
            })
            .collect(),
        overlap_since_unix_ms: since.unwrap_or(0),
        agents_on_previous_ca,
    }
}

fn pki_err(e: PkiError) -> Status {
    match e {
        PkiError::AlreadyRotating { .. } | PkiError::NotRotating => Status::failed_precondition(e.to_string()),
        other => {
            let error = byoc_errors::chain(&other);
            warn!(%error, "CA change failed");
            Status::internal(format!("the CA change failed: {error}"))
        }
    }
}

pub fn rotate(api: &AgentApi) -> Result<CaStatus, Status> {
    api.pki.rotate().map_err(pki_err)?;
    let st = status(api);
    info!(active = %st.cas.first().map(|c| c.sha256.as_str()).unwrap_or(""), "CA rotation started");
    Ok(st)
}

pub fn finish(api: &AgentApi, force: bool) -> Result<CaStatus, Status> {
    let before = status(api);
    if before.overlap_since_unix_ms == 0 {
        return Err(pki_err(PkiError::NotRotating));
    }
    if !before.agents_on_previous_ca.is_empty() && !force {
        return Err(Status::failed_precondition(format!(
            "{} agent(s) still hold only certificates of the previous CA and would be locked out: {}. \
             Wait until they have renewed (`byoc-control ca status`), revoke them, or finish with --force \
             (they must then be enrolled again)",
            before.agents_on_previous_ca.len(),
            before.agents_on_previous_ca.join(", ")
        )));
    }
    api.pki.finish().map_err(pki_err)?;
    // Established TLS sessions still run on the previous CA's certificate.
    let closed = api.hub.close_all(&Status::unavailable(
        "the control plane finished a CA rotation: reconnect to verify its new certificate",
    ));
    info!(
        closed_sessions = closed,
        since = %fmt_ms(before.overlap_since_unix_ms),
        locked_out = before.agents_on_previous_ca.len(),
        "CA rotation finished"
    );
    Ok(status(api))
}
