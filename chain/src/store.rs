//! Storage of the chain on SQLite (the embedded default) or PostgreSQL,
//! through sqlx's `Any` driver. Queries use `$n` placeholders, which both
//! engines accept, except the multi-row statements, whose placeholders are
//! anonymous on SQLite (see `placeholder_rows`). Each engine has its own
//! migration folder.

use crate::gavage::MealOutcome;
use crate::grade::Grade;
use crate::ledger;
use crate::monitor::ClaimedLot;
use crate::params::InvalidParam;
use crate::sqal::{Analysis, Measurement};
use crate::views::{
    GradeCounts, GradedSample, IntegrityProof, IntegrityStatus, LotProgress, LotView, MealPoint,
    ProductView, ProofEvent, SampleDetails, SampleView, TaskName, TraceView,
};
use anyhow::Context;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};
use std::time::Duration;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    /// Connections for writes. SQLite allows one writer at a time, so its
    /// write pool has one connection and writers queue here instead of
    /// failing with "database is locked".
    write: AnyPool,
    /// Connections for reads; on PostgreSQL the same pool as `write`.
    read: AnyPool,
    engine: Engine,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gaveur {
    pub id: i64,
    pub nom: String,
    pub site: String,
}

pub struct NewLot<'a> {
    pub run_id: &'a str,
    pub gaveur_id: i64,
    pub site: &'a str,
    pub genetique: &'a str,
    pub nb_canards: u32,
    pub duree_jours: u32,
    pub started_at: String,
}

/// A meal ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct MealRow {
    pub code_lot: String,
    pub jour: i64,
    pub moment: &'static str,
    pub dose_theorique: f64,
    pub dose_reelle: f64,
    pub poids_moyen: f64,
    pub nb_canards_vivants: i64,
    pub taux_mortalite: f64,
    pub temperature: f64,
    pub humidite: f64,
    pub sim_time: String,
}

impl MealRow {
    pub fn from_outcome(code_lot: &str, meal: &MealOutcome, sim_time: String) -> MealRow {
        MealRow {
            code_lot: code_lot.to_string(),
            jour: meal.jour as i64,
            moment: meal.moment.as_str(),
            dose_theorique: meal.dose_theorique,
            dose_reelle: meal.dose_reelle,
            poids_moyen: meal.poids_moyen,
            nb_canards_vivants: meal.nb_canards_vivants as i64,
            taux_mortalite: meal.taux_mortalite,
            temperature: meal.temperature,
            humidite: meal.humidite,
            sim_time,
        }
    }
}

/// Outcome of `Store::ingest_meal` for one meal.
#[derive(Debug, Clone, PartialEq)]
pub enum MealStored {
    Stored {
        meal_id: i64,
        pret_abattage: bool,
    },
    /// The lot already has this meal.
    Duplicate,
    /// The meal does not fit its lot; nothing was written.
    Refused(InvalidParam),
}

/// A stored meal of a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredMeal {
    pub meal_id: i64,
    /// True when it was its lot's last meal.
    pub pret_abattage: bool,
}

/// Outcome of `Store::ingest_meals` for a batch of meals.
#[derive(Debug, Clone, PartialEq)]
pub enum MealBatchStored {
    /// Every meal was stored; one entry per meal, in the order given.
    Stored(Vec<StoredMeal>),
    /// The meal at `index` was a duplicate or refused (never
    /// `MealStored::Stored`), so nothing of the batch was written.
    Stopped { index: usize, outcome: MealStored },
}

/// Meals per multi-row insert, 12 parameters each. With named `$N`
/// parameters, sqlx 0.8's SQLite driver made the cost per row grow with the
/// statement: 1,350 meals took about 19 ms in chunks of 16 or 50 rows and
/// 150 ms in chunks of 400 (bench/chain_throughput.py, release, 2 cores).
/// SQLite statements now bind by position (see `placeholder_rows`).
const MEALS_PER_INSERT: usize = 32;
/// Lot codes per `IN (…)` read.
const LOTS_PER_READ: usize = 500;
/// Lots per multi-row insert, 9 parameters each.
const LOTS_PER_INSERT: usize = 32;

/// State of a lot that a batch of meals is checked against: the lot as
/// stored, advanced by the batch's earlier meals.
struct LotForMeals {
    status: String,
    duree: i64,
    nb_canards: i64,
    meals_done: i64,
}

impl LotForMeals {
    /// Checks that `meal` is the lot's next meal and fits the lot.
    fn check(&self, meal: &MealRow) -> Result<(), MealStored> {
        let refuse = |field: &str, value: String, allowed: String| {
            Err(MealStored::Refused(InvalidParam::new(
                field, value, allowed,
            )))
        };
        let index = 2 * meal.jour + i64::from(meal.moment == "soir");
        if index < self.meals_done {
            return Err(MealStored::Duplicate);
        }
        if self.status != "en_gavage" {
            return refuse(
                "code_lot",
                format!("{} ({})", meal.code_lot, self.status),
                "a lot in gavage (en_gavage)".into(),
            );
        }
        if meal.jour > self.duree {
            return refuse(
                "jour",
                meal.jour.to_string(),
                format!("0..={} for this lot", self.duree),
            );
        }
        if meal.nb_canards_vivants > self.nb_canards {
            return refuse(
                "nb_canards_vivants",
                meal.nb_canards_vivants.to_string(),
                format!("0..={}, the lot's ducks", self.nb_canards),
            );
        }
        if index > self.meals_done {
            let next = if self.meals_done % 2 == 0 {
                "matin"
            } else {
                "soir"
            };
            return refuse(
                "jour",
                format!("{} {}", meal.jour, meal.moment),
                format!(
                    "the next meal of the lot: jour {} {next}",
                    self.meals_done / 2
                ),
            );
        }
        Ok(())
    }
}

pub struct SampleRow<'a> {
    pub code_lot: &'a str,
    pub sample_index: u32,
    pub device_id: &'a str,
    pub measurement: &'a Measurement,
    pub analysis: &'a Analysis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SampleOutcome {
    /// Row id of the new sample, or `None` when an earlier attempt at the
    /// same lot already stored this sample.
    pub sample_id: Option<i64>,
    pub product: Option<ProductView>,
}

/// Turns `sqlite://file.db` into a URL that creates the file when missing.
fn sqlite_url_with_create(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

impl Engine {
    /// Returns the engine a connection talks to.
    pub fn of(connection: &sqlx::AnyConnection) -> Engine {
        if connection.backend_name() == "PostgreSQL" {
            Engine::Postgres
        } else {
            Engine::Sqlite
        }
    }
}

/// Placeholders of a multi-row `VALUES` list whose values are bound in
/// order from the first: `($1, $2), ($3, $4)` for two rows of two columns
/// on PostgreSQL, `(?, ?), (?, ?)` on SQLite. SQLite keeps the names of
/// `$N` parameters in a list, and sqlx searches that list for every
/// parameter it binds. A statement of a few hundred named parameters then
/// spends more time binding than running, while anonymous ones are bound by
/// position.
pub(crate) fn placeholder_rows(engine: Engine, rows: usize, columns: usize) -> String {
    placeholder_rows_from(engine, 1, rows, columns)
}

/// Returns the placeholders of a multi-row `VALUES` list, as
/// `placeholder_rows` does, numbered from `first` on PostgreSQL.
pub(crate) fn placeholder_rows_from(
    engine: Engine,
    first: usize,
    rows: usize,
    columns: usize,
) -> String {
    let mut text = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            text.push_str(", ");
        }
        text.push('(');
        text.push_str(&placeholder_run(engine, first + row * columns, columns));
        text.push(')');
    }
    text
}

/// Placeholders of an `IN (…)` list bound in order from the first:
/// `$1, $2, $3` on PostgreSQL, `?, ?, ?` on SQLite.
pub(crate) fn placeholder_list(engine: Engine, count: usize) -> String {
    placeholder_run(engine, 1, count)
}

