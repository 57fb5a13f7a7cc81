//! The consumer's traceability page, rendered completely on the server so
//! that it works without JavaScript on a slow phone.

use crate::api::trace;
use crate::i18n::{self, Lang};
use crate::{use_lang, LangSwitch};
use chain::grade::Grade;
use chain::views::{SampleView, TraceView};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};

/// Plain-words meaning of a grade for a shopper.
fn grade_meaning(lang: Lang, grade: Grade) -> &'static str {
    match grade {
        Grade::APlus => lang.tr("Qualité exceptionnelle", "Exceptional quality"),
        Grade::A => lang.tr("Très belle qualité", "Very good quality"),
        Grade::B => lang.tr("Bonne qualité", "Good quality"),
        Grade::C => lang.tr("Qualité correcte", "Fair quality"),
        Grade::Reject => lang.tr("Non conforme", "Not compliant"),
    }
}

fn grade_class(grade: Grade) -> &'static str {
    match grade {
        Grade::APlus => "grade grade-aplus",
        Grade::A => "grade grade-a",
        Grade::B => "grade grade-b",
        Grade::C => "grade grade-c",
        Grade::Reject => "grade grade-reject",
    }
}

/// Shows a stored value, or "non renseigné" when it is missing.
fn or_missing(lang: Lang, value: Option<String>) -> String {
    value.unwrap_or_else(|| lang.tr("non renseigné", "not recorded").to_string())
}

#[component]
pub fn TracePage() -> impl IntoView {
    let lang = use_lang();
    let params = use_params_map();
    let token = move || params.read().get("token").unwrap_or_default();
    let data = Resource::new(token, trace);

    view! {
        <main class="page narrow trace">
            <header class="top">
                <a class="brand" href="/trace">"Filière"</a>
                <LangSwitch/>
            </header>
            <Suspense fallback=move || view! { <p>{lang.tr("Chargement…", "Loading…")}</p> }>
                {move || data.get().map(|result| match result {
                    Ok(Some(view)) => view! { <TraceDetails view/> }.into_any(),
                    Ok(None) => view! { <ProductNotFound/> }.into_any(),
                    Err(error) => {
                        #[cfg(feature = "ssr")]
                        if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
                            response.set_status(http::StatusCode::INTERNAL_SERVER_ERROR);
                        }
                        view! {
                            <section class="card error" role="alert">
                                <h1>{lang.tr("Erreur du serveur", "Server error")}</h1>
                                <p>{lang.tr("La traçabilité n'a pas pu être lue. Réessayez dans un instant.", "The trace could not be read. Try again in a moment.")}</p>
                                <p class="muted">{error.to_string()}</p>
                            </section>
                        }.into_any()
                    }
                })}
            </Suspense>
        </main>
    }
}

#[component]
fn ProductNotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(http::StatusCode::NOT_FOUND);
    }
    let lang = use_lang();
    view! {
        <Title text=lang.tr("Produit introuvable — Filière", "Product not found — Filière")/>
        <section class="card">
            <h1>{lang.tr("Produit introuvable", "Product not found")}</h1>
            <p>{lang.tr(
                "Aucun produit ne correspond à ce code. Vérifiez le lien ou saisissez le code imprimé sous le QR code.",
                "No product matches this code. Check the link or type the code printed under the QR code.",
            )}</p>
            <p><a class="button" href="/trace">{lang.tr("Saisir un code", "Type a code")}</a></p>
        </section>
    }
}

