//! Storage tests, run on a fresh SQLite file and on a fresh PostgreSQL
//! database (`FILIERE_TEST_POSTGRES`, by default the local server's `test`
//! database, used only to create one database per test).

use chain::gavage::{MealOutcome, Moment};
use chain::ingest::{IngestError, SamplePayload};
use chain::services::Services;
use chain::sqal::{analyze, simulate};
use chain::store::{
    MealBatchStored, MealRow, MealStored, NewLot, SampleRow, Store, MAX_INSPECTION_ATTEMPTS,
};
use chain::views::IntegrityStatus;
use rand::SeedableRng;

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh database of each engine, with the directory that contains the
/// SQLite file. Dropping it drops the PostgreSQL database too.
struct Databases {
    _dir: tempfile::TempDir,
    urls: Vec<String>,
    admin_url: String,
    postgres_name: String,
}

impl Drop for Databases {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.postgres_name.clone();
        // Drop runs inside the test's runtime, which cannot block on async
        // work, so the cleanup gets a thread and a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut admin =
                    <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!(
                "could not drop test database {}: {error}",
                self.postgres_name
            );
        }
    }
}

async fn fresh_databases() -> Databases {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sqlite = format!("sqlite://{}", dir.path().join("store.db").display());
    let admin_url =
        std::env::var("FILIERE_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.to_string());
    sqlx::any::install_default_drivers();
    let name = format!("filiere_test_{:016x}", rand::random::<u64>());
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap_or_else(|error| {
            panic!("PostgreSQL at {admin_url} is needed for the storage tests: {error}")
        });
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let postgres = match admin_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("FILIERE_TEST_POSTGRES has no database part: {admin_url}"),
    };
    Databases {
        _dir: dir,
        urls: vec![sqlite, postgres],
        admin_url,
        postgres_name: name,
    }
}

fn meal(code_lot: &str, jour: u32, moment: Moment) -> MealRow {
    let outcome = MealOutcome {
        jour,
        moment,
        dose_theorique: 300.0,
        dose_reelle: 301.5,
        poids_moyen: 6500.0,
        nb_canards_vivants: 48,
        taux_mortalite: 2.0,
        temperature: 21.0,
        humidite: 60.0,
        is_last: false,
    };
    MealRow::from_outcome(code_lot, &outcome, "2026-12-04T10:00:00.000Z".to_string())
}

/// Feeds all 26 meals of a 12-day lot, in order.
async fn feed_whole_lot(store: &Store, code_lot: &str) {
    for jour in 0..=12 {
        for moment in [Moment::Matin, Moment::Soir] {
            let stored = store
                .ingest_meal(&meal(code_lot, jour, moment))
                .await
                .unwrap();
            let last = jour == 12 && moment == Moment::Soir;
            assert!(
                matches!(stored, MealStored::Stored { pret_abattage, .. } if pret_abattage == last),
                "jour {jour} {moment:?}: {stored:?}"
            );
        }
    }
}

async fn meal_count(store: &Store, code_lot: &str) -> usize {
    store.meals_of(code_lot).await.unwrap().len()
}

async fn new_lot(store: &Store, run_id: &str) -> String {
    store
        .create_lot(&NewLot {
            run_id,
            gaveur_id: 1,
            site: "LL",
            genetique: "Mulard",
            nb_canards: 50,
            duree_jours: 12,
            started_at: "2026-12-04T09:00:00.000Z".to_string(),
        })
        .await
        .expect("lot created")
}

#[tokio::test]
async fn code_lot_sequence_survives_reconnect() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(&url).await.unwrap();
        store.insert_gavage_run("R1", 1, 1000.0, 7).await.unwrap();
        assert_eq!(new_lot(&store, "R1").await, "LL2612001", "{url}");
        store.close().await;

        let store = Store::connect(&url).await.unwrap();
        store.insert_gavage_run("R2", 1, 1000.0, 8).await.unwrap();
        assert_eq!(new_lot(&store, "R2").await, "LL2612002", "{url}");
        store.close().await;
    }
}

#[tokio::test]
async fn second_meal_for_same_slot_is_rejected() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(&url).await.unwrap();
        store.insert_gavage_run("R1", 1, 1000.0, 7).await.unwrap();
        let code = new_lot(&store, "R1").await;
        let first = store
            .ingest_meal(&meal(&code, 0, Moment::Matin))
            .await
            .unwrap();
        assert!(
            matches!(
                first,
                MealStored::Stored {
                    pret_abattage: false,
                    ..
                }
            ),
            "{url}: {first:?}"
        );
        let again = store
            .ingest_meal(&meal(&code, 0, Moment::Matin))
            .await
            .unwrap();
        assert_eq!(again, MealStored::Duplicate, "{url}");
        assert_eq!(meal_count(&store, &code).await, 1, "{url}");
        store.close().await;
    }
}

