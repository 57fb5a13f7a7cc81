//! The Filière server: builds the application from a configuration and runs
//! it until Ctrl-C or SIGTERM. `main` and the tests both go through `build`.

// The demo page's island view type is laid out in this crate and nests
// deeper than the compiler's default limit when component types are not
// erased, as in `cargo test`.
#![recursion_limit = "256"]

pub mod api;
pub mod config;
pub mod events;
pub mod guard;
pub mod page_cache;
pub mod scan;

use anyhow::Context;
use app::{shell, App};
use axum::extract::FromRef;
use axum::routing::{get, post};
use axum::Router;
use chain::services::Services;
use chain::store::{Engine, Store};
use config::Config;
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, AxumRouteListing, LeptosRoutes};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// State every handler shares. Each middleware clones the service stack
/// beneath it, this state included, for every request, so the state is one
/// `Arc` and a clone costs a reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub leptos: LeptosOptions,
    pub services: Services,
    /// Cancelled at shutdown, so that long-lived responses end.
    pub shutdown: CancellationToken,
    pub guard: guard::Guard,
    pub page_cache: page_cache::PageCache,
}

impl FromRef<AppState> for guard::Guard {
    fn from_ref(state: &AppState) -> Self {
        state.guard.clone()
    }
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos.clone()
    }
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
}

/// Connects the store (running migrations), binds the listener and builds
/// the router. A failed migration is an error here, before anything listens.
pub async fn build(config: Config) -> anyhow::Result<Application> {
    if !config.bind.ip().is_loopback() && config.admin_token.is_none() {
        anyhow::bail!(
            "refusing to listen on {}: without FILIERE_ADMIN_TOKEN anyone on the network could \
             start, stop and feed the chain; set FILIERE_ADMIN_TOKEN (at least {} characters) \
             or listen on 127.0.0.1",
            config.bind,
            guard::MIN_TOKEN_LEN
        );
    }
    let store = Store::connect(&config.database_url).await?;
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let port = listener.local_addr()?.port();
    let mut services = Services::new(store, &config.public_url);
    services.lease_seconds = config.lease_seconds;
    services.instance = config
        .instance
        .clone()
        .unwrap_or_else(|| config::instance_name(&config::host_name(), port));
    services.load_task_runs().await?;
    let shutdown = CancellationToken::new();
    if services.store.engine() == Engine::Postgres {
        chain::relay::start(
            services.clone(),
            config.database_url.clone(),
            shutdown.clone(),
        );
    }
    let page_cache = page_cache::PageCache::new(
        std::time::Duration::from_secs_f64(config.page_cache_seconds),
        &services.bus,
    );
    let state = AppState(Arc::new(Shared {
        page_cache,
        leptos: config.leptos.clone(),
        services,
        shutdown,
        guard: guard::Guard::new(config.admin_token.clone(), &config.public_url),
    }));
    let router = router(state.clone());
    Ok(Application {
        listener,
        router,
        state,
    })
}

/// Returns the app's routes, listed once per process. Listing them runs the
/// app with resource loading suspended for the whole process (a global flag
/// in leptos_server 0.8), so a page that another server in the same process
/// renders meanwhile waits forever for its data. Tests start many servers.
fn route_list() -> Vec<AxumRouteListing> {
    static ROUTES: OnceLock<Vec<AxumRouteListing>> = OnceLock::new();
    ROUTES.get_or_init(|| generate_route_list(App)).clone()
}

fn router(state: AppState) -> Router {
    let routes = route_list();
    let services = state.services.clone();
    let leptos = state.leptos.clone();
    let guard = state.guard.clone();
    let page_cache = state.page_cache.clone();
    Router::new()
        .route("/admin/login", get(guard::login_form).post(guard::login))
        .route("/health", get(api::health))
        .route("/api/events", get(events::stream))
        .route("/api/control/status", get(api::status))
        .route("/api/control/pipeline/start", post(api::start_pipeline))
        .route("/api/control/{task}/start", post(api::start_task))
        .route("/api/control/{task}/stop", post(api::stop_task))
        .route("/api/control/{task}/resume", post(api::resume_task))
        .route("/api/consumer/latest-product", get(api::latest_product))
        .route("/api/consumer/products", get(api::products))
        .route("/api/sqal/samples", post(api::ingest_sample))
        .route("/api/gavage/meals", post(api::ingest_meal))
        .route("/api/trace/{token}/verify", get(api::verify_trace))
        .route("/api/scan", post(scan::scan))
        .route("/qr/{file}", get(api::qr_svg))
        .leptos_routes_with_context(
            &state,
            routes,
            move || provide_context(services.clone()),
            move || shell(leptos.clone()),
        )
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        // Inside the guard, so that its checks and rate limit still apply,
        // and outside the request log, which a page served from memory skips.
        .layer(axum::middleware::from_fn_with_state(
            page_cache,
            page_cache::serve,
        ))
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .with_state(state)
}

impl Application {
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|address| address.port())
            .unwrap_or(0)
    }

    pub fn services(&self) -> &Services {
        &self.state.services
    }

    /// Returns a token that stops the server when cancelled, as a signal does.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Serves until Ctrl-C, SIGTERM or the shutdown token; then stops the
    /// simulator tasks and closes the database.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application {
            listener,
            router,
            state,
        } = self;
        let shutdown = state.shutdown.clone();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                wait_for_signal().await;
                shutdown.cancel();
            }
        });
        tracing::info!(address = %listener.local_addr()?, "listening");
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown({
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        })
        .await
        .context("server error")?;

        tracing::info!("shutting down: stopping tasks");
        state.services.supervisor.stop_all().await;
        if !state
            .services
            .wait_samples_written(std::time::Duration::from_secs(5))
            .await
        {
            tracing::warn!(
                "timed out after 5 s waiting for samples to be written; closing the store"
            );
        }
        state.services.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