#[component]
fn TraceDetails(view: TraceView) -> impl IntoView {
    let lang = use_lang();
    let TraceView {
        product,
        lot,
        sample,
    } = view;
    let title = format!("{} — {}", product.product_id, lot.code_lot);
    let rule = match product.grade.min_score() {
        Some(min) => format!(
            "{} = 0,6 × ToF {} + 0,4 × AS7341 {} = {} ≥ {:.2} → {}",
            lang.tr("score final", "final score"),
            i18n::score(product.tof_score),
            i18n::score(product.as7341_score),
            i18n::score(product.final_score),
            min,
            product.grade
        ),
        None => format!(
            "{} = {} < 0.45 → REJECT",
            lang.tr("score final", "final score"),
            i18n::score(product.final_score)
        ),
    };
    let mortality = lot.taux_mortalite.map(|rate| format!("{rate:.1} %"));
    let final_weight = lot
        .poids_moyen_final
        .map(|weight| format!("{:.2} kg", weight / 1000.0));
    let survivors = lot.nb_canards_vivants.map(|count| count.to_string());
    let finished = lot.finished_at.as_deref().map(i18n::date_time);

    view! {
        <Title text=title/>
        <section class="card product">
            <p class="muted">{lang.tr("Foie gras de canard", "Duck foie gras")}</p>
            <h1>{product.product_id.clone()}</h1>
            <div class="grade-line">
                <span class=grade_class(product.grade) data-testid="grade">{product.grade.as_str()}</span>
                <span>{grade_meaning(lang, product.grade)}</span>
            </div>
            <dl class="facts">
                <dt>{lang.tr("Score final", "Final score")}</dt><dd>{i18n::score(product.final_score)}</dd>
                <dt>"ToF"</dt><dd>{i18n::score(product.tof_score)}</dd>
                <dt>"AS7341"</dt><dd>{i18n::score(product.as7341_score)}</dd>
                <dt>{lang.tr("Inspecté le", "Inspected on")}</dt><dd>{i18n::date_time(&sample.measured_at)}</dd>
                <dt>{lang.tr("Produit le", "Produced on")}</dt><dd>{i18n::date_time(&product.created_at)}</dd>
            </dl>
            <p class="rule">{rule}</p>
        </section>

        <section class="card lot">
            <h2>{lang.tr("Le lot", "The lot")}</h2>
            <dl class="facts">
                <dt>"code_lot"</dt><dd data-testid="code-lot">{lot.code_lot.clone()}</dd>
                <dt>{lang.tr("Gaveur", "Gaveur")}</dt><dd>{lot.gaveur.clone()}</dd>
                <dt>{lang.tr("Site", "Site")}</dt><dd>{format!("{} ({})", lot.site, lot.region)}</dd>
                <dt>{lang.tr("Génétique", "Genetics")}</dt><dd>{lot.genetique.clone()}</dd>
                <dt>{lang.tr("Canards", "Ducks")}</dt><dd>{lot.nb_canards}</dd>
                <dt>{lang.tr("Canards à l'abattage", "Ducks at slaughter")}</dt><dd>{or_missing(lang, survivors)}</dd>
                <dt>{lang.tr("Durée du gavage", "Gavage duration")}</dt><dd>{format!("{} {}", lot.duree_jours, lang.tr("jours", "days"))}</dd>
                <dt>{lang.tr("Repas enregistrés", "Meals recorded")}</dt><dd>{lot.meals}</dd>
                <dt>{lang.tr("Poids moyen final", "Final mean weight")}</dt><dd>{or_missing(lang, final_weight)}</dd>
                <dt>{lang.tr("Mortalité", "Mortality")}</dt><dd>{or_missing(lang, mortality)}</dd>
                <dt>{lang.tr("Début du gavage", "Gavage started")}</dt><dd>{i18n::date_time(&lot.started_at)}</dd>
                <dt>{lang.tr("Fin du gavage", "Gavage finished")}</dt><dd>{or_missing(lang, finished)}</dd>
            </dl>
        </section>

        <section class="card sample">
            <h2>{lang.tr("La mesure SQAL", "The SQAL measurement")}</h2>
            <SampleEvidence sample/>
        </section>
    }
}

#[component]
pub fn SampleEvidence(sample: SampleView) -> impl IntoView {
    let lang = use_lang();
    let weight = sample
        .estimated_weight_g
        .map(|weight| format!("{weight:.0} g"));
    view! {
        <dl class="facts">
            <dt>{lang.tr("Poste", "Station")}</dt><dd>{sample.device_id.clone()}</dd>
            <dt>{lang.tr("Poids estimé du foie", "Estimated liver weight")}</dt><dd>{or_missing(lang, weight)}</dd>
        </dl>
        <div class="evidence">
            <figure>
                <HeatMap distances=sample.tof_distances.clone()/>
                <figcaption>{lang.tr("Relief mesuré (ToF 8×8, hauteur en mm)", "Measured relief (8×8 ToF, height in mm)")}</figcaption>
            </figure>
            <figure>
                <Spectrum counts=sample.as7341_counts.clone()/>
                <figcaption>{lang.tr("Spectre AS7341 (comptes bruts)", "AS7341 spectrum (raw counts)")}</figcaption>
            </figure>
        </div>
    }
}

