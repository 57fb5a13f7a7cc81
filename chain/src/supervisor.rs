//! Supervisor of the simulator tasks: one instance of each task at a time,
//! idempotent start, immediate stop, and a status with counters.

use crate::bus::EventBus;
use crate::views::{Event, TaskCounters, TaskName, TaskState, TaskStatus};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long `stop` waits for a task to wind down before aborting it.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Minimum time between two events that only carry new counter values.
const COUNTER_EVENT_SPACING: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq)]
pub enum StartOutcome {
    Started(TaskStatus),
    /// The task was already starting or running; nothing changed.
    AlreadyRunning(TaskStatus),
    /// The task is stopping; start it again once it has stopped.
    Stopping(TaskStatus),
    /// Another instance on the same database runs the task; the status is
    /// that instance's run, with `elsewhere` naming it.
    Elsewhere(TaskStatus),
}

impl StartOutcome {
    pub fn status(&self) -> &TaskStatus {
        match self {
            StartOutcome::Started(status)
            | StartOutcome::AlreadyRunning(status)
            | StartOutcome::Stopping(status)
            | StartOutcome::Elsewhere(status) => status,
        }
    }
}

struct Slot {
    status: TaskStatus,
    cancel: Option<CancellationToken>,
    handle: Option<JoinHandle<()>>,
    /// Incremented at each start, so a finished run cannot overwrite the
    /// status of a newer one.
    generation: u64,
    /// When counters were last published.
    counters_published: Option<std::time::Instant>,
    /// A run of the task in another instance, shown while this instance's
    /// own run is not active.
    remote: Option<TaskStatus>,
}

#[derive(Clone)]
pub struct Supervisor {
    slots: Arc<Mutex<HashMap<TaskName, Slot>>>,
    bus: EventBus,
}

/// Handle given to a running task: its cancellation token and its counters.
#[derive(Clone)]
pub struct TaskContext {
    pub cancel: CancellationToken,
    task: TaskName,
    generation: u64,
    slots: Arc<Mutex<HashMap<TaskName, Slot>>>,
    bus: EventBus,
}

impl TaskContext {
    /// Updates the task's counters and publishes them, at most every 200 ms;
    /// the final values go out with the task's last state change.
    pub fn count(&self, update: impl FnOnce(&mut TaskCounters)) {
        let mut slots = self.slots.lock().expect("supervisor lock");
        let Some(slot) = slots.get_mut(&self.task) else {
            return;
        };
        if slot.generation != self.generation {
            return;
        }
        update(&mut slot.status.counters);
        let now = std::time::Instant::now();
        let due = slot
            .counters_published
            .is_none_or(|published| now.duration_since(published) >= COUNTER_EVENT_SPACING);
        if due {
            slot.counters_published = Some(now);
            let status = slot.status.clone();
            drop(slots);
            self.bus.publish(Event::Task { status });
        }
    }
}

impl Supervisor {
    pub fn new(bus: EventBus) -> Self {
        let slots = TaskName::ALL
            .into_iter()
            .map(|task| {
                let slot = Slot {
                    status: TaskStatus::stopped(task),
                    cancel: None,
                    handle: None,
                    generation: 0,
                    counters_published: None,
                    remote: None,
                };
                (task, slot)
            })
            .collect();
        Supervisor {
            slots: Arc::new(Mutex::new(slots)),
            bus,
        }
    }

    /// The task's status as the pages show it: this instance's run when it
    /// is active, else another instance's run when one is known.
    pub fn status(&self, task: TaskName) -> TaskStatus {
        let slots = self.slots.lock().expect("supervisor lock");
        let slot = &slots[&task];
        match &slot.remote {
            Some(remote) if !slot.status.state.is_active() => remote.clone(),
            _ => slot.status.clone(),
        }
    }

