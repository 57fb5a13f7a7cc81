//! Lot monitor: claims finished lots from the inspection queue and hands
//! them to the SQAL station.

use crate::params::MonitorParams;
use crate::services::Services;
use crate::store::CLAIM_BATCH;
use crate::supervisor::TaskContext;
use crate::views::Event;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// How long a claim stays valid by default. A lot still `inspecting` past
/// its lease, after a crash for instance, is claimed again.
pub const LEASE_SECONDS: f64 = 120.0;
/// Leases the configuration accepts, in seconds.
pub const LEASE_RANGE: (f64, f64) = (1.0, 3600.0);

/// A lot claimed for inspection, with what the station needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedLot {
    pub code_lot: String,
    pub run_id: String,
    pub poids_moyen_final: f64,
    pub attempts: i64,
    /// End of the short while in which the lease this process's claim set
    /// is still almost whole, so that the station need not renew it. `None`
    /// for a claim read back from the database.
    pub fresh_until: Option<std::time::Instant>,
}

/// Claims the lots that are waiting, as many as the lots in flight leave
/// room for, and hands each to the station. Returns how many lots were
/// handed over.
///
/// It claims once `CLAIM_BATCH` places are free, or as many as there are
/// lots waiting: the station still has lots to measure meanwhile, and the
/// single writer of SQLite spends one claim transaction on several lots.
pub async fn step(services: &Services) -> anyhow::Result<u32> {
    let (room, waiting) = services.store.claim_room().await?;
    if waiting == 0 || room < CLAIM_BATCH.min(waiting) {
        return Ok(0);
    }
    let lots = services
        .store
        .claim_lots(services.lease_seconds, room)
        .await?;
    let handed = lots.len() as u32;
    for lot in lots {
        tracing::info!(lot.code = %lot.code_lot, attempts = lot.attempts, "lot claimed for inspection");
        services.bus.publish(Event::LotClaimed {
            code_lot: lot.code_lot.clone(),
            attempts: lot.attempts,
        });
        services.dispatch_to_station(lot).await?;
    }
    if handed > 0 {
        services.publish_queue();
    }
    Ok(handed)
}

/// Runs the monitor: a step at start, at each event that finishes a lot's
/// gavage or inspection, and every `polling_interval` seconds as a safety
/// net.
pub async fn run(
    services: Services,
    params: MonitorParams,
    ctx: TaskContext,
) -> anyhow::Result<String> {
    let mut events = services.bus.subscribe();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(params.polling_interval));
    let mut total: u64 = 0;
    loop {
        let handed = step(&services).await?;
        total += handed as u64;
        if handed > 0 {
            ctx.count(|counters| counters.lots += handed as u64);
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = ticker.tick() => {}
            event = wait_for_queue_change(&mut events) => {
                if event.is_err() {
                    // The bus is gone: the process is shutting down.
                    break;
                }
            }
        }
    }
    Ok(format!("{total} lots transmis au SQAL"))
}

async fn wait_for_queue_change(
    events: &mut tokio::sync::broadcast::Receiver<crate::views::EventEnvelope>,
) -> Result<(), RecvError> {
    loop {
        match events.recv().await {
            // A finished gavage queues a lot; a finished inspection frees a
            // place for the next claim.
            Ok(envelope)
                if matches!(
                    envelope.event,
                    Event::LotFinished { .. } | Event::LotInspected { .. }
                ) =>
            {
                // A burst of finished lots takes one claim, not one each:
                // the claim that follows reads every change published so far.
                loop {
                    match events.try_recv() {
                        Ok(_) | Err(TryRecvError::Lagged(_)) => continue,
                        Err(TryRecvError::Empty | TryRecvError::Closed) => return Ok(()),
                    }
                }
            }
            Ok(_) => continue,
            // Missed events may include a finished lot: scan now.
            Err(RecvError::Lagged(_)) => return Ok(()),
            Err(RecvError::Closed) => return Err(RecvError::Closed),
        }
    }
}
