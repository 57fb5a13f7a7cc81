//! The consumer's traceability page, rendered completely on the server so
//! that it works without JavaScript on a slow phone.

use crate::api::trace;
use crate::i18n::{self, Lang};
use crate::{use_lang, LangSwitch};
use chain::grade::Grade;
use chain::views::{
    Band, DefectKind, IntegrityProof, IntegrityStatus, MealPoint, SampleDetails, SampleView,
    TraceView,
};
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
    // Names the page's lot for the server's page cache, which drops the
    // page when an event touches that lot.
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        if let Ok(value) = http::HeaderValue::from_str(&view.product.code_lot) {
            response.insert_header(http::HeaderName::from_static(crate::LOT_HEADER), value);
        }
    }
    let TraceView {
        product,
        lot,
        sample,
        meals,
        integrity,
    } = view;
    let token = product.token.clone();
    // The claim that led to this product's measurement: the last one
    // recorded before it in the lot's chain.
    let inspection_started = integrity
        .events
        .iter()
        .filter(|event| event.kind == "inspection_started")
        .last()
        .map(|event| i18n::date_time(&event.recorded_at));
    let hint_note = hint_mismatch(lang, &product.code_lot, product.grade);
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
            {hint_note.map(|note| view! { <p class="notice info" data-testid="hint-note">{note}</p> })}
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

        <section class="card curve">
            <h2>{lang.tr("Courbe de gavage", "Feeding curve")}</h2>
            <FeedingCurve meals/>
        </section>

        <section class="card sample">
            <h2>{lang.tr("La mesure SQAL", "The SQAL measurement")}</h2>
            <SampleEvidence sample=sample.clone()/>
        </section>

        <IntegrityCard proof=integrity token=token.clone()/>

        <section class="card share">
            <h2>{lang.tr("Partager", "Share")}</h2>
            <ShareLink path=format!("/trace/{token}")/>
        </section>

        <section class="card timeline">
            <h2>{lang.tr("Historique", "Timeline")}</h2>
            <ol class="steps">
                <li><strong>{lang.tr("Début du gavage", "Gavage started")}</strong>" — "{i18n::date_time(&lot.started_at)}</li>
                <li><strong>{lang.tr("Fin du gavage, prêt abattage", "Gavage finished, ready for slaughter")}</strong>" — "{or_missing(lang, lot.finished_at.as_deref().map(i18n::date_time))}</li>
                <li><strong>{lang.tr("Inspection SQAL du lot", "SQAL inspection of the lot")}</strong>" — "{or_missing(lang, inspection_started)}</li>
                <li><strong>{lang.tr("Mesure et notation du foie", "Liver measured and graded")}</strong>" — "{format!("{} ({}, {})", i18n::date_time(&sample.measured_at), sample.device_id, product.grade)}</li>
                <li><strong>{lang.tr("Produit créé", "Product created")}</strong>" — "{i18n::date_time(&product.created_at)}</li>
            </ol>
        </section>
    }
}

fn event_name(lang: Lang, kind: &str) -> &'static str {
    match kind {
        "lot_created" => lang.tr("Lot créé", "Lot created"),
        "gavage_finished" => lang.tr("Gavage terminé", "Gavage finished"),
        "inspection_started" => lang.tr("Inspection commencée", "Inspection started"),
        "sample_graded" => lang.tr("Mesure notée", "Sample graded"),
        "product_created" => lang.tr("Produit créé", "Product created"),
        _ => lang.tr(
            "Autre mesure ou produit du lot",
            "Other sample or product of the lot",
        ),
    }
}

