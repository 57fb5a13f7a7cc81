//! Configuration from environment variables, read in one place. Every
//! variable has a working local default; a bad value stops start-up with the
//! variable's name.

use leptos::config::LeptosOptions;
use std::net::SocketAddr;

#[derive(Debug, Clone)]
pub struct Config {
    /// `sqlite://…` (default `sqlite://filiere.db`) or `postgres://…`.
    pub database_url: String,
    /// Address the server listens on. Port 0 picks a free port (tests).
    pub bind: SocketAddr,
    /// Base URL written into QR payloads.
    pub public_url: String,
    /// Token the operator's routes need; `None` leaves them open, which
    /// `build` allows only on a loopback address.
    pub admin_token: Option<String>,
    /// Lease of a lot claimed for inspection, in seconds.
    pub lease_seconds: f64,
    /// Name other instances on the same database show for this one; `None`
    /// means `<host name>:<port>`.
    pub instance: Option<String>,
    /// Lifetime of a rendered trace page in the page cache, in seconds; 0
    /// turns the cache off.
    pub page_cache_seconds: f64,
    pub leptos: LeptosOptions,
}

/// Maximum length of `FILIERE_INSTANCE`, in characters.
pub const INSTANCE_MAX_CHARS: usize = 40;

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

impl Config {
    /// Reads `DATABASE_URL`, `FILIERE_BIND` (or `LEPTOS_SITE_ADDR`, which
    /// cargo-leptos sets), `PUBLIC_URL`, `FILIERE_ADMIN_TOKEN`,
    /// `FILIERE_LEASE_SECONDS`, `FILIERE_INSTANCE` and
    /// `FILIERE_PAGE_CACHE_SECONDS`.
    pub fn from_env() -> anyhow::Result<Config> {
        let leptos = match leptos::config::get_configuration(None) {
            Ok(configuration) => configuration.leptos_options,
            // Started outside cargo-leptos: use the layout cargo-leptos builds.
            Err(_) => default_leptos_options(),
        };

        let bind = match var("FILIERE_BIND") {
            Some(text) => text.parse().map_err(|_| {
                anyhow::anyhow!(
                    "FILIERE_BIND must be an address such as 127.0.0.1:3000, got {text:?}"
                )
            })?,
            None => leptos.site_addr,
        };
        let database_url = var("DATABASE_URL").unwrap_or_else(|| "sqlite://filiere.db".to_string());
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres:")
            || database_url.starts_with("postgresql:"))
        {
            anyhow::bail!(
                "DATABASE_URL must start with sqlite: or postgres:, got {database_url:?}"
            );
        }
        let public_url = match var("PUBLIC_URL") {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                url.trim_end_matches('/').to_string()
            }
            Some(url) => {
                anyhow::bail!("PUBLIC_URL must start with http:// or https://, got {url:?}")
            }
            None => format!("http://{bind}"),
        };
        let admin_token = var("FILIERE_ADMIN_TOKEN");
        if let Some(token) = &admin_token {
            let usable = token.len() >= crate::guard::MIN_TOKEN_LEN
                && token.bytes().all(|b| b.is_ascii_graphic() && b != b';');
            if !usable {
                anyhow::bail!(
                    "FILIERE_ADMIN_TOKEN must be at least {} printable ASCII characters without ';'",
                    crate::guard::MIN_TOKEN_LEN
                );
            }
        }
        let (min, max) = chain::monitor::LEASE_RANGE;
        let lease_seconds = match var("FILIERE_LEASE_SECONDS") {
            Some(text) => match text.parse::<f64>() {
                Ok(value) if (min..=max).contains(&value) => value,
                _ => anyhow::bail!(
                    "FILIERE_LEASE_SECONDS must be a number of seconds in {min}..={max}, got {text:?}"
                ),
            },
            None => chain::monitor::LEASE_SECONDS,
        };
        let instance = var("FILIERE_INSTANCE");
        if let Some(name) = &instance {
            check_instance(name)?;
        }
        let (min, max) = crate::page_cache::LIFETIME_RANGE;
        let page_cache_seconds = match var("FILIERE_PAGE_CACHE_SECONDS") {
            Some(text) => match text.parse::<f64>() {
                Ok(value) if (min..=max).contains(&value) => value,
                _ => anyhow::bail!(
                    "FILIERE_PAGE_CACHE_SECONDS must be a number of seconds in {min}..={max}, got {text:?}"
                ),
            },
            None => crate::page_cache::DEFAULT_LIFETIME_SECONDS,
        };
        Ok(Config {
            database_url,
            bind,
            public_url,
            admin_token,
            lease_seconds,
            instance,
            page_cache_seconds,
            leptos,
        })
    }

    /// Configuration for a test: the given database, a free loopback port.
    pub fn for_test(database_url: &str) -> Config {
        Config {
            database_url: database_url.to_string(),
            bind: "127.0.0.1:0".parse().expect("literal address"),
            public_url: "http://127.0.0.1".to_string(),
            admin_token: None,
            lease_seconds: chain::monitor::LEASE_SECONDS,
            instance: None,
            page_cache_seconds: crate::page_cache::DEFAULT_LIFETIME_SECONDS,
            leptos: default_leptos_options(),
        }
    }
}

fn default_leptos_options() -> LeptosOptions {
    LeptosOptions::builder()
        .output_name("filiere")
        .site_root("target/site")
        .site_pkg_dir("pkg")
        .build()
}

/// Checks a `FILIERE_INSTANCE` value: 1 to 40 printable ASCII characters,
/// because PostgreSQL keeps only those in the session name other instances
/// read it from.
fn check_instance(name: &str) -> anyhow::Result<()> {
    let usable = (1..=INSTANCE_MAX_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte == b' ' || byte.is_ascii_graphic());
    if !usable {
        anyhow::bail!(
            "FILIERE_INSTANCE must be 1 to {INSTANCE_MAX_CHARS} printable ASCII characters, got {name:?}"
        );
    }
    Ok(())
}

/// Makes a host name usable as an instance name: printable ASCII, cut to
/// the length `FILIERE_INSTANCE` allows with room for the port.
pub fn instance_name(host: &str, port: u16) -> String {
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(INSTANCE_MAX_CHARS - 6)
        .collect();
    format!("{host}:{port}")
}

/// Returns the machine's host name, or `localhost` when it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_at_and_past_the_limit() {
        assert!(check_instance(&"a".repeat(INSTANCE_MAX_CHARS)).is_ok());
        assert!(check_instance("ferme 2").is_ok());
        let too_long = check_instance(&"a".repeat(INSTANCE_MAX_CHARS + 1)).unwrap_err();
        assert!(
            too_long.to_string().contains("FILIERE_INSTANCE"),
            "{too_long}"
        );
        assert!(
            check_instance("élevage").is_err(),
            "a non-ASCII letter is refused"
        );
        assert!(check_instance("a\nb").is_err(), "a newline is refused");
        assert!(check_instance("").is_err(), "an empty name is refused");
    }

    #[test]
    fn host_names_become_ascii_instance_names() {
        let name = instance_name(&"é".repeat(60), 3000);
        assert!(check_instance(&name).is_ok(), "{name}");
        assert!(name.ends_with(":3000"), "{name}");
    }
}
