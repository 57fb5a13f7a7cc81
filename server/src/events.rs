//! `GET /api/events`: the chain's events as Server-Sent Events, one JSON
//! envelope per message, with keep-alive comments.
//!
//! Each message id is a stream position, `<boot>-<event id>`. A client that
//! reconnects sends its last position (the `Last-Event-ID` header, or
//! `?after=` on a first connection) and gets the events it missed from the
//! bus's replay buffer. When the position is unknown or too old, it gets a
//! full snapshot first.

use crate::AppState;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use chain::bus::Resume;
use chain::views::{Event, EventEnvelope};
use futures::{stream, Stream, StreamExt};
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;
use tokio_stream::wrappers::BroadcastStream;

/// Delay a browser waits before reconnecting after a drop.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    after: Option<String>,
}

fn to_sse(state: &AppState, envelope: &EventEnvelope) -> SseEvent {
    let data = serde_json::to_string(envelope).expect("events serialize");
    SseEvent::default()
        .id(state.services.bus.format_position(envelope.id))
        .data(data)
}

pub async fn stream(
    State(state): State<AppState>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let position = last_event_id.or(query.after);
    let (resume, receiver) = state.services.bus.resume(position.as_deref());

    let mut first: Vec<SseEvent> = vec![SseEvent::default().retry(RETRY).comment("filiere events")];
    let mut replayed_up_to = 0;
    match resume {
        Resume::Replay(events) => {
            replayed_up_to = events.last().map(|envelope| envelope.id).unwrap_or(0);
            first.extend(events.iter().map(|envelope| to_sse(&state, envelope)));
        }
        Resume::Snapshot => match state.services.snapshot().await {
            Ok(snapshot) => {
                let envelope = EventEnvelope {
                    // The snapshot's own position: events after it follow.
                    id: snapshot
                        .position
                        .rsplit('-')
                        .next()
                        .and_then(|id| id.parse().ok())
                        .unwrap_or(0),
                    at: chain::time::now(),
                    event: Event::Snapshot {
                        snapshot: Box::new(snapshot),
                    },
                    origin: None,
                };
                replayed_up_to = envelope.id;
                first.push(to_sse(&state, &envelope));
            }
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "cannot read the snapshot for an event stream"
                );
                first.push(SseEvent::default().comment("snapshot unavailable"));
            }
        },
    }

    let shutdown = state.shutdown.clone();
    let live_state = state.clone();
    let live = BroadcastStream::new(receiver)
        // NOTE: a subscriber that lags past the channel capacity skips the
        // missed events until it reconnects.
        .filter_map(|received| async move { received.ok() })
        // Events already sent from the replay buffer, or already part of the
        // snapshot, arrive here again.
        .filter(move |envelope| std::future::ready(envelope.id > replayed_up_to))
        .map(move |envelope| to_sse(&live_state, &envelope));
    let events = stream::iter(first)
        .chain(live)
        .map(Ok)
        // Open streams would otherwise hold graceful shutdown forever.
        .take_until(async move { shutdown.cancelled().await });
    Sse::new(events).keep_alive(KeepAlive::default())
}
