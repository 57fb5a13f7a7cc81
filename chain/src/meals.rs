//! Meal ingest: one gavage meal as the simulator or a field tablet sends it.
//! Both go through `Services::ingest_meals`, which checks each meal against
//! its lot and stores a batch in one transaction.

use crate::params::{validate_code_lot, InvalidParam};
use crate::services::Services;
use crate::store::{MealBatchStored, MealRow, MealStored};
use crate::views::Event;
use serde::{Deserialize, Serialize};

pub const JOUR_RANGE: (u32, u32) = (0, 30);
/// Maize per duck and meal, in g.
pub const DOSE_RANGE: (f64, f64) = (50.0, 1000.0);
/// Mean live weight, in g.
pub const WEIGHT_RANGE: (f64, f64) = (1000.0, 12_000.0);
pub const LIVING_RANGE: (u32, u32) = (0, 1000);
pub const MORTALITY_RANGE: (f64, f64) = (0.0, 100.0);
/// Barn temperature, in °C.
pub const TEMPERATURE_RANGE: (f64, f64) = (-20.0, 50.0);
/// Barn relative humidity, in %.
pub const HUMIDITY_RANGE: (f64, f64) = (0.0, 100.0);

/// One meal of one lot, as `POST /api/gavage/meals` receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MealPayload {
    pub code_lot: String,
    /// Day of the gavage, from 0 to the lot's planned duration.
    pub jour: u32,
    /// `matin` or `soir`.
    pub moment: String,
    pub dose_theorique: f64,
    pub dose_reelle: f64,
    /// Mean live weight of the living ducks after the meal, in g.
    pub poids_moyen: f64,
    pub nb_canards_vivants: u32,
    /// Share of the lot's ducks that died so far, in %.
    pub taux_mortalite: f64,
    pub temperature: f64,
    pub humidite: f64,
    /// When the meal was given, RFC 3339; the time of receipt when absent.
    #[serde(default)]
    pub fed_at: Option<String>,
}

