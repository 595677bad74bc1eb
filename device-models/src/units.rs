//! Small value types shared by every document: durations and names.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the way people write it: `500ms`, `1s`, `10m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub Duration);

impl Span {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

/// The longest duration any document or config may give: 366 days. Far
/// beyond any poll period, timeout or retention a gateway needs, and far
/// enough below `Duration::MAX` that the arithmetic done with durations
/// (a timeout doubled, an instant plus a period) can never overflow.
pub const MAX_SPAN: Duration = Duration::from_secs(366 * 24 * 3600);

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            format!("bad duration `{s}`: {e} (write it like 500ms, 1s, 10m or 1h 30m)")
        })?;
        if d > MAX_SPAN {
            return Err(format!(
                "duration `{s}` is longer than the most allowed, 366 days"
            ));
        }
        Ok(Span(d))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Span {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration such as 500ms, 1s, 10m or 1h 30m",
            "pattern": r"^\s*([0-9]+\s*(ns|us|µs|ms|s|sec|m|min|h|hr|d|w)\s*)+$"
        })
    }
}

/// The names [`check_name`] accepts, as a regular expression (for the
/// OpenAPI document's path parameters and the JSON Schemas).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";

/// The longest name [`check_name`] accepts.
pub const NAME_MAX: usize = 64;

/// Checks a name used in URLs, MQTT topics and CEL: letters, digits, `-`, `_`
/// and `.`, starting with a letter or digit, at most 64 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > NAME_MAX {
        return Err(format!(
            "the name `{name}` is longer than {NAME_MAX} characters"
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "the name `{name}` may hold only letters, digits, `-`, `_` and `.`, and must start with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The pattern the OpenAPI document declares is the check itself.
        #[test]
        fn the_name_pattern_agrees_with_check_name(name in "[A-Za-z0-9._ /%-]{0,70}") {
            let schema = serde_json::json!({"type": "string", "pattern": NAME_PATTERN});
            let validator = jsonschema::validator_for(&schema).expect("a valid pattern");
            let matches = validator.is_valid(&serde_json::json!(name));
            proptest::prop_assert_eq!(matches, check_name(&name).is_ok(), "{:?}", name);
        }
    }

    #[test]
    fn durations_are_bounded_so_no_arithmetic_overflows() {
        assert_eq!("366d".parse::<Span>().map(Span::get), Ok(MAX_SPAN));
        let e = "367d".parse::<Span>().expect_err("too long");
        assert!(e.contains("366 days"), "{e}");
        assert!("18446744073709551615s".parse::<Span>().is_err());
        assert!("500000000y".parse::<Span>().is_err());
    }

    #[test]
    fn durations_parse_like_people_write_them() {
        assert_eq!(
            "500ms".parse::<Span>().map(Span::get),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            "1s".parse::<Span>().map(Span::get),
            Ok(Duration::from_secs(1))
        );
        assert_eq!(
            "10m".parse::<Span>().map(Span::get),
            Ok(Duration::from_secs(600))
        );
        assert!("ten seconds".parse::<Span>().is_err());
        assert!("10".parse::<Span>().is_err());
    }

    #[test]
    fn names_are_url_and_topic_safe() {
        assert!(check_name("boiler-1").is_ok());
        assert!(check_name("a.b_c").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a+b").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }
}
