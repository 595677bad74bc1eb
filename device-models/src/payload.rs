//! Plain MQTT payloads: a reading out of a published payload (by JSON
//! Pointer, or the bare payload), and the payload of a write command.
//!
//! Shared by the gateway's MQTT driver and the simulator's publishers, so
//! both sides agree on the format. Reading is lenient where devices commonly
//! differ (`"21.5"` for a float, `ON`/`off`/`1` for a bool); anything that
//! does not fit the property's type is an error, never a guess.

use crate::model::{JsonPointer, ValueType};
use crate::value::{Value, whole_number};

/// Why a payload gave no reading.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    /// The payload is empty.
    #[error("the payload is empty")]
    Empty,
    /// The payload is not UTF-8 text.
    #[error("the payload is not UTF-8 text")]
    NotText,
    /// A JSON binding, but the payload does not parse as JSON.
    #[error("the payload is not JSON: {0}")]
    NotJson(String),
    /// The pointer finds nothing in the document.
    #[error("nothing at JSON Pointer `{0}`")]
    Missing(String),
    /// There is a value, but not one of the property's type.
    #[error("expected a {expected}, found {found}")]
    WrongType {
        /// The property's type.
        expected: ValueType,
        /// What the payload holds, shortened.
        found: String,
    },
}

/// The reading of a property of type `ty` in `payload`: the value at
/// `pointer` in a JSON document, or the whole payload as a bare value.
pub fn decode(
    ty: ValueType,
    pointer: Option<&JsonPointer>,
    payload: &[u8],
) -> Result<Value, PayloadError> {
    if payload.is_empty() {
        return Err(PayloadError::Empty);
    }
    match pointer {
        Some(pointer) => {
            let doc: serde_json::Value = serde_json::from_slice(payload)
                .map_err(|e| PayloadError::NotJson(e.to_string()))?;
            let found = doc
                .pointer(&pointer.0)
                .ok_or_else(|| PayloadError::Missing(pointer.0.clone()))?;
            from_json(ty, found)
        }
        None => {
            let text = std::str::from_utf8(payload).map_err(|_| PayloadError::NotText)?;
            from_text(ty, text)
        }
    }
}

/// The payload of a write command: with a pointer, a JSON document that
/// holds the value at that place (`/a/b` gives `{"a":{"b":V}}`); without
/// one, the bare value as text.
pub fn encode(pointer: Option<&JsonPointer>, value: &Value) -> Vec<u8> {
    match pointer {
        Some(pointer) => document(pointer, value).to_string().into_bytes(),
        None => match value {
            Value::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        },
    }
}

/// The JSON document that holds `value` at `pointer`: `/a/b` gives
/// `{"a":{"b":V}}`, the empty pointer the bare JSON value.
pub fn document(pointer: &JsonPointer, value: &Value) -> serde_json::Value {
    let mut doc = to_json(value);
    // Build from the innermost key outwards.
    let tokens: Vec<&str> = pointer.0.split('/').skip(1).collect();
    for token in tokens.iter().rev() {
        let key = token.replace("~1", "/").replace("~0", "~");
        doc = serde_json::Value::Object(std::iter::once((key, doc)).collect());
    }
    doc
}

fn to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Int(i) => serde_json::Value::from(*i),
        Value::Float(f) => serde_json::Value::from(*f),
        Value::String(s) => serde_json::Value::String(s.clone()),
    }
}

fn from_json(ty: ValueType, json: &serde_json::Value) -> Result<Value, PayloadError> {
    use serde_json::Value as J;
    let value = match (ty, json) {
        (ValueType::Bool, J::Bool(b)) => Some(Value::Bool(*b)),
        (ValueType::Int | ValueType::Float | ValueType::Bool, J::Number(n)) => {
            if let Some(i) = n.as_i64() {
                number(ty, i as f64, Some(i))
            } else {
                n.as_f64().and_then(|f| number(ty, f, None))
            }
        }
        (ValueType::String, J::String(s)) => Some(Value::String(s.clone())),
        (ValueType::String, J::Number(_) | J::Bool(_)) => Some(Value::String(json.to_string())),
        (_, J::String(s)) => return from_text(ty, s),
        _ => None,
    };
    value.ok_or_else(|| wrong(ty, &json.to_string()))
}

fn from_text(ty: ValueType, text: &str) -> Result<Value, PayloadError> {
    if ty == ValueType::String {
        return Ok(Value::String(text.to_string()));
    }
    let t = text.trim();
    let value = match ty {
        ValueType::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "on" | "1" | "yes" => Some(Value::Bool(true)),
            "false" | "off" | "0" | "no" => Some(Value::Bool(false)),
            _ => None,
        },
        _ => match t.parse::<i64>() {
            Ok(i) => number(ty, i as f64, Some(i)),
            Err(_) => t.parse::<f64>().ok().and_then(|f| number(ty, f, None)),
        },
    };
    value.ok_or_else(|| wrong(ty, text))
}

/// A number as a value of type `ty`: integers must be whole, every value
/// finite, and a bool only 0 or 1.
fn number(ty: ValueType, f: f64, exact: Option<i64>) -> Option<Value> {
    if !f.is_finite() {
        return None;
    }
    match ty {
        ValueType::Float => Some(Value::Float(f)),
        ValueType::Int => exact.or_else(|| whole_number(f)).map(Value::Int),
        ValueType::Bool if f == 0.0 => Some(Value::Bool(false)),
        ValueType::Bool if f == 1.0 => Some(Value::Bool(true)),
        _ => None,
    }
}

