//! The end-to-end demo page: starts and stops the simulators, runs the
//! whole chain in one click and follows it live until the QR code appears.

use crate::api::{self, StartResult};
use crate::i18n::{self, Lang};
use crate::trace::{HeatMap, Spectrum};
use crate::{use_lang, LangSwitch};
use chain::params::InvalidParam;
use chain::views::{
    AlertLevel, ChainSnapshot, Event, EventEnvelope, GradeCounts, GradedSample, LotProgress,
    ProductView, SampleDetails, TaskName, TaskState, TaskStatus,
};
use leptos::prelude::*;
use leptos::task::spawn_local;
use std::str::FromStr;

/// Seconds the page waits for the first product of a pipeline run.
const PRODUCT_WAIT_S: u64 = 60;
/// Lines kept in the event log.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
const LOG_LINES: usize = 40;

#[derive(Debug, Clone, PartialEq)]
enum Notice {
    Info(String),
    Success(String),
    Error(String),
}

fn invalid_message(lang: Lang, invalid: &InvalidParam) -> String {
    match lang {
        Lang::Fr => invalid.message_fr(),
        Lang::En => invalid.to_string(),
    }
}

/// Parses a form field, or names the field and the text it could not read.
fn parse_field<T: FromStr>(lang: Lang, field: &str, text: &str) -> Result<T, String> {
    text.trim()
        .replace(',', ".")
        .parse()
        .map_err(|_| match lang {
            Lang::Fr => format!("valeur invalide pour {field} : {text:?} n'est pas un nombre"),
            Lang::En => format!("invalid {field}: {text:?} is not a number"),
        })
}

fn state_label(lang: Lang, state: TaskState) -> &'static str {
    match state {
        TaskState::Stopped => lang.tr("arrêté", "stopped"),
        TaskState::Starting => lang.tr("démarrage", "starting"),
        TaskState::Running => lang.tr("en cours", "running"),
        TaskState::Stopping => lang.tr("arrêt en cours", "stopping"),
        TaskState::Failed => lang.tr("en échec", "failed"),
    }
}

/// Lot status as stored (`en_gavage`, `pret_abattage`, queue statuses),
/// in words.
fn lot_status_label(lang: Lang, status: &str) -> String {
    let (base, verdict) = match status.split_once(' ') {
        Some((base, verdict)) => (base, Some(verdict.trim_matches(|c| c == '(' || c == ')'))),
        None => (status, None),
    };
    let label = match base {
        "en_gavage" => lang.tr("en gavage", "feeding"),
        "pret_abattage" | "pending" => lang.tr(
            "prêt abattage, en attente d'inspection",
            "ready for slaughter, awaiting inspection",
        ),
        "inspecting" => lang.tr("inspection SQAL", "SQAL inspection"),
        "inspected" => lang.tr("inspecté", "inspected"),
        "error" => lang.tr("erreur d'inspection", "inspection error"),
        "interrompu" => lang.tr("interrompu", "interrupted"),
        other => return other.to_string(),
    };
    match verdict {
        Some("approved") => format!("{label} — {}", lang.tr("lot accepté", "lot approved")),
        Some("rejected") => format!("{label} — {}", lang.tr("lot refusé", "lot rejected")),
        _ => label.to_string(),
    }
}

fn task_title(lang: Lang, task: TaskName) -> &'static str {
    match task {
        TaskName::Gavage => lang.tr("Simulateur de gavage", "Gavage simulator"),
        TaskName::Monitor => lang.tr("Moniteur de lots", "Lot monitor"),
        TaskName::Sqal => lang.tr("Station SQAL (ESP32)", "SQAL station (ESP32)"),
    }
}

/// Describes an event in one line of the event log.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn describe(lang: Lang, event: &Event) -> String {
    match event {
        Event::Task { status } => format!(
            "{} : {}",
            task_title(lang, status.task),
            state_label(lang, status.state)
        ),
        Event::LotCreated { lot, .. } => format!(
            "{} {} ({}, {})",
            lang.tr("Lot créé", "Lot created"),
            lot.code_lot,
            lot.gaveur,
            lot.genetique
        ),
        Event::MealRecorded { lot } => format!(
            "{} {} : {} {}/{}",
            lang.tr("Repas", "Meal"),
            lot.code_lot,
            lang.tr("jour", "day"),
            lot.jour,
            lot.duree_jours
        ),
        Event::LotFinished { code_lot } => format!(
            "{} {code_lot}",
            lang.tr("Prêt abattage :", "Ready for slaughter:")
        ),
        Event::LotClaimed { code_lot, .. } => format!(
            "{} {code_lot}",
            lang.tr("Inspection SQAL de", "SQAL inspection of")
        ),
        Event::SampleGraded { sample, .. } => match (&sample.grade, &sample.invalid_reason) {
            (Some(grade), _) => format!(
                "{} {} #{} : {grade}",
                lang.tr("Mesure", "Sample"),
                sample.code_lot,
                sample.sample_index
            ),
            (None, reason) => format!(
                "{} {} #{} : {} ({})",
                lang.tr("Mesure", "Sample"),
                sample.code_lot,
                sample.sample_index,
                lang.tr("mesure invalide", "measurement invalid"),
                reason.clone().unwrap_or_default()
            ),
        },
        Event::Queue {
            pending,
            inspecting,
        } => format!(
            "{} {pending} {}, {inspecting} {}",
            lang.tr("File d'inspection :", "Inspection queue:"),
            lang.tr("en attente", "waiting"),
            lang.tr("en cours", "in progress")
        ),
        Event::Snapshot { .. } => lang
            .tr("État complet resynchronisé", "Full state resynchronised")
            .to_string(),
        Event::ProductCreated { product, .. } => format!(
            "{} {} ({})",
            lang.tr("Produit créé", "Product created"),
            product.product_id,
            product.grade
        ),
        Event::LotInspected { code_lot, verdict } => format!(
            "{} {code_lot} : {verdict}",
            lang.tr("Lot inspecté", "Lot inspected")
        ),
    }
}