#[tokio::test]
async fn misfit_meals_write_nothing() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(&url).await.unwrap();
        store.insert_gavage_run("R1", 1, 1000.0, 7).await.unwrap();
        let code = new_lot(&store, "R1").await;
        let field_of = |stored: MealStored| match stored {
            MealStored::Refused(invalid) => invalid.field,
            other => panic!("{url}: expected a refusal, got {other:?}"),
        };
        // Soir before matin: out of order.
        let skipped = store
            .ingest_meal(&meal(&code, 0, Moment::Soir))
            .await
            .unwrap();
        assert_eq!(field_of(skipped), "jour");
        // Day 13 of a 12-day lot.
        let late = store
            .ingest_meal(&meal(&code, 13, Moment::Matin))
            .await
            .unwrap();
        assert_eq!(field_of(late), "jour");
        // More living ducks than the lot has.
        let mut crowded = meal(&code, 0, Moment::Matin);
        crowded.nb_canards_vivants = 51;
        assert_eq!(
            field_of(store.ingest_meal(&crowded).await.unwrap()),
            "nb_canards_vivants"
        );
        // A lot that does not exist.
        let unknown = store
            .ingest_meal(&meal("MT2612999", 0, Moment::Matin))
            .await
            .unwrap();
        assert_eq!(field_of(unknown), "code_lot");
        assert_eq!(meal_count(&store, &code).await, 0, "{url}");
        store.close().await;
    }
}

#[tokio::test]
async fn queue_counts_follow_the_last_change() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(&url).await.unwrap();
        store.insert_gavage_run("R1", 2, 1000.0, 7).await.unwrap();
        let lots = [new_lot(&store, "R1").await, new_lot(&store, "R1").await];
        let services = Services::new(store.clone(), "http://127.0.0.1:3000");
        let mut events = services.bus.subscribe();

        // Changes in quick succession, each announced: the reads coalesce,
        // and the last event shows the queue after the last change.
        for code in &lots {
            feed_whole_lot(&store, code).await;
            services.publish_queue();
        }
        store
            .claim_next_lot(60.0)
            .await
            .unwrap()
            .expect("a lot to claim");
        for _ in 0..5 {
            services.publish_queue();
        }
        let mut published = Vec::new();
        while published.last() != Some(&(1, 1)) {
            let envelope = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("{url}: no queue event showing (1, 1) after {published:?}")
                })
                .expect("bus open");
            if let chain::views::Event::Queue {
                pending,
                inspecting,
            } = envelope.event
            {
                published.push((pending, inspecting));
            }
        }
        assert!(
            published.len() <= 7,
            "{url}: more queue events than announcements: {published:?}"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn finished_lot_is_claimed_once() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(&url).await.unwrap();
        store.insert_gavage_run("R1", 1, 1000.0, 7).await.unwrap();
        let code = new_lot(&store, "R1").await;
        assert_eq!(
            store.claim_next_lot(60.0).await.unwrap(),
            None,
            "{url}: claimed an unfinished lot"
        );

        feed_whole_lot(&store, &code).await;
        assert_eq!(store.queue_counts().await.unwrap(), (1, 0), "{url}");
        // The lot is finished: a further meal is refused and writes nothing.
        let extra = store
            .ingest_meal(&meal(&code, 13, Moment::Matin))
            .await
            .unwrap();
        assert!(matches!(extra, MealStored::Refused(_)), "{url}: {extra:?}");
        assert_eq!(meal_count(&store, &code).await, 26, "{url}");
        let claimed = store
            .claim_next_lot(60.0)
            .await
            .unwrap()
            .expect("a pending lot");
        assert_eq!(claimed.code_lot, code);
        assert_eq!(claimed.run_id, "R1");
        assert_eq!(claimed.attempts, 1);
        assert_eq!(
            store.claim_next_lot(60.0).await.unwrap(),
            None,
            "{url}: claimed twice under a lease"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn batch_finishing_lots_queues_each() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(url).await.unwrap();
        store.insert_gavage_run("R1", 2, 1000.0, 7).await.unwrap();
        let lots = [new_lot(&store, "R1").await, new_lot(&store, "R1").await];
        // Both lots' meals in one batch, the last ones with their own
        // final figures.
        let mut meals = Vec::new();
        for jour in 0..=12 {
            for moment in [Moment::Matin, Moment::Soir] {
                for (n, code) in lots.iter().enumerate() {
                    let mut row = meal(code, jour, moment);
                    if jour == 12 && moment == Moment::Soir {
                        row.poids_moyen = 7000.0 + n as f64;
                        row.nb_canards_vivants = 40 + n as i64;
                    }
                    meals.push(row);
                }
            }
        }
        let stored = store.ingest_meals(&meals).await.unwrap();
        assert!(
            matches!(stored, MealBatchStored::Stored(ref rows) if rows.len() == meals.len()),
            "{url}: {stored:?}"
        );
        assert_eq!(store.queue_counts().await.unwrap(), (2, 0), "{url}");

        let claimed = store.claim_lots(60.0, 2).await.unwrap();
        assert_eq!(claimed.len(), 2, "{url}");
        for (n, lot) in claimed.iter().enumerate() {
            assert_eq!(lot.code_lot, lots[n], "{url}");
            assert_eq!(lot.poids_moyen_final, 7000.0 + n as f64, "{url}: {lot:?}");
        }
        let raw = sqlx::AnyPool::connect(url).await.unwrap();
        for (n, code) in lots.iter().enumerate() {
            let (status, finished): (String, i64) = sqlx::query_as(
                "SELECT l.status, p.nb_canards_final FROM lots l \
                 JOIN sqal_pending_lots p ON p.code_lot = l.code_lot WHERE l.code_lot = $1",
            )
            .bind(code)
            .fetch_one(&raw)
            .await
            .unwrap();
            assert_eq!(status, "pret_abattage", "{url}: {code}");
            assert_eq!(finished, 40 + n as i64, "{url}: {code}");
            let kinds: Vec<String> = sqlx::query_scalar(
                "SELECT kind FROM trace_events WHERE code_lot = $1 ORDER BY seq",
            )
            .bind(code)
            .fetch_all(&raw)
            .await
            .unwrap();
            assert_eq!(
                kinds,
                ["lot_created", "gavage_finished", "inspection_started"],
                "{url}: {code}"
            );
        }
        raw.close().await;
        store.close().await;
    }
}

