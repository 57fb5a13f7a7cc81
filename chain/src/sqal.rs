//! SQAL station: the ESP32 twin that measures livers with a VL53L8CH ToF
//! sensor and an AS7341 spectral sensor, the analysis that scores any such
//! measurement, and the station task that inspects claimed lots.

use crate::grade::{self, Grade};
use crate::ingest::{IngestError, SamplePayload, SampleReceipt};
use crate::monitor::ClaimedLot;
use crate::params::QualityProfile;
use crate::params::SqalParams;
use crate::services::Services;
use crate::supervisor::TaskContext;
use crate::views::{
    Alert, AlertLevel, Band, Defect, DefectKind, Event, RatioReading, SampleDetails,
};
use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

pub const GRID: usize = 8;
pub const ZONES: usize = GRID * GRID;
/// Tray of 300 × 180 mm seen by the 8×8 zones: each zone is 37.5 × 22.5 mm.
pub const ZONE_WIDTH_MM: f64 = 300.0 / GRID as f64;
pub const ZONE_DEPTH_MM: f64 = 180.0 / GRID as f64;
/// Distance from the sensor to the empty tray floor.
pub const SENSOR_HEIGHT_MM: f64 = 100.0;
/// Density of raw foie gras, g/cm³.
pub const LIVER_DENSITY: f64 = 0.947;
/// Zones below this height belong to the tray, not the liver.
pub const LIVER_MIN_HEIGHT_MM: f64 = 5.0;

pub use crate::views::AS7341_CHANNELS as CHANNELS;
/// Counts of a fresh liver at gain 1× and 100 ms integration.
pub const FRESH_COUNTS: [f64; 10] = [
    400.0, 600.0, 500.0, 1900.0, 900.0, 600.0, 1150.0, 750.0, 6500.0, 600.0,
];
/// Relative change of each channel for a fully degraded liver (quality 0):
/// oxidation darkens the green bands and brightens the red and violet ones.
const DEGRADATION_SHIFT: [f64; 10] = [
    0.45, 0.25, 0.0, -0.30, -0.25, 0.10, 0.40, 0.35, -0.10, -0.30,
];
pub const SATURATION_COUNT: f64 = 65_500.0;
pub const WEAK_COUNT: f64 = 10.0;
pub const DEFAULT_GAIN: f64 = 4.0;
pub const DEFAULT_INTEGRATION_MS: f64 = 100.0;

/// VL53L8CH target statuses of a usable range: 5 is a valid range, 6 and 9
/// are valid ranges with a weaker or merged signal.
pub const VALID_ZONE_STATUSES: [i64; 3] = [5, 6, 9];
/// Status the twin gives a zone with no target (a smudged window).
const NO_TARGET_STATUS: i64 = 255;
/// More invalid zones than this make the frame unusable.
pub const MAX_INVALID_ZONES: u32 = 16;

/// One measurement as a device sends it: the five VL53L8CH matrices and the
/// AS7341 counts with the settings they were read with.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measurement {
    /// 64 distances in mm, row by row.
    pub tof_distances: Vec<f64>,
    /// 64 reflectances in %.
    pub tof_reflectance: Vec<f64>,
    /// 64 signal amplitudes, in kcps per SPAD.
    pub tof_amplitude: Vec<f64>,
    /// 64 ambient light levels, in kcps per SPAD.
    pub tof_ambient: Vec<f64>,
    /// 64 target statuses (5, 6 and 9 are usable ranges).
    pub tof_status: Vec<i64>,
    /// F1..F8, Clear, NIR raw counts.
    pub as7341_counts: Vec<f64>,
    pub as7341_gain: f64,
    pub as7341_integration_ms: f64,
}

/// Scores and everything else the analysis derives from a measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub tof_score: f64,
    pub as7341_score: f64,
    pub final_score: f64,
    /// `None` when the measurement is invalid.
    pub grade: Option<Grade>,
    pub invalid_reason: Option<String>,
    pub details: SampleDetails,
}

fn is_valid_status(status: i64) -> bool {
    VALID_ZONE_STATUSES.contains(&status)
}

/// Zone centre in mm from the tray centre, as (x along 300 mm, y along 180 mm).
fn zone_centre(row: usize, col: usize) -> (f64, f64) {
    (
        (col as f64 + 0.5) * ZONE_WIDTH_MM - 150.0,
        (row as f64 + 0.5) * ZONE_DEPTH_MM - 90.0,
    )
}

/// Neighbours of a zone above, below, left and right, inside the grid.
fn neighbours(zone: usize) -> impl Iterator<Item = usize> {
    let (row, col) = (zone / GRID, zone % GRID);
    [
        (row > 0).then(|| zone - GRID),
        (row + 1 < GRID).then(|| zone + GRID),
        (col > 0).then(|| zone - 1),
        (col + 1 < GRID).then(|| zone + 1),
    ]
    .into_iter()
    .flatten()
}

/// Solves the square system `matrix · x = rhs` by Gaussian elimination with
/// partial pivoting; `None` when the system is singular.
fn solve(mut matrix: [[f64; 6]; 6], mut rhs: [f64; 6]) -> Option<[f64; 6]> {
    for pivot in 0..6 {
        let best = (pivot..6)
            .max_by(|a, b| matrix[*a][pivot].abs().total_cmp(&matrix[*b][pivot].abs()))?;
        if matrix[best][pivot].abs() < 1e-12 {
            return None;
        }
        matrix.swap(pivot, best);
        rhs.swap(pivot, best);
        for row in pivot + 1..6 {
            let factor = matrix[row][pivot] / matrix[pivot][pivot];
            let pivot_row = matrix[pivot];
            for (cell, pivot_cell) in matrix[row].iter_mut().zip(pivot_row).skip(pivot) {
                *cell -= factor * pivot_cell;
            }
            rhs[row] -= factor * rhs[pivot];
        }
    }
    let mut solution = [0.0; 6];
    for row in (0..6).rev() {
        let known: f64 = (row + 1..6)
            .map(|col| matrix[row][col] * solution[col])
            .sum();
        solution[row] = (rhs[row] - known) / matrix[row][row];
    }
    Some(solution)
}

/// Terms of the quadratic surface fitted to h², at a zone's centre in
/// tenths of a metre (a scale that keeps the normal equations well
/// conditioned).
fn dome_terms(zone: usize) -> [f64; 6] {
    let (x, y) = zone_centre(zone / GRID, zone % GRID);
    let (x, y) = (x / 100.0, y / 100.0);
    [1.0, x, y, x * x, x * y, y * y]
}

