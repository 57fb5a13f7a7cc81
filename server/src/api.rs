//! The JSON API, named like the routes of the cooperative's runbook. It acts
//! through the same `Services` as the pages' server functions.

use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chain::ingest::{IngestError, SamplePayload};
use chain::meals::{MealError, MealPayload};
use chain::params::{GavageParams, InvalidParam, MonitorParams, PipelineParams, SqalParams};
use chain::services::StartError;
use chain::supervisor::StartOutcome;
use chain::views::TaskName;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

/// An error response: a status and a JSON body with a stable `error` code and
/// a message. Internal errors are logged and their detail is not sent.
#[derive(Debug)]
pub enum ApiError {
    InvalidParam(InvalidParam),
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    Internal(anyhow::Error),
}

impl From<InvalidParam> for ApiError {
    fn from(invalid: InvalidParam) -> Self {
        ApiError::InvalidParam(invalid)
    }
}

impl From<StartError> for ApiError {
    fn from(error: StartError) -> Self {
        match error {
            StartError::Invalid(invalid) => ApiError::InvalidParam(invalid),
            StartError::NothingToResume(message) => ApiError::Conflict(message),
            StartError::Internal(error) => ApiError::Internal(error),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        ApiError::Internal(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::InvalidParam(invalid) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "error": "invalid_parameter",
                    "message": invalid.to_string(),
                    "field": invalid.field,
                    "value": invalid.value,
                    "allowed": invalid.allowed,
                }),
            ),
            ApiError::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                json!({ "error": "bad_request", "message": message }),
            ),
            ApiError::Conflict(message) => (
                StatusCode::CONFLICT,
                json!({ "error": "conflict", "message": message }),
            ),
            ApiError::NotFound(message) => (
                StatusCode::NOT_FOUND,
                json!({ "error": "not_found", "message": message }),
            ),
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({ "error": "internal", "message": "internal error, see the server log" }),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

/// Reads an optional JSON body: an empty body means "all defaults".
fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|error| ApiError::BadRequest(format!("invalid JSON body: {error}")))
}

fn parse_task(task: &str) -> Result<TaskName, ApiError> {
    TaskName::parse(task).ok_or_else(|| {
        ApiError::NotFound(format!(
            "unknown task {task:?}: expected gavage, monitor, sqal or pipeline"
        ))
    })
}

fn start_answer(outcome: StartOutcome) -> Response {
    let (status, started, message) = match &outcome {
        StartOutcome::Started(_) => (StatusCode::OK, true, "started".to_string()),
        StartOutcome::AlreadyRunning(_) => (
            StatusCode::OK,
            false,
            "already running: nothing changed".to_string(),
        ),
        StartOutcome::Stopping(_) => (
            StatusCode::CONFLICT,
            false,
            "stopping: start it again once it has stopped".to_string(),
        ),
        StartOutcome::Elsewhere(status) => (
            StatusCode::OK,
            false,
            format!(
                "already running on instance {}: nothing changed",
                status.elsewhere.as_deref().unwrap_or("?")
            ),
        ),
    };
    (
        status,
        Json(json!({ "started": started, "message": message, "status": outcome.status() })),
    )
        .into_response()
}

pub async fn start_task(
    State(state): State<AppState>,
    Path(task): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let services = &state.services;
    let outcome = match parse_task(&task)? {
        TaskName::Gavage => {
            services
                .start_gavage(parse_body::<GavageParams>(&body)?)
                .await?
        }
        TaskName::Monitor => {
            services
                .start_monitor(parse_body::<MonitorParams>(&body)?)
                .await?
        }
        TaskName::Sqal => {
            services
                .start_sqal(parse_body::<SqalParams>(&body)?)
                .await?
        }
    };
    Ok(start_answer(outcome))
}

/// Starts again a task a crash interrupted, with the parameters it had.
pub async fn resume_task(
    State(state): State<AppState>,
    Path(task): Path<String>,
) -> Result<Response, ApiError> {
    let outcome = state.services.resume(parse_task(&task)?).await?;
    Ok(start_answer(outcome))
}

pub async fn stop_task(
    State(state): State<AppState>,
    Path(task): Path<String>,
) -> Result<Response, ApiError> {
    let status = state.services.stop(parse_task(&task)?).await;
    Ok(Json(json!({ "status": status })).into_response())
}

pub async fn start_pipeline(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = parse_body::<PipelineParams>(&body)?;
    let started = state.services.start_pipeline(params).await?;
    Ok(Json(started).into_response())
}

