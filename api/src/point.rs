//! Points in time and export names.
//!
//! | text | meaning |
//! | --- | --- |
//! | `#SEQ` | as of journal sequence number SEQ |
//! | `2026-11-28T02:13:50Z` | as of that instant (RFC 3339, any offset) |
//! | `-90s`, `-15m`, `-2h`, `-1d`, `-1w`, `-1h30m` | that long before now |
//! | anything else | a named snapshot |
//!
//! An export name is `VOL` (the live head) or `VOL@POINT`.
//!
//! Times are printed by [`format_time`], always with milliseconds (the
//! resolution of the journal's index), so a printed time pasted back as a
//! point resolves to the point it was printed for.

use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Longest volume or snapshot name.
pub const MAX_NAME_LENGTH: usize = 64;

/// A point in a volume's history, as a user wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Point {
    /// A journal sequence number.
    Seq(u64),
    /// An absolute instant.
    Time(OffsetDateTime),
    /// This long before the daemon's `now`.
    Ago(Duration),
    /// A named snapshot.
    Snapshot(String),
}

/// Why a point, name or export name does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PointError {
    /// The text after `#` is not a sequence number.
    #[error("`{0}` is not a sequence number: write #SEQ with SEQ a whole number, e.g. #1234")]
    BadSeq(String),
    /// The text looks like a time but is not valid RFC 3339.
    #[error("`{0}` is not an RFC 3339 time: write e.g. 2026-11-28T02:13:50Z")]
    BadTime(String),
    /// An RFC 3339 time without `Z` or an offset: which zone is meant is
    /// a guess we do not make.
    #[error("`{0}` has no time zone: add Z for UTC ({0}Z) or an offset ({0}+01:00)")]
    NoOffset(String),
    /// A relative time without its leading `-` (`90s`).
    #[error("`{0}` is not a point: did you mean -{0}? (a time relative to now starts with -)")]
    MissingMinus(String),
    /// A whole number (`812`): a seq needs its `#`.
    #[error("`{0}` is not a point: write #{0} for sequence number {0}, or -{0}s for {0} seconds ago")]
    BareNumber(String),
    /// A time after now (`+5m`): the history ends at the head.
    #[error("`{0}` is in the future, and the history ends now: did you mean -{past}?", past = .0.trim_start_matches('+'))]
    Future(String),
    /// A relative point that does not parse.
    #[error("`{0}` is not a relative time: write e.g. -90s, -15m, -2h, -1d, -1w or -1h30m")]
    BadRelative(String),
    /// A volume or snapshot name with characters we do not allow.
    #[error("`{0}` is not a valid name: use 1 to 64 of A-Z a-z 0-9 . _ - (not starting with . or -)")]
    BadName(String),
    /// An empty point after `@`.
    #[error("empty point after `@`: write VOL@SNAP, VOL@#SEQ, VOL@-90s or VOL@<RFC 3339 time>")]
    Empty,
}

impl Point {
    /// Parses the text after `@` (or a `--to`/`--at` argument).
    pub fn parse(text: &str) -> Result<Point, PointError> {
        if text.is_empty() {
            return Err(PointError::Empty);
        }
        if let Some(digits) = text.strip_prefix('#') {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(PointError::BadSeq(text.to_owned()));
            }
            return digits.parse().map(Point::Seq).map_err(|_| PointError::BadSeq(text.to_owned()));
        }
        if let Some(relative) = text.strip_prefix('-') {
            return parse_duration(relative)
                .map(Point::Ago)
                .ok_or_else(|| PointError::BadRelative(text.to_owned()));
        }
        if let Some(relative) = text.strip_prefix('+') {
            return Err(match parse_duration(relative) {
                Some(_) => PointError::Future(text.to_owned()),
                None => PointError::BadRelative(text.to_owned()),
            });
        }
        if text.as_bytes().first().is_some_and(u8::is_ascii_digit) {
            return OffsetDateTime::parse(text, &Rfc3339).map(Point::Time).map_err(|_| {
                if text.bytes().all(|b| b.is_ascii_digit()) {
                    PointError::BareNumber(text.to_owned())
                } else if parse_duration(text).is_some() {
                    PointError::MissingMinus(text.to_owned())
                } else if OffsetDateTime::parse(&format!("{text}Z"), &Rfc3339).is_ok() {
                    PointError::NoOffset(text.to_owned())
                } else {
                    PointError::BadTime(text.to_owned())
                }
            });
        }
        validate_name(text)?;
        Ok(Point::Snapshot(text.to_owned()))
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Point::Seq(seq) => write!(f, "#{seq}"),
            Point::Time(time) => match time.format(&Rfc3339) {
                Ok(text) => f.write_str(&text),
                Err(_) => write!(f, "{time}"),
            },
            Point::Ago(duration) => {
                // The largest units that add up exactly: -1h30m, -2d, -90s is -1m30s.
                let mut seconds = duration.as_secs();
                if seconds == 0 {
                    return f.write_str("-0s");
                }
                f.write_str("-")?;
                for (unit, length) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
                    if seconds >= length {
                        write!(f, "{}{unit}", seconds / length)?;
                        seconds %= length;
                    }
                }
                Ok(())
            }
            Point::Snapshot(name) => f.write_str(name),
        }
    }
}

