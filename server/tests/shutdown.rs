//! Stopping the real binary with SIGTERM or Ctrl-C (SIGINT) in the middle of
//! a busy run: it exits by itself within a few seconds, and the database
//! contains no half-written product.

use sqlx::Row;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

async fn post(base: &str, path: &str, body: serde_json::Value) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .expect("request sent")
        .status()
}

/// Counts rows that a half-written product or lot would leave behind.
async fn broken_rows(url: &str) -> Vec<(String, i64)> {
    let pool = sqlx::AnyPool::connect(url).await.expect("database opens");
    let checks = [
        ("products without a product_id", "SELECT COUNT(*) AS n FROM products WHERE product_id IS NULL"),
        (
            "products without a product_created event",
            "SELECT COUNT(*) AS n FROM products p WHERE NOT EXISTS (SELECT 1 FROM trace_events e \
             WHERE e.code_lot = p.code_lot AND e.kind = 'product_created' \
             AND e.payload LIKE '%' || p.product_id || '%')",
        ),
        (
            "products from a non-compliant sample",
            "SELECT COUNT(*) AS n FROM products p JOIN sqal_samples s ON s.id = p.sample_id \
             WHERE s.grade IS NULL OR s.grade = 'REJECT'",
        ),
        (
            "samples without their sample_graded event",
            "SELECT COUNT(*) AS n FROM sqal_samples s WHERE NOT EXISTS (SELECT 1 FROM trace_events e \
             WHERE e.code_lot = s.code_lot AND e.kind = 'sample_graded' \
             AND e.payload LIKE '%\"sample_index\":' || s.sample_index || ',%')",
        ),
        (
            "finished lots missing from the inspection queue",
            "SELECT COUNT(*) AS n FROM lots l WHERE l.status = 'pret_abattage' \
             AND NOT EXISTS (SELECT 1 FROM sqal_pending_lots q WHERE q.code_lot = l.code_lot)",
        ),
    ];
    let mut broken = Vec::new();
    for (what, sql) in checks {
        let count: i64 = sqlx::query(sql)
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|error| panic!("{what}: {error}"))
            .get("n");
        broken.push((what.to_string(), count));
    }
    pool.close().await;
    broken
}

async fn stop_mid_run(signal: &str) {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("stop.db").display());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = Command::new(env!("CARGO_BIN_EXE_filiere"))
        .env("DATABASE_URL", &url)
        .env("FILIERE_BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("server starts");

    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{base}/health")).await.is_err() {
        assert!(Instant::now() < deadline, "server not healthy after 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = post(
        &base,
        "/api/control/pipeline/start",
        serde_json::json!({
            "gavage": { "nb_lots": 20, "acceleration": 10000000 },
            "sqal": { "interval": 0.01, "nb_samples": 50 },
        }),
    )
    .await;
    assert_eq!(status, 200);
    // Let products appear, so that the signal lands while samples are written.
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{base}/api/consumer/latest-product"))
        .await
        .map(|response| response.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "no product after 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let sent = Instant::now();
    let killed = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(server.id().to_string())
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let exit = loop {
        if let Some(exit) = server.try_wait().expect("wait on the server") {
            break exit;
        }
        if sent.elapsed() > Duration::from_secs(10) {
            let _ = server.kill();
            panic!("server still running 10 s after SIG{signal}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = sent.elapsed();
    assert!(exit.success(), "exit after SIG{signal}: {exit}");
    assert!(
        took < Duration::from_secs(6),
        "exit took {took:?} after SIG{signal}"
    );

    for (what, count) in broken_rows(&url).await {
        assert_eq!(count, 0, "{what} after SIG{signal}");
    }
}

#[tokio::test]
async fn sigterm_mid_run_exits_cleanly() {
    stop_mid_run("TERM").await;
}

#[tokio::test]
async fn ctrl_c_mid_run_exits_cleanly() {
    stop_mid_run("INT").await;
}
