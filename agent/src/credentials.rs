//! The agent's credentials while it runs: its identity (key, certificate, the
//! CAs it trusts), their renewal in-band, and CA rotation. Each change is
//! recorded in the audit log *before* it is stored, and a change that cannot
//! be recorded is not stored (it is tried again at the next renewal check or
//! session): the order is always record durably, then act.

use std::sync::Mutex;
use std::time::Duration;

use byoc_audit::{AuditLog, Event};
use byoc_gate::Clock;
use byoc_proto::agent::v1::agent_service_client::AgentServiceClient;
use byoc_proto::agent::v1::{RenewRequest, RenewResponse};
use rustls_pki_types::{ServerName, UnixTime};
use serde_json::json;
use std::sync::Arc;
use tonic::transport::Channel;
use tracing::{error, info, warn};

use crate::dial::ServerChain;
use crate::identity::Identity;
use crate::status::StatusHandle;
use crate::trust;

/// Why a renewal did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("cannot make a key pair for the renewal")]
    Key(#[source] rcgen::Error),
    #[error("the control plane refused the renewal")]
    Refused(#[source] tonic::Status),
}

/// The identity in use, shared by the session (TLS, renewal) and the intake
/// (who sends operations, for the audit log).
pub struct Credentials {
    identity: Mutex<Identity>,
    /// agent.toml's `control_plane`, which overrides the enrolled URL.
    url_override: Option<String>,
    audit: AuditLog,
    status: StatusHandle,
    clock: Arc<dyn Clock>,
}

impl Credentials {
    pub fn new(
        identity: Identity,
        url_override: Option<String>,
        audit: AuditLog,
        status: StatusHandle,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            identity: Mutex::new(identity),
            url_override,
            audit,
            status,
            clock,
        }
    }

    fn identity(&self) -> std::sync::MutexGuard<'_, Identity> {
        self.identity.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn control_plane_url(&self) -> String {
        self.url_override
            .clone()
            .unwrap_or_else(|| self.identity().enrollment.control_plane.clone())
    }

    pub fn client_config(&self) -> Result<rustls::ClientConfig, byoc_proto::transport::TransportError> {
        self.identity().client_config()
    }

    /// Who sends operations, as the audit log records it: the control plane
    /// this agent enrolled with, the CAs it trusts for it and the key that
    /// signs operations (SHA-256 fingerprints).
    pub fn actor(&self) -> serde_json::Value {
        let sha = |b: &[u8]| hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b));
        let url = self.control_plane_url();
        let id = self.identity();
        json!({
            "control_plane": url,
            "ca_sha256": trust::fingerprints(&id.trust),
            "operation_key_sha256": sha(&id.operation_key),
        })
    }

    /// The CAs this agent trusts, for messages.
    pub fn trusted_cas(&self) -> Vec<String> {
        trust::fingerprints(&self.identity().trust)
    }

    /// How often to check whether the certificate is due for renewal.
    pub fn renew_check_interval(&self) -> Duration {
        let e = &self.identity().enrollment;
        let lifetime = e
            .certificate_not_after_unix_ms
            .saturating_sub(e.certificate_issued_unix_ms)
            .max(10_000) as u64;
        Duration::from_millis((lifetime / 20).clamp(500, 60_000))
    }

    /// True when the client certificate was not issued by the CA the control
    /// plane now issues with (first of the trusted CAs): during a CA rotation,
    /// renew at once rather than at two thirds of the lifetime.
    pub fn certificate_from_another_ca(&self) -> bool {
        let id = self.identity();
        id.trust
            .first()
            .is_some_and(|active| !trust::issued_by(&id.cert, active))
    }

    /// Renews the client certificate once two thirds of its lifetime have
    /// passed, or now with `force`. `server` is the chain the control plane
    /// presented on this channel: the CAs a renewal offers are judged by it.
    pub async fn maybe_renew(&self, client: &mut AgentServiceClient<Channel>, server: &ServerChain, force: bool) {
        let (issued, not_after) = {
            let e = &self.identity().enrollment;
            (e.certificate_issued_unix_ms, e.certificate_not_after_unix_ms)
        };
        let now = self.clock.now_ms();
        if !force && now < renew_at(issued, not_after) {
            return;
        }
        let (key, resp) = match renew(client).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %byoc_errors::Chain(&e), "certificate renewal failed; will retry");
                return;
            }
        };
        // The CAs offered with the renewal first: during a CA rotation the
        // new certificate is from the new CA, which the offer brings (judged,
        // as always, by the chain the control plane presented here).
        self.consider_trust(&resp.ca_certificates_der, server, "renew").await;
        // Checked before anything is recorded or stored: a certificate for
        // this new key, from a CA this agent trusts, for client
        // authentication, valid now. Its own notAfter counts, not the
        // response's word for it.
        let trust = self.identity().trust.clone();
        let not_after = match byoc_proto::transport::check_client_certificate(
            &resp.certificate_der,
            &trust,
            key.public_key_raw(),
            now,
        ) {
            Ok(t) => t,
            Err(e) => {
                self.renewal_not_used(
                    "certificate.refused",
                    "the control plane returned a certificate this agent cannot use",
                    &e,
                )
                .await;
                return;
            }
        };
        let key_pem = key.serialize_pem();
        let recorded = self
            .audit
            .record(Event::new(
                "certificate.renewed",
                None,
                json!({ "not_after_unix_ms": not_after }),
            ))
            .await;
        if let Err(e) = recorded {
            error!(error = %byoc_errors::Chain(&e), "cannot record the renewal; the current certificate stays in use");
            return;
        }
        let stored = self
            .identity()
            .store_renewal(&key_pem, resp.certificate_der, not_after, now);
        match stored {
            Ok(()) => {
                info!(not_after_unix_ms = not_after, "client certificate renewed");
                self.status.update(|s| s.certificate_not_after_unix_ms = not_after);
            }
            Err(e) => {
                self.renewal_not_used("certificate.not_stored", "cannot store the renewed certificate", &e)
                    .await;
            }
        }
    }

    /// Logs and audits (as `kind`, best effort: nothing changes either way)
    /// why a renewed certificate is not used; the current one stays.
    async fn renewal_not_used(
        &self,
        kind: &'static str,
        what: &str,
        e: &(dyn std::error::Error + Send + Sync + 'static),
    ) {
        let error = byoc_errors::chain(e);
        error!(%error, "{what}; the current certificate stays in use");
        let _ = self
            .audit
            .record(Event::new(kind, None, json!({ "error": error })))
            .await;
    }

    /// Takes the CAs the control plane offered on this session (in `Welcome`
    /// or `RenewResponse`) if [`trust::accept_offer`] allows; either way the
    /// decision is audited (`trust.updated` / `trust.refused`), and an
    /// accepted bundle is stored only once `trust.updated` is durable.
    pub async fn consider_trust(&self, offered: &[Vec<u8>], server: &ServerChain, via: &str) {
        if offered.is_empty() {
            return;
        }
        let url = self.control_plane_url();
        let Some(name) = crate::dial::parse_url(&url)
            .ok()
            .and_then(|(host, _)| ServerName::try_from(host).ok())
        else {
            return;
        };
        let (before, decision) = {
            let id = self.identity();
            let now = UnixTime::since_unix_epoch(Duration::from_millis(self.clock.now_ms().max(0) as u64));
            let decision = trust::accept_offer(&id.trust, offered, &server.get(), &name, now);
            (trust::fingerprints(&id.trust), decision)
        };
        let bundle = match decision {
            Ok(None) => return,
            Ok(Some(bundle)) => bundle,
            Err(e) => {
                let reason = byoc_errors::chain(&e);
                warn!(via, error = %reason, "refused the CAs the control plane offered");
                let ev = Event::new(
                    "trust.refused",
                    None,
                    json!({ "via": via, "reason": reason, "ca_sha256": before }),
                );
                let _ = self.audit.record(ev).await;
                return;
            }
        };
        let after = trust::fingerprints(bundle.certs());
        let ev = Event::new(
            "trust.updated",
            None,
            json!({ "via": via, "ca_sha256": after, "previous_ca_sha256": before }),
        );
        if let Err(e) = self.audit.record(ev).await {
            error!(error = %byoc_errors::Chain(&e), "cannot record the control plane's new CAs; keeping the old ones");
            return;
        }
        let stored = self.identity().store_trust(bundle);
        if let Err(e) = stored {
            let error = byoc_errors::chain(&e);
            error!(%error, "cannot store the control plane's new CAs; keeping the old ones");
            let ev = Event::new(
                "trust.not_stored",
                None,
                json!({ "via": via, "error": error, "ca_sha256": before }),
            );
            let _ = self.audit.record(ev).await;
            return;
        }
        warn!(via, trusted = ?after, before = ?before, "the control plane's CAs changed (CA rotation)");
    }
}

