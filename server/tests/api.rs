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
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("filiere.db").display());
        let application = server::build(server::config::Config::for_test(&url))
            .await
            .expect("application builds");
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
            json!({ "interval": 0 }),
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