pub async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (pending, inspecting) = state.services.store.queue_counts().await?;
    Ok(Json(json!({
        "tasks": state.services.supervisor.statuses(),
        "queue": { "pending": pending, "inspecting": inspecting },
    }))
    .into_response())
}

pub async fn latest_product(State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.services.store.latest_product().await? {
        Some(product) => Ok(Json(json!({ "code_lot": product.code_lot, "product": product })).into_response()),
        None => Err(ApiError::NotFound(
            "no product yet: start the pipeline (POST /api/control/pipeline/start) and wait for a compliant sample".to_string(),
        )),
    }
}

#[derive(Debug, Deserialize)]
pub struct ProductsQuery {
    code_lot: Option<String>,
}

pub async fn products(
    State(state): State<AppState>,
    Query(query): Query<ProductsQuery>,
) -> Result<Response, ApiError> {
    let code_lot = query
        .code_lot
        .as_deref()
        .map(str::trim)
        .filter(|code| !code.is_empty());
    if let Some(code_lot) = code_lot {
        if code_lot.chars().count() > 32 {
            return Err(InvalidParam::new(
                "code_lot",
                format!("{} characters", code_lot.chars().count()),
                "at most 32 characters",
            )
            .into());
        }
    }
    let products = state.services.store.products(code_lot, 100).await?;
    Ok(Json(products).into_response())
}

/// `POST /api/sqal/samples`: one measurement from a SQAL station, graded
/// and stored; the response carries the grade and the product, if any.
pub async fn ingest_sample(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let payload: SamplePayload = serde_json::from_slice(&body)
        .map_err(|error| ApiError::BadRequest(format!("invalid sample JSON: {error}")))?;
    match state.services.ingest_sample(&payload).await {
        Ok(receipt) => Ok((StatusCode::CREATED, Json(receipt)).into_response()),
        Err(IngestError::Invalid(invalid)) => Err(invalid.into()),
        Err(duplicate @ IngestError::Duplicate { .. }) => {
            Err(ApiError::Conflict(duplicate.to_string()))
        }
        Err(IngestError::Internal(error)) => Err(error.into()),
    }
}

/// `POST /api/gavage/meals`: one meal from a field tablet or the simulator,
/// checked against its lot and stored.
pub async fn ingest_meal(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let payload: MealPayload = serde_json::from_slice(&body)
        .map_err(|error| ApiError::BadRequest(format!("invalid meal JSON: {error}")))?;
    match state.services.ingest_meal(&payload).await {
        Ok(receipt) => Ok((StatusCode::CREATED, Json(receipt)).into_response()),
        Err(MealError::Invalid(invalid)) => Err(invalid.into()),
        Err(duplicate @ MealError::Duplicate { .. }) => {
            Err(ApiError::Conflict(duplicate.to_string()))
        }
        Err(MealError::Internal(error)) => Err(error.into()),
    }
}

/// `GET /api/trace/<token>/verify`: the integrity proof of one product,
/// its lot's hash chain up to the product's creation.
pub async fn verify_trace(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound("no product has this token".to_string());
    if !chain::token::is_valid_token(&token) {
        return Err(not_found());
    }
    let proof = state
        .services
        .store
        .verify(&token)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(proof).into_response())
}

/// `GET /qr/<token>.svg`: the QR code of a product's trace URL.
pub async fn qr_svg(
    State(state): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let token = file.strip_suffix(".svg").unwrap_or(&file);
    let not_found = || ApiError::NotFound("no product has this token".to_string());
    if !chain::token::is_valid_token(token) {
        return Err(not_found());
    }
    let trace = state
        .services
        .store
        .trace(token)
        .await?
        .ok_or_else(not_found)?;
    let svg = chain::qr::render_svg(&trace.product.qr_payload)
        .map_err(|error| anyhow::anyhow!("QR rendering failed: {error:?}"))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        svg,
    )
        .into_response())
}

/// `GET /health`: 200 when the database responds, 503 otherwise.
pub async fn health(State(state): State<AppState>) -> Response {
    let database = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.services.store.ping(),
    )
    .await;
    let reachable = matches!(database, Ok(Ok(())));
    let status = if reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let tasks: serde_json::Map<String, serde_json::Value> = state
        .services
        .supervisor
        .statuses()
        .into_iter()
        .map(|task| (task.task.as_str().to_string(), json!(task.state.as_str())))
        .collect();
    let body = json!({
        "status": if reachable { "ok" } else { "unavailable" },
        "database": if reachable { "reachable" } else { "unreachable" },
        "version": env!("CARGO_PKG_VERSION"),
        "tasks": tasks,
    });
    (status, Json(body)).into_response()
}
