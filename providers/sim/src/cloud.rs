//! The cloud side of the simulation: [`SimCloud`], its API calls (describe,
//! create, update, delete) and the checks a real cloud would make.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use byoc_provider::{Clock, SystemClock};

use byoc_provider::{CallContext, ProviderError, ResourceKind, ResourceSpec};

use crate::faults::{Faults, write_faults};
use crate::record::{Address, Live, ResourceStatus, Stored};
use crate::shared::{Shared, open_dirs};
use crate::store::{Store, create_private_dir, random_hex};
use crate::{SimConfig, SimError};

/// A simulated cloud on a state directory; see the [crate docs](crate) for the
/// model. Cheap to share behind an `Arc`; several instances (in one process or
/// successive ones) may use the same directory.
#[derive(Debug)]
pub struct SimCloud {
    config: SimConfig,
    shared: Arc<Shared>,
    /// Where the simulated cloud's time comes from: resources settle when
    /// this clock passes their `settles_at`.
    clock: Arc<dyn Clock>,
}

impl SimCloud {
    /// Opens the simulated cloud on `config.state_dir`, creating the directory
    /// (mode 0700) if it is missing.
    pub fn open(config: SimConfig) -> Result<Self, SimError> {
        Self::open_with_clock(config, Arc::new(SystemClock))
    }

