//! Crash safety: the real binary is killed with SIGKILL at varying moments
//! of busy runs, ten times per engine, and restarted on the same database.
//! After each restart every product seen before the kill is still there,
//! no sample has two products, every product's hash chain verifies and
//! every finished lot is in the inspection queue. Restarted with a short
//! lease, the server then inspects every lot a kill left behind.

mod common;

use common::{FreshPostgres, Server};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const KILLS_PER_ENGINE: u32 = 10;

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
    let database = FreshPostgres::create("crash").await;
    kill_and_restart(&database.url, "postgres").await;
    database.drop_database().await;
}

/// Reads the meals of each lot of the newest gavage run, lots in creation
/// order, without their times, which is what a run's seed decides.
async fn meals_by_lot(database_url: &str) -> Vec<Vec<String>> {
    let pool = sqlx::AnyPool::connect(database_url)
        .await
        .expect("database opens");
    let lots = sqlx::query(
        "SELECT l.code_lot FROM lots l JOIN trace_events e ON e.code_lot = l.code_lot AND e.seq = 1 \
         WHERE l.run_id = (SELECT run_id FROM gavage_runs ORDER BY started_at DESC LIMIT 1) \
         ORDER BY e.id",
    )
    .fetch_all(&pool)
    .await
    .expect("lots of the run");
    let mut meals = Vec::new();
    for lot in lots {
        let code_lot: String = sqlx::Row::get(&lot, "code_lot");
        let rows = sqlx::query(
            "SELECT jour, moment, dose_reelle, poids_moyen, nb_canards_vivants, temperature \
             FROM meals WHERE code_lot = $1 ORDER BY id",
        )
        .bind(&code_lot)
        .fetch_all(&pool)
        .await
        .expect("meals of a lot");
        meals.push(
            rows.iter()
                .map(|row| {
                    format!(
                        "{} {} {} {} {} {}",
                        sqlx::Row::get::<i64, _>(row, "jour"),
                        sqlx::Row::get::<String, _>(row, "moment"),
                        sqlx::Row::get::<f64, _>(row, "dose_reelle"),
                        sqlx::Row::get::<f64, _>(row, "poids_moyen"),
                        sqlx::Row::get::<i64, _>(row, "nb_canards_vivants"),
                        sqlx::Row::get::<f64, _>(row, "temperature"),
                    )
                })
                .collect(),
        );
    }
    pool.close().await;
    meals
}

/// Waits until the gavage task is no longer running and returns its status.
async fn gavage_finished(server: &Server, what: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let gavage = server.task("gavage").await;
        if gavage["state"] != "running" {
            return gavage;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: gavage still running after 60 s: {gavage}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks that a gavage run killed halfway shows as interrupted after the
/// restart, and that a resume continues it from each lot's next meal. The
/// finished run's meals must be those of the same seed run without a kill.
async fn resume_after_kill(database_url: &str, engine: &str) {
    let seed = 20261205u64;
    let reference_dir = tempfile::tempdir().unwrap();
    let reference_url = format!("sqlite://{}", reference_dir.path().join("ref.db").display());
    let reference = Server::start(&reference_url).await;
    let (status, _) = reference
        .post(
            "/api/control/gavage/start",
            serde_json::json!({ "nb_lots": 3, "acceleration": 5000000, "seed": seed }),
        )
        .await;
    assert_eq!(status, 200, "{engine}: reference run starts");
    gavage_finished(&reference, "reference").await;
    reference.kill();
    let expected = meals_by_lot(&reference_url).await;
    assert_eq!(expected.len(), 3, "{engine}: reference run has 3 lots");

    let server = Server::start(database_url).await;
    let (status, started) = server
        .post(
            "/api/control/gavage/start",
            serde_json::json!({ "nb_lots": 3, "acceleration": 300000, "seed": seed }),
        )
        .await;
    assert_eq!(status, 200, "{engine}: run starts: {started}");
    let run_id = started["status"]["run_id"]
        .as_str()
        .expect("a run id")
        .to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();

    let partial = meals_by_lot(database_url).await;
    let stored: usize = partial.iter().map(Vec::len).sum();
    let total: usize = expected.iter().map(Vec::len).sum();
    assert!(
        stored > 0 && stored < total,
        "{engine}: the kill should cut the run halfway, it stored {stored} of {total} meals"
    );

    let server = Server::start(database_url).await;
    let gavage = server.task("gavage").await;
    assert_eq!(gavage["interrupted"], true, "{engine}: {gavage}");
    assert_eq!(gavage["run_id"], run_id.as_str(), "{engine}: {gavage}");
    let monitor = server.task("monitor").await;
    assert_eq!(
        monitor["interrupted"], false,
        "{engine}: monitor never ran: {monitor}"
    );
    let (status, refused) = server
        .post("/api/control/monitor/resume", serde_json::json!({}))
        .await;
    assert_eq!(status, 409, "{engine}: nothing to resume: {refused}");

    let (status, resumed) = server
        .post("/api/control/gavage/resume", serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{engine}: resume: {resumed}");
    assert_eq!(resumed["started"], true, "{engine}: {resumed}");
    assert_eq!(
        resumed["status"]["run_id"],
        run_id.as_str(),
        "{engine}: {resumed}"
    );
    let gavage = gavage_finished(&server, engine).await;
    assert_eq!(gavage["state"], "stopped", "{engine}: {gavage}");
    assert_eq!(gavage["interrupted"], false, "{engine}: {gavage}");

    let resumed_meals = meals_by_lot(database_url).await;
    for (index, (got, want)) in resumed_meals.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "{engine}: meals of lot {index} after the resume");
    }
    assert_eq!(
        resumed_meals.len(),
        expected.len(),
        "{engine}: lots of the resumed run"
    );
    server.kill();
}

#[tokio::test]
async fn interrupted_gavage_resumes_on_sqlite() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("resume.db").display());
    resume_after_kill(&url, "sqlite").await;
}

#[tokio::test]
async fn interrupted_gavage_resumes_on_postgres() {
    let database = FreshPostgres::create("resume").await;
    resume_after_kill(&database.url, "postgres").await;
    database.drop_database().await;
}