#[component]
pub fn DemoPage() -> impl IntoView {
    let lang = use_lang();
    let snapshot = Resource::new(|| (), |_| api::demo_snapshot());
    view! {
        <main class="page demo">
            <header class="top">
                <h1>{lang.tr("Filière — démo de bout en bout", "Filière — end-to-end demo")}</h1>
                <LangSwitch/>
            </header>
            <Suspense fallback=move || view! { <p>{lang.tr("Chargement…", "Loading…")}</p> }>
                {move || snapshot.get().map(|result| match result {
                    Ok(snapshot) => view! { <Live snapshot/> }.into_any(),
                    Err(error) => view! {
                        <p class="notice error" role="alert">{format!("{} {error}", lang.tr("État indisponible :", "State unavailable:"))}</p>
                    }.into_any(),
                })}
            </Suspense>
        </main>
    }
}

/// Parameter fields of the three tasks, prefilled with the demo defaults.
#[derive(Clone, Copy)]
struct Fields {
    nb_lots: RwSignal<String>,
    acceleration: RwSignal<String>,
    polling_interval: RwSignal<String>,
    device_id: RwSignal<String>,
    interval: RwSignal<String>,
    nb_samples: RwSignal<String>,
    profile: RwSignal<String>,
}

impl Fields {
    fn with_defaults() -> Self {
        let gavage = chain::params::GavageParams::default();
        let monitor = chain::params::MonitorParams::default();
        let sqal = chain::params::SqalParams::default();
        Fields {
            nb_lots: RwSignal::new(gavage.nb_lots.to_string()),
            acceleration: RwSignal::new(gavage.acceleration.to_string()),
            polling_interval: RwSignal::new(monitor.polling_interval.to_string()),
            device_id: RwSignal::new(sqal.device_id),
            interval: RwSignal::new(sqal.interval.to_string()),
            nb_samples: RwSignal::new(sqal.nb_samples.to_string()),
            profile: RwSignal::new(sqal.profile.as_str().to_string()),
        }
    }
}

/// Live state of the page: the snapshot it started from, kept current by
/// the event stream.
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
struct LiveState {
    position: RwSignal<String>,
    tasks: RwSignal<Vec<TaskStatus>>,
    lots: RwSignal<Vec<LotProgress>>,
    run_id: RwSignal<Option<String>>,
    products: RwSignal<Vec<ProductView>>,
    queue: RwSignal<(i64, i64)>,
    grade_counts: RwSignal<GradeCounts>,
    /// Samples up to this id are already in `grade_counts`.
    counted_up_to: RwSignal<i64>,
    latest_sample: RwSignal<Option<GradedSample>>,
    log: RwSignal<Vec<(u64, String)>>,
    connected: RwSignal<bool>,
    /// Browser clock time (HH:MM:SS) at which the stream dropped.
    lost_since: RwSignal<Option<String>>,
    /// Run whose first product the page waits for after a pipeline click.
    waiting_run: RwSignal<Option<String>>,
    shown: RwSignal<Option<ProductView>>,
    notice: RwSignal<Option<Notice>>,
}

impl LiveState {
    fn new(snapshot: ChainSnapshot) -> Self {
        LiveState {
            position: RwSignal::new(snapshot.position.clone()),
            tasks: RwSignal::new(Vec::new()),
            lots: RwSignal::new(Vec::new()),
            run_id: RwSignal::new(None),
            products: RwSignal::new(Vec::new()),
            queue: RwSignal::new((0, 0)),
            grade_counts: RwSignal::new(GradeCounts::default()),
            counted_up_to: RwSignal::new(0),
            latest_sample: RwSignal::new(None),
            log: RwSignal::new(Vec::new()),
            connected: RwSignal::new(false),
            lost_since: RwSignal::new(None),
            waiting_run: RwSignal::new(None),
            shown: RwSignal::new(None),
            notice: RwSignal::new(None),
        }
        .with_snapshot(snapshot)
    }

