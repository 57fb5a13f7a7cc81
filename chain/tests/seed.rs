//! Determinism of the simulators: a whole pipeline run with a given seed,
//! on a fresh SQLite file, stores the same rows as another run with that
//! seed. Times and trace tokens are left out of the comparison: times come
//! from the clock, and tokens come from the OS random source on purpose, so
//! that knowing a seed never reveals a trace page.

use chain::params::{GavageParams, MonitorParams, PipelineParams, QualityProfile, SqalParams};
use chain::services::Services;
use chain::store::Store;
use chain::views::TaskName;
use sqlx::Row;
use std::time::{Duration, Instant};

const NB_LOTS: u32 = 3;

fn params(gavage_seed: Option<u64>, sqal_seed: Option<u64>) -> PipelineParams {
    PipelineParams {
        gavage: GavageParams {
            nb_lots: NB_LOTS,
            acceleration: 10_000_000.0,
            seed: gavage_seed,
        },
        monitor: MonitorParams {
            polling_interval: 0.5,
        },
        sqal: SqalParams {
            device_id: "ESP32_LS_03".to_string(),
            interval: 0.01,
            nb_samples: 8,
            profile: QualityProfile::Standard,
            seed: sqal_seed,
        },
    }
}

/// Each table's rows as JSON arrays, in a fixed order, without times, ids
/// or tokens. SQLite's `json_array` prints REAL values with full precision.
const DUMPS: [(&str, &str); 5] = [
    (
        "lots",
        "SELECT json_array(code_lot, gaveur_id, site, genetique, nb_canards, duree_jours, status) \
         FROM lots ORDER BY code_lot",
    ),
    (
        "meals",
        "SELECT json_array(code_lot, jour, moment, dose_theorique, dose_reelle, poids_moyen, \
         nb_canards_vivants, taux_mortalite, temperature, humidite) \
         FROM meals ORDER BY code_lot, jour, moment",
    ),
    (
        "queue",
        "SELECT json_array(code_lot, poids_moyen_final, nb_canards_final, taux_mortalite, status, verdict) \
         FROM sqal_pending_lots ORDER BY code_lot",
    ),
    (
        "samples",
        "SELECT json_array(code_lot, sample_index, device_id, tof_distances, tof_reflectance, \
         tof_amplitude, tof_ambient, tof_status, as7341_counts, as7341_gain, as7341_integration_ms, \
         tof_score, as7341_score, final_score, grade, invalid_reason, details) \
         FROM sqal_samples ORDER BY code_lot, sample_index",
    ),
    (
        "products",
        "SELECT json_array(p.code_lot, s.sample_index, p.grade, p.final_score, p.tof_score, p.as7341_score) \
         FROM products p JOIN sqal_samples s ON s.id = p.sample_id ORDER BY p.code_lot, s.sample_index",
    ),
];

/// Runs the pipeline to the end on a fresh SQLite file and returns the
/// stored rows of each table.
async fn run_and_dump(params: PipelineParams) -> Vec<(String, Vec<String>)> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("seed.db").display());
    let store = Store::connect(&url).await.expect("store");
    let services = Services::new(store.clone(), "http://127.0.0.1:3000");
    services
        .start_pipeline(params)
        .await
        .expect("valid parameters");

    let deadline = Instant::now() + Duration::from_secs(60);
    let pool = sqlx::AnyPool::connect(&url).await.expect("read pool");
    loop {
        let inspected: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM sqal_pending_lots WHERE status = 'inspected'")
                .fetch_one(&pool)
                .await
                .unwrap()
                .get("n");
        if inspected == NB_LOTS as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {inspected} of {NB_LOTS} lots inspected after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in TaskName::ALL {
        services.stop(task).await;
    }

    let mut dump = Vec::new();
    for (table, sql) in DUMPS {
        let rows = sqlx::query(sql)
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|error| panic!("dump {table}: {error}"))
            .iter()
            .map(|row| row.get::<String, _>(0))
            .collect();
        dump.push((table.to_string(), rows));
    }
    pool.close().await;
    store.close().await;
    dump
}

/// Names the first table and row where two dumps differ.
fn first_difference(
    left: &[(String, Vec<String>)],
    right: &[(String, Vec<String>)],
) -> Option<String> {
    for ((table, left_rows), (_, right_rows)) in left.iter().zip(right) {
        if left_rows.len() != right_rows.len() {
            return Some(format!(
                "{table}: {} rows against {}",
                left_rows.len(),
                right_rows.len()
            ));
        }
        if let Some((a, b)) = left_rows.iter().zip(right_rows).find(|(a, b)| a != b) {
            return Some(format!("{table}:\n  {a}\n  {b}"));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_stores_same_rows() {
    sqlx::any::install_default_drivers();
    let first = run_and_dump(params(Some(42), Some(7))).await;
    let second = run_and_dump(params(Some(42), Some(7))).await;
    for (table, rows) in &first {
        assert!(!rows.is_empty(), "the run stored no {table}");
    }
    assert_eq!(first_difference(&first, &second), None);
    assert!(first == second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_or_no_seed_changes_rows() {
    sqlx::any::install_default_drivers();
    let seeded = run_and_dump(params(Some(42), Some(7))).await;
    let other = run_and_dump(params(Some(43), Some(8))).await;
    assert!(
        first_difference(&seeded, &other).is_some(),
        "seeds 42/7 and 43/8 stored the same rows"
    );
    let unseeded = run_and_dump(params(None, None)).await;
    let unseeded_again = run_and_dump(params(None, None)).await;
    assert!(
        first_difference(&unseeded, &unseeded_again).is_some(),
        "two runs without a seed stored the same rows"
    );
}