    /// As [`SimCloud::open`], with time from `clock` (a paused tokio clock
    /// in the agent's in-process tests, so that a create that takes minutes
    /// in the simulated cloud takes no real time).
    pub fn open_with_clock(config: SimConfig, clock: Arc<dyn Clock>) -> Result<Self, SimError> {
        create_private_dir(&config.state_dir)?;
        let dir = config
            .state_dir
            .canonicalize()
            .map_err(|e| SimError::io(&config.state_dir, e))?;
        let mut open = open_dirs();
        open.retain(|_, shared| shared.strong_count() > 0);
        let shared = match open.get(&dir).and_then(Weak::upgrade) {
            Some(shared) => shared,
            None => {
                let shared = Arc::new(Shared {
                    store: Store::open(&dir)?,
                    decisions: Mutex::new(HashMap::new()),
                });
                open.insert(dir, Arc::downgrade(&shared));
                shared
            }
        };
        tracing::debug!(state_dir = %config.state_dir.display(), "sim cloud opened");
        Ok(Self { config, shared, clock })
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The clock the simulated cloud's time comes from.
    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// The state directory (canonical path).
    pub fn state_dir(&self) -> &Path {
        self.shared.store.dir()
    }

    /// Replaces the injected faults (see [`Faults`]) for every call from now on.
    pub fn set_faults(&self, faults: &Faults) -> Result<(), SimError> {
        write_faults(self.state_dir(), faults)
    }

    /// Holds off other provider-side decisions about `address` (and, for a
    /// cluster, its node pools and sandboxes) on this state directory.
    pub(crate) async fn decision_lock(&self, address: &Address) -> tokio::sync::OwnedMutexGuard<()> {
        let key = match (address.kind, &address.cluster) {
            (_, Some(cluster)) => format!("cluster/{cluster}"),
            (byoc_provider::ResourceKind::Cluster, None) => format!("cluster/{}", address.name),
            (kind, None) => format!("{kind}/{}", address.name),
        };
        let lock = {
            let mut all = self.shared.decisions.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(all.entry(key).or_default())
        };
        lock.lock_owned().await
    }

    /// Runs `f` on the store, under its lock, on the blocking thread pool
    /// (state files are fsynced).
    async fn locked<T, F>(&self, f: F) -> Result<T, ProviderError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, ProviderError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let _guard = shared.store.lock();
            f(&shared.store)
        })
        .await
        .map_err(|e| ProviderError::from(SimError::Task(e.to_string())))?
    }

    /// The start of every cloud call: the before-call hook, then the faults.
    async fn call(
        &self,
        ctx: &CallContext<'_>,
        action: &str,
        address: &Address,
        mutating: bool,
    ) -> Result<(), ProviderError> {
        ctx.before_call(action, &address.resource(), mutating).await?;
        self.faults_of(ctx, action, address, mutating).await
    }

    async fn faults(&self, ctx: &CallContext<'_>, action: &str, address: &Address) -> Result<(), ProviderError> {
        self.faults_of(ctx, action, address, false).await
    }

    /// The faults injected into a call whose before-call hook already ran.
    /// Every call gets a request id, as a real cloud's do, reported to the hooks.
    async fn faults_of(
        &self,
        ctx: &CallContext<'_>,
        action: &str,
        address: &Address,
        mutating: bool,
    ) -> Result<(), ProviderError> {
        let resource = address.resource();
        let request_id = request_id();
        tracing::debug!(
            operation = ctx.operation_id,
            action,
            resource,
            request_id,
            "sim cloud call"
        );
        let act = action.to_string();
        let injected = self.locked(move |store| Ok(store.inject_faults(&act)?)).await?;
        if !injected.delay.is_zero() {
            tokio::time::sleep(injected.delay).await;
        }
        match injected.error {
            Some(e) => {
                tracing::debug!(action, resource, error = %e, "sim cloud call failed (injected fault)");
                ctx.called(action, &resource, mutating, &request_id, Some(&e.to_string()));
                Err(e)
            }
            None => {
                ctx.called(action, &resource, mutating, &request_id, None);
                Ok(())
            }
        }
    }

    /// `sim:Describe<Kind>`: the resource at `address`, if it exists. Removes the
    /// record of a resource whose deletion has completed.
    pub(crate) async fn describe(
        &self,
        ctx: &CallContext<'_>,
        address: &Address,
    ) -> Result<Option<Live>, ProviderError> {
        self.announce_describe(ctx, address).await?;
        self.describe_announced(ctx, address).await
    }

    /// The before-call hook of a describe of `address`. The provider side runs
    /// it before taking a decision lock, so that the audit record's flush does
    /// not hold up other operations on the same resource.
    pub(crate) async fn announce_describe(
        &self,
        ctx: &CallContext<'_>,
        address: &Address,
    ) -> Result<(), ProviderError> {
        ctx.before_call(&address.action("Describe"), &address.resource(), false)
            .await
    }

    /// A describe whose before-call hook already ran (`announce_describe`).
    pub(crate) async fn describe_announced(
        &self,
        ctx: &CallContext<'_>,
        address: &Address,
    ) -> Result<Option<Live>, ProviderError> {
        self.faults(ctx, &address.action("Describe"), address).await?;
        let address = address.clone();
        let now = self.clock.now();
        self.locked(move |store| {
            let Some((path, stored)) = store.load(&address)? else {
                return Ok(None);
            };
            let status = stored.status_at(now);
            if status == ResourceStatus::Gone {
                store.remove(&stored)?;
                return Ok(None);
            }
            let spec = stored.decode_spec(&path)?;
            Ok(Some(Live { stored, spec, status }))
        })
        .await
    }

    /// `sim:Create<Kind>` with the operation's idempotency key as client token.
    /// Returns the new resource, or the one this client token already created;
    /// None if another resource holds the address.
    pub(crate) async fn create(
        &self,
        ctx: &CallContext<'_>,
        spec: &ResourceSpec,
    ) -> Result<Option<Live>, ProviderError> {
        let address = Address::of(spec);
        let action = address.action("Create");
        self.call(ctx, &action, &address, true).await?;
        let (spec, token, delay) = (spec.clone(), ctx.idempotency_key.to_string(), self.config.create_delay);
        let now = self.clock.now();
        let live = self
            .locked(move |store| {
                store.count_call(&action)?;
                if let Some((path, existing)) = store.load(&address)? {
                    match existing.status_at(now) {
                        ResourceStatus::Gone => store.remove(&existing)?,
                        status if existing.client_token == token => {
                            let spec = existing.decode_spec(&path)?;
                            return Ok(Some(Live {
                                stored: existing,
                                spec,
                                status,
                            }));
                        }
                        _ => return Ok(None),
                    }
                }
                check_parent(store, &address, now)?;
                check_quota(store, &address, &spec, now)?;
                let kind = address.kind.as_str().replace('_', "-");
                let id = format!("sim-{kind}-{}", random_hex(6)?);
                if address.kind == ResourceKind::Database {
                    // Before the record, so a database never exists without it.
                    store.write_secret(&id, &random_hex(24)?)?;
                }
                let stored = Stored {
                    id,
                    kind: address.kind,
                    name: address.name.clone(),
                    cluster: address.cluster.clone(),
                    client_token: token,
                    spec: spec.to_value(),
                    created_at: now,
                    updated_at: None,
                    delete_requested_at: None,
                    settles_at: later(now, delay),
                };
                if !store.create(&stored)? {
                    store.remove_secret(&stored.id)?;
                    return Ok(None);
                }
                let status = stored.status_at(now);
                Ok(Some(Live { stored, spec, status }))
            })
            .await?;
        if let Some(live) = &live {
            tracing::info!(id = live.id(), resource = %live.stored.address(), "sim cloud: creating");
        }
        Ok(live)
    }

    /// `sim:Update<Kind>`: changes the active resource `id` to `spec` in place.
    pub(crate) async fn update(
        &self,
        ctx: &CallContext<'_>,
        id: &str,
        spec: &ResourceSpec,
    ) -> Result<(), ProviderError> {
        let address = Address::of(spec);
        let action = address.action("Update");
        self.call(ctx, &action, &address, true).await?;
        let (spec, id, delay) = (spec.clone(), id.to_string(), self.config.update_delay);
        let now = self.clock.now();
        self.locked(move |store| {
            store.count_call(&action)?;
            let mut stored = load_id(store, &address, &id, now)?.ok_or_else(|| not_found(&address, &id))?;
            let status = stored.status_at(now);
            if status != ResourceStatus::Active {
                return Err(ProviderError::Conflict {
                    message: format!("{address} is {status}: it can only be updated when active"),
                });
            }
            check_quota(store, &address, &spec, now)?;
            stored.spec = spec.to_value();
            stored.updated_at = Some(now);
            stored.settles_at = later(now, delay);
            store.save(&stored)?;
            tracing::info!(id, resource = %address, "sim cloud: updating");
            Ok(())
        })
        .await
    }

    /// `sim:Delete<Kind>`: starts deleting resource `id`; Ok if it is already
    /// being deleted or gone.
    pub(crate) async fn request_delete(
        &self,
        ctx: &CallContext<'_>,
        address: &Address,
        id: &str,
    ) -> Result<(), ProviderError> {
        let action = address.action("Delete");
        self.call(ctx, &action, address, true).await?;
        let (address, id, delay) = (address.clone(), id.to_string(), self.config.delete_delay);
        let now = self.clock.now();
        self.locked(move |store| {
            store.count_call(&action)?;
            let Some(mut stored) = load_id(store, &address, &id, now)? else {
                return Ok(());
            };
            if stored.status_at(now) == ResourceStatus::Deleting {
                return Ok(());
            }
            check_deletable(store, &address, &stored, now)?;
            stored.delete_requested_at = Some(now);
            stored.settles_at = later(now, delay);
            store.save(&stored)?;
            tracing::info!(id, resource = %address, "sim cloud: deleting");
            Ok(())
        })
        .await
    }
}