/// 8×8 ToF frame as an SVG heat map: darker means a taller liver.
#[component]
pub fn HeatMap(distances: Vec<f64>) -> impl IntoView {
    let cells = distances
        .iter()
        .enumerate()
        .map(|(zone, distance)| {
            let height = (100.0 - distance).clamp(0.0, 100.0);
            let lightness = 96.0 - height * 0.7;
            let (row, col) = (zone / 8, zone % 8);
            view! {
                <rect x=col * 30 y=row * 18 width="30" height="18"
                    fill=format!("hsl(350, 45%, {lightness:.0}%)")>
                    <title>{format!("{height:.0} mm")}</title>
                </rect>
            }
        })
        .collect_view();
    view! {
        <svg class="heatmap" viewBox="0 0 240 144" role="img" aria-label="ToF 8×8">
            {cells}
        </svg>
    }
}

/// AS7341 channels as a bar chart, each bar in its band's colour.
#[component]
pub fn Spectrum(counts: Vec<f64>) -> impl IntoView {
    const COLOURS: [&str; 10] = [
        "#7e4fc4", "#3d5bd9", "#1f9bd1", "#2fa84f", "#b8c22b", "#e0a526", "#e0602a", "#b52a2a",
        "#999999", "#5a3a3a",
    ];
    let max = counts.iter().cloned().fold(1.0, f64::max);
    let bars = counts
        .iter()
        .zip(chain_channel_names())
        .enumerate()
        .map(|(index, (count, name))| {
            let height = 100.0 * count / max;
            view! {
                <g>
                    <rect x=index * 24 + 2 y=format!("{:.1}", 110.0 - height) width="20" height=format!("{height:.1}") fill=COLOURS[index]>
                        <title>{format!("{name}: {count:.0}")}</title>
                    </rect>
                    <text x=index * 24 + 12 y="124" text-anchor="middle" font-size="8">{name}</text>
                </g>
            }
        })
        .collect_view();
    view! {
        <svg class="spectrum" viewBox="0 0 240 128" role="img" aria-label="AS7341">
            {bars}
        </svg>
    }
}

fn chain_channel_names() -> [&'static str; 10] {
    [
        "F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8", "Clear", "NIR",
    ]
}

/// Takes what a person typed or scanned, a token or a whole trace URL, and
/// returns the token.
pub fn extract_token(input: &str) -> &str {
    let input = input.trim();
    let after = input
        .rsplit_once("/trace/")
        .map(|(_, rest)| rest)
        .unwrap_or(input);
    after.split(['?', '#', '/']).next().unwrap_or("")
}

/// `/trace` without a token: a form to type the code printed under the QR
/// code. It works without JavaScript: the form submits `?code=` here and the
/// server redirects to the product's page.
#[component]
pub fn TraceLookup() -> impl IntoView {
    let lang = use_lang();
    let query = use_query_map();
    let typed = query.read_untracked().get("code").unwrap_or_default();
    let token = extract_token(&typed).to_string();
    let invalid = !typed.trim().is_empty() && !chain::token::is_valid_token(&token);
    if !typed.trim().is_empty() && !invalid {
        #[cfg(feature = "ssr")]
        leptos_axum::redirect(&format!("/trace/{token}"));
    }

    view! {
        <main class="page narrow trace">
            <header class="top">
                <span class="brand">"Filière"</span>
                <LangSwitch/>
            </header>
            <section class="card">
                <h1>{lang.tr("Retrouver un produit", "Find a product")}</h1>
                <p>{lang.tr(
                    "Scannez le QR code de l'emballage avec l'appareil photo du téléphone, ou saisissez le code imprimé dessous.",
                    "Scan the QR code on the pack with the phone camera, or type the code printed under it.",
                )}</p>
                <form method="get" action="/trace" class="lookup">
                    <label for="code">{lang.tr("Code du produit", "Product code")}</label>
                    <input id="code" name="code" type="text" autocomplete="off" spellcheck="false" value=typed.clone()/>
                    <button type="submit">{lang.tr("Afficher", "Show")}</button>
                </form>
                <Show when=move || invalid>
                    <p class="error" role="alert">{lang.tr(
                        "Ce code n'a pas la bonne forme : 22 caractères (lettres, chiffres, - et _).",
                        "This code has the wrong shape: 22 characters (letters, digits, - and _).",
                    )}</p>
                </Show>
            </section>
        </main>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_token_from_url_or_code() {
        assert_eq!(extract_token("abc"), "abc");
        assert_eq!(
            extract_token(" http://h/trace/tok123?lot=X&grade=A "),
            "tok123"
        );
        assert_eq!(extract_token("/trace/tok#x"), "tok");
    }
}
