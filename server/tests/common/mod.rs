//! The real `filiere` binary as the crash and multi-instance tests drive
//! it: started on a database with its own environment, killed with
//! SIGKILL, and a fresh PostgreSQL database per test.

#![allow(dead_code)]

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    /// Starts the server with a one-second lease, so that lots a kill
    /// leaves `inspecting` come back quickly.
    pub async fn start(database_url: &str) -> Server {
        Server::start_with(database_url, &[("FILIERE_LEASE_SECONDS", "1")]).await
    }

    /// Starts the server with extra environment variables and waits until
    /// `/health` returns 200.
    pub async fn start_with(database_url: &str, env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_filiere"));
        command
            .env("DATABASE_URL", database_url)
            .env("FILIERE_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("server starts");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{base}/health")).await.is_err() {
            assert!(Instant::now() < deadline, "server not healthy after 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Server { child, base }
    }

    pub async fn json(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .expect("request sent")
            .json()
            .await
            .expect("JSON answer")
    }

    /// Posts `body` to `path` and returns the status and the JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Returns the status of one task from `/api/control/status`.
    pub async fn task(&self, name: &str) -> Value {
        let status = self.json("/api/control/status").await;
        status["tasks"]
            .as_array()
            .expect("a task list")
            .iter()
            .find(|task| task["task"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} task in {status}"))
    }

    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL sent");
        self.child.wait().expect("server reaped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL database made for one test and dropped at its end.
pub struct FreshPostgres {
    admin: sqlx::AnyConnection,
    name: String,
    pub url: String,
}

impl FreshPostgres {
    pub async fn create(prefix: &str) -> FreshPostgres {
        sqlx::any::install_default_drivers();
        let admin_url =
            std::env::var("FILIERE_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.to_string());
        let name = format!(
            "filiere_{prefix}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros()
        );
        let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .unwrap_or_else(|error| panic!("PostgreSQL at {admin_url} is needed: {error}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let (server_part, _) = admin_url.rsplit_once('/').expect("a database in the URL");
        let url = format!("{server_part}/{name}");
        FreshPostgres { admin, name, url }
    }

    pub async fn drop_database(mut self) {
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut self.admin)
        .await
        .expect("drop test database");
    }
}

/// Returns the number a query selects as `n`.
pub async fn count(pool: &sqlx::AnyPool, sql: &str) -> i64 {
    let row = sqlx::query(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
    sqlx::Row::get(&row, "n")
}
