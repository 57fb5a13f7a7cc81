//! Reading a product's QR code on `/trace`: with the phone camera, or from
//! a photo. Camera frames go to the browser's `BarcodeDetector` where it
//! exists. Otherwise, and for photos, the picture is sent as a JPEG to
//! `POST /api/scan` and decoded on the server, so the decoder stays out of
//! the WASM bundle. A scanned Filière URL opens its trace page, anything
//! else gets a message.

use crate::use_lang;
use leptos::prelude::*;

/// Turns the text of a scanned QR code into the local path of its trace
/// page, keeping the payload's hints. Accepts `http(s)://<host>/trace/<token>`
/// and `/trace/<token>`, with an optional query; `None` for anything else.
pub fn scanned_trace_path(text: &str) -> Option<String> {
    let text = text.trim();
    let path = if let Some(rest) = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
    {
        &rest[rest.find('/')?..]
    } else {
        text
    };
    let rest = path.strip_prefix("/trace/")?;
    let (token, query) = match rest.split_once('?') {
        Some((token, query)) => (token, Some(query)),
        None => (rest, None),
    };
    let token = token.split('#').next().unwrap_or("");
    if !chain::token::is_valid_token(token) {
        return None;
    }
    let query = query
        .map(|query| query.split('#').next().unwrap_or(""))
        .filter(|query| {
            !query.is_empty()
                && query
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~%&=+".contains(&b))
        });
    Some(match query {
        Some(query) => format!("/trace/{token}?{query}"),
        None => format!("/trace/{token}"),
    })
}

/// Outcome of one attempt at reading a code. Only the browser build reads
/// codes, so the server build never makes the last two.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
enum ScanState {
    Idle,
    Working(&'static str),
    Problem(String),
}

/// Scan button, photo picker and the camera view. Shown only once the page
/// runs JavaScript; without it the typed-code form above still works. An
/// island, hydrated on its own in the server-rendered lookup page.
#[island]
pub fn QrScanner() -> impl IntoView {
    let lang = use_lang();
    let interactive = RwSignal::new(false);
    Effect::new(move |_| interactive.set(true));
    let state = RwSignal::new(ScanState::Idle);
    let camera_on = RwSignal::new(false);
    let video = NodeRef::<leptos::html::Video>::new();
    let canvas = NodeRef::<leptos::html::Canvas>::new();

    let on_photo = move |_ev: leptos::ev::Event| {
        #[cfg(feature = "hydrate")]
        browser::read_photo(_ev, canvas, state, lang);
    };
    let start_camera = move |_| {
        #[cfg(feature = "hydrate")]
        browser::start_camera(video, canvas, state, camera_on, lang);
    };
    let stop_camera = move |_| {
        #[cfg(feature = "hydrate")]
        browser::stop_camera(video);
        camera_on.set(false);
        state.set(ScanState::Idle);
    };

    view! {
        <Show when=move || interactive.get()>
            <div class="scanner" data-testid="scanner">
                <div class="scan-actions">
                    <Show
                        when=move || camera_on.get()
                        fallback=move || view! {
                            <button type="button" data-testid="scan-camera" on:click=start_camera>
                                {lang.tr("Scanner avec la caméra", "Scan with the camera")}
                            </button>
                        }
                    >
                        <button type="button" on:click=stop_camera>{lang.tr("Arrêter la caméra", "Stop the camera")}</button>
                    </Show>
                    <label class="photo-picker">
                        {lang.tr("Lire une photo du QR code", "Read a photo of the QR code")}
                        <input type="file" accept="image/*" capture="environment" data-testid="scan-photo" on:change=on_photo/>
                    </label>
                </div>
                <video node_ref=video class="camera" playsinline="" muted="" class:hidden=move || !camera_on.get()></video>
                <canvas node_ref=canvas class="hidden"></canvas>
                {move || match state.get() {
                    ScanState::Idle => ().into_any(),
                    ScanState::Working(text) => view! { <p class="muted" role="status">{text}</p> }.into_any(),
                    ScanState::Problem(text) => view! { <p class="error" role="alert" data-testid="scan-problem">{text}</p> }.into_any(),
                }}
            </div>
        </Show>
    }
    // Type erasure keeps the page's view type within the compiler's depth limit.
    .into_any()
}

/// Explains a decoded text that is not a Filière code, or opens its page.
#[cfg(feature = "hydrate")]
fn open_scanned(text: &str, state: RwSignal<ScanState>, lang: crate::i18n::Lang) -> bool {
    match scanned_trace_path(text) {
        Some(path) => {
            state.set(ScanState::Working(
                lang.tr("Code lu, ouverture…", "Code read, opening…"),
            ));
            if let Some(window) = web_sys::window() {
                let _ = window.location().assign(&path);
            }
            true
        }
        None => {
            let shown: String = text.chars().take(80).collect();
            state.set(ScanState::Problem(format!(
                "{} « {shown} »",
                lang.tr(
                    "Ce QR code n'est pas un code Filière :",
                    "This QR code is not a Filière code:",
                )
            )));
            false
        }
    }
}

#[cfg(feature = "hydrate")]
mod browser {
    use super::{open_scanned, ScanState};
    use crate::i18n::Lang;
    use leptos::prelude::*;
    use leptos::task::spawn_local;
    use wasm_bindgen::prelude::*;
    use wasm_bindgen::JsCast;

