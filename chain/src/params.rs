//! Parameters of the three simulator tasks, their demo defaults and the ranges
//! that every entry point (page, JSON API) enforces before starting anything.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Sites of the cooperative, as used in `code_lot` and device ids.
pub const SITES: [&str; 3] = ["LL", "LS", "MT"];

pub const NB_LOTS_RANGE: (u32, u32) = (1, 50);
/// Simulated seconds per real second: 1 is real time, 86 400 makes a day last
/// one second. At the upper bound a lot's meals fall due 43 µs apart, faster
/// than a database stores them, so the simulator runs as fast as storage.
pub const ACCELERATION_RANGE: (f64, f64) = (1.0, 1_000_000_000.0);
pub const POLLING_INTERVAL_RANGE: (f64, f64) = (0.5, 3600.0);
/// Seconds between two samples. With 0 the station measures the next liver
/// as soon as it has stored the last one.
pub const SAMPLE_INTERVAL_RANGE: (f64, f64) = (0.0, 60.0);
pub const NB_SAMPLES_RANGE: (u32, u32) = (1, 200);

/// A parameter outside its allowed range. It names the field, the rejected
/// value and the range so that the caller can fix the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("invalid {field}: {value} (allowed: {allowed})")]
pub struct InvalidParam {
    pub field: String,
    pub value: String,
    pub allowed: String,
}

