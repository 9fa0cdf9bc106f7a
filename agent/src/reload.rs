//! The policy reload task: on SIGHUP, re-reads the policy file. An invalid
//! file is refused (audited, `policy.reload_refused`) and the policy in force
//! stays; a valid one replaces it, ordered after its `policy.reloaded` record.

use std::path::Path;
use std::sync::Arc;

use byoc_audit::{AuditLog, Event};
use byoc_gate::policy::{Loaded, PolicyHandle};
use serde_json::json;
use tracing::{error, info};

/// Reloads `path` into `policy` once.
pub async fn reload(path: Option<&Path>, policy: &PolicyHandle, audit: &AuditLog) {
    let Some(path) = path else {
        info!("SIGHUP: no policy file is configured (agent.toml `policy`); the default policy stays in force");
        return;
    };
    let old = policy.current();
    match Loaded::load(Some(path)) {
        Err(e) => {
            let error = byoc_errors::chain(&e);
            error!(%error, "policy reload refused; the policy in force stays");
            let _ = audit
                .record(Event::new(
                    "policy.reload_refused",
                    None,
                    json!({ "path": path, "error": error, "policy_sha256": old.sha256 }),
                ))
                .await;
        }
        Ok(new) => {
            let ev = Event::new(
                "policy.reloaded",
                None,
                json!({ "path": path, "policy_sha256": new.sha256, "previous_sha256": old.sha256 }),
            );
            // The record is queued and the policy swapped with no decision in
            // between (`swap_with`), so every decision by the new policy is
            // after `policy.reloaded` in the log, and whoever has seen that
            // record gets decisions by the new policy. If the record cannot be
            // made durable the log is poisoned and no operation runs under
            // either policy (fail closed).
            let sha256 = new.sha256.clone();
            let pending = match policy.swap_with(new, || audit.submit(ev)) {
                Ok(p) => p,
                Err(e) => {
                    error!(error = %byoc_errors::Chain(&e), "cannot record the policy reload; the policy in force stays");
                    return;
                }
            };
            match pending.await {
                Ok(_) => info!(path = %path.display(), %sha256, "policy reloaded"),
                Err(e) => error!(
                    error = %byoc_errors::Chain(&e),
                    "the policy reload could not be made durable; the audit log refuses every operation until it is writable"
                ),
            }
        }
    }
}

/// Reloads on every SIGHUP until `shutdown` (or the signal stream ends).
pub async fn on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    path: Option<std::path::PathBuf>,
    policy: Arc<PolicyHandle>,
    audit: AuditLog,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            signal = hangup.recv() => match signal {
                Some(()) => reload(path.as_deref(), &policy, &audit).await,
                None => return,
            },
            _ = shutdown.cancelled() => return,
        }
    }
}
