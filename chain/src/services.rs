//! The shared handle of a running Filière: store, event bus, supervisor and
//! the configuration the tasks need. Pages and the JSON API act through it.

use crate::bus::EventBus;
use crate::cluster::{self, TaskLock};
use crate::monitor::ClaimedLot;
use crate::params::{GavageParams, InvalidParam, MonitorParams, PipelineParams, SqalParams};
use crate::store::{Engine, Store};
use crate::supervisor::{StartOutcome, Supervisor, TaskContext};
use crate::views::{ChainSnapshot, Event, TaskName, TaskState, TaskStatus};
use crate::{gavage, monitor, sqal};
use std::future::Future;
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
    /// Name of this server instance, shown to other instances on the same
    /// PostgreSQL database.
    pub instance: String,
    /// Graded samples on their way to the store, written in shared
    /// transactions.
    pub(crate) samples: crate::group_commit::SampleQueue,
    /// Lots found ready for slaughter by the device ingest.
    pub ready_lots: crate::ingest::ReadyLots,
    /// Sender to the running SQAL station, if any.
    station_inbox: Arc<Mutex<Option<mpsc::UnboundedSender<ClaimedLot>>>>,
    /// One lock per task, held from the status check to the spawn, so that
    /// two starts in this instance never race for the task's database lock.
    starting: Arc<[tokio::sync::Mutex<()>; 3]>,
    /// State of the task that reads and publishes the queue's counts.
    queue_counts: Arc<Mutex<CountsRefresh>>,
}

/// Progress of the queue counts' refresh: whether a task is reading them,
/// and whether the queue changed since that task's last read began.
#[derive(Default)]
struct CountsRefresh {
    running: bool,
    changed: bool,
}