impl InvalidParam {
    pub fn new(field: &str, value: impl fmt::Display, allowed: impl Into<String>) -> Self {
        InvalidParam {
            field: field.to_string(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }

    /// Formats the same message in French, for the pages.
    pub fn message_fr(&self) -> String {
        format!(
            "valeur invalide pour {} : {} (autorisé : {})",
            self.field, self.value, self.allowed
        )
    }
}

fn check_u32(field: &str, value: u32, (min, max): (u32, u32)) -> Result<(), InvalidParam> {
    if value < min || value > max {
        return Err(InvalidParam::new(field, value, format!("{min}..={max}")));
    }
    Ok(())
}

fn check_f64(field: &str, value: f64, (min, max): (f64, f64)) -> Result<(), InvalidParam> {
    if !value.is_finite() || value < min || value > max {
        return Err(InvalidParam::new(field, value, format!("{min}..={max}")));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GavageParams {
    #[serde(default = "GavageParams::default_nb_lots")]
    pub nb_lots: u32,
    #[serde(default = "GavageParams::default_acceleration")]
    pub acceleration: f64,
    /// Seed of the lot generator; `None` draws a fresh one per run.
    #[serde(default)]
    pub seed: Option<u64>,
}

impl GavageParams {
    fn default_nb_lots() -> u32 {
        3
    }

    /// Three simulated days per real second: a 14-day lot finishes in about
    /// five seconds, so the demo shows a QR code quickly.
    fn default_acceleration() -> f64 {
        259_200.0
    }

    pub fn validate(&self) -> Result<(), InvalidParam> {
        check_u32("nb_lots", self.nb_lots, NB_LOTS_RANGE)?;
        check_f64("acceleration", self.acceleration, ACCELERATION_RANGE)
    }
}

impl Default for GavageParams {
    fn default() -> Self {
        GavageParams {
            nb_lots: Self::default_nb_lots(),
            acceleration: Self::default_acceleration(),
            seed: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorParams {
    /// Seconds between two safety-net scans of the inspection queue.
    #[serde(default = "MonitorParams::default_polling_interval")]
    pub polling_interval: f64,
}

impl MonitorParams {
    fn default_polling_interval() -> f64 {
        10.0
    }

    pub fn validate(&self) -> Result<(), InvalidParam> {
        check_f64(
            "polling_interval",
            self.polling_interval,
            POLLING_INTERVAL_RANGE,
        )
    }
}

impl Default for MonitorParams {
    fn default() -> Self {
        MonitorParams {
            polling_interval: Self::default_polling_interval(),
        }
    }
}

/// Quality mix of the livers the SQAL twin measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QualityProfile {
    /// About 15 % A+, 40 % A, 30 % B, 10 % C, 5 % REJECT.
    #[default]
    Standard,
    /// About 30 % A+, 45 % A, 18 % B, 5 % C, 2 % REJECT.
    Premium,
    /// About 5 % A+, 25 % A, 35 % B, 20 % C, 15 % REJECT.
    Low,
}

impl QualityProfile {
    pub const ALL: [QualityProfile; 3] = [
        QualityProfile::Standard,
        QualityProfile::Premium,
        QualityProfile::Low,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QualityProfile::Standard => "standard",
            QualityProfile::Premium => "premium",
            QualityProfile::Low => "low",
        }
    }

    pub fn parse(text: &str) -> Option<QualityProfile> {
        QualityProfile::ALL
            .into_iter()
            .find(|profile| profile.as_str() == text)
    }

    /// Grade mix in %, in the order A+, A, B, C, REJECT.
    pub fn target_mix(self) -> [f64; 5] {
        match self {
            QualityProfile::Standard => [15.0, 40.0, 30.0, 10.0, 5.0],
            QualityProfile::Premium => [30.0, 45.0, 18.0, 5.0, 2.0],
            QualityProfile::Low => [5.0, 25.0, 35.0, 20.0, 15.0],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqalParams {
    #[serde(default = "SqalParams::default_device_id")]
    pub device_id: String,
    /// Seconds between two samples.
    #[serde(default = "SqalParams::default_interval")]
    pub interval: f64,
    /// Livers measured per inspected lot.
    #[serde(default = "SqalParams::default_nb_samples")]
    pub nb_samples: u32,
    /// Quality mix of the livers the twin measures.
    #[serde(default)]
    pub profile: QualityProfile,
    /// Seed of the twin's measurements; `None` draws a fresh one per run.
    #[serde(default)]
    pub seed: Option<u64>,
}

impl SqalParams {
    fn default_device_id() -> String {
        "ESP32_LL_01".to_string()
    }

    fn default_interval() -> f64 {
        0.2
    }

    fn default_nb_samples() -> u32 {
        10
    }

    pub fn validate(&self) -> Result<(), InvalidParam> {
        validate_device_id(&self.device_id)?;
        check_f64("interval", self.interval, SAMPLE_INTERVAL_RANGE)?;
        check_u32("nb_samples", self.nb_samples, NB_SAMPLES_RANGE)
    }

    /// Site of the station, the second part of its device id.
    pub fn site(&self) -> &str {
        self.device_id.split('_').nth(1).unwrap_or("LL")
    }
}

impl Default for SqalParams {
    fn default() -> Self {
        SqalParams {
            device_id: Self::default_device_id(),
            interval: Self::default_interval(),
            nb_samples: Self::default_nb_samples(),
            profile: QualityProfile::Standard,
            seed: None,
        }
    }
}

/// Accepts `ESP32_<site>_<two digits>`, with a site of the cooperative.
pub fn validate_device_id(device_id: &str) -> Result<(), InvalidParam> {
    let allowed = "ESP32_<LL|LS|MT>_<00..99>";
    let parts: Vec<&str> = device_id.split('_').collect();
    let well_formed = parts.len() == 3
        && parts[0] == "ESP32"
        && SITES.contains(&parts[1])
        && parts[2].len() == 2
        && parts[2].bytes().all(|b| b.is_ascii_digit());
    if !well_formed {
        let shown: String = device_id.chars().take(40).collect();
        return Err(InvalidParam::new(
            "device_id",
            format!("{shown:?}"),
            allowed,
        ));
    }
    Ok(())
}

/// Accepts a gavage run id such as `R20261204231508123-1a2b`: `R`, then at
/// most 39 letters, digits or `-`.
pub fn validate_run_id(run_id: &str) -> Result<(), InvalidParam> {
    let well_formed = run_id.len() <= 40
        && run_id.starts_with('R')
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !well_formed {
        let shown: String = run_id.chars().take(40).collect();
        return Err(InvalidParam::new(
            "run_id",
            format!("{shown:?}"),
            "R followed by at most 39 letters, digits or '-'",
        ));
    }
    Ok(())
}

/// Accepts a `code_lot`: site, year and month, then a three-digit sequence.
pub fn validate_code_lot(code_lot: &str) -> Result<(), InvalidParam> {
    let well_formed = code_lot.len() == 9
        && code_lot.is_char_boundary(2)
        && SITES.contains(&&code_lot[..2])
        && code_lot[2..].bytes().all(|b| b.is_ascii_digit());
    if !well_formed {
        let shown: String = code_lot.chars().take(40).collect();
        return Err(InvalidParam::new(
            "code_lot",
            format!("{shown:?}"),
            "<LL|LS|MT><YYMM><001..999>, such as LL2612001",
        ));
    }
    Ok(())
}

/// Parameters of the one-click pipeline; each part falls back to its default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineParams {
    #[serde(default)]
    pub gavage: GavageParams,
    #[serde(default)]
    pub monitor: MonitorParams,
    #[serde(default)]
    pub sqal: SqalParams,
}

impl PipelineParams {
    pub fn validate(&self) -> Result<(), InvalidParam> {
        self.gavage.validate()?;
        self.monitor.validate()?;
        self.sqal.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(GavageParams::default().validate(), Ok(()));
        assert_eq!(MonitorParams::default().validate(), Ok(()));
        assert_eq!(SqalParams::default().validate(), Ok(()));
    }

    #[test]
    fn nb_lots_bounds() {
        let mut params = GavageParams::default();
        params.nb_lots = 0;
        let error = params.validate().unwrap_err();
        assert_eq!(error.field, "nb_lots");
        assert_eq!(error.value, "0");
        assert_eq!(error.allowed, "1..=50");
        params.nb_lots = 1;
        assert!(params.validate().is_ok());
        params.nb_lots = 50;
        assert!(params.validate().is_ok());
        params.nb_lots = 51;
        assert_eq!(params.validate().unwrap_err().field, "nb_lots");
    }

    #[test]
    fn acceleration_rejects_zero_negative_and_nan() {
        for bad in [0.0, -5.0, 0.5, f64::NAN, f64::INFINITY, 1_000_000_001.0] {
            let params = GavageParams {
                acceleration: bad,
                ..GavageParams::default()
            };
            let error = params.validate().unwrap_err();
            assert_eq!(error.field, "acceleration", "value {bad}");
        }
        let params = GavageParams {
            acceleration: 1.0,
            ..GavageParams::default()
        };
        assert!(params.validate().is_ok());
    }

    #[test]
    fn sample_interval_bounds() {
        let with_interval = |interval| SqalParams {
            interval,
            ..SqalParams::default()
        };
        for bad in [-0.01, 60.01, f64::NAN, f64::INFINITY] {
            let error = with_interval(bad).validate().unwrap_err();
            assert_eq!(error.field, "interval", "value {bad}");
            assert_eq!(error.allowed, "0..=60", "value {bad}");
        }
        assert!(with_interval(0.0).validate().is_ok());
        assert!(with_interval(60.0).validate().is_ok());
    }

    #[test]
    fn device_id_format() {
        assert!(validate_device_id("ESP32_MT_07").is_ok());
        for bad in [
            "",
            "ESP32_XX_01",
            "ESP32_LL_1",
            "ESP8266_LL_01",
            "ESP32_LL_01_x",
            "<script>",
        ] {
            assert_eq!(
                validate_device_id(bad).unwrap_err().field,
                "device_id",
                "value {bad}"
            );
        }
    }

    /// Checks one README row: `inside` must pass and `outside` must be
    /// rejected naming `field`.
    fn check_row<T: fmt::Debug>(
        field: &str,
        validate: impl Fn(&T) -> Result<(), InvalidParam>,
        inside: &[T],
        outside: &[T],
    ) {
        for value in inside {
            assert_eq!(validate(value), Ok(()), "{field} = {value:?} is in range");
        }
        for value in outside {
            let error = validate(value).expect_err(field);
            assert_eq!(error.field, field, "{field} = {value:?}");
        }
    }

    #[test]
    fn every_task_parameter_row_at_its_edges() {
        let gavage = |edit: fn(&mut GavageParams, f64)| {
            move |value: &f64| {
                let mut params = GavageParams::default();
                edit(&mut params, *value);
                params.validate()
            }
        };
        check_row(
            "nb_lots",
            gavage(|p, v| p.nb_lots = v as u32),
            &[1.0, 50.0],
            &[0.0, 51.0],
        );
        check_row(
            "acceleration",
            gavage(|p, v| p.acceleration = v),
            &[1.0, 1_000_000_000.0],
            &[0.99, 1_000_000_000.5],
        );
        check_row(
            "polling_interval",
            |value: &f64| {
                MonitorParams {
                    polling_interval: *value,
                }
                .validate()
            },
            &[0.5, 3600.0],
            &[0.49, 3600.5],
        );
        let sqal = |edit: fn(&mut SqalParams, f64)| {
            move |value: &f64| {
                let mut params = SqalParams::default();
                edit(&mut params, *value);
                params.validate()
            }
        };
        check_row(
            "interval",
            sqal(|p, v| p.interval = v),
            &[0.0, 60.0],
            &[-0.001, 60.01],
        );
        check_row(
            "nb_samples",
            sqal(|p, v| p.nb_samples = v as u32),
            &[1.0, 200.0],
            &[0.0, 201.0],
        );
        check_row(
            "device_id",
            |value: &&str| validate_device_id(value),
            &["ESP32_LL_00", "ESP32_MT_99"],
            &["ESP32_MT_100", "ESP32_MT_9"],
        );
        check_row(
            "run_id",
            |value: &String| validate_run_id(value),
            &[
                "R20261204231508123-1a2b".to_string(),
                format!("R{}", "9".repeat(39)),
            ],
            &[
                format!("R{}", "9".repeat(40)),
                "20261204".to_string(),
                "R1'--".to_string(),
            ],
        );
        // Profiles and seeds are checked when the JSON is read.
        for profile in ["standard", "premium", "low"] {
            let json = format!(r#"{{"profile": "{profile}"}}"#);
            assert!(
                serde_json::from_str::<SqalParams>(&json).is_ok(),
                "{profile}"
            );
        }
        assert!(serde_json::from_str::<SqalParams>(r#"{"profile": "deluxe"}"#).is_err());
        assert!(serde_json::from_str::<GavageParams>(r#"{"seed": 18446744073709551615}"#).is_ok());
        assert!(serde_json::from_str::<GavageParams>(r#"{"seed": -1}"#).is_err());
    }

    #[test]
    fn code_lot_format() {
        assert!(validate_code_lot("LL2612001").is_ok());
        // "é" spans bytes 1 and 2: slicing at byte 2 would panic.
        for bad in [
            "",
            "LL261200",
            "XX2612001",
            "LL26120O1",
            "Lé1234567",
            "ÉÉ2612001",
        ] {
            assert_eq!(
                validate_code_lot(bad).unwrap_err().field,
                "code_lot",
                "value {bad}"
            );
        }
    }

    #[test]
    fn json_body_with_missing_fields_uses_defaults() {
        let params: GavageParams = serde_json::from_str(r#"{"nb_lots": 2}"#).unwrap();
        assert_eq!(params.nb_lots, 2);
        assert_eq!(params.acceleration, 259_200.0);
    }

    #[test]
    fn json_body_with_unknown_field_is_rejected() {
        let parsed = serde_json::from_str::<GavageParams>(r#"{"nb_lot": 2}"#);
        assert!(parsed.is_err());
    }

    #[test]
    fn error_message_names_field_value_and_range() {
        let error = InvalidParam::new("nb_samples", 0, "1..=200");
        assert_eq!(
            error.to_string(),
            "invalid nb_samples: 0 (allowed: 1..=200)"
        );
        assert!(error.message_fr().contains("nb_samples"));
    }
}
