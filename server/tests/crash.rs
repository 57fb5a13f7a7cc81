//! Crash safety: the real binary is killed with SIGKILL at varying moments
//! of busy runs, ten times per engine, and restarted on the same database.
//! After each restart every product seen before the kill is still there,
//! no sample has two products, every product's hash chain verifies and
//! every finished lot is in the inspection queue. Restarted with a short
//! lease, the server then inspects every lot a kill left behind.

use serde_json::Value;
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KILLS_PER_ENGINE: u32 = 10;
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts the server with a one-second lease, so that lots a kill
    /// leaves `inspecting` come back quickly.
    async fn start(database_url: &str) -> Server {
        Server::start_with_lease(database_url, "1").await
    }

    async fn start_with_lease(database_url: &str, lease_seconds: &str) -> Server {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_filiere"))
            .env("DATABASE_URL", database_url)
            .env("FILIERE_LEASE_SECONDS", lease_seconds)
            .env("FILIERE_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("server starts");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{base}/health")).await.is_err() {
            assert!(Instant::now() < deadline, "server not healthy after 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Server { child, base }
    }

    async fn json(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .expect("request sent")
            .json()
            .await
            .expect("JSON answer")
    }

    fn kill(mut self) {
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

/// Tokens of every product the server lists (the newest 100).
async fn listed_tokens(server: &Server) -> BTreeSet<String> {
    server
        .json("/api/consumer/products")
        .await
        .as_array()
        .expect("a product list")
        .iter()
        .map(|product| product["token"].as_str().unwrap().to_string())
        .collect()
}

async fn kill_and_restart(database_url: &str, engine: &str) {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut server = Server::start(database_url).await;
    for kill in 0..KILLS_PER_ENGINE {
        let started = reqwest::Client::new()
            .post(format!("{}/api/control/pipeline/start", server.base))
            .json(&serde_json::json!({
                "gavage": { "nb_lots": 3, "acceleration": 5000000 },
                "sqal": { "interval": 0.01, "nb_samples": 10 },
            }))
            .send()
            .await
            .expect("pipeline request");
        assert_eq!(started.status(), 200, "{engine} kill {kill}");
        // Kill at a different moment of the run each time: during lot
        // creation, meals, inspection or product creation.
        tokio::time::sleep(Duration::from_millis(40 + 70 * kill as u64)).await;
        seen.extend(listed_tokens(&server).await);
        server.kill();

        server = Server::start(database_url).await;
        let after = listed_tokens(&server).await;
        // The list contains only the newest 100, so older ones are checked one by one.
        for token in seen.iter().filter(|token| !after.contains(*token)) {
            let status = reqwest::get(format!("{}/api/trace/{token}/verify", server.base))
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200, "{engine} kill {kill}: product {token} lost");
        }
        for token in after.iter() {
            let proof = server.json(&format!("/api/trace/{token}/verify")).await;
            assert_eq!(
                proof["status"], "verified",
                "{engine} kill {kill}: product {token}: {proof}"
            );
        }
    }

    // Lots a kill left `inspecting` are claimed again once their lease
    // expires: the monitor and station finish every queued lot.
    server.kill();
    let server = Server::start(database_url).await;
    let client = reqwest::Client::new();
    for (task, body) in [
        ("sqal", serde_json::json!({ "interval": 0.01 })),
        ("monitor", serde_json::json!({ "polling_interval": 0.5 })),
    ] {
        let status = client
            .post(format!("{}/api/control/{task}/start", server.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{engine}: start {task}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = server.json("/api/control/status").await;
        let (pending, inspecting) = (&status["queue"]["pending"], &status["queue"]["inspecting"]);
        if pending == 0 && inspecting == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{engine}: queue not drained 60 s after restart: {}",
            status["queue"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every sample has at most one product and every finished lot is queued.
    let pool = sqlx::AnyPool::connect(database_url)
        .await
        .expect("database opens");
    for (what, sql) in [
        (
            "samples with two products",
            "SELECT COUNT(*) AS n FROM (SELECT sample_id FROM products GROUP BY sample_id HAVING COUNT(*) > 1) AS twice",
        ),
        (
            "finished lots outside the queue",
            "SELECT COUNT(*) AS n FROM lots l WHERE l.status = 'pret_abattage' \
             AND NOT EXISTS (SELECT 1 FROM sqal_pending_lots q WHERE q.code_lot = l.code_lot)",
        ),
        ("products without an id", "SELECT COUNT(*) AS n FROM products WHERE product_id IS NULL"),
        (
            "queued lots not inspected",
            "SELECT COUNT(*) AS n FROM sqal_pending_lots WHERE status <> 'inspected'",
        ),
    ] {
        let count: i64 = sqlx::Row::get(&sqlx::query(sql).fetch_one(&pool).await.unwrap(), "n");
        assert_eq!(count, 0, "{engine}: {what}");
    }
    let products: i64 = sqlx::Row::get(
        &sqlx::query("SELECT COUNT(*) AS n FROM products")
            .fetch_one(&pool)
            .await
            .unwrap(),
        "n",
    );
    assert!(
        products > 0,
        "{engine}: no product in {KILLS_PER_ENGINE} runs"
    );
    pool.close().await;
    server.kill();
}

#[tokio::test]
async fn sigkill_on_sqlite_loses_nothing() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("crash.db").display());
    kill_and_restart(&url, "sqlite").await;
}

#[tokio::test]
async fn sigkill_on_postgres_loses_nothing() {
    sqlx::any::install_default_drivers();
    let admin_url =
        std::env::var("FILIERE_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.to_string());
    let name = format!(
        "filiere_crash_{}_{}",
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
    kill_and_restart(&format!("{server_part}/{name}"), "postgres").await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop test database");
}
