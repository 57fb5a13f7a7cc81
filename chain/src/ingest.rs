//! Device ingest: one SQAL measurement as a real ESP32 station sends it. The
//! digital twin goes through the same function, so a real device can replace
//! it without code changes.

use crate::grade::Grade;
use crate::group_commit::QueuedSample;
use crate::params::{validate_code_lot, validate_device_id, InvalidParam};
use crate::services::Services;
use crate::sqal::{analyze, Measurement, CHANNELS, ZONES};
use crate::views::{Event, GradedSample, ProductView, SampleDetails};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Largest distance the VL53L8CH reports, in mm.
pub const MAX_DISTANCE_MM: f64 = 4000.0;
pub const MAX_COUNT: f64 = 65_535.0;
pub const MAX_REFLECTANCE: f64 = 100.0;
/// Largest signal and ambient rate accepted, in kcps per SPAD.
pub const MAX_RATE: f64 = 1_000_000.0;
pub const MAX_STATUS: i64 = 255;
pub const SAMPLE_INDEX_RANGE: (u32, u32) = (0, 999);
/// AS7341 gains the sensor supports.
pub const GAINS: [f64; 11] = [
    0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
];
pub const INTEGRATION_MS_RANGE: (f64, f64) = (1.0, 1000.0);

/// One measurement of one liver, as `POST /api/sqal/samples` receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplePayload {
    pub device_id: String,
    pub code_lot: String,
    /// Position of the liver in the lot's inspection, from 0.
    pub sample_index: u32,
    /// 64 ToF distances in mm, row by row.
    pub tof_distances: Vec<f64>,
    /// 64 reflectances in %.
    pub tof_reflectance: Vec<f64>,
    /// 64 signal rates, kcps per SPAD.
    pub tof_amplitude: Vec<f64>,
    /// 64 ambient rates, kcps per SPAD.
    pub tof_ambient: Vec<f64>,
    /// 64 VL53L8CH target statuses, 0..=255.
    pub tof_status: Vec<i64>,
    /// F1..F8, Clear, NIR raw counts.
    pub as7341_counts: Vec<f64>,
    pub as7341_gain: f64,
    pub as7341_integration_ms: f64,
}

impl SamplePayload {
    pub fn new(
        device_id: &str,
        code_lot: &str,
        sample_index: u32,
        measurement: Measurement,
    ) -> SamplePayload {
        SamplePayload {
            device_id: device_id.to_string(),
            code_lot: code_lot.to_string(),
            sample_index,
            tof_distances: measurement.tof_distances,
            tof_reflectance: measurement.tof_reflectance,
            tof_amplitude: measurement.tof_amplitude,
            tof_ambient: measurement.tof_ambient,
            tof_status: measurement.tof_status,
            as7341_counts: measurement.as7341_counts,
            as7341_gain: measurement.as7341_gain,
            as7341_integration_ms: measurement.as7341_integration_ms,
        }
    }
}

/// Cache of the lots found ready for slaughter, with their run, so that a
/// lot is read once and not once per sample. No statement moves a lot out of
/// `pret_abattage`, deletes it or changes its run, so an entry cannot go stale.
#[derive(Clone, Default)]
pub struct ReadyLots {
    runs: Arc<Mutex<HashMap<String, String>>>,
}

impl ReadyLots {
    /// Largest number of lots kept. Past it the cache starts again empty.
    pub const CAPACITY: usize = 4096;

    /// Returns the run of `code_lot` if the lot is known to be ready for
    /// slaughter.
    pub fn run_of(&self, code_lot: &str) -> Option<String> {
        self.runs
            .lock()
            .expect("ready lots lock")
            .get(code_lot)
            .cloned()
    }

    /// Records that `code_lot`, of run `run_id`, is ready for slaughter.
    pub fn remember(&self, code_lot: &str, run_id: &str) {
        let mut runs = self.runs.lock().expect("ready lots lock");
        if runs.len() >= Self::CAPACITY && !runs.contains_key(code_lot) {
            runs.clear();
        }
        runs.insert(code_lot.to_string(), run_id.to_string());
    }