fn later(now: SystemTime, delay: Duration) -> SystemTime {
    now.checked_add(delay).unwrap_or(now)
}

fn not_found(address: &Address, id: &str) -> ProviderError {
    ProviderError::NotFound {
        what: format!("{address} (id {id})"),
    }
}

/// The resource at `address` if it is `id` and not gone.
fn load_id(store: &Store, address: &Address, id: &str, now: SystemTime) -> Result<Option<Stored>, ProviderError> {
    Ok(store
        .load(address)?
        .map(|(_, stored)| stored)
        .filter(|s| s.id == id && s.status_at(now) != ResourceStatus::Gone))
}

/// A node pool or sandbox needs its cluster, and one not being deleted.
fn check_parent(store: &Store, address: &Address, now: SystemTime) -> Result<(), ProviderError> {
    let Some(cluster) = &address.cluster else { return Ok(()) };
    let parent = store.load(&Address::cluster(cluster))?.map(|(_, p)| p.status_at(now));
    let problem = match parent {
        None | Some(ResourceStatus::Gone) => "does not exist",
        Some(ResourceStatus::Deleting) => "is being deleted",
        Some(_) => return Ok(()),
    };
    Err(ProviderError::NotFound {
        what: format!("cluster \"{cluster}\" of {address} {problem}"),
    })
}