/// Renews the client certificate over `client` (same connection): a new key
/// pair, made here, and a CSR for it.
async fn renew(client: &mut AgentServiceClient<Channel>) -> Result<(rcgen::KeyPair, RenewResponse), RenewError> {
    let key = rcgen::KeyPair::generate().map_err(RenewError::Key)?;
    let csr = crate::enroll::csr(&key).map_err(RenewError::Key)?;
    let resp = client
        .renew(RenewRequest { csr_der: csr })
        .await
        .map_err(RenewError::Refused)?
        .into_inner();
    Ok((key, resp))
}

/// When a certificate issued at `issued` and valid until `not_after` (Unix
/// ms) is due for renewal: two thirds of its lifetime in, computed without
/// overflow whatever the two values are.
pub fn renew_at(issued: i64, not_after: i64) -> i64 {
    let (issued, not_after) = (i128::from(issued), i128::from(not_after));
    let at = issued + (not_after - issued) * 2 / 3;
    i64::try_from(at).unwrap_or(if at < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::renew_at;

    #[test]
    fn renewal_is_due_two_thirds_in_and_extreme_times_do_not_overflow() {
        assert_eq!(renew_at(0, 3_000), 2_000);
        assert_eq!(renew_at(1_000, 4_000), 3_000);
        // A certificate "valid until the end of time" from a hostile or
        // broken control plane: no overflow, no panic, renewal far away.
        assert_eq!(renew_at(0, i64::MAX), (i128::from(i64::MAX) * 2 / 3) as i64);
        assert!(renew_at(i64::MIN, i64::MAX) > 0);
        // notAfter before issue: due at once.
        assert!(renew_at(5_000, 0) < 5_000);
    }
}