/// Fits the smooth dome to the heights of the zones in `mask`. A
/// half-ellipsoid of any size and rotation has a squared height quadratic
/// in x and y, so a least-squares quadratic fit of h² leaves only texture
/// and defects. Returns `None` below eight zones.
fn fit_dome(heights: &[f64], mask: &[bool]) -> Option<[f64; 6]> {
    if mask.iter().filter(|inside| **inside).count() < 8 {
        return None;
    }
    let mut normal = [[0.0; 6]; 6];
    let mut rhs = [0.0; 6];
    for zone in (0..ZONES).filter(|zone| mask[*zone]) {
        let terms = dome_terms(zone);
        for i in 0..6 {
            for j in 0..6 {
                normal[i][j] += terms[i] * terms[j];
            }
            rhs[i] += terms[i] * heights[zone] * heights[zone];
        }
    }
    solve(normal, rhs)
}

/// Height of the fitted dome at a zone, in mm.
fn dome_height(coefficients: &[f64; 6], zone: usize) -> f64 {
    let squared: f64 = dome_terms(zone)
        .iter()
        .zip(coefficients)
        .map(|(term, coefficient)| term * coefficient)
        .sum();
    squared.max(0.0).sqrt()
}

/// Gaps, in mm, between the measured heights of the zones in `mask` and
/// the dome fitted to them, as (zone, gap); `None` below eight zones.
fn dome_residuals(heights: &[f64], mask: &[bool]) -> Option<Vec<(usize, f64)>> {
    let coefficients = fit_dome(heights, mask)?;
    Some(
        (0..ZONES)
            .filter(|zone| mask[*zone])
            .map(|zone| (zone, heights[zone] - dome_height(&coefficients, zone)))
            .collect(),
    )
}

/// Finds zones whose gap to the dome is large against the surface texture:
/// more than 10 mm and more than four times the median gap. Each defect
/// found is left out of the next fits, and at most four are reported. On
/// the twin's livers (2,000 per quality) it flags 3.8 % of livers at
/// quality 0.95 and 16 % at 0.4, where the twin drew a defect in 3.6 % and
/// 10 %: the rougher surface of poor livers adds false alarms.
fn find_defects(heights: &[f64], liver: &[bool]) -> Vec<Defect> {
    let mut fitted = liver.to_vec();
    let mut defects = Vec::new();
    while defects.len() < 4 {
        let Some(residuals) = dome_residuals(heights, &fitted) else {
            break;
        };
        let mut gaps: Vec<f64> = residuals.iter().map(|(_, gap)| gap.abs()).collect();
        gaps.sort_by(f64::total_cmp);
        let threshold = (4.0 * gaps[gaps.len() / 2]).max(10.0);
        let Some(&(zone, fitted_gap)) = residuals
            .iter()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        else {
            break;
        };
        let on_edge = neighbours(zone).count() < 4 || neighbours(zone).any(|next| !liver[next]);
        let mut others = fitted.clone();
        others[zone] = false;
        // Inside the liver the dome fitted without the zone predicts it well.
        // On the edge that prediction is an extrapolation, so an edge zone
        // keeps its gap to the full fit.
        let gap = match fit_dome(heights, &others) {
            Some(coefficients) if !on_edge => heights[zone] - dome_height(&coefficients, zone),
            _ => fitted_gap,
        };
        if gap.abs() <= threshold {
            break;
        }
        let kind = if gap > 0.0 {
            DefectKind::ForeignBody
        } else if on_edge {
            DefectKind::DamagedEdge
        } else {
            DefectKind::Deformation
        };
        defects.push(Defect {
            kind,
            row: (zone / GRID) as u32,
            col: (zone % GRID) as u32,
            severity: round_to(gap.abs() / 30.0, 2).min(1.0),
        });
        fitted = others;
    }
    defects
}

/// Surface uniformity 1 / (1 + mean |∇distance|), with the gradient taken
/// between horizontal and vertical neighbours in mm per zone.
fn surface_uniformity(distances: &[f64]) -> f64 {
    let mut total = 0.0;
    let mut count = 0;
    for zone in 0..ZONES {
        for next in neighbours(zone).filter(|next| *next > zone) {
            total += (distances[next] - distances[zone]).abs();
            count += 1;
        }
    }
    1.0 / (1.0 + total / count as f64)
}

/// Spectral ratios of the analysis, as (name, numerator channels,
/// denominator channels) over indices of `CHANNELS`.
pub const RATIOS: [(&str, &[usize], &[usize]); 6] = [
    ("F1/F7", &[0], &[6]),
    ("NIR/F1", &[9], &[0]),
    ("(F5+F6)/(F1+F2)", &[4, 5], &[0, 1]),
    ("(F7+F8)/F4", &[6, 7], &[3]),
    ("(F1+F2)/(F7+F8)", &[0, 1], &[6, 7]),
    ("(F1+F3)/(F5+F6)", &[0, 2], &[4, 5]),
];
/// A ratio within ±10 % of a fresh liver's is optimal, within ±25 % acceptable.
const OPTIMAL_SPREAD: f64 = 0.10;
const ACCEPTABLE_SPREAD: f64 = 0.25;

fn ratio(counts: &[f64], numerator: &[usize], denominator: &[usize]) -> f64 {
    let top: f64 = numerator.iter().map(|i| counts[*i]).sum();
    let bottom: f64 = denominator.iter().map(|i| counts[*i]).sum();
    top / bottom
}

/// Log of each ratio against a fresh liver's; gain and integration time
/// cancel out in ratios.
fn ratio_shifts(counts: &[f64]) -> [f64; 6] {
    RATIOS.map(|(_, top, bottom)| {
        (ratio(counts, top, bottom) / ratio(&FRESH_COUNTS, top, bottom)).ln()
    })
}

fn ratio_readings(counts: &[f64]) -> Vec<RatioReading> {
    RATIOS
        .iter()
        .map(|(name, top, bottom)| {
            let fresh = ratio(&FRESH_COUNTS, top, bottom);
            let value = ratio(counts, top, bottom);
            let band_of = |spread: f64| {
                (
                    round_to(fresh * (1.0 - spread), 3),
                    round_to(fresh * (1.0 + spread), 3),
                )
            };
            let (optimal, acceptable) = (band_of(OPTIMAL_SPREAD), band_of(ACCEPTABLE_SPREAD));
            let inside = |(low, high): (f64, f64)| (low..=high).contains(&value);
            let band = if inside(optimal) {
                Band::Optimal
            } else if inside(acceptable) {
                Band::Acceptable
            } else {
                Band::Out
            };
            RatioReading {
                name: name.to_string(),
                value: round_to(value, 4),
                optimal,
                acceptable,
                band,
            }
        })
        .collect()
}