    /// Largest side of a picture sent to the server, in pixels. A code
    /// that spans a tenth of the photo still gets about 100 pixels.
    const MAX_SIDE: f64 = 1024.0;
    /// JPEG quality of the pictures sent; lower blurs the modules' edges.
    const JPEG_QUALITY: f64 = 0.9;

    /// Result of one picture read by the server.
    enum Reading {
        Text(String),
        NoCode,
        /// Failure to send or read the picture, with the message to show.
        Failed(&'static str),
    }

    /// Draws `source` (an image or a video) on the canvas at most
    /// `MAX_SIDE` wide or high. False when there is nothing to draw.
    fn draw(
        canvas: &web_sys::HtmlCanvasElement,
        source: &JsValue,
        width: f64,
        height: f64,
    ) -> bool {
        if width < 1.0 || height < 1.0 {
            return false;
        }
        let scale = (MAX_SIDE / width.max(height)).min(1.0);
        let (w, h) = ((width * scale).round(), (height * scale).round());
        canvas.set_width(w as u32);
        canvas.set_height(h as u32);
        let Some(context) = canvas
            .get_context("2d")
            .ok()
            .flatten()
            .and_then(|context| context.dyn_into::<web_sys::CanvasRenderingContext2d>().ok())
        else {
            return false;
        };
        if let Some(image) = source.dyn_ref::<web_sys::HtmlImageElement>() {
            context
                .draw_image_with_html_image_element_and_dw_and_dh(image, 0.0, 0.0, w, h)
                .is_ok()
        } else if let Some(video) = source.dyn_ref::<web_sys::HtmlVideoElement>() {
            context
                .draw_image_with_html_video_element_and_dw_and_dh(video, 0.0, 0.0, w, h)
                .is_ok()
        } else {
            false
        }
    }

    /// Returns the message for a file the browser or the server cannot read
    /// as a picture.
    fn not_an_image(lang: Lang) -> &'static str {
        lang.tr(
            "Ce fichier n'est pas une image lisible.",
            "This file is not a readable image.",
        )
    }

    /// Sends the canvas as a JPEG to `POST /api/scan` and reads the response.
    async fn read_on_server(canvas: &web_sys::HtmlCanvasElement, lang: Lang) -> Reading {
        let failed = Reading::Failed(lang.tr(
            "Le serveur n'a pas pu lire l'image. Réessayez dans un instant.",
            "The server could not read the picture. Try again in a moment.",
        ));
        let encoded = js_sys::Promise::new(&mut |resolve, _| {
            if canvas
                .to_blob_with_type_and_encoder_options(
                    &resolve,
                    "image/jpeg",
                    &JsValue::from_f64(JPEG_QUALITY),
                )
                .is_err()
            {
                let _ = resolve.call1(&JsValue::NULL, &JsValue::NULL);
            }
        });

        let Ok(blob) = wasm_bindgen_futures::JsFuture::from(encoded).await else {
            return failed;
        };
        if blob.is_null() {
            return failed;
        }

        let init = web_sys::RequestInit::new();
        init.set_method("POST");
        init.set_body(&blob);
        let headers = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&headers, &"Content-Type".into(), &"image/jpeg".into());
        init.set_headers(&headers);
        let Some(window) = web_sys::window() else {
            return failed;
        };

        let outcome = async {
            let response: web_sys::Response = wasm_bindgen_futures::JsFuture::from(
                window.fetch_with_str_and_init("/api/scan", &init),
            )
            .await
            .ok()?
            .dyn_into()
            .ok()?;
            let body = wasm_bindgen_futures::JsFuture::from(response.json().ok()?)
                .await
                .ok()?;
            let field = |name: &str| {
                js_sys::Reflect::get(&body, &name.into())
                    .ok()
                    .and_then(|value| value.as_string())
            };
            Some((response.status(), field("text"), field("error")))
        };