fn wrong(ty: ValueType, found: &str) -> PayloadError {
    let mut shown: String = found.chars().take(40).collect();
    if shown.len() < found.len() {
        shown.push('…');
    }
    PayloadError::WrongType {
        expected: ty,
        found: format!("`{shown}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptr(s: &str) -> JsonPointer {
        JsonPointer(s.to_string())
    }

    #[test]
    fn readings_come_from_pointers_or_bare_payloads() {
        let doc = br#"{"temperature": 21.5, "n": 3, "on": true, "name": "a", "s": "7.25"}"#;
        let cases = [
            (ValueType::Float, "/temperature", Value::Float(21.5)),
            (ValueType::Float, "/n", Value::Float(3.0)),
            (ValueType::Int, "/n", Value::Int(3)),
            (ValueType::Bool, "/on", Value::Bool(true)),
            (ValueType::String, "/name", Value::String("a".into())),
            (ValueType::Float, "/s", Value::Float(7.25)),
        ];
        for (ty, p, want) in cases {
            assert_eq!(decode(ty, Some(&ptr(p)), doc), Ok(want), "{p}");
        }
        assert_eq!(
            decode(ValueType::Float, None, b" 42.5\n"),
            Ok(Value::Float(42.5))
        );
        assert_eq!(decode(ValueType::Int, None, b"-7"), Ok(Value::Int(-7)));
        assert_eq!(decode(ValueType::Int, None, b"40.0"), Ok(Value::Int(40)));
        assert_eq!(decode(ValueType::Bool, None, b"ON"), Ok(Value::Bool(true)));
        assert_eq!(decode(ValueType::Bool, None, b"0"), Ok(Value::Bool(false)));
        assert_eq!(
            decode(ValueType::String, None, b" as is "),
            Ok(Value::String(" as is ".into()))
        );
    }

    #[test]
    fn what_does_not_fit_is_an_error() {
        let doc = br#"{"a": "warm", "b": 1.5, "c": null, "d": [1]}"#;
        for (ty, p) in [
            (ValueType::Float, "/a"),
            (ValueType::Int, "/b"),
            (ValueType::Bool, "/b"),
            (ValueType::Float, "/c"),
            (ValueType::Float, "/d"),
        ] {
            assert!(
                matches!(
                    decode(ty, Some(&ptr(p)), doc),
                    Err(PayloadError::WrongType { .. })
                ),
                "{p}"
            );
        }
        assert_eq!(
            decode(ValueType::Float, Some(&ptr("/zz")), doc),
            Err(PayloadError::Missing("/zz".into()))
        );
        assert!(matches!(
            decode(ValueType::Float, Some(&ptr("/a")), b"{not json"),
            Err(PayloadError::NotJson(_))
        ));
        assert_eq!(
            decode(ValueType::Float, None, b""),
            Err(PayloadError::Empty)
        );
        assert_eq!(
            decode(ValueType::String, None, &[0xff, 0xfe]),
            Err(PayloadError::NotText)
        );
        for junk in ["NaN", "inf", "1e999", "12abc"] {
            assert!(
                decode(ValueType::Float, None, junk.as_bytes()).is_err(),
                "{junk}"
            );
        }
    }

    #[test]
    fn commands_mirror_the_pointer() {
        assert_eq!(
            encode(Some(&ptr("/interval")), &Value::Int(60)),
            br#"{"interval":60}"#
        );
        assert_eq!(
            encode(Some(&ptr("/a/b~1c")), &Value::Bool(true)),
            br#"{"a":{"b/c":true}}"#
        );
        assert_eq!(encode(None, &Value::Float(21.5)), b"21.5");
        assert_eq!(encode(None, &Value::String("x y".into())), b"x y");
        // What a command encodes, a reading decodes back.
        for (ty, v) in [
            (ValueType::Float, Value::Float(-0.125)),
            (ValueType::Int, Value::Int(i64::MIN)),
            (ValueType::Bool, Value::Bool(false)),
            (ValueType::String, Value::String("ünï".into())),
        ] {
            for p in [None, Some(ptr("/x/y"))] {
                assert_eq!(
                    decode(ty, p.as_ref(), &encode(p.as_ref(), &v)),
                    Ok(v.clone())
                );
            }
        }
    }

    proptest::proptest! {
        /// Whatever a device publishes, decoding answers with a value of the
        /// property's type or an error; it never panics.
        #[test]
        fn any_payload_decodes_or_fails_cleanly(
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            pointer in proptest::option::of("(/[a-z0-9~]{0,4}){0,3}"),
            ty in proptest::sample::select(vec![ValueType::Bool, ValueType::Int, ValueType::Float, ValueType::String]),
        ) {
            let pointer = pointer.map(JsonPointer);
            if let Ok(v) = decode(ty, pointer.as_ref(), &payload) {
                let fits = matches!(
                    (ty, &v),
                    (ValueType::Bool, Value::Bool(_)) | (ValueType::Int, Value::Int(_)) | (ValueType::String, Value::String(_))
                ) || matches!((ty, &v), (ValueType::Float, Value::Float(f)) if f.is_finite());
                proptest::prop_assert!(fits, "{ty} decoded as {v:?}");
            }
        }

        /// JSON-shaped noise, deeply nested or huge, is refused cleanly.
        #[test]
        fn json_shaped_noise_never_panics(
            tokens in proptest::collection::vec(proptest::sample::select(vec!["{", "}", "[", "]", "\"a\":", "1e400", "-", "0", ",", "\"", "\\u0000", "null", "true"]), 0..300),
        ) {
            let text: String = tokens.concat();
            let _ = decode(ValueType::Float, Some(&JsonPointer("/a".into())), text.as_bytes());
        }
    }
}
