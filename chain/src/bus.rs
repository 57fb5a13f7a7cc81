//! In-process event bus: every state change of the chain is published once
//! and fanned out to the SSE streams and to the tasks that wait for it.

use crate::views::{Event, EventEnvelope};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Events a slow subscriber may lag behind before it starts missing some.
const CAPACITY: usize = 4096;

#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<EventEnvelope>,
    next_id: Arc<AtomicU64>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(CAPACITY);
        EventBus {
            sender,
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Publishes an event; having no subscriber is not an error.
    pub fn publish(&self, event: Event) {
        let envelope = EventEnvelope {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            at: crate::time::now(),
            event,
        };
        let _ = self.sender.send(envelope);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventEnvelope> {
        self.sender.subscribe()
    }
}
