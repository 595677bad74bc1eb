//! Property values as the API, rules and sync see them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Method, Property, ValueType};

/// A property value. In JSON: `true`, `42`, `21.5` or `"text"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A bool.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    String(String),
}

impl Value {
    /// The value as a float, for limits and deadbands.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Bool(_) | Value::String(_) => None,
        }
    }

    /// Appends the value's stored form to `out`: a tag byte, then the
    /// payload (numbers big-endian, text UTF-8). The gateway's history and
    /// the sync outbox keep values this way.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Bool(b) => out.extend_from_slice(&[0, u8::from(*b)]),
            Value::Int(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Value::Float(f) => {
                out.push(2);
                out.extend_from_slice(&f.to_be_bytes());
            }
            Value::String(s) => {
                out.push(3);
                out.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// Reads what [`Value::encode_into`] wrote; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Value> {
        let (tag, body) = bytes.split_first()?;
        let eight = || -> Option<[u8; 8]> { body.try_into().ok() };
        Some(match tag {
            0 => Value::Bool(*body.first()? != 0),
            1 => Value::Int(i64::from_be_bytes(eight()?)),
            2 => Value::Float(f64::from_be_bytes(eight()?)),
            3 => Value::String(String::from_utf8(body.to_vec()).ok()?),
            _ => return None,
        })
    }

    /// Whether `self` differs from `previous` by at least `deadband` (any
    /// change counts when there is no deadband or the type is not numeric).
    pub fn changed_from(&self, previous: &Value, deadband: Option<f64>) -> bool {
        match (self.as_f64(), previous.as_f64(), deadband) {
            (Some(now), Some(before), Some(band)) if band > 0.0 => (now - before).abs() >= band,
            _ => self != previous,
        }
    }
}

/// A value kept for a long time, one per property of every device (the
/// live view's latest reading, the store writer's last stored value): a tag
/// and 8 bytes, 16 in all, where an `Option<Value>` takes 24. A text sits
/// behind one thin pointer, an allocation more than a [`Value`] makes, since
/// texts are rare in the field and an inline `String` would make every held
/// value 8 bytes larger.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Held {
    /// No value.
    #[default]
    None,
    /// A bool.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    #[allow(clippy::box_collection)]
    Text(Box<String>),
}

impl Held {
    /// `value`, held.
    pub fn of(value: &Value) -> Held {
        match value {
            Value::Bool(b) => Held::Bool(*b),
            Value::Int(i) => Held::Int(*i),
            Value::Float(f) => Held::Float(*f),
            Value::String(s) => Held::Text(Box::new(s.clone())),
        }
    }

    /// The value, if one is held (a copy).
    pub fn value(&self) -> Option<Value> {
        Some(match self {
            Held::None => return None,
            Held::Text(s) => Value::String(String::clone(s)),
            Held::Bool(b) => Value::Bool(*b),
            Held::Int(i) => Value::Int(*i),
            Held::Float(f) => Value::Float(*f),
        })
    }

    /// Whether `now` differs from the value held by at least `deadband`, as
    /// [`Value::changed_from`] says, and always when none is held. Copies
    /// nothing.
    pub fn changed_to(&self, now: &Value, deadband: Option<f64>) -> bool {
        match (self, now) {
            (Held::None, _) => true,
            (Held::Text(before), Value::String(now)) => **before != *now,
            (Held::Text(_), _) | (_, Value::String(_)) => true,
            (Held::Bool(b), now) => now.changed_from(&Value::Bool(*b), deadband),
            (Held::Int(i), now) => now.changed_from(&Value::Int(*i), deadband),
            (Held::Float(f), now) => now.changed_from(&Value::Float(*f), deadband),
        }
    }
}

impl From<Value> for Held {
    /// Holds `value`, keeping a text's own allocation.
    fn from(value: Value) -> Held {
        match value {
            Value::String(s) => Held::Text(Box::new(s)),
            scalar => Held::of(&scalar),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::String(s) => write!(f, "{s:?}"),
        }
    }
}

/// A float that is a whole number, as an int: 40.0 is an integer written as
/// a float, 40.5 is not. Only below 9e15, where every whole float is exact.
pub fn whole_number(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

/// Why a value may not be written to a property.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteCheckError {
    /// The property is read-only.
    #[error("property `{0}` is read-only")]
    ReadOnly(String),
    /// The JSON value has the wrong type.
    #[error("property `{property}` takes a {expected}, not {found}")]
    WrongType {
        /// Property name.
        property: String,
        /// Its type.
        expected: ValueType,
        /// What was given.
        found: String,
    },
    /// The value is outside `min`/`max`.
    #[error("{value} is outside the limits of `{property}` ({min}..{max})")]
    OutOfRange {
        /// Property name.
        property: String,
        /// The value given.
        value: f64,
        /// Lower limit, or `…`.
        min: String,
        /// Upper limit, or `…`.
        max: String,
    },
}