#[tokio::test]
async fn claims_stop_at_lots_in_flight() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(url).await.unwrap();
        let in_flight = chain::store::MAX_LOTS_IN_FLIGHT as usize;
        store
            .insert_gavage_run("R1", in_flight as u32 + 2, 1000.0, 7)
            .await
            .unwrap();
        let mut codes = Vec::new();
        for _ in 0..in_flight + 2 {
            let code = new_lot(&store, "R1").await;
            feed_whole_lot(&store, &code).await;
            codes.push(code);
        }
        for expected in &codes[..in_flight] {
            let claimed = store.claim_next_lot(60.0).await.unwrap();
            assert_eq!(
                claimed.map(|lot| lot.code_lot).as_ref(),
                Some(expected),
                "{url}"
            );
        }
        assert_eq!(
            store.claim_next_lot(60.0).await.unwrap(),
            None,
            "{url}: claimed past {in_flight} lots in flight"
        );

        // An inspected lot frees its place for the next one.
        store
            .finish_inspection(&codes[0], "conforme")
            .await
            .unwrap();
        let next = store.claim_next_lot(60.0).await.unwrap();
        assert_eq!(
            next.map(|lot| lot.code_lot).as_ref(),
            Some(&codes[in_flight]),
            "{url}"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn batch_claim_fills_room_in_order() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(url).await.unwrap();
        let in_flight = chain::store::MAX_LOTS_IN_FLIGHT;
        let lots = in_flight + 3;
        store
            .insert_gavage_run("R1", lots as u32, 1000.0, 7)
            .await
            .unwrap();
        let mut codes = Vec::new();
        for _ in 0..lots {
            let code = new_lot(&store, "R1").await;
            feed_whole_lot(&store, &code).await;
            codes.push(code);
        }
        assert_eq!(
            store.claim_room().await.unwrap(),
            (in_flight, lots),
            "{url}"
        );

        let first = store.claim_lots(60.0, 3).await.unwrap();
        let claimed: Vec<&str> = first.iter().map(|lot| lot.code_lot.as_str()).collect();
        assert_eq!(
            claimed,
            codes[..3],
            "{url}: the three oldest lots, in order"
        );
        for lot in &first {
            assert_eq!(lot.run_id, "R1", "{url}: {lot:?}");
            assert_eq!(lot.attempts, 1, "{url}: {lot:?}");
            assert!(lot.fresh_until.is_some(), "{url}: a new claim is fresh");
        }
        assert_eq!(
            store.claim_room().await.unwrap(),
            (in_flight - 3, lots - 3),
            "{url}"
        );

        // Asking for more than the room left gets the room left.
        let second = store.claim_lots(60.0, 100).await.unwrap();
        let claimed: Vec<&str> = second.iter().map(|lot| lot.code_lot.as_str()).collect();
        assert_eq!(claimed, codes[3..in_flight as usize], "{url}");
        assert_eq!(store.claim_room().await.unwrap(), (0, 3), "{url}");
        assert_eq!(
            store.claim_lots(60.0, 100).await.unwrap(),
            Vec::new(),
            "{url}: claimed past {in_flight} lots in flight"
        );

        // Each claim wrote its lot's inspection_started event on the chain.
        let raw = sqlx::AnyPool::connect(url).await.unwrap();
        let started: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM trace_events WHERE kind = 'inspection_started'",
        )
        .fetch_one(&raw)
        .await
        .unwrap();
        assert_eq!(started, in_flight, "{url}");
        raw.close().await;
        store.close().await;
    }
}

