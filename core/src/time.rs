//! Timestamps: microseconds since the Unix epoch, shown as RFC 3339.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

/// The current time.
pub fn now() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// RFC 3339 with millisecond precision, in UTC.
pub fn rfc3339(t: Micros) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(u64::try_from(t).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses RFC 3339 with any offset (`2026-11-27T13:00:00Z`,
/// `2026-11-27T14:00:00.5+01:00`, with or without fractions), as the
/// OpenAPI `date-time` format means it: a time without an offset is refused,
/// since it names no instant. Times before 1970 are fine.
pub fn parse_rfc3339(s: &str) -> Option<Micros> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_rfc3339() {
        let t = 1_795_000_000_123_000;
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339(""), None);
        let utc = parse_rfc3339("2026-11-27T13:00:00Z");
        assert_eq!(utc, Some(1_795_784_400_000_000));
        assert_eq!(parse_rfc3339("2026-11-27T14:00:00+01:00"), utc);
        assert_eq!(parse_rfc3339("2026-11-27T08:30:00-04:30"), utc);
        assert_eq!(parse_rfc3339("2026-11-27t13:00:00z"), utc);
        assert_eq!(parse_rfc3339("2026-11-27T13:00:00"), None, "no offset");
        assert_eq!(
            parse_rfc3339("2026-11-27T13:00:00.25Z"),
            utc.map(|t| t + 250_000)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1_000_000));
    }
}
