//! Short-lived cache of rendered consumer trace pages.
//!
//! Many phones scan products of the same batch, and a product's page only
//! changes while its lot is still being inspected. A rendered page is kept
//! in memory for `FILIERE_PAGE_CACHE_SECONDS` (5 s by default, 0 turns the
//! cache off) and served again for the same path, query and language. Any
//! event about a lot (a sample graded, a product created, the lot claimed
//! or inspected, here or in another instance) drops that lot's pages at
//! once. A change that publishes no event, such as a row edited by hand in
//! the database, shows after at most the cache's lifetime.
//!
//! Only successful pages without a `Set-Cookie` header are kept, so the
//! language switch and the unknown-token rate limit work as without the
//! cache. When many requests miss the same page at once, one renders it
//! and the others wait for that page.

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chain::bus::EventBus;
use chain::views::Event;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

/// Pages kept at most; a rendered trace page is about 22 KB.
const MAX_PAGES: usize = 512;
/// Largest page the cache reads into memory.
const MAX_PAGE_BYTES: usize = 1 << 20;
/// Cache lifetimes `FILIERE_PAGE_CACHE_SECONDS` accepts, in seconds.
pub const LIFETIME_RANGE: (f64, f64) = (0.0, 60.0);
pub const DEFAULT_LIFETIME_SECONDS: f64 = 5.0;

/// Path with query, and the `lang` cookie: what selects a rendered page.
type Key = (String, Option<String>);

struct Page {
    headers: HeaderMap,
    body: Bytes,
    /// When rendering started: a page is as fresh as that moment.
    rendered: Instant,
    /// The page's lot, from the page's `x-filiere-lot` header.
    code_lot: Option<String>,
}

#[derive(Clone)]
pub struct PageCache {
    inner: Arc<Inner>,
}

struct Inner {
    lifetime: Duration,
    state: Mutex<Entries>,
    /// One lock per page being rendered, so that concurrent misses of one
    /// page render it once.
    rendering: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Default)]
struct Entries {
    pages: HashMap<Key, Page>,
    /// Last time an event touched each lot. A page of that lot rendered
    /// before then is not stored.
    touched: HashMap<String, Instant>,
    /// Last time missed events made every page stale.
    everything_touched: Option<Instant>,
    /// When `touched` is next pruned of times older than a lifetime.
    next_prune: Option<Instant>,
}

impl PageCache {
    /// Creates a cache whose pages live `lifetime`, emptied by the events
    /// of `bus`. A zero lifetime turns it off.
    pub fn new(lifetime: Duration, bus: &EventBus) -> PageCache {
        let cache = PageCache {
            inner: Arc::new(Inner {
                lifetime,
                state: Mutex::new(Entries::default()),
                rendering: Mutex::new(HashMap::new()),
            }),
        };
        if !lifetime.is_zero() {
            tokio::spawn(cache.clone().follow(bus.subscribe()));
        }
        cache
    }