/// Checks a JSON value against a property's type, access and limits, and
/// converts it. Every write (REST, rules, the device twin) goes through here.
pub fn check_write(
    name: &str,
    property: &Property,
    json: &serde_json::Value,
) -> Result<Value, WriteCheckError> {
    if !property.writable() {
        return Err(WriteCheckError::ReadOnly(name.to_string()));
    }
    let value = typed(property.ty, json).ok_or_else(|| WriteCheckError::WrongType {
        property: name.to_string(),
        expected: property.ty,
        found: json_kind(json).to_string(),
    })?;
    if let Some(v) = value.as_f64().filter(|v| property.outside_limits(*v)) {
        let (min, max) = property.limits_text();
        return Err(WriteCheckError::OutOfRange {
            property: name.to_string(),
            value: v,
            min,
            max,
        });
    }
    Ok(value)
}

/// `json` as a value of type `ty`, if it is one (an int may be written as a
/// whole float: `40.0`).
fn typed(ty: ValueType, json: &serde_json::Value) -> Option<Value> {
    Some(match (ty, json) {
        (ValueType::Bool, serde_json::Value::Bool(b)) => Value::Bool(*b),
        (ValueType::Int, serde_json::Value::Number(n)) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Int(n.as_f64().and_then(whole_number)?),
        },
        (ValueType::Float, serde_json::Value::Number(n)) => Value::Float(n.as_f64()?),
        (ValueType::String, serde_json::Value::String(s)) => Value::String(s.clone()),
        _ => return None,
    })
}

/// Why a method may not be called with these inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallCheckError {
    /// An input the method does not declare.
    #[error("method `{method}` has no input `{input}` (it takes: {known})")]
    UnknownInput {
        /// The method.
        method: String,
        /// The input given.
        input: String,
        /// Its inputs, comma-separated, or `nothing`.
        known: String,
    },
    /// A declared input that was not given.
    #[error("method `{method}` needs input `{input}`")]
    MissingInput {
        /// The method.
        method: String,
        /// The input missing.
        input: String,
    },
    /// An input of the wrong type.
    #[error("input `{input}` takes a {expected}, not {found}")]
    WrongType {
        /// The input.
        input: String,
        /// Its type.
        expected: ValueType,
        /// What was given.
        found: String,
    },
    /// An input outside its `min`/`max`.
    #[error("{value} is outside the limits of input `{input}` ({min}..{max})")]
    OutOfRange {
        /// The input.
        input: String,
        /// The value given.
        value: f64,
        /// Lower limit, or `…`.
        min: String,
        /// Upper limit, or `…`.
        max: String,
    },
}

