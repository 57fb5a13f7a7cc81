//! Property tests of the two device parsers. Any sample the twin generates
//! passes validation and analysis. Broken samples and meals are rejected
//! with the field at fault, and no input makes them panic.

use chain::ingest::{self, SamplePayload};
use chain::meals::{self, MealPayload};
use chain::params::QualityProfile;
use chain::sqal::{analyze, draw_quality, simulate};
use proptest::prelude::*;
use rand::SeedableRng;

fn generated(seed: u64, profile: QualityProfile, weight: f64) -> SamplePayload {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let quality = draw_quality(&mut rng, profile);
    SamplePayload::new(
        "ESP32_MT_01",
        "MT2612001",
        4,
        simulate(&mut rng, quality, weight),
    )
}

fn profiles() -> impl Strategy<Value = QualityProfile> {
    prop::sample::select(QualityProfile::ALL.to_vec())
}

/// Generates values no device may send in a matrix or a count.
fn poison() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        -1e9..-1e-9f64,
        1.1e6..1e12f64,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn generated_samples_pass_validation(
        seed in any::<u64>(),
        profile in profiles(),
        weight in 250.0..1200.0f64,
    ) {
        let payload = generated(seed, profile, weight);
        let measurement = ingest::validate(&payload);
        prop_assert!(measurement.is_ok(), "{:?}", measurement);
        let analysis = analyze(&measurement.unwrap());
        for score in [analysis.tof_score, analysis.as7341_score, analysis.final_score] {
            prop_assert!((0.0..=1.0).contains(&score), "score {}", score);
        }
        prop_assert_eq!(analysis.grade.is_none(), analysis.invalid_reason.is_some());
    }

    #[test]
    fn poisoned_values_are_rejected(
        seed in any::<u64>(),
        matrix in 0usize..6,
        index in 0usize..64,
        value in poison(),
    ) {
        let mut payload = generated(seed, QualityProfile::Standard, 560.0);
        let (field, values) = match matrix {
            0 => ("tof_distances", &mut payload.tof_distances),
            1 => ("tof_reflectance", &mut payload.tof_reflectance),
            2 => ("tof_amplitude", &mut payload.tof_amplitude),
            3 => ("tof_ambient", &mut payload.tof_ambient),
            _ => ("as7341_counts", &mut payload.as7341_counts),
        };
        let index = index % values.len();
        values[index] = value;
        let error = ingest::validate(&payload).expect_err("a poisoned value passed");
        prop_assert_eq!(error.field, format!("{field}[{index}]"));
    }

    #[test]
    fn wrong_matrix_sizes_are_rejected(
        seed in any::<u64>(),
        matrix in 0usize..6,
        length in 0usize..200,
    ) {
        let mut payload = generated(seed, QualityProfile::Standard, 560.0);
        let (field, expected) = match matrix {
            0 => ("tof_distances", 64),
            1 => ("tof_reflectance", 64),
            2 => ("tof_amplitude", 64),
            3 => ("tof_ambient", 64),
            4 => ("tof_status", 64),
            _ => ("as7341_counts", 10),
        };
        prop_assume!(length != expected);
        match matrix {
            0 => payload.tof_distances.resize(length, 50.0),
            1 => payload.tof_reflectance.resize(length, 40.0),
            2 => payload.tof_amplitude.resize(length, 900.0),
            3 => payload.tof_ambient.resize(length, 3.0),
            4 => payload.tof_status.resize(length, 5),
            _ => payload.as7341_counts.resize(length, 1000.0),
        }
        let error = ingest::validate(&payload).expect_err("a wrong size passed");
        prop_assert_eq!(error.field, field);
    }

    #[test]
    fn any_text_in_codes_never_panics(code_lot in ".{0,24}", device_id in ".{0,24}") {
        let mut payload = generated(1, QualityProfile::Standard, 560.0);
        payload.code_lot = code_lot.clone();
        payload.device_id = device_id.clone();
        // Only well-formed codes may pass, whatever else the text holds.
        if ingest::validate(&payload).is_ok() {
            prop_assert!(code_lot.len() == 9 && code_lot.is_ascii(), "{:?}", code_lot);
            prop_assert!(device_id.starts_with("ESP32_"), "{:?}", device_id);
        }
    }

    #[test]
    fn meals_pass_only_inside_every_range(
        jour in 0u32..40,
        moment in prop_oneof![Just("matin".to_string()), Just("soir".to_string()), ".{0,8}"],
        dose in prop_oneof![-100.0..1200.0f64, Just(f64::NAN)],
        poids in prop_oneof![0.0..15_000.0f64, Just(f64::INFINITY)],
        vivants in 0u32..1200,
        mortalite in -10.0..120.0f64,
        temperature in -40.0..70.0f64,
        humidite in -10.0..110.0f64,
    ) {
        let meal = MealPayload {
            code_lot: "LL2612001".to_string(),
            jour,
            moment: moment.clone(),
            dose_theorique: 300.0,
            dose_reelle: dose,
            poids_moyen: poids,
            nb_canards_vivants: vivants,
            taux_mortalite: mortalite,
            temperature,
            humidite,
            fed_at: None,
        };
        let inside = |value: f64, (min, max): (f64, f64)| value >= min && value <= max;
        let expected = jour <= meals::JOUR_RANGE.1
            && (moment == "matin" || moment == "soir")
            && inside(dose, meals::DOSE_RANGE)
            && inside(poids, meals::WEIGHT_RANGE)
            && vivants <= meals::LIVING_RANGE.1
            && inside(mortalite, meals::MORTALITY_RANGE)
            && inside(temperature, meals::TEMPERATURE_RANGE)
            && inside(humidite, meals::HUMIDITY_RANGE);
        let outcome = meals::validate(&meal);
        prop_assert_eq!(outcome.is_ok(), expected, "{:?}", outcome);
    }
}
