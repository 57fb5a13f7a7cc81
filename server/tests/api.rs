//! HTTP-level tests: the real router on a real SQLite file in a temporary
//! directory, driven over loopback with an HTTP client.

use serde_json::{json, Value};
use std::time::Duration;

struct TestApp {
    base: String,
    client: reqwest::Client,
    shutdown: tokio_util::sync::CancellationToken,
    _dir: tempfile::TempDir,
}

impl TestApp {
    async fn start() -> TestApp {
        TestApp::start_with(|_| {}).await
    }

    /// Starts a server whose test configuration `adjust` may change first.
    async fn start_with(adjust: impl FnOnce(&mut server::config::Config)) -> TestApp {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("filiere.db").display());
        let mut config = server::config::Config::for_test(&url);
        adjust(&mut config);
        let application = server::build(config).await.expect("application builds");
        let base = format!("http://127.0.0.1:{}", application.port());
        let shutdown = application.shutdown_token();
        tokio::spawn(application.run_until_stopped());
        TestApp {
            base,
            client: reqwest::Client::new(),
            shutdown,
            _dir: dir,
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls `GET path` every 100 ms until it returns 200.
    async fn wait_for_ok(&self, path: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (status, body) = self.get(path).await;
            if status == 200 {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} still answers {status} after {limit:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn health_reports_database_and_tasks() {
    let app = TestApp::start().await;
    let (status, body) = app.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "reachable");
    assert_eq!(body["tasks"]["gavage"], "stopped");
}

#[tokio::test]
async fn latest_product_is_404_before_any_run() {
    let app = TestApp::start().await;
    let (status, body) = app.get("/api/consumer/latest-product").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    assert!(
        body["message"].as_str().unwrap().contains("pipeline"),
        "{body}"
    );
}

#[tokio::test]
async fn pipeline_runs_until_a_traceable_product() {
    let app = TestApp::start().await;
    let (status, started) = app
        .post(
            "/api/control/pipeline/start",
            json!({ "gavage": { "nb_lots": 1, "acceleration": 2000000 }, "sqal": { "interval": 0.01, "nb_samples": 10 } }),
        )
        .await;
    assert_eq!(status, 200, "{started}");
    let run_id = started["run_id"].as_str().expect("run_id").to_string();

    let latest = app
        .wait_for_ok("/api/consumer/latest-product", Duration::from_secs(30))
        .await;
    let product = &latest["product"];
    let code_lot = latest["code_lot"].as_str().unwrap();
    assert_eq!(product["code_lot"], code_lot);
    let token = product["token"].as_str().unwrap();
    assert_eq!(token.len(), 22, "token {token}");
    let payload = product["qr_payload"].as_str().unwrap();
    assert!(
        payload.starts_with(&format!(
            "http://127.0.0.1/trace/{token}?lot={code_lot}&grade="
        )),
        "{payload}"
    );
    assert!(payload.contains("&tof="), "{payload}");
    assert!(payload.contains("&as7341="), "{payload}");
    assert!(
        ["A+", "A", "B", "C"].contains(&product["grade"].as_str().unwrap()),
        "{product}"
    );

    // The lot belongs to this run and follows the code_lot format.
    assert_eq!(code_lot.len(), 9, "code_lot {code_lot}");
    assert!(
        ["LL", "LS", "MT"].contains(&&code_lot[..2]),
        "code_lot {code_lot}"
    );

    // The product's history verifies, and its proof links event to event.
    let (status, proof) = app.get(&format!("/api/trace/{token}/verify")).await;
    assert_eq!(status, 200, "{proof}");
    assert_eq!(proof["status"], "verified", "{proof}");
    assert_eq!(proof["code_lot"], code_lot);
    let events = proof["events"].as_array().unwrap();
    assert_eq!(events[0]["kind"], "lot_created", "{proof}");
    assert_eq!(events.last().unwrap()["kind"], "product_created", "{proof}");
    for pair in events.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "{proof}");
    }
    let (status, _) = app.get("/api/trace/AAAAAAAAAAAAAAAAAAAAAA/verify").await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/api/trace/not-a-token/verify").await;
    assert_eq!(status, 404);

    let (status, listed) = app
        .get(&format!("/api/consumer/products?code_lot={code_lot}"))
        .await;
    assert_eq!(status, 200);
    let listed = listed.as_array().unwrap();
    assert!(!listed.is_empty());
    assert!(listed.iter().all(|item| item["code_lot"] == code_lot));

    let page = app
        .client
        .get(format!("{}/trace/{token}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(code_lot), "trace page lacks the lot");
    assert!(
        html.contains(product["product_id"].as_str().unwrap()),
        "trace page lacks the product id"
    );

    let svg = app
        .client
        .get(format!("{}/qr/{token}.svg", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(svg.status().as_u16(), 200);
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");

    let (_, status_body) = app.get("/api/control/status").await;
    let gavage = status_body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|task| task["task"] == "gavage")
        .unwrap()
        .clone();
    assert_eq!(gavage["run_id"], run_id.as_str());
}

#[tokio::test]
async fn unknown_token_gives_not_found_page() {
    let app = TestApp::start().await;
    for token in ["AAAAAAAAAAAAAAAAAAAAAA", "not-a-token", "%3Cscript%3E"] {
        let page = app
            .client
            .get(format!("{}/trace/{token}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status().as_u16(), 404, "token {token}");
        let html = page.text().await.unwrap();
        assert!(html.contains("Produit introuvable"), "token {token}");
    }
}

#[tokio::test]
async fn bad_control_parameters_are_rejected_and_start_nothing() {
    let app = TestApp::start().await;
    let cases = [
        (
            "/api/control/gavage/start",
            json!({ "acceleration": 0 }),
            "acceleration",
        ),
        (
            "/api/control/gavage/start",
            json!({ "acceleration": -10 }),
            "acceleration",
        ),
        (
            "/api/control/gavage/start",
            json!({ "nb_lots": 0 }),
            "nb_lots",
        ),
        (
            "/api/control/gavage/start",
            json!({ "nb_lots": 1000000 }),
            "nb_lots",
        ),
        (
            "/api/control/sqal/start",
            json!({ "interval": -0.5 }),
            "interval",
        ),
        (
            "/api/control/sqal/start",
            json!({ "device_id": "ESP32_XX_01" }),
            "device_id",
        ),
        (
            "/api/control/monitor/start",
            json!({ "polling_interval": 0 }),
            "polling_interval",
        ),
        (
            "/api/control/pipeline/start",
            json!({ "gavage": { "nb_lots": 0 } }),
            "nb_lots",
        ),
    ];
    for (path, body, field) in cases {
        let (status, answer) = app.post(path, body.clone()).await;
        assert_eq!(status, 422, "{path} {body}: {answer}");
        assert_eq!(answer["field"], field, "{path} {body}");
        assert!(!answer["allowed"].as_str().unwrap().is_empty(), "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
    let (_, health) = app.get("/health").await;
    for task in ["gavage", "monitor", "sqal"] {
        assert_eq!(
            health["tasks"][task], "stopped",
            "{task} started after a rejected request"
        );
    }
}

#[tokio::test]
async fn malformed_json_body_is_a_bad_request() {
    let app = TestApp::start().await;
    let response = app
        .client
        .post(format!("{}/api/control/gavage/start", app.base))
        .header("content-type", "application/json")
        .body("{nb_lots: 3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let (status, _) = app
        .post("/api/control/gavage/start", json!({ "nb_lot": 3 }))
        .await;
    assert_eq!(status, 400, "unknown field accepted");
}

#[tokio::test]
async fn repeated_start_then_stop() {
    let app = TestApp::start().await;
    let (status, first) = app
        .post(
            "/api/control/gavage/start",
            json!({ "nb_lots": 1, "acceleration": 1 }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(first["started"], true);
    let (status, second) = app
        .post(
            "/api/control/gavage/start",
            json!({ "nb_lots": 1, "acceleration": 1 }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(second["started"], false);
    assert_eq!(second["status"]["run_id"], first["status"]["run_id"]);

    let (status, stopped) = tokio::time::timeout(
        Duration::from_secs(2),
        app.post("/api/control/gavage/stop", json!({})),
    )
    .await
    .expect("stop answers within 2 s");
    assert_eq!(status, 200);
    assert_eq!(stopped["status"]["state"], "stopped");
}

#[tokio::test]
async fn unknown_task_is_not_found() {
    let app = TestApp::start().await;
    let (status, body) = app.post("/api/control/abattoir/start", json!({})).await;
    assert_eq!(status, 404);
    assert!(body["message"].as_str().unwrap().contains("abattoir"));
}

/// Reads Server-Sent Events from a response until `stop` returns true for
/// an event or the time limit passes; returns `(id, data)` pairs.
async fn read_events(
    response: reqwest::Response,
    limit: Duration,
    mut stop: impl FnMut(&Value) -> bool,
) -> Vec<(String, Value)> {
    use futures::StreamExt;
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let chunk = tokio::time::timeout_at(deadline, body.next()).await;
        let Ok(Some(Ok(chunk))) = chunk else {
            return events;
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut id = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("id:") {
                    id = value.trim().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            if data.is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&data).expect("event data is JSON");
            let done = stop(&value);
            events.push((id, value));
            if done {
                return events;
            }
        }
    }
}

fn event_type(envelope: &Value) -> &str {
    envelope["event"]["type"].as_str().unwrap_or("")
}

#[tokio::test]
async fn event_stream_follows_one_run_in_order() {
    let app = TestApp::start().await;
    let stream = app
        .client
        .get(format!("{}/api/events", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");

    let (status, _) = app
        .post(
            "/api/control/pipeline/start",
            json!({ "gavage": { "nb_lots": 1, "acceleration": 2000000 }, "sqal": { "interval": 0.01, "nb_samples": 5 } }),
        )
        .await;
    assert_eq!(status, 200);
    let events = read_events(stream, Duration::from_secs(30), |event| {
        event_type(event) == "lot_inspected"
    })
    .await;

    // A client without a position gets a snapshot first.
    assert_eq!(event_type(&events[0].1), "snapshot");
    let ids: Vec<u64> = events
        .iter()
        .map(|(_, envelope)| envelope["id"].as_u64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "ids out of order: {ids:?}"
    );
    let kinds: Vec<&str> = events
        .iter()
        .map(|(_, envelope)| event_type(envelope))
        .collect();
    let first = |kind: &str| {
        kinds
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_else(|| panic!("no {kind} in {kinds:?}"))
    };
    assert!(first("lot_created") < first("meal_recorded"), "{kinds:?}");
    assert!(first("meal_recorded") < first("lot_finished"), "{kinds:?}");
    assert!(first("lot_finished") < first("lot_claimed"), "{kinds:?}");
    assert!(first("lot_claimed") < first("sample_graded"), "{kinds:?}");
    assert!(first("sample_graded") < first("lot_inspected"), "{kinds:?}");
    let sample = &events[first("sample_graded")].1["event"]["sample"];
    assert_eq!(sample["tof_distances"].as_array().unwrap().len(), 64);
    assert_eq!(sample["as7341_counts"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn reconnect_with_last_event_id_replays_missed_events() {
    let app = TestApp::start().await;
    let stream = app
        .client
        .get(format!("{}/api/events", app.base))
        .send()
        .await
        .unwrap();
    let (status, _) = app
        .post(
            "/api/control/gavage/start",
            json!({ "nb_lots": 1, "acceleration": 2000000 }),
        )
        .await;
    assert_eq!(status, 200);
    // Read until the first meal, then drop the connection.
    let seen = read_events(stream, Duration::from_secs(20), |event| {
        event_type(event) == "meal_recorded"
    })
    .await;
    let (last_id, last) = seen.last().expect("events before the drop").clone();
    assert_eq!(event_type(&last), "meal_recorded");

    // Wait until the lot is finished, so events were published while away.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status) = app.get("/api/control/status").await;
        if status["queue"]["pending"].as_i64().unwrap_or(0)
            + status["queue"]["inspecting"].as_i64().unwrap_or(0)
            > 0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lot never finished: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let resumed = app
        .client
        .get(format!("{}/api/events", app.base))
        .header("Last-Event-ID", &last_id)
        .send()
        .await
        .unwrap();
    let replayed = read_events(resumed, Duration::from_secs(10), |event| {
        event_type(event) == "lot_finished"
    })
    .await;
    let last_seen = last["id"].as_u64().unwrap();
    let first_replayed = replayed.first().expect("replayed events");
    assert_ne!(
        event_type(&first_replayed.1),
        "snapshot",
        "a known position must not need a snapshot"
    );
    assert_eq!(
        first_replayed.1["id"].as_u64().unwrap(),
        last_seen + 1,
        "replay must start right after {last_id}"
    );
    assert_eq!(event_type(&replayed.last().unwrap().1), "lot_finished");

    // A position from another server process gets a snapshot.
    let stranger = app
        .client
        .get(format!("{}/api/events", app.base))
        .header("Last-Event-ID", "00000000-5")
        .send()
        .await
        .unwrap();
    let fresh = read_events(stranger, Duration::from_secs(5), |_| true).await;
    assert_eq!(event_type(&fresh[0].1), "snapshot");
}

/// Runs one lot to the end of its gavage (no inspection) and returns its code.
async fn finished_lot(app: &TestApp) -> String {
    let stream = app
        .client
        .get(format!("{}/api/events", app.base))
        .send()
        .await
        .unwrap();
    let (status, _) = app
        .post(
            "/api/control/gavage/start",
            json!({ "nb_lots": 1, "acceleration": 10000000 }),
        )
        .await;
    assert_eq!(status, 200);
    let events = read_events(stream, Duration::from_secs(20), |event| {
        event_type(event) == "lot_finished"
    })
    .await;
    let finished = events.last().map(|(_, envelope)| envelope).expect("events");
    assert_eq!(
        event_type(finished),
        "lot_finished",
        "no lot finished within 20 s"
    );
    finished["event"]["code_lot"].as_str().unwrap().to_string()
}

fn device_sample(code_lot: &str, sample_index: u32) -> Value {
    // A smooth, fresh liver seen from 100 mm: a dome in the middle of the tray.
    let mut distances = vec![100.0; 64];
    for (zone, distance) in distances.iter_mut().enumerate() {
        let (row, col) = ((zone / 8) as f64 - 3.5, (zone % 8) as f64 - 3.5);
        let inside = 1.0 - (col / 2.6).powi(2) - (row / 2.2).powi(2);
        if inside > 0.0 {
            *distance = 100.0 - 60.0 * inside.sqrt();
        }
    }
    let reflectance: Vec<f64> = distances
        .iter()
        .map(|d| if *d < 95.0 { 42.0 } else { 6.0 })
        .collect();
    json!({
        "device_id": "ESP32_MT_02",
        "code_lot": code_lot,
        "sample_index": sample_index,
        "tof_distances": distances,
        "tof_reflectance": reflectance,
        "tof_amplitude": vec![5000.0; 64],
        "tof_ambient": vec![3.5; 64],
        "tof_status": vec![5; 64],
        "as7341_counts": [1600, 2400, 2000, 7600, 3600, 2400, 4600, 3000, 26000, 2400],
        "as7341_gain": 4,
        "as7341_integration_ms": 100,
    })
}

#[tokio::test]
async fn device_sample_is_graded_and_stored() {
    let app = TestApp::start().await;
    let code_lot = finished_lot(&app).await;
    let (status, receipt) = app
        .post("/api/sqal/samples", device_sample(&code_lot, 500))
        .await;
    assert_eq!(status, 201, "{receipt}");
    assert_eq!(receipt["code_lot"], code_lot.as_str());
    assert!(receipt["grade"].is_string(), "{receipt}");
    assert!(receipt["sample_id"].as_i64().unwrap() > 0);

    let (status, again) = app
        .post("/api/sqal/samples", device_sample(&code_lot, 500))
        .await;
    assert_eq!(status, 409, "{again}");
}

#[tokio::test]
async fn bad_device_samples_are_rejected_and_write_nothing() {
    let app = TestApp::start().await;
    let code_lot = finished_lot(&app).await;
    let mutations: [(&str, Value, &str); 8] = [
        ("tof_status", json!(vec![300; 64]), "tof_status[0]"),
        ("tof_reflectance", json!(vec![5.0; 63]), "tof_reflectance"),
        ("tof_distances", json!([1.0, 2.0]), "tof_distances"),
        (
            "as7341_counts",
            json!([1, 2, 3, 4, 5, 6, 7, 8, 9, -10]),
            "as7341_counts[9]",
        ),
        ("as7341_gain", json!(3), "as7341_gain"),
        ("device_id", json!("ESP32_ZZ_01"), "device_id"),
        ("code_lot", json!("LL0001999"), "code_lot"),
        ("sample_index", json!(5000), "sample_index"),
    ];
    for (key, value, field) in mutations {
        let mut sample = device_sample(&code_lot, 7);
        sample[key] = value;
        let (status, answer) = app.post("/api/sqal/samples", sample).await;
        assert_eq!(status, 422, "{key}: {answer}");
        assert_eq!(answer["field"], field, "{key}: {answer}");
    }
    // Nothing was stored for index 7: a valid sample with it is accepted.
    let (status, answer) = app
        .post("/api/sqal/samples", device_sample(&code_lot, 7))
        .await;
    assert_eq!(status, 201, "{answer}");
}

/// Starts a real-time gavage run of one lot, waits for its first meal (jour
/// 0 matin) and stops the simulator, leaving the lot in gavage. Returns
/// the lot's code.
async fn lot_in_gavage(app: &TestApp) -> String {
    let stream = app
        .client
        .get(format!("{}/api/events", app.base))
        .send()
        .await
        .unwrap();
    let (status, _) = app
        .post(
            "/api/control/gavage/start",
            json!({ "nb_lots": 1, "acceleration": 1 }),
        )
        .await;
    assert_eq!(status, 200);
    let events = read_events(stream, Duration::from_secs(20), |event| {
        event_type(event) == "meal_recorded"
    })
    .await;
    let meal = events.last().map(|(_, envelope)| envelope).expect("events");
    assert_eq!(event_type(meal), "meal_recorded", "no meal within 20 s");
    let (status, _) = app.post("/api/control/gavage/stop", json!({})).await;
    assert_eq!(status, 200);
    meal["event"]["lot"]["code_lot"]
        .as_str()
        .unwrap()
        .to_string()
}

fn tablet_meal(code_lot: &str, jour: u32, moment: &str) -> Value {
    json!({
        "code_lot": code_lot,
        "jour": jour,
        "moment": moment,
        "dose_theorique": 210.0,
        "dose_reelle": 214.2,
        "poids_moyen": 4620.5,
        "nb_canards_vivants": 45,
        "taux_mortalite": 0.0,
        "temperature": 20.5,
        "humidite": 61.0,
        "fed_at": "2026-12-04T18:00:00Z",
    })
}

#[tokio::test]
async fn tablet_meals_are_checked_against_their_lot() {
    let app = TestApp::start().await;
    let code_lot = lot_in_gavage(&app).await;

    // The simulator recorded jour 0 matin: a second one is a conflict.
    let (status, answer) = app
        .post("/api/gavage/meals", tablet_meal(&code_lot, 0, "matin"))
        .await;
    assert_eq!(status, 409, "{answer}");

    // Skipping jour 0 soir is out of order, and names the meal expected.
    let (status, answer) = app
        .post("/api/gavage/meals", tablet_meal(&code_lot, 1, "matin"))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["field"], "jour", "{answer}");
    assert!(
        answer["allowed"].as_str().unwrap().contains("jour 0 soir"),
        "{answer}"
    );

    // Out-of-range values are refused with their field.
    for (key, value) in [
        ("dose_reelle", json!(-12.0)),
        ("taux_mortalite", json!(100.5)),
        ("moment", json!("midi")),
    ] {
        let mut meal = tablet_meal(&code_lot, 0, "soir");
        meal[key] = value;
        let (status, answer) = app.post("/api/gavage/meals", meal).await;
        assert_eq!(status, 422, "{key}: {answer}");
        assert_eq!(answer["field"], key, "{answer}");
    }

    // None of the refused meals was written: jour 0 soir is still free.
    let (status, receipt) = app
        .post("/api/gavage/meals", tablet_meal(&code_lot, 0, "soir"))
        .await;
    assert_eq!(status, 201, "{receipt}");
    assert_eq!(receipt["pret_abattage"], false);
    let (status, answer) = app
        .post("/api/gavage/meals", tablet_meal(&code_lot, 0, "soir"))
        .await;
    assert_eq!(status, 409, "{answer}");
}

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

#[tokio::test]
async fn open_network_address_needs_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("filiere.db").display());
    let mut config = server::config::Config::for_test(&url);
    config.bind = "0.0.0.0:0".parse().unwrap();
    let refused = server::build(config).await;
    let message = format!("{:#}", refused.err().expect("build refused"));
    assert!(message.contains("FILIERE_ADMIN_TOKEN"), "{message}");
}

#[tokio::test]
async fn admin_token_guards_operator_routes_only() {
    let app = TestApp::start_with(|config| config.admin_token = Some(ADMIN_TOKEN.into())).await;
    for path in [
        "/api/consumer/products",
        "/api/control/status",
        "/e2e-demo",
        "/api/events",
    ] {
        let status = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "{path} without the token");
    }
    let (status, answer) = app.post("/api/control/gavage/start", json!({})).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"], "admin_token_required");

    // The bearer token opens the API.
    let status = app
        .client
        .get(format!("{}/api/control/status", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);

    // The login form sets the cookie the demo page then uses.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let wrong = client
        .post(format!("{}/admin/login", app.base))
        .form(&[("token", "not-the-token-at-all")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let login = client
        .post(format!("{}/admin/login", app.base))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let demo = client
        .get(format!("{}/e2e-demo", app.base))
        .header("cookie", pair)
        .send()
        .await
        .unwrap();
    assert_eq!(demo.status(), 200);

    // Trace lookups stay public.
    for path in ["/trace", "/health"] {
        let status = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{path}");
    }
    let status = app
        .client
        .get(format!("{}/trace/AAAAAAAAAAAAAAAAAAAAAA", app.base))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_while_servers_start() {
    // Other servers of the same process start meanwhile, as tests do. The
    // unknown token renders the not-found page through the page's resource.
    let app = TestApp::start().await;
    let starting = tokio::spawn(async {
        for _ in 0..8 {
            drop(TestApp::start().await);
        }
    });
    let url = format!("{}/trace/AAAAAAAAAAAAAAAAAAAAAA", app.base);
    for round in 0..24 {
        let sent = app.client.get(&url).send();
        let response = tokio::time::timeout(std::time::Duration::from_secs(10), sent)
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: timed out after 10 s waiting for the response")
            })
            .unwrap();
        assert_eq!(response.status(), 404, "round {round}");
        let body = tokio::time::timeout(std::time::Duration::from_secs(10), response.text())
            .await
            .unwrap_or_else(|_| panic!("round {round}: timed out after 10 s reading the page"))
            .unwrap();
        assert!(
            body.contains("Produit introuvable"),
            "round {round}: {body}"
        );
    }
    starting.await.expect("servers started");
}

#[tokio::test]
async fn cross_site_posts_are_rejected() {
    let app = TestApp::start().await;
    let foreign = app
        .client
        .post(format!("{}/api/control/gavage/stop", app.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let marked = app
        .client
        .post(format!("{}/api/control/gavage/stop", app.base))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(marked.status(), 403);
    let same = app
        .client
        .post(format!("{}/api/control/gavage/stop", app.base))
        .header("origin", app.base.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 200);
}

#[tokio::test]
async fn repeated_unknown_tokens_are_rate_limited() {
    let app = TestApp::start().await;
    let mut statuses = Vec::new();
    for attempt in 0..(server::guard::MISS_LIMIT + 2) {
        let token = format!("{:A>22}", attempt);
        let response = app
            .client
            .get(format!("{}/api/trace/{token}/verify", app.base))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    let limit = server::guard::MISS_LIMIT as usize;
    assert!(
        statuses[..limit].iter().all(|status| *status == 404),
        "{statuses:?}"
    );
    assert_eq!(*statuses.last().unwrap(), 429, "{statuses:?}");
    // The block covers trace pages too, and the answer gives the retry delay.
    let page = app
        .client
        .get(format!("{}/trace/AAAAAAAAAAAAAAAAAAAAAA", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 429);
    assert!(page.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn fifty_concurrent_starts_start_one_task() {
    let app = TestApp::start().await;
    let requests = (0..50).map(|_| {
        let client = app.client.clone();
        let url = format!("{}/api/control/gavage/start", app.base);
        async move {
            let response = client
                .post(url)
                .json(&json!({ "nb_lots": 1, "acceleration": 1 }))
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            body["started"].as_bool().unwrap()
        }
    });
    let started = futures::future::join_all(requests).await;
    assert_eq!(
        started.iter().filter(|started| **started).count(),
        1,
        "{started:?}"
    );
    // The one run created its one lot; no other run started beside it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, status) = app.get("/api/control/status").await;
    let gavage = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|task| task["task"] == "gavage")
        .unwrap()
        .clone();
    assert_eq!(gavage["state"], "running", "{gavage}");
    assert_eq!(gavage["counters"]["lots"], 1, "{gavage}");
    // Stopping leaves nothing running.
    let (status, _) = app.post("/api/control/gavage/stop", json!({})).await;
    assert_eq!(status, 200);
    let (_, health) = app.get("/health").await;
    assert_eq!(health["tasks"]["gavage"], "stopped");
}

#[tokio::test]
async fn hostile_text_is_rendered_escaped() {
    let app = TestApp::start().await;
    let hostile = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>";
    let encoded: String = hostile.bytes().map(|byte| format!("%{byte:02X}")).collect();

    // A typed code: refused with a message, echoed back escaped.
    let page = app
        .client
        .get(format!("{}/trace?code={encoded}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let body = page.text().await.unwrap();
    assert!(
        !body.contains("<script>alert(1)"),
        "raw script in the lookup page"
    );
    assert!(!body.contains("<img src=x"), "raw img in the lookup page");
    assert!(
        body.contains("&lt;script&gt;alert(1)"),
        "typed code not echoed escaped"
    );

    // QR hints on a real product's page: shown escaped in the mismatch note.
    app.post(
        "/api/control/pipeline/start",
        json!({ "gavage": { "nb_lots": 1, "acceleration": 10000000 }, "sqal": { "interval": 0.01, "nb_samples": 5 } }),
    )
    .await;
    let latest = app
        .wait_for_ok("/api/consumer/latest-product", Duration::from_secs(30))
        .await;
    let token = latest["product"]["token"].as_str().unwrap();
    let page = app
        .client
        .get(format!(
            "{}/trace/{token}?lot={encoded}&grade={encoded}",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let body = page.text().await.unwrap();
    assert!(
        !body.contains("<script>alert(1)"),
        "raw script in the trace page"
    );
    assert!(!body.contains("<img src=x"), "raw img in the trace page");
    assert!(
        body.contains("&lt;script&gt;alert(1)"),
        "lot hint not shown escaped"
    );

    // A hostile device id or lot code is rejected before anything is stored.
    let mut sample = device_sample("LL2612001", 0);
    sample["device_id"] = json!(hostile);
    let (status, answer) = app.post("/api/sqal/samples", sample).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["field"], "device_id");
}

#[tokio::test]
async fn lookup_parameters_at_their_edges() {
    let app = TestApp::start().await;
    // code_lot filter: 32 characters pass, 33 are rejected.
    let (status, listed) = app
        .get(&format!(
            "/api/consumer/products?code_lot={}",
            "L".repeat(32)
        ))
        .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed, json!([]));
    let (status, answer) = app
        .get(&format!(
            "/api/consumer/products?code_lot={}",
            "L".repeat(33)
        ))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["field"], "code_lot");

    // Task names: the three tasks, nothing else.
    let (status, _) = app.post("/api/control/monitor/stop", json!({})).await;
    assert_eq!(status, 200);
    let (status, answer) = app.post("/api/control/oven/stop", json!({})).await;
    assert!((400..500).contains(&status), "{status} {answer}");

    // Tokens: 22 URL-safe characters reach the lookup (404 when unknown);
    // any other shape is a 404 without a lookup.
    for token in [
        "AAAAAAAAAAAAAAAAAAAAAA",
        "AAAAAAAAAAAAAAAAAAAAA",
        "AAAAAAAAAAAAAAAAAAAAAAA",
        "AAAAAAAAAAAAAAAAAAAAA%2B",
    ] {
        for path in [
            format!("/trace/{token}"),
            format!("/api/trace/{token}/verify"),
            format!("/qr/{token}.svg"),
        ] {
            let status = app
                .client
                .get(format!("{}{path}", app.base))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 404, "{path}");
        }
    }

    // Stream positions: a well-formed one replays, anything else gets a snapshot.
    for after in ["00000000-0", "not-a-position", ""] {
        let response = app
            .client
            .get(format!("{}/api/events?after={after}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "after={after}");
    }
}

/// Ingests a compliant sample of a finished lot and returns the lot and
/// its product's token.
async fn one_product(app: &TestApp) -> (String, String) {
    let code_lot = finished_lot(app).await;
    let (status, receipt) = app
        .post("/api/sqal/samples", device_sample(&code_lot, 500))
        .await;
    assert_eq!(status, 201, "{receipt}");
    let token = receipt["product"]["token"]
        .as_str()
        .expect("a compliant sample makes a product")
        .to_string();
    (code_lot, token)
}

/// Changes a product's grade in the database behind the server's back, so
/// that no event announces the change.
async fn regrade_quietly(app: &TestApp, token: &str) {
    let database = format!("sqlite://{}", app._dir.path().join("filiere.db").display());
    let pool = sqlx::AnyPool::connect(&database)
        .await
        .expect("database opens");
    sqlx::query("UPDATE products SET grade = 'C' WHERE token = $1")
        .bind(token)
        .execute(&pool)
        .await
        .expect("product updated");
    pool.close().await;
}

/// Fetches a trace page and returns its HTML, checking it is a 200.
async fn trace_html(app: &TestApp, token: &str, query: &str) -> String {
    let response = app
        .client
        .get(format!("{}/trace/{token}{query}", app.base))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200);
    response.text().await.expect("page body")
}

#[tokio::test]
async fn trace_pages_are_cached_until_the_chain_moves() {
    let app = TestApp::start_with(|config| config.page_cache_seconds = 60.0).await;
    let (code_lot, token) = one_product(&app).await;

    let first = trace_html(&app, &token, "").await;
    regrade_quietly(&app, &token).await;
    assert_eq!(
        trace_html(&app, &token, "").await,
        first,
        "the page comes from the cache"
    );
    assert_ne!(
        trace_html(&app, &token, "?lang=en").await,
        first,
        "English is rendered, not the French page"
    );

    // A graded sample is an event that can change the lot's trace pages.
    let (status, receipt) = app
        .post("/api/sqal/samples", device_sample(&code_lot, 501))
        .await;
    assert_eq!(status, 201, "{receipt}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let fresh = trace_html(&app, &token, "").await;
        if fresh != first {
            assert!(
                fresh.contains("altér") || fresh.contains(">C<"),
                "the re-rendered page shows the changed product"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cached page outlived a graded sample by 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn page_cache_off_renders_every_request() {
    let app = TestApp::start_with(|config| config.page_cache_seconds = 0.0).await;
    let (_, token) = one_product(&app).await;
    let first = trace_html(&app, &token, "").await;
    regrade_quietly(&app, &token).await;
    let second = trace_html(&app, &token, "").await;
    assert_ne!(second, first, "without the cache the change shows at once");
}