    /// Replaces everything the snapshot covers.
    fn with_snapshot(self, snapshot: ChainSnapshot) -> Self {
        self.position.set(snapshot.position);
        self.tasks.set(snapshot.tasks);
        self.run_id.set(snapshot.run_id);
        self.lots.set(snapshot.lots);
        self.products.set(snapshot.products);
        self.queue
            .set((snapshot.queue_pending, snapshot.queue_inspecting));
        self.grade_counts.set(snapshot.grade_counts);
        self.counted_up_to.set(snapshot.counted_up_to);
        self.latest_sample.set(snapshot.latest_sample);
        self
    }

    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    fn apply(&self, lang: Lang, envelope: EventEnvelope) {
        // Task events that only carry new counters would flood the log.
        let state_changed = match &envelope.event {
            Event::Task { status } => self.tasks.with_untracked(|tasks| {
                tasks
                    .iter()
                    .find(|known| known.task == status.task)
                    .is_none_or(|known| known.state != status.state)
            }),
            _ => true,
        };
        if state_changed {
            let line = describe(lang, &envelope.event);
            self.log.update(|log| {
                if log.first().is_none_or(|(id, _)| *id != envelope.id) {
                    log.insert(0, (envelope.id, line));
                    log.truncate(LOG_LINES);
                }
            });
        }
        match envelope.event {
            Event::Task { status } => self.set_task(status),
            Event::LotCreated { run_id, lot } => {
                if self.run_id.get_untracked().as_deref() != Some(run_id.as_str()) {
                    self.run_id.set(Some(run_id));
                    self.lots.set(Vec::new());
                    self.grade_counts.set(GradeCounts::default());
                }
                self.upsert_lot(lot);
            }
            Event::MealRecorded { lot } => self.upsert_lot(lot),
            Event::LotClaimed { code_lot, .. } => {
                self.set_lot_status(&code_lot, "inspecting".to_string())
            }
            Event::LotInspected { code_lot, verdict } => {
                self.set_lot_status(&code_lot, format!("inspected ({verdict})"))
            }
            Event::Queue {
                pending,
                inspecting,
            } => self.queue.set((pending, inspecting)),
            Event::SampleGraded { run_id, sample } => {
                let this_run = self.run_id.get_untracked().as_deref() == Some(run_id.as_str());
                if this_run && sample.sample_id > self.counted_up_to.get_untracked() {
                    self.counted_up_to.set(sample.sample_id);
                    self.grade_counts.update(|counts| counts.add(sample.grade));
                }
                self.latest_sample.set(Some(sample));
            }
            Event::ProductCreated { run_id, product } => {
                if self.waiting_run.get_untracked().as_deref() == Some(run_id.as_str()) {
                    self.show_run_product(lang, product.clone());
                }
                if self.products.with_untracked(|products| {
                    products.iter().all(|known| known.token != product.token)
                }) {
                    self.products.update(|products| {
                        products.insert(0, product);
                        products.truncate(50);
                    });
                }
            }
            Event::Snapshot { snapshot } => {
                self.with_snapshot(*snapshot);
            }
            Event::LotFinished { .. } => {}
        }
    }

    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    fn upsert_lot(&self, lot: LotProgress) {
        self.lots.update(|lots| {
            match lots.iter_mut().find(|known| known.code_lot == lot.code_lot) {
                Some(slot) => *slot = lot,
                None => lots.push(lot),
            }
        });
    }

    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    fn set_lot_status(&self, code_lot: &str, status: String) {
        self.lots.update(|lots| {
            if let Some(lot) = lots.iter_mut().find(|lot| lot.code_lot == code_lot) {
                lot.status = status;
            }
        });
    }

    fn show_run_product(&self, lang: Lang, product: ProductView) {
        self.waiting_run.set(None);
        self.notice.set(Some(Notice::Success(format!(
            "{} {} ({}, {})",
            lang.tr("Premier produit de ce run :", "First product of this run:"),
            product.product_id,
            product.code_lot,
            product.grade
        ))));
        self.shown.set(Some(product));
    }

    fn set_task(&self, status: TaskStatus) {
        self.tasks.update(|tasks| {
            if let Some(slot) = tasks.iter_mut().find(|task| task.task == status.task) {
                *slot = status;
            }
        });
    }
}

/// Everything on the demo page that changes after it loaded. An island: the
/// browser hydrates it from the snapshot the server serialised into its
/// props.
#[island]
fn Live(snapshot: ChainSnapshot) -> impl IntoView {
    let lang = use_lang();
    let state = LiveState::new(snapshot);
    let fields = Fields::with_defaults();

    #[cfg(feature = "hydrate")]
    Effect::new(move |_| stream::connect(lang, state));

    view! {
        <section class="card orchestration">
            <h2>"Orchestration"</h2>
            <PipelineControls state fields/>
            <div class="tasks">
                {TaskName::ALL.into_iter().map(|task| view! { <TaskCard task state fields/> }).collect_view()}
            </div>
        </section>
        <Checks state/>
        <div class="columns">
            <section class="card">
                <h2>{lang.tr("Produits et QR code", "Products and QR code")}</h2>
                <QrPanel state/>
                <ProductList state/>
            </section>
            <section class="card">
                <h2>{lang.tr("Lots en cours", "Lots in progress")}</h2>
                <LotTable state/>
                <h2>{lang.tr("Station SQAL", "SQAL station")}</h2>
                <SqalPanel state/>
            </section>
        </div>
        <section class="card">
            <h2>{lang.tr("Journal", "Event log")}</h2>
            <ol class="log" data-testid="event-log">
                <For each=move || state.log.get() key=|(id, _)| *id let:entry>
                    <li>{entry.1}</li>
                </For>
            </ol>
        </section>
    }
}