/// 1 when `shift` is 0, falling linearly to 0 at a log shift of `zero_at`.
fn closeness(shift: f64, zero_at: f64) -> f64 {
    (1.0 - shift.abs() / zero_at).clamp(0.0, 1.0)
}

/// Computes the four spectral indices from the ratio shifts:
/// - freshness: NIR/F1, which falls as the liver ages;
/// - fat quality: (F5+F6)/(F1+F2), the yellow-to-violet balance of the fat;
/// - oxidation: how far (F7+F8)/F4 has risen, 1 when it has doubled;
/// - colour uniformity: the other three ratios, averaged.
fn spectral_indices(shifts: &[f64; 6]) -> (f64, f64, f64, f64) {
    let freshness = closeness(shifts[1], 0.9);
    let fat_quality = closeness(shifts[2], 0.6);
    let oxidation = (shifts[3] / std::f64::consts::LN_2).clamp(0.0, 1.0);
    let colour =
        (closeness(shifts[0], 0.3) + closeness(shifts[4], 0.3) + closeness(shifts[5], 0.45)) / 3.0;
    (freshness, fat_quality, oxidation, colour)
}

/// Calibration of the two scores: mean ratio shift and roughness of a
/// perfect liver (floor) and how much they grow down to quality 0 (span),
/// measured on simulated livers per quality step. A score therefore tracks
/// the quality the twin drew; a real device would be calibrated on
/// reference livers instead.
const SPECTRAL_DEVIATION_FLOOR: f64 = 0.012;
const SPECTRAL_DEVIATION_SPAN: f64 = 0.347;
const ROUGHNESS_SMOOTH_MM: f64 = 1.57;
const ROUGHNESS_SPAN_MM: f64 = 8.67;

/// Checks a measurement and scores it. A sensor fault gives an invalid
/// measurement with no grade. Payloads that passed `ingest::validate` (64
/// values per matrix, 10 counts) do not panic here.
pub fn analyze(measurement: &Measurement) -> Analysis {
    let distances = &measurement.tof_distances;
    let counts = &measurement.as7341_counts;
    let valid: Vec<bool> = measurement
        .tof_status
        .iter()
        .map(|status| is_valid_status(*status))
        .collect();
    let valid_zones = valid.iter().filter(|v| **v).count() as u32;

    // An invalid zone takes the mean height of its valid neighbours, so a
    // stray zone neither adds nor removes volume.
    let raw_heights: Vec<f64> = distances
        .iter()
        .map(|d| (SENSOR_HEIGHT_MM - d).clamp(0.0, SENSOR_HEIGHT_MM))
        .collect();
    let heights: Vec<f64> = (0..ZONES)
        .map(|zone| {
            if valid[zone] {
                return raw_heights[zone];
            }
            let around: Vec<f64> = neighbours(zone)
                .filter(|next| valid[*next])
                .map(|next| raw_heights[next])
                .collect();
            if around.is_empty() {
                0.0
            } else {
                around.iter().sum::<f64>() / around.len() as f64
            }
        })
        .collect();
    let liver: Vec<bool> = (0..ZONES)
        .map(|zone| valid[zone] && heights[zone] >= LIVER_MIN_HEIGHT_MM)
        .collect();
    let liver_zones = liver.iter().filter(|l| **l).count() as u32;

    let zone_area_mm2 = ZONE_WIDTH_MM * ZONE_DEPTH_MM;
    let volume_cm3 = heights.iter().map(|h| h * zone_area_mm2).sum::<f64>() / 1000.0;
    let estimated_weight_g = volume_cm3 * LIVER_DENSITY;
    // Uncertainty: range noise, which falls as the signal grows, on every
    // liver zone, and partial cover of the zones on the liver's edge.
    let variance_mm6: f64 = (0..ZONES)
        .filter(|zone| liver[*zone])
        .map(|zone| {
            let range_sigma =
                (8.0 / measurement.tof_amplitude[zone].max(1.0).sqrt()).clamp(0.2, 5.0);
            let on_edge = neighbours(zone).count() < 4 || neighbours(zone).any(|next| !liver[next]);
            let cover_sigma = if on_edge { 0.3 * heights[zone] } else { 0.0 };
            (range_sigma.powi(2) + cover_sigma.powi(2)) * zone_area_mm2.powi(2)
        })
        .sum();
    let weight_uncertainty_g = variance_mm6.sqrt() / 1000.0 * LIVER_DENSITY;
    let liver_heights: Vec<f64> = (0..ZONES)
        .filter(|zone| liver[*zone])
        .map(|zone| heights[zone])
        .collect();
    let height_mean_mm = if liver_heights.is_empty() {
        0.0
    } else {
        liver_heights.iter().sum::<f64>() / liver_heights.len() as f64
    };
    let height_max_mm = liver_heights.iter().copied().fold(0.0, f64::max);

    let residuals = dome_residuals(&heights, &liver);
    let roughness_mm = residuals.as_ref().map(|residuals| {
        (residuals.iter().map(|(_, gap)| gap * gap).sum::<f64>() / residuals.len() as f64).sqrt()
    });
    let defects = find_defects(&heights, &liver);

    let shifts = ratio_shifts(counts);
    let deviation = shifts.iter().map(|shift| shift.abs()).sum::<f64>() / shifts.len() as f64;
    let as7341_score =
        (1.0 - (deviation - SPECTRAL_DEVIATION_FLOOR) / SPECTRAL_DEVIATION_SPAN).clamp(0.0, 1.0);
    let tof_score = roughness_mm
        .map(|roughness| {
            (1.0 - (roughness - ROUGHNESS_SMOOTH_MM) / ROUGHNESS_SPAN_MM).clamp(0.0, 1.0)
        })
        .unwrap_or(0.0);
    let final_score = grade::final_score(tof_score, as7341_score);
    let (freshness_index, fat_quality_index, oxidation_index, colour_index) =
        spectral_indices(&shifts);

    let anomalies = spectral_anomalies(counts);
    let invalid_reason = anomalies.first().cloned().or_else(|| {
        if valid_zones < ZONES as u32 - MAX_INVALID_ZONES {
            Some(format!(
                "ToF: {} of 64 zones invalid (at most {MAX_INVALID_ZONES})",
                ZONES as u32 - valid_zones
            ))
        } else if liver_zones < 8 {
            Some(format!(
                "ToF sees the liver in only {liver_zones} of 64 zones"
            ))
        } else {
            None
        }
    });
    let grade = invalid_reason
        .is_none()
        .then(|| Grade::from_score(final_score));
    let alerts = if invalid_reason.is_some() {
        Vec::new()
    } else {
        alerts(final_score, grade, oxidation_index, freshness_index)
    };

    Analysis {
        tof_score,
        as7341_score,
        final_score,
        grade,
        invalid_reason,
        details: SampleDetails {
            valid_zones,
            liver_zones,
            height_mean_mm: round_to(height_mean_mm, 1),
            height_max_mm: round_to(height_max_mm, 1),
            volume_cm3: round_to(volume_cm3, 1),
            estimated_weight_g: round_to(estimated_weight_g, 1),
            weight_uncertainty_g: round_to(weight_uncertainty_g, 1),
            surface_uniformity: round_to(surface_uniformity(distances), 4),
            roughness_mm: roughness_mm.map(|value| round_to(value, 2)),
            defects,
            ratios: ratio_readings(counts),
            freshness_index: round_to(freshness_index, 3),
            fat_quality_index: round_to(fat_quality_index, 3),
            oxidation_index: round_to(oxidation_index, 3),
            colour_index: round_to(colour_index, 3),
            anomalies,
            alerts,
        },
    }
}