#[tokio::test]
async fn expired_lease_is_claimed_again() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(&url).await.unwrap();
        store.insert_gavage_run("R1", 1, 1000.0, 7).await.unwrap();
        let code = new_lot(&store, "R1").await;
        feed_whole_lot(&store, &code).await;
        // A lease already in the past stands for a crashed inspection.
        store
            .claim_next_lot(-1.0)
            .await
            .unwrap()
            .expect("first claim");
        let again = store
            .claim_next_lot(60.0)
            .await
            .unwrap()
            .expect("claim after lease expiry");
        assert_eq!(again.attempts, 2, "{url}");
        store.close().await;
    }
}

#[tokio::test]
async fn failed_inspection_is_retried_then_kept() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(&url).await.unwrap();
        store.insert_gavage_run("R1", 1, 1000.0, 7).await.unwrap();
        let code = new_lot(&store, "R1").await;
        feed_whole_lot(&store, &code).await;
        for attempt in 1..=MAX_INSPECTION_ATTEMPTS {
            let claimed = store.claim_next_lot(60.0).await.unwrap();
            assert_eq!(
                claimed.map(|lot| lot.attempts),
                Some(attempt),
                "{url}: attempt {attempt}"
            );
            store
                .fail_inspection(&code, "station lost its ToF sensor")
                .await
                .unwrap();
        }
        assert_eq!(
            store.claim_next_lot(60.0).await.unwrap(),
            None,
            "{url}: claimed after the last attempt"
        );
        let (status, attempts, last_error) = store.queue_entry(&code).await.unwrap().unwrap();
        assert_eq!(status, "error", "{url}");
        assert_eq!(attempts, MAX_INSPECTION_ATTEMPTS, "{url}");
        assert_eq!(
            last_error.as_deref(),
            Some("station lost its ToF sensor"),
            "{url}"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn sample_stored_twice_yields_one_product() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(&url).await.unwrap();
        store.insert_gavage_run("R1", 1, 1000.0, 7).await.unwrap();
        let code = new_lot(&store, "R1").await;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let measurement = simulate(&mut rng, 0.95, 560.0);
        let analysis = analyze(&measurement);
        assert!(
            analysis.grade.is_some_and(|grade| grade.is_compliant()),
            "a 0.95 liver grades {:?}",
            analysis.grade
        );
        let row = SampleRow {
            code_lot: &code,
            sample_index: 0,
            device_id: "ESP32_LL_01",
            measurement: &measurement,
            analysis: &analysis,
        };

        let first = store
            .record_sample(&row, "http://127.0.0.1:3000")
            .await
            .unwrap();
        assert!(first.sample_id.is_some());
        let product = first.product.expect("compliant sample gives a product");
        assert!(
            product.product_id.starts_with("FG_LL_"),
            "{}",
            product.product_id
        );
        assert_eq!(product.product_id.len(), "FG_LL_20261204_0000000001".len());

        let second = store
            .record_sample(&row, "http://127.0.0.1:3000")
            .await
            .unwrap();
        assert_eq!(second.sample_id, None, "{url}: sample stored twice");
        assert_eq!(second.product, None, "{url}: second product");
        assert_eq!(
            store.products(Some(&code), 10).await.unwrap().len(),
            1,
            "{url}"
        );

        let trace = store
            .trace(&product.token)
            .await
            .unwrap()
            .expect("trace by token");
        assert_eq!(trace.product, product);
        assert_eq!(trace.lot.gaveur, "Yannick Le Goff");
        assert_eq!(trace.lot.region, "Bretagne");
        assert_eq!(trace.sample.tof_distances.len(), 64);
        assert_eq!(store.trace("AAAAAAAAAAAAAAAAAAAAAA").await.unwrap(), None);
        store.close().await;
    }
}

