//! Durations as operators write them: `250ms`, `30s`, `10m`, `2h`, `7d`.

use std::time::Duration;

/// Parses `<integer><unit>` with unit one of `ms`, `s`, `m`, `h`, `d`.
/// A bare integer other than `0` is refused: `HB_RAW_TTL=30` meant as days
/// would otherwise keep raw rows for 30 seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s, 10m, 7d"))?;
    let millis = match unit {
        "ms" => Some(value),
        "" if value == 0 => Some(0),
        "" => {
            return Err(format!(
                "duration {text:?} has no unit: write e.g. {text}s, {text}m or {text}d"
            ))
        }
        "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        "d" => value.checked_mul(86_400_000),
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ms, s, m, h or d"
            ))
        }
    }
    .ok_or_else(|| format!("duration {text:?} is too large"))?;
    Ok(Duration::from_millis(millis))
}

/// Formats a duration in the largest exact unit, the inverse of [`parse_duration`].
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis() as u64;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms != 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10x").unwrap_err().contains("unit"));
        assert!(parse_duration("m").is_err());
        let bare = parse_duration("30").unwrap_err();
        assert!(bare.contains("no unit") && bare.contains("30s"), "{bare}");
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn format_round_trips() {
        for text in ["250ms", "30s", "10m", "2h", "7d"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