        match outcome.await {
            Some((200, Some(text), _)) => Reading::Text(text),
            Some((_, _, Some(error))) if error == "no_code" => Reading::NoCode,
            Some((_, _, Some(error))) if error == "bad_image" => {
                Reading::Failed(not_an_image(lang))
            }
            _ => failed,
        }
    }

    pub fn read_photo(
        ev: leptos::ev::Event,
        canvas: NodeRef<leptos::html::Canvas>,
        state: RwSignal<ScanState>,
        lang: Lang,
    ) {
        let Some(input) = ev
            .target()
            .and_then(|target| target.dyn_into::<web_sys::HtmlInputElement>().ok())
        else {
            return;
        };
        let Some(file) = input.files().and_then(|files| files.get(0)) else {
            return;
        };
        let Ok(url) = web_sys::Url::create_object_url_with_blob(&file) else {
            state.set(ScanState::Problem(
                lang.tr(
                    "Impossible d'ouvrir cette photo.",
                    "This photo cannot be opened.",
                )
                .to_string(),
            ));
            return;
        };
        state.set(ScanState::Working(
            lang.tr("Lecture de la photo…", "Reading the photo…"),
        ));
        let Ok(image) = web_sys::HtmlImageElement::new() else {
            return;
        };
        let loaded = image.clone();
        let object_url = url.clone();
        let on_load = Closure::once_into_js(move || {
            let _ = web_sys::Url::revoke_object_url(&object_url);
            let Some(canvas) = canvas.get_untracked() else {
                return;
            };
            let source: JsValue = loaded.clone().into();
            if !draw(
                &canvas,
                &source,
                loaded.natural_width() as f64,
                loaded.natural_height() as f64,
            ) {
                state.set(ScanState::Problem(not_an_image(lang).to_string()));
                return;
            }
            spawn_local(async move {
                match read_on_server(&canvas, lang).await {
                    Reading::Text(text) => {
                        open_scanned(&text, state, lang);
                    }
                    Reading::NoCode => state.set(ScanState::Problem(
                        lang.tr(
                            "Aucun QR code lisible sur cette photo. Reprenez-la de plus près, bien à plat.",
                            "No readable QR code in this photo. Take it again closer, with the code flat.",
                        )
                        .to_string(),
                    )),
                    Reading::Failed(message) => state.set(ScanState::Problem(message.to_string())),
                }
            });
        });
        let on_error = Closure::once_into_js(move || {
            state.set(ScanState::Problem(not_an_image(lang).to_string()));
        });
        image.set_onload(Some(on_load.unchecked_ref()));
        image.set_onerror(Some(on_error.unchecked_ref()));
        image.set_src(&url);
    }

    /// Builds the browser's `BarcodeDetector` for QR codes, where it exists.
    fn barcode_detector() -> Option<JsValue> {
        let window = web_sys::window()?;
        let constructor = js_sys::Reflect::get(&window, &"BarcodeDetector".into())
            .ok()?
            .dyn_into::<js_sys::Function>()
            .ok()?;
        let options = js_sys::Object::new();
        let formats = js_sys::Array::of1(&"qr_code".into());
        js_sys::Reflect::set(&options, &"formats".into(), &formats).ok()?;
        js_sys::Reflect::construct(&constructor, &js_sys::Array::of1(&options)).ok()
    }

    /// Reads the first QR code `detector` finds in `source`.
    async fn detect_with(detector: &JsValue, source: &JsValue) -> Option<String> {
        let detect = js_sys::Reflect::get(detector, &"detect".into())
            .ok()?
            .dyn_into::<js_sys::Function>()
            .ok()?;
        let promise = detect
            .call1(detector, source)
            .ok()?
            .dyn_into::<js_sys::Promise>()
            .ok()?;
        let found = wasm_bindgen_futures::JsFuture::from(promise).await.ok()?;
        let first = js_sys::Array::from(&found).get(0);
        js_sys::Reflect::get(&first, &"rawValue".into())
            .ok()?
            .as_string()
    }

