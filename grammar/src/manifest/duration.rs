//! Durations as written in manifests: `"90s"`, `"10m"`, `"2h"`, `"1h30m"`,
//! `"1d"`. Written strictly (no spaces, no fractions) so a typo is an error
//! rather than a surprise.

use std::time::Duration;

use serde::Serializer;

/// Why a duration string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("a duration is digits followed by a unit (s, m, h, d), like \"90s\" or \"1h30m\"")]
    Malformed,
    #[error("a duration must be longer than zero")]
    Zero,
    #[error("the duration is too long")]
    Overflow,
}

pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Malformed);
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::Malformed);
        }
        let amount: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::Overflow)?;
        let unit = match rest.as_bytes().get(digits) {
            Some(b's') => 1,
            Some(b'm') => 60,
            Some(b'h') => 3600,
            Some(b'd') => 86_400,
            _ => return Err(DurationError::Malformed),
        };
        let seconds = amount.checked_mul(unit).ok_or(DurationError::Overflow)?;
        total = total.checked_add(seconds).ok_or(DurationError::Overflow)?;
        rest = &rest[digits + 1..];
    }
    if total == 0 {
        return Err(DurationError::Zero);
    }
    Ok(Duration::from_secs(total))
}

/// The canonical spelling: `1h30m`, `90s` → `1m30s`, `2d3h`.
pub fn format_duration(duration: Duration) -> String {
    let mut seconds = duration.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        let amount = seconds / size;
        seconds %= size;
        if amount > 0 {
            out.push_str(&format!("{amount}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

pub(crate) fn serialize_option<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => serializer.serialize_str(&format_duration(*duration)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        for (text, seconds, canonical) in [
            ("90s", 90, "1m30s"),
            ("10m", 600, "10m"),
            ("2h", 7200, "2h"),
            ("1h30m", 5400, "1h30m"),
            ("1d", 86_400, "1d"),
        ] {
            let duration = parse_duration(text).unwrap();
            assert_eq!(duration.as_secs(), seconds);
            assert_eq!(format_duration(duration), canonical);
        }
        for bad in ["", "10", "m", "1.5h", "1h 30m", "10x", "-1s", "1hh"] {
            assert_eq!(parse_duration(bad), Err(DurationError::Malformed), "{bad}");
        }
        assert_eq!(parse_duration("0s"), Err(DurationError::Zero));
        assert_eq!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::Overflow)
        );
        assert_eq!(
            parse_duration("999999999999999999d"),
            Err(DurationError::Overflow)
        );
    }
}
