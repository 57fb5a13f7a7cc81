//! In-process event bus. Every state change of the chain is published once
//! and fanned out to the SSE streams and to the tasks that wait for it. A
//! bounded buffer keeps recent events, so a client that reconnects gets what
//! it missed.

use crate::views::{Event, EventEnvelope};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Events a slow subscriber may lag behind before it starts missing some.
const CHANNEL_CAPACITY: usize = 4096;
/// Events kept for replay to reconnecting clients.
pub const REPLAY_CAPACITY: usize = 2048;

struct Recent {
    next_id: u64,
    events: VecDeque<EventEnvelope>,
}

#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<EventEnvelope>,
    recent: Arc<Mutex<Recent>>,
    /// Random tag of this process: positions from an earlier process, whose
    /// ids restarted at 1, are recognised as unknown.
    boot: String,
}

/// Events a subscriber missed since the position it gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// These events, oldest first; empty when nothing was missed.
    Replay(Vec<EventEnvelope>),
    /// The position is unknown or older than the buffer: send a snapshot.
    Snapshot,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(CHANNEL_CAPACITY);
        EventBus {
            sender,
            recent: Arc::new(Mutex::new(Recent {
                next_id: 1,
                events: VecDeque::with_capacity(REPLAY_CAPACITY),
            })),
            boot: format!("{:08x}", rand::random::<u32>()),
        }
    }

    /// Publishes an event; having no subscriber is not an error. The buffer
    /// and the channel are fed under one lock so both see the same order.
    pub fn publish(&self, event: Event) {
        self.publish_from(event, None);
    }

    /// Publishes an event another instance produced, named by `origin`.
    /// The relay does not send such events back out.
    pub fn publish_remote(&self, event: Event, origin: String) {
        self.publish_from(event, Some(origin));
    }

    fn publish_from(&self, event: Event, origin: Option<String>) {
        let mut recent = self.recent.lock().expect("event bus lock");
        let envelope = EventEnvelope {
            id: recent.next_id,
            at: crate::time::now(),
            event,
            origin,
        };
        recent.next_id += 1;
        if recent.events.len() == REPLAY_CAPACITY {
            recent.events.pop_front();
        }
        recent.events.push_back(envelope.clone());
        let _ = self.sender.send(envelope);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventEnvelope> {
        self.sender.subscribe()
    }

    /// Position of the last published event, as `<boot>-<id>`.
    pub fn position(&self) -> String {
        let recent = self.recent.lock().expect("event bus lock");
        self.format_position(recent.next_id - 1)
    }

    /// Random tag of this process, different at each start.
    pub fn boot(&self) -> &str {
        &self.boot
    }

    pub fn format_position(&self, id: u64) -> String {
        format!("{}-{id}", self.boot)
    }

    /// Subscribes and returns what was published after `position`. Taking
    /// both under the lock means no event is missed or sent twice.
    pub fn resume(&self, position: Option<&str>) -> (Resume, broadcast::Receiver<EventEnvelope>) {
        let recent = self.recent.lock().expect("event bus lock");
        let receiver = self.sender.subscribe();
        let last_seen = position
            .and_then(|position| position.split_once('-'))
            .filter(|(boot, _)| *boot == self.boot)
            .and_then(|(_, id)| id.parse::<u64>().ok())
            .filter(|id| *id < recent.next_id);
        let resume = match last_seen {
            None => Resume::Snapshot,
            Some(id) => {
                let oldest = recent
                    .events
                    .front()
                    .map(|envelope| envelope.id)
                    .unwrap_or(recent.next_id);
                if id + 1 < oldest {
                    Resume::Snapshot
                } else {
                    Resume::Replay(
                        recent
                            .events
                            .iter()
                            .filter(|envelope| envelope.id > id)
                            .cloned()
                            .collect(),
                    )
                }
            }
        };
        (resume, receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(code: &str) -> Event {
        Event::LotFinished {
            code_lot: code.to_string(),
        }
    }

    #[test]
    fn resume_replays_events_after_position() {
        let bus = EventBus::new();
        bus.publish(finished("A"));
        let position = bus.position();
        bus.publish(finished("B"));
        bus.publish(finished("C"));
        let (resume, _) = bus.resume(Some(&position));
        let Resume::Replay(events) = resume else {
            panic!("expected a replay, got {resume:?}")
        };
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn resume_at_head_replays_nothing() {
        let bus = EventBus::new();
        bus.publish(finished("A"));
        let (resume, _) = bus.resume(Some(&bus.position()));
        assert_eq!(resume, Resume::Replay(Vec::new()));
    }

    #[test]
    fn unknown_boot_or_garbage_needs_snapshot() {
        let bus = EventBus::new();
        bus.publish(finished("A"));
        for position in [
            None,
            Some("ffffffff-1"),
            Some("nonsense"),
            Some(""),
            Some(&*bus.format_position(99)),
        ] {
            assert_eq!(
                bus.resume(position).0,
                Resume::Snapshot,
                "position {position:?}"
            );
        }
    }

    #[test]
    fn position_older_than_buffer_needs_snapshot() {
        let bus = EventBus::new();
        bus.publish(finished("first"));
        let old = bus.position();
        for index in 0..REPLAY_CAPACITY + 1 {
            bus.publish(finished(&index.to_string()));
        }
        assert_eq!(bus.resume(Some(&old)).0, Resume::Snapshot);
    }
}