    /// Drops the pages an event can change, as events arrive.
    async fn follow(
        self,
        mut events: tokio::sync::broadcast::Receiver<chain::views::EventEnvelope>,
    ) {
        loop {
            match events.recv().await {
                Ok(envelope) => {
                    if let Some(code_lot) = touched_lot(&envelope.event) {
                        self.touch(Some(code_lot));
                    }
                }
                // Missed events may have changed any page.
                Err(RecvError::Lagged(_)) => self.touch(None),
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Drops the pages of `code_lot`, or every page for `None`, and keeps
    /// pages already rendering from being stored.
    fn touch(&self, code_lot: Option<&str>) {
        let now = Instant::now();
        let mut state = self.inner.state.lock().expect("page cache lock");
        match code_lot {
            Some(code_lot) => {
                state
                    .pages
                    .retain(|_, page| page.code_lot.as_deref() != Some(code_lot));
                state.touched.insert(code_lot.to_string(), now);
            }
            None => {
                state.pages.clear();
                state.touched.clear();
                state.everything_touched = Some(now);
            }
        }
        // Touch times only matter for renders still going on, which take
        // far less than a lifetime. Pruning once a lifetime, not at every
        // event, keeps a burst of events from rescanning the map each time.
        let lifetime = self.inner.lifetime;
        if state.next_prune.is_none_or(|at| now >= at) {
            state
                .touched
                .retain(|_, at| now.saturating_duration_since(*at) < lifetime);
            state.next_prune = Some(now + lifetime);
        }
    }

    /// Returns the page for `key` if it is younger than the cache lifetime
    /// and was rendered no earlier than `not_before`.
    fn lookup(&self, key: &Key, not_before: Option<Instant>) -> Option<Response> {
        let state = self.inner.state.lock().expect("page cache lock");
        let page = state.pages.get(key)?;
        let fresh = page.rendered.elapsed() < self.inner.lifetime
            && not_before.is_none_or(|moment| page.rendered >= moment);
        if !fresh {
            return None;
        }
        let mut response = Response::new(Body::from(page.body.clone()));
        *response.headers_mut() = page.headers.clone();
        Some(response)
    }

    fn store(&self, key: Key, page: Page) {
        let mut state = self.inner.state.lock().expect("page cache lock");
        let stale = state
            .everything_touched
            .is_some_and(|at| at >= page.rendered)
            || page
                .code_lot
                .as_ref()
                .and_then(|code_lot| state.touched.get(code_lot))
                .is_some_and(|at| *at >= page.rendered);
        if stale {
            // An event about the page's lot arrived while it was rendering.
            return;
        }
        if state.pages.len() >= MAX_PAGES && !state.pages.contains_key(&key) {
            let lifetime = self.inner.lifetime;
            state
                .pages
                .retain(|_, page| page.rendered.elapsed() < lifetime);
            if state.pages.len() >= MAX_PAGES {
                let oldest = state
                    .pages
                    .iter()
                    .min_by_key(|(_, page)| page.rendered)
                    .map(|(key, _)| key.clone());
                if let Some(oldest) = oldest {
                    state.pages.remove(&oldest);
                }
            }
        }
        state.pages.insert(key, page);
    }

    /// Returns the lock that renders of `key` take turns on.
    fn render_lock(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        let mut rendering = self.inner.rendering.lock().expect("page cache lock");
        // Locks that no request holds or waits for are dropped as new ones come.
        rendering.retain(|_, lock| Arc::strong_count(lock) > 1);
        rendering.entry(key.clone()).or_default().clone()
    }

    /// Number of pages held now.
    pub fn len(&self) -> usize {
        self.inner
            .state
            .lock()
            .expect("page cache lock")
            .pages
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Returns the lot whose trace pages an event can change, if any.
fn touched_lot(event: &Event) -> Option<&str> {
    match event {
        Event::SampleGraded { sample, .. } => Some(&sample.code_lot),
        Event::ProductCreated { product, .. } => Some(&product.code_lot),
        Event::LotClaimed { code_lot, .. }
        | Event::LotInspected { code_lot, .. }
        | Event::LotFinished { code_lot } => Some(code_lot),
        _ => None,
    }
}

fn lang_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "lang")
        .map(|(_, value)| value.to_string())
}

/// Middleware: serves `GET /trace/<token>` from the cache when it can, and
/// keeps what the page handler renders otherwise.
pub async fn serve(State(cache): State<PageCache>, request: Request, next: Next) -> Response {
    let cacheable = !cache.inner.lifetime.is_zero()
        && request.method() == Method::GET
        && request.uri().path().starts_with("/trace/");
    if !cacheable {
        return next.run(request).await;
    }
    let key: Key = (
        request
            .uri()
            .path_and_query()
            .map(|path| path.as_str().to_string())
            .unwrap_or_default(),
        lang_cookie(request.headers()),
    );
    if let Some(page) = cache.lookup(&key, None) {
        return page;
    }

    // Misses of one page wait in turn; a page rendered since this request
    // arrived is as fresh as a new render.
    let arrived = Instant::now();
    let render_lock = cache.render_lock(&key);
    let _turn = render_lock.lock().await;
    if let Some(page) = cache.lookup(&key, Some(arrived)) {
        return page;
    }
    let rendered = Instant::now();
    let response = next.run(request).await;
    if response.status() != StatusCode::OK || response.headers().contains_key(header::SET_COOKIE) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let body = match to_bytes(body, MAX_PAGE_BYTES).await {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(path = %key.0, %error, "cannot read a rendered trace page");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let code_lot = parts
        .headers
        .get(app::LOT_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    cache.store(
        key,
        Page {
            headers: parts.headers.clone(),
            body: body.clone(),
            rendered,
            code_lot,
        },
    );
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lang_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=1; lang=en; b=2".parse().unwrap());
        assert_eq!(lang_cookie(&headers).as_deref(), Some("en"));
        headers.insert(header::COOKIE, "filiere_admin=x".parse().unwrap());
        assert_eq!(lang_cookie(&headers), None);
    }

    #[test]
    fn lot_events_touch_their_lot_only() {
        let inspected = Event::LotInspected {
            code_lot: "LL2612001".into(),
            verdict: "conforme".into(),
        };
        assert_eq!(touched_lot(&inspected), Some("LL2612001"));
        let queue = Event::Queue {
            pending: 1,
            inspecting: 0,
        };
        assert_eq!(touched_lot(&queue), None);
    }

    fn touched_lots(cache: &PageCache) -> Vec<String> {
        let state = cache.inner.state.lock().unwrap();
        let mut lots: Vec<String> = state.touched.keys().cloned().collect();
        lots.sort();
        lots
    }

    #[tokio::test]
    async fn old_touch_times_are_pruned() {
        let cache = PageCache::new(Duration::from_millis(40), &EventBus::new());
        cache.touch(Some("LL2612001"));
        cache.touch(Some("LL2612002"));
        // Within a lifetime nothing is pruned.
        assert_eq!(touched_lots(&cache), ["LL2612001", "LL2612002"]);
        tokio::time::sleep(Duration::from_millis(60)).await;
        cache.touch(Some("LL2612003"));
        assert_eq!(
            touched_lots(&cache),
            ["LL2612003"],
            "touch times a lifetime old should be gone"
        );
    }

    #[tokio::test]
    async fn stale_render_is_not_stored() {
        let cache = PageCache::new(Duration::from_secs(5), &EventBus::new());
        let page = |rendered| Page {
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"page"),
            rendered,
            code_lot: Some("LL2612001".to_string()),
        };
        let key: Key = ("/trace/a".to_string(), None);
        let before = Instant::now();
        cache.touch(Some("LL2612001"));
        cache.store(key.clone(), page(before));
        assert!(
            cache.lookup(&key, None).is_none(),
            "a stale render was kept"
        );
        cache.store(key.clone(), page(Instant::now()));
        assert!(
            cache.lookup(&key, None).is_some(),
            "a fresh render was dropped"
        );
    }
}
