//! Weekly time windows (`spec.window`) with the semantics of the Go controller, which uses kured's
//! `timewindow` package: days by name or number, times in a handful of Go layouts, an IANA zone,
//! and windows that may wrap past midnight.

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// The time layouts accepted for `startTime` and `endTime`, as a user would write them.
pub const TIME_FORMATS: &str = "15:04, 15:04:05, 3pm, 03pm or 03:04pm";

/// A parsed, valid time window.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeWindow {
    days: [bool; 7],
    start: Time,
    end: Time,
    zone: TimeZone,
}

/// Which part of a window is invalid, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("days: at least one day is required (e.g. [mo, tu, we, th, fr])")]
    NoDays,
    #[error(
        "days[{0}]: {1:?} is not a day (use su..sa, sun..sat, sunday..saturday, or 0-6 with 0 = Sunday)"
    )]
    Day(usize, String),
    #[error("{0}: {1:?} is not a time of day (use {TIME_FORMATS})")]
    Time(&'static str, String),
    #[error(
        "timeZone: {0:?} is not a known IANA time zone (e.g. UTC, Europe/Berlin, America/New_York)"
    )]
    Zone(String),
}

impl TimeWindow {
    /// Parses a window. Every error is reported, in field order.
    pub fn parse(
        days: &[String],
        start: &str,
        end: &str,
        zone: &str,
    ) -> Result<Self, Vec<WindowError>> {
        let mut errors = Vec::new();
        let mut set = [false; 7];
        if days.is_empty() {
            errors.push(WindowError::NoDays);
        }
        for (i, day) in days.iter().enumerate() {
            match parse_day(day) {
                Some(n) => set[n] = true,
                None => errors.push(WindowError::Day(i, day.clone())),
            }
        }
        let start = parse_time(start).ok_or_else(|| WindowError::Time("startTime", start.into()));
        let end = parse_time(end).ok_or_else(|| WindowError::Time("endTime", end.into()));
        let zone = parse_zone(zone).ok_or_else(|| WindowError::Zone(zone.into()));
        match (start, end, zone) {
            (Ok(start), Ok(end), Ok(zone)) if errors.is_empty() => Ok(Self {
                days: set,
                start,
                end,
                zone,
            }),
            (start, end, zone) => {
                errors.extend([start.err(), end.err(), zone.err()].into_iter().flatten());
                Err(errors)
            }
        }
    }

    /// Whether the instant lies inside the window: on an allowed day (in the window's zone),
    /// between start and end inclusive. A window whose start is after its end wraps past midnight
    /// and belongs to the day it starts on; one whose start equals its end lasts one second.
    pub fn contains(&self, instant: Timestamp) -> bool {
        let local = instant.to_zoned(self.zone.clone());
        if !self.days[local.weekday().to_sunday_zero_offset() as usize] {
            return false;
        }
        let date = local.date();
        let at = |time: Time| {
            date.to_datetime(time)
                .to_zoned(self.zone.clone())
                .map(|z| z.timestamp())
        };
        let (Ok(mut start), Ok(mut end)) = (
            at(self.start),
            at(self
                .end
                .with()
                .subsec_nanosecond(999_999_999)
                .build()
                .unwrap_or(self.end)),
        ) else {
            return false;
        };
        if self.start > self.end {
            // Go adds or subtracts 24 elapsed hours here, not a calendar day.
            let day = SignedDuration::from_hours(24);
            if instant < end {
                start = start.checked_sub(day).unwrap_or(start);
            } else {
                end = end.checked_add(day).unwrap_or(end);
            }
        }
        start <= instant && instant <= end
    }
}

impl TimeWindow {
    /// When the window last closed before `instant` (within the last eight days), if it did:
    /// the end of its latest opening that ended by then.
    pub fn last_close_before(&self, instant: Timestamp) -> Option<Timestamp> {
        let today = instant.to_zoned(self.zone.clone()).date();
        (0..=8)
            .filter_map(|back| today.checked_sub(jiff::Span::new().days(back)).ok())
            .filter(|date| self.days[date.weekday().to_sunday_zero_offset() as usize])
            .filter_map(|date| {
                let end = date
                    .to_datetime(self.end)
                    .to_zoned(self.zone.clone())
                    .ok()?;
                let end = end.timestamp();
                // A window past midnight closes the day after it opens (24 elapsed hours, as Go).
                let end = if self.start > self.end {
                    end.checked_add(SignedDuration::from_hours(24)).ok()?
                } else {
                    end
                };
                (end <= instant).then_some(end)
            })
            .max()
    }
}

