//! Durations in Go's `time.ParseDuration` syntax (`30s`, `1h30m`, `1.5h`, `-5m`), the format the
//! Go controller uses for `postCompleteDelay` and drain timeouts, and Go's way of printing them.

/// Nanoseconds per unit, for every unit suffix Go accepts.
const UNITS: [(&str, u64); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

const LIMIT: u64 = 1 << 63;

/// Why a string is not a Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("expected a number at {0:?}")]
    ExpectedNumber(String),
    #[error("missing unit after {0:?} (use ns, us, ms, s, m or h)")]
    MissingUnit(String),
    #[error("unknown unit {0:?} (use ns, us, ms, s, m or h)")]
    UnknownUnit(String),
    #[error("duration out of range")]
    Overflow,
}

/// Parses a duration exactly as Go's `time.ParseDuration` does (including its float rounding of
/// fractions), returning signed nanoseconds.
pub fn parse(text: &str) -> Result<i64, DurationError> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        Some(_) => (false, text),
        None => return Err(DurationError::Empty),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(DurationError::ExpectedNumber(text.to_owned()));
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let number_start = rest;
        let (whole, after_int, had_int) = leading_int(rest)?;
        let (fraction, scale, after_number, had_fraction) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let (fraction, scale, remaining) = leading_fraction(after_dot);
                (
                    fraction,
                    scale,
                    remaining,
                    remaining.len() != after_dot.len(),
                )
            }
            None => (0, 1.0, after_int, false),
        };
        if !had_int && !had_fraction {
            return Err(DurationError::ExpectedNumber(number_start.to_owned()));
        }
        let unit_len = after_number
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after_number.len(), |(i, _)| i);
        let (unit, next) = after_number.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(text.to_owned()));
        }
        let unit = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, nanos)| *nanos)
            .ok_or_else(|| DurationError::UnknownUnit(unit.to_owned()))?;
        if whole > LIMIT / unit {
            return Err(DurationError::Overflow);
        }
        let mut value = whole * unit;
        if fraction > 0 {
            // Go adds the fraction through float64; doing the same keeps results identical.
            value += (fraction as f64 * (unit as f64 / scale)) as u64;
            if value > LIMIT {
                return Err(DurationError::Overflow);
            }
        }
        total = total
            .checked_add(value)
            .filter(|t| *t <= LIMIT)
            .ok_or(DurationError::Overflow)?;
        rest = next;
    }
    if negative {
        // total <= 2^63, so the negation always fits.
        Ok((total as i128).wrapping_neg() as i64)
    } else {
        i64::try_from(total).map_err(|_| DurationError::Overflow)
    }
}

/// Leading decimal digits: their value, the rest, and whether there were any.
fn leading_int(text: &str) -> Result<(u64, &str, bool), DurationError> {
    let len = text.bytes().take_while(u8::is_ascii_digit).count();
    let mut value: u64 = 0;
    for digit in text[..len].bytes() {
        if value > LIMIT / 10 {
            return Err(DurationError::Overflow);
        }
        value = value * 10 + u64::from(digit - b'0');
        if value > LIMIT {
            return Err(DurationError::Overflow);
        }
    }
    Ok((value, &text[len..], len > 0))
}

/// Leading fraction digits as Go reads them: digits beyond 63 bits of precision are skipped.
fn leading_fraction(text: &str) -> (u64, f64, &str) {
    let len = text.bytes().take_while(u8::is_ascii_digit).count();
    let (mut value, mut scale, mut overflow) = (0u64, 1.0f64, false);
    for digit in text[..len].bytes() {
        if overflow {
            continue;
        }
        if value > (LIMIT - 1) / 10 {
            overflow = true;
            continue;
        }
        let next = value * 10 + u64::from(digit - b'0');
        if next > LIMIT {
            overflow = true;
            continue;
        }
        value = next;
        scale *= 10.0;
    }
    (value, scale, &text[len..])
}

