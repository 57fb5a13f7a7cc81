//! Score weighting and grade thresholds of a SQAL measurement.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Weight of the ToF (shape) score in the final score; the AS7341 spectral
/// score takes the rest.
pub const TOF_WEIGHT: f64 = 0.6;
pub const AS7341_WEIGHT: f64 = 0.4;

/// Lowest final score of each grade, best grade first. Below the last one a
/// liver is rejected.
pub const THRESHOLDS: [(Grade, f64); 4] = [
    (Grade::APlus, 0.85),
    (Grade::A, 0.75),
    (Grade::B, 0.60),
    (Grade::C, 0.45),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Grade {
    #[serde(rename = "A+")]
    APlus,
    A,
    B,
    C,
    #[serde(rename = "REJECT")]
    Reject,
}

impl Grade {
    pub const ALL: [Grade; 5] = [Grade::APlus, Grade::A, Grade::B, Grade::C, Grade::Reject];

    /// Grades a final score in 0..1 with the thresholds above.
    pub fn from_score(final_score: f64) -> Grade {
        THRESHOLDS
            .iter()
            .find(|(_, min)| final_score >= *min)
            .map(|(grade, _)| *grade)
            .unwrap_or(Grade::Reject)
    }

    /// Tells whether a liver may become a product: every grade but REJECT.
    pub fn is_compliant(self) -> bool {
        self != Grade::Reject
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Grade::APlus => "A+",
            Grade::A => "A",
            Grade::B => "B",
            Grade::C => "C",
            Grade::Reject => "REJECT",
        }
    }

    pub fn parse(text: &str) -> Option<Grade> {
        Grade::ALL.into_iter().find(|grade| grade.as_str() == text)
    }

    /// Lowest final score of this grade, or `None` for REJECT.
    pub fn min_score(self) -> Option<f64> {
        THRESHOLDS
            .iter()
            .find(|(grade, _)| *grade == self)
            .map(|(_, min)| *min)
    }
}

impl fmt::Display for Grade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Combines the two sensor scores into the final score.
pub fn final_score(tof_score: f64, as7341_score: f64) -> f64 {
    TOF_WEIGHT * tof_score + AS7341_WEIGHT * as7341_score
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grade_boundaries_are_inclusive() {
        assert_eq!(Grade::from_score(0.85), Grade::APlus);
        assert_eq!(Grade::from_score(0.75), Grade::A);
        assert_eq!(Grade::from_score(0.60), Grade::B);
        assert_eq!(Grade::from_score(0.45), Grade::C);
    }

    #[test]
    fn grade_just_below_boundaries() {
        assert_eq!(Grade::from_score(0.849_999), Grade::A);
        assert_eq!(Grade::from_score(0.749_999), Grade::B);
        assert_eq!(Grade::from_score(0.599_999), Grade::C);
        assert_eq!(Grade::from_score(0.449_999), Grade::Reject);
    }

    #[test]
    fn grade_extremes() {
        assert_eq!(Grade::from_score(1.0), Grade::APlus);
        assert_eq!(Grade::from_score(0.0), Grade::Reject);
    }

    #[test]
    fn final_score_weights_tof_then_spectrum() {
        assert!((final_score(1.0, 0.0) - 0.6).abs() < 1e-12);
        assert!((final_score(0.0, 1.0) - 0.4).abs() < 1e-12);
        assert!((final_score(0.5, 0.5) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn grade_text_round_trips() {
        for grade in Grade::ALL {
            assert_eq!(Grade::parse(grade.as_str()), Some(grade));
        }
        assert_eq!(Grade::parse("A-"), None);
    }

    #[test]
    fn only_reject_is_not_compliant() {
        assert!(!Grade::Reject.is_compliant());
        assert!(Grade::C.is_compliant());
    }
}
