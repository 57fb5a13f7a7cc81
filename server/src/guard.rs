//! Access rules in front of the router:
//! - the operator's routes (controls, ingest, product lists, the event
//!   stream, the demo page and its server functions) need the admin token
//!   when one is configured;
//! - state-changing requests from another site are rejected;
//! - a client that keeps asking for unknown trace tokens is slowed down.
//!
//! Trace pages, their proofs and QR codes stay public.

use axum::extract::{ConnectInfo, Form, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Name of the cookie that carries the admin token for the browser.
pub const ADMIN_COOKIE: &str = "filiere_admin";
/// Shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// Unknown trace tokens a client may ask for in one window.
pub const MISS_LIMIT: u32 = 30;
pub const MISS_WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Guard {
    admin_token: Option<Arc<str>>,
    /// Origin of `PUBLIC_URL`, accepted even when a proxy rewrote `Host`.
    public_origin: Arc<str>,
    misses: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
}

impl Guard {
    pub fn new(admin_token: Option<String>, public_url: &str) -> Guard {
        // Scheme and authority only: `https://coop.example/x` → `https://coop.example`.
        let authority_end = public_url
            .find("://")
            .map(|start| {
                public_url[start + 3..]
                    .find('/')
                    .map_or(public_url.len(), |end| start + 3 + end)
            })
            .unwrap_or(public_url.len());
        Guard {
            admin_token: admin_token.map(Arc::from),
            public_origin: Arc::from(&public_url[..authority_end]),
            misses: Arc::default(),
        }
    }

    /// Tells whether the request carries the admin token, as a bearer
    /// token or in the admin cookie. Always true when no token is set.
    fn is_admin(&self, headers: &HeaderMap) -> bool {
        if self.admin_token.is_none() {
            return true;
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == ADMIN_COOKIE)
            .map(|(_, value)| value);
        [bearer, cookie]
            .into_iter()
            .flatten()
            .any(|given| self.is_admin_token(given))
    }

    /// Tells whether `given` is the configured admin token; false when no
    /// token is configured.
    fn is_admin_token(&self, given: &str) -> bool {
        self.admin_token
            .as_deref()
            .is_some_and(|expected| same_bytes(given.as_bytes(), expected.as_bytes()))
    }

    /// Counts a miss for `ip`; returns true once the client is over the limit.
    fn record_miss(&self, ip: IpAddr) -> bool {
        let mut misses = self.misses.lock().expect("miss table lock");
        let now = Instant::now();
        // Forget finished windows so that the table stays small.
        if misses.len() > 10_000 {
            misses.retain(|_, (start, _)| now.duration_since(*start) < MISS_WINDOW);
        }
        let entry = misses.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= MISS_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 > MISS_LIMIT
    }

    /// Seconds until `ip` may look up tokens again, if it is blocked now.
    fn blocked_for(&self, ip: IpAddr) -> Option<u64> {
        let misses = self.misses.lock().expect("miss table lock");
        let (start, count) = misses.get(&ip)?;
        let elapsed = start.elapsed();
        (*count > MISS_LIMIT && elapsed < MISS_WINDOW)
            .then(|| (MISS_WINDOW - elapsed).as_secs().max(1))
    }
}

/// Compares in time independent of where the bytes differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Routes only the operator may use when an admin token is set.
fn is_operator_path(path: &str) -> bool {
    const PREFIXES: [&str; 7] = [
        "/api/control/",
        "/api/sqal/",
        "/api/gavage/",
        "/api/consumer/",
        "/api/events",
        "/e2e-demo",
        "/fn/",
    ];
    let public_function = path.starts_with("/fn/trace");
    PREFIXES.iter().any(|prefix| path.starts_with(prefix)) && !public_function
}

/// Routes that look a product up by its token.
fn is_token_lookup(path: &str) -> bool {
    path.starts_with("/trace/") || path.starts_with("/api/trace/") || path.starts_with("/qr/")
}

/// Builds a JSON error response with a stable `error` code and a message.
pub(crate) fn error_response(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({ "error": error, "message": message }))).into_response()
}

