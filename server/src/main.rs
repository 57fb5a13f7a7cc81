use tracing_subscriber::EnvFilter;

// glibc's allocator took about a third of the server's time under load on
// the trace page (perf, cpu-clock samples). mimalloc serves the many small,
// short-lived allocations of rendering and row decoding faster.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn")),
        )
        .init();

    let result = async {
        let config = server::config::Config::from_env()?;
        tracing::info!(database = %config.database_url, public_url = %config.public_url, "starting Filière");
        server::build(config).await?.run_until_stopped().await
    }
    .await;

    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "Filière stopped on an error");
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
