//! Tests of the simulated cloud, through the `Provider` trait as the agent uses it.

mod faults;
mod lifecycle;
mod resume;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use byoc_provider::{CallContext, CallHooks, ProviderCall, ResourceKind, ResourceSpec};

use crate::{SimCloud, SimConfig};

/// Records every call and progress report; refuses calls when told to.
#[derive(Default)]
pub(crate) struct Hooks {
    calls: Mutex<Vec<ProviderCall>>,
    progress: Mutex<Vec<(String, Option<u8>)>>,
    refuse: Mutex<Option<String>>,
}

impl Hooks {
    pub fn calls(&self) -> Vec<ProviderCall> {
        self.calls.lock().expect("lock").clone()
    }

    /// Actions of the mutating calls made, in order.
    pub fn mutating(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.mutating)
            .map(|c| c.action)
            .collect()
    }

    pub fn progress(&self) -> Vec<(String, Option<u8>)> {
        self.progress.lock().expect("lock").clone()
    }

    pub fn refuse(&self, reason: &str) {
        *self.refuse.lock().expect("lock") = Some(reason.to_string());
    }
}

#[async_trait]
impl CallHooks for Hooks {
    async fn before_call(&self, call: &ProviderCall) -> Result<(), byoc_provider::BoxError> {
        if let Some(reason) = self.refuse.lock().expect("lock").clone() {
            return Err(reason.into());
        }
        self.calls.lock().expect("lock").push(call.clone());
        Ok(())
    }

    fn progress(&self, phase: &str, _message: &str, percent: Option<u8>) {
        self.progress.lock().expect("lock").push((phase.to_string(), percent));
    }
}

pub(crate) fn ctx<'a>(hooks: &'a Hooks, key: &'a str) -> CallContext<'a> {
    CallContext {
        operation_id: key,
        idempotency_key: key,
        hooks,
    }
}

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A cloud on `dir` where every transition takes `delay_ms`, polled every 10ms.
pub(crate) fn open(dir: &Path, delay_ms: u64) -> SimCloud {
    let config = SimConfig {
        poll_interval: ms(10),
        ..SimConfig::new(dir).with_delays(ms(delay_ms))
    };
    SimCloud::open(config).expect("open sim cloud")
}

pub(crate) fn spec(kind: ResourceKind, json: &str) -> ResourceSpec {
    ResourceSpec::from_json(kind, json).expect("valid spec")
}

pub(crate) fn cluster(name: &str) -> ResourceSpec {
    spec(
        ResourceKind::Cluster,
        &format!(r#"{{"name":"{name}","kubernetes_version":"1.31"}}"#),
    )
}

/// A node pool in cluster `c` with `desired` of up to `max` nodes.
pub(crate) fn pool(name: &str, c: &str, desired: u32, max: u32) -> ResourceSpec {
    spec(
        ResourceKind::NodePool,
        &format!(
            r#"{{"name":"{name}","cluster":"{c}","instance_type":"m6i.large",
                "min_size":0,"desired_size":{desired},"max_size":{max}}}"#
        ),
    )
}

pub(crate) fn database(name: &str, deletion_protection: bool) -> ResourceSpec {
    spec(
        ResourceKind::Database,
        &format!(
            r#"{{"name":"{name}","engine":"postgres","version":"16","size":"small","storage_gb":20,
                "deletion_protection":{deletion_protection}}}"#
        ),
    )
}

pub(crate) fn counts(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    crate::call_counts(dir).expect("call counts")
}

pub(crate) fn count(dir: &Path, action: &str) -> u64 {
    counts(dir).get(action).copied().unwrap_or(0)
}