/// `unix_nanos` as RFC 3339 in UTC with milliseconds,
/// `2026-11-28T02:13:50.512Z`: the one format `rewindd` and `rewind` print
/// times in. Index times are whole milliseconds, so a printed point time
/// is exact; other times are cut to the millisecond (never later than the
/// instant they stand for).
pub fn format_time(unix_nanos: i64) -> String {
    let millis = unix_nanos.div_euclid(1_000_000);
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000) {
        // i64 nanoseconds span 1677 to 2262: always a four-digit year.
        Ok(time) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            time.year(),
            u8::from(time.month()),
            time.day(),
            time.hour(),
            time.minute(),
            time.second(),
            time.millisecond()
        ),
        Err(_) => format!("{unix_nanos} unix ns"),
    }
}

/// Reformats an RFC 3339 time (any offset, any precision) the way
/// [`format_time`] does; text that is not one comes back unchanged.
pub fn normalize_time(rfc3339: &str) -> String {
    match OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(time) => {
            let nanos = time.unix_timestamp_nanos();
            match i64::try_from(nanos) {
                Ok(nanos) => format_time(nanos),
                Err(_) => rfc3339.to_owned(),
            }
        }
        Err(_) => rfc3339.to_owned(),
    }
}

/// `90s`, `15m`, `2h`, `1d`, `1w`, `1h30m`: a sum of number-unit pairs
/// (the syntax of relative points, without the `-`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for byte in text.bytes() {
        if byte.is_ascii_digit() {
            let digit = u64::from(byte - b'0');
            number = Some(number.unwrap_or(0).checked_mul(10)?.checked_add(digit)?);
            continue;
        }
        let unit = match byte {
            b's' => 1,
            b'm' => 60,
            b'h' => 3600,
            b'd' => 86_400,
            b'w' => 604_800,
            _ => return None,
        };
        total = total.checked_add(number.take()?.checked_mul(unit)?)?;
    }
    if number.is_some() {
        return None; // a number without a unit
    }
    Some(Duration::from_secs(total))
}

/// Checks a volume or snapshot name: 1 to 64 of `[A-Za-z0-9._-]`, not
/// starting with `.` or `-` (so it is never a path or a relative point).
pub fn validate_name(name: &str) -> Result<(), PointError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LENGTH
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with(['.', '-']);
    if ok { Ok(()) } else { Err(PointError::BadName(shown(name))) }
}

/// `text` for an error message: whole up to 80 characters, else its first
/// 64 and its length (an export name may be 4096 bytes long).
fn shown(text: &str) -> String {
    if text.chars().count() <= 80 {
        return text.to_owned();
    }
    let start: String = text.chars().take(64).collect();
    format!("{start}... ({} bytes)", text.len())
}

/// Checks a volume name (same rules as [`validate_name`]).
pub fn validate_volume_name(name: &str) -> Result<(), PointError> {
    validate_name(name)
}

/// A parsed NBD export name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportName {
    pub volume: String,
    /// `None` is the live head.
    pub point: Option<Point>,
}

