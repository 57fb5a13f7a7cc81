//! French by default, English on request: the `lang` query parameter sets
//! the language and a cookie keeps it for the next pages.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Fr,
    En,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::Fr => "fr",
            Lang::En => "en",
        }
    }

    pub fn parse(code: &str) -> Option<Lang> {
        match code {
            "fr" => Some(Lang::Fr),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    pub fn other(self) -> Lang {
        match self {
            Lang::Fr => Lang::En,
            Lang::En => Lang::Fr,
        }
    }

    /// Name of the language, written in that language, for the switch link.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Fr => "Français",
            Lang::En => "English",
        }
    }

    /// Picks the French or the English text.
    pub fn tr(self, fr: &'static str, en: &'static str) -> &'static str {
        match self {
            Lang::Fr => fr,
            Lang::En => en,
        }
    }
}

/// Language of the current request: `?lang=` first, then the `lang` cookie,
/// then French. A `?lang=` choice is stored in the cookie.
#[cfg(feature = "ssr")]
pub fn request_lang() -> Lang {
    use leptos::prelude::use_context;

    let Some(parts) = use_context::<http::request::Parts>() else {
        return Lang::Fr;
    };
    let from_query = parts.uri.query().and_then(|query| {
        query
            .split('&')
            .filter_map(|pair| pair.strip_prefix("lang="))
            .find_map(Lang::parse)
    });
    if let Some(lang) = from_query {
        if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
            let cookie = format!(
                "lang={}; Path=/; Max-Age=31536000; SameSite=Lax",
                lang.code()
            );
            if let Ok(value) = http::HeaderValue::from_str(&cookie) {
                response.append_header(http::header::SET_COOKIE, value);
            }
        }
        return lang;
    }
    parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix("lang="))
        .find_map(Lang::parse)
        .unwrap_or(Lang::Fr)
}

/// In the browser the language is the one the server rendered into
/// `<html lang>`, so hydration renders the same text.
#[cfg(not(feature = "ssr"))]
pub fn request_lang() -> Lang {
    #[cfg(feature = "hydrate")]
    {
        let lang = web_sys::window()
            .and_then(|window| window.document())
            .and_then(|document| document.document_element())
            .and_then(|element| element.get_attribute("lang"));
        if let Some(lang) = lang.as_deref().and_then(Lang::parse) {
            return lang;
        }
    }
    Lang::Fr
}

/// Formats a score in 0..1 with three decimals, as in QR payloads.
pub fn score(value: f64) -> String {
    format!("{value:.3}")
}

/// Shows an ISO timestamp as `YYYY-MM-DD HH:MM UTC`.
pub fn date_time(iso: &str) -> String {
    if iso.len() >= 16 {
        format!("{} {} UTC", &iso[..10], &iso[11..16])
    } else {
        iso.to_string()
    }
}