#[tokio::test]
async fn failed_migration_stops_with_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.db");
    let url = format!("sqlite://{}", path.display());
    // A table of the same name and another shape makes the first migration fail.
    {
        use sqlx::Connection;
        let mut connection = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap();
        sqlx::query("CREATE TABLE sites (oops INTEGER)")
            .execute(&mut connection)
            .await
            .unwrap();
    }
    let error = Store::connect(&url)
        .await
        .err()
        .expect("migration must fail");
    let message = format!("{error:#}");
    assert!(message.contains("database migration failed"), "{message}");
    assert!(message.contains("sites"), "{message}");
}

#[tokio::test]
async fn unsupported_database_url_is_rejected() {
    let error = Store::connect("mysql://localhost/test")
        .await
        .err()
        .expect("mysql is not supported");
    assert!(format!("{error}").contains("DATABASE_URL"), "{error}");
}

#[tokio::test]
async fn tampering_breaks_verification() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(&url).await.unwrap();
        store.insert_gavage_run("R1", 1, 1000.0, 7).await.unwrap();
        let code = new_lot(&store, "R1").await;
        feed_whole_lot(&store, &code).await;
        store.claim_next_lot(60.0).await.unwrap().expect("claimed");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let measurement = simulate(&mut rng, 0.95, 560.0);
        let analysis = analyze(&measurement);
        let row = SampleRow {
            code_lot: &code,
            sample_index: 0,
            device_id: "ESP32_LL_01",
            measurement: &measurement,
            analysis: &analysis,
        };
        let outcome = store
            .record_sample(&row, "http://127.0.0.1:3000")
            .await
            .unwrap();
        let token = outcome.product.expect("a compliant sample").token;

        let proof = store.verify(&token).await.unwrap().expect("a known token");
        assert_eq!(
            proof.status,
            IntegrityStatus::Verified,
            "{url}: {:?}",
            proof.problems
        );
        let kinds: Vec<&str> = proof
            .events
            .iter()
            .map(|event| event.kind.as_str())
            .collect();
        assert_eq!(
            kinds,
            [
                "lot_created",
                "gavage_finished",
                "inspection_started",
                "sample_graded",
                "product_created"
            ],
            "{url}"
        );

        let raw = sqlx::AnyPool::connect(url).await.unwrap();
        // Each change stays in place; its failure must name the event it breaks.
        let tampering = [
            (
                "UPDATE products SET grade = 'A+', final_score = 0.99 WHERE token = $1",
                "product_created",
            ),
            (
                "UPDATE sqal_samples SET final_score = 0.99 WHERE code_lot = (SELECT code_lot FROM products WHERE token = $1)",
                "sample_graded",
            ),
            (
                "UPDATE lots SET nb_canards = 40 WHERE code_lot = (SELECT code_lot FROM products WHERE token = $1)",
                "lot_created",
            ),
            (
                "UPDATE trace_events SET payload = REPLACE(payload, '\"attempt\":1', '\"attempt\":2') \
                 WHERE kind = 'inspection_started' AND code_lot = (SELECT code_lot FROM products WHERE token = $1)",
                "inspection_started",
            ),
        ];
        for (change, kind) in tampering {
            let changed = sqlx::query(change)
                .bind(&token)
                .execute(&raw)
                .await
                .unwrap();
            assert_eq!(changed.rows_affected(), 1, "{url}: {change}");
            let proof = store.verify(&token).await.unwrap().unwrap();
            assert_eq!(proof.status, IntegrityStatus::Failed, "{url}: {change}");
            assert!(
                proof.problems.iter().any(|problem| problem.contains(kind)),
                "{url}: {change} gave {:?}",
                proof.problems
            );
        }
        raw.close().await;
        store.close().await;
    }
}

/// Builds every meal of a 12-day lot, in order.
fn whole_lot_meals(code_lot: &str) -> Vec<MealRow> {
    (0..=12)
        .flat_map(|jour| [Moment::Matin, Moment::Soir].map(|moment| meal(code_lot, jour, moment)))
        .collect()
}