/// Error of a start request: nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Invalid(#[from] InvalidParam),
    #[error("{0}")]
    NothingToResume(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
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
            instance: "local".to_string(),
            samples: Default::default(),
            ready_lots: Default::default(),
            station_inbox: Arc::new(Mutex::new(None)),
            starting: Arc::new(Default::default()),
            queue_counts: Arc::default(),
        }
    }

    pub async fn start_gavage(&self, params: GavageParams) -> Result<StartOutcome, StartError> {
        params.validate()?;
        self.launch_gavage(params, new_run_id(), false).await
    }

    async fn launch_gavage(
        &self,
        params: GavageParams,
        run_id: String,
        resume: bool,
    ) -> Result<StartOutcome, StartError> {
        let services = self.clone();
        let json = serde_json::to_value(&params).expect("parameters serialize");
        let id = run_id.clone();
        Ok(self
            .start_task(TaskName::Gavage, json, Some(run_id), move |ctx| {
                gavage::run(services, params, id, resume, ctx)
            })
            .await?)
    }

    pub async fn start_monitor(&self, params: MonitorParams) -> Result<StartOutcome, StartError> {
        params.validate()?;
        let services = self.clone();
        let json = serde_json::to_value(&params).expect("parameters serialize");
        Ok(self
            .start_task(TaskName::Monitor, json, None, move |ctx| {
                monitor::run(services, params, ctx)
            })
            .await?)
    }

    pub async fn start_sqal(&self, params: SqalParams) -> Result<StartOutcome, StartError> {
        params.validate()?;
        let services = self.clone();
        let json = serde_json::to_value(&params).expect("parameters serialize");
        let inbox = self.station_inbox.clone();
        Ok(self
            .start_task(TaskName::Sqal, json, None, move |ctx| {
                let (sender, receiver) = mpsc::unbounded_channel();
                *inbox.lock().expect("station inbox lock") = Some(sender);
                sqal::run(services, params, receiver, ctx)
            })
            .await?)
    }

    /// Starts a task unless it is active here or, on PostgreSQL, in another
    /// instance. The run holds its task lock and is recorded in `task_runs`
    /// while it lasts, so that a crash leaves it marked as interrupted.
    async fn start_task<F, Fut>(
        &self,
        task: TaskName,
        params: serde_json::Value,
        run_id: Option<String>,
        body: F,
    ) -> anyhow::Result<StartOutcome>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<String>> + Send + 'static,
    {
        let slot = TaskName::ALL
            .iter()
            .position(|known| *known == task)
            .expect("every task is in TaskName::ALL");
        let _starting = self.starting[slot].lock().await;
        let local = self.supervisor.local_status(task);
        match local.state {
            TaskState::Starting | TaskState::Running => {
                return Ok(StartOutcome::AlreadyRunning(local))
            }
            TaskState::Stopping => return Ok(StartOutcome::Stopping(local)),
            TaskState::Stopped | TaskState::Failed => {}
        }
        let lock = match self.store.engine() {
            Engine::Sqlite => None,
            Engine::Postgres => match self.lock_task(task).await? {
                Ok(lock) => Some(lock),
                Err(outcome) => return Ok(outcome),
            },
        };
        // Recorded before the run starts, so that an instance that finds the
        // lock taken also finds what the run is.
        self.store
            .task_run_started(task, &self.instance, &params, run_id.as_deref())
            .await?;
        let services = self.clone();
        Ok(self
            .supervisor
            .start(task, params, run_id, move |ctx| async move {
                let (result, lock) = match lock {
                    None => (body(ctx).await, None),
                    Some(mut lock) => {
                        // A run whose lock's session dies (database restart,
                        // dropped connection) stops, since another instance
                        // may now take the task.
                        let result = tokio::select! {
                            result = body(ctx) => result,
                            lost = lock.watch() => Err(lost),
                        };
                        (result, Some(lock))
                    }
                };
                let state = if result.is_ok() { "stopped" } else { "failed" };
                if let Err(error) = services
                    .store
                    .task_run_ended(task, &services.instance, state)
                    .await
                {
                    tracing::warn!(
                        task = task.as_str(),
                        error = format!("{error:#}"),
                        "cannot record the end of a task run"
                    );
                }
                if let Some(lock) = lock {
                    lock.release().await;
                }
                result
            }))
    }

    /// Takes the task's lock, or returns the outcome that names the instance
    /// running the task. A lock released between the attempt and the lookup
    /// is tried again.
    async fn lock_task(&self, task: TaskName) -> anyhow::Result<Result<TaskLock, StartOutcome>> {
        for _ in 0..3 {
            // Taken in its own task: a caller dropped halfway, such as a
            // request its client cancelled, must not leave a locked session
            // in the pool.
            let pool = self.store.pool().clone();
            let instance = self.instance.clone();
            let attempt =
                tokio::spawn(async move { cluster::try_lock_task(&pool, task, &instance).await })
                    .await
                    .map_err(|error| anyhow::anyhow!("task lock attempt failed: {error}"))??;
            if let Some(lock) = attempt {
                return Ok(Ok(lock));
            }
            if let Some(status) = self.remote_status(task).await? {
                self.supervisor.set_remote(status.clone());
                return Ok(Err(StartOutcome::Elsewhere(status)));
            }
        }
        anyhow::bail!(
            "the {} task's lock is held, but no instance shows as holding it",
            task.as_str()
        )
    }

    /// Another instance's run of `task`, read from its lock and its record.
    async fn remote_status(&self, task: TaskName) -> anyhow::Result<Option<TaskStatus>> {
        let holders = cluster::task_holders(self.store.pool(), task).await?;
        let Some(holder) = holders
            .into_iter()
            .find(|holder| !cluster::same_instance(&self.instance, holder))
        else {
            return Ok(None);
        };
        // The holder records its run right after taking the lock: give that
        // write a moment to land.
        let mut record = None;
        for _ in 0..20 {
            record = self
                .store
                .task_runs()
                .await?
                .into_iter()
                .find(|run| run.task == task && cluster::same_instance(&run.instance, &holder));
            if record.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(Some(TaskStatus {
            state: TaskState::Running,
            params: record.as_ref().map(|run| run.params.clone()),
            run_id: record.as_ref().and_then(|run| run.run_id.clone()),
            started_at: record.map(|run| run.started_at),
            elsewhere: Some(holder),
            ..TaskStatus::stopped(task)
        }))
    }

    /// Waits, for at most `limit`, until every graded sample handed to the
    /// store is written; false when some were still pending.
    pub async fn wait_samples_written(&self, limit: std::time::Duration) -> bool {
        self.samples.wait_idle(limit).await
    }

    /// Reads the last run of each task at start-up. A run recorded as
    /// running whose instance no longer has its lock was cut short by a
    /// crash, so its status is marked interrupted and keeps its parameters
    /// for a resume. A run whose live instance has the lock shows as
    /// running there.
    pub async fn load_task_runs(&self) -> anyhow::Result<()> {
        for run in self.store.task_runs().await? {
            if run.state != "running" {
                continue;
            }
            let live = match self.store.engine() {
                Engine::Sqlite => false,
                Engine::Postgres => cluster::task_holders(self.store.pool(), run.task)
                    .await?
                    .iter()
                    .any(|holder| cluster::same_instance(&run.instance, holder)),
            };
            if live && !cluster::same_instance(&self.instance, &run.instance) {
                self.supervisor.set_remote(TaskStatus {
                    state: TaskState::Running,
                    params: Some(run.params),
                    run_id: run.run_id,
                    started_at: Some(run.started_at),
                    elsewhere: Some(run.instance),
                    ..TaskStatus::stopped(run.task)
                });
            } else if !live {
                tracing::warn!(task = run.task.as_str(), instance = %run.instance, "task run interrupted by a crash; it can be resumed");
                self.supervisor
                    .mark_interrupted(run.task, run.params, run.run_id, run.started_at);
            }
        }
        Ok(())
    }

    /// Starts again a task whose run a crash interrupted, or a gavage run
    /// that was stopped before its lots finished, with the parameters it
    /// had. A gavage run continues its own lots from their next meal.
    pub async fn resume(&self, task: TaskName) -> Result<StartOutcome, StartError> {
        let status = self.supervisor.local_status(task);
        let resumable_gavage = task == TaskName::Gavage && status.run_id.is_some();
        if status.state.is_active() || !(status.interrupted || resumable_gavage) {
            return Err(StartError::NothingToResume(format!(
                "the {} task has no interrupted run to resume",
                task.as_str()
            )));
        }
        let params = status.params.unwrap_or(serde_json::Value::Null);
        let stored = |error: serde_json::Error| {
            StartError::Internal(anyhow::anyhow!(
                "stored parameters of the {} task: {error}",
                task.as_str()
            ))
        };
        match task {
            TaskName::Gavage => {
                let params: GavageParams = serde_json::from_value(params).map_err(stored)?;
                let run_id = status.run_id.expect("checked above");
                self.launch_gavage(params, run_id, true).await
            }
            TaskName::Monitor => {
                self.start_monitor(serde_json::from_value(params).map_err(stored)?)
                    .await
            }
            TaskName::Sqal => {
                self.start_sqal(serde_json::from_value(params).map_err(stored)?)
                    .await
            }
        }
    }

    pub async fn stop(&self, task: TaskName) -> TaskStatus {
        let status = self.supervisor.stop(task).await;
        if task == TaskName::Sqal {
            self.station_inbox
                .lock()
                .expect("station inbox lock")
                .take();
        }
        if status.state.is_active() {
            status
        } else {
            // Another instance's run, if any, is what the page should show.
            self.supervisor.status(task)
        }
    }

    /// Hands a lot that another instance's monitor claimed to this
    /// instance's station, when the station runs here.
    pub async fn accept_remote_claim(&self, code_lot: &str) -> anyhow::Result<()> {
        if !self
            .supervisor
            .local_status(TaskName::Sqal)
            .state
            .is_active()
        {
            return Ok(());
        }
        let Some(lot) = self.store.claimed_lot(code_lot).await? else {
            return Ok(());
        };
        self.send_to_station(lot);
        Ok(())
    }

    /// Puts a claimed lot in this instance's station inbox. When the inbox
    /// is closed the lot stays `inspecting`, and its lease expiry hands it
    /// out again.
    fn send_to_station(&self, lot: ClaimedLot) {
        let sender = self
            .station_inbox
            .lock()
            .expect("station inbox lock")
            .clone();
        let code_lot = lot.code_lot.clone();
        let sent = sender.is_some_and(|sender| sender.send(lot).is_ok());
        if !sent {
            tracing::warn!(lot.code = %code_lot, "SQAL station inbox closed, lot left to its lease");
        }
    }

    /// Starts the whole chain for one click. A gavage run already going is
    /// stopped first, so that the products this click waits for come from
    /// lots this click created. Monitor and station keep running when their
    /// parameters are the requested ones.
    pub async fn start_pipeline(
        &self,
        params: PipelineParams,
    ) -> Result<PipelineStart, StartError> {
        params.validate()?;
        let started_at = crate::time::now();
        if self
            .supervisor
            .local_status(TaskName::Gavage)
            .state
            .is_active()
        {
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
            let status = self.supervisor.local_status(task);
            if status.state.is_active() && status.params.as_ref() != Some(&json) {
                self.stop(task).await;
            }
        }
        self.start_sqal(params.sqal).await?;
        self.start_monitor(params.monitor).await?;
        // When another instance runs the gavage, this click follows that
        // instance's run.
        let gavage = self.start_gavage(params.gavage).await?;
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
        if !self
            .supervisor
            .local_status(TaskName::Sqal)
            .state
            .is_active()
        {
            let params = self
                .supervisor
                .local_status(TaskName::Sqal)
                .params
                .and_then(|json| serde_json::from_value::<SqalParams>(json).ok())
                .unwrap_or_default();
            tracing::info!(device_id = %params.device_id, "starting the SQAL station for a claimed lot");
            match self.start_sqal(params).await {
                Ok(StartOutcome::Elsewhere(status)) => {
                    // The station of that instance receives the claim
                    // through the relay (the `LotClaimed` event).
                    tracing::debug!(lot.code = %lot.code_lot, instance = ?status.elsewhere, "claimed lot left to the station of another instance");
                    return Ok(());
                }
                Ok(_) => {}
                Err(error) => {
                    // The lot stays `inspecting`; its lease expiry hands it out again.
                    tracing::warn!(lot.code = %lot.code_lot, error = %error, "cannot start the SQAL station for a claimed lot, left to its lease");
                    return Ok(());
                }
            }
        }
        self.send_to_station(lot);
        Ok(())
    }

    /// Publishes the inspection queue's counts after a change to it, from a
    /// task of its own, so the monitor and the station do not wait for the
    /// read. Changes made while a read runs are coalesced into one more
    /// read, so the last event always shows the counts after the last change.
    pub fn publish_queue(&self) {
        {
            let mut refresh = self.queue_counts.lock().expect("queue counts lock");
            refresh.changed = true;
            if refresh.running {
                return;
            }
            refresh.running = true;
        }
        let services = self.clone();
        tokio::spawn(async move {
            loop {
                {
                    let mut refresh = services.queue_counts.lock().expect("queue counts lock");
                    if !refresh.changed {
                        refresh.running = false;
                        return;
                    }
                    refresh.changed = false;
                }
                match services.store.queue_counts().await {
                    Ok((pending, inspecting)) => services.bus.publish(Event::Queue {
                        pending,
                        inspecting,
                    }),
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "failed to read the queue counts for the queue event")
                    }
                }
            }
        });
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
