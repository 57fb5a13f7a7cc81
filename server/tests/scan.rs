//! `POST /api/scan` over loopback: JPEG pictures made here from real QR
//! codes, sent to the real router on a real SQLite file.

use serde_json::Value;

struct App {
    base: String,
    client: reqwest::Client,
    shutdown: tokio_util::sync::CancellationToken,
    _dir: tempfile::TempDir,
}

impl App {
    /// Starts a server with an admin token, to show the route stays public.
    async fn start() -> App {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("filiere.db").display());
        let mut config = server::config::Config::for_test(&url);
        config.admin_token = Some("scan-test-admin-token-0123".into());
        let application = server::build(config).await.expect("application builds");
        let base = format!("http://127.0.0.1:{}", application.port());
        let shutdown = application.shutdown_token();
        tokio::spawn(application.run_until_stopped());
        App {
            base,
            client: reqwest::Client::new(),
            shutdown,
            _dir: dir,
        }
    }

    async fn scan(&self, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/api/scan", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Encodes `text` as a QR code in a greyscale JPEG, `scale` pixels per
/// module, on a white page `margin` pixels wider on each side than the code.
fn qr_jpeg(text: &str, scale: usize, margin: usize) -> Vec<u8> {
    let code = qrcode::QrCode::new(text).expect("text fits in a QR code");
    let modules = code.width();
    let colors = code.to_colors();
    let side = modules * scale + 2 * margin;
    let mut luma = vec![255u8; side * side];
    for y in margin..margin + modules * scale {
        for x in margin..margin + modules * scale {
            let module = (y - margin) / scale * modules + (x - margin) / scale;
            if colors[module] == qrcode::Color::Dark {
                luma[y * side + x] = 0;
            }
        }
    }
    grey_jpeg(&luma, side, side)
}

fn grey_jpeg(luma: &[u8], width: usize, height: usize) -> Vec<u8> {
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, 90)
        .encode(
            luma,
            width as u16,
            height as u16,
            jpeg_encoder::ColorType::Luma,
        )
        .expect("JPEG encodes");
    jpeg
}

#[tokio::test]
async fn picture_of_a_code_gives_its_text() {
    let app = App::start().await;
    let payload = "http://127.0.0.1:3000/trace/Q96fD28Otj5xa-8Ic4LjNQ?lot=LL2612001&grade=A%2B";
    let (status, body) = app.scan("image/jpeg", qr_jpeg(payload, 6, 40)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["text"], payload);
}

#[tokio::test]
async fn picture_without_a_code_is_no_code() {
    let app = App::start().await;
    let (status, body) = app
        .scan("image/jpeg", grey_jpeg(&vec![200u8; 320 * 240], 320, 240))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "no_code");
}

#[tokio::test]
async fn bad_pictures_are_rejected_with_reason() {
    let app = App::start().await;

    let (status, body) = app.scan("image/png", b"\x89PNG\r\n\x1a\n".to_vec()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "Content-Type");
    assert_eq!(body["allowed"], "image/jpeg");

    let (status, body) = app.scan("image/jpeg", b"not a picture".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_image");

    let wide = grey_jpeg(&vec![255u8; 2100 * 8], 2100, 8);
    let (status, body) = app.scan("image/jpeg", wide).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "width");
    assert_eq!(body["value"], "2100 px");
    assert_eq!(body["allowed"], "1..=2048 px");

    let (status, body) = app
        .scan("image/jpeg", vec![0xff; server::scan::MAX_BYTES + 1])
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "too_large");
}
