//! `POST /api/scan`: reads the QR code in a JPEG picture for the trace
//! page's scanner. Decoding happens here rather than in the browser because
//! the decoder's tables alone would add 65,802 bytes to the WASM bundle, and
//! gzip barely shrinks them. Browsers with a built-in `BarcodeDetector` read
//! camera frames themselves and send only photos.

use crate::api::ApiError;
use crate::guard::error_response;
use axum::body::{to_bytes, Body};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chain::params::InvalidParam;
use serde_json::json;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Largest accepted upload. The scanner sends JPEG pictures of at most 1024
/// pixels a side, well under this.
pub const MAX_BYTES: usize = 2 * 1024 * 1024;
/// Largest accepted width and height, in pixels.
pub const MAX_SIDE: u16 = 2048;
/// How long a request waits for a free decoder before it is turned away.
const QUEUE_WAIT: Duration = Duration::from_secs(3);

/// Reason a picture could not be read.
#[derive(Debug, PartialEq)]
pub enum ScanError {
    /// The bytes are not a JPEG image this decoder reads.
    NotAnImage(String),
    /// The picture is larger than `MAX_SIDE` in one direction.
    TooLarge(InvalidParam),
    /// The picture contains no readable QR code.
    NoCode,
}

/// Decodes a JPEG picture to greyscale and returns the text of the first QR
/// code found in it.
pub fn read_jpeg(bytes: &[u8]) -> Result<String, ScanError> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder
        .read_info()
        .map_err(|error| ScanError::NotAnImage(error.to_string()))?;
    let info = decoder
        .info()
        .ok_or_else(|| ScanError::NotAnImage("no image header".into()))?;
    for (field, value) in [("width", info.width), ("height", info.height)] {
        if value == 0 || value > MAX_SIDE {
            return Err(ScanError::TooLarge(InvalidParam::new(
                field,
                format!("{value} px"),
                format!("1..={MAX_SIDE} px"),
            )));
        }
    }
    let pixels = decoder
        .decode()
        .map_err(|error| ScanError::NotAnImage(error.to_string()))?;
    let luma = to_luma(info.pixel_format, &pixels)?;
    decode_luma(info.width as usize, info.height as usize, &luma).ok_or(ScanError::NoCode)
}

/// Converts decoded pixels to one byte of brightness each.
fn to_luma(format: jpeg_decoder::PixelFormat, pixels: &[u8]) -> Result<Vec<u8>, ScanError> {
    use jpeg_decoder::PixelFormat;
    Ok(match format {
        PixelFormat::L8 => pixels.to_vec(),
        // Big-endian 16-bit samples: the high byte is enough for a QR code.
        PixelFormat::L16 => pixels.iter().step_by(2).copied().collect(),
        PixelFormat::RGB24 => pixels
            .chunks_exact(3)
            .map(|px| {
                ((u32::from(px[0]) * 299 + u32::from(px[1]) * 587 + u32::from(px[2]) * 114) / 1000)
                    as u8
            })
            .collect(),
        PixelFormat::CMYK32 => {
            return Err(ScanError::NotAnImage(
                "CMYK pictures are not supported: send RGB or greyscale".into(),
            ))
        }
    })
}

/// Finds the first QR code in a greyscale image stored row by row.
pub fn decode_luma(width: usize, height: usize, luma: &[u8]) -> Option<String> {
    if width == 0 || height == 0 || luma.len() < width * height {
        return None;
    }
    let mut image =
        rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| luma[y * width + x]);
    image
        .detect_grids()
        .iter()
        .find_map(|grid| grid.decode().ok().map(|(_, content)| content))
}

/// Returns the semaphore that limits decoding to one picture per core,
/// because each decoding keeps a core busy (an estimate: tens of
/// milliseconds at 1024 pixels).
fn decoders() -> &'static Semaphore {
    static DECODERS: OnceLock<Semaphore> = OnceLock::new();
    DECODERS.get_or_init(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(1, |cores| cores.get()))
    })
}

