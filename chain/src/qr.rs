//! Trace tokens, QR payloads and their SVG rendering.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};
use rand::RngCore;

/// Random bytes in a trace token: 128 bits, so tokens cannot be guessed.
pub const TOKEN_BYTES: usize = 16;

/// Draws a fresh token from the OS random source. Tokens are never derived
/// from a simulation seed, because a seed would make them predictable.
pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub use crate::token::{is_valid_token, TOKEN_LEN};

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
fn encode_query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Builds `{public_url}/trace/<token>?lot=…&grade=…&tof=…&as7341=…`. The
/// query is a hint for offline readers; the trace page reads the database.
pub fn payload(
    public_url: &str,
    token: &str,
    code_lot: &str,
    grade: &str,
    tof_score: f64,
    as7341_score: f64,
) -> String {
    format!(
        "{}/trace/{}?lot={}&grade={}&tof={:.3}&as7341={:.3}",
        public_url.trim_end_matches('/'),
        token,
        encode_query_value(code_lot),
        encode_query_value(grade),
        tof_score,
        as7341_score,
    )
}

/// Renders a payload as an SVG QR code with error correction level M.
pub fn render_svg(payload: &str) -> Result<String, qrcode::types::QrError> {
    let code = QrCode::with_error_correction_level(payload.as_bytes(), EcLevel::M)?;
    Ok(code
        .render::<svg::Color>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_22_url_safe_characters() {
        let token = new_token();
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(is_valid_token(&token), "token {token}");
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(new_token(), new_token());
    }

    #[test]
    fn malformed_tokens_are_invalid() {
        for bad in [
            "",
            "short",
            "aaaaaaaaaaaaaaaaaaaaa/",
            "aaaaaaaaaaaaaaaaaaaaaaa",
            "<script>aaaaaaaaaaaaaa",
        ] {
            assert!(!is_valid_token(bad), "token {bad:?}");
        }
    }

    #[test]
    fn payload_encodes_grade_plus_sign() {
        let url = payload(
            "http://127.0.0.1:3000/",
            "tok",
            "LL2612001",
            "A+",
            0.91234,
            0.8,
        );
        assert_eq!(
            url,
            "http://127.0.0.1:3000/trace/tok?lot=LL2612001&grade=A%2B&tof=0.912&as7341=0.800"
        );
    }

    #[test]
    fn svg_contains_a_drawing() {
        let svg = render_svg("http://127.0.0.1:3000/trace/abc").unwrap();
        assert!(
            svg.starts_with("<?xml") || svg.starts_with("<svg"),
            "{}",
            &svg[..40]
        );
        assert!(svg.contains("<path") || svg.contains("<rect"));
    }
}
