//! Fault injection: `<state_dir>/faults.json`, read at every cloud call, so a
//! test can change it while an agent runs.

use std::path::Path;
use std::time::Duration;

use byoc_provider::ProviderError;
use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::store::{Store, WriteMode, read_json, write_json};

const FAULTS: &str = "faults.json";

/// How long a throttled call asks the caller to wait.
pub const THROTTLE_RETRY_AFTER: Duration = Duration::from_millis(100);

/// Faults the simulated cloud injects, as stored in `<state_dir>/faults.json`
/// (an absent file means no faults), e.g.
///
/// ```json
/// {"throttle_next": 2, "fail_next": 1, "slow_ms": 200,
///  "deny": ["sim:CreateDatabase"], "quota_max_nodes": 100}
/// ```
///
/// Each cloud call (describes included) first sleeps `slow_ms`, then fails with
/// [`Throttled`](ProviderError::Throttled) if `throttle_next` is above zero
/// (decrementing it), else with [`Transient`](ProviderError::Transient) if
/// `fail_next` is (decrementing it), else with
/// [`PermissionDenied`](ProviderError::PermissionDenied) if its action is in
/// `deny`. The counters are decremented in the file, so each fault is consumed
/// once however many processes share the directory. `quota_max_nodes` caps the
/// total `max_size` of all node pools and sandboxes
/// ([`QuotaExceeded`](ProviderError::QuotaExceeded) on a create or update that
/// would exceed it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// The next N calls fail with `Throttled { retry_after: 100ms }`.
    #[serde(default)]
    pub throttle_next: u32,
    /// The next N calls (after any throttled ones) fail with `Transient`.
    #[serde(default)]
    pub fail_next: u32,
    /// Every call first sleeps this many milliseconds.
    #[serde(default)]
    pub slow_ms: u64,
    /// Actions (e.g. `sim:CreateDatabase`) that fail with `PermissionDenied`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Maximum total `max_size` across node pools and sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_max_nodes: Option<u64>,
}

/// The faults currently set for the state directory at `state_dir` (none if
/// there is no `faults.json`).
pub fn read_faults(state_dir: &Path) -> Result<Faults, SimError> {
    Ok(read_json(&state_dir.join(FAULTS))?.unwrap_or_default())
}

/// Sets the faults for the state directory at `state_dir`, atomically. If a
/// [`SimCloud`](crate::SimCloud) on that directory is open in this process, waits
/// for the call it is processing, so that no counter update overwrites these
/// faults (another process's can, in a window of microseconds).
pub fn write_faults(state_dir: &Path, faults: &Faults) -> Result<(), SimError> {
    crate::shared::with_open_store_lock(state_dir, || {
        write_json(&state_dir.join(FAULTS), faults, WriteMode::Replace).map(|_| ())
    })
}

/// What the faults do to one call.
#[derive(Debug)]
pub(crate) struct Injected {
    /// Sleep this long before answering.
    pub delay: Duration,
    /// Then fail with this, if set.
    pub error: Option<ProviderError>,
}

impl Store {
    /// Applies the faults to one call of `action`, consuming a counter if one
    /// fires. The caller holds the store lock.
    pub(crate) fn inject_faults(&self, action: &str) -> Result<Injected, SimError> {
        let path = self.dir().join(FAULTS);
        let Some(mut faults) = read_json::<Faults>(&path)? else {
            return Ok(Injected {
                delay: Duration::ZERO,
                error: None,
            });
        };
        let mut consumed = true;
        let error = if faults.throttle_next > 0 {
            faults.throttle_next -= 1;
            Some(ProviderError::Throttled {
                retry_after: Some(THROTTLE_RETRY_AFTER),
            })
        } else if faults.fail_next > 0 {
            faults.fail_next -= 1;
            Some(ProviderError::Transient {
                message: format!("{action}: injected fault: internal error (HTTP 500)"),
            })
        } else {
            consumed = false;
            let denied = faults.deny.iter().any(|d| d == action);
            denied.then(|| ProviderError::PermissionDenied {
                permission: action.to_string(),
            })
        };
        if consumed {
            write_json(&path, &faults, WriteMode::Replace)?;
        }
        Ok(Injected {
            delay: Duration::from_millis(faults.slow_ms),
            error,
        })
    }
}