/// Shows, live, what an operator would otherwise check by hand.
#[component]
fn Checks(state: LiveState) -> impl IntoView {
    let lang = use_lang();
    let stream = move || match (state.connected.get(), state.lost_since.get()) {
        (true, _) => (
            "check ok",
            lang.tr(
                "Serveur joignable, flux en direct connecté",
                "Server reachable, live stream connected",
            )
            .to_string(),
        ),
        (false, Some(since)) => (
            "check bad",
            format!(
                "{} {since}",
                lang.tr("Connexion perdue depuis", "Connection lost since")
            ),
        ),
        (false, None) => (
            "check wait",
            lang.tr(
                "Connexion au flux en direct…",
                "Connecting to the live stream…",
            )
            .to_string(),
        ),
    };
    let latest = move || match state
        .products
        .with(|products| products.first().map(|product| product.product_id.clone()))
    {
        Some(id) => (
            "check ok",
            format!("{} {id}", lang.tr("Dernier produit :", "Latest product:")),
        ),
        None => (
            "check wait",
            lang.tr("Aucun produit pour l'instant", "No product yet")
                .to_string(),
        ),
    };
    let queue = move || {
        let (pending, inspecting) = state.queue.get();
        (
            if pending + inspecting > 0 {
                "check busy"
            } else {
                "check ok"
            },
            format!(
                "{} {pending} {}, {inspecting} {}",
                lang.tr("File d'inspection :", "Inspection queue:"),
                lang.tr("en attente", "waiting"),
                lang.tr("en inspection", "being inspected")
            ),
        )
    };
    let station = move || {
        let status = state
            .tasks
            .get()
            .into_iter()
            .find(|status| status.task == TaskName::Sqal);
        match status {
            Some(status) if status.state == TaskState::Failed => (
                "check bad",
                format!(
                    "{} {}",
                    lang.tr("Station SQAL en échec :", "SQAL station failed:"),
                    status.last_error.unwrap_or_default()
                ),
            ),
            Some(status) => (
                if status.state == TaskState::Running {
                    "check ok"
                } else {
                    "check wait"
                },
                format!(
                    "{} {}",
                    lang.tr("Station SQAL :", "SQAL station:"),
                    state_label(lang, status.state)
                ),
            ),
            None => ("check wait", String::new()),
        }
    };
    let item = |check: Box<dyn Fn() -> (&'static str, String) + Send + Sync>,
                test_id: &'static str| {
        let check = std::sync::Arc::new(check);
        let class_check = check.clone();
        view! {
            <li class=move || class_check().0 data-testid=test_id>{move || check().1}</li>
        }
    };
    view! {
        <section class="card">
            <h2>{lang.tr("Vérifications", "Checks")}</h2>
            <ul class="checks">
                {item(Box::new(stream), "check-stream")}
                {item(Box::new(latest), "check-product")}
                {item(Box::new(queue), "check-queue")}
                {item(Box::new(station), "check-station")}
            </ul>
        </section>
    }
}

/// Shows the latest sample's ToF heat map and spectrum, and the grade counts
/// of the current run.
#[component]
fn SqalPanel(state: LiveState) -> impl IntoView {
    let lang = use_lang();
    const LABELS: [&str; 6] = ["A+", "A", "B", "C", "REJECT", "?"];
    let bars = move || {
        let counts = state.grade_counts.get();
        let max = counts.0.iter().copied().max().unwrap_or(0).max(1) as f64;
        counts
            .0
            .iter()
            .enumerate()
            .map(|(index, count)| {
                let width = 100.0 * *count as f64 / max;
                view! {
                    <div class="bar-row">
                        <span class="bar-label">{LABELS[index]}</span>
                        <span class=format!("bar bar-{index}") style=format!("width: {width:.0}%")></span>
                        <span class="bar-value">{*count}</span>
                    </div>
                }
            })
            .collect_view()
    };
    view! {
        <div class="grade-chart" data-testid="grade-counts" aria-label=lang.tr("Répartition des grades", "Grade counts")>
            {bars}
        </div>
        <p class="muted">{lang.tr("« ? » : mesure invalide", "“?”: measurement invalid")}</p>
        {move || match state.latest_sample.get() {
            None => view! { <p class="muted">{lang.tr("Aucune mesure pour l'instant.", "No sample yet.")}</p> }.into_any(),
            Some(sample) => view! {
                <p>
                    {format!(
                        "{} {} #{} : {} ({} {})",
                        lang.tr("Dernière mesure", "Latest sample"),
                        sample.code_lot,
                        sample.sample_index,
                        sample.grade.map(|grade| grade.to_string()).unwrap_or_else(|| lang.tr("invalide", "invalid").to_string()),
                        lang.tr("score", "score"),
                        i18n::score(sample.final_score)
                    )}
                </p>
                <div class="evidence" data-testid="latest-sample">
                    <figure>
                        <HeatMap
                            distances=sample.tof_distances.clone()
                            marked=sample.details.as_ref().map(|details| details.defects.iter().map(|d| (d.row, d.col)).collect()).unwrap_or_default()
                        />
                        <figcaption>{lang.tr("ToF 8×8 (hauteur en mm ; défauts encadrés)", "8×8 ToF (height in mm; defects outlined)")}</figcaption>
                    </figure>
                    <figure>
                        <Spectrum counts=sample.as7341_counts.clone()/>
                        <figcaption>{lang.tr("Spectre AS7341", "AS7341 spectrum")}</figcaption>
                    </figure>
                </div>
                <SampleAlerts details=sample.details.clone()/>
            }.into_any(),
        }}
    }
}

