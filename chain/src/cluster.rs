//! Several server instances on one PostgreSQL database.
//!
//! Each run of a task takes a PostgreSQL session advisory lock on a
//! connection set apart for the run's life. The lock is exclusive for the
//! two simulators (gavage and SQAL station), so each runs in one instance
//! at most. It is shared for the lot monitor, which any instance may run.
//! The lock's connection carries the instance's name as its
//! `application_name`, so another instance can name the one that runs a task. The
//! lock ends with the run, or with the process when it is killed, because
//! PostgreSQL closes the session.
//!
//! SQLite serves one process, so none of this applies there.

use crate::views::TaskName;
use anyhow::Context;
use sqlx::{AnyConnection, AnyPool, Connection, Row};

/// First key of the advisory locks on task runs ("Fil" in ASCII).
const TASK_LOCK_CLASS: i32 = 0x0046_696c;
/// First key of the per-lot locks that order hash-chain appends.
pub const LEDGER_LOCK_CLASS: i32 = 0x0046_696d;
/// Key of the lock that makes monitors claim lots one at a time, so that
/// the cap on lots in flight holds across instances.
pub const CLAIM_LOCK_CLASS: i32 = 0x0046_696e;
/// `application_name` of a lock's connection: this prefix, then the instance.
const APPLICATION_PREFIX: &str = "filiere ";
/// PostgreSQL truncates `application_name` to 63 bytes.
const APPLICATION_NAME_MAX: usize = 63;
/// Time between two checks that a lock's session is still alive.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

fn task_key(task: TaskName) -> i32 {
    match task {
        TaskName::Gavage => 1,
        TaskName::Monitor => 2,
        TaskName::Sqal => 3,
    }
}

/// Returns whether at most one instance may run `task`: true for the simulators.
pub fn is_exclusive(task: TaskName) -> bool {
    task != TaskName::Monitor
}

/// Lock of one task run. Releasing or dropping it ends the lock.
pub struct TaskLock {
    task: TaskName,
    connection: Option<AnyConnection>,
}

impl TaskLock {
    /// Checks the lock's session every few seconds and returns the error
    /// once a check fails, because the lock ended with the session.
    pub async fn watch(&mut self) -> anyhow::Error {
        let task = self.task;
        let Some(connection) = self.connection.as_mut() else {
            return anyhow::anyhow!("the {} task's lock was already released", task.as_str());
        };
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let alive = sqlx::query("SELECT 1 AS alive")
                .fetch_one(&mut *connection)
                .await;
            if let Err(error) = alive {
                tracing::error!(task = task.as_str(), %error, "task lock's database session lost, stopping the run");
                return anyhow::Error::new(error).context(format!(
                    "the {} task's lock ended with its database session",
                    task.as_str()
                ));
            }
        }
    }

    /// Unlocks and closes the connection. Dropping the lock also ends it,
    /// by closing the connection without a goodbye.
    pub async fn release(mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        let unlock = if is_exclusive(self.task) {
            "SELECT pg_advisory_unlock($1, $2)"
        } else {
            "SELECT pg_advisory_unlock_shared($1, $2)"
        };
        let unlocked = sqlx::query(unlock)
            .bind(TASK_LOCK_CLASS)
            .bind(task_key(self.task))
            .execute(&mut connection)
            .await;
        if let Err(error) = unlocked {
            tracing::warn!(task = self.task.as_str(), %error, "cannot unlock a task run; closing its connection ends the lock");
        }
        let _ = connection.close().await;
    }
}

/// `application_name` for `instance`, cut to what PostgreSQL keeps.
fn application_name(instance: &str) -> String {
    let mut name = format!("{APPLICATION_PREFIX}{instance}");
    while name.len() > APPLICATION_NAME_MAX {
        name.pop();
    }
    name
}

/// Takes the lock of a run of `task` for `instance`, or returns `None` when
/// another run holds it (exclusive tasks only: the monitor's shared lock is
/// always granted).
pub async fn try_lock_task(
    pool: &AnyPool,
    task: TaskName,
    instance: &str,
) -> anyhow::Result<Option<TaskLock>> {
    let lock = if is_exclusive(task) {
        "SELECT pg_try_advisory_lock($1, $2) AS acquired"
    } else {
        "SELECT pg_try_advisory_lock_shared($1, $2) AS acquired"
    };
    let mut pooled = pool.acquire().await.context("connection for a task lock")?;
    // Named before it locks, so that an instance that finds the lock taken
    // also finds which instance has it.
    sqlx::query("SELECT set_config('application_name', $1, false) AS name")
        .bind(application_name(instance))
        .fetch_one(&mut *pooled)
        .await
        .context("name a task lock's connection")?;
    let acquired: bool = sqlx::query(lock)
        .bind(TASK_LOCK_CLASS)
        .bind(task_key(task))
        .fetch_one(&mut *pooled)
        .await
        .with_context(|| format!("lock the {} task", task.as_str()))?
        .try_get("acquired")?;
    if !acquired {
        sqlx::query("SELECT set_config('application_name', '', false) AS name")
            .fetch_one(&mut *pooled)
            .await
            .context("clear the name of a pooled connection")?;
        return Ok(None);
    }
    // The connection now belongs to the run: the pool must never hand out a
    // session that holds the lock.
    Ok(Some(TaskLock {
        task,
        connection: Some(pooled.detach()),
    }))
}

/// Names of the instances whose runs of `task` hold its lock now.
pub async fn task_holders(pool: &AnyPool, task: TaskName) -> anyhow::Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT a.application_name AS name FROM pg_locks l \
         JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
           AND a.application_name LIKE $3 \
           AND l.classid::bigint = $1 AND l.objid::bigint = $2 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY a.backend_start",
    )
    .bind(TASK_LOCK_CLASS as i64)
    .bind(task_key(task) as i64)
    .bind(format!("{APPLICATION_PREFIX}%"))
    .fetch_all(pool)
    .await
    .with_context(|| format!("read who runs the {} task", task.as_str()))?;
    rows.iter()
        .map(|row| {
            let name: String = row.try_get("name")?;
            Ok(name
                .strip_prefix(APPLICATION_PREFIX)
                .map(str::to_string)
                .unwrap_or(name))
        })
        .collect()
}

/// Returns whether a stored instance name matches a holder's, which
/// PostgreSQL may have cut short.
pub fn same_instance(stored: &str, holder: &str) -> bool {
    stored == holder || application_name(stored) == application_name(holder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_name_cut_on_char_boundary() {
        let name = application_name(&"é".repeat(40));
        assert!(name.len() <= APPLICATION_NAME_MAX, "{} bytes", name.len());
        assert!(name.starts_with(APPLICATION_PREFIX));
        assert!(same_instance(
            &"é".repeat(40),
            name.strip_prefix(APPLICATION_PREFIX).unwrap()
        ));
    }

    #[test]
    fn only_the_simulators_are_exclusive() {
        assert!(is_exclusive(TaskName::Gavage));
        assert!(is_exclusive(TaskName::Sqal));
        assert!(!is_exclusive(TaskName::Monitor));
    }
}