/// Formats nanoseconds as Go's `time.Duration.String` does: `5m0s`, `1h30m0s`, `1.5s`, `300ms`.
pub fn format(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_owned();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let magnitude = nanos.unsigned_abs();
    if magnitude < 1_000_000_000 {
        let (unit, scale) = match magnitude {
            0..1_000 => ("ns", 1),
            1_000..1_000_000 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{sign}{}{unit}", decimal(magnitude, scale));
    }
    let hours = magnitude / 3_600_000_000_000;
    let minutes = magnitude / 60_000_000_000 % 60;
    let seconds = decimal(magnitude % 60_000_000_000, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{sign}{seconds}s"),
        (0, m) => format!("{sign}{m}m{seconds}s"),
        (h, m) => format!("{sign}{h}h{m}m{seconds}s"),
    }
}

/// `value / scale` as a decimal without trailing zeros.
fn decimal(value: u64, scale: u64) -> String {
    let whole = value / scale;
    let fraction = value % scale;
    if fraction == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn parses_go_durations() {
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("-0", 0),
            ("+0", 0),
            ("5s", 5 * S),
            ("30s", 30 * S),
            ("1478s", 1478 * S),
            ("-5s", -5 * S),
            ("+5s", 5 * S),
            ("-0s", 0),
            ("5.0s", 5 * S),
            ("5.6s", 5 * S + 600_000_000),
            ("5.s", 5 * S),
            (".5s", S / 2),
            ("1.0s", S),
            ("1.00s", S),
            ("1.004s", S + 4_000_000),
            ("1.0040s", S + 4_000_000),
            ("100.00100s", 100 * S + 1_000_000),
            ("10ns", 10),
            ("11us", 11_000),
            ("12µs", 12_000),
            ("12μs", 12_000),
            ("13ms", 13_000_000),
            ("14s", 14 * S),
            ("15m", 15 * 60 * S),
            ("16h", 16 * 3600 * S),
            ("3h30m", (3 * 3600 + 30 * 60) * S),
            ("10.5s4m", 4 * 60 * S + 10 * S + S / 2),
            ("-2m3.4s", -(2 * 60 * S + 3 * S + 400_000_000)),
            (
                "1h2m3s4ms5us6ns",
                3600 * S + 120 * S + 3 * S + 4_000_000 + 5_000 + 6,
            ),
            ("39h9m14.425s", (39 * 3600 + 9 * 60 + 14) * S + 425_000_000),
            ("52763797000ns", 52_763_797_000),
            ("0.3333333333333333333h", 1_200_000_000_000),
            ("9007199254740993ns", 9_007_199_254_740_993),
            ("9223372036854775807ns", i64::MAX),
            ("9223372036854775.807us", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("0.100000000000000000000h", 360 * S),
            ("1.5h", 5400 * S),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        for text in [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "5 s",
            " 5s",
            "5s ",
            "1h 30m",
            "5sec",
            "5S",
            "1e3s",
            "\u{85}\u{85}",
            "9223372036854775808ns",
            "9223372036854775.808us",
            "9223372036854ms775us808ns",
            "-9223372036854775809ns",
            "1..5s",
            "5m-3s",
        ] {
            assert!(parse(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn error_messages_say_what_to_use() {
        assert_eq!(
            parse("5").unwrap_err().to_string(),
            "missing unit after \"5\" (use ns, us, ms, s, m or h)"
        );
        assert_eq!(
            parse("2d").unwrap_err().to_string(),
            "unknown unit \"d\" (use ns, us, ms, s, m or h)"
        );
    }

    #[test]
    fn formats_like_go() {
        let cases: &[(i64, &str)] = &[
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1µs"),
            (2_200_000, "2.2ms"),
            (3_300_000_000, "3.3s"),
            (4 * 60 * S + 5 * S, "4m5s"),
            (4 * 60 * S + 5_001_000_000, "4m5.001s"),
            (5 * 3600 * S + 6 * 60 * S + 7_001_000_000, "5h6m7.001s"),
            (8 * 60 * S + 1, "8m0.000000001s"),
            (300 * S, "5m0s"),
            (3600 * S, "1h0m0s"),
            (90 * S, "1m30s"),
            (-S, "-1s"),
            (i64::MAX, "2562047h47m16.854775807s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ];
        for (nanos, want) in cases {
            assert_eq!(format(*nanos), *want, "{nanos}");
        }
    }

    #[test]
    fn format_then_parse_round_trips() {
        for nanos in [
            1,
            999,
            1_000,
            1_500_000,
            S,
            61 * S,
            3601 * S + 5,
            i64::MAX,
            -7 * S,
        ] {
            assert_eq!(parse(&format(nanos)), Ok(nanos), "{nanos}");
        }
    }
}