    /// This instance's own run of the task, active or not.
    pub fn local_status(&self, task: TaskName) -> TaskStatus {
        self.slots.lock().expect("supervisor lock")[&task]
            .status
            .clone()
    }

    /// Records what another instance's run of a task is doing. Returns
    /// whether pages should see it, that is whether this instance's own run
    /// is inactive.
    pub fn set_remote(&self, status: TaskStatus) -> bool {
        let mut slots = self.slots.lock().expect("supervisor lock");
        let slot = slots.get_mut(&status.task).expect("every task has a slot");
        let shown = !slot.status.state.is_active();
        slot.remote = status.state.is_active().then_some(status);
        shown
    }

    /// Marks the task's last run as cut short by a crash, with the
    /// parameters it had, unless the task has run since this process started.
    pub fn mark_interrupted(
        &self,
        task: TaskName,
        params: serde_json::Value,
        run_id: Option<String>,
        started_at: String,
    ) {
        let mut slots = self.slots.lock().expect("supervisor lock");
        let slot = slots.get_mut(&task).expect("every task has a slot");
        if slot.generation != 0 {
            return;
        }
        slot.status = TaskStatus {
            params: Some(params),
            run_id,
            started_at: Some(started_at),
            interrupted: true,
            ..TaskStatus::stopped(task)
        };
    }

    pub fn statuses(&self) -> Vec<TaskStatus> {
        TaskName::ALL
            .into_iter()
            .map(|task| self.status(task))
            .collect()
    }

    pub fn is_active(&self, task: TaskName) -> bool {
        self.status(task).state.is_active()
    }

    /// Starts `task` with the future that `body` builds, unless the task is
    /// already active. The lock is held from the check to the spawn, so
    /// concurrent starts launch a single instance.
    pub fn start<F, Fut>(
        &self,
        task: TaskName,
        params: serde_json::Value,
        run_id: Option<String>,
        body: F,
    ) -> StartOutcome
    where
        F: FnOnce(TaskContext) -> Fut,
        Fut: Future<Output = anyhow::Result<String>> + Send + 'static,
    {
        let mut slots = self.slots.lock().expect("supervisor lock");
        let slot = slots.get_mut(&task).expect("every task has a slot");
        match slot.status.state {
            TaskState::Starting | TaskState::Running => {
                return StartOutcome::AlreadyRunning(slot.status.clone())
            }
            TaskState::Stopping => return StartOutcome::Stopping(slot.status.clone()),
            TaskState::Stopped | TaskState::Failed => {}
        }

        slot.generation += 1;
        let generation = slot.generation;
        let cancel = CancellationToken::new();
        slot.status = TaskStatus {
            task,
            state: TaskState::Running,
            params: Some(params),
            run_id,
            started_at: Some(crate::time::now()),
            counters: TaskCounters::default(),
            note: None,
            last_error: None,
            elsewhere: None,
            interrupted: false,
        };
        slot.counters_published = None;
        let ctx = TaskContext {
            cancel: cancel.clone(),
            task,
            generation,
            slots: self.slots.clone(),
            bus: self.bus.clone(),
        };
        let future = body(ctx);
        let supervisor = self.clone();
        slot.handle = Some(tokio::spawn(async move {
            let result = future.await;
            supervisor.finish(task, generation, result);
        }));
        slot.cancel = Some(cancel);
        let status = slot.status.clone();
        drop(slots);

        tracing::info!(task = task.as_str(), "task started");
        self.bus.publish(Event::Task {
            status: status.clone(),
        });
        StartOutcome::Started(status)
    }