/// Applies the three rules to every request.
pub async fn check(
    State(guard): State<Guard>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let headers = request.headers();

    if !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        if let Some(problem) = cross_site(headers, &guard.public_origin) {
            tracing::warn!(%path, %problem, client = %peer.ip(), "cross-site request rejected");
            return error_response(StatusCode::FORBIDDEN, "cross_site", &problem);
        }
    }
    if is_operator_path(&path) && !guard.is_admin(headers) {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "admin_token_required",
            "this route needs the admin token: send Authorization: Bearer <token>, or sign in at /admin/login",
        );
    }
    if is_token_lookup(&path) {
        if let Some(seconds) = guard.blocked_for(peer.ip()) {
            let mut response = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_unknown_tokens",
                &format!(
                    "too many unknown product codes from this address; try again in {seconds} s"
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
            return response;
        }
        let response = next.run(request).await;
        if response.status() == StatusCode::NOT_FOUND && guard.record_miss(peer.ip()) {
            tracing::warn!(client = %peer.ip(), limit = MISS_LIMIT, "client over the unknown-token limit");
        }
        return response;
    }
    next.run(request).await
}

/// Names why a state-changing request looks cross-site, if it does: the
/// browser marks it so, or its `Origin` is neither this server's `Host`
/// nor the public origin. Requests without either header (devices, curl)
/// pass.
fn cross_site(headers: &HeaderMap, public_origin: &str) -> Option<String> {
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|value| value.to_str().ok());
    if fetch_site == Some("cross-site") {
        return Some("request sent from another site (Sec-Fetch-Site: cross-site)".to_string());
    }
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
    if origin == public_origin {
        return None;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or(origin);
    (origin_host != host).then(|| format!("origin {origin} does not match host {host}"))
}

/// `GET /admin/login`: a form for the admin token.
pub async fn login_form() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><html lang=\"fr\"><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>Filière — accès opérateur</title>",
        "<link rel=\"stylesheet\" href=\"/pkg/filiere.css\">",
        "<main class=\"page narrow\"><section class=\"card\"><h1>Accès opérateur</h1>",
        "<form method=\"post\" action=\"/admin/login\" class=\"lookup\">",
        "<label for=\"token\">Jeton d'administration (FILIERE_ADMIN_TOKEN)</label>",
        "<input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\">",
        "<button type=\"submit\">Entrer</button></form></section></main></html>",
    ))
}

#[derive(Deserialize)]
pub struct Login {
    token: String,
}

/// `POST /admin/login`: sets the admin cookie when the token matches.
pub async fn login(
    State(guard): State<Guard>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(login): Form<Login>,
) -> Response {
    if !guard.is_admin_token(&login.token) {
        tracing::warn!(client = %peer.ip(), "admin sign-in rejected: wrong token");
        return error_response(
            StatusCode::UNAUTHORIZED,
            "invalid_admin_token",
            "wrong admin token",
        );
    }
    let cookie = format!(
        "{ADMIN_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200",
        login.token
    );
    let mut response = Redirect::to("/e2e-demo").into_response();
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_paths_exclude_trace_functions() {
        assert!(is_operator_path("/api/control/pipeline/start"));
        assert!(is_operator_path("/fn/start_pipeline123"));
        assert!(is_operator_path("/e2e-demo"));
        assert!(!is_operator_path("/fn/trace5678"));
        assert!(!is_operator_path("/trace/abc"));
        assert!(!is_operator_path("/health"));
    }

    #[test]
    fn cross_site_needs_a_foreign_origin_or_marker() {
        let cross_site = |headers: &HeaderMap| super::cross_site(headers, "https://coop.example");
        let mut headers = HeaderMap::new();
        assert_eq!(cross_site(&headers), None);
        headers.insert(header::HOST, "127.0.0.1:3000".parse().unwrap());
        headers.insert(header::ORIGIN, "http://127.0.0.1:3000".parse().unwrap());
        assert_eq!(cross_site(&headers), None);
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(cross_site(&headers).unwrap().contains("evil.example"));
        // Behind a proxy that rewrites Host, the public origin still passes.
        headers.insert(header::ORIGIN, "https://coop.example".parse().unwrap());
        assert_eq!(cross_site(&headers), None);
        headers.remove(header::ORIGIN);
        headers.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&headers).is_some());
    }

    #[test]
    fn misses_block_after_the_limit() {
        let guard = Guard::new(None, "http://127.0.0.1:3000");
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        for _ in 0..MISS_LIMIT {
            assert!(!guard.record_miss(ip));
        }
        assert_eq!(guard.blocked_for(ip), None);
        assert!(guard.record_miss(ip));
        assert!(guard.blocked_for(ip).is_some());
        assert_eq!(guard.blocked_for("10.0.0.8".parse().unwrap()), None);
    }
}