/// `POST /api/scan` with a `Content-Type: image/jpeg` body: `200 {"text"}`
/// with the code's text, `422 no_code` when the picture contains none.
pub async fn scan(headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if content_type.split(';').next().map(str::trim) != Some("image/jpeg") {
        return Err(ApiError::InvalidParam(InvalidParam::new(
            "Content-Type",
            format!("{content_type:?}"),
            "image/jpeg",
        )));
    }
    let Ok(bytes) = to_bytes(body, MAX_BYTES).await else {
        tracing::info!(limit = MAX_BYTES, "scan picture rejected: too large");
        return Ok(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("the picture is larger than {MAX_BYTES} bytes"),
        ));
    };
    let Ok(Ok(_permit)) = tokio::time::timeout(QUEUE_WAIT, decoders().acquire()).await else {
        tracing::warn!(waited = ?QUEUE_WAIT, "scan picture rejected: every decoder busy");
        return Ok(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "every decoder is busy; try again in a moment",
        ));
    };
    let outcome = tokio::task::spawn_blocking(move || read_jpeg(&bytes))
        .await
        .map_err(|error| anyhow::anyhow!("QR decoding task failed: {error}"))?;
    Ok(match outcome {
        Ok(text) => (StatusCode::OK, Json(json!({ "text": text }))).into_response(),
        Err(ScanError::TooLarge(invalid)) => return Err(invalid.into()),
        Err(ScanError::NotAnImage(detail)) => {
            tracing::info!(%detail, "scan picture rejected: not a readable JPEG");
            error_response(
                StatusCode::BAD_REQUEST,
                "bad_image",
                &format!("the body is not a readable JPEG picture: {detail}"),
            )
        }
        Err(ScanError::NoCode) => {
            tracing::debug!("scan picture without a readable QR code");
            error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no_code",
                "no readable QR code in the picture",
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "Q96fD28Otj5xa-8Ic4LjNQ";

    /// Renders `text` as a QR code in a greyscale image, `scale` pixels per
    /// module, with the standard four-module quiet zone.
    fn qr_image(text: &str, scale: usize) -> (usize, Vec<u8>) {
        let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M).unwrap();
        let modules = code.width();
        let colors = code.to_colors();
        let side = (modules + 8) * scale;
        let mut luma = vec![255u8; side * side];
        for y in 0..side {
            for x in 0..side {
                let (mx, my) = ((x / scale) as isize - 4, (y / scale) as isize - 4);
                let inside =
                    (0..modules as isize).contains(&mx) && (0..modules as isize).contains(&my);
                if inside && colors[my as usize * modules + mx as usize] == qrcode::Color::Dark {
                    luma[y * side + x] = 0;
                }
            }
        }
        (side, luma)
    }

    fn payload() -> String {
        format!(
            "http://127.0.0.1:3000/trace/{TOKEN}?lot=LL2612001&grade=A%2B&tof=0.812&as7341=0.777"
        )
    }

    #[test]
    fn decodes_a_product_qr_code() {
        let (side, luma) = qr_image(&payload(), 4);
        assert_eq!(decode_luma(side, side, &luma), Some(payload()));
    }

    #[test]
    fn blank_image_has_no_code() {
        assert_eq!(decode_luma(64, 64, &vec![255u8; 64 * 64]), None);
        assert_eq!(decode_luma(0, 0, &[]), None);
        assert_eq!(
            decode_luma(8, 8, &[0; 10]),
            None,
            "fewer pixels than the size says"
        );
    }

    #[test]
    fn colour_pixels_become_brightness() {
        let rgb = [255, 255, 255, 0, 0, 0, 255, 0, 0];
        assert_eq!(
            to_luma(jpeg_decoder::PixelFormat::RGB24, &rgb).unwrap(),
            vec![255, 0, 76]
        );
        assert_eq!(
            to_luma(jpeg_decoder::PixelFormat::L16, &[0x12, 0x34, 0xab, 0xcd]).unwrap(),
            vec![0x12, 0xab]
        );
        assert!(matches!(
            to_luma(jpeg_decoder::PixelFormat::CMYK32, &[0; 4]),
            Err(ScanError::NotAnImage(_))
        ));
    }

    #[test]
    fn non_jpeg_bytes_are_rejected() {
        for bytes in [&b""[..], b"not a picture", b"\x89PNG\r\n\x1a\n"] {
            assert!(
                matches!(read_jpeg(bytes), Err(ScanError::NotAnImage(_))),
                "{bytes:?}"
            );
        }
    }
}
