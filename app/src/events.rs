//! Reading the event stream's JSON in the browser.
//!
//! `Event` is an internally tagged enum (`"type"` inside the object). serde
//! derives its `Deserialize` by buffering the whole object first, which adds
//! a second deserializer, reading from that buffer, for every type an event
//! carries. In the WASM bundle that copy took about 100 KB of code before
//! wasm-opt, so the page reads the tag in one pass and the variant's fields
//! in a second.

use chain::views::{
    ChainSnapshot, Event, EventEnvelope, GradedSample, LotProgress, ProductView, TaskStatus,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Envelope fields and the event's tag. serde skips the other fields.
#[derive(Deserialize)]
struct Head {
    id: u64,
    at: String,
    event: Tag,
    #[serde(default)]
    origin: Option<String>,
}

#[derive(Deserialize)]
struct Tag {
    #[serde(rename = "type")]
    kind: String,
}

/// The envelope again, reading only the event's fields as `T`.
#[derive(Deserialize)]
struct Body<T> {
    event: T,
}

#[derive(Deserialize)]
struct TaskFields {
    status: TaskStatus,
}

#[derive(Deserialize)]
struct LotCreatedFields {
    run_id: String,
    lot: LotProgress,
}

#[derive(Deserialize)]
struct MealRecordedFields {
    lot: LotProgress,
}

#[derive(Deserialize)]
struct CodeLotFields {
    code_lot: String,
}

#[derive(Deserialize)]
struct LotClaimedFields {
    code_lot: String,
    attempts: i64,
}

#[derive(Deserialize)]
struct QueueFields {
    pending: i64,
    inspecting: i64,
}

#[derive(Deserialize)]
struct SampleGradedFields {
    run_id: String,
    sample: GradedSample,
}

#[derive(Deserialize)]
struct ProductCreatedFields {
    run_id: String,
    product: ProductView,
}

#[derive(Deserialize)]
struct LotInspectedFields {
    code_lot: String,
    verdict: String,
}

#[derive(Deserialize)]
struct SnapshotFields {
    snapshot: Box<ChainSnapshot>,
}

fn read_fields<T: DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    serde_json::from_str::<Body<T>>(text).map(|body| body.event)
}

