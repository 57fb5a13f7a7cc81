//! Group commit of graded samples: concurrent ingest requests share one
//! transaction. Each request queues its sample and starts a writer task
//! unless enough are running. A writer stores what is queued in batches
//! through `Store::record_samples` until the queue is empty. A request does
//! not wait for a batch to fill: its sample goes with the next write, which
//! takes whatever queued while the previous one ran.

use crate::sqal::{Analysis, Measurement};
use crate::store::{Engine, SampleOutcome, SampleRow, Store};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Largest batch one transaction stores.
pub const MAX_BATCH: usize = 64;

/// Writer tasks at once. SQLite has one write connection. On PostgreSQL,
/// with bench/ingest_load.py on 2 cores, a second writer gave between 4 %
/// fewer and 13 % more samples per second than one, with more PostgreSQL
/// CPU per sample and a higher median latency (BENCHMARKS.md), so one is
/// kept there too.
fn max_writers(engine: Engine) -> usize {
    match engine {
        Engine::Sqlite | Engine::Postgres => 1,
    }
}

/// A graded sample waiting to be stored.
pub struct QueuedSample {
    pub code_lot: String,
    pub sample_index: u32,
    pub device_id: String,
    pub measurement: Measurement,
    pub analysis: Analysis,
}

impl QueuedSample {
    fn row(&self) -> SampleRow<'_> {
        SampleRow {
            code_lot: &self.code_lot,
            sample_index: self.sample_index,
            device_id: &self.device_id,
            measurement: &self.measurement,
            analysis: &self.analysis,
        }
    }
}

struct Waiting {
    sample: QueuedSample,
    reply: oneshot::Sender<(QueuedSample, anyhow::Result<SampleOutcome>)>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// Writer tasks draining the queue.
    writers: usize,
}

/// Queue of samples on their way to the store, shared by every clone of
/// `Services`.
#[derive(Clone, Default)]
pub struct SampleQueue {
    queue: Arc<Mutex<Queue>>,
}

impl SampleQueue {
    /// Stores `sample` with the samples queued alongside it and returns its
    /// outcome with the sample, handed back for the caller's events. The write runs in its own task, so a caller that goes away
    /// (a closed HTTP connection) never leaves a batch half done.
    pub async fn record(
        &self,
        store: &Store,
        public_url: &str,
        sample: QueuedSample,
    ) -> anyhow::Result<(SampleOutcome, QueuedSample)> {
        let (reply, outcome) = oneshot::channel();
        let start_writer = {
            let mut queue = self.queue.lock().expect("sample queue lock");
            queue.waiting.push(Waiting { sample, reply });
            let start = queue.writers < max_writers(store.engine());
            if start {
                queue.writers += 1;
            }
            start
        };
        if start_writer {
            let mut writer = Writer {
                queue: self.queue.clone(),
                done: false,
            };
            let store = store.clone();
            let public_url = public_url.to_string();
            tokio::spawn(async move { writer.drain(&store, &public_url).await });
        }
        let (sample, outcome) = outcome
            .await
            .map_err(|_| anyhow::anyhow!("the sample writer stopped before storing the sample"))?;
        Ok((outcome?, sample))
    }

    /// Waits until no sample is queued or being written, for at most
    /// `limit`; true when the queue emptied. Shutdown calls it before the
    /// store closes, so a batch under way is not cut off.
    pub async fn wait_idle(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            {
                let queue = self.queue.lock().expect("sample queue lock");
                if queue.waiting.is_empty() && queue.writers == 0 {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// A task that writes queued samples. If it ends before the queue is empty
/// (a panic), dropping it lets the next request start another.
struct Writer {
    queue: Arc<Mutex<Queue>>,
    /// Set when the writer saw the queue empty and stopped counting itself.
    done: bool,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Ok(mut queue) = self.queue.lock() {
            queue.writers -= 1;
        }
    }
}

impl Writer {
    async fn drain(&mut self, store: &Store, public_url: &str) {
        loop {
            let batch: Vec<Waiting> = {
                let mut queue = self.queue.lock().expect("sample queue lock");
                if queue.waiting.is_empty() {
                    queue.writers -= 1;
                    self.done = true;
                    return;
                }
                let take = queue.waiting.len().min(MAX_BATCH);
                queue.waiting.drain(..take).collect()
            };
            write(store, public_url, batch).await;
        }
    }
}

/// Stores a batch and sends each request its outcome. When the batch fails as a
/// whole, its samples are stored one by one, so that one bad sample fails
/// alone.
async fn write(store: &Store, public_url: &str, mut batch: Vec<Waiting>) {
    // Sorted, two instances sharing a PostgreSQL database take the unique
    // keys of a sample resent to both in the same order, so they cannot
    // deadlock on them. The sort is stable, so the first of two equal
    // samples keeps the row.
    batch.sort_by(|a, b| {
        (a.sample.code_lot.as_str(), a.sample.sample_index)
            .cmp(&(b.sample.code_lot.as_str(), b.sample.sample_index))
    });
    let rows: Vec<SampleRow<'_>> = batch.iter().map(|waiting| waiting.sample.row()).collect();
    let result = store.record_samples(&rows, public_url).await;
    drop(rows);
    match result {
        Ok(outcomes) => {
            for (waiting, outcome) in batch.into_iter().zip(outcomes) {
                // The request may have gone away, but its sample is stored anyway.
                let _ = waiting.reply.send((waiting.sample, Ok(outcome)));
            }
        }
        Err(error) if batch.len() == 1 => {
            let waiting = batch.into_iter().next().expect("one sample");
            let _ = waiting.reply.send((waiting.sample, Err(error)));
        }
        Err(error) => {
            tracing::warn!(samples = batch.len(), error = %format!("{error:#}"), "batch of samples failed, storing them one by one");
            for waiting in batch {
                let outcome = store.record_sample(&waiting.sample.row(), public_url).await;
                let _ = waiting.reply.send((waiting.sample, outcome));
            }
        }
    }
}
