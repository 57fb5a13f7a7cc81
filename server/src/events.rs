//! `GET /api/events`: the chain's events as Server-Sent Events, one JSON
//! envelope per message, with keep-alive comments.

use crate::AppState;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use std::convert::Infallible;
use tokio_stream::wrappers::BroadcastStream;

pub async fn stream(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let shutdown = state.shutdown.clone();
    let events = BroadcastStream::new(state.services.bus.subscribe())
        // NOTE: a subscriber that lags past the bus capacity skips the missed
        // events; there is no replay buffer yet.
        .filter_map(|received| async move { received.ok() })
        .map(|envelope| {
            let data = serde_json::to_string(&envelope).expect("events serialize");
            Ok(SseEvent::default().id(envelope.id.to_string()).data(data))
        })
        // Open streams would otherwise hold graceful shutdown forever.
        .take_until(async move { shutdown.cancelled().await });
    Sse::new(events).keep_alive(KeepAlive::default())
}