/// Parses one message of `/api/events`, as the server serialises an
/// `EventEnvelope`. Fails on invalid JSON, a missing field or an unknown
/// event type.
pub fn parse_envelope(text: &str) -> serde_json::Result<EventEnvelope> {
    let head: Head = serde_json::from_str(text)?;
    let event = match head.event.kind.as_str() {
        "task" => {
            let TaskFields { status } = read_fields(text)?;
            Event::Task { status }
        }
        "lot_created" => {
            let LotCreatedFields { run_id, lot } = read_fields(text)?;
            Event::LotCreated { run_id, lot }
        }
        "meal_recorded" => {
            let MealRecordedFields { lot } = read_fields(text)?;
            Event::MealRecorded { lot }
        }
        "lot_finished" => {
            let CodeLotFields { code_lot } = read_fields(text)?;
            Event::LotFinished { code_lot }
        }
        "lot_claimed" => {
            let LotClaimedFields { code_lot, attempts } = read_fields(text)?;
            Event::LotClaimed { code_lot, attempts }
        }
        "queue" => {
            let QueueFields {
                pending,
                inspecting,
            } = read_fields(text)?;
            Event::Queue {
                pending,
                inspecting,
            }
        }
        "sample_graded" => {
            let SampleGradedFields { run_id, sample } = read_fields(text)?;
            Event::SampleGraded { run_id, sample }
        }
        "product_created" => {
            let ProductCreatedFields { run_id, product } = read_fields(text)?;
            Event::ProductCreated { run_id, product }
        }
        "lot_inspected" => {
            let LotInspectedFields { code_lot, verdict } = read_fields(text)?;
            Event::LotInspected { code_lot, verdict }
        }
        "snapshot" => {
            let SnapshotFields { snapshot } = read_fields(text)?;
            Event::Snapshot { snapshot }
        }
        other => {
            return Err(serde::de::Error::custom(format_args!(
                "unknown event type {other:?}"
            )))
        }
    };
    Ok(EventEnvelope {
        id: head.id,
        at: head.at,
        event,
        origin: head.origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chain::grade::Grade;
    use chain::views::{GradeCounts, TaskName};

    fn lot() -> LotProgress {
        LotProgress {
            code_lot: "LL2612001".to_string(),
            gaveur: "Ferme Lafitte".to_string(),
            site: "Hagetmau".to_string(),
            genetique: "mulard".to_string(),
            duree_jours: 12,
            meals_done: 7,
            meals_total: 24,
            jour: 4,
            poids_moyen: Some(5_210.5),
            nb_canards_vivants: None,
            taux_mortalite: Some(1.25),
            status: "en_gavage".to_string(),
        }
    }

    fn product() -> ProductView {
        ProductView {
            product_id: "FG-LL2612001-0001".to_string(),
            token: "Q96fD28Otj5xa-8Ic4LjNQ".to_string(),
            code_lot: "LL2612001".to_string(),
            grade: Grade::APlus,
            final_score: 0.812,
            tof_score: 0.8,
            as7341_score: 0.83,
            qr_payload: "http://127.0.0.1:3000/trace/Q96fD28Otj5xa-8Ic4LjNQ".to_string(),
            created_at: "2026-12-05T05:20:00Z".to_string(),
        }
    }

    fn sample(grade: Option<Grade>) -> GradedSample {
        GradedSample {
            sample_id: 42,
            code_lot: "LL2612001".to_string(),
            sample_index: 3,
            grade,
            final_score: 0.4,
            tof_score: 0.5,
            as7341_score: 0.25,
            invalid_reason: grade.is_none().then(|| "tof out of range".to_string()),
            tof_distances: (0..64).map(f64::from).collect(),
            as7341_counts: vec![120.0; 10],
            details: None,
        }
    }

    fn every_event() -> Vec<Event> {
        let mut running = TaskStatus::stopped(TaskName::Sqal);
        running.params = Some(serde_json::json!({ "interval": 0.2, "profile": "premium" }));
        running.elsewhere = Some("instance-b".to_string());
        running.interrupted = true;
        let snapshot = ChainSnapshot {
            position: "boot1-17".to_string(),
            tasks: vec![TaskStatus::stopped(TaskName::Gavage), running.clone()],
            run_id: Some("run-7".to_string()),
            lots: vec![lot()],
            products: vec![product()],
            queue_pending: 2,
            queue_inspecting: 1,
            grade_counts: GradeCounts([1, 2, 3, 4, 5, 6]),
            counted_up_to: 42,
            latest_sample: Some(sample(Some(Grade::B))),
        };
        vec![
            Event::Task { status: running },
            Event::LotCreated {
                run_id: "run-7".to_string(),
                lot: lot(),
            },
            Event::MealRecorded { lot: lot() },
            Event::LotFinished {
                code_lot: "LL2612001".to_string(),
            },
            Event::LotClaimed {
                code_lot: "LL2612001".to_string(),
                attempts: 2,
            },
            Event::Queue {
                pending: 3,
                inspecting: 1,
            },
            Event::SampleGraded {
                run_id: "run-7".to_string(),
                sample: sample(None),
            },
            Event::ProductCreated {
                run_id: "run-7".to_string(),
                product: product(),
            },
            Event::LotInspected {
                code_lot: "LL2612001".to_string(),
                verdict: "approved".to_string(),
            },
            Event::Snapshot {
                snapshot: Box::new(snapshot),
            },
        ]
    }

    #[test]
    fn parses_every_event_type() {
        for (index, event) in every_event().into_iter().enumerate() {
            let envelope = EventEnvelope {
                id: index as u64 + 1,
                at: "2026-12-05T05:20:00Z".to_string(),
                event,
                origin: (index % 2 == 0).then(|| "instance-a".to_string()),
            };
            let text = serde_json::to_string(&envelope).unwrap();
            assert_eq!(parse_envelope(&text).unwrap(), envelope, "{text}");
        }
    }

    #[test]
    fn unknown_event_type_is_an_error() {
        let text =
            r#"{"id":1,"at":"2026-12-05T05:20:00Z","event":{"type":"lot_eaten","code_lot":"X"}}"#;
        let error = parse_envelope(text).unwrap_err().to_string();
        assert!(
            error.contains("unknown event type \"lot_eaten\""),
            "{error}"
        );
    }

    #[test]
    fn missing_event_field_is_an_error() {
        let text = r#"{"id":1,"at":"2026-12-05T05:20:00Z","event":{"type":"queue","pending":1}}"#;
        let error = parse_envelope(text).unwrap_err().to_string();
        assert!(error.contains("missing field `inspecting`"), "{error}");
    }

    #[test]
    fn invalid_json_is_an_error() {
        assert!(parse_envelope("{\"id\":1,").is_err());
        assert!(parse_envelope("").is_err());
    }
}