    /// Returns the number of lots kept.
    pub fn len(&self) -> usize {
        self.runs.lock().expect("ready lots lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Outcome of one ingested sample: its grade, scores and product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleReceipt {
    pub sample_id: i64,
    pub code_lot: String,
    pub sample_index: u32,
    /// `None` when the measurement is invalid (sensor fault).
    pub grade: Option<Grade>,
    pub final_score: f64,
    pub tof_score: f64,
    pub as7341_score: f64,
    pub invalid_reason: Option<String>,
    pub details: SampleDetails,
    /// The product made from a compliant sample.
    pub product: Option<ProductView>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Invalid(#[from] InvalidParam),
    /// A sample with this index is already stored for this lot.
    #[error("sample {sample_index} of lot {code_lot} is already stored")]
    Duplicate { code_lot: String, sample_index: u32 },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn check_values(field: &str, values: &[f64], length: usize, max: f64) -> Result<(), InvalidParam> {
    if values.len() != length {
        return Err(InvalidParam::new(
            field,
            format!("{} values", values.len()),
            format!("exactly {length} values"),
        ));
    }
    if let Some((index, value)) = values
        .iter()
        .enumerate()
        .find(|(_, value)| !value.is_finite() || **value < 0.0 || **value > max)
    {
        return Err(InvalidParam::new(
            &format!("{field}[{index}]"),
            value,
            format!("0..={max}"),
        ));
    }
    Ok(())
}

/// Checks every field of a payload and returns its measurement. Nothing
/// here reads the database; the lot is checked by `Services::ingest_sample`.
pub fn validate(payload: &SamplePayload) -> Result<Measurement, InvalidParam> {
    validate_device_id(&payload.device_id)?;
    validate_code_lot(&payload.code_lot)?;
    let (min, max) = SAMPLE_INDEX_RANGE;
    if payload.sample_index < min || payload.sample_index > max {
        return Err(InvalidParam::new(
            "sample_index",
            payload.sample_index,
            format!("{min}..={max}"),
        ));
    }
    check_values(
        "tof_distances",
        &payload.tof_distances,
        ZONES,
        MAX_DISTANCE_MM,
    )?;
    check_values(
        "tof_reflectance",
        &payload.tof_reflectance,
        ZONES,
        MAX_REFLECTANCE,
    )?;
    check_values("tof_amplitude", &payload.tof_amplitude, ZONES, MAX_RATE)?;
    check_values("tof_ambient", &payload.tof_ambient, ZONES, MAX_RATE)?;
    let statuses: Vec<f64> = payload.tof_status.iter().map(|s| *s as f64).collect();
    check_values("tof_status", &statuses, ZONES, MAX_STATUS as f64)?;
    check_values(
        "as7341_counts",
        &payload.as7341_counts,
        CHANNELS.len(),
        MAX_COUNT,
    )?;
    if !GAINS.contains(&payload.as7341_gain) {
        return Err(InvalidParam::new(
            "as7341_gain",
            payload.as7341_gain,
            "one of 0.5, 1, 2, 4, …, 512",
        ));
    }
    let (min, max) = INTEGRATION_MS_RANGE;
    let integration = payload.as7341_integration_ms;
    if !integration.is_finite() || integration < min || integration > max {
        return Err(InvalidParam::new(
            "as7341_integration_ms",
            integration,
            format!("{min}..={max}"),
        ));
    }
    Ok(Measurement {
        tof_distances: payload.tof_distances.clone(),
        tof_reflectance: payload.tof_reflectance.clone(),
        tof_amplitude: payload.tof_amplitude.clone(),
        tof_ambient: payload.tof_ambient.clone(),
        tof_status: payload.tof_status.clone(),
        as7341_counts: payload.as7341_counts.clone(),
        as7341_gain: payload.as7341_gain,
        as7341_integration_ms: payload.as7341_integration_ms,
    })
}

impl Services {
    /// Validates a sample, grades it from its measurements, stores it with
    /// its product when compliant, and publishes the events. A rejected
    /// payload writes nothing.
    pub async fn ingest_sample(
        &self,
        payload: &SamplePayload,
    ) -> Result<SampleReceipt, IngestError> {
        let measurement = validate(payload)?;
        if let Some(run_id) = self.ready_lots.run_of(&payload.code_lot) {
            return self.grade_and_record(payload, measurement, run_id).await;
        }
        let Some((run_id, status)) = self.store.lot_run_and_status(&payload.code_lot).await? else {
            return Err(InvalidParam::new(
                "code_lot",
                &payload.code_lot,
                "a known lot ready for slaughter",
            )
            .into());
        };
        if status != "pret_abattage" {
            return Err(InvalidParam::new(
                "code_lot",
                format!("{} ({status})", payload.code_lot),
                "a lot ready for slaughter (pret_abattage)",
            )
            .into());
        }
        self.ready_lots.remember(&payload.code_lot, &run_id);
        self.grade_and_record(payload, measurement, run_id).await
    }

    /// Ingests a sample of a lot that this process's monitor claimed, as
    /// `ingest_sample` does. The claim gave the lot's run, `run_id`, and a
    /// queued lot is ready for slaughter, so the lot is not read again.
    pub async fn ingest_claimed_sample(
        &self,
        payload: &SamplePayload,
        run_id: &str,
    ) -> Result<SampleReceipt, IngestError> {
        let measurement = validate(payload)?;
        self.grade_and_record(payload, measurement, run_id.to_string())
            .await
    }

    /// Grades a validated sample of lot `payload.code_lot` of run `run_id`,
    /// stores it and publishes its events.
    async fn grade_and_record(
        &self,
        payload: &SamplePayload,
        measurement: Measurement,
        run_id: String,
    ) -> Result<SampleReceipt, IngestError> {
        let analysis = analyze(&measurement);
        let queued = QueuedSample {
            code_lot: payload.code_lot.clone(),
            sample_index: payload.sample_index,
            device_id: payload.device_id.clone(),
            measurement,
            analysis,
        };
        let (
            outcome,
            QueuedSample {
                measurement,
                analysis,
                ..
            },
        ) = self
            .samples
            .record(&self.store, &self.public_url, queued)
            .await?;
        let Some(sample_id) = outcome.sample_id else {
            return Err(IngestError::Duplicate {
                code_lot: payload.code_lot.clone(),
                sample_index: payload.sample_index,
            });
        };

        self.bus.publish(Event::SampleGraded {
            run_id: run_id.clone(),
            sample: GradedSample {
                sample_id,
                code_lot: payload.code_lot.clone(),
                sample_index: payload.sample_index as i64,
                grade: analysis.grade,
                final_score: analysis.final_score,
                tof_score: analysis.tof_score,
                as7341_score: analysis.as7341_score,
                invalid_reason: analysis.invalid_reason.clone(),
                tof_distances: measurement.tof_distances,
                as7341_counts: measurement.as7341_counts,
                details: Some(analysis.details.clone()),
            },
        });
        if let Some(product) = &outcome.product {
            tracing::info!(product.id = %product.product_id, lot.code = %payload.code_lot, "product created");
            self.bus.publish(Event::ProductCreated {
                run_id,
                product: product.clone(),
            });
        }
        Ok(SampleReceipt {
            sample_id,
            code_lot: payload.code_lot.clone(),
            sample_index: payload.sample_index,
            grade: analysis.grade,
            final_score: analysis.final_score,
            tof_score: analysis.tof_score,
            as7341_score: analysis.as7341_score,
            invalid_reason: analysis.invalid_reason,
            details: analysis.details,
            product: outcome.product,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::QualityProfile;
    use crate::sqal::{draw_quality, simulate};
    use rand::SeedableRng;

    fn payload(seed: u64) -> SamplePayload {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let quality = draw_quality(&mut rng, QualityProfile::Standard);
        let measurement = simulate(&mut rng, quality, 560.0);
        SamplePayload::new("ESP32_LL_01", "LL2612001", 3, measurement)
    }

    #[test]
    fn every_simulated_sample_passes_validation() {
        for seed in 0..2000 {
            assert!(
                validate(&payload(seed)).is_ok(),
                "seed {seed}: {:?}",
                validate(&payload(seed))
            );
        }
    }

    #[test]
    fn mutated_payloads_are_rejected_with_their_field() {
        type Mutation = fn(&mut SamplePayload);
        let cases: [(Mutation, &str); 16] = [
            (|p| p.tof_reflectance[7] = 101.0, "tof_reflectance[7]"),
            (|p| p.tof_amplitude.truncate(63), "tof_amplitude"),
            (|p| p.tof_ambient[1] = f64::INFINITY, "tof_ambient[1]"),
            (|p| p.tof_status[0] = 256, "tof_status[0]"),
            (
                |p| p.tof_distances.pop().map(|_| ()).unwrap_or(()),
                "tof_distances",
            ),
            (|p| p.tof_distances.push(50.0), "tof_distances"),
            (|p| p.tof_distances[5] = f64::NAN, "tof_distances[5]"),
            (|p| p.tof_distances[0] = -1.0, "tof_distances[0]"),
            (|p| p.tof_distances[63] = 4000.5, "tof_distances[63]"),
            (|p| p.as7341_counts[2] = -3.0, "as7341_counts[2]"),
            (|p| p.as7341_counts.truncate(8), "as7341_counts"),
            (|p| p.as7341_counts[9] = 70_000.0, "as7341_counts[9]"),
            (|p| p.as7341_gain = 3.0, "as7341_gain"),
            (|p| p.as7341_integration_ms = 0.0, "as7341_integration_ms"),
            (|p| p.code_lot = "<b>LL</b>".to_string(), "code_lot"),
            (|p| p.sample_index = 1000, "sample_index"),
        ];
        for (mutate, field) in cases {
            let mut bad = payload(1);
            mutate(&mut bad);
            assert_eq!(validate(&bad).unwrap_err().field, field);
        }
    }

    #[test]
    fn values_at_the_edges_of_their_range_pass() {
        type Edit = fn(&mut SamplePayload);
        let edges: [Edit; 12] = [
            |p| p.tof_distances[0] = 0.0,
            |p| p.tof_distances[63] = MAX_DISTANCE_MM,
            |p| p.tof_reflectance[0] = MAX_REFLECTANCE,
            |p| p.tof_amplitude[5] = MAX_RATE,
            |p| p.tof_ambient[5] = 0.0,
            |p| p.tof_status[9] = MAX_STATUS,
            |p| p.as7341_counts[8] = MAX_COUNT,
            |p| p.as7341_gain = 0.5,
            |p| p.as7341_gain = 512.0,
            |p| p.as7341_integration_ms = 1.0,
            |p| p.as7341_integration_ms = 1000.0,
            |p| p.sample_index = 999,
        ];
        for (index, edit) in edges.iter().enumerate() {
            let mut payload = payload(4);
            edit(&mut payload);
            assert!(
                validate(&payload).is_ok(),
                "edge {index}: {:?}",
                validate(&payload)
            );
        }
    }

    #[test]
    fn ready_lots_start_again_when_full() {
        let ready = ReadyLots::default();
        for lot in 0..ReadyLots::CAPACITY {
            ready.remember(&format!("LL26{lot:07}"), "R1");
        }
        assert_eq!(ready.len(), ReadyLots::CAPACITY);
        ready.remember("LL260000005", "R1");
        assert_eq!(
            ready.len(),
            ReadyLots::CAPACITY,
            "a known lot cleared the cache"
        );
        ready.remember("LS2612001", "R2");
        assert_eq!(ready.len(), 1, "the cache grew past its capacity");
        assert_eq!(ready.run_of("LS2612001").as_deref(), Some("R2"));
        assert_eq!(ready.run_of("LL260000005"), None);
    }

    #[test]
    fn payload_json_with_unknown_field_is_rejected() {
        let mut json = serde_json::to_value(payload(2)).unwrap();
        json["grade"] = serde_json::json!("A+");
        assert!(serde_json::from_value::<SamplePayload>(json).is_err());
    }
}