/// A day by number (0-6, 0 = Sunday) or by name or abbreviation, any case; its Sunday-based index.
pub fn parse_day(day: &str) -> Option<usize> {
    if let Ok(n) = day.parse::<i64>() {
        return usize::try_from(n).ok().filter(|n| *n < 7);
    }
    let names: [(&[&str], Weekday); 7] = [
        (&["su", "sun", "sunday"], Weekday::Sunday),
        (&["mo", "mon", "monday"], Weekday::Monday),
        (&["tu", "tue", "tuesday"], Weekday::Tuesday),
        (&["we", "wed", "wednesday"], Weekday::Wednesday),
        (&["th", "thu", "thursday"], Weekday::Thursday),
        (&["fr", "fri", "friday"], Weekday::Friday),
        (&["sa", "sat", "saturday"], Weekday::Saturday),
    ];
    let lower = day.to_ascii_lowercase();
    names
        .iter()
        .find(|(spellings, _)| spellings.contains(&lower.as_str()))
        .map(|(_, weekday)| weekday.to_sunday_zero_offset() as usize)
}

/// A time zone by IANA name; empty means UTC and `Local` the zone of the controller's host, as in Go.
pub fn parse_zone(name: &str) -> Option<TimeZone> {
    match name {
        "" | "UTC" => Some(TimeZone::UTC),
        "Local" => Some(TimeZone::system()),
        _ => jiff::tz::db().get(name).ok(),
    }
}

/// A time of day in one of the Go layouts kured tries, in its order: `15:04`, `15:04:05`,
/// `03:04pm`, `15`, `03pm`, `3pm` (hours 0-23 in 24-hour forms, 0-12 with lowercase am/pm).
pub fn parse_time(text: &str) -> Option<Time> {
    const LAYOUTS: [&[Part]; 6] = [
        &[Part::Hour24, Part::Colon, Part::Minute],
        &[
            Part::Hour24,
            Part::Colon,
            Part::Minute,
            Part::Colon,
            Part::Second,
        ],
        &[Part::Hour12Fixed, Part::Colon, Part::Minute, Part::AmPm],
        &[Part::Hour24],
        &[Part::Hour12Fixed, Part::AmPm],
        &[Part::Hour12, Part::AmPm],
    ];
    LAYOUTS.iter().find_map(|layout| parse_layout(text, layout))
}

#[derive(Clone, Copy)]
enum Part {
    Hour24,
    Hour12,
    Hour12Fixed,
    Colon,
    Minute,
    Second,
    AmPm,
}

fn parse_layout(text: &str, layout: &[Part]) -> Option<Time> {
    let (mut hour, mut minute, mut second) = (0i8, 0i8, 0i8);
    let mut rest = text;
    for part in layout {
        match part {
            Part::Hour24 => (hour, rest) = number(rest, false, 23)?,
            Part::Hour12 => (hour, rest) = number(rest, false, 12)?,
            Part::Hour12Fixed => (hour, rest) = number(rest, true, 12)?,
            Part::Minute => (minute, rest) = number(rest, true, 59)?,
            Part::Second => {
                (second, rest) = number(rest, true, 59)?;
                // Go accepts a fraction after the seconds even when the layout has none.
                if let Some(fraction) = rest.strip_prefix(['.', ',']) {
                    let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
                    if digits > 0 {
                        rest = &fraction[digits..];
                    }
                }
            }
            Part::Colon => rest = rest.strip_prefix(':')?,
            Part::AmPm => {
                let (marker, after) = (rest.get(..2)?, rest.get(2..)?);
                match marker {
                    "pm" if hour < 12 => hour += 12,
                    "am" if hour == 12 => hour = 0,
                    "am" | "pm" => {}
                    _ => return None,
                }
                rest = after;
            }
        }
    }
    if !rest.is_empty() {
        return None;
    }
    Time::new(hour, minute, second, 0).ok()
}