/// Saturated (≥ 65 500) and very weak (< 10) channels, in channel order.
fn spectral_anomalies(counts: &[f64]) -> Vec<String> {
    counts
        .iter()
        .zip(CHANNELS)
        .filter_map(|(count, channel)| {
            if *count >= SATURATION_COUNT {
                Some(format!("AS7341 {channel} saturated ({count} counts)"))
            } else if *count < WEAK_COUNT {
                Some(format!("AS7341 {channel} too weak ({count} counts)"))
            } else {
                None
            }
        })
        .collect()
}

pub const FINAL_SCORE_CRITICAL: f64 = 0.40;
pub const FINAL_SCORE_WARNING: f64 = 0.60;
pub const OXIDATION_WARNING: f64 = 0.70;
pub const FRESHNESS_WARNING: f64 = 0.50;

/// Lists the quality alerts of one graded sample: final score below 0.40
/// (critical) or 0.60 (warning), REJECT (critical), oxidation above 0.70 and
/// freshness below 0.50 (warnings).
pub fn alerts(
    final_score: f64,
    grade: Option<Grade>,
    oxidation_index: f64,
    freshness_index: f64,
) -> Vec<Alert> {
    let mut alerts = Vec::new();
    let mut raise = |level, code: &str, value: f64, limit: f64| {
        alerts.push(Alert {
            level,
            code: code.to_string(),
            value: round_to(value, 3),
            limit,
        })
    };
    if final_score < FINAL_SCORE_CRITICAL {
        raise(
            AlertLevel::Critical,
            "final_score_critical",
            final_score,
            FINAL_SCORE_CRITICAL,
        );
    } else if final_score < FINAL_SCORE_WARNING {
        raise(
            AlertLevel::Warning,
            "final_score_low",
            final_score,
            FINAL_SCORE_WARNING,
        );
    }
    if grade == Some(Grade::Reject) {
        raise(
            AlertLevel::Critical,
            "grade_reject",
            final_score,
            grade::THRESHOLDS[3].1,
        );
    }
    if oxidation_index > OXIDATION_WARNING {
        raise(
            AlertLevel::Warning,
            "oxidation_high",
            oxidation_index,
            OXIDATION_WARNING,
        );
    }
    if freshness_index < FRESHNESS_WARNING {
        raise(
            AlertLevel::Warning,
            "freshness_low",
            freshness_index,
            FRESHNESS_WARNING,
        );
    }
    alerts
}

/// Latent quality bands, best first, matching the grade bands of the score.
pub const QUALITY_BANDS: [(f64, f64); 5] = [
    (0.85, 0.97),
    (0.75, 0.85),
    (0.60, 0.75),
    (0.45, 0.60),
    (0.25, 0.45),
];

/// Share of livers drawn in each quality band, per profile. Measurement
/// noise moves some livers across a grade boundary, so these shares are the
/// solution of `transfer · shares = target mix`, where `transfer` is the
/// grade mix the analysis gives each band (measured with
/// `cargo run --release -p chain --example calibrate`).
pub fn band_shares(profile: QualityProfile) -> [f64; 5] {
    match profile {
        QualityProfile::Standard => [0.025, 0.603, 0.274, 0.059, 0.040],
        QualityProfile::Premium => [0.174, 0.712, 0.061, 0.041, 0.012],
        QualityProfile::Low => [0.0, 0.319, 0.385, 0.171, 0.125],
    }
}

/// Draws a latent liver quality in 0..1 with the given band shares.
pub fn draw_quality_with(rng: &mut impl Rng, shares: &[f64; 5]) -> f64 {
    let mut roll: f64 = rng.gen::<f64>() * shares.iter().sum::<f64>();
    for (share, (low, high)) in shares.iter().zip(QUALITY_BANDS) {
        if roll < *share {
            return rng.gen_range(low..high);
        }
        roll -= share;
    }
    let (low, high) = QUALITY_BANDS[4];
    rng.gen_range(low..high)
}

/// Draws a latent liver quality in 0..1 for a profile's grade mix.
pub fn draw_quality(rng: &mut impl Rng, profile: QualityProfile) -> f64 {
    draw_quality_with(rng, &band_shares(profile))
}

/// Share of measurements with a sensor fault: a flash of light that
/// saturates the Clear channel, or a smudged window that blinds ToF zones.
const FAULT_RATE: f64 = 0.004;