/// Checks a call's inputs (a JSON object by input name) against the
/// method's declared inputs, and returns them typed, in declared order.
/// Every call (REST, and anything that calls for it) goes through here.
pub fn check_inputs(
    method: &str,
    declared: &Method,
    inputs: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<Value>, CallCheckError> {
    if let Some(input) = inputs
        .keys()
        .find(|k| !declared.inputs.iter().any(|a| &a.name == *k))
    {
        let known: Vec<&str> = declared.inputs.iter().map(|a| a.name.as_str()).collect();
        return Err(CallCheckError::UnknownInput {
            method: method.to_string(),
            input: input.clone(),
            known: if known.is_empty() {
                "nothing".into()
            } else {
                known.join(", ")
            },
        });
    }
    declared
        .inputs
        .iter()
        .map(|arg| {
            let json = inputs
                .get(&arg.name)
                .ok_or_else(|| CallCheckError::MissingInput {
                    method: method.to_string(),
                    input: arg.name.clone(),
                })?;
            let value = typed(arg.ty, json).ok_or_else(|| CallCheckError::WrongType {
                input: arg.name.clone(),
                expected: arg.ty,
                found: json_kind(json).to_string(),
            })?;
            if let Some(v) = value.as_f64().filter(|v| arg.outside_limits(*v)) {
                let (min, max) = arg.limits_text();
                return Err(CallCheckError::OutOfRange {
                    input: arg.name.clone(),
                    value: v,
                    min,
                    max,
                });
            }
            Ok(value)
        })
        .collect()
}

fn json_kind(json: &serde_json::Value) -> &'static str {
    match json {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(n) if n.is_f64() => "a float",
        serde_json::Value::Number(_) => "an integer",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::Access;

    fn prop(ty: ValueType, access: Access, min: Option<f64>, max: Option<f64>) -> Property {
        Property {
            ty,
            unit: None,
            description: None,
            access,
            min,
            max,
            deadband: None,
            modbus: None,
            opcua: None,
            mqtt: None,
        }
    }

    #[test]
    fn a_held_value_is_16_bytes_and_changes_as_a_value_does() {
        assert_eq!(std::mem::size_of::<Held>(), 16);
        let values = [
            Value::Bool(false),
            Value::Bool(true),
            Value::Int(7),
            Value::Int(8),
            Value::Float(7.0),
            Value::Float(7.4),
            Value::Float(f64::NAN),
            Value::String("7".into()),
            Value::String("on".into()),
        ];
        for before in &values {
            // By their `Debug` text, so that NaN is itself.
            let same =
                |a: &dyn fmt::Debug, b: &dyn fmt::Debug| format!("{a:?}") == format!("{b:?}");
            assert!(same(&Held::of(before).value(), &Some(before)));
            assert!(same(&Held::from(before.clone()), &Held::of(before)));
            for now in &values {
                for band in [None, Some(0.0), Some(0.5), Some(2.0)] {
                    assert_eq!(
                        Held::of(before).changed_to(now, band),
                        now.changed_from(before, band),
                        "{before:?} -> {now:?} at {band:?}"
                    );
                }
            }
            assert!(Held::None.changed_to(before, Some(1e9)));
        }
        assert_eq!(Held::None.value(), None);
    }

    #[test]
    fn call_inputs_are_checked_and_put_in_declared_order() {
        let method: Method = serde_json::from_value(json!({
            "inputs": [
                {"name": "batch", "type": "string"},
                {"name": "parts", "type": "int", "min": 1, "max": 100},
            ],
        }))
        .expect("method");
        let inputs = |v: serde_json::Value| v.as_object().cloned().expect("object");
        assert_eq!(
            check_inputs("go", &method, &inputs(json!({"parts": 5.0, "batch": "B"}))),
            Ok(vec![Value::String("B".into()), Value::Int(5)])
        );
        let err = |v| check_inputs("go", &method, &inputs(v)).expect_err("refused");
        assert!(matches!(
            err(json!({"batch": "B"})),
            CallCheckError::MissingInput { input, .. } if input == "parts"
        ));
        assert_eq!(
            err(json!({"batch": "B", "parts": 1, "x": 1})).to_string(),
            "method `go` has no input `x` (it takes: batch, parts)"
        );
        assert!(matches!(
            err(json!({"batch": 7, "parts": 1})),
            CallCheckError::WrongType { .. }
        ));
        assert!(matches!(
            err(json!({"batch": "B", "parts": 101})),
            CallCheckError::OutOfRange { .. }
        ));
        let none: Method = serde_json::from_value(json!({})).expect("method");
        assert_eq!(check_inputs("n", &none, &inputs(json!({}))), Ok(vec![]));
        assert_eq!(
            check_inputs("n", &none, &inputs(json!({"a": 1})))
                .expect_err("refused")
                .to_string(),
            "method `n` has no input `a` (it takes: nothing)"
        );
    }

    #[test]
    fn writes_are_checked_for_access_type_and_limits() {
        let sp = prop(ValueType::Float, Access::ReadWrite, Some(20.0), Some(90.0));
        assert_eq!(check_write("sp", &sp, &json!(40)), Ok(Value::Float(40.0)));
        assert!(matches!(
            check_write("sp", &sp, &json!(95.5)),
            Err(WriteCheckError::OutOfRange { .. })
        ));
        assert!(matches!(
            check_write("sp", &sp, &json!("40")),
            Err(WriteCheckError::WrongType { .. })
        ));
        let ro = prop(ValueType::Float, Access::Read, None, None);
        assert_eq!(
            check_write("t", &ro, &json!(1)),
            Err(WriteCheckError::ReadOnly("t".into()))
        );
        let count = prop(ValueType::Int, Access::Write, None, None);
        assert_eq!(check_write("c", &count, &json!(7.0)), Ok(Value::Int(7)));
        assert!(check_write("c", &count, &json!(7.5)).is_err());
        let flag = prop(ValueType::Bool, Access::Write, None, None);
        assert!(check_write("f", &flag, &json!(1)).is_err());
    }

    #[test]
    fn deadband_decides_what_counts_as_a_change() {
        assert!(!Value::Float(20.2).changed_from(&Value::Float(20.0), Some(0.5)));
        assert!(Value::Float(20.5).changed_from(&Value::Float(20.0), Some(0.5)));
        assert!(Value::Float(20.01).changed_from(&Value::Float(20.0), None));
        assert!(!Value::Bool(true).changed_from(&Value::Bool(true), Some(1.0)));
    }
}
