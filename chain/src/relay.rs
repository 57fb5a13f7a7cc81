//! Events between server instances on one PostgreSQL database.
//!
//! Each instance sends the events its own bus publishes to the channel
//! `filiere_events` with `pg_notify`, several per notification when they
//! come in a burst. It listens on that channel for the other instances'
//! events and publishes them on its bus, marked with their origin. Pages
//! served by one instance therefore see the lots, samples and products the
//! other instances produce. A lot another instance's monitor claimed goes
//! to this instance's station when the station runs here.
//!
//! Notifications are not stored: an instance that is down or reconnecting
//! misses them. What it shows then comes from the database (the snapshot a
//! page gets when it connects), and lots are never lost, since the
//! monitor's periodic scan and the leases do not depend on events.

use crate::services::Services;
use crate::views::{Event, EventEnvelope};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

const CHANNEL: &str = "filiere_events";
/// PostgreSQL refuses a notification payload of 8000 bytes or more.
const PAYLOAD_LIMIT: usize = 7900;
/// Pause before listening again after the listener failed.
const RETRY: Duration = Duration::from_secs(1);

/// One notification: events from one instance, oldest first.
#[derive(Debug, Serialize, Deserialize)]
struct Relayed {
    /// The sender's boot tag, so an instance skips its own notifications.
    from: String,
    /// The sender's instance name, shown with its events.
    instance: String,
    events: Vec<Event>,
}

/// Starts sending and receiving events for `services` until `shutdown`.
pub fn start(services: Services, database_url: String, shutdown: CancellationToken) {
    tokio::spawn(send(services.clone(), shutdown.clone()));
    tokio::spawn(listen(services, database_url, shutdown));
}

/// Serializes an event for other instances, or returns `None` when it
/// cannot fit a notification. A graded sample that is too large goes
/// without its derived details, because the receiving page follows the
/// chain without them and the stored sample keeps them.
fn relayed_json(event: &Event) -> Option<String> {
    let json = serde_json::to_string(event).expect("events serialize");
    if json.len() < PAYLOAD_LIMIT / 2 {
        return Some(json);
    }
    let lighter = match event {
        Event::SampleGraded { run_id, sample } => Event::SampleGraded {
            run_id: run_id.clone(),
            sample: crate::views::GradedSample {
                details: None,
                ..sample.clone()
            },
        },
        _ => event.clone(),
    };
    let json = serde_json::to_string(&lighter).expect("events serialize");
    (json.len() < PAYLOAD_LIMIT / 2).then_some(json)
}

/// Builds the notification payloads for a burst of events, each under the
/// limit.
fn payloads(from: &str, instance: &str, events: &[String]) -> Vec<String> {
    let head = serde_json::json!({ "from": from, "instance": instance }).to_string();
    // `{"from":…,"instance":…` then `,"events":[…]}`.
    let open = &head[..head.len() - 1];
    let mut payloads = Vec::new();
    let mut current = String::new();
    for event in events {
        if !current.is_empty() && open.len() + current.len() + event.len() + 16 > PAYLOAD_LIMIT {
            payloads.push(format!("{open},\"events\":[{current}]}}"));
            current.clear();
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(event);
    }
    if !current.is_empty() {
        payloads.push(format!("{open},\"events\":[{current}]}}"));
    }
    payloads
}

/// Returns whether an event goes to the other instances. Snapshots are for
/// one page, and events from other instances are theirs to send.
fn is_relayed(envelope: &EventEnvelope) -> bool {
    envelope.origin.is_none() && !matches!(envelope.event, Event::Snapshot { .. })
}

async fn send(services: Services, shutdown: CancellationToken) {
    let mut receiver = services.bus.subscribe();
    let from = services.bus.boot().to_string();
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = receiver.recv() => received,
        };
        let mut burst = Vec::new();
        match first {
            Ok(envelope) => burst.push(envelope),
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "relay fell behind; other instances miss these events"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        }
        // Whatever else is already published goes in the same notifications.
        while burst.len() < 1000 {
            match receiver.try_recv() {
                Ok(envelope) => burst.push(envelope),
                Err(TryRecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "relay fell behind; other instances miss these events"
                    );
                }
                Err(_) => break,
            }
        }
        let events: Vec<String> = burst
            .iter()
            .filter(|envelope| is_relayed(envelope))
            .filter_map(|envelope| {
                let json = relayed_json(&envelope.event);
                if json.is_none() {
                    tracing::warn!(
                        id = envelope.id,
                        "event too large for a notification, not relayed"
                    );
                }
                json
            })
            .collect();
        for payload in payloads(&from, &services.instance, &events) {
            let sent =
                sqlx::query("SELECT COUNT(*) AS sent FROM (SELECT pg_notify($1, $2)) AS notified")
                    .bind(CHANNEL)
                    .bind(payload)
                    .fetch_one(services.store.pool())
                    .await;
            if let Err(error) = sent {
                tracing::warn!(%error, "cannot relay events to other instances");
            }
        }
    }
}

