//! Live sessions and watchers: which agents are connected, and the events an
//! operator's `watch` waits for. Nothing here is durable; the store is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use byoc_proto::agent::v1::{ControlMessage, OperationProgress};
use byoc_proto::control::v1::{WatchEvent, watch_event};
use tokio::sync::{Notify, broadcast, mpsc};
use tonic::Status;

/// What the control plane knows of a connected agent right now.
#[derive(Debug, Clone)]
pub struct Live {
    /// Distinguishes sessions of the same agent (a reconnect replaces the old one).
    pub session: u64,
    pub version: String,
    pub last_heartbeat_unix_ms: i64,
    pub in_flight: u32,
    /// Woken when an operation for this agent becomes durable.
    pub notify: Arc<Notify>,
    /// The session's outbound stream, for messages outside the operation queue (cancel).
    pub tx: mpsc::Sender<Result<ControlMessage, Status>>,
}

#[derive(Clone)]
pub struct Hub {
    live: Arc<Mutex<HashMap<String, Live>>>,
    events: broadcast::Sender<(String, WatchEvent)>,
    next_session: Arc<std::sync::atomic::AtomicU64>,
    /// The last progress of each operation without a result, for `get` and
    /// for a watch that starts late (e.g. "awaiting_approval", which may last
    /// hours). Not durable: agents announce a held operation again on every
    /// session.
    progress: Arc<Mutex<HashMap<String, OperationProgress>>>,
}

/// Operations whose last progress is kept at most (the oldest are not
/// evicted; new ones are just not kept beyond this).
const MAX_PROGRESS_KEPT: usize = 65_536;

impl Default for Hub {
    fn default() -> Self {
        Self {
            live: Arc::default(),
            events: broadcast::channel(16 * 1024).0,
            next_session: Arc::default(),
            progress: Arc::default(),
        }
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new session for `agent`, replacing any older one.
    pub fn connect(
        &self,
        agent: &str,
        version: &str,
        now_ms: i64,
        tx: mpsc::Sender<Result<ControlMessage, Status>>,
    ) -> Live {
        let session = self.next_session.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let live = Live {
            session,
            version: version.to_string(),
            last_heartbeat_unix_ms: now_ms,
            in_flight: 0,
            notify: Arc::new(Notify::new()),
            tx,
        };
        if let Some(old) = self.lock().insert(agent.to_string(), live.clone()) {
            // End the old session: close its stream and wake its dispatcher,
            // which sees it is no longer current before sending anything more.
            let _ = old
                .tx
                .try_send(Err(Status::aborted("replaced by a newer session of the same agent")));
            old.notify.notify_one();
        }
        live
    }

    /// Removes `agent`'s session if it is still `session`.
    pub fn disconnect(&self, agent: &str, session: u64) {
        let mut live = self.lock();
        if live.get(agent).is_some_and(|l| l.session == session) {
            live.remove(agent);
        }
    }

    pub fn is_current(&self, agent: &str, session: u64) -> bool {
        self.lock().get(agent).is_some_and(|l| l.session == session)
    }

    pub fn heartbeat(&self, agent: &str, now_ms: i64, in_flight: u32) {
        if let Some(l) = self.lock().get_mut(agent) {
            l.last_heartbeat_unix_ms = now_ms;
            l.in_flight = in_flight;
        }
    }

    /// Ends every live session with `status`; agents reconnect (after a CA
    /// rotation finished, so that they verify the new server certificate).
    pub fn close_all(&self, status: &Status) -> usize {
        let live: Vec<(String, Live)> = self.lock().drain().collect();
        for (_, l) in &live {
            let _ = l.tx.try_send(Err(status.clone()));
            l.notify.notify_one();
        }
        live.len()
    }

    pub fn get(&self, agent: &str) -> Option<Live> {
        self.lock().get(agent).cloned()
    }

    /// Wakes the dispatcher of `agent`, if connected.
    pub fn wake(&self, agent: &str) {
        if let Some(l) = self.lock().get(agent) {
            l.notify.notify_one();
        }
    }

    /// Tells whoever watches operation `op` about `body`.
    pub fn publish(&self, op: String, body: watch_event::Body) {
        {
            let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            match &body {
                watch_event::Body::Progress(p) if progress.len() < MAX_PROGRESS_KEPT || progress.contains_key(&op) => {
                    progress.insert(op.clone(), p.clone());
                }
                watch_event::Body::Result(_) => {
                    progress.remove(&op);
                }
                _ => {}
            }
        }
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send((op, WatchEvent { body: Some(body) }));
    }

    /// The last progress the agent reported for `op`, while it has no result.
    pub fn last_progress(&self, op: &str) -> Option<OperationProgress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner()).get(op).cloned()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<(String, WatchEvent)> {
        self.events.subscribe()
    }
}
