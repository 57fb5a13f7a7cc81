//! Timestamps as stored and shown: UTC, ISO 8601 with milliseconds, so that
//! text order is time order on both database engines.

use chrono::{DateTime, Duration, SecondsFormat, Utc};

pub fn format(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn now() -> String {
    format(Utc::now())
}

/// Returns the time `seconds` from now, for leases.
pub fn in_seconds(seconds: f64) -> String {
    format(Utc::now() + Duration::milliseconds((seconds * 1000.0) as i64))
}