/// Receipt of an accepted meal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MealReceipt {
    pub meal_id: i64,
    pub code_lot: String,
    pub jour: u32,
    pub moment: String,
    /// True when this was the lot's last meal: the lot is now
    /// `pret_abattage` and queued for inspection.
    pub pret_abattage: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MealError {
    #[error(transparent)]
    Invalid(#[from] InvalidParam),
    #[error("meal jour {jour} {moment} of lot {code_lot} is already stored")]
    Duplicate {
        code_lot: String,
        jour: u32,
        moment: String,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: T,
    (min, max): (T, T),
) -> Result<(), InvalidParam> {
    // Written so that NaN fails too.
    if !(value >= min && value <= max) {
        return Err(InvalidParam::new(field, value, format!("{min}..={max}")));
    }
    Ok(())
}

/// Checks every field on its own; `Services::ingest_meal` then checks the
/// meal against its lot (duration, duck count, order, duplicates).
pub fn validate(payload: &MealPayload) -> Result<(), InvalidParam> {
    validate_code_lot(&payload.code_lot)?;
    check_range("jour", payload.jour, JOUR_RANGE)?;
    if payload.moment != "matin" && payload.moment != "soir" {
        let shown: String = payload.moment.chars().take(40).collect();
        return Err(InvalidParam::new(
            "moment",
            format!("{shown:?}"),
            "matin or soir",
        ));
    }
    check_range("dose_theorique", payload.dose_theorique, DOSE_RANGE)?;
    check_range("dose_reelle", payload.dose_reelle, DOSE_RANGE)?;
    check_range("poids_moyen", payload.poids_moyen, WEIGHT_RANGE)?;
    check_range(
        "nb_canards_vivants",
        payload.nb_canards_vivants,
        LIVING_RANGE,
    )?;
    check_range("taux_mortalite", payload.taux_mortalite, MORTALITY_RANGE)?;
    check_range("temperature", payload.temperature, TEMPERATURE_RANGE)?;
    check_range("humidite", payload.humidite, HUMIDITY_RANGE)?;
    if let Some(fed_at) = &payload.fed_at {
        if chrono::DateTime::parse_from_rfc3339(fed_at).is_err() {
            let shown: String = fed_at.chars().take(40).collect();
            return Err(InvalidParam::new(
                "fed_at",
                format!("{shown:?}"),
                "an RFC 3339 time such as 2026-12-04T08:00:00Z",
            ));
        }
    }
    Ok(())
}

/// Position of a meal in its lot: matin of day j is 2j, soir 2j + 1.
pub fn meal_index(jour: u32, moment: &str) -> u32 {
    2 * jour + u32::from(moment == "soir")
}

impl Services {
    /// Validates a meal, stores it (with the lot's queue row when it is the
    /// last one) and publishes what changed. A refused meal writes nothing.
    pub async fn ingest_meal(&self, payload: &MealPayload) -> Result<MealReceipt, MealError> {
        let mut receipts = self.ingest_meals(std::slice::from_ref(payload)).await?;
        Ok(receipts.remove(0))
    }

    /// Validates meals and stores them in one transaction, in the order
    /// given, then publishes what changed. The first meal that is invalid,
    /// refused or already stored fails the whole batch with its error, and
    /// nothing is written.
    pub async fn ingest_meals(
        &self,
        payloads: &[MealPayload],
    ) -> Result<Vec<MealReceipt>, MealError> {
        let rows = payloads
            .iter()
            .map(|payload| {
                validate(payload)?;
                Ok(meal_row(payload))
            })
            .collect::<Result<Vec<_>, InvalidParam>>()?;
        let stored = match self.store.ingest_meals(&rows).await? {
            MealBatchStored::Stored(stored) => stored,
            MealBatchStored::Stopped { index, outcome } => {
                return Err(match outcome {
                    MealStored::Refused(invalid) => invalid.into(),
                    MealStored::Duplicate | MealStored::Stored { .. } => MealError::Duplicate {
                        code_lot: payloads[index].code_lot.clone(),
                        jour: payloads[index].jour,
                        moment: rows[index].moment.to_string(),
                    },
                })
            }
        };

        let receipts: Vec<MealReceipt> = payloads
            .iter()
            .zip(&rows)
            .zip(&stored)
            .map(|((payload, row), stored)| MealReceipt {
                meal_id: stored.meal_id,
                code_lot: payload.code_lot.clone(),
                jour: payload.jour,
                moment: row.moment.to_string(),
                pret_abattage: stored.pret_abattage,
            })
            .collect();
        let mut queued = false;
        for receipt in receipts.iter().filter(|receipt| receipt.pret_abattage) {
            tracing::info!(lot.code = %receipt.code_lot, "lot ready for slaughter, queued for inspection");
            self.bus.publish(Event::LotFinished {
                code_lot: receipt.code_lot.clone(),
            });
            queued = true;
        }
        if queued {
            self.publish_queue();
        }
        Ok(receipts)
    }
}

/// Turns a validated meal into the row to store; a meal without `fed_at`
/// is stamped with the time of receipt.
fn meal_row(payload: &MealPayload) -> MealRow {
    let fed_at = match &payload.fed_at {
        Some(text) => crate::time::format(
            chrono::DateTime::parse_from_rfc3339(text)
                .expect("validated before")
                .with_timezone(&chrono::Utc),
        ),
        None => crate::time::now(),
    };
    let moment = if payload.moment == "matin" {
        "matin"
    } else {
        "soir"
    };
    MealRow {
        code_lot: payload.code_lot.clone(),
        jour: payload.jour as i64,
        moment,
        dose_theorique: payload.dose_theorique,
        dose_reelle: payload.dose_reelle,
        poids_moyen: payload.poids_moyen,
        nb_canards_vivants: payload.nb_canards_vivants as i64,
        taux_mortalite: payload.taux_mortalite,
        temperature: payload.temperature,
        humidite: payload.humidite,
        sim_time: fed_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meal() -> MealPayload {
        MealPayload {
            code_lot: "LS2612004".to_string(),
            jour: 3,
            moment: "soir".to_string(),
            dose_theorique: 270.0,
            dose_reelle: 266.4,
            poids_moyen: 5120.5,
            nb_canards_vivants: 49,
            taux_mortalite: 2.0,
            temperature: 21.3,
            humidite: 64.0,
            fed_at: Some("2026-12-04T18:00:00Z".to_string()),
        }
    }

    #[test]
    fn plausible_meal_passes() {
        assert_eq!(validate(&meal()), Ok(()));
        assert_eq!(
            validate(&MealPayload {
                fed_at: None,
                ..meal()
            }),
            Ok(())
        );
    }

    #[test]
    fn each_field_is_checked_at_its_edges() {
        type Edit = fn(&mut MealPayload);
        // (edit just inside the range, edit just outside, field named)
        let cases: [(Edit, Edit, &str); 10] = [
            (|m| m.jour = 30, |m| m.jour = 31, "jour"),
            (
                |m| m.dose_reelle = 50.0,
                |m| m.dose_reelle = 49.9,
                "dose_reelle",
            ),
            (
                |m| m.dose_reelle = 1000.0,
                |m| m.dose_reelle = -5.0,
                "dose_reelle",
            ),
            (
                |m| m.dose_theorique = 1000.0,
                |m| m.dose_theorique = f64::NAN,
                "dose_theorique",
            ),
            (
                |m| m.poids_moyen = 12_000.0,
                |m| m.poids_moyen = 12_000.1,
                "poids_moyen",
            ),
            (
                |m| m.nb_canards_vivants = 1000,
                |m| m.nb_canards_vivants = 1001,
                "nb_canards_vivants",
            ),
            (
                |m| m.taux_mortalite = 100.0,
                |m| m.taux_mortalite = 100.1,
                "taux_mortalite",
            ),
            (
                |m| m.temperature = -20.0,
                |m| m.temperature = -20.1,
                "temperature",
            ),
            (|m| m.humidite = 0.0, |m| m.humidite = -0.1, "humidite"),
            (
                |m| m.moment = "matin".into(),
                |m| m.moment = "midi".into(),
                "moment",
            ),
        ];
        for (inside, outside, field) in cases {
            let mut good = meal();
            inside(&mut good);
            assert_eq!(validate(&good), Ok(()), "{field} just inside");
            let mut bad = meal();
            outside(&mut bad);
            let error = validate(&bad).expect_err(field);
            assert_eq!(error.field, field);
        }
        let mut bad = meal();
        bad.fed_at = Some("yesterday".into());
        assert_eq!(validate(&bad).unwrap_err().field, "fed_at");
        bad = meal();
        bad.code_lot = "LS26120040".into();
        assert_eq!(validate(&bad).unwrap_err().field, "code_lot");
    }

    #[test]
    fn meal_index_orders_matin_before_soir() {
        assert_eq!(meal_index(0, "matin"), 0);
        assert_eq!(meal_index(0, "soir"), 1);
        assert_eq!(meal_index(12, "soir"), 25);
    }
}