/// Alerts raised by the latest sample, most severe first, or a line saying
/// there are none.
#[component]
fn SampleAlerts(details: Option<SampleDetails>) -> impl IntoView {
    let lang = use_lang();
    let Some(details) = details else {
        return ().into_any();
    };
    if details.alerts.is_empty() {
        return view! { <p class="muted" data-testid="alerts">{lang.tr("Aucune alerte.", "No alert.")}</p> }
            .into_any();
    }
    let mut alerts = details.alerts;
    alerts.sort_by_key(|alert| alert.level != AlertLevel::Critical);
    let items = alerts
        .into_iter()
        .map(|alert| {
            let (class, level) = match alert.level {
                AlertLevel::Critical => ("alert critical", lang.tr("critique", "critical")),
                AlertLevel::Warning => ("alert warning", lang.tr("attention", "warning")),
            };
            view! {
                <li class=class>{format!("{level} : {} = {:.2} ({} {:.2})", alert.code, alert.value, lang.tr("seuil", "limit"), alert.limit)}</li>
            }
        })
        .collect_view();
    view! { <ul class="alerts" data-testid="alerts">{items}</ul> }.into_any()
}

#[component]
fn PipelineControls(state: LiveState, fields: Fields) -> impl IntoView {
    let lang = use_lang();
    let start = move |_| {
        state.shown.set(None);
        let parsed = (|| {
            Ok::<_, String>((
                parse_field::<u32>(lang, "nb_lots", &fields.nb_lots.get_untracked())?,
                parse_field::<f64>(lang, "acceleration", &fields.acceleration.get_untracked())?,
                parse_field::<u32>(lang, "nb_samples", &fields.nb_samples.get_untracked())?,
                parse_field::<f64>(lang, "interval", &fields.interval.get_untracked())?,
            ))
        })();
        let (nb_lots, acceleration, nb_samples, interval) = match parsed {
            Ok(values) => values,
            Err(message) => {
                state.notice.set(Some(Notice::Error(message)));
                return;
            }
        };
        state.notice.set(Some(Notice::Info(
            lang.tr("Démarrage du pipeline…", "Starting the pipeline…")
                .to_string(),
        )));
        spawn_local(async move {
            let started = match api::start_pipeline(
                nb_lots,
                acceleration,
                nb_samples,
                interval,
                fields.profile.get_untracked(),
            )
            .await
            {
                Ok(Ok(started)) => started,
                Ok(Err(invalid)) => {
                    state
                        .notice
                        .set(Some(Notice::Error(invalid_message(lang, &invalid))));
                    return;
                }
                Err(error) => {
                    state.notice.set(Some(Notice::Error(error.to_string())));
                    return;
                }
            };
            let run_id = started.run_id.clone();
            state.waiting_run.set(Some(run_id.clone()));
            for task in started.tasks {
                state.set_task(task);
            }
            state.notice.set(Some(Notice::Info(format!(
                "{} {run_id}…",
                lang.tr(
                    "En attente du premier produit du run",
                    "Waiting for the first product of run"
                )
            ))));
            // A product made before this page saw the run id came through the
            // stream unnoticed: ask once.
            if let Ok(Some(product)) = api::run_product(run_id.clone()).await {
                if state.waiting_run.get_untracked().as_deref() == Some(run_id.as_str()) {
                    state.show_run_product(lang, product);
                }
            }
            set_timeout(
                move || {
                    if state.waiting_run.get_untracked().as_deref() == Some(run_id.as_str()) {
                        state.waiting_run.set(None);
                        state.notice.set(Some(Notice::Error(format!(
                            "{} {PRODUCT_WAIT_S} s. {}",
                            lang.tr(
                                "Aucun produit de ce run après",
                                "No product from this run after"
                            ),
                            lang.tr(
                                "Vérifiez l'état des tâches ci-dessous et le journal du serveur.",
                                "Check the task states below and the server log."
                            )
                        ))));
                    }
                },
                std::time::Duration::from_secs(PRODUCT_WAIT_S),
            );
        });
    };

    view! {
        <div class="pipeline">
            <button class="primary" on:click=start>{lang.tr("Démarrer le pipeline (auto)", "Start pipeline (auto)")}</button>
            <p class="muted">{lang.tr(
                "Lance gavage, moniteur et station SQAL, puis attend le premier produit de ce run.",
                "Starts gavage, monitor and SQAL station, then waits for the first product of this run.",
            )}</p>
            {move || state.notice.get().map(|notice| {
                let (class, text) = match notice {
                    Notice::Info(text) => ("notice info", text),
                    Notice::Success(text) => ("notice success", text),
                    Notice::Error(text) => ("notice error", text),
                };
                view! { <p class=class role="status" data-testid="pipeline-status">{text}</p> }
            })}
        </div>
    }
}