/// Simulates one measurement of a liver of latent `quality` weighing about
/// `liver_weight_g`. Both sensors see the same liver.
pub fn simulate(rng: &mut impl Rng, quality: f64, liver_weight_g: f64) -> Measurement {
    let noise = Normal::new(0.0, 1.0).expect("unit normal");

    // Half-ellipsoid of about 170 × 85 mm footprint whose height gives the
    // liver's volume, rotated and shifted a little on the tray.
    let volume_mm3 = liver_weight_g / LIVER_DENSITY * 1000.0;
    let half_length = 85.0 * rng.gen_range(0.92..1.08);
    let half_width = 42.5 * rng.gen_range(0.92..1.08);
    let height =
        (3.0 * volume_mm3 / (2.0 * std::f64::consts::PI * half_length * half_width)).min(85.0);
    let angle: f64 = rng.gen_range(-0.35..0.35);
    let (center_x, center_y) = (rng.gen_range(-10.0..10.0), rng.gen_range(-6.0..6.0));
    let texture = 2.0 + 12.0 * (1.0 - quality);

    let mut liver_heights = [0.0; ZONES];
    for (zone, slot) in liver_heights.iter_mut().enumerate() {
        let (x, y) = zone_centre(zone / GRID, zone % GRID);
        let (x, y) = (x - center_x, y - center_y);
        let along = x * angle.cos() + y * angle.sin();
        let across = -x * angle.sin() + y * angle.cos();
        let inside = 1.0 - (along / half_length).powi(2) - (across / half_width).powi(2);
        if inside > 0.0 {
            // Lobes and grain: each zone sits a little above or below the
            // smooth dome, by an amount that grows as quality drops.
            let sign = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
            let h = height * inside.sqrt() + texture * sign * rng.gen_range(0.8..1.0);
            *slot = h.max(0.0);
        }
    }

    // Poorer livers carry more defects.
    if rng.gen_bool(0.03 + 0.12 * (1.0 - quality)) {
        let on_liver: Vec<usize> = (0..ZONES)
            .filter(|zone| liver_heights[*zone] > 10.0)
            .collect();
        if !on_liver.is_empty() {
            let zone = on_liver[rng.gen_range(0..on_liver.len())];
            let depth = rng.gen_range(14.0..24.0);
            match rng.gen_range(0..3) {
                0 => liver_heights[zone] += depth,
                1 => liver_heights[zone] = (liver_heights[zone] - depth).max(6.0),
                _ => {
                    let edge = on_liver
                        .iter()
                        .copied()
                        .find(|zone| neighbours(*zone).any(|next| liver_heights[next] == 0.0))
                        .unwrap_or(zone);
                    liver_heights[edge] *= 0.35;
                }
            }
        }
    }

    let smudged = rng.gen_bool(FAULT_RATE / 2.0);
    let flash = rng.gen_bool(FAULT_RATE / 2.0);
    let reflectance_liver = 30.0 + 15.0 * quality;
    let ambient_base = rng.gen_range(2.0..6.0);
    let mut measurement = Measurement {
        tof_distances: Vec::with_capacity(ZONES),
        tof_reflectance: Vec::with_capacity(ZONES),
        tof_amplitude: Vec::with_capacity(ZONES),
        tof_ambient: Vec::with_capacity(ZONES),
        tof_status: Vec::with_capacity(ZONES),
        as7341_counts: Vec::new(),
        as7341_gain: DEFAULT_GAIN,
        as7341_integration_ms: DEFAULT_INTEGRATION_MS,
    };
    for (zone, h) in liver_heights.iter().enumerate() {
        let distance =
            (SENSOR_HEIGHT_MM - h + 0.3 * noise.sample(rng)).clamp(0.0, SENSOR_HEIGHT_MM);
        let reflectance = if *h > 0.0 {
            reflectance_liver + 2.0 * noise.sample(rng)
        } else {
            6.0 + 0.5 * noise.sample(rng)
        }
        .clamp(1.0, 100.0);
        // The return signal falls with the square of the distance.
        let amplitude = reflectance * 120.0 * (100.0 / distance.max(20.0)).powi(2);
        let blinded = smudged && zone % 3 != 0;
        let status = if blinded {
            NO_TARGET_STATUS
        } else if rng.gen_bool(0.02) {
            if rng.gen_bool(0.5) {
                6
            } else {
                9
            }
        } else {
            5
        };
        measurement.tof_distances.push(round_to(distance, 1));
        measurement.tof_reflectance.push(round_to(reflectance, 1));
        measurement
            .tof_amplitude
            .push(if blinded { 0.0 } else { amplitude.round() });
        measurement
            .tof_ambient
            .push(round_to(ambient_base + 0.3 * noise.sample(rng).abs(), 2));
        measurement.tof_status.push(status);
    }

    let spectral_quality = (quality + 0.03 * noise.sample(rng)).clamp(0.0, 1.0);
    measurement.as7341_counts = FRESH_COUNTS
        .iter()
        .zip(DEGRADATION_SHIFT)
        .map(|(fresh, shift)| {
            let level = fresh * DEFAULT_GAIN * (1.0 + shift * (1.0 - spectral_quality));
            (level * (1.0 + 0.01 * noise.sample(rng)))
                .round()
                .clamp(0.0, 65_535.0)
        })
        .collect();
    if flash {
        measurement.as7341_counts[8] = 65_535.0;
    }
    measurement
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Seed of one sample, so that a lot re-inspected after a crash measures the
/// same livers again.
fn sample_seed(station_seed: u64, code_lot: &str, sample_index: u32) -> u64 {
    // FNV-1a over the lot code, mixed with the station seed and the index.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in code_lot.bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^ station_seed.rotate_left(17) ^ (sample_index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Samples sent and not yet acknowledged, across lots. The twin keeps
/// measuring while the server stores what it sent, as a device with an
/// upload queue does, so that concurrent samples share a transaction.
pub const UPLINK_DEPTH: u32 = 4;

/// A sample on its way to the server, with its receipt once stored.
type Upload = tokio::task::JoinHandle<Result<SampleReceipt, IngestError>>;

/// Runs the station: inspects each lot it receives, one sample every
/// `interval` seconds, until cancelled or until its inbox closes. A lot's
/// inspection is closed (verdict stored, `lot_inspected` published) once
/// its samples are acknowledged, while the station measures the next lots,
/// as a real station moves on to the next tray while the server files the
/// last one.
pub async fn run(
    services: Services,
    params: SqalParams,
    mut inbox: mpsc::UnboundedReceiver<ClaimedLot>,
    ctx: TaskContext,
) -> anyhow::Result<String> {
    let station = Station {
        seed: params.seed.unwrap_or_else(rand::random),
        uplink: Arc::new(Semaphore::new(UPLINK_DEPTH as usize)),
        services,
        params,
        ctx,
    };
    let mut inspected = 0;
    // Lots measured and being closed, each once its own samples are stored.
    // They are at most the lots in flight, which the monitor bounds.
    let mut closing = tokio::task::JoinSet::new();
    loop {
        while let Some(closed) = closing.try_join_next() {
            inspected += was_closed(closed);
        }
        let lot = tokio::select! {
            _ = station.ctx.cancel.cancelled() => break,
            lot = inbox.recv() => match lot {
                Some(lot) => lot,
                None => break,
            },
        };
        match station.measure(&lot).await {
            Ok(Measured::Sent(uploads)) => {
                closing.spawn(close(station.services.clone(), lot, uploads));
            }
            Ok(Measured::AlreadyInspected) => {}
            Ok(Measured::Cancelled) => break,
            Err(error) => fail(&station.services, &lot, &error).await?,
        }
    }
    while let Some(closed) = closing.join_next().await {
        inspected += was_closed(closed);
    }
    // Samples of a lot left midway are stored all the same. Waiting for
    // them lets the task's final counters include them.
    let _ = station.uplink.acquire_many(UPLINK_DEPTH).await;
    Ok(format!("{inspected} lots inspectés"))
}

/// The running station and what its measurements need.
struct Station {
    services: Services,
    params: SqalParams,
    ctx: TaskContext,
    seed: u64,
    /// One permit per sample that may be in flight.
    uplink: Arc<Semaphore>,
}

/// Outcome of measuring a lot.
enum Measured {
    /// Every sample is measured and sent; the inspection closes once their
    /// receipts are in.
    Sent(Vec<Upload>),
    /// Another claim of the lot already finished it.
    AlreadyInspected,
    /// The station was stopped midway, so the lot stays `inspecting` until
    /// its lease expires and it is claimed again.
    Cancelled,
}

impl Station {
    /// Measures every liver of one lot and sends each sample.
    async fn measure(&self, lot: &ClaimedLot) -> anyhow::Result<Measured> {
        // A lot can wait in the inbox past its lease and be claimed a second
        // time. The copy that comes second finds it inspected and skips it.
        // Starting renews the lease, so waiting does not eat into inspection.
        // A claim made a moment ago cannot have been claimed again, and its
        // lease is still whole.
        let fresh = lot
            .fresh_until
            .is_some_and(|until| std::time::Instant::now() < until);
        let services = &self.services;
        if !fresh
            && !services
                .store
                .start_inspection(&lot.code_lot, services.lease_seconds)
                .await?
        {
            tracing::info!(lot.code = %lot.code_lot, "lot already inspected, skipped");
            return Ok(Measured::AlreadyInspected);
        }
        tracing::info!(lot.code = %lot.code_lot, attempts = lot.attempts, "inspection started");

        let mut uploads = Vec::with_capacity(self.params.nb_samples as usize);
        for sample_index in 0..self.params.nb_samples {
            let mut rng =
                ChaCha8Rng::seed_from_u64(sample_seed(self.seed, &lot.code_lot, sample_index));
            let quality = draw_quality(&mut rng, self.params.profile);
            // A foie gras weighs about 8 % of its duck's live weight.
            let liver_weight_g = lot.poids_moyen_final * 0.08 * rng.gen_range(0.85..1.15);
            let measurement = simulate(&mut rng, quality, liver_weight_g);
            let payload = SamplePayload::new(
                &self.params.device_id,
                &lot.code_lot,
                sample_index,
                measurement,
            );
            let permit = tokio::select! {
                _ = self.ctx.cancel.cancelled() => return Ok(Measured::Cancelled),
                permit = self.uplink.clone().acquire_owned() => permit.expect("the uplink is never closed"),
            };
            uploads.push(tokio::spawn(send(
                services.clone(),
                self.ctx.clone(),
                payload,
                lot.run_id.clone(),
                permit,
            )));

            if self.params.interval == 0.0 {
                if self.ctx.cancel.is_cancelled() {
                    return Ok(Measured::Cancelled);
                }
                continue;
            }
            tokio::select! {
                _ = self.ctx.cancel.cancelled() => return Ok(Measured::Cancelled),
                _ = tokio::time::sleep(Duration::from_secs_f64(self.params.interval)) => {}
            }
        }
        Ok(Measured::Sent(uploads))
    }
}

/// Sends one sample and counts it once stored; the permit frees its place
/// in the uplink when the receipt is in.
async fn send(
    services: Services,
    ctx: TaskContext,
    payload: SamplePayload,
    run_id: String,
    _permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<SampleReceipt, IngestError> {
    let receipt = services.ingest_claimed_sample(&payload, &run_id).await?;
    ctx.count(|counters| counters.samples += 1);
    if receipt.product.is_some() {
        ctx.count(|counters| counters.products += 1);
    }
    Ok(receipt)
}

/// Records a failed inspection for the monitor to claim the lot again.
async fn fail(services: &Services, lot: &ClaimedLot, error: &anyhow::Error) -> anyhow::Result<()> {
    let reason = format!("{error:#}");
    tracing::error!(lot.code = %lot.code_lot, attempts = lot.attempts, error = %reason, "inspection failed");
    services
        .store
        .fail_inspection(&lot.code_lot, &reason)
        .await?;
    services.publish_queue();
    Ok(())
}

/// Counts a closed inspection: 1 when the lot was closed, 0 otherwise.
fn was_closed(closed: Result<bool, tokio::task::JoinError>) -> u32 {
    match closed {
        Ok(closed) => closed as u32,
        Err(error) => {
            tracing::error!(error = %error, "closing an inspection panicked");
            0
        }
    }
}

/// Waits for every sample of a lot to be acknowledged. A sample that an
/// earlier attempt at the lot stored counts as acknowledged.
async fn receipts(uploads: Vec<Upload>) -> anyhow::Result<()> {
    for upload in uploads {
        match upload.await.context("sending a sample panicked")? {
            Ok(_) | Err(IngestError::Duplicate { .. }) => {}
            Err(IngestError::Invalid(invalid)) => {
                anyhow::bail!("the twin produced a rejected sample: {invalid}")
            }
            Err(IngestError::Internal(error)) => return Err(error),
        }
    }
    Ok(())
}

/// Closes a measured lot's inspection once its samples are stored. The
/// verdict counts every stored sample, an interrupted attempt's included.
/// Returns true when the lot was closed, and records a failure on the lot
/// otherwise.
async fn close(services: Services, lot: ClaimedLot, uploads: Vec<Upload>) -> bool {
    let closing = async {
        receipts(uploads).await?;
        let (compliant, valid) = services.store.sample_outcomes(&lot.code_lot).await?;
        let verdict = lot_verdict(compliant, valid);
        services
            .store
            .finish_inspection(&lot.code_lot, verdict)
            .await?;
        tracing::info!(lot.code = %lot.code_lot, verdict, compliant, valid, "inspection finished");
        services.bus.publish(Event::LotInspected {
            code_lot: lot.code_lot.clone(),
            verdict: verdict.to_string(),
        });
        services.publish_queue();
        anyhow::Ok(())
    };
    match closing.await {
        Ok(()) => true,
        Err(error) => {
            if let Err(failed) = fail(&services, &lot, &error).await {
                tracing::error!(lot.code = %lot.code_lot, error = %format!("{failed:#}"), "failed to record the inspection failure");
            }
            false
        }
    }
}

/// Decides a lot's verdict: approved when at least 80 % of its valid samples
/// are compliant, rejected otherwise and when no sample is valid.
pub fn lot_verdict(compliant: i64, valid: i64) -> &'static str {
    if valid > 0 && compliant * 5 >= valid * 4 {
        "approved"
    } else {
        "rejected"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(quality: f64, seed: u64) -> Analysis {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        analyze(&simulate(&mut rng, quality, 560.0))
    }

    fn fresh_counts() -> Vec<f64> {
        FRESH_COUNTS.iter().map(|c| c * DEFAULT_GAIN).collect()
    }

    #[test]
    fn fresh_reference_scores_best() {
        let shifts = ratio_shifts(&fresh_counts());
        assert!(shifts.iter().all(|shift| shift.abs() < 1e-9), "{shifts:?}");
        assert_eq!(spectral_indices(&shifts), (1.0, 1.0, 0.0, 1.0));
        for reading in ratio_readings(&fresh_counts()) {
            assert_eq!(reading.band, Band::Optimal, "{}", reading.name);
        }
    }

    /// Returns fresh counts with one channel scaled, to move the ratios that
    /// use it.
    fn with_channel(channel: usize, factor: f64) -> Vec<f64> {
        let mut counts = fresh_counts();
        counts[channel] *= factor;
        counts
    }

    #[test]
    fn each_ratio_band_has_its_edges() {
        // Numerator and denominator channels never overlap, so scaling the
        // numerator channels by f scales the ratio by exactly f.
        for (index, (name, numerator, _)) in RATIOS.iter().enumerate() {
            for (factor, band) in [
                (1.0, Band::Optimal),
                (1.09, Band::Optimal),
                (0.91, Band::Optimal),
                (1.11, Band::Acceptable),
                (0.76, Band::Acceptable),
                (1.24, Band::Acceptable),
                (1.26, Band::Out),
                (0.74, Band::Out),
            ] {
                let mut counts = fresh_counts();
                for channel in numerator.iter() {
                    counts[*channel] *= factor;
                }
                let reading = &ratio_readings(&counts)[index];
                assert_eq!(&reading.name, name);
                assert_eq!(reading.band, band, "{name} × {factor}");
            }
        }
        // Every band is centred on the fresh ratio.
        for reading in ratio_readings(&fresh_counts()) {
            let (low, high) = reading.optimal;
            assert!(
                (reading.value - (low + high) / 2.0).abs() < 0.01,
                "{}",
                reading.name
            );
        }
    }

    #[test]
    fn indices_follow_their_ratio() {
        // NIR halved: NIR/F1 falls by ln 2 = 0.69 of the 0.9 that zeroes freshness.
        let shifts = ratio_shifts(&with_channel(9, 0.5));
        let (freshness, ..) = spectral_indices(&shifts);
        assert!(
            (freshness - (1.0 - 2f64.ln() / 0.9)).abs() < 1e-9,
            "{freshness}"
        );
        // F4 halved: (F7+F8)/F4 doubles, oxidation is full.
        let (_, _, oxidation, _) = spectral_indices(&ratio_shifts(&with_channel(3, 0.5)));
        assert!((oxidation - 1.0).abs() < 1e-9, "{oxidation}");
        // F4 brighter: the ratio falls, which is no oxidation.
        let (_, _, oxidation, _) = spectral_indices(&ratio_shifts(&with_channel(3, 1.5)));
        assert_eq!(oxidation, 0.0);
    }

    #[test]
    fn alerts_follow_the_domain_thresholds() {
        let codes = |final_score, grade, oxidation, freshness| {
            alerts(final_score, grade, oxidation, freshness)
                .into_iter()
                .map(|alert| alert.code)
                .collect::<Vec<_>>()
        };
        assert!(codes(0.80, Some(Grade::A), 0.2, 0.9).is_empty());
        assert_eq!(codes(0.59, Some(Grade::C), 0.2, 0.9), ["final_score_low"]);
        assert_eq!(codes(0.60, Some(Grade::B), 0.2, 0.9), Vec::<String>::new());
        assert_eq!(
            codes(0.39, Some(Grade::Reject), 0.2, 0.9),
            ["final_score_critical", "grade_reject"]
        );
        assert_eq!(
            codes(0.42, Some(Grade::Reject), 0.2, 0.9),
            ["final_score_low", "grade_reject"]
        );
        assert_eq!(codes(0.80, Some(Grade::A), 0.71, 0.9), ["oxidation_high"]);
        assert_eq!(codes(0.80, Some(Grade::A), 0.70, 0.9), Vec::<String>::new());
        assert_eq!(codes(0.80, Some(Grade::A), 0.2, 0.49), ["freshness_low"]);
        let critical = alerts(0.3, Some(Grade::Reject), 0.2, 0.9);
        assert!(critical
            .iter()
            .all(|alert| alert.level == AlertLevel::Critical));
    }

    /// Simulates a smooth 560 g liver, all zones valid, with one zone raised
    /// (positive `gap`) or lowered by `gap` mm.
    fn liver_with_gap(zone: usize, gap: f64) -> Measurement {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut measurement = simulate(&mut rng, 1.0, 560.0);
        measurement.tof_status = vec![5; ZONES];
        measurement.tof_distances[zone] -= gap;
        measurement
    }

    #[test]
    fn defects_found_at_their_zone() {
        let baseline = analyze(&liver_with_gap(0, 0.0));
        assert!(
            baseline.details.defects.is_empty(),
            "{:?}",
            baseline.details.defects
        );

        let centre = 3 * GRID + 4;
        let bump = analyze(&liver_with_gap(centre, 20.0)).details.defects;
        assert_eq!(bump.len(), 1, "{bump:?}");
        assert_eq!(
            (bump[0].kind, bump[0].row, bump[0].col),
            (DefectKind::ForeignBody, 3, 4)
        );

        let dip = analyze(&liver_with_gap(centre, -20.0)).details.defects;
        assert_eq!(
            dip.first().map(|d| d.kind),
            Some(DefectKind::Deformation),
            "{dip:?}"
        );

        let heights = heights_of(&liver_with_gap(0, 0.0));
        let edge = (0..ZONES)
            .find(|zone| heights[*zone] > 30.0 && neighbours(*zone).any(|next| heights[next] < 5.0))
            .expect("a liver zone on the edge");
        let torn = analyze(&liver_with_gap(edge, -0.6 * heights[edge]))
            .details
            .defects;
        assert_eq!(
            torn.first().map(|d| d.kind),
            Some(DefectKind::DamagedEdge),
            "{torn:?}"
        );
    }

    fn heights_of(measurement: &Measurement) -> Vec<f64> {
        measurement
            .tof_distances
            .iter()
            .map(|d| SENSOR_HEIGHT_MM - d)
            .collect()
    }

    #[test]
    fn weight_comes_with_an_uncertainty_that_covers_it() {
        let mut within = 0;
        for seed in 0..300 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let details = analyze(&simulate(&mut rng, 0.9, 560.0)).details;
            assert!(details.weight_uncertainty_g > 0.0);
            if (details.estimated_weight_g - 560.0).abs() <= 2.0 * details.weight_uncertainty_g {
                within += 1;
            }
        }
        assert!(
            within >= 240,
            "{within} of 300 estimates within two uncertainties of 560 g"
        );
    }

    #[test]
    fn too_many_invalid_zones_invalidate() {
        let mut measurement = liver_with_gap(0, 0.0);
        for status in measurement
            .tof_status
            .iter_mut()
            .take(MAX_INVALID_ZONES as usize)
        {
            *status = 255;
        }
        assert!(
            analyze(&measurement).grade.is_some(),
            "16 invalid zones are tolerated"
        );
        measurement.tof_status[40] = 3;
        let analysis = analyze(&measurement);
        assert_eq!(analysis.grade, None);
        assert!(analysis
            .invalid_reason
            .unwrap()
            .contains("17 of 64 zones invalid"));
    }

    #[test]
    fn scores_stay_in_unit_range() {
        for seed in 0..200 {
            let analysis = measured((seed % 10) as f64 / 10.0, seed);
            for score in [
                analysis.tof_score,
                analysis.as7341_score,
                analysis.final_score,
            ] {
                assert!((0.0..=1.0).contains(&score), "seed {seed} score {score}");
            }
        }
    }

    #[test]
    fn better_livers_score_higher_on_average() {
        let mean = |quality| {
            (0..300)
                .map(|seed| measured(quality, seed).final_score)
                .sum::<f64>()
                / 300.0
        };
        let (high, mid, low) = (mean(0.9), mean(0.65), mean(0.35));
        assert!(high > mid, "means {high} {mid} {low}");
        assert!(mid > low, "means {high} {mid} {low}");
        assert!(
            (high - 0.9).abs() < 0.08,
            "mean score of quality 0.9 livers: {high}"
        );
        assert!(
            (low - 0.35).abs() < 0.08,
            "mean score of quality 0.35 livers: {low}"
        );
    }

    #[test]
    fn estimated_weight_near_simulated_weight() {
        let mean = (0..300)
            .map(|seed| measured(0.8, seed).details.estimated_weight_g)
            .sum::<f64>()
            / 300.0;
        assert!(
            (400.0..720.0).contains(&mean),
            "mean estimated weight {mean} g for 560 g livers"
        );
    }

    #[test]
    fn saturated_channel_is_invalid() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut measurement = simulate(&mut rng, 0.9, 560.0);
        measurement.as7341_counts[8] = 65_535.0;
        let analysis = analyze(&measurement);
        assert_eq!(analysis.grade, None);
        assert!(analysis.invalid_reason.unwrap().contains("Clear saturated"));
        assert!(analysis.details.alerts.is_empty());
    }

    #[test]
    fn empty_tray_is_invalid() {
        let measurement = Measurement {
            tof_distances: vec![100.0; ZONES],
            tof_reflectance: vec![6.0; ZONES],
            tof_amplitude: vec![720.0; ZONES],
            tof_ambient: vec![3.0; ZONES],
            tof_status: vec![5; ZONES],
            as7341_counts: FRESH_COUNTS.to_vec(),
            as7341_gain: 1.0,
            as7341_integration_ms: 100.0,
        };
        let analysis = analyze(&measurement);
        assert_eq!(analysis.grade, None);
        assert!(analysis.invalid_reason.unwrap().contains("0 of 64 zones"));
    }

    /// Grade mix in % (A+, A, B, C, REJECT) of `total` simulated samples of a
    /// profile, among the valid ones, and the share of invalid ones.
    pub(crate) fn measured_mix(profile: QualityProfile, total: u64) -> ([f64; 5], f64) {
        let mut counts = [0u64; 5];
        let mut invalid = 0;
        for seed in 0..total {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0000);
            let quality = draw_quality(&mut rng, profile);
            match analyze(&simulate(&mut rng, quality, 560.0)).grade {
                Some(grade) => counts[Grade::ALL.iter().position(|g| *g == grade).unwrap()] += 1,
                None => invalid += 1,
            }
        }
        let valid = (total - invalid) as f64;
        (
            counts.map(|count| 100.0 * count as f64 / valid),
            100.0 * invalid as f64 / total as f64,
        )
    }

    #[test]
    fn standard_mix_within_three_points() {
        let (mix, invalid) = measured_mix(QualityProfile::Standard, 10_000);
        let target = QualityProfile::Standard.target_mix();
        for ((grade, share), wanted) in Grade::ALL.iter().zip(mix).zip(target) {
            assert!(
                (share - wanted).abs() <= 3.0,
                "{grade}: {share:.1} % for a target of {wanted} % (whole mix {mix:.1?})"
            );
        }
        assert!(invalid < 1.5, "{invalid:.2} % invalid measurements");
    }

    #[test]
    fn premium_beats_standard_beats_low() {
        let best_two = |profile| {
            let (mix, _) = measured_mix(profile, 2_000);
            mix[0] + mix[1]
        };
        let (premium, standard, low) = (
            best_two(QualityProfile::Premium),
            best_two(QualityProfile::Standard),
            best_two(QualityProfile::Low),
        );
        assert!(
            premium > standard + 10.0,
            "A+ and A: premium {premium:.1} %, standard {standard:.1} %"
        );
        assert!(
            standard > low + 10.0,
            "A+ and A: standard {standard:.1} %, low {low:.1} %"
        );
    }

    #[test]
    fn lot_verdict_rule() {
        assert_eq!(lot_verdict(8, 10), "approved");
        assert_eq!(lot_verdict(7, 10), "rejected");
        assert_eq!(lot_verdict(0, 0), "rejected");
    }
}