/// Splits `VOL` or `VOL@POINT` and parses both halves.
pub fn parse_export_name(name: &str) -> Result<ExportName, PointError> {
    let (volume, point) = match name.split_once('@') {
        Some((volume, point)) => (volume, Some(Point::parse(point)?)),
        None => (name, None),
    };
    validate_name(volume)?;
    Ok(ExportName { volume: volume.to_owned(), point })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A name too long to be valid is named by its start and length.
    #[test]
    fn long_bad_names_are_shown_shortened() {
        let error = validate_name(&"a".repeat(4096)).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("`{}... (4096 bytes)` is not a valid name", "a".repeat(64))),
            "{error}"
        );
        let error = validate_name("bad name").unwrap_err().to_string();
        assert!(error.starts_with("`bad name` is not a valid name"), "{error}");
    }

    #[test]
    fn parses_every_documented_form() {
        // Each form of PRODUCT.md maps to the variant that names it.
        assert_eq!(Point::parse("#42"), Ok(Point::Seq(42)));
        assert_eq!(Point::parse("-90s"), Ok(Point::Ago(Duration::from_secs(90))));
        assert_eq!(Point::parse("-15m"), Ok(Point::Ago(Duration::from_secs(900))));
        assert_eq!(Point::parse("-2h"), Ok(Point::Ago(Duration::from_secs(7200))));
        assert_eq!(Point::parse("-1h30m"), Ok(Point::Ago(Duration::from_secs(5400))));
        assert_eq!(Point::Ago(Duration::from_secs(5400)).to_string(), "-1h30m");
        assert_eq!(Point::Ago(Duration::from_secs(99 * 86_400)).to_string(), "-99d");
        assert_eq!(Point::parse("before-upgrade"), Ok(Point::Snapshot("before-upgrade".into())));
        let Point::Time(time) = Point::parse("2026-11-28T02:13:50Z").unwrap() else { panic!() };
        assert_eq!(time.unix_timestamp(), 1_795_832_030);
        let Point::Time(offset) = Point::parse("2026-11-28T03:13:50+01:00").unwrap() else { panic!() };
        assert_eq!(offset.unix_timestamp(), time.unix_timestamp());
    }

    #[test]
    fn rejects_malformed_points_with_the_form_to_use() {
        // Bad input names what was wrong and an example of what is right.
        for (text, hint) in [
            ("#", "#1234"),
            ("#12a", "#1234"),
            ("-90", "-90s"),
            ("-5x", "-90s"),
            ("2026-13-01T00:00:00Z", "RFC 3339"),
            ("a/b", "A-Z"),
            ("", "VOL@SNAP"),
            ("90s", "did you mean -90s?"),
            ("1h30m", "did you mean -1h30m?"),
            ("+5m", "in the future, and the history ends now: did you mean -5m?"),
            ("+5x", "not a relative time"),
            ("2026-11-28T17:12:00", "add Z for UTC (2026-11-28T17:12:00Z)"),
            ("2026-11-28T17:12:00.5", "no time zone"),
            ("812", "write #812"),
        ] {
            let error = Point::parse(text).unwrap_err().to_string();
            assert!(error.contains(hint), "{text}: {error}");
            assert!(error.starts_with(&format!("`{text}`")) || text.is_empty(), "echoes the input: {error}");
        }
    }

    #[test]
    fn printed_times_have_milliseconds_and_parse_back() {
        // One format everywhere: milliseconds always shown, cut (never
        // rounded up past the instant), and valid as a point.
        assert_eq!(format_time(1_795_832_030_000_000_000), "2026-11-28T02:13:50.000Z");
        assert_eq!(format_time(1_795_832_030_512_000_000), "2026-11-28T02:13:50.512Z");
        assert_eq!(format_time(1_795_832_030_512_999_999), "2026-11-28T02:13:50.512Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(normalize_time("2026-11-28T03:13:50.25+01:00"), "2026-11-28T02:13:50.250Z");
        assert_eq!(normalize_time("not a time"), "not a time");
        let Ok(Point::Time(time)) = Point::parse(&format_time(1_795_832_030_512_000_000)) else { panic!() };
        assert_eq!(time.unix_timestamp_nanos(), 1_795_832_030_512_000_000);
    }

    #[test]
    fn export_names_split_at_the_first_at_sign() {
        // `VOL` is the head, `VOL@POINT` a point; bad volume names fail.
        assert_eq!(parse_export_name("db"), Ok(ExportName { volume: "db".into(), point: None }));
        assert_eq!(
            parse_export_name("db@#7"),
            Ok(ExportName { volume: "db".into(), point: Some(Point::Seq(7)) })
        );
        assert!(parse_export_name("../etc@x").is_err());
        assert!(parse_export_name(&"a".repeat(4096)).is_err());
        assert!(parse_export_name("").is_err());
    }

    proptest! {
        #[test]
        fn any_text_parses_or_fails_without_panicking(text in ".{0,80}") {
            // Export names arrive from the network: no input may panic.
            let _ = parse_export_name(&text);
        }

        #[test]
        fn formatted_times_parse_back_to_the_millisecond(nanos in any::<i64>()) {
            // Whatever the instant, its printed form is a point at that
            // millisecond.
            let Ok(Point::Time(time)) = Point::parse(&format_time(nanos)) else {
                return Err(TestCaseError::fail(format_time(nanos)));
            };
            prop_assert_eq!(time.unix_timestamp_nanos(), i128::from(nanos.div_euclid(1_000_000)) * 1_000_000);
        }

        #[test]
        fn displayed_points_parse_back(seq in any::<u64>(), secs in 0u64..10_000_000) {
            // Display and parse agree for the forms the CLI prints.
            prop_assert_eq!(Point::parse(&Point::Seq(seq).to_string()), Ok(Point::Seq(seq)));
            let ago = Point::Ago(Duration::from_secs(secs));
            prop_assert_eq!(Point::parse(&ago.to_string()), Ok(ago));
        }
    }
}
