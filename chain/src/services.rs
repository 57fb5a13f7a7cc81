//! The shared handle of a running Filière: store, event bus, supervisor and
//! the configuration the tasks need. Pages and the JSON API act through it.

use crate::bus::EventBus;
use crate::monitor::ClaimedLot;
use crate::params::{GavageParams, InvalidParam, MonitorParams, PipelineParams, SqalParams};
use crate::store::Store;
use crate::supervisor::{StartOutcome, Supervisor};
use crate::views::{ChainSnapshot, Event, TaskName, TaskStatus};
use crate::{gavage, monitor, sqal};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct Services {
    pub store: Store,
    pub bus: EventBus,
    pub supervisor: Supervisor,
    /// Base URL written into QR payloads, without a trailing slash.
    pub public_url: String,
    /// Lease of a lot claimed for inspection, in seconds.
    pub lease_seconds: f64,
    /// Sender to the running SQAL station, if any.
    station_inbox: Arc<Mutex<Option<mpsc::UnboundedSender<ClaimedLot>>>>,
}

/// Result of the one-click pipeline start.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PipelineStart {
    /// Gavage run whose lots, and so whose products, belong to this click.
    pub run_id: String,
    pub started_at: String,
    pub tasks: Vec<TaskStatus>,
}

impl Services {
    pub fn new(store: Store, public_url: &str) -> Self {
        let bus = EventBus::new();
        Services {
            store,
            supervisor: Supervisor::new(bus.clone()),
            bus,
            public_url: public_url.trim_end_matches('/').to_string(),
            lease_seconds: monitor::LEASE_SECONDS,
            station_inbox: Arc::new(Mutex::new(None)),
        }
    }

    pub fn start_gavage(&self, params: GavageParams) -> Result<StartOutcome, InvalidParam> {
        params.validate()?;
        let run_id = new_run_id();
        let services = self.clone();
        let json = serde_json::to_value(&params).expect("parameters serialize");
        let id = run_id.clone();
        Ok(self
            .supervisor
            .start(TaskName::Gavage, json, Some(run_id), move |ctx| {
                gavage::run(services, params, id, ctx)
            }))
    }

    pub fn start_monitor(&self, params: MonitorParams) -> Result<StartOutcome, InvalidParam> {
        params.validate()?;
        let services = self.clone();
        let json = serde_json::to_value(&params).expect("parameters serialize");
        Ok(self
            .supervisor
            .start(TaskName::Monitor, json, None, move |ctx| {
                monitor::run(services, params, ctx)
            }))
    }

    pub fn start_sqal(&self, params: SqalParams) -> Result<StartOutcome, InvalidParam> {
        params.validate()?;
        let services = self.clone();
        let json = serde_json::to_value(&params).expect("parameters serialize");
        let inbox = self.station_inbox.clone();
        Ok(self
            .supervisor
            .start(TaskName::Sqal, json, None, move |ctx| {
                let (sender, receiver) = mpsc::unbounded_channel();
                *inbox.lock().expect("station inbox lock") = Some(sender);
                sqal::run(services, params, receiver, ctx)
            }))
    }

    pub async fn stop(&self, task: TaskName) -> TaskStatus {
        let status = self.supervisor.stop(task).await;
        if task == TaskName::Sqal {
            self.station_inbox
                .lock()
                .expect("station inbox lock")
                .take();
        }
        status
    }

    /// Starts the whole chain for one click. A gavage run already going is
    /// stopped first, so that the products this click waits for come from
    /// lots this click created. Monitor and station keep running when their
    /// parameters are the requested ones.
    pub async fn start_pipeline(
        &self,
        params: PipelineParams,
    ) -> Result<PipelineStart, InvalidParam> {
        params.validate()?;
        let started_at = crate::time::now();
        if self.supervisor.is_active(TaskName::Gavage) {
            self.stop(TaskName::Gavage).await;
        }
        // A monitor or station already running with other parameters is
        // restarted, so that the click's parameters apply.
        let requested = [
            (
                TaskName::Sqal,
                serde_json::to_value(&params.sqal).expect("parameters serialize"),
            ),
            (
                TaskName::Monitor,
                serde_json::to_value(&params.monitor).expect("parameters serialize"),
            ),
        ];
        for (task, json) in requested {
            let status = self.supervisor.status(task);
            if status.state.is_active() && status.params.as_ref() != Some(&json) {
                self.stop(task).await;
            }
        }
        self.start_sqal(params.sqal)?;
        self.start_monitor(params.monitor)?;
        let gavage = self.start_gavage(params.gavage)?;
        let run_id = gavage.status().run_id.clone().unwrap_or_default();
        Ok(PipelineStart {
            run_id,
            started_at,
            tasks: self.supervisor.statuses(),
        })
    }

    /// Hands a claimed lot to the station, starting it with its last or
    /// default parameters when it is not running.
    pub async fn dispatch_to_station(&self, lot: ClaimedLot) -> anyhow::Result<()> {
        if !self.supervisor.is_active(TaskName::Sqal) {
            let params = self
                .supervisor
                .status(TaskName::Sqal)
                .params
                .and_then(|json| serde_json::from_value::<SqalParams>(json).ok())
                .unwrap_or_default();
            tracing::info!(device_id = %params.device_id, "starting the SQAL station for a claimed lot");
            self.start_sqal(params)?;
        }
        let sender = self
            .station_inbox
            .lock()
            .expect("station inbox lock")
            .clone();
        match sender {
            Some(sender) if sender.send(lot.clone()).is_ok() => Ok(()),
            _ => {
                // The lot stays `inspecting`; its lease expiry hands it out again.
                tracing::warn!(lot.code = %lot.code_lot, "SQAL station inbox closed, lot left to its lease");
                Ok(())
            }
        }
    }

    /// Publishes the inspection queue's counts after a change to it.
    pub async fn publish_queue(&self) -> anyhow::Result<()> {
        let (pending, inspecting) = self.store.queue_counts().await?;
        self.bus.publish(Event::Queue {
            pending,
            inspecting,
        });
        Ok(())
    }

    /// Reads everything the demo page shows. The stream position is taken
    /// first, so replaying the events after it may repeat what the reads
    /// already saw but never misses anything.
    pub async fn snapshot(&self) -> anyhow::Result<ChainSnapshot> {
        let position = self.bus.position();
        let tasks = self.supervisor.statuses();
        let run_id = self.store.latest_run_id().await?;
        let lots = self.store.latest_run_lots().await?;
        let products = self.store.products(None, 20).await?;
        let (queue_pending, queue_inspecting) = self.store.queue_counts().await?;
        let (grade_counts, counted_up_to) = match &run_id {
            Some(run_id) => self.store.grade_counts(run_id).await?,
            None => Default::default(),
        };
        let latest_sample = self.store.latest_sample().await?;
        Ok(ChainSnapshot {
            position,
            tasks,
            run_id,
            lots,
            products,
            queue_pending,
            queue_inspecting,
            grade_counts,
            counted_up_to,
            latest_sample,
        })
    }
}

/// Makes a short, sortable run identifier: `R` + UTC time + 4 random hex digits.
fn new_run_id() -> String {
    format!(
        "R{}-{:04x}",
        chrono::Utc::now().format("%Y%m%d%H%M%S%3f"),
        rand::random::<u16>()
    )
}