/// Result of the hash-chain check with the events behind it.
#[component]
fn IntegrityCard(proof: IntegrityProof, token: String) -> impl IntoView {
    let lang = use_lang();
    let (class, verdict) = match proof.status {
        IntegrityStatus::Verified => (
            "notice success",
            lang.tr(
                "Historique intact : chaque étape est scellée et rien n'a été modifié depuis.",
                "History intact: every step is sealed and nothing has changed since.",
            ),
        ),
        IntegrityStatus::Failed => (
            "notice error",
            lang.tr(
                "Vérification échouée : des données ont été modifiées après leur enregistrement.",
                "Verification failed: data were changed after they were recorded.",
            ),
        ),
        IntegrityStatus::Missing => (
            "notice info",
            lang.tr(
                "Aucun historique scellé pour ce lot (enregistré avant la mise en place du scellement).",
                "No sealed history for this lot (recorded before sealing existed).",
            ),
        ),
    };
    let steps = proof
        .events
        .iter()
        .map(|event| {
            view! {
                <li>
                    <strong>{event_name(lang, &event.kind)}</strong>
                    " — "{i18n::date_time(&event.recorded_at)}
                    <br/><code class="hash">{event.hash[..16].to_string()}"…"</code>
                </li>
            }
        })
        .collect_view();
    let problems = proof
        .problems
        .iter()
        .map(|problem| view! { <li>{problem.clone()}</li> })
        .collect_view();
    view! {
        <section class="card integrity" data-testid="integrity" data-status=format!("{:?}", proof.status).to_lowercase()>
            <h2>{lang.tr("Intégrité", "Integrity")}</h2>
            <p class=class>{verdict}</p>
            <ul class="problems">{problems}</ul>
            <ol class="steps">{steps}</ol>
            <p><a href=format!("/api/trace/{token}/verify")>{lang.tr("Preuve complète (JSON)", "Full proof (JSON)")}</a></p>
        </section>
    }
}