/// One or two leading digits (exactly two when `fixed`), at most `max`.
fn number(text: &str, fixed: bool, max: i8) -> Option<(i8, &str)> {
    let bytes = text.as_bytes();
    let digit = |i: usize| {
        bytes
            .get(i)
            .filter(|b| b.is_ascii_digit())
            .map(|b| (b - b'0') as i8)
    };
    let first = digit(0)?;
    let (value, len) = match digit(1) {
        Some(second) => (first * 10 + second, 2),
        None if fixed => return None,
        None => (first, 1),
    };
    (value <= max).then_some((value, &text[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: i8, m: i8, s: i8) -> Option<Time> {
        Some(Time::new(h, m, s, 0).unwrap())
    }

    #[test]
    fn the_last_close_is_the_end_of_the_latest_opening_that_ended() {
        let days = |d: &[&str]| d.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let overnight = TimeWindow::parse(&days(&["mo"]), "22:00", "02:00", "UTC").unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        // Tuesday 03:00: Monday's window closed at Tuesday 02:00.
        assert_eq!(
            overnight.last_close_before(at("2026-11-24T03:00:00Z")),
            Some(at("2026-11-24T02:00:00Z"))
        );
        // Monday 23:00 (open now): the last close was a week before.
        assert_eq!(
            overnight.last_close_before(at("2026-11-23T23:00:00Z")),
            Some(at("2026-11-17T02:00:00Z"))
        );
        let berlin = TimeWindow::parse(&days(&["we"]), "09:00", "17:00", "Europe/Berlin").unwrap();
        // Thursday: Wednesday 17:00 in Berlin (CET) is 16:00 UTC.
        assert_eq!(
            berlin.last_close_before(at("2026-11-26T10:00:00Z")),
            Some(at("2026-11-25T16:00:00Z"))
        );
    }

    #[test]
    fn times_in_go_layouts() {
        let cases = [
            ("00:00", t(0, 0, 0)),
            ("9:30", t(9, 30, 0)),
            ("09:30", t(9, 30, 0)),
            ("23:59", t(23, 59, 0)),
            ("23:59:59", t(23, 59, 59)),
            ("02:00:00", t(2, 0, 0)),
            ("10:00:00.5", t(10, 0, 0)),
            ("03:04pm", t(15, 4, 0)),
            ("12:30am", t(0, 30, 0)),
            ("12:30pm", t(12, 30, 0)),
            ("00:15am", t(0, 15, 0)),
            ("15", t(15, 0, 0)),
            ("7", t(7, 0, 0)),
            ("03pm", t(15, 0, 0)),
            ("3pm", t(15, 0, 0)),
            ("3am", t(3, 0, 0)),
            ("12am", t(0, 0, 0)),
            ("12pm", t(12, 0, 0)),
            ("11pm", t(23, 0, 0)),
            ("0pm", t(12, 0, 0)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_time(text), want, "{text}");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        for text in [
            "",
            "25:00",
            "24:00",
            "23:60",
            "23:59:60",
            "9:5",
            "09:5",
            "3:04pm",
            "3PM",
            "3 pm",
            "13pm",
            "13:00pm",
            "123",
            "10:00:00 ",
            " 10:00",
            "noon",
            "10h",
            "3:00",
            "-1",
            "1:2:3",
            "10:00:00.",
            "10.30",
        ] {
            if text == "3:00" {
                assert_eq!(parse_time(text), t(3, 0, 0), "3:00 is valid 15:04");
                continue;
            }
            assert_eq!(parse_time(text), None, "{text:?} should be rejected");
        }
    }

    #[test]
    fn days() {
        assert_eq!(parse_day("0"), Some(0));
        assert_eq!(parse_day("6"), Some(6));
        assert_eq!(parse_day("su"), Some(0));
        assert_eq!(parse_day("Monday"), Some(1));
        assert_eq!(parse_day("TUE"), Some(2));
        assert_eq!(parse_day("we"), Some(3));
        assert_eq!(parse_day("thursday"), Some(4));
        assert_eq!(parse_day("fri"), Some(5));
        assert_eq!(parse_day("sa"), Some(6));
        for bad in ["7", "-1", "never", "", "m", "mond"] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
    }

    #[test]
    fn zones() {
        assert_eq!(parse_zone(""), Some(TimeZone::UTC));
        assert_eq!(parse_zone("UTC"), Some(TimeZone::UTC));
        assert!(parse_zone("Europe/Berlin").is_some());
        assert!(parse_zone("America/New_York").is_some());
        assert!(parse_zone("Mars/Base").is_none());
        assert!(parse_zone("europe/berlin").is_none() || parse_zone("europe/berlin").is_some());
    }

    fn window(days: &[&str], start: &str, end: &str, zone: &str) -> TimeWindow {
        let days: Vec<String> = days.iter().map(|d| d.to_string()).collect();
        TimeWindow::parse(&days, start, end, zone).unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn reports_every_error() {
        let errors =
            TimeWindow::parse(&["never".into(), "mo".into()], "25:00", "3 pm", "Mars/Base")
                .unwrap_err();
        assert_eq!(
            errors,
            vec![
                WindowError::Day(0, "never".into()),
                WindowError::Time("startTime", "25:00".into()),
                WindowError::Time("endTime", "3 pm".into()),
                WindowError::Zone("Mars/Base".into()),
            ]
        );
        assert_eq!(
            TimeWindow::parse(&[], "1", "2", "").unwrap_err(),
            vec![WindowError::NoDays]
        );
        assert_eq!(
            errors[1].to_string(),
            "startTime: \"25:00\" is not a time of day (use 15:04, 15:04:05, 3pm, 03pm or 03:04pm)"
        );
    }

    #[test]
    fn same_day_window() {
        // 2026-11-23 is a Monday.
        let w = window(&["mo"], "09:00", "17:00", "UTC");
        assert!(!w.contains(at("2026-11-23T08:59:59Z")));
        assert!(w.contains(at("2026-11-23T09:00:00Z")));
        assert!(w.contains(at("2026-11-23T17:00:00Z")));
        assert!(w.contains(at("2026-11-23T17:00:00.999Z")));
        assert!(!w.contains(at("2026-11-23T17:00:01Z")));
        assert!(!w.contains(at("2026-11-24T10:00:00Z")));
    }

    #[test]
    fn overnight_window_belongs_to_its_weekday() {
        let w = window(&["mo"], "22:00", "02:00", "UTC");
        assert!(w.contains(at("2026-11-23T01:00:00Z")), "Monday 01:00");
        assert!(w.contains(at("2026-11-23T23:00:00Z")), "Monday 23:00");
        assert!(!w.contains(at("2026-11-24T01:00:00Z")), "Tuesday 01:00");
        assert!(!w.contains(at("2026-11-23T12:00:00Z")), "Monday noon");
    }

    #[test]
    fn one_second_window() {
        let w = window(&["0", "1", "2", "3", "4", "5", "6"], "12:00", "12:00", "");
        assert!(w.contains(at("2026-11-26T12:00:00.5Z")));
        assert!(!w.contains(at("2026-11-26T12:00:01Z")));
    }

    #[test]
    fn all_week() {
        let w = window(
            &["su", "mo", "tu", "we", "th", "fr", "sa"],
            "00:00:00",
            "23:59:59",
            "UTC",
        );
        for hour in 0..24 {
            assert!(w.contains(at(&format!("2026-11-26T{hour:02}:30:00Z"))));
        }
    }

    #[test]
    fn zone_decides_the_day_and_hour() {
        // 2026-11-23T23:30Z is Tuesday 08:30 in Tokyo.
        let w = window(&["tu"], "08:00", "09:00", "Asia/Tokyo");
        assert!(w.contains(at("2026-11-23T23:30:00Z")));
        assert!(!w.contains(at("2026-11-24T08:30:00Z")));
        let berlin = window(&["mo"], "9am", "5pm", "Europe/Berlin");
        assert!(berlin.contains(at("2026-11-23T08:30:00Z")), "09:30 CET");
        assert!(!berlin.contains(at("2026-11-23T16:30:00Z")), "17:30 CET");
    }
}