async fn listen(services: Services, database_url: String, shutdown: CancellationToken) {
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = listen_once(&services, &database_url) => result,
        };
        if let Err(error) = result {
            tracing::warn!(
                error = format!("{error:#}"),
                "event listener stopped; listening again in 1 s"
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

async fn listen_once(services: &Services, database_url: &str) -> anyhow::Result<()> {
    let mut listener = PgListener::connect(database_url).await?;
    listener.listen(CHANNEL).await?;
    tracing::info!(channel = CHANNEL, "listening for other instances' events");
    loop {
        let notification = listener.recv().await?;
        let relayed: Relayed = match serde_json::from_str(notification.payload()) {
            Ok(relayed) => relayed,
            Err(error) => {
                tracing::warn!(%error, "unreadable notification on {CHANNEL}, ignored");
                continue;
            }
        };
        if relayed.from == services.bus.boot() {
            continue;
        }
        for event in relayed.events {
            receive(services, event, &relayed.instance).await;
        }
    }
}

/// Publishes another instance's event here, after what it means for this
/// instance: a task status updates what pages show of that task, and a
/// claimed lot goes to the station if it runs here.
async fn receive(services: &Services, event: Event, instance: &str) {
    let event = match event {
        Event::Task { mut status } => {
            status.elsewhere = Some(instance.to_string());
            if !services.supervisor.set_remote(status.clone()) {
                // This instance runs the task too, so its own status is the one shown.
                return;
            }
            Event::Task { status }
        }
        Event::LotClaimed { code_lot, attempts } => {
            if let Err(error) = services.accept_remote_claim(&code_lot).await {
                tracing::warn!(lot.code = %code_lot, error = format!("{error:#}"), "cannot take a lot another instance claimed; its lease will hand it out again");
            }
            Event::LotClaimed { code_lot, attempts }
        }
        Event::Snapshot { .. } => return,
        other => other,
    };
    services.bus.publish_remote(event, instance.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(code: &str) -> String {
        serde_json::to_string(&Event::LotFinished {
            code_lot: code.to_string(),
        })
        .unwrap()
    }

    #[test]
    fn payloads_split_under_limit_in_order() {
        let events: Vec<String> = (0..2000)
            .map(|index| finished(&format!("LL2612{index:04}")))
            .collect();
        let payloads = payloads("boot1234", "host:3000", &events);
        assert!(payloads.len() > 1, "2000 events fit one payload?");
        let mut codes = Vec::new();
        for payload in &payloads {
            assert!(
                payload.len() < PAYLOAD_LIMIT,
                "payload of {} bytes",
                payload.len()
            );
            let relayed: Relayed = serde_json::from_str(payload).expect("payload parses");
            assert_eq!(relayed.from, "boot1234");
            assert_eq!(relayed.instance, "host:3000");
            for event in relayed.events {
                let Event::LotFinished { code_lot } = event else {
                    panic!("unexpected event {event:?}")
                };
                codes.push(code_lot);
            }
        }
        let expected: Vec<String> = (0..2000).map(|index| format!("LL2612{index:04}")).collect();
        assert_eq!(codes, expected);
    }

    #[test]
    fn no_events_make_no_payload() {
        assert!(payloads("b", "i", &[]).is_empty());
    }
}