#[component]
fn TaskCard(task: TaskName, state: LiveState, fields: Fields) -> impl IntoView {
    let lang = use_lang();
    let error = RwSignal::new(None::<String>);
    let status = move || {
        state
            .tasks
            .get()
            .into_iter()
            .find(|status| status.task == task)
    };

    let start = move |_| {
        error.set(None);
        let request = async move {
            let result: Result<StartResult, String> = match task {
                TaskName::Gavage => {
                    let nb_lots = parse_field(lang, "nb_lots", &fields.nb_lots.get_untracked())?;
                    let acceleration =
                        parse_field(lang, "acceleration", &fields.acceleration.get_untracked())?;
                    api::start_gavage(nb_lots, acceleration)
                        .await
                        .map_err(|e| e.to_string())
                }
                TaskName::Monitor => {
                    let polling = parse_field(
                        lang,
                        "polling_interval",
                        &fields.polling_interval.get_untracked(),
                    )?;
                    api::start_monitor(polling).await.map_err(|e| e.to_string())
                }
                TaskName::Sqal => {
                    let interval = parse_field(lang, "interval", &fields.interval.get_untracked())?;
                    let nb_samples =
                        parse_field(lang, "nb_samples", &fields.nb_samples.get_untracked())?;
                    api::start_sqal(
                        fields.device_id.get_untracked(),
                        interval,
                        nb_samples,
                        fields.profile.get_untracked(),
                    )
                    .await
                    .map_err(|e| e.to_string())
                }
            };
            match result? {
                Ok(status) => {
                    state.set_task(status);
                    Ok(())
                }
                Err(invalid) => Err(invalid_message(lang, &invalid)),
            }
        };
        spawn_local(async move {
            if let Err(message) = request.await {
                error.set(Some(message));
            }
        });
    };
    let stop = move |_| {
        error.set(None);
        spawn_local(async move {
            match api::stop_task(task.as_str().to_string()).await {
                Ok(status) => state.set_task(status),
                Err(failure) => error.set(Some(failure.to_string())),
            }
        });
    };
    let resume = move |_| {
        error.set(None);
        spawn_local(async move {
            match api::resume_task(task.as_str().to_string()).await {
                Ok(Ok(status)) => state.set_task(status),
                Ok(Err(invalid)) => error.set(Some(invalid_message(lang, &invalid))),
                Err(failure) => error.set(Some(failure.to_string())),
            }
        });
    };

    let inputs = match task {
        TaskName::Gavage => view! {
            <label>"nb_lots"<input type="number" min="1" max="50" bind:value=fields.nb_lots/></label>
            <label>"acceleration"<input type="number" min="1" max="1000000000" bind:value=fields.acceleration/></label>
        }
        .into_any(),
        TaskName::Monitor => view! {
            <label>"polling_interval (s)"<input type="number" min="0.5" max="3600" step="0.5" bind:value=fields.polling_interval/></label>
        }
        .into_any(),
        TaskName::Sqal => view! {
            <label>"device_id"<input type="text" bind:value=fields.device_id/></label>
            <label>"interval (s)"<input type="number" min="0" max="60" step="0.01" bind:value=fields.interval/></label>
            <label>"nb_samples"<input type="number" min="1" max="200" bind:value=fields.nb_samples/></label>
            <label>"profile"
                <select
                    name="profile"
                    on:change=move |ev| fields.profile.set(event_target_value(&ev))
                    prop:value=move || fields.profile.get()
                >
                    {chain::params::QualityProfile::ALL
                        .into_iter()
                        .map(|profile| view! { <option value=profile.as_str()>{profile.as_str()}</option> })
                        .collect_view()}
                </select>
            </label>
        }
        .into_any(),
    };

    view! {
        <article class="task" data-task=task.as_str()>
            <header>
                <h3>{task_title(lang, task)}</h3>
                {move || status().map(|status| view! {
                    <span class=format!("badge state-{}", status.state.as_str()) data-testid=format!("state-{}", task.as_str())>
                        {state_label(lang, status.state)}
                    </span>
                })}
            </header>
            <div class="fields">{inputs}</div>
            <div class="buttons">
                <button on:click=start>{lang.tr("Démarrer", "Start")}</button>
                <button on:click=stop>{lang.tr("Arrêter", "Stop")}</button>
            </div>
            {move || status().map(|status| {
                let counters = status.counters.clone();
                let counts = match task {
                    TaskName::Gavage => format!("{} lots, {} {}", counters.lots, counters.meals, lang.tr("repas", "meals")),
                    TaskName::Monitor => format!("{} {}", counters.lots, lang.tr("lots transmis", "lots handed over")),
                    TaskName::Sqal => format!("{} {}, {} {}", counters.samples, lang.tr("mesures", "samples"), counters.products, lang.tr("produits", "products")),
                };
                // The start time, not a running uptime: rendering the time
                // since start would differ between server and browser.
                let since = status.started_at.as_deref().map(|started| format!(
                    "{} {}",
                    lang.tr("Démarré le", "Started on"),
                    i18n::date_time(started)
                ));
                let elsewhere = status.elsewhere.clone().map(|instance| view! {
                    <p class="notice info" data-testid=format!("elsewhere-{}", task.as_str())>
                        {format!(
                            "{} {instance}. {}",
                            lang.tr("En cours sur l'instance", "Running on instance"),
                            lang.tr("Pour l'arrêter, passez par cette instance.", "Stop it from that instance."),
                        )}
                    </p>
                });
                let interrupted = status.interrupted.then(|| view! {
                    <div class="notice info" data-testid=format!("interrupted-{}", task.as_str())>
                        <p>
                            {lang.tr(
                                "Interrompu par un arrêt brutal du serveur. La reprise relance la tâche avec ses paramètres ; le gavage reprend ses lots au repas suivant.",
                                "Cut short when the server stopped abruptly. Resuming starts the task again with its parameters; the gavage takes its lots up at their next meal.",
                            )}
                        </p>
                        <button on:click=resume data-testid=format!("resume-{}", task.as_str())>
                            {lang.tr("Reprendre", "Resume")}
                        </button>
                    </div>
                });
                view! {
                    <p class="counters">{counts}</p>
                    {elsewhere}
                    {interrupted}
                    {since.map(|since| view! { <p class="muted">{since}</p> })}
                    {status.note.map(|note| view! { <p class="muted">{note}</p> })}
                    {status.last_error.map(|failure| view! { <p class="notice error">{failure}</p> })}
                }
            })}
            {move || error.get().map(|message| view! { <p class="notice error" role="alert">{message}</p> })}
        </article>
    }
}

