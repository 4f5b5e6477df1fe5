//! vigil's one duration grammar, shared by jobs.toml (`interval`, `jitter`, `[alerts] security_digest`) and the
//! CLI (`vigil alerts --since`): one or more `<digits><unit>` with the unit `s`, `m`, `h`, `d` or `w` (`30s`, `5m`,
//! `1h`, `1m30s`, `1d`, `1w`), or bare digits meaning seconds (`45`). No spaces inside, no signs, no fractions:
//! every duration is whole seconds. humantime does the arithmetic (and catches overflow) once the text has passed
//! this stricter check.

use std::time::Duration;

/// The units the grammar accepts, each also a unit of humantime with the same meaning.
const UNITS: [char; 5] = ['s', 'm', 'h', 'd', 'w'];

/// Why a text is not a duration. The message names the text and shows the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not of the grammar.
    #[error("\"{text}\" is not a duration; expected e.g. \"30s\", \"5m\", \"1h\" or a number of seconds")]
    Invalid { text: String },
    /// Of the grammar, but more seconds than a `u64` holds.
    #[error("\"{text}\" is too long a duration")]
    TooLarge { text: String },
}

/// Parses a duration of the grammar above; surrounding whitespace is ignored.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let text = s.trim();
    let invalid = || DurationError::Invalid { text: s.to_string() };
    let too_large = || DurationError::TooLarge { text: s.to_string() };
    if text.is_empty() {
        return Err(invalid());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().map(Duration::from_secs).map_err(|_| too_large());
    }
    if !well_formed(text) {
        return Err(invalid());
    }
    humantime::parse_duration(text).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => too_large(),
        _ => invalid(),
    })
}

/// Whether `text` is one or more `<digits><unit>` with a unit of [`UNITS`].
fn well_formed(text: &str) -> bool {
    let mut digits = 0;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits += 1;
        } else if UNITS.contains(&c) && digits > 0 {
            digits = 0;
        } else {
            return false;
        }
    }
    digits == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> Result<u64, DurationError> {
        parse_duration(s).map(|d| d.as_secs())
    }

    #[test]
    fn what_config_and_the_cli_accepted() {
        // jobs.toml's forms.
        assert_eq!(secs("30s"), Ok(30));
        assert_eq!(secs("5m"), Ok(300));
        assert_eq!(secs("1h"), Ok(3600));
        assert_eq!(secs("1d"), Ok(86_400));
        assert_eq!(secs("1m30s"), Ok(90));
        assert_eq!(secs("45"), Ok(45));
        assert_eq!(secs(" 10s "), Ok(10));
        // `--since`'s forms.
        assert_eq!(secs("90s"), Ok(90));
        assert_eq!(secs("15m"), Ok(900));
        assert_eq!(secs("7d"), Ok(604_800));
        assert_eq!(secs("1w"), Ok(604_800));
        assert_eq!(secs("1w2d"), Ok(777_600));
        assert_eq!(secs("0s"), Ok(0));
    }

    #[test]
    fn what_neither_accepted() {
        for bad in [
            "", " ", "s", "10x", "1.5m", "1.5h", "-1s", "-5m", "+5m", "10 s", "1m 30s", "m5", "5ms", "1M", "1y", "10S",
            "1min", "h", "5x",
        ] {
            assert_eq!(parse_duration(bad), Err(DurationError::Invalid { text: bad.into() }), "{bad:?}");
        }
        for huge in ["99999999999999999999d", "99999999999999999999", "18446744073709551615w"] {
            assert_eq!(parse_duration(huge), Err(DurationError::TooLarge { text: huge.into() }), "{huge:?}");
        }
    }

    #[test]
    fn messages_show_the_text_and_the_grammar() {
        let e = parse_duration("x").expect_err("not a duration");
        assert_eq!(
            e.to_string(),
            "\"x\" is not a duration; expected e.g. \"30s\", \"5m\", \"1h\" or a number of seconds"
        );
    }
}
