//! Two server instances on one PostgreSQL database, both real binaries.
//! Both start the pipeline at the same moment. One gavage run and one
//! SQAL station run across the two, and both monitors claim lots. Every lot
//! is inspected once, and each instance's event stream carries the lots
//! and products the other one produced.

mod common;

use common::{count, FreshPostgres, Server};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LOTS: i64 = 6;
const SAMPLES: i64 = 4;

/// Reads an instance's event stream in the background and keeps every
/// event envelope it carries.
fn follow(server: &Server) -> Arc<Mutex<Vec<Value>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = format!("{}/api/events", server.base);
    let store = seen.clone();
    tokio::spawn(async move {
        let mut response = reqwest::get(url).await.expect("event stream opens");
        let mut pending = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find("\n\n") {
                let message: String = pending.drain(..end + 2).collect();
                for line in message.lines() {
                    if let Some(data) = line.strip_prefix("data: ") {
                        if let Ok(envelope) = serde_json::from_str::<Value>(data) {
                            store.lock().unwrap().push(envelope);
                        }
                    }
                }
            }
        }
    });
    seen
}

/// Values of `field` in the events of type `kind` a stream carried, with the
/// instance each came from (`None` for the stream's own instance).
fn seen_of(
    seen: &Arc<Mutex<Vec<Value>>>,
    kind: &str,
    field: &str,
) -> Vec<(String, Option<String>)> {
    seen.lock()
        .unwrap()
        .iter()
        .filter_map(|envelope| {
            let event = &envelope["event"];
            if event["type"] != kind {
                return None;
            }
            let value = field
                .split('.')
                .fold(event, |value, key| &value[key])
                .as_str()?
                .to_string();
            Some((value, envelope["origin"].as_str().map(str::to_string)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_chain() {
    let database = FreshPostgres::create("instances").await;
    let alpha = Server::start_with(&database.url, &[("FILIERE_INSTANCE", "alpha")]).await;
    let beta = Server::start_with(&database.url, &[("FILIERE_INSTANCE", "beta")]).await;
    let streams = [follow(&alpha), follow(&beta)];
    // Let both streams connect before anything happens.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let click = json!({
        // About 2.6 s of gavage: both clicks land while it runs.
        "gavage": { "nb_lots": LOTS, "acceleration": 500000 },
        "sqal": { "interval": 0.01, "nb_samples": SAMPLES },
        "monitor": { "polling_interval": 0.5 },
    });
    let ((alpha_status, alpha_start), (beta_status, beta_start)) = tokio::join!(
        alpha.post("/api/control/pipeline/start", click.clone()),
        beta.post("/api/control/pipeline/start", click.clone()),
    );
    assert_eq!(alpha_status, 200, "alpha: {alpha_start}");
    assert_eq!(beta_status, 200, "beta: {beta_start}");
    assert_eq!(
        alpha_start["run_id"], beta_start["run_id"],
        "both clicks follow the same gavage run"
    );
    let run_id = alpha_start["run_id"]
        .as_str()
        .expect("a run id")
        .to_string();

    // Exactly one instance runs each simulator; the other names it.
    let task_of = |start: &Value, name: &str| -> Value {
        start["tasks"]
            .as_array()
            .expect("task list")
            .iter()
            .find(|task| task["task"] == name)
            .cloned()
            .expect("task in the answer")
    };
    let mut runner = std::collections::HashMap::new();
    for name in ["gavage", "sqal"] {
        let (a, b) = (task_of(&alpha_start, name), task_of(&beta_start, name));
        let (here, there, who) = match (a["elsewhere"].as_str(), b["elsewhere"].as_str()) {
            (None, Some(holder)) => (&a, holder, "alpha"),
            (Some(holder), None) => (&b, holder, "beta"),
            _ => panic!("{name}: exactly one instance should run it: alpha {a}, beta {b}"),
        };
        assert_eq!(there, who, "{name}: the other instance names the runner");
        assert_ne!(here["state"], "stopped", "{name} on {who}: {here}");
        runner.insert(name, who);
    }

    println!(
        "gavage runs on {}, the station on {}",
        runner["gavage"], runner["sqal"]
    );

    let pool = sqlx::AnyPool::connect(&database.url)
        .await
        .expect("database opens");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let inspected = count(
            &pool,
            &format!(
                "SELECT COUNT(*) AS n FROM sqal_pending_lots q JOIN lots l ON l.code_lot = q.code_lot \
                 WHERE l.run_id = '{run_id}' AND q.status = 'inspected'"
            ),
        )
        .await;
        if inspected == LOTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{inspected} of {LOTS} lots inspected after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert_eq!(
        count(&pool, "SELECT COUNT(*) AS n FROM gavage_runs").await,
        1,
        "gavage runs"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) AS n FROM trace_events WHERE kind = 'inspection_started'"
        )
        .await,
        LOTS,
        "each lot claimed once"
    );
    assert_eq!(
        count(&pool, "SELECT COUNT(*) AS n FROM sqal_samples").await,
        LOTS * SAMPLES,
        "each lot measured once"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) AS n FROM (SELECT sample_id FROM products GROUP BY sample_id HAVING COUNT(*) > 1) AS twice"
        )
        .await,
        0,
        "samples with two products"
    );
    let tokens: BTreeSet<String> = sqlx::query(&format!(
        "SELECT p.token FROM products p JOIN lots l ON l.code_lot = p.code_lot WHERE l.run_id = '{run_id}'"
    ))
    .fetch_all(&pool)
    .await
    .expect("products of the run")
    .iter()
    .map(|row| sqlx::Row::get::<String, _>(row, "token"))
    .collect();
    assert!(!tokens.is_empty(), "the run made no product");
    let codes: BTreeSet<String> = sqlx::query(&format!(
        "SELECT code_lot FROM lots WHERE run_id = '{run_id}'"
    ))
    .fetch_all(&pool)
    .await
    .expect("lots of the run")
    .iter()
    .map(|row| sqlx::Row::get::<String, _>(row, "code_lot"))
    .collect();

    // Each stream carries every product and every lot of the run, those of
    // the other instance marked with its name.
    let names = ["alpha", "beta"];
    let deadline = Instant::now() + Duration::from_secs(10);
    for (stream, name) in streams.iter().zip(names) {
        for (kind, field, expected, producer) in [
            ("product_created", "product.token", &tokens, runner["sqal"]),
            ("lot_created", "lot.code_lot", &codes, runner["gavage"]),
        ] {
            loop {
                let seen = seen_of(stream, kind, field);
                let values: BTreeSet<String> =
                    seen.iter().map(|(value, _)| value.clone()).collect();
                if expected.is_subset(&values) {
                    let expected_origin = (producer != name).then(|| producer.to_string());
                    for (value, origin) in seen.iter().filter(|(value, _)| expected.contains(value))
                    {
                        assert_eq!(
                            origin, &expected_origin,
                            "{name}'s stream: {kind} {value} should come from {producer}"
                        );
                    }
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name}'s stream lacks {kind} events: {:?}",
                    expected.difference(&values).collect::<Vec<_>>()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    for (stream, name) in streams.iter().zip(names) {
        let claims = seen_of(stream, "lot_claimed", "code_lot");
        println!(
            "{name}'s stream: {} claims, {} from the other instance",
            claims.len(),
            claims.iter().filter(|(_, origin)| origin.is_some()).count()
        );
    }

    // Killing the instance that runs the station frees its lock for the other.
    let (station, other) = if runner["sqal"] == "alpha" {
        (alpha, beta)
    } else {
        (beta, alpha)
    };
    station.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, started) = other.post("/api/control/sqal/start", json!({})).await;
        assert_eq!(status, 200, "{started}");
        if started["started"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "station lock still held 10 s after the kill: {started}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    pool.close().await;
    other.kill();
    database.drop_database().await;
}