#[component]
fn QrPanel(state: LiveState) -> impl IntoView {
    let lang = use_lang();
    view! {
        {move || match state.shown.get() {
            None => view! { <p class="muted">{lang.tr("Aucun QR code affiché.", "No QR code shown.")}</p> }.into_any(),
            Some(product) => {
                let payload = product.qr_payload.clone();
                let copied = RwSignal::new(false);
                let copy_payload = payload.clone();
                let copy = move |_| {
                    #[cfg(feature = "hydrate")]
                    if let Some(window) = web_sys::window() {
                        let _ = window.navigator().clipboard().write_text(&copy_payload);
                        copied.set(true);
                    }
                    #[cfg(not(feature = "hydrate"))]
                    let _ = &copy_payload;
                };
                view! {
                    <figure class="qr" data-testid="qr-code">
                        <img src=format!("/qr/{}.svg", product.token) alt=format!("QR code {}", product.product_id) width="240" height="240"/>
                        <figcaption>
                            <strong>{product.product_id.clone()}</strong>
                            {format!(" — {} — {} {}", product.code_lot, lang.tr("grade", "grade"), product.grade)}
                        </figcaption>
                    </figure>
                    <p class="payload"><code data-testid="qr-payload">{payload.clone()}</code></p>
                    <div class="buttons">
                        <button on:click=copy>{move || if copied.get() { lang.tr("Copié", "Copied") } else { lang.tr("Copier le lien", "Copy link") }}</button>
                        <a class="button" href=payload target="_blank" rel="external noopener" data-testid="qr-open">
                            {lang.tr("Ouvrir la page de traçabilité", "Open the trace page")}
                        </a>
                    </div>
                }.into_any()
            }
        }}
    }
}