#[tokio::test]
async fn meal_batch_spans_lots_and_queues_finished() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(&url).await.unwrap();
        store.insert_gavage_run("R1", 2, 1000.0, 7).await.unwrap();
        let finishing = new_lot(&store, "R1").await;
        let starting = new_lot(&store, "R1").await;
        // The finishing lot's meals with the other lot's first three
        // woven in, as the simulator sends them when it catches up.
        let mut batch = whole_lot_meals(&finishing);
        for (position, jour_moment) in [
            (0, (0, Moment::Matin)),
            (10, (0, Moment::Soir)),
            (20, (1, Moment::Matin)),
        ] {
            batch.insert(position, meal(&starting, jour_moment.0, jour_moment.1));
        }

        let MealBatchStored::Stored(stored) = store.ingest_meals(&batch).await.unwrap() else {
            panic!("{url}: batch not stored");
        };
        assert_eq!(stored.len(), batch.len(), "{url}");
        let finished: Vec<&str> = batch
            .iter()
            .zip(&stored)
            .filter(|(_, stored)| stored.pret_abattage)
            .map(|(meal, _)| meal.code_lot.as_str())
            .collect();
        assert_eq!(finished, [finishing.as_str()], "{url}");
        assert!(
            stored.last().unwrap().pret_abattage,
            "{url}: the last meal of the finishing lot comes last"
        );
        let mut ids: Vec<i64> = stored.iter().map(|meal| meal.meal_id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), batch.len(), "{url}: meal ids repeat");
        assert_eq!(meal_count(&store, &finishing).await, 26, "{url}");
        assert_eq!(meal_count(&store, &starting).await, 3, "{url}");
        let claimed = store
            .claim_next_lot(60.0)
            .await
            .unwrap()
            .expect("a queued lot");
        assert_eq!(claimed.code_lot, finishing, "{url}");
        store.close().await;
    }
}

#[tokio::test]
async fn meal_batch_stops_at_first_misfit() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(&url).await.unwrap();
        store.insert_gavage_run("R1", 1, 1000.0, 7).await.unwrap();
        let code = new_lot(&store, "R1").await;
        store
            .ingest_meal(&meal(&code, 0, Moment::Matin))
            .await
            .unwrap();

        let repeated = [
            meal(&code, 0, Moment::Soir),
            meal(&code, 1, Moment::Matin),
            meal(&code, 0, Moment::Soir),
        ];
        let outcome = store.ingest_meals(&repeated).await.unwrap();
        assert_eq!(
            outcome,
            MealBatchStored::Stopped {
                index: 2,
                outcome: MealStored::Duplicate
            },
            "{url}"
        );

        let unknown_lot = [
            meal(&code, 0, Moment::Soir),
            meal("MT2612999", 0, Moment::Matin),
        ];
        let outcome = store.ingest_meals(&unknown_lot).await.unwrap();
        let MealBatchStored::Stopped {
            index: 1,
            outcome: MealStored::Refused(invalid),
        } = outcome
        else {
            panic!("{url}: the unknown lot was not refused: {outcome:?}");
        };
        assert_eq!(invalid.field, "code_lot", "{url}");
        assert_eq!(
            meal_count(&store, &code).await,
            1,
            "{url}: a stopped batch wrote meals"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn sample_batch_chains_every_product() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(&url).await.unwrap();
        store.insert_gavage_run("R1", 2, 1000.0, 7).await.unwrap();
        let lots = [new_lot(&store, "R1").await, new_lot(&store, "R1").await];
        for code in &lots {
            feed_whole_lot(&store, code).await;
            store.claim_next_lot(60.0).await.unwrap().expect("claimed");
        }
        let measured: Vec<_> = (0..4u64)
            .map(|seed| {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                let measurement = simulate(&mut rng, 0.95, 560.0);
                let analysis = analyze(&measurement);
                (measurement, analysis)
            })
            .collect();
        let row = |lot: usize, sample_index: u32| SampleRow {
            code_lot: &lots[lot],
            sample_index,
            device_id: "ESP32_LL_01",
            measurement: &measured[sample_index as usize].0,
            analysis: &measured[sample_index as usize].1,
        };
        let url_base = "http://127.0.0.1:3000";
        store.record_sample(&row(0, 3), url_base).await.unwrap();

        // Lot 0's sample 3 is stored already and its sample 1 comes twice.
        let batch = [
            row(0, 3),
            row(0, 0),
            row(1, 0),
            row(0, 1),
            row(1, 2),
            row(0, 1),
        ];
        let outcomes = store.record_samples(&batch, url_base).await.unwrap();
        let stored: Vec<bool> = outcomes
            .iter()
            .map(|outcome| outcome.sample_id.is_some())
            .collect();
        assert_eq!(stored, [false, true, true, true, true, false], "{url}");

        for (row, outcome) in batch.iter().zip(&outcomes) {
            let compliant = row.analysis.grade.is_some_and(|grade| grade.is_compliant());
            let Some(sample_id) = outcome.sample_id else {
                assert_eq!(outcome.product, None, "{url}: product without a sample");
                continue;
            };
            let Some(product) = &outcome.product else {
                assert!(
                    !compliant,
                    "{url}: compliant sample {} without product",
                    row.sample_index
                );
                continue;
            };
            assert!(compliant, "{url}: product for a non-compliant sample");
            assert_eq!(product.code_lot, row.code_lot, "{url}");
            assert!(
                product.product_id.ends_with(&format!("_{sample_id:010}")),
                "{url}: {} is not numbered by sample {sample_id}",
                product.product_id
            );
            let proof = store
                .verify(&product.token)
                .await
                .unwrap()
                .expect("a known token");
            assert_eq!(
                proof.status,
                IntegrityStatus::Verified,
                "{url}: {} {:?}",
                product.product_id,
                proof.problems
            );
        }
        store.close().await;
    }
}

