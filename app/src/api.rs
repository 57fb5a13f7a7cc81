//! Server functions behind the pages. They validate their input through the
//! same parameter types as the JSON API, so both entry points enforce the
//! same ranges.

use chain::params::InvalidParam;
#[cfg(feature = "ssr")]
use chain::params::{GavageParams, MonitorParams, PipelineParams, SqalParams};
use chain::views::{ChainSnapshot, ProductView, TaskStatus, TraceView};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// Result of a start request: the task's status, or the parameter that was
/// rejected (nothing is started then).
pub type StartResult = Result<TaskStatus, InvalidParam>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineStarted {
    pub run_id: String,
    pub started_at: String,
    pub tasks: Vec<TaskStatus>,
}

/// Parses a quality profile name; the error lists the allowed names.
#[cfg(feature = "ssr")]
fn parse_profile(profile: &str) -> Result<chain::params::QualityProfile, InvalidParam> {
    chain::params::QualityProfile::parse(profile).ok_or_else(|| {
        let shown: String = profile.chars().take(40).collect();
        InvalidParam::new("profile", format!("{shown:?}"), "standard, premium or low")
    })
}

#[cfg(feature = "ssr")]
fn services() -> Result<chain::services::Services, ServerFnError> {
    use_context::<chain::services::Services>()
        .ok_or_else(|| ServerFnError::new("services missing from the request context"))
}

/// Logs an internal error and returns an opaque one: database messages stay
/// in the server log.
#[cfg(feature = "ssr")]
fn internal(error: anyhow::Error) -> ServerFnError {
    tracing::error!(error = format!("{error:#}"), "server function failed");
    ServerFnError::new("internal error, see the server log")
}

#[cfg(feature = "ssr")]
fn parse_task(task: &str) -> Result<chain::views::TaskName, ServerFnError> {
    chain::views::TaskName::parse(task).ok_or_else(|| {
        ServerFnError::new(format!(
            "unknown task {task:?}: expected gavage, monitor or sqal"
        ))
    })
}

/// Turns a start into what the page gets: the task's status, or the
/// rejected parameter.
#[cfg(feature = "ssr")]
fn start_result(
    result: Result<chain::supervisor::StartOutcome, chain::services::StartError>,
) -> Result<StartResult, ServerFnError> {
    use chain::services::StartError;
    match result {
        Ok(outcome) => Ok(Ok(outcome.status().clone())),
        Err(StartError::Invalid(invalid)) => Ok(Err(invalid)),
        Err(StartError::NothingToResume(message)) => Err(ServerFnError::new(message)),
        Err(StartError::Internal(error)) => Err(internal(error)),
    }
}

/// Everything the demo page shows, with the stream position to follow from.
#[server(prefix = "/fn")]
pub async fn demo_snapshot() -> Result<ChainSnapshot, ServerFnError> {
    services()?.snapshot().await.map_err(internal)
}

#[server(prefix = "/fn")]
pub async fn start_gavage(nb_lots: u32, acceleration: f64) -> Result<StartResult, ServerFnError> {
    let params = GavageParams {
        nb_lots,
        acceleration,
        seed: None,
    };
    start_result(services()?.start_gavage(params).await)
}

#[server(prefix = "/fn")]
pub async fn start_monitor(polling_interval: f64) -> Result<StartResult, ServerFnError> {
    let params = MonitorParams { polling_interval };
    start_result(services()?.start_monitor(params).await)
}

#[server(prefix = "/fn")]
pub async fn start_sqal(
    device_id: String,
    interval: f64,
    nb_samples: u32,
    profile: String,
) -> Result<StartResult, ServerFnError> {
    let profile = match parse_profile(&profile) {
        Ok(profile) => profile,
        Err(invalid) => return Ok(Err(invalid)),
    };
    let params = SqalParams {
        device_id,
        interval,
        nb_samples,
        profile,
        seed: None,
    };
    start_result(services()?.start_sqal(params).await)
}

#[server(prefix = "/fn")]
pub async fn stop_task(task: String) -> Result<TaskStatus, ServerFnError> {
    Ok(services()?.stop(parse_task(&task)?).await)
}

/// Starts again a task a crash interrupted, with the parameters it had.
#[server(prefix = "/fn")]
pub async fn resume_task(task: String) -> Result<StartResult, ServerFnError> {
    start_result(services()?.resume(parse_task(&task)?).await)
}

#[server(prefix = "/fn")]
pub async fn start_pipeline(
    nb_lots: u32,
    acceleration: f64,
    nb_samples: u32,
    interval: f64,
    profile: String,
) -> Result<Result<PipelineStarted, InvalidParam>, ServerFnError> {
    let mut params = PipelineParams::default();
    params.sqal.profile = match parse_profile(&profile) {
        Ok(profile) => profile,
        Err(invalid) => return Ok(Err(invalid)),
    };
    params.gavage.nb_lots = nb_lots;
    params.gavage.acceleration = acceleration;
    params.sqal.nb_samples = nb_samples;
    params.sqal.interval = interval;
    match services()?.start_pipeline(params).await {
        Ok(start) => Ok(Ok(PipelineStarted {
            run_id: start.run_id,
            started_at: start.started_at,
            tasks: start.tasks,
        })),
        Err(chain::services::StartError::Invalid(invalid)) => Ok(Err(invalid)),
        Err(chain::services::StartError::NothingToResume(message)) => {
            Err(ServerFnError::new(message))
        }
        Err(chain::services::StartError::Internal(error)) => Err(internal(error)),
    }
}

/// Returns the first product of gavage run `run_id`, if one exists yet.
#[server(prefix = "/fn")]
pub async fn run_product(run_id: String) -> Result<Option<ProductView>, ServerFnError> {
    chain::params::validate_run_id(&run_id)
        .map_err(|invalid| ServerFnError::new(invalid.to_string()))?;
    services()?
        .store
        .first_product_of_run(&run_id)
        .await
        .map_err(internal)
}

#[server(prefix = "/fn")]
pub async fn load_products(code_lot: String) -> Result<Vec<ProductView>, ServerFnError> {
    let code_lot = code_lot.trim();
    if code_lot.chars().count() > 32 {
        return Err(ServerFnError::new(
            "code_lot too long: at most 32 characters",
        ));
    }
    let filter = (!code_lot.is_empty()).then_some(code_lot);
    services()?
        .store
        .products(filter, 50)
        .await
        .map_err(internal)
}

/// Everything the trace page shows, or `None` for a token no product has.
/// A malformed token is treated like an unknown one.
#[server(prefix = "/fn")]
pub async fn trace(token: String) -> Result<Option<TraceView>, ServerFnError> {
    if !chain::qr::is_valid_token(&token) {
        return Ok(None);
    }
    services()?.store.trace(&token).await.map_err(internal)
}