#[component]
fn ProductList(state: LiveState) -> impl IntoView {
    let lang = use_lang();
    let filter = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let load = move |_| {
        error.set(None);
        let code_lot = filter.get_untracked();
        spawn_local(async move {
            match api::load_products(code_lot.clone()).await {
                Ok(products) => {
                    if products.is_empty() {
                        error.set(Some(format!(
                            "{} {code_lot}",
                            lang.tr("Aucun produit pour", "No product for")
                        )));
                    }
                    state.shown.set(products.first().cloned());
                    state.products.set(products);
                }
                Err(failure) => error.set(Some(failure.to_string())),
            }
        });
    };
    view! {
        <div class="product-filter">
            <label>"code_lot"<input type="text" placeholder="LL2612001" bind:value=filter/></label>
            <button on:click=load>{lang.tr("Charger produits / QR", "Load products / QR")}</button>
        </div>
        {move || error.get().map(|message| view! { <p class="notice error" role="alert">{message}</p> })}
        <table class="products">
            <thead>
                <tr>
                    <th>{lang.tr("Produit", "Product")}</th>
                    <th>"code_lot"</th>
                    <th>"Grade"</th>
                    <th>"Score"</th>
                    <th></th>
                </tr>
            </thead>
            <tbody>
                <For each=move || state.products.get() key=|product| product.token.clone() let:product>
                    <tr>
                        <td><a href=format!("/trace/{}", product.token) rel="external">{product.product_id.clone()}</a></td>
                        <td>{product.code_lot.clone()}</td>
                        <td>{product.grade.as_str()}</td>
                        <td>{i18n::score(product.final_score)}</td>
                        <td>
                            <button class="small" on:click={
                                let product = product.clone();
                                move |_| state.shown.set(Some(product.clone()))
                            }>"QR"</button>
                        </td>
                    </tr>
                </For>
            </tbody>
        </table>
    }
}

#[component]
fn LotTable(state: LiveState) -> impl IntoView {
    let lang = use_lang();
    view! {
        <table class="lots">
            <thead>
                <tr>
                    <th>"code_lot"</th>
                    <th>{lang.tr("Gaveur", "Gaveur")}</th>
                    <th>{lang.tr("Avancement", "Progress")}</th>
                    <th>{lang.tr("Poids moyen", "Mean weight")}</th>
                    <th>{lang.tr("Mortalité", "Mortality")}</th>
                    <th>{lang.tr("Statut", "Status")}</th>
                </tr>
            </thead>
            <tbody>
                <For each=move || state.lots.get() key=|lot| (lot.code_lot.clone(), lot.meals_done, lot.status.clone()) let:lot>
                    <tr data-testid="lot-row">
                        <td>{lot.code_lot.clone()}<br/><span class="muted">{lot.genetique.clone()}</span></td>
                        <td>{lot.gaveur.clone()}</td>
                        <td>
                            <progress max=lot.meals_total value=lot.meals_done></progress>
                            <br/>
                            <span class="muted">{format!("{} {}/{} · {}/{} {}", lang.tr("jour", "day"), lot.jour, lot.duree_jours, lot.meals_done, lot.meals_total, lang.tr("repas", "meals"))}</span>
                        </td>
                        <td>{lot.poids_moyen.map(|weight| format!("{:.2} kg", weight / 1000.0)).unwrap_or_else(|| "—".to_string())}</td>
                        <td>
                            {lot.taux_mortalite.map(|rate| format!("{rate:.1} %")).unwrap_or_else(|| "—".to_string())}
                            <br/>
                            <span class="muted">{lot.nb_canards_vivants.map(|alive| format!("{alive} {}", lang.tr("vivants", "alive"))).unwrap_or_default()}</span>
                        </td>
                        <td>{lot_status_label(lang, &lot.status)}</td>
                    </tr>
                </For>
            </tbody>
        </table>
    }
}

#[cfg(feature = "hydrate")]
mod stream {
    //! The browser side of the event stream.

    use super::LiveState;
    use crate::i18n::Lang;
    use leptos::prelude::*;
    use wasm_bindgen::closure::Closure;
    use wasm_bindgen::JsCast;

    /// Opens `/api/events` after the snapshot's position and applies each
    /// event to the page. After a drop the browser reconnects by itself and
    /// sends the last position it saw, so the server replays what was missed.
    pub fn connect(lang: Lang, state: LiveState) {
        let url = format!("/api/events?after={}", state.position.get_untracked());
        let Ok(source) = web_sys::EventSource::new(&url) else {
            state.connected.set(false);
            return;
        };
        let on_message = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(
            move |message: web_sys::MessageEvent| {
                let Some(text) = message.data().as_string() else {
                    return;
                };
                match crate::events::parse_envelope(&text) {
                    Ok(envelope) => state.apply(lang, envelope),
                    Err(error) => leptos::logging::warn!("unreadable event: {error}"),
                }
            },
        );
        source.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        on_message.forget();

        let on_open = Closure::<dyn FnMut()>::new(move || {
            state.connected.set(true);
            state.lost_since.set(None);
        });
        source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        on_open.forget();

        let on_error = Closure::<dyn FnMut()>::new(move || {
            state.connected.set(false);
            if state.lost_since.get_untracked().is_none() {
                let now = js_sys::Date::new_0();
                let time = format!(
                    "{:02}:{:02}:{:02}",
                    now.get_hours(),
                    now.get_minutes(),
                    now.get_seconds()
                );
                state.lost_since.set(Some(time));
            }
        });
        source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        on_error.forget();

        let source = send_wrapper::SendWrapper::new(source);
        on_cleanup(move || source.close());
    }
}
