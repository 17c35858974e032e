//! Structured logs with `tracing`: JSON when `HB_LOG_FORMAT=json`, filter from
//! `HB_LOG` (or `RUST_LOG`), default `info`.

use std::io::IsTerminal as _;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are no-ops (tests call it freely).
/// A log setting it cannot use is reported (as the first log line) rather
/// than silently replaced by the default.
pub fn init() {
    let requested = std::env::var("HB_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let (filter, bad_filter) = match EnvFilter::try_new(&requested) {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new("info"), Some(error.to_string())),
    };
    let format = std::env::var("HB_LOG_FORMAT").unwrap_or_default();
    let (json, bad_format) = log_format(&format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // stderr, around any progress bar shown there.
        .with_writer(crate::progress::LogWriter)
        // Colour for a person at a terminal, none in files, CI and journald.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if let Some(error) = bad_filter {
        tracing::warn!(filter = %requested, %error, "HB_LOG is not a valid filter; logging at info");
    }
    if bad_format {
        tracing::warn!(
            format = %format,
            "HB_LOG_FORMAT must be `json` or `text`; logging as text"
        );
    }
}

/// `(json, unknown)` for an `HB_LOG_FORMAT` value (empty: the text default).
fn log_format(value: &str) -> (bool, bool) {
    let value = value.trim();
    if value.eq_ignore_ascii_case("json") {
        (true, false)
    } else {
        let known = value.is_empty() || value.eq_ignore_ascii_case("text");
        (false, !known)
    }
}

/// For tests: logs only when `TEST_LOG` is set, so test output stays quiet.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init();
    }
}

#[cfg(test)]
mod tests {
    use super::log_format;

    #[test]
    fn json_and_text_are_known_formats_and_anything_else_is_reported() {
        assert_eq!(log_format("json"), (true, false));
        assert_eq!(log_format("JSON"), (true, false));
        assert_eq!(log_format(""), (false, false));
        assert_eq!(log_format("text"), (false, false));
        assert_eq!(log_format("yaml"), (false, true));
    }
}