#[tokio::test]
async fn abandoned_ingests_are_written_before_close() {
    use chain::group_commit::{QueuedSample, SampleQueue};
    use std::future::Future;
    use std::task::{Context, Waker};

    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(&url).await.unwrap();
        store.insert_gavage_run("R1", 1, 1000.0, 7).await.unwrap();
        let code_lot = new_lot(&store, "R1").await;
        feed_whole_lot(&store, &code_lot).await;
        let queue = SampleQueue::default();

        // Each request is polled once, which queues its sample, and then
        // dropped, as when a device hangs up. The writer task still stores
        // every sample.
        const REQUESTS: u32 = 20;
        for request in 0..REQUESTS {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(request as u64);
            let measurement = simulate(&mut rng, 0.9, 560.0);
            let sample = QueuedSample {
                code_lot: code_lot.clone(),
                sample_index: request,
                device_id: "ESP32_LL_01".into(),
                analysis: analyze(&measurement),
                measurement,
            };
            let mut record = std::pin::pin!(queue.record(&store, "http://127.0.0.1:3000", sample));
            let polled = record
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
            assert!(polled.is_pending(), "{url}: stored before the writer ran");
        }
        assert!(
            queue.wait_idle(std::time::Duration::from_secs(10)).await,
            "{url}: samples still pending after 10 s"
        );
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqal_samples")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(stored, REQUESTS as i64, "{url}");
        store.close().await;
    }
}

/// Connects to `url` and makes two lots of run R1 ready for slaughter.
async fn two_ready_lots(url: &str) -> (Store, [String; 2]) {
    let store = Store::connect(url).await.unwrap();
    store.insert_gavage_run("R1", 2, 1000.0, 7).await.unwrap();
    let lots = [new_lot(&store, "R1").await, new_lot(&store, "R1").await];
    for code in &lots {
        feed_whole_lot(&store, code).await;
    }
    (store, lots)
}

/// Returns a device payload for sample `index` of `code_lot`, measured on a
/// simulated 560 g liver of latent quality 0.9, drawn from `seed`.
fn simulated_payload(code_lot: &str, index: u32, seed: u64) -> SamplePayload {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let measurement = simulate(&mut rng, 0.9, 560.0);
    SamplePayload::new("ESP32_LL_01", code_lot, index, measurement)
}

/// Checks the hash chain behind each product token.
async fn assert_verified(store: &Store, url: &str, tokens: &[String]) {
    for token in tokens {
        let proof = store.verify(token).await.unwrap().expect("a known token");
        assert_eq!(
            proof.status,
            IntegrityStatus::Verified,
            "{url}: {token}: {:?}",
            proof.problems
        );
    }
}

#[tokio::test]
async fn concurrent_ingest_stores_every_sample() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let (store, lots) = two_ready_lots(url).await;
        let services = Services::new(store.clone(), "http://127.0.0.1:3000");

        const REQUESTS: u32 = 60;
        let mut requests = tokio::task::JoinSet::new();
        for request in 0..REQUESTS {
            let services = services.clone();
            let code_lot = lots[(request % 2) as usize].clone();
            requests.spawn(async move {
                let payload = simulated_payload(&code_lot, request / 2, request as u64);
                services.ingest_sample(&payload).await
            });
        }
        let mut sample_ids = Vec::new();
        let mut tokens = Vec::new();
        while let Some(joined) = requests.join_next().await {
            let receipt = joined
                .expect("request task")
                .unwrap_or_else(|error| panic!("{url}: a concurrent sample failed: {error}"));
            sample_ids.push(receipt.sample_id);
            tokens.extend(receipt.product.map(|product| product.token));
        }
        sample_ids.sort_unstable();
        sample_ids.dedup();
        assert_eq!(
            sample_ids.len(),
            REQUESTS as usize,
            "{url}: sample ids repeat"
        );
        assert!(
            !tokens.is_empty(),
            "{url}: no compliant sample among {REQUESTS}"
        );
        assert_verified(&store, url, &tokens).await;
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqal_samples")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(stored, REQUESTS as i64, "{url}");
        store.close().await;
    }
}