/// `count` placeholders separated by commas, numbered from `first` on
/// PostgreSQL.
pub(crate) fn placeholder_run(engine: Engine, first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| placeholder(engine, n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A statement being bound, on either engine.
pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Returns the `n`th parameter of a statement whose parameters are all
/// bound in order: `$n` on PostgreSQL, `?` on SQLite.
pub(crate) fn placeholder(engine: Engine, n: usize) -> String {
    match engine {
        Engine::Postgres => format!("${n}"),
        Engine::Sqlite => "?".to_string(),
    }
}

/// The JSON columns of a sample, encoded once for the row and its event.
struct EncodedSample {
    tof_distances: String,
    as7341_counts: String,
    tof_reflectance: String,
    tof_amplitude: String,
    tof_ambient: String,
    tof_status: String,
    details: String,
}

impl EncodedSample {
    fn new(sample: &SampleRow<'_>) -> anyhow::Result<EncodedSample> {
        let measurement = sample.measurement;
        Ok(EncodedSample {
            tof_distances: serde_json::to_string(&measurement.tof_distances)?,
            as7341_counts: serde_json::to_string(&measurement.as7341_counts)?,
            tof_reflectance: serde_json::to_string(&measurement.tof_reflectance)?,
            tof_amplitude: serde_json::to_string(&measurement.tof_amplitude)?,
            tof_ambient: serde_json::to_string(&measurement.tof_ambient)?,
            tof_status: serde_json::to_string(&measurement.tof_status)?,
            details: serde_json::to_string(&sample.analysis.details)?,
        })
    }
}

/// Samples per multi-row insert, 22 parameters each; kept small for the
/// reason given at `MEALS_PER_INSERT`.
const SAMPLES_PER_INSERT: usize = 16;
/// Products per multi-row insert, 10 parameters each.
const PRODUCTS_PER_INSERT: usize = 32;

const PRODUCT_COLUMNS: &str =
    "p.product_id, p.token, p.code_lot, p.grade, p.final_score, p.tof_score, \
     p.as7341_score, p.qr_payload, p.created_at";

fn product_from_row(row: &AnyRow) -> anyhow::Result<ProductView> {
    let grade: String = row.try_get("grade")?;
    Ok(ProductView {
        product_id: row.try_get("product_id")?,
        token: row.try_get("token")?,
        code_lot: row.try_get("code_lot")?,
        grade: Grade::parse(&grade)
            .with_context(|| format!("unknown grade {grade:?} in products"))?,
        final_score: row.try_get("final_score")?,
        tof_score: row.try_get("tof_score")?,
        as7341_score: row.try_get("as7341_score")?,
        qr_payload: row.try_get("qr_payload")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Reads the `details` JSON column; `None` for samples stored before it.
fn stored_details(row: &AnyRow) -> anyhow::Result<Option<SampleDetails>> {
    let text: Option<String> = row.try_get("details")?;
    text.map(|text| serde_json::from_str(&text).context("stored sample details"))
        .transpose()
}

/// Attempts at inspecting one lot before it stays in `error`.
pub const MAX_INSPECTION_ATTEMPTS: i64 = 3;
/// Lots claimed and not yet inspected, across all monitors: one being
/// measured and the next ones ready for the station.
pub const MAX_LOTS_IN_FLIGHT: i64 = 8;
/// The monitor claims once this many places are free (or fewer when fewer
/// lots wait), so that one claim transaction serves several lots.
pub const CLAIM_BATCH: i64 = 4;

impl Store {
    /// Connects to `database_url` (`sqlite://…` or `postgres://…`) and applies
    /// the migrations of that engine.
    pub async fn connect(database_url: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let engine = if database_url.starts_with("sqlite:") {
            Engine::Sqlite
        } else if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
            Engine::Postgres
        } else {
            anyhow::bail!(
                "DATABASE_URL must start with sqlite: or postgres:, got {database_url:?}"
            );
        };

        let store = match engine {
            Engine::Sqlite => {
                let url = sqlite_url_with_create(database_url);
                let options = || {
                    AnyPoolOptions::new()
                        .acquire_timeout(Duration::from_secs(10))
                        .after_connect(|connection, _| {
                            Box::pin(async move {
                                sqlx::query("PRAGMA foreign_keys = ON")
                                    .execute(&mut *connection)
                                    .await?;
                                sqlx::query("PRAGMA busy_timeout = 5000")
                                    .execute(&mut *connection)
                                    .await?;
                                sqlx::query("PRAGMA synchronous = NORMAL")
                                    .execute(&mut *connection)
                                    .await?;
                                Ok(())
                            })
                        })
                };
                let write = options()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .with_context(|| format!("cannot open SQLite database {database_url}"))?;
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&write)
                    .await
                    .context("cannot switch SQLite to WAL mode")?;
                let read = options()
                    .max_connections(8)
                    .connect(&url)
                    .await
                    .with_context(|| format!("cannot open SQLite database {database_url}"))?;
                Store {
                    write,
                    read,
                    engine,
                }
            }
            Engine::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(database_url)
                    .await
                    .with_context(|| format!("cannot connect to PostgreSQL at {database_url}"))?;
                Store {
                    write: pool.clone(),
                    read: pool,
                    engine,
                }
            }
        };

        let migrator = match engine {
            Engine::Sqlite => &SQLITE_MIGRATIONS,
            Engine::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&store.write)
            .await
            .context("database migration failed")?;
        Ok(store)
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Checks that the database responds to a trivial query.
    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    pub async fn insert_gavage_run(
        &self,
        run_id: &str,
        nb_lots: u32,
        acceleration: f64,
        seed: u64,
    ) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO gavage_runs (run_id, started_at, nb_lots, acceleration, seed) VALUES ($1, $2, $3, $4, $5)")
            .bind(run_id)
            .bind(crate::time::now())
            .bind(nb_lots as i64)
            .bind(acceleration)
            // Stored bit for bit: the column is a signed 64-bit integer.
            .bind(seed as i64)
            .execute(&self.write)
            .await
            .context("insert gavage run")?;
        Ok(())
    }

    pub async fn gaveurs(&self) -> anyhow::Result<Vec<Gaveur>> {
        let rows = sqlx::query("SELECT id, nom, site FROM gaveurs ORDER BY id")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Gaveur {
                    id: row.try_get("id")?,
                    nom: row.try_get("nom")?,
                    site: row.try_get("site")?,
                })
            })
            .collect()
    }

    /// Creates a lot and returns its `code_lot`: site, YYMM of its start and
    /// the next sequence number of that site and month, kept in
    /// `lot_sequences` so that later runs never reuse a code.
    pub async fn create_lot(&self, lot: &NewLot<'_>) -> anyhow::Result<String> {
        let mut codes = self.create_lots(std::slice::from_ref(lot)).await?;
        Ok(codes.remove(0))
    }

    /// Creates lots in one transaction and returns their codes in the order
    /// given, numbered as `create_lot` called for each in turn would number
    /// them. A site and month past 999 lots fails the whole batch.
    pub async fn create_lots(&self, lots: &[NewLot<'_>]) -> anyhow::Result<Vec<String>> {
        let months: Vec<String> = lots
            .iter()
            .map(|lot| format!("{}{}", &lot.started_at[2..4], &lot.started_at[5..7]))
            .collect();
        let mut tx = self.write.begin().await?;

        // One sequence bump per site and month, for all its lots at once.
        let mut wanted: Vec<((&str, &str), i64)> = Vec::new();
        for (lot, yymm) in lots.iter().zip(&months) {
            let key = (lot.site, yymm.as_str());
            match wanted.iter_mut().find(|(seen, _)| *seen == key) {
                Some((_, count)) => *count += 1,
                None => wanted.push((key, 1)),
            }
        }
        let mut next_seq = std::collections::HashMap::with_capacity(wanted.len());
        for ((site, yymm), count) in wanted {
            let last: i64 = sqlx::query(
                "INSERT INTO lot_sequences (site, yymm, last_seq) VALUES ($1, $2, $3) \
                 ON CONFLICT (site, yymm) DO UPDATE SET last_seq = lot_sequences.last_seq + $3 \
                 RETURNING last_seq",
            )
            .bind(site)
            .bind(yymm)
            .bind(count)
            .fetch_one(&mut *tx)
            .await
            .context("next lot sequence")?
            .try_get("last_seq")?;
            anyhow::ensure!(
                last <= 999,
                "no code_lot left for site {site} in {yymm}: {} lots would pass 999",
                last
            );
            next_seq.insert((site, yymm), last - count + 1);
        }
        let codes: Vec<String> = lots
            .iter()
            .zip(&months)
            .map(|(lot, yymm)| {
                let seq = next_seq
                    .get_mut(&(lot.site, yymm.as_str()))
                    .expect("every site and month was counted");
                let code_lot = format!("{}{}{:03}", lot.site, yymm, *seq);
                *seq += 1;
                code_lot
            })
            .collect();

        for (chunk, chunk_codes) in lots
            .chunks(LOTS_PER_INSERT)
            .zip(codes.chunks(LOTS_PER_INSERT))
        {
            let sql = format!(
                "INSERT INTO lots (code_lot, run_id, gaveur_id, site, genetique, nb_canards, duree_jours, \
                 status, started_at) VALUES {}",
                placeholder_rows(self.engine, chunk.len(), 9)
            );
            let mut query = sqlx::query(&sql);
            for (lot, code_lot) in chunk.iter().zip(chunk_codes) {
                query = query
                    .bind(code_lot)
                    .bind(lot.run_id)
                    .bind(lot.gaveur_id)
                    .bind(lot.site)
                    .bind(lot.genetique)
                    .bind(lot.nb_canards as i64)
                    .bind(lot.duree_jours as i64)
                    .bind("en_gavage")
                    .bind(&lot.started_at);
            }
            query.execute(&mut *tx).await.with_context(|| {
                format!(
                    "insert lots {} to {}",
                    chunk_codes[0],
                    chunk_codes[chunk_codes.len() - 1]
                )
            })?;
        }
        let events: Vec<ledger::NewEvent> = lots
            .iter()
            .zip(&codes)
            .map(|(lot, code_lot)| {
                let payload = ledger::lot_created(
                    code_lot,
                    lot.gaveur_id,
                    lot.site,
                    lot.genetique,
                    lot.nb_canards as i64,
                    lot.duree_jours as i64,
                    &lot.started_at,
                );
                ledger::Head::genesis().chain(code_lot, ledger::LOT_CREATED, &payload)
            })
            .collect();
        ledger::insert(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(codes)
    }

    /// Stores one meal after checking it against its lot, in one
    /// transaction: the lot must be in gavage, the day within its planned
    /// duration, the living count at most its ducks, and the meal the next
    /// one due. The lot's last meal also marks it `pret_abattage` and queues
    /// it for inspection. A refused meal writes nothing.
    pub async fn ingest_meal(&self, meal: &MealRow) -> anyhow::Result<MealStored> {
        Ok(match self.ingest_meals(std::slice::from_ref(meal)).await? {
            MealBatchStored::Stored(stored) => MealStored::Stored {
                meal_id: stored[0].meal_id,
                pret_abattage: stored[0].pret_abattage,
            },
            MealBatchStored::Stopped { outcome, .. } => outcome,
        })
    }

    /// Stores meals of one or more lots in one transaction, checking each
    /// against its lot as `ingest_meal` does and in the order given, so a
    /// batch may carry several meals of one lot. The first meal that is
    /// refused or already stored stops the batch and nothing is written.
    ///
    /// A batch costs one lot read, one insert per `MEALS_PER_INSERT` meals
    /// and a few statements for the lots it finishes, where one transaction
    /// per meal costs four statements. The simulator stores every meal that falls due
    /// at once this way.
    pub async fn ingest_meals(&self, meals: &[MealRow]) -> anyhow::Result<MealBatchStored> {
        let mut tx = self.write.begin().await?;
        let mut lots = self.lots_for_meals(&mut tx, meals).await?;

        let mut finished = Vec::new();
        for (index, meal) in meals.iter().enumerate() {
            let stop = |outcome| Ok(MealBatchStored::Stopped { index, outcome });
            let Some(lot) = lots.get_mut(meal.code_lot.as_str()) else {
                return stop(MealStored::Refused(InvalidParam::new(
                    "code_lot",
                    meal.code_lot.clone(),
                    "a known lot",
                )));
            };
            match lot.check(meal) {
                Ok(()) => {}
                Err(outcome) => return stop(outcome),
            }
            lot.meals_done += 1;
            if meal.jour == lot.duree && meal.moment == "soir" {
                lot.status = "pret_abattage".to_string();
                finished.push(index);
            }
        }

        let mut ids = std::collections::HashMap::with_capacity(meals.len());
        for chunk in meals.chunks(MEALS_PER_INSERT) {
            Self::insert_meals(&mut tx, chunk, &mut ids).await?;
        }
        let last_meals: Vec<&MealRow> = finished.iter().map(|&index| &meals[index]).collect();
        if !last_meals.is_empty() {
            Self::queue_finished_lots(&mut tx, &last_meals).await?;
        }
        tx.commit().await?;

        let stored = meals
            .iter()
            .enumerate()
            .map(|(index, meal)| {
                let key = (meal.code_lot.clone(), meal.jour, meal.moment.to_string());
                let meal_id = *ids
                    .get(&key)
                    .with_context(|| format!("no id returned for meal {key:?}"))?;
                Ok(StoredMeal {
                    meal_id,
                    pret_abattage: finished.contains(&index),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(MealBatchStored::Stored(stored))
    }

    /// Reads the lots that `meals` refer to, locked on PostgreSQL so that
    /// meals of one lot are serialised across connections.
    async fn lots_for_meals(
        &self,
        tx: &mut sqlx::AnyConnection,
        meals: &[MealRow],
    ) -> anyhow::Result<std::collections::HashMap<String, LotForMeals>> {
        let lock = match self.engine {
            Engine::Postgres => " FOR UPDATE",
            Engine::Sqlite => "",
        };
        let mut codes: Vec<&str> = meals.iter().map(|meal| meal.code_lot.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        let mut lots = std::collections::HashMap::with_capacity(codes.len());
        for chunk in codes.chunks(LOTS_PER_READ) {
            let placeholders = placeholder_list(self.engine, chunk.len());
            // Sorted, so two batches lock their lots in the same order.
            let sql = format!(
                "SELECT code_lot, status, duree_jours, nb_canards, \
                 (SELECT COUNT(*) FROM meals m WHERE m.code_lot = l.code_lot) AS meals_done \
                 FROM lots l WHERE code_lot IN ({placeholders}) ORDER BY code_lot{lock}"
            );
            let mut query = sqlx::query(&sql);
            for code in chunk {
                query = query.bind(*code);
            }
            let rows = query
                .fetch_all(&mut *tx)
                .await
                .context("read the lots of a batch of meals")?;
            for row in rows {
                let code_lot: String = row.try_get("code_lot")?;
                let lot = LotForMeals {
                    status: row.try_get("status")?,
                    duree: row.try_get("duree_jours")?,
                    nb_canards: row.try_get("nb_canards")?,
                    meals_done: row.try_get("meals_done")?,
                };
                lots.insert(code_lot, lot);
            }
        }
        Ok(lots)
    }

    /// Inserts up to `MEALS_PER_INSERT` meals with one statement and
    /// records their ids by (code_lot, jour, moment), because neither
    /// engine promises the order of `RETURNING` rows.
    async fn insert_meals(
        tx: &mut sqlx::AnyConnection,
        meals: &[MealRow],
        ids: &mut std::collections::HashMap<(String, i64, String), i64>,
    ) -> anyhow::Result<()> {
        let rows = placeholder_rows(Engine::of(tx), meals.len(), 12);
        let sql = format!(
            "INSERT INTO meals (code_lot, jour, moment, dose_theorique, dose_reelle, poids_moyen, \
             nb_canards_vivants, taux_mortalite, temperature, humidite, sim_time, recorded_at) \
             VALUES {rows} RETURNING id, code_lot, jour, moment"
        );
        let recorded_at = crate::time::now();
        let mut query = sqlx::query(&sql);
        for meal in meals {
            query = query
                .bind(&meal.code_lot)
                .bind(meal.jour)
                .bind(meal.moment)
                .bind(meal.dose_theorique)
                .bind(meal.dose_reelle)
                .bind(meal.poids_moyen)
                .bind(meal.nb_canards_vivants)
                .bind(meal.taux_mortalite)
                .bind(meal.temperature)
                .bind(meal.humidite)
                .bind(&meal.sim_time)
                .bind(&recorded_at);
        }
        let returned = query.fetch_all(&mut *tx).await.with_context(|| {
            let first = &meals[0];
            format!(
                "insert {} meals from {} jour {} {}",
                meals.len(),
                first.code_lot,
                first.jour,
                first.moment
            )
        })?;
        for row in returned {
            let key = (
                row.try_get("code_lot")?,
                row.try_get("jour")?,
                row.try_get("moment")?,
            );
            ids.insert(key, row.try_get("id")?);
        }
        Ok(())
    }

    /// Marks the lots whose last meals are `last_meals` ready for slaughter,
    /// queues them for inspection and appends the end of their gavage to
    /// their chains, with a few statements per `LOTS_PER_INSERT` lots.
    async fn queue_finished_lots(
        tx: &mut sqlx::AnyConnection,
        last_meals: &[&MealRow],
    ) -> anyhow::Result<()> {
        let engine = Engine::of(tx);
        let now = crate::time::now();
        for chunk in last_meals.chunks(LOTS_PER_INSERT) {
            let sql = format!(
                "UPDATE lots SET status = 'pret_abattage', finished_at = {} \
                 WHERE code_lot IN ({})",
                placeholder(engine, 1),
                placeholder_run(engine, 2, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(&now);
            for meal in chunk {
                query = query.bind(&meal.code_lot);
            }
            query
                .execute(&mut *tx)
                .await
                .with_context(|| format!("mark {} lots ready for slaughter", chunk.len()))?;

            // The final figures come from each lot's last meal, the rest
            // from the lot.
            let sql = format!(
                "WITH last_meal (code_lot, poids_moyen, nb_canards_vivants, taux_mortalite) AS \
                 (VALUES {}) \
                 INSERT INTO sqal_pending_lots (code_lot, gaveur_id, site, genetique, poids_moyen_final, \
                 nb_canards_final, taux_mortalite, slaughter_at, status, attempts, created_at, updated_at) \
                 SELECT l.code_lot, l.gaveur_id, l.site, l.genetique, m.poids_moyen, \
                 m.nb_canards_vivants, m.taux_mortalite, l.finished_at, 'pending', 0, \
                 l.finished_at, l.finished_at \
                 FROM lots l JOIN last_meal m ON m.code_lot = l.code_lot",
                placeholder_rows(engine, chunk.len(), 4)
            );
            let mut query = sqlx::query(&sql);
            for meal in chunk {
                query = query
                    .bind(&meal.code_lot)
                    .bind(meal.poids_moyen)
                    .bind(meal.nb_canards_vivants)
                    .bind(meal.taux_mortalite);
            }
            query.execute(&mut *tx).await.with_context(|| {
                format!(
                    "queue {} lots from {} for inspection",
                    chunk.len(),
                    chunk[0].code_lot
                )
            })?;
        }

        let events: Vec<(&str, serde_json::Value)> = last_meals
            .iter()
            .map(|meal| {
                let event = ledger::gavage_finished(
                    meal.poids_moyen,
                    meal.nb_canards_vivants,
                    meal.taux_mortalite,
                    &now,
                );
                (meal.code_lot.as_str(), event)
            })
            .collect();
        ledger::append_to_each(tx, ledger::GAVAGE_FINISHED, &events).await
    }

    /// Reads, without taking the writer, how many more lots may be claimed
    /// under `MAX_LOTS_IN_FLIGHT` (never below 0) and how many wait to be
    /// claimed. The monitor skips a claim that would find nothing to do.
    pub async fn claim_room(&self) -> anyhow::Result<(i64, i64)> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM sqal_pending_lots \
                WHERE status = 'inspecting' AND lease_until >= $1) AS live, \
             (SELECT COUNT(*) FROM sqal_pending_lots \
                WHERE status = 'pending' OR (status = 'inspecting' AND lease_until < $1) \
                   OR (status = 'error' AND attempts < $2)) AS waiting",
        )
        .bind(crate::time::now())
        .bind(MAX_INSPECTION_ATTEMPTS)
        .fetch_one(&self.read)
        .await
        .context("count the lots in flight and waiting")?;
        let live: i64 = row.try_get("live")?;
        Ok(((MAX_LOTS_IN_FLIGHT - live).max(0), row.try_get("waiting")?))
    }

    /// Claims the oldest lot that is pending, or whose inspection lease has
    /// expired, as `claim_lots` does.
    pub async fn claim_next_lot(&self, lease_seconds: f64) -> anyhow::Result<Option<ClaimedLot>> {
        Ok(self.claim_lots(lease_seconds, 1).await?.into_iter().next())
    }

    /// Claims up to `limit` of the oldest lots that are pending, or whose
    /// inspection lease has expired, and gives them a new lease, in queue
    /// order. The claim is one statement, so two monitors never claim the
    /// same lot. It claims no more than leaves `MAX_LOTS_IN_FLIGHT` lots
    /// with a live lease: a lot waiting for the station would otherwise see
    /// its lease expire and be claimed twice. The lots' `inspection_started`
    /// events are written in the same transaction.
    pub async fn claim_lots(
        &self,
        lease_seconds: f64,
        limit: i64,
    ) -> anyhow::Result<Vec<ClaimedLot>> {
        let now = crate::time::now();
        // Room left under the cap, at most `limit` and never negative,
        // because SQLite reads a negative LIMIT as no limit.
        let (room, lock) = match self.engine {
            Engine::Postgres => (
                "GREATEST(0, LEAST($5, $4 - COUNT(*)))",
                " FOR UPDATE SKIP LOCKED",
            ),
            Engine::Sqlite => ("max(0, min($5, $4 - COUNT(*)))", ""),
        };
        let sql = format!(
            "UPDATE sqal_pending_lots SET status = 'inspecting', attempts = attempts + 1, \
             lease_until = $1, updated_at = $2 \
             WHERE code_lot IN (SELECT code_lot FROM sqal_pending_lots \
                WHERE status = 'pending' OR (status = 'inspecting' AND lease_until < $2) \
                   OR (status = 'error' AND attempts < $3) \
                ORDER BY created_at, code_lot \
                LIMIT (SELECT {room} FROM sqal_pending_lots \
                   WHERE status = 'inspecting' AND lease_until >= $2){lock}) \
             RETURNING code_lot, created_at, poids_moyen_final, attempts, \
             (SELECT run_id FROM lots WHERE lots.code_lot = sqal_pending_lots.code_lot) AS run_id"
        );
        let mut tx = self.write.begin().await?;
        if self.engine == Engine::Postgres {
            // Two monitors counting the lots in flight at once would both
            // see room for one more.
            sqlx::query(
                "SELECT COUNT(*) AS locked FROM (SELECT pg_advisory_xact_lock($1, 0)) AS held",
            )
            .bind(crate::cluster::CLAIM_LOCK_CLASS)
            .fetch_one(&mut *tx)
            .await
            .context("lock the claims")?;
        }
        let rows = sqlx::query(&sql)
            .bind(crate::time::in_seconds(lease_seconds))
            .bind(&now)
            .bind(MAX_INSPECTION_ATTEMPTS)
            .bind(MAX_LOTS_IN_FLIGHT)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .context("claim lots for inspection")?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        // Neither engine promises the order of `RETURNING` rows.
        let mut claimed = rows
            .iter()
            .map(|row| -> anyhow::Result<(String, ClaimedLot)> {
                let lot = ClaimedLot {
                    code_lot: row.try_get("code_lot")?,
                    run_id: row.try_get("run_id")?,
                    poids_moyen_final: row.try_get("poids_moyen_final")?,
                    attempts: row.try_get("attempts")?,
                    fresh_until: None,
                };
                Ok((row.try_get("created_at")?, lot))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        claimed.sort_by(|(a_created, a), (b_created, b)| {
            (a_created, &a.code_lot).cmp(&(b_created, &b.code_lot))
        });

        let events: Vec<(&str, serde_json::Value)> = claimed
            .iter()
            .map(|(_, lot)| {
                let event = ledger::inspection_started(lot.attempts, &now);
                (lot.code_lot.as_str(), event)
            })
            .collect();
        ledger::append_to_each(&mut tx, ledger::INSPECTION_STARTED, &events).await?;
        tx.commit().await?;
        // A tenth of the lease, at most a second (none for a lease that has
        // already run out, as tests set).
        let fresh_for = Duration::from_secs_f64((lease_seconds / 10.0).clamp(0.0, 1.0));
        let fresh_until = std::time::Instant::now() + fresh_for;
        Ok(claimed
            .into_iter()
            .map(|(_, lot)| ClaimedLot {
                fresh_until: Some(fresh_until),
                ..lot
            })
            .collect())
    }

    /// Stores a graded sample and, when it is compliant, its product with a
    /// fresh trace token, in one transaction. A sample already stored by an
    /// earlier attempt at the same lot is left as it is and gets no second
    /// product.
    pub async fn record_sample(
        &self,
        sample: &SampleRow<'_>,
        public_url: &str,
    ) -> anyhow::Result<SampleOutcome> {
        let mut outcomes = self
            .record_samples(std::slice::from_ref(sample), public_url)
            .await?;
        Ok(outcomes.remove(0))
    }

    /// Stores graded samples of one or more lots, each compliant one with
    /// its product, in one transaction, and returns one outcome per sample
    /// in the order given. A sample whose (lot, index) is already stored, or
    /// comes earlier in the batch, is left out and gets no product.
    ///
    /// The batch costs a few statements whatever its size: one insert per
    /// chunk of samples, of products and of chain events, and one read of
    /// the chain heads of its lots (with their locks on PostgreSQL). The
    /// device ingest gathers concurrent requests into one call this way.
    pub async fn record_samples(
        &self,
        samples: &[SampleRow<'_>],
        public_url: &str,
    ) -> anyhow::Result<Vec<SampleOutcome>> {
        let now = crate::time::now();
        let encoded = samples
            .iter()
            .map(EncodedSample::new)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut tx = self.write.begin().await?;

        let mut stored: std::collections::HashMap<(&str, i64), i64> = Default::default();
        for (chunk, encoded) in samples
            .chunks(SAMPLES_PER_INSERT)
            .zip(encoded.chunks(SAMPLES_PER_INSERT))
        {
            Self::insert_samples(&mut tx, chunk, encoded, &now, &mut stored).await?;
        }
        // The first sample of the batch with a given key owns its row.
        let sample_ids: Vec<Option<i64>> = samples
            .iter()
            .map(|sample| stored.remove(&(sample.code_lot, sample.sample_index as i64)))
            .collect();
        if sample_ids.iter().all(Option::is_none) {
            tx.commit().await?;
            return Ok(sample_ids
                .into_iter()
                .map(|sample_id| SampleOutcome {
                    sample_id,
                    product: None,
                })
                .collect());
        }

        let mut lots: Vec<&str> = samples
            .iter()
            .zip(&sample_ids)
            .filter(|(_, id)| id.is_some())
            .map(|(sample, _)| sample.code_lot)
            .collect();
        lots.sort_unstable();
        lots.dedup();
        let mut heads = ledger::heads(&mut tx, &lots).await?;

        let mut events = Vec::new();
        let mut products = Vec::new();
        let mut outcomes = Vec::with_capacity(samples.len());
        for ((sample, encoded), sample_id) in samples.iter().zip(&encoded).zip(sample_ids) {
            let Some(sample_id) = sample_id else {
                outcomes.push(SampleOutcome {
                    sample_id: None,
                    product: None,
                });
                continue;
            };
            let analysis = sample.analysis;
            let head = heads
                .get_mut(sample.code_lot)
                .expect("every lot with a stored sample has a head");
            let graded = ledger::sample_graded(
                sample.sample_index as i64,
                sample.device_id,
                &now,
                &encoded.tof_distances,
                &encoded.as7341_counts,
                analysis.grade.map(|grade| grade.as_str()),
                analysis.final_score,
                analysis.tof_score,
                analysis.as7341_score,
            );
            events.push(head.chain(sample.code_lot, ledger::SAMPLE_GRADED, &graded));
            let Some(grade) = analysis.grade.filter(|grade| grade.is_compliant()) else {
                outcomes.push(SampleOutcome {
                    sample_id: Some(sample_id),
                    product: None,
                });
                continue;
            };

            // A code_lot starts with its lot's site: create_lots builds it so.
            let site = sample
                .code_lot
                .get(..2)
                .with_context(|| format!("code_lot {:?} has no site", sample.code_lot))?;
            // Numbered by its sample, which has at most one product.
            let product_id = format!(
                "FG_{}_{}_{:010}",
                site,
                now[..10].replace('-', ""),
                sample_id
            );
            let token = crate::qr::new_token();
            let qr_payload = crate::qr::payload(
                public_url,
                &token,
                sample.code_lot,
                grade.as_str(),
                analysis.tof_score,
                analysis.as7341_score,
            );
            let created = ledger::product_created(
                &product_id,
                &token,
                sample.sample_index as i64,
                grade.as_str(),
                analysis.final_score,
                &now,
            );
            events.push(head.chain(sample.code_lot, ledger::PRODUCT_CREATED, &created));
            let product = ProductView {
                product_id,
                token,
                code_lot: sample.code_lot.to_string(),
                grade,
                final_score: analysis.final_score,
                tof_score: analysis.tof_score,
                as7341_score: analysis.as7341_score,
                qr_payload,
                created_at: now.clone(),
            };
            products.push((sample_id, product.clone()));
            outcomes.push(SampleOutcome {
                sample_id: Some(sample_id),
                product: Some(product),
            });
        }

        let one_statement = Engine::of(&tx) == Engine::Postgres
            && !products.is_empty()
            && products.len() <= PRODUCTS_PER_INSERT
            && events.len() <= ledger::EVENTS_PER_INSERT;
        if one_statement {
            Self::insert_products_and_events(&mut tx, &products, &events).await?;
        } else {
            for chunk in products.chunks(PRODUCTS_PER_INSERT) {
                Self::insert_products(&mut tx, chunk).await?;
            }
            ledger::insert(&mut tx, &events).await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Inserts samples with one statement, skipping those already stored,
    /// and records the new rows' ids by (lot, index).
    async fn insert_samples<'s>(
        tx: &mut sqlx::AnyConnection,
        samples: &[SampleRow<'s>],
        encoded: &[EncodedSample],
        now: &str,
        stored: &mut std::collections::HashMap<(&'s str, i64), i64>,
    ) -> anyhow::Result<()> {
        let sql = format!(
            "INSERT INTO sqal_samples (code_lot, sample_index, device_id, measured_at, tof_distances, \
             as7341_counts, as7341_gain, as7341_integration_ms, volume_cm3, estimated_weight_g, \
             surface_uniformity, freshness_index, tof_score, as7341_score, final_score, grade, invalid_reason, \
             tof_reflectance, tof_amplitude, tof_ambient, tof_status, details) \
             VALUES {} ON CONFLICT (code_lot, sample_index) DO NOTHING \
             RETURNING id, code_lot, sample_index",
            placeholder_rows(Engine::of(tx), samples.len(), 22)
        );
        let mut query = sqlx::query(&sql);
        for (sample, encoded) in samples.iter().zip(encoded) {
            let analysis = sample.analysis;
            let measurement = sample.measurement;
            query = query
                .bind(sample.code_lot)
                .bind(sample.sample_index as i64)
                .bind(sample.device_id)
                .bind(now)
                .bind(&encoded.tof_distances)
                .bind(&encoded.as7341_counts)
                .bind(measurement.as7341_gain)
                .bind(measurement.as7341_integration_ms)
                .bind(analysis.details.volume_cm3)
                .bind(analysis.details.estimated_weight_g)
                .bind(analysis.details.surface_uniformity)
                .bind(analysis.details.freshness_index)
                .bind(analysis.tof_score)
                .bind(analysis.as7341_score)
                .bind(analysis.final_score)
                .bind(analysis.grade.map(|grade| grade.as_str()))
                .bind(analysis.invalid_reason.as_deref())
                .bind(&encoded.tof_reflectance)
                .bind(&encoded.tof_amplitude)
                .bind(&encoded.tof_ambient)
                .bind(&encoded.tof_status)
                .bind(&encoded.details);
        }
        let rows = query.fetch_all(&mut *tx).await.with_context(|| {
            let first = &samples[0];
            format!(
                "insert {} samples from sample {} of lot {}",
                samples.len(),
                first.sample_index,
                first.code_lot
            )
        })?;
        for row in rows {
            let code_lot: String = row.try_get("code_lot")?;
            let sample_index: i64 = row.try_get("sample_index")?;
            // The batch's own key, which lives as long as the batch.
            let key = samples
                .iter()
                .find(|sample| {
                    sample.code_lot == code_lot && sample.sample_index as i64 == sample_index
                })
                .map(|sample| (sample.code_lot, sample_index))
                .with_context(|| format!("unexpected sample {sample_index} of lot {code_lot}"))?;
            stored.insert(key, row.try_get("id")?);
        }
        Ok(())
    }

    /// Inserts products with one statement; each refers to its sample.
    async fn insert_products(
        tx: &mut sqlx::AnyConnection,
        products: &[(i64, ProductView)],
    ) -> anyhow::Result<()> {
        let sql = Self::products_statement(Engine::of(tx), products.len());
        Self::bind_products(sqlx::query(&sql), products)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("insert {} products", products.len()))?;
        Ok(())
    }

    /// Inserts products and chain events with one statement, the products
    /// in a data-modifying `WITH`. PostgreSQL only, where it saves each
    /// batch of samples a round trip.
    async fn insert_products_and_events(
        tx: &mut sqlx::AnyConnection,
        products: &[(i64, ProductView)],
        events: &[ledger::NewEvent],
    ) -> anyhow::Result<()> {
        let engine = Engine::of(tx);
        let sql = format!(
            "WITH new_products AS ({}) {}",
            Self::products_statement(engine, products.len()),
            ledger::insert_statement(engine, 1 + products.len() * 10, events.len())
        );
        let recorded_at = crate::time::now();
        let query = Self::bind_products(sqlx::query(&sql), products);
        ledger::bind_events(query, events, &recorded_at)
            .execute(&mut *tx)
            .await
            .with_context(|| {
                format!(
                    "insert {} products and {} chain events",
                    products.len(),
                    events.len()
                )
            })?;
        Ok(())
    }

    /// Returns an insert of `count` products, its parameters numbered from 1.
    fn products_statement(engine: Engine, count: usize) -> String {
        format!(
            "INSERT INTO products (product_id, token, sample_id, code_lot, grade, final_score, tof_score, \
             as7341_score, qr_payload, created_at) VALUES {}",
            placeholder_rows(engine, count, 10)
        )
    }

    /// Binds the parameters of `products_statement` in order.
    fn bind_products<'q>(
        mut query: AnyQuery<'q>,
        products: &'q [(i64, ProductView)],
    ) -> AnyQuery<'q> {
        for (sample_id, product) in products {
            query = query
                .bind(&product.product_id)
                .bind(&product.token)
                .bind(*sample_id)
                .bind(&product.code_lot)
                .bind(product.grade.as_str())
                .bind(product.final_score)
                .bind(product.tof_score)
                .bind(product.as7341_score)
                .bind(&product.qr_payload)
                .bind(&product.created_at);
        }
        query
    }

    /// Marks a lot's inspection as failed with the reason. The monitor
    /// claims it again until it has had `MAX_INSPECTION_ATTEMPTS` attempts;
    /// after that it stays `error` for an operator to look at.
    pub async fn fail_inspection(&self, code_lot: &str, reason: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE sqal_pending_lots SET status = 'error', last_error = $1, lease_until = NULL, \
             updated_at = $2 WHERE code_lot = $3",
        )
        .bind(reason)
        .bind(crate::time::now())
        .bind(code_lot)
        .execute(&self.write)
        .await
        .with_context(|| format!("record the failed inspection of lot {code_lot}"))?;
        Ok(())
    }

    /// Reads a lot's queue status, attempts and last error.
    pub async fn queue_entry(
        &self,
        code_lot: &str,
    ) -> anyhow::Result<Option<(String, i64, Option<String>)>> {
        let row = sqlx::query(
            "SELECT status, attempts, last_error FROM sqal_pending_lots WHERE code_lot = $1",
        )
        .bind(code_lot)
        .fetch_optional(&self.read)
        .await?;
        row.map(|row| {
            Ok((
                row.try_get("status")?,
                row.try_get("attempts")?,
                row.try_get("last_error")?,
            ))
        })
        .transpose()
    }

    /// Renews the lease of a lot about to be measured. Returns false when the
    /// lot is no longer `inspecting` (another claim already finished it).
    pub async fn start_inspection(
        &self,
        code_lot: &str,
        lease_seconds: f64,
    ) -> anyhow::Result<bool> {
        let renewed = sqlx::query(
            "UPDATE sqal_pending_lots SET lease_until = $1, updated_at = $2 \
             WHERE code_lot = $3 AND status = 'inspecting'",
        )
        .bind(crate::time::in_seconds(lease_seconds))
        .bind(crate::time::now())
        .bind(code_lot)
        .execute(&self.write)
        .await
        .with_context(|| format!("renew the lease of lot {code_lot}"))?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Counts a lot's stored samples that are compliant and that are valid.
    pub async fn sample_outcomes(&self, code_lot: &str) -> anyhow::Result<(i64, i64)> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN grade IS NOT NULL AND grade <> 'REJECT' THEN 1 ELSE 0 END), 0) AS compliant, \
             COALESCE(SUM(CASE WHEN grade IS NOT NULL THEN 1 ELSE 0 END), 0) AS valid \
             FROM sqal_samples WHERE code_lot = $1",
        )
        .bind(code_lot)
        // Samples are committed before they are counted, so a read
        // connection finds them all and the writer stays free.
        .fetch_one(&self.read)
        .await?;
        Ok((row.try_get("compliant")?, row.try_get("valid")?))
    }

    pub async fn finish_inspection(&self, code_lot: &str, verdict: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE sqal_pending_lots SET status = 'inspected', verdict = $1, lease_until = NULL, updated_at = $2 WHERE code_lot = $3")
            .bind(verdict)
            .bind(crate::time::now())
            .bind(code_lot)
            .execute(&self.write)
            .await
            .with_context(|| format!("finish inspection of lot {code_lot}"))?;
        Ok(())
    }

    pub async fn latest_product(&self) -> anyhow::Result<Option<ProductView>> {
        let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products p ORDER BY p.id DESC LIMIT 1");
        let row = sqlx::query(&sql).fetch_optional(&self.read).await?;
        row.as_ref().map(product_from_row).transpose()
    }

    /// Products, newest first, optionally of one lot.
    pub async fn products(
        &self,
        code_lot: Option<&str>,
        limit: i64,
    ) -> anyhow::Result<Vec<ProductView>> {
        let rows = match code_lot {
            Some(code_lot) => {
                let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products p WHERE p.code_lot = $1 ORDER BY p.id DESC LIMIT $2");
                sqlx::query(&sql)
                    .bind(code_lot)
                    .bind(limit)
                    .fetch_all(&self.read)
                    .await?
            }
            None => {
                let sql =
                    format!("SELECT {PRODUCT_COLUMNS} FROM products p ORDER BY p.id DESC LIMIT $1");
                sqlx::query(&sql).bind(limit).fetch_all(&self.read).await?
            }
        };
        rows.iter().map(product_from_row).collect()
    }

    /// Returns the first product made from a lot of gavage run `run_id`.
    pub async fn first_product_of_run(&self, run_id: &str) -> anyhow::Result<Option<ProductView>> {
        let sql = format!(
            "SELECT {PRODUCT_COLUMNS} FROM products p JOIN lots l ON l.code_lot = p.code_lot \
             WHERE l.run_id = $1 ORDER BY p.id LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(run_id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(product_from_row).transpose()
    }

    /// Everything the trace page shows for `token`, or `None` if no product
    /// has it.
    pub async fn trace(&self, token: &str) -> anyhow::Result<Option<TraceView>> {
        let sql = format!(
            "SELECT {PRODUCT_COLUMNS}, l.run_id, l.site, s.region, g.nom AS gaveur, l.genetique, l.nb_canards, \
             l.duree_jours, l.status AS lot_status, l.started_at AS lot_started_at, l.finished_at, \
             q.poids_moyen_final, q.nb_canards_final, q.taux_mortalite, \
             (SELECT COUNT(*) FROM meals m WHERE m.code_lot = l.code_lot) AS meal_count, \
             x.device_id, x.measured_at, x.estimated_weight_g, x.volume_cm3, x.surface_uniformity, \
             x.freshness_index, x.tof_distances, x.as7341_counts, x.details \
             FROM products p \
             JOIN lots l ON l.code_lot = p.code_lot \
             JOIN sites s ON s.code = l.site \
             JOIN gaveurs g ON g.id = l.gaveur_id \
             JOIN sqal_samples x ON x.id = p.sample_id \
             LEFT JOIN sqal_pending_lots q ON q.code_lot = l.code_lot \
             WHERE p.token = $1"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(token)
            .fetch_optional(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let product = product_from_row(&row)?;
        let lot = LotView {
            code_lot: product.code_lot.clone(),
            run_id: row.try_get("run_id")?,
            gaveur: row.try_get("gaveur")?,
            site: row.try_get("site")?,
            region: row.try_get("region")?,
            genetique: row.try_get("genetique")?,
            nb_canards: row.try_get("nb_canards")?,
            duree_jours: row.try_get("duree_jours")?,
            status: row.try_get("lot_status")?,
            started_at: row.try_get("lot_started_at")?,
            finished_at: row.try_get("finished_at")?,
            meals: row.try_get("meal_count")?,
            poids_moyen_final: row.try_get("poids_moyen_final")?,
            nb_canards_vivants: row.try_get("nb_canards_final")?,
            taux_mortalite: row.try_get("taux_mortalite")?,
        };
        let distances: String = row.try_get("tof_distances")?;
        let counts: String = row.try_get("as7341_counts")?;
        let sample = SampleView {
            device_id: row.try_get("device_id")?,
            measured_at: row.try_get("measured_at")?,
            estimated_weight_g: row.try_get("estimated_weight_g")?,
            volume_cm3: row.try_get("volume_cm3")?,
            surface_uniformity: row.try_get("surface_uniformity")?,
            freshness_index: row.try_get("freshness_index")?,
            tof_distances: serde_json::from_str(&distances).context("stored ToF distances")?,
            as7341_counts: serde_json::from_str(&counts).context("stored AS7341 counts")?,
            details: stored_details(&row)?,
        };
        let meals = self.meals_of(&product.code_lot).await?;
        let integrity = self
            .verify(token)
            .await?
            .context("the product vanished between two reads")?
            .for_page();
        Ok(Some(TraceView {
            product,
            lot,
            sample,
            meals,
            integrity,
        }))
    }

    /// Checks the history of the product with `token` against its lot's
    /// hash chain, checking every hash and link up to the product's creation.
    /// It also compares the events of the lot, its end of gavage, the
    /// product's sample and the product with the rows stored now. Returns
    /// `None` for an unknown token.
    pub async fn verify(&self, token: &str) -> anyhow::Result<Option<IntegrityProof>> {
        let Some(row) = sqlx::query(
            "SELECT p.product_id, p.token, p.code_lot, p.grade, p.final_score, p.created_at, \
             s.sample_index, s.device_id, s.measured_at, s.tof_distances, s.as7341_counts, \
             s.grade AS sample_grade, s.final_score AS sample_final, s.tof_score, s.as7341_score, \
             l.gaveur_id, l.site, l.genetique, l.nb_canards, l.duree_jours, l.started_at, \
             q.poids_moyen_final, q.nb_canards_final, q.taux_mortalite, q.slaughter_at \
             FROM products p JOIN sqal_samples s ON s.id = p.sample_id \
             JOIN lots l ON l.code_lot = p.code_lot \
             LEFT JOIN sqal_pending_lots q ON q.code_lot = p.code_lot \
             WHERE p.token = $1",
        )
        .bind(token)
        .fetch_optional(&self.read)
        .await?
        else {
            return Ok(None);
        };
        let code_lot: String = row.try_get("code_lot")?;
        let product_id: String = row.try_get("product_id")?;
        let sample_index: i64 = row.try_get("sample_index")?;

        // Payloads rebuilt from the rows as they are stored now.
        let lot_event = ledger::lot_created(
            &code_lot,
            row.try_get("gaveur_id")?,
            &row.try_get::<String, _>("site")?,
            &row.try_get::<String, _>("genetique")?,
            row.try_get("nb_canards")?,
            row.try_get("duree_jours")?,
            &row.try_get::<String, _>("started_at")?,
        );
        let finished_event = match row.try_get::<Option<String>, _>("slaughter_at")? {
            Some(slaughter_at) => Some(ledger::gavage_finished(
                row.try_get("poids_moyen_final")?,
                row.try_get("nb_canards_final")?,
                row.try_get("taux_mortalite")?,
                &slaughter_at,
            )),
            None => None,
        };
        let sample_grade: Option<String> = row.try_get("sample_grade")?;
        let sample_event = ledger::sample_graded(
            sample_index,
            &row.try_get::<String, _>("device_id")?,
            &row.try_get::<String, _>("measured_at")?,
            &row.try_get::<String, _>("tof_distances")?,
            &row.try_get::<String, _>("as7341_counts")?,
            sample_grade.as_deref(),
            row.try_get("sample_final")?,
            row.try_get("tof_score")?,
            row.try_get("as7341_score")?,
        );
        let product_event = ledger::product_created(
            &product_id,
            &row.try_get::<String, _>("token")?,
            sample_index,
            &row.try_get::<String, _>("grade")?,
            row.try_get("final_score")?,
            &row.try_get::<String, _>("created_at")?,
        );

        let events = sqlx::query(
            "SELECT seq, kind, payload, prev_hash, hash, recorded_at FROM trace_events \
             WHERE code_lot = $1 ORDER BY seq",
        )
        .bind(&code_lot)
        .fetch_all(&self.read)
        .await?;
        let mut proof = IntegrityProof {
            status: IntegrityStatus::Verified,
            code_lot: code_lot.clone(),
            product_id: product_id.clone(),
            problems: Vec::new(),
            events: Vec::new(),
        };
        if events.is_empty() {
            proof.status = IntegrityStatus::Missing;
            return Ok(Some(proof));
        }

        let mut prev_hash = ledger::GENESIS_HASH.to_string();
        let mut seen = std::collections::BTreeSet::new();
        for (position, event) in events.iter().enumerate() {
            let seq: i64 = event.try_get("seq")?;
            let kind: String = event.try_get("kind")?;
            let payload: String = event.try_get("payload")?;
            let stored_prev: String = event.try_get("prev_hash")?;
            let hash: String = event.try_get("hash")?;
            if seq != position as i64 + 1 {
                proof.problems.push(format!(
                    "event {seq} is out of sequence (expected {})",
                    position + 1
                ));
            }
            if stored_prev != prev_hash {
                proof.problems.push(format!(
                    "event {seq} ({kind}) does not link to the event before it"
                ));
            }
            if ledger::event_hash(&code_lot, seq, &kind, &stored_prev, &payload) != hash {
                proof.problems.push(format!(
                    "event {seq} ({kind}) was changed after it was recorded"
                ));
            }
            prev_hash = hash.clone();

            let parsed: serde_json::Value =
                serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null);
            let expected = match kind.as_str() {
                ledger::LOT_CREATED => Some(&lot_event),
                ledger::GAVAGE_FINISHED => finished_event.as_ref(),
                ledger::SAMPLE_GRADED if parsed["sample_index"] == sample_index => {
                    Some(&sample_event)
                }
                ledger::PRODUCT_CREATED if parsed["sample_index"] == sample_index => {
                    Some(&product_event)
                }
                ledger::INSPECTION_STARTED => None,
                _ => {
                    // Another sample or product of the lot: its hash proves
                    // the link, its content is not this product's to show.
                    proof.events.push(ProofEvent {
                        seq,
                        kind,
                        recorded_at: event.try_get("recorded_at")?,
                        prev_hash: stored_prev,
                        hash,
                        payload: None,
                    });
                    continue;
                }
            };
            if let Some(expected) = expected {
                seen.insert(kind.clone());
                if expected.to_string() != payload {
                    proof
                        .problems
                        .push(format!("the stored {kind} data differ from event {seq}"));
                }
            }
            let is_product = kind == ledger::PRODUCT_CREATED;
            proof.events.push(ProofEvent {
                seq,
                kind,
                recorded_at: event.try_get("recorded_at")?,
                prev_hash: stored_prev,
                hash,
                payload: Some(parsed),
            });
            if is_product {
                break;
            }
        }
        for kind in [
            ledger::LOT_CREATED,
            ledger::GAVAGE_FINISHED,
            ledger::SAMPLE_GRADED,
            ledger::PRODUCT_CREATED,
        ] {
            if !seen.contains(kind) {
                proof.problems.push(format!("no {kind} event in the chain"));
            }
        }
        if !proof.problems.is_empty() {
            proof.status = IntegrityStatus::Failed;
        }
        Ok(Some(proof))
    }

    /// Reads the recorded meals of a lot, in order.
    pub async fn meals_of(&self, code_lot: &str) -> anyhow::Result<Vec<MealPoint>> {
        sqlx::query(
            "SELECT jour, moment, dose_reelle, poids_moyen FROM meals WHERE code_lot = $1 ORDER BY jour, moment",
        )
        .bind(code_lot)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|row| {
            Ok(MealPoint {
                jour: row.try_get("jour")?,
                moment: row.try_get("moment")?,
                dose_reelle: row.try_get("dose_reelle")?,
                poids_moyen: row.try_get("poids_moyen")?,
            })
        })
        .collect()
    }

    /// Lots of the most recent gavage run, with their progress.
    pub async fn latest_run_lots(&self) -> anyhow::Result<Vec<LotProgress>> {
        let rows = sqlx::query(
            "SELECT l.code_lot, g.nom AS gaveur, l.site, l.genetique, l.duree_jours, \
             CASE WHEN q.verdict IS NULL THEN COALESCE(q.status, l.status) \
             ELSE q.status || ' (' || q.verdict || ')' END AS status, \
             (SELECT COUNT(*) FROM meals m WHERE m.code_lot = l.code_lot) AS meals_done, \
             m.jour, m.poids_moyen, m.nb_canards_vivants, m.taux_mortalite \
             FROM lots l \
             JOIN gaveurs g ON g.id = l.gaveur_id \
             LEFT JOIN sqal_pending_lots q ON q.code_lot = l.code_lot \
             LEFT JOIN meals m ON m.id = (SELECT MAX(id) FROM meals WHERE code_lot = l.code_lot) \
             WHERE l.run_id = (SELECT run_id FROM gavage_runs ORDER BY started_at DESC LIMIT 1) \
             ORDER BY l.code_lot",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                let duree: i64 = row.try_get("duree_jours")?;
                Ok(LotProgress {
                    code_lot: row.try_get("code_lot")?,
                    gaveur: row.try_get("gaveur")?,
                    site: row.try_get("site")?,
                    genetique: row.try_get("genetique")?,
                    duree_jours: duree,
                    meals_done: row.try_get("meals_done")?,
                    meals_total: 2 * (duree + 1),
                    jour: row.try_get::<Option<i64>, _>("jour")?.unwrap_or(0),
                    poids_moyen: row.try_get("poids_moyen")?,
                    nb_canards_vivants: row.try_get("nb_canards_vivants")?,
                    taux_mortalite: row.try_get("taux_mortalite")?,
                    status: row.try_get("status")?,
                })
            })
            .collect()
    }

    /// Returns the run and status (`en_gavage`, `pret_abattage`, …) of a lot.
    pub async fn lot_run_and_status(
        &self,
        code_lot: &str,
    ) -> anyhow::Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT run_id, status FROM lots WHERE code_lot = $1")
            .bind(code_lot)
            .fetch_optional(&self.read)
            .await?;
        row.map(|row| Ok((row.try_get("run_id")?, row.try_get("status")?)))
            .transpose()
    }

    /// Returns the most recent gavage run, if any.
    pub async fn latest_run_id(&self) -> anyhow::Result<Option<String>> {
        let row = sqlx::query("SELECT run_id FROM gavage_runs ORDER BY started_at DESC LIMIT 1")
            .fetch_optional(&self.read)
            .await?;
        row.map(|row| row.try_get("run_id").map_err(Into::into))
            .transpose()
    }

    /// Outcomes of the samples of run `run_id`'s lots, and the highest sample
    /// id among them (0 when there is none).
    pub async fn grade_counts(&self, run_id: &str) -> anyhow::Result<(GradeCounts, i64)> {
        let rows = sqlx::query(
            "SELECT s.grade, COUNT(*) AS samples, MAX(s.id) AS last_id FROM sqal_samples s \
             JOIN lots l ON l.code_lot = s.code_lot WHERE l.run_id = $1 GROUP BY s.grade",
        )
        .bind(run_id)
        .fetch_all(&self.read)
        .await?;
        let mut counts = GradeCounts::default();
        let mut last_id = 0;
        for row in &rows {
            let grade: Option<String> = row.try_get("grade")?;
            let grade = match grade {
                Some(text) => Some(
                    Grade::parse(&text)
                        .with_context(|| format!("unknown grade {text:?} in sqal_samples"))?,
                ),
                None => None,
            };
            counts.0[GradeCounts::slot(grade)] = row.try_get("samples")?;
            last_id = last_id.max(row.try_get::<i64, _>("last_id")?);
        }
        Ok((counts, last_id))
    }

    /// Returns the most recently stored sample.
    pub async fn latest_sample(&self) -> anyhow::Result<Option<GradedSample>> {
        let row = sqlx::query(
            "SELECT id, code_lot, sample_index, grade, final_score, tof_score, as7341_score, invalid_reason, \
             tof_distances, as7341_counts, details FROM sqal_samples ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let grade: Option<String> = row.try_get("grade")?;
        let distances: String = row.try_get("tof_distances")?;
        let counts: String = row.try_get("as7341_counts")?;
        Ok(Some(GradedSample {
            sample_id: row.try_get("id")?,
            code_lot: row.try_get("code_lot")?,
            sample_index: row.try_get("sample_index")?,
            grade: grade.as_deref().and_then(Grade::parse),
            final_score: row.try_get("final_score")?,
            tof_score: row.try_get("tof_score")?,
            as7341_score: row.try_get("as7341_score")?,
            invalid_reason: row.try_get("invalid_reason")?,
            tof_distances: serde_json::from_str(&distances).context("stored ToF distances")?,
            as7341_counts: serde_json::from_str(&counts).context("stored AS7341 counts")?,
            details: stored_details(&row)?,
        }))
    }

    /// Lots waiting in the inspection queue, and lots being inspected.
    pub async fn queue_counts(&self) -> anyhow::Result<(i64, i64)> {
        // Two probes of the status index: inspected lots, which pile up,
        // are not visited.
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM sqal_pending_lots WHERE status = 'pending') AS pending, \
             (SELECT COUNT(*) FROM sqal_pending_lots WHERE status = 'inspecting') AS inspecting",
        )
        .fetch_one(&self.read)
        .await?;
        Ok((row.try_get("pending")?, row.try_get("inspecting")?))
    }
}

/// The stored record of a task's last run.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRun {
    pub task: TaskName,
    /// `running`, `stopped` or `failed`.
    pub state: String,
    pub instance: String,
    pub params: serde_json::Value,
    pub run_id: Option<String>,
    pub started_at: String,
}

/// A stored lot of a gavage run, as a resumed run needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLot {
    pub code_lot: String,
    pub gaveur_id: i64,
    pub genetique: String,
    pub nb_canards: i64,
    pub duree_jours: i64,
    pub started_at: String,
    pub meals: i64,
}

