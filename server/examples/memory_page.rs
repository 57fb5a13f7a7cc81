//! The practical ceiling for serving one page on this machine: an axum
//! server that returns the same bytes from memory for every path, with
//! the allocator and runtime of the real server. `bench/trace_load.py
//! --ceiling` starts it beside the real server and loads both in one run.
//!
//! Usage: `memory_page <file> <port>`; it listens on 127.0.0.1 only.

use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Router;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut arguments = std::env::args().skip(1);
    let (Some(file), Some(port)) = (arguments.next(), arguments.next()) else {
        anyhow::bail!("usage: memory_page <file> <port>");
    };
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow::anyhow!("port must be a number from 1 to 65535, got {port:?}"))?;
    let page = Bytes::from(
        std::fs::read(&file).map_err(|error| anyhow::anyhow!("cannot read {file}: {error}"))?,
    );
    let serve = move || {
        let page = page.clone();
        async move { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response() }
    };
    let router = Router::new().fallback(serve);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, router).await?;
    Ok(())
}
