//! Pages of Filière: the end-to-end demo (`/e2e-demo`) and the consumer's
//! traceability page (`/trace/<token>`), with their server functions.

// The demo page's view type nests deeper than the compiler's default limit.
#![recursion_limit = "256"]

pub mod api;
pub mod demo;
pub mod events;
pub mod i18n;
pub mod scan;
pub mod trace;

use i18n::Lang;

/// Response header naming the lot of a rendered trace page.
pub const LOT_HEADER: &str = "x-filiere-lot";
use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::components::{Route, Router, Routes, A};
use leptos_router::{path, SsrMode};

/// Renders the HTML document around the app, on the server only.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    let lang = i18n::request_lang();
    view! {
        <!DOCTYPE html>
        <html lang=lang.code()>
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="theme-color" content="#7a2e3a"/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options islands=true/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    let lang = i18n::request_lang();
    provide_context(lang);

    view! {
        <Stylesheet id="leptos" href="/pkg/filiere.css"/>
        <Title text="Filière"/>
        <Router>
            <Routes fallback=move || view! { <NotFound/> }>
                <Route path=path!("/") view=Home/>
                // Async: the loader hydrates the islands it finds once the page
                // has loaded, so the demo's island must not arrive later in a
                // streamed Suspense fragment.
                <Route path=path!("/e2e-demo") view=demo::DemoPage ssr=SsrMode::Async/>
                <Route path=path!("/trace") view=trace::TraceLookup ssr=SsrMode::Async/>
                <Route path=path!("/trace/:token") view=trace::TracePage ssr=SsrMode::Async/>
            </Routes>
        </Router>
    }
}

/// Returns the language of the page: the one `App` provides on the server.
/// An island hydrated in the browser has no such context and reads it from
/// `<html lang>`, as rendered by the server.
pub fn use_lang() -> Lang {
    use_context::<Lang>().unwrap_or_else(i18n::request_lang)
}

/// Link that reloads the current page in the other language.
#[component]
pub fn LangSwitch() -> impl IntoView {
    let lang = use_lang();
    let other = lang.other();
    view! {
        <a class="lang-switch" href=format!("?lang={}", other.code()) hreflang=other.code() rel="external">
            {other.name()}
        </a>
    }
}

#[component]
fn Home() -> impl IntoView {
    let lang = use_lang();
    view! {
        <main class="page narrow">
            <header class="top">
                <h1>"Filière"</h1>
                <LangSwitch/>
            </header>
            <p>{lang.tr(
                "La chaîne qualité de la coopérative, du gavage au produit traçable.",
                "The cooperative's quality chain, from gavage to a traceable product.",
            )}</p>
            <ul class="links">
                <li><A href="/e2e-demo">{lang.tr("Démo de bout en bout", "End-to-end demo")}</A></li>
                <li><A href="/trace">{lang.tr("Retrouver un produit", "Find a product")}</A></li>
            </ul>
        </main>
    }
}

#[component]
fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(http::StatusCode::NOT_FOUND);
    }
    let lang = use_lang();
    view! {
        <main class="page narrow">
            <h1>{lang.tr("Page introuvable", "Page not found")}</h1>
            <p><a href="/">{lang.tr("Retour à l'accueil", "Back to the home page")}</a></p>
        </main>
    }
}

/// Entry point of the WASM bundle. The pages stay as the server rendered
/// them, and the loader script then hydrates each `#[island]` component
/// found in them.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_islands();
}