#[tokio::test]
async fn resent_samples_stored_once_concurrently() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let (store, lots) = two_ready_lots(url).await;
        let services = Services::new(store.clone(), "http://127.0.0.1:3000");

        // Every sample twice: once in ascending order, once in descending
        // order, all at once, as devices retrying after a timeout would.
        const KEYS: u32 = 24;
        let keys: Vec<u32> = (0..KEYS).chain((0..KEYS).rev()).collect();
        let mut requests = tokio::task::JoinSet::new();
        for key in keys {
            let services = services.clone();
            let code_lot = lots[(key % 2) as usize].clone();
            requests.spawn(async move {
                let payload = simulated_payload(&code_lot, key / 2, key as u64);
                services.ingest_sample(&payload).await
            });
        }
        let (mut stored, mut duplicates) = (0, 0);
        let mut tokens = Vec::new();
        while let Some(joined) = requests.join_next().await {
            match joined.expect("request task") {
                Ok(receipt) => {
                    stored += 1;
                    tokens.extend(receipt.product.map(|product| product.token));
                }
                Err(IngestError::Duplicate { .. }) => duplicates += 1,
                Err(error) => panic!("{url}: a resent sample failed: {error}"),
            }
        }
        assert_eq!(stored, KEYS, "{url}: samples stored");
        assert_eq!(duplicates, KEYS, "{url}: samples reported as duplicates");
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqal_samples")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(rows, KEYS as i64, "{url}");
        assert!(!tokens.is_empty(), "{url}: no compliant sample");
        assert_verified(&store, url, &tokens).await;
        store.close().await;
    }
}

#[tokio::test]
async fn ingest_remembers_only_lots_ready_for_slaughter() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(url).await.unwrap();
        store.insert_gavage_run("R1", 1, 1000.0, 7).await.unwrap();
        let code_lot = new_lot(&store, "R1").await;
        let services = Services::new(store.clone(), "http://127.0.0.1:3000");
        let payload = |index: u32| simulated_payload(&code_lot, index, index as u64);

        let rejected = services.ingest_sample(&payload(0)).await.unwrap_err();
        assert!(
            rejected.to_string().contains("en_gavage"),
            "{url}: a lot in gavage should be rejected, got {rejected}"
        );
        assert_eq!(
            services.ready_lots.run_of(&code_lot),
            None,
            "{url}: a lot in gavage was remembered as ready"
        );

        feed_whole_lot(&store, &code_lot).await;
        for index in 0..3 {
            let receipt = services.ingest_sample(&payload(index)).await;
            assert!(receipt.is_ok(), "{url}: sample {index}: {receipt:?}");
        }
        assert_eq!(
            services.ready_lots.run_of(&code_lot).as_deref(),
            Some("R1"),
            "{url}: the ready lot was not remembered with its run"
        );
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqal_samples")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(stored, 3, "{url}");
        store.close().await;
    }
}

#[tokio::test]
async fn lot_batch_numbers_like_single_creates() {
    let databases = fresh_databases().await;
    for url in databases.urls.iter() {
        let store = Store::connect(url).await.unwrap();
        store.insert_gavage_run("R1", 5, 1000.0, 7).await.unwrap();
        assert_eq!(new_lot(&store, "R1").await, "LL2612001", "{url}");
        let lot = |site, started_at: &str| NewLot {
            run_id: "R1",
            gaveur_id: 1,
            site,
            genetique: "Mulard",
            nb_canards: 50,
            duree_jours: 12,
            started_at: started_at.to_string(),
        };
        let batch = [
            lot("LL", "2026-12-31T23:00:00.000Z"),
            lot("MT", "2026-12-31T23:00:00.000Z"),
            lot("LL", "2027-01-01T01:00:00.000Z"),
            lot("LL", "2026-12-31T23:30:00.000Z"),
        ];
        let codes = store.create_lots(&batch).await.unwrap();
        assert_eq!(
            codes,
            ["LL2612002", "MT2612001", "LL2701001", "LL2612003"],
            "{url}"
        );
        assert_eq!(new_lot(&store, "R1").await, "LL2612004", "{url}");

        let lots = store.run_lots("R1").await.unwrap();
        assert_eq!(lots.len(), 6, "{url}");
        store.close().await;
    }
}