/// Link to this page with a share button. The button appears once the
/// page runs JavaScript: it opens the phone's share sheet (Web Share API)
/// or, where there is none, copies the link. Without JavaScript the link
/// shows as text to copy. An island: the only part of this page that the
/// browser hydrates.
#[island]
fn ShareLink(path: String) -> impl IntoView {
    let lang = use_lang();
    let interactive = RwSignal::new(false);
    let message = RwSignal::new(None::<&'static str>);
    Effect::new(move |_| interactive.set(true));
    let share = move |_| {
        #[cfg(feature = "hydrate")]
        {
            use wasm_bindgen::JsCast;
            let Some(window) = web_sys::window() else {
                return;
            };
            let location = window.location();
            let url = format!(
                "{}{}",
                location.origin().unwrap_or_default(),
                location.pathname().unwrap_or_default()
            );
            let navigator = window.navigator();
            let share = js_sys::Reflect::get(&navigator, &"share".into())
                .ok()
                .and_then(|value| value.dyn_into::<js_sys::Function>().ok());
            match share {
                Some(share) => {
                    let data = js_sys::Object::new();
                    let _ = js_sys::Reflect::set(&data, &"title".into(), &"Filière".into());
                    let _ = js_sys::Reflect::set(&data, &"url".into(), &url.into());
                    let _ = share.call1(&navigator, &data);
                }
                None => {
                    let _ = navigator.clipboard().write_text(&url);
                    message.set(Some(lang.tr("Lien copié.", "Link copied.")));
                }
            }
        }
    };
    view! {
        <p class="share-url"><code>{path.clone()}</code></p>
        <Show when=move || interactive.get()>
            <button type="button" class="share-button" data-testid="share" on:click=share>
                {lang.tr("Partager ce produit", "Share this product")}
            </button>
        </Show>
        {move || message.get().map(|text| view! { <p class="muted" role="status">{text}</p> })}
    }
}

/// Compares the QR payload's hints (`?lot=…&grade=…`) with the stored
/// product, and explains a mismatch: the stored values are the ones shown.
fn hint_mismatch(lang: Lang, code_lot: &str, grade: Grade) -> Option<String> {
    let query = use_query_map();
    let (hinted_lot, hinted_grade) =
        query.with_untracked(|query| (query.get("lot"), query.get("grade")));
    let lot_differs = hinted_lot.as_deref().is_some_and(|hint| hint != code_lot);
    let grade_differs = hinted_grade
        .as_deref()
        .is_some_and(|hint| hint != grade.as_str());
    if !lot_differs && !grade_differs {
        return None;
    }
    Some(format!(
        "{} {} / {}. {}",
        lang.tr("Le QR code indiquait", "The QR code said"),
        hinted_lot.unwrap_or_default(),
        hinted_grade.unwrap_or_default(),
        lang.tr(
            "Les valeurs affichées sont celles enregistrées par la coopérative.",
            "The values shown are the ones the cooperative recorded."
        )
    ))
}

/// Feeding curve of the lot: maize per duck and per day as bars, mean live
/// weight after the day's last meal as a line.
#[component]
fn FeedingCurve(meals: Vec<MealPoint>) -> impl IntoView {
    let lang = use_lang();
    if meals.is_empty() {
        return view! { <p class="muted">{lang.tr("Aucun repas enregistré.", "No meal recorded.")}</p> }.into_any();
    }
    // (day, total dose of the day in g, mean weight after its last meal in g)
    let mut days: Vec<(i64, f64, f64)> = Vec::new();
    for meal in &meals {
        match days.last_mut() {
            Some(day) if day.0 == meal.jour => {
                day.1 += meal.dose_reelle;
                day.2 = meal.poids_moyen;
            }
            _ => days.push((meal.jour, meal.dose_reelle, meal.poids_moyen)),
        }
    }

    const WIDTH: f64 = 320.0;
    const HEIGHT: f64 = 180.0;
    const LEFT: f64 = 34.0;
    const RIGHT: f64 = 34.0;
    const TOP: f64 = 10.0;
    const BOTTOM: f64 = 24.0;
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let max_dose = days.iter().map(|day| day.1).fold(1.0, f64::max);
    let min_weight = days.iter().map(|day| day.2).fold(f64::MAX, f64::min);
    let max_weight = days.iter().map(|day| day.2).fold(f64::MIN, f64::max);
    let weight_span = (max_weight - min_weight).max(1.0);
    let slot = plot_width / days.len() as f64;

    let bars = days
        .iter()
        .enumerate()
        .map(|(index, (jour, dose, _))| {
            let height = plot_height * dose / max_dose;
            view! {
                <rect class="dose" x=format!("{:.1}", LEFT + index as f64 * slot + slot * 0.15) y=format!("{:.1}", TOP + plot_height - height)
                    width=format!("{:.1}", slot * 0.7) height=format!("{height:.1}")>
                    <title>{format!("{} {jour} : {dose:.0} g", lang.tr("jour", "day"))}</title>
                </rect>
            }
        })
        .collect_view();
    let points = days
        .iter()
        .enumerate()
        .map(|(index, (_, _, weight))| {
            let x = LEFT + (index as f64 + 0.5) * slot;
            let y = TOP + plot_height * (1.0 - (weight - min_weight) / weight_span);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ");
    let last_day = days.last().map(|day| day.0).unwrap_or(0);

    view! {
        <svg class="feeding" viewBox=format!("0 0 {WIDTH} {HEIGHT}") role="img"
            aria-label=lang.tr("Courbe de gavage", "Feeding curve")>
            {bars}
            <polyline class="weight" points=points fill="none"/>
            <text x="2" y=format!("{}", TOP + 8.0) font-size="9">{format!("{max_dose:.0} g")}</text>
            <text x=format!("{}", WIDTH - RIGHT + 2.0) y=format!("{}", TOP + 8.0) font-size="9">{format!("{:.1} kg", max_weight / 1000.0)}</text>
            <text x=format!("{}", WIDTH - RIGHT + 2.0) y=format!("{}", TOP + plot_height) font-size="9">{format!("{:.1} kg", min_weight / 1000.0)}</text>
            <text x=format!("{LEFT}") y=format!("{}", HEIGHT - 8.0) font-size="9">{format!("{} 0", lang.tr("jour", "day"))}</text>
            <text x=format!("{}", WIDTH - RIGHT) y=format!("{}", HEIGHT - 8.0) font-size="9" text-anchor="end">{format!("{} {last_day}", lang.tr("jour", "day"))}</text>
        </svg>
        <p class="muted">{lang.tr(
            "Barres : maïs par canard et par jour (matin + soir). Ligne : poids vif moyen.",
            "Bars: maize per duck and per day (morning + evening). Line: mean live weight.",
        )}</p>
    }
    .into_any()
}

fn defect_name(lang: Lang, kind: DefectKind) -> &'static str {
    match kind {
        DefectKind::ForeignBody => lang.tr("corps étranger", "foreign body"),
        DefectKind::Deformation => lang.tr("déformation", "deformation"),
        DefectKind::DamagedEdge => lang.tr("bord abîmé", "damaged edge"),
    }
}

fn band_name(lang: Lang, band: Band) -> &'static str {
    match band {
        Band::Optimal => lang.tr("optimal", "optimal"),
        Band::Acceptable => lang.tr("acceptable", "acceptable"),
        Band::Out => lang.tr("hors plage", "out of range"),
    }
}

#[component]
pub fn SampleEvidence(sample: SampleView) -> impl IntoView {
    let lang = use_lang();
    let details = sample.details.clone();
    let weight = match &details {
        Some(details) => Some(format!(
            "{:.0} ± {:.0} g",
            details.estimated_weight_g, details.weight_uncertainty_g
        )),
        None => sample
            .estimated_weight_g
            .map(|weight| format!("{weight:.0} g")),
    };
    let heights = details.as_ref().map(|details| {
        format!(
            "{:.0} / {:.0} mm",
            details.height_mean_mm, details.height_max_mm
        )
    });
    let volume = sample.volume_cm3.map(|volume| format!("{volume:.0} cm³"));
    let uniformity = sample
        .surface_uniformity
        .map(|uniformity| format!("{uniformity:.2}"));
    let defect_zones: Vec<(u32, u32)> = details
        .as_ref()
        .map(|details| details.defects.iter().map(|d| (d.row, d.col)).collect())
        .unwrap_or_default();
    view! {
        <dl class="facts">
            <dt>{lang.tr("Poste", "Station")}</dt><dd>{sample.device_id.clone()}</dd>
            <dt>{lang.tr("Poids estimé du foie", "Estimated liver weight")}</dt><dd data-testid="liver-weight">{or_missing(lang, weight)}</dd>
            <dt>{lang.tr("Hauteur moyenne / max", "Mean / max height")}</dt><dd>{or_missing(lang, heights)}</dd>
            <dt>{lang.tr("Volume", "Volume")}</dt><dd>{or_missing(lang, volume)}</dd>
            <dt>{lang.tr("Régularité de surface", "Surface uniformity")}</dt><dd>{or_missing(lang, uniformity)}</dd>
        </dl>
        <div class="evidence">
            <figure>
                <HeatMap distances=sample.tof_distances.clone() marked=defect_zones/>
                <figcaption>{lang.tr("Relief mesuré (ToF 8×8, hauteur en mm ; défauts encadrés)", "Measured relief (8×8 ToF, height in mm; defects outlined)")}</figcaption>
            </figure>
            <figure>
                <Spectrum counts=sample.as7341_counts.clone()/>
                <figcaption>{lang.tr("Spectre AS7341 (comptes bruts)", "AS7341 spectrum (raw counts)")}</figcaption>
            </figure>
        </div>
        {match details {
            None => view! {
                <p class="muted">{lang.tr("Indices et défauts non enregistrés pour cette mesure.", "Indices and defects not recorded for this measurement.")}</p>
            }.into_any(),
            Some(details) => view! { <SampleIndices details/> }.into_any(),
        }}
    }
}

/// Freshness, fat, oxidation and colour indices as meters, the defects
/// found on the surface, and the spectral ratios behind the indices.
#[component]
fn SampleIndices(details: SampleDetails) -> impl IntoView {
    let lang = use_lang();
    // (label, value, true when a higher value is better)
    let indices = [
        (
            lang.tr("Fraîcheur", "Freshness"),
            details.freshness_index,
            true,
        ),
        (
            lang.tr("Qualité du gras", "Fat quality"),
            details.fat_quality_index,
            true,
        ),
        (
            lang.tr("Oxydation", "Oxidation"),
            details.oxidation_index,
            false,
        ),
        (
            lang.tr("Homogénéité de couleur", "Colour uniformity"),
            details.colour_index,
            true,
        ),
    ];
    let meters = indices
        .into_iter()
        .map(|(label, value, higher_is_better)| {
            let (low, high, optimum) = if higher_is_better {
                (0.5, 0.75, 1.0)
            } else {
                (0.3, 0.7, 0.0)
            };
            view! {
                <div class="index-row">
                    <span>{label}</span>
                    <meter min="0" max="1" low=low high=high optimum=optimum value=value></meter>
                    <span class="index-value">{format!("{value:.2}")}</span>
                </div>
            }
        })
        .collect_view();
    let defects = if details.defects.is_empty() {
        view! { <p data-testid="defects">{lang.tr("Aucun défaut de surface détecté.", "No surface defect found.")}</p> }.into_any()
    } else {
        let items = details
            .defects
            .iter()
            .map(|defect| {
                view! {
                    <li>{format!(
                        "{} — {} {}, {} {} ({} {:.0} %)",
                        defect_name(lang, defect.kind),
                        lang.tr("ligne", "row"),
                        defect.row + 1,
                        lang.tr("colonne", "column"),
                        defect.col + 1,
                        lang.tr("gravité", "severity"),
                        defect.severity * 100.0
                    )}</li>
                }
            })
            .collect_view();
        view! { <ul class="defects" data-testid="defects">{items}</ul> }.into_any()
    };
    let ratios = details
        .ratios
        .iter()
        .map(|ratio| {
            view! {
                <tr>
                    <td>{ratio.name.clone()}</td>
                    <td>{format!("{:.3}", ratio.value)}</td>
                    <td>{format!("{:.3}–{:.3}", ratio.optimal.0, ratio.optimal.1)}</td>
                    <td>{band_name(lang, ratio.band)}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <h3>{lang.tr("Indices spectraux", "Spectral indices")}</h3>
        <div class="indices" data-testid="indices">{meters}</div>
        <h3>{lang.tr("Défauts", "Defects")}</h3>
        {defects}
        <details class="ratios">
            <summary>{lang.tr("Rapports spectraux", "Spectral ratios")}</summary>
            <table>
                <thead><tr>
                    <th>{lang.tr("Rapport", "Ratio")}</th>
                    <th>{lang.tr("Valeur", "Value")}</th>
                    <th>{lang.tr("Plage optimale", "Optimal range")}</th>
                    <th>{lang.tr("Position", "Position")}</th>
                </tr></thead>
                <tbody>{ratios}</tbody>
            </table>
        </details>
    }
}

/// 8×8 ToF frame as an SVG heat map: darker means a taller liver.
#[component]
pub fn HeatMap(
    distances: Vec<f64>,
    /// Zones to outline, as (row, column).
    #[prop(optional)]
    marked: Vec<(u32, u32)>,
) -> impl IntoView {
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
    let outlines = marked
        .into_iter()
        .map(|(row, col)| {
            view! {
                <rect class="defect-zone" x=col * 30 + 1 y=row * 18 + 1 width="28" height="16"
                    fill="none" stroke="#0b57d0" stroke-width="2"/>
            }
        })
        .collect_view();
    view! {
        <svg class="heatmap" viewBox="0 0 240 144" role="img" aria-label="ToF 8×8">
            {cells}
            {outlines}
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
        .zip(chain::views::AS7341_CHANNELS)
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
                <crate::scan::QrScanner/>
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