    /// Records how a run ended, unless `stop` already owns the slot.
    fn finish(&self, task: TaskName, generation: u64, result: anyhow::Result<String>) {
        let mut slots = self.slots.lock().expect("supervisor lock");
        let slot = slots.get_mut(&task).expect("every task has a slot");
        if slot.generation != generation || slot.status.state != TaskState::Running {
            return;
        }
        match result {
            Ok(note) => {
                tracing::info!(task = task.as_str(), note = %note, "task finished");
                slot.status.state = TaskState::Stopped;
                slot.status.note = Some(note);
            }
            Err(error) => {
                tracing::error!(
                    task = task.as_str(),
                    error = format!("{error:#}"),
                    "task failed"
                );
                slot.status.state = TaskState::Failed;
                slot.status.last_error = Some(format!("{error:#}"));
            }
        }
        slot.cancel = None;
        slot.handle = None;
        let status = slot.status.clone();
        drop(slots);
        self.bus.publish(Event::Task { status });
    }

    /// Stops `task` now: cancels it, waits up to five seconds for it to wind
    /// down, then aborts it. Stopping a stopped task changes nothing.
    pub async fn stop(&self, task: TaskName) -> TaskStatus {
        let (cancel, handle, status) = {
            let mut slots = self.slots.lock().expect("supervisor lock");
            let slot = slots.get_mut(&task).expect("every task has a slot");
            if slot.status.state != TaskState::Running && slot.status.state != TaskState::Starting {
                return slot.status.clone();
            }
            slot.status.state = TaskState::Stopping;
            (slot.cancel.take(), slot.handle.take(), slot.status.clone())
        };
        self.bus.publish(Event::Task { status });

        if let Some(cancel) = cancel {
            cancel.cancel();
        }
        if let Some(mut handle) = handle {
            if tokio::time::timeout(STOP_GRACE, &mut handle).await.is_err() {
                tracing::warn!(
                    task = task.as_str(),
                    "task did not stop in time, aborting it"
                );
                handle.abort();
            }
        }

        let status = {
            let mut slots = self.slots.lock().expect("supervisor lock");
            let slot = slots.get_mut(&task).expect("every task has a slot");
            slot.status.state = TaskState::Stopped;
            if slot.status.note.is_none() {
                slot.status.note = Some("arrêté".to_string());
            }
            slot.status.clone()
        };
        tracing::info!(task = task.as_str(), "task stopped");
        self.bus.publish(Event::Task {
            status: status.clone(),
        });
        status
    }

    /// Stops every task, for shutdown.
    pub async fn stop_all(&self) {
        for task in TaskName::ALL {
            self.stop(task).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts live instances of a task body; the count drops when the body
    /// ends or is aborted.
    struct Alive(Arc<AtomicUsize>);

    impl Drop for Alive {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_stop_storm_leaves_no_orphan() {
        let supervisor = Supervisor::new(EventBus::new());
        let alive = Arc::new(AtomicUsize::new(0));
        let max_alive = Arc::new(AtomicUsize::new(0));

        let calls = (0..200u32).map(|call| {
            let supervisor = supervisor.clone();
            let alive = alive.clone();
            let max_alive = max_alive.clone();
            tokio::spawn(async move {
                if call % 3 == 0 {
                    supervisor.stop(TaskName::Gavage).await;
                } else {
                    supervisor.start(TaskName::Gavage, serde_json::json!({}), None, move |ctx| {
                        let now = alive.fetch_add(1, Ordering::SeqCst) + 1;
                        max_alive.fetch_max(now, Ordering::SeqCst);
                        let guard = Alive(alive);
                        async move {
                            let _guard = guard;
                            ctx.cancel.cancelled().await;
                            Ok("stopped".to_string())
                        }
                    });
                }
            })
        });
        for call in calls.collect::<Vec<_>>() {
            call.await.expect("call finished");
        }
        supervisor.stop(TaskName::Gavage).await;

        assert_eq!(
            alive.load(Ordering::SeqCst),
            0,
            "a task body outlived the final stop"
        );
        assert_eq!(
            max_alive.load(Ordering::SeqCst),
            1,
            "two instances ran at once"
        );
        assert_eq!(
            supervisor.status(TaskName::Gavage).state,
            TaskState::Stopped
        );
    }
}