/// Node pools and sandboxes may not exceed the `quota_max_nodes` fault in total.
fn check_quota(store: &Store, address: &Address, spec: &ResourceSpec, now: SystemTime) -> Result<(), ProviderError> {
    let max_size = match spec {
        ResourceSpec::NodePool(p) => p.max_size,
        ResourceSpec::Sandbox(s) => s.max_size,
        _ => return Ok(()),
    };
    let Some(quota) = crate::read_faults(store.dir())?.quota_max_nodes else {
        return Ok(());
    };
    let mut total = u64::from(max_size);
    for (_, other) in store.list()? {
        let counts = matches!(other.kind, ResourceKind::NodePool | ResourceKind::Sandbox)
            && other.address() != *address
            && other.status_at(now) != ResourceStatus::Gone;
        if counts {
            total += other
                .spec
                .get("max_size")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
        }
    }
    if total > quota {
        return Err(ProviderError::QuotaExceeded {
            quota: format!(
                "sim:MaxNodes: {address} would bring the total max_size of node pools and sandboxes \
                 to {total}, above the quota of {quota}"
            ),
        });
    }
    Ok(())
}

/// A database with deletion protection, or a cluster with node pools or
/// sandboxes, cannot be deleted.
fn check_deletable(store: &Store, address: &Address, stored: &Stored, now: SystemTime) -> Result<(), ProviderError> {
    match address.kind {
        ResourceKind::Database => {
            let protected = stored
                .spec
                .get("deletion_protection")
                .and_then(serde_json::Value::as_bool);
            if protected != Some(false) {
                return Err(ProviderError::Conflict {
                    message: format!(
                        "{address} has deletion protection enabled: turn it off first by applying the \
                         database with \"deletion_protection\": false, then delete it"
                    ),
                });
            }
        }
        ResourceKind::Cluster => {
            let children: Vec<String> = store
                .list()?
                .into_iter()
                .map(|(_, s)| s)
                .filter(|s| s.cluster.as_deref() == Some(&address.name) && s.status_at(now) != ResourceStatus::Gone)
                .map(|s| format!("{} ({})", s.address(), s.status_at(now)))
                .collect();
            if !children.is_empty() {
                return Err(ProviderError::Conflict {
                    message: format!(
                        "{address} still has {}: delete them before the cluster",
                        children.join(", ")
                    ),
                });
            }
        }
        ResourceKind::NodePool | ResourceKind::Sandbox => {}
    }
    Ok(())
}

/// A request id in the form the simulated cloud gives its calls: unique per
/// call, like a real cloud's (an AWS `x-amzn-RequestId`, say).
fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "sim-{:012x}-{:06x}-{:04x}",
        t >> 16,
        std::process::id() & 0xff_ffff,
        n & 0xffff
    )
}