    pub fn start_camera(
        video: NodeRef<leptos::html::Video>,
        canvas: NodeRef<leptos::html::Canvas>,
        state: RwSignal<ScanState>,
        camera_on: RwSignal<bool>,
        lang: Lang,
    ) {
        let no_camera = move || {
            state.set(ScanState::Problem(
                lang.tr(
                    "Caméra indisponible ou refusée. Lisez plutôt une photo du QR code.",
                    "Camera unavailable or refused. Read a photo of the QR code instead.",
                )
                .to_string(),
            ))
        };
        let Some(devices) =
            web_sys::window().and_then(|window| window.navigator().media_devices().ok())
        else {
            no_camera();
            return;
        };
        let constraints = web_sys::MediaStreamConstraints::new();
        let facing = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&facing, &"facingMode".into(), &"environment".into());
        constraints.set_video(&facing);
        let Ok(request) = devices.get_user_media_with_constraints(&constraints) else {
            no_camera();
            return;
        };
        state.set(ScanState::Working(
            lang.tr("Visez le QR code…", "Point at the QR code…"),
        ));
        spawn_local(async move {
            let Ok(stream) = wasm_bindgen_futures::JsFuture::from(request).await else {
                no_camera();
                return;
            };
            let (Some(video), Some(canvas)) = (video.get_untracked(), canvas.get_untracked())
            else {
                return;
            };
            let stream: web_sys::MediaStream = stream.unchecked_into();
            video.set_src_object(Some(&stream));
            let _ = video.play();
            camera_on.set(true);
            let detector = barcode_detector();
            // Looks at about three frames a second until a code is read or
            // the camera is stopped.
            while camera_on.get_untracked() {
                sleep_ms(330).await;
                let source: JsValue = video.clone().into();
                let text = match &detector {
                    Some(detector) => detect_with(detector, &source).await,
                    None if draw(
                        &canvas,
                        &source,
                        video.video_width() as f64,
                        video.video_height() as f64,
                    ) =>
                    {
                        match read_on_server(&canvas, lang).await {
                            Reading::Text(text) => Some(text),
                            Reading::NoCode => None,
                            // The message stays on screen and the next frame is tried.
                            Reading::Failed(message) => {
                                state.set(ScanState::Problem(message.to_string()));
                                None
                            }
                        }
                    }
                    None => None,
                };
                if let Some(text) = text {
                    if open_scanned(&text, state, lang) {
                        break;
                    }
                }
            }
            stop_tracks(&stream);
        });
    }

    pub fn stop_camera(video: NodeRef<leptos::html::Video>) {
        if let Some(video) = video.get_untracked() {
            if let Some(stream) = video.src_object() {
                stop_tracks(&stream);
            }
            video.set_src_object(None);
        }
    }

    fn stop_tracks(stream: &web_sys::MediaStream) {
        for track in stream.get_tracks().iter() {
            if let Ok(track) = track.dyn_into::<web_sys::MediaStreamTrack>() {
                track.stop();
            }
        }
    }

    /// Waits `ms` milliseconds on the browser's timer.
    async fn sleep_ms(ms: i32) {
        let promise = js_sys::Promise::new(&mut |resolve, _| {
            if let Some(window) = web_sys::window() {
                let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
            }
        });
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "Q96fD28Otj5xa-8Ic4LjNQ";

    #[test]
    fn trace_urls_become_local_paths() {
        assert_eq!(
            scanned_trace_path(&format!(
                "https://filiere.example/trace/{TOKEN}?lot=LL2612001&grade=A"
            )),
            Some(format!("/trace/{TOKEN}?lot=LL2612001&grade=A"))
        );
        assert_eq!(
            scanned_trace_path(&format!("http://127.0.0.1:3000/trace/{TOKEN}")),
            Some(format!("/trace/{TOKEN}"))
        );
        assert_eq!(
            scanned_trace_path(&format!(" /trace/{TOKEN}#top ")),
            Some(format!("/trace/{TOKEN}"))
        );
    }

    #[test]
    fn other_codes_are_not_filiere_codes() {
        for text in [
            "",
            "https://example.com/",
            "https://example.com/trace/short",
            "WIFI:S:ferme;T:WPA;P:secret;;",
            &format!("https://example.com/produits/{TOKEN}"),
            &format!("javascript:alert(1)//trace/{TOKEN}"),
        ] {
            assert_eq!(scanned_trace_path(text), None, "{text:?}");
        }
        // Hints with characters no payload contains are dropped; the
        // token still opens its page.
        for hint in ["lot=é", "lot=<b>", "lot=\"x\""] {
            assert_eq!(
                scanned_trace_path(&format!("https://h/trace/{TOKEN}?{hint}")),
                Some(format!("/trace/{TOKEN}")),
                "{hint}"
            );
        }
    }
}
