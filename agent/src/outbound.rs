//! The current session's outbound queue, shared by whoever sends the control
//! plane best-effort messages (progress, "accepted", heartbeats). Results do
//! not go this way: the outbox owns them and resends until acknowledged.

use std::sync::{Arc, Mutex};

use byoc_proto::agent::v1::AgentMessage;
use tokio::sync::mpsc;

/// The session's queue, if connected.
#[derive(Clone, Default)]
pub struct SessionSender(Arc<Mutex<Option<mpsc::Sender<AgentMessage>>>>);

impl SessionSender {
    pub fn set(&self, tx: Option<mpsc::Sender<AgentMessage>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = tx;
    }

    /// Sends if connected and the queue has room; drops the message otherwise.
    pub fn try_send(&self, msg: AgentMessage) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.try_send(msg);
        }
    }
}