/// Parameters a gavage run was started with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredRun {
    pub nb_lots: u32,
    pub acceleration: f64,
    pub seed: u64,
}

impl Store {
    /// Returns the pool that task locks take their connections from.
    pub fn pool(&self) -> &AnyPool {
        &self.write
    }

    /// Records that `instance` now runs `task` with these parameters.
    pub async fn task_run_started(
        &self,
        task: TaskName,
        instance: &str,
        params: &serde_json::Value,
        run_id: Option<&str>,
    ) -> anyhow::Result<()> {
        let now = crate::time::now();
        sqlx::query(
            "INSERT INTO task_runs (task, state, instance, params, run_id, started_at, updated_at) \
             VALUES ($1, 'running', $2, $3, $4, $5, $5) \
             ON CONFLICT (task) DO UPDATE SET state = 'running', instance = excluded.instance, \
             params = excluded.params, run_id = excluded.run_id, \
             started_at = excluded.started_at, updated_at = excluded.updated_at",
        )
        .bind(task.as_str())
        .bind(instance)
        .bind(params.to_string())
        .bind(run_id.map(str::to_string))
        .bind(&now)
        .execute(&self.write)
        .await
        .with_context(|| format!("record the start of the {} task", task.as_str()))?;
        Ok(())
    }

    /// Records how the run of `task` by `instance` ended (`stopped` or
    /// `failed`), unless another instance's run has replaced it since.
    pub async fn task_run_ended(
        &self,
        task: TaskName,
        instance: &str,
        state: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE task_runs SET state = $1, updated_at = $2 \
             WHERE task = $3 AND instance = $4 AND state = 'running'",
        )
        .bind(state)
        .bind(crate::time::now())
        .bind(task.as_str())
        .bind(instance)
        .execute(&self.write)
        .await
        .with_context(|| format!("record the end of the {} task", task.as_str()))?;
        Ok(())
    }

    /// Reads the last run of each task that has run on this database.
    pub async fn task_runs(&self) -> anyhow::Result<Vec<TaskRun>> {
        let rows = sqlx::query(
            "SELECT task, state, instance, params, run_id, started_at FROM task_runs ORDER BY task",
        )
        .fetch_all(&self.read)
        .await
        .context("read the task runs")?;
        let mut runs = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("task")?;
            let Some(task) = TaskName::parse(&name) else {
                tracing::warn!(task = %name, "unknown task in task_runs, ignored");
                continue;
            };
            let params: String = row.try_get("params")?;
            runs.push(TaskRun {
                task,
                state: row.try_get("state")?,
                instance: row.try_get("instance")?,
                params: serde_json::from_str(&params).context("stored task parameters")?,
                run_id: row.try_get("run_id")?,
                started_at: row.try_get("started_at")?,
            });
        }
        Ok(runs)
    }

    pub async fn gavage_run(&self, run_id: &str) -> anyhow::Result<Option<StoredRun>> {
        let row =
            sqlx::query("SELECT nb_lots, acceleration, seed FROM gavage_runs WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(&self.read)
                .await
                .with_context(|| format!("read gavage run {run_id}"))?;
        row.map(|row| {
            Ok(StoredRun {
                nb_lots: u32::try_from(row.try_get::<i64, _>("nb_lots")?)?,
                acceleration: row.try_get("acceleration")?,
                seed: row.try_get::<i64, _>("seed")? as u64,
            })
        })
        .transpose()
    }

    /// Reads the lots of a run in the order they were created (the order of
    /// their first chain event), each with its number of stored meals.
    pub async fn run_lots(&self, run_id: &str) -> anyhow::Result<Vec<StoredLot>> {
        let rows = sqlx::query(
            "SELECT l.code_lot, l.gaveur_id, l.genetique, l.nb_canards, l.duree_jours, l.started_at, \
             (SELECT COUNT(*) FROM meals m WHERE m.code_lot = l.code_lot) AS meals \
             FROM lots l JOIN trace_events e ON e.code_lot = l.code_lot AND e.seq = 1 \
             WHERE l.run_id = $1 ORDER BY e.id",
        )
        .bind(run_id)
        .fetch_all(&self.read)
        .await
        .with_context(|| format!("read the lots of run {run_id}"))?;
        rows.iter()
            .map(|row| {
                Ok(StoredLot {
                    code_lot: row.try_get("code_lot")?,
                    gaveur_id: row.try_get("gaveur_id")?,
                    genetique: row.try_get("genetique")?,
                    nb_canards: row.try_get("nb_canards")?,
                    duree_jours: row.try_get("duree_jours")?,
                    started_at: row.try_get("started_at")?,
                    meals: row.try_get("meals")?,
                })
            })
            .collect()
    }

    /// Reads a lot another instance's monitor claimed, if it is still being
    /// inspected, with what the station needs.
    pub async fn claimed_lot(&self, code_lot: &str) -> anyhow::Result<Option<ClaimedLot>> {
        let row = sqlx::query(
            "SELECT q.code_lot, l.run_id, q.poids_moyen_final, q.attempts \
             FROM sqal_pending_lots q JOIN lots l ON l.code_lot = q.code_lot \
             WHERE q.code_lot = $1 AND q.status = 'inspecting'",
        )
        .bind(code_lot)
        .fetch_optional(&self.read)
        .await
        .with_context(|| format!("read the claim of lot {code_lot}"))?;
        row.map(|row| {
            Ok(ClaimedLot {
                code_lot: row.try_get("code_lot")?,
                run_id: row.try_get("run_id")?,
                poids_moyen_final: row.try_get("poids_moyen_final")?,
                attempts: row.try_get("attempts")?,
                fresh_until: None,
            })
        })
        .transpose()
    }
}
