//! Sparkplug B: topics, and metrics to and from property values.
//!
//! Shared by the gateway's MQTT driver and the simulator's Sparkplug edge
//! nodes. The payload types come from Eclipse Tahu's schema in
//! `ferrite-proto`.
//!
//! Topics are `spBv1.0/GROUP/TYPE/NODE[/DEVICE]`. Sparkplug carries signed
//! 8-, 16- and 32-bit integers in `int_value` (a u32) and 64-bit ones in
//! `long_value` (a u64), as two's complement.

use ferrite_proto::sparkplug::datatype as dt;
use ferrite_proto::sparkplug::payload::{Metric, metric};

use crate::device::Sparkplug;
use crate::model::ValueType;
use crate::value::{Value, whole_number};

/// The topic namespace of Sparkplug B.
pub const NAMESPACE: &str = "spBv1.0";

/// The message types of Sparkplug B topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// An edge node came online, with every metric.
    NBirth,
    /// An edge node went away (its MQTT will).
    NDeath,
    /// A node's metrics changed.
    NData,
    /// A command to a node.
    NCmd,
    /// A device behind a node came online.
    DBirth,
    /// A device went away.
    DDeath,
    /// A device's metrics changed.
    DData,
    /// A command to a device.
    DCmd,
}

impl MessageType {
    /// The word in the topic.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::NBirth => "NBIRTH",
            MessageType::NDeath => "NDEATH",
            MessageType::NData => "NDATA",
            MessageType::NCmd => "NCMD",
            MessageType::DBirth => "DBIRTH",
            MessageType::DDeath => "DDEATH",
            MessageType::DData => "DDATA",
            MessageType::DCmd => "DCMD",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "NBIRTH" => MessageType::NBirth,
            "NDEATH" => MessageType::NDeath,
            "NDATA" => MessageType::NData,
            "NCMD" => MessageType::NCmd,
            "DBIRTH" => MessageType::DBirth,
            "DDEATH" => MessageType::DDeath,
            "DDATA" => MessageType::DData,
            "DCMD" => MessageType::DCmd,
            _ => return None,
        })
    }

    /// The same message for a device (`true`: NBIRTH becomes DBIRTH, ...)
    /// or for a node (`false`: DDATA becomes NDATA, ...).
    pub fn for_device(self, device: bool) -> Self {
        use MessageType::*;
        match self {
            NBirth | DBirth => {
                if device {
                    DBirth
                } else {
                    NBirth
                }
            }
            NDeath | DDeath => {
                if device {
                    DDeath
                } else {
                    NDeath
                }
            }
            NData | DData => {
                if device {
                    DData
                } else {
                    NData
                }
            }
            NCmd | DCmd => {
                if device {
                    DCmd
                } else {
                    NCmd
                }
            }
        }
    }

    /// Whether the message concerns a device behind the node.
    pub fn is_device(self) -> bool {
        matches!(
            self,
            MessageType::DBirth | MessageType::DDeath | MessageType::DData | MessageType::DCmd
        )
    }
}

/// A parsed Sparkplug B topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic<'a> {
    /// Group ID.
    pub group: &'a str,
    /// Message type.
    pub kind: MessageType,
    /// Edge node ID.
    pub node: &'a str,
    /// Device ID, for D-messages.
    pub device: Option<&'a str>,
}

impl<'a> Topic<'a> {
    /// Parses `spBv1.0/GROUP/TYPE/NODE[/DEVICE]`; `None` for anything else
    /// (including `STATE` messages of host applications).
    pub fn parse(topic: &'a str) -> Option<Self> {
        let mut parts = topic.split('/');
        if parts.next()? != NAMESPACE {
            return None;
        }
        let group = parts.next()?;
        let kind = MessageType::parse(parts.next()?)?;
        let node = parts.next()?;
        let device = parts.next();
        if parts.next().is_some() || device.is_some() != kind.is_device() {
            return None;
        }
        Some(Topic {
            group,
            kind,
            node,
            device,
        })
    }

    /// The topic of a `kind` message about `sp`: the device's (DBIRTH,
    /// DDATA, ...) when `sp` names a device, else the node's.
    pub fn of(sp: &'a Sparkplug, kind: MessageType) -> Self {
        let device = sp.device.as_deref();
        Topic {
            group: &sp.group,
            kind: kind.for_device(device.is_some()),
            node: &sp.node,
            device,
        }
    }

    /// The topic of a `kind` message of the edge node that `sp` sits behind
    /// (NBIRTH, NDEATH, NCMD, ...), whether or not `sp` names a device.
    pub fn node_of(sp: &'a Sparkplug, kind: MessageType) -> Self {
        Topic {
            group: &sp.group,
            kind: kind.for_device(false),
            node: &sp.node,
            device: None,
        }
    }

    /// The topic text.
    pub fn render(&self) -> String {
        let mut t = format!(
            "{NAMESPACE}/{}/{}/{}",
            self.group,
            self.kind.as_str(),
            self.node
        );
        if let Some(d) = self.device {
            t.push('/');
            t.push_str(d);
        }
        t
    }
}

/// The Sparkplug data type that a property of type `ty` is written as when
/// the device's birth did not say.
pub fn datatype_for(ty: ValueType) -> u32 {
    match ty {
        ValueType::Bool => dt::BOOLEAN,
        ValueType::Int => dt::INT64,
        ValueType::Float => dt::DOUBLE,
        ValueType::String => dt::STRING,
    }
}

/// The reading a metric carries for a property of type `ty`. `Ok(None)`
/// for a metric marked null (the value is unknown).
pub fn metric_value(m: &Metric, ty: ValueType) -> Result<Option<Value>, String> {
    if m.is_null == Some(true) {
        return Ok(None);
    }
    let datatype = m.datatype.unwrap_or(0);
    let raw = match &m.value {
        None => return Err("the metric has no value".into()),
        Some(metric::Value::IntValue(u)) => match datatype {
            dt::INT8 => Value::Int(i64::from(*u as u8 as i8)),
            dt::INT16 => Value::Int(i64::from(*u as u16 as i16)),
            dt::INT32 => Value::Int(i64::from(*u as i32)),
            _ => Value::Int(i64::from(*u)),
        },
        Some(metric::Value::LongValue(u)) => match datatype {
            dt::UINT64 | dt::DATETIME => {
                Value::Int(i64::try_from(*u).map_err(|_| format!("{u} does not fit an int"))?)
            }
            _ => Value::Int(*u as i64),
        },
        Some(metric::Value::FloatValue(f)) => Value::Float(f64::from(*f)),
        Some(metric::Value::DoubleValue(f)) => Value::Float(*f),
        Some(metric::Value::BooleanValue(b)) => Value::Bool(*b),
        Some(metric::Value::StringValue(s)) => Value::String(s.clone()),
        Some(_) => return Err("datasets, templates and bytes are not supported".into()),
    };
    coerce(raw, ty).map(Some)
}

fn coerce(value: Value, ty: ValueType) -> Result<Value, String> {
    Ok(match (ty, value) {
        (ValueType::Float, Value::Float(f)) if f.is_finite() => Value::Float(f),
        (ValueType::Float, Value::Int(i)) => Value::Float(i as f64),
        (ValueType::Int, Value::Int(i)) => Value::Int(i),
        (ValueType::Int, Value::Float(f)) if whole_number(f).is_some() => Value::Int(f as i64),
        (ValueType::Bool, Value::Bool(b)) => Value::Bool(b),
        (ValueType::String, Value::String(s)) => Value::String(s),
        (ValueType::String, other) => Value::String(other.to_string()),
        (ty, other) => return Err(format!("expected a {ty}, found {other}")),
    })
}

/// A metric carrying `value` as `datatype`, for a write (DCMD/NCMD) or a
/// simulated device's birth and data. Fails when the value does not fit the
/// data type (300 in an Int8, 1.5 in an Int32, text in a Double).
pub fn metric_of(datatype: u32, value: &Value) -> Result<Metric, String> {
    let int = |lo: i64, hi: i64| -> Result<i64, String> {
        match value {
            Value::Int(i) if (lo..=hi).contains(i) => Ok(*i),
            Value::Float(f) if f.fract() == 0.0 && (lo as f64..=hi as f64).contains(f) => {
                Ok(*f as i64)
            }
            other => Err(format!(
                "{other} does not fit Sparkplug data type {datatype}"
            )),
        }
    };
    let encoded = match datatype {
        dt::INT8 => metric::Value::IntValue(int(-128, 127)? as i8 as u8 as u32),
        dt::INT16 => metric::Value::IntValue(int(-32768, 32767)? as i16 as u16 as u32),
        dt::INT32 => metric::Value::IntValue(int(i32::MIN.into(), i32::MAX.into())? as i32 as u32),
        dt::UINT8 => metric::Value::IntValue(int(0, 255)? as u32),
        dt::UINT16 => metric::Value::IntValue(int(0, 65535)? as u32),
        dt::UINT32 => metric::Value::IntValue(int(0, u32::MAX.into())? as u32),
        dt::INT64 => metric::Value::LongValue(int(i64::MIN, i64::MAX)? as u64),
        dt::UINT64 | dt::DATETIME => metric::Value::LongValue(int(0, i64::MAX)? as u64),
        dt::FLOAT | dt::DOUBLE => {
            let f = value
                .as_f64()
                .ok_or_else(|| format!("{value} does not fit Sparkplug data type {datatype}"))?;
            if datatype == dt::FLOAT {
                metric::Value::FloatValue(f as f32)
            } else {
                metric::Value::DoubleValue(f)
            }
        }
        dt::BOOLEAN => match value {
            Value::Bool(b) => metric::Value::BooleanValue(*b),
            other => return Err(format!("{other} is not a Boolean")),
        },
        dt::STRING | dt::TEXT => match value {
            Value::String(s) => metric::Value::StringValue(s.clone()),
            other => metric::Value::StringValue(other.to_string()),
        },
        other => return Err(format!("Sparkplug data type {other} is not supported")),
    };
    Ok(Metric {
        datatype: Some(datatype),
        value: Some(encoded),
        ..Metric::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_and_render() {
        let t = Topic::parse("spBv1.0/plant/DDATA/edge-1/boiler").expect("a DDATA topic");
        assert_eq!(
            (t.group, t.kind, t.node, t.device),
            ("plant", MessageType::DData, "edge-1", Some("boiler"))
        );
        assert_eq!(t.render(), "spBv1.0/plant/DDATA/edge-1/boiler");
        let n = Topic::parse("spBv1.0/plant/NBIRTH/edge-1").expect("an NBIRTH topic");
        assert_eq!(n.device, None);
        let dev = Sparkplug {
            group: "g".into(),
            node: "n".into(),
            device: Some("d".into()),
        };
        assert_eq!(
            Topic::of(&dev, MessageType::NCmd).render(),
            "spBv1.0/g/DCMD/n/d"
        );
        assert_eq!(
            Topic::node_of(&dev, MessageType::DDeath).render(),
            "spBv1.0/g/NDEATH/n"
        );
        let node = Sparkplug {
            device: None,
            ..dev
        };
        assert_eq!(
            Topic::of(&node, MessageType::DData).render(),
            "spBv1.0/g/NDATA/n"
        );
        for bad in [
            "spBv1.0/plant/NBIRTH/edge-1/dev",
            "spBv1.0/plant/DDATA/edge-1",
            "spBv1.0/plant/STATE/x",
            "spBv1.0/STATE/host",
            "spAv1.0/plant/NDATA/edge-1",
            "spBv1.0/plant/DDATA/edge-1/dev/extra",
        ] {
            assert_eq!(Topic::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn signed_integers_round_trip_in_twos_complement() {
        for (datatype, v) in [
            (dt::INT8, -128),
            (dt::INT8, 127),
            (dt::INT16, -2),
            (dt::INT32, i64::from(i32::MIN)),
            (dt::INT64, -1),
            (dt::UINT32, i64::from(u32::MAX)),
        ] {
            let m = metric_of(datatype, &Value::Int(v)).expect("fits");
            assert_eq!(
                metric_value(&m, ValueType::Int),
                Ok(Some(Value::Int(v))),
                "{datatype} {v}"
            );
        }
        assert!(metric_of(dt::INT8, &Value::Int(128)).is_err());
        assert!(metric_of(dt::UINT16, &Value::Int(-1)).is_err());
        assert!(metric_of(dt::INT32, &Value::Float(1.5)).is_err());
        assert!(metric_of(dt::BOOLEAN, &Value::Int(1)).is_err());
    }

    #[test]
    fn values_fit_the_property_type_or_fail() {
        let f = metric_of(dt::FLOAT, &Value::Float(21.5)).expect("fits");
        assert_eq!(
            metric_value(&f, ValueType::Float),
            Ok(Some(Value::Float(21.5)))
        );
        assert!(metric_value(&f, ValueType::Bool).is_err());
        let null = Metric {
            is_null: Some(true),
            ..Metric::default()
        };
        assert_eq!(metric_value(&null, ValueType::Float), Ok(None));
        assert!(metric_value(&Metric::default(), ValueType::Float).is_err());
        let big = Metric {
            datatype: Some(dt::UINT64),
            value: Some(metric::Value::LongValue(u64::MAX)),
            ..Metric::default()
        };
        assert!(metric_value(&big, ValueType::Int).is_err());
        let nan = Metric {
            datatype: Some(dt::DOUBLE),
            value: Some(metric::Value::DoubleValue(f64::NAN)),
            ..Metric::default()
        };
        assert!(metric_value(&nan, ValueType::Float).is_err());
    }

    proptest::proptest! {
        /// Any bytes on a Sparkplug topic decode to a payload or an error,
        /// and any metric in it to a value of the property's type or an
        /// error: never a panic.
        #[test]
        fn any_payload_decodes_or_fails_cleanly(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        ) {
            use prost::Message;
            if let Ok(payload) = ferrite_proto::sparkplug::Payload::decode(bytes.as_slice()) {
                for m in &payload.metrics {
                    for ty in [ValueType::Bool, ValueType::Int, ValueType::Float, ValueType::String] {
                        let _ = metric_value(m, ty);
                    }
                }
            }
        }

        /// What a metric encodes for a data type decodes back unchanged.
        #[test]
        fn metrics_round_trip(i in proptest::num::i32::ANY, f in proptest::num::f64::NORMAL) {
            let m = metric_of(dt::INT32, &Value::Int(i.into())).map_err(proptest::test_runner::TestCaseError::fail)?;
            proptest::prop_assert_eq!(metric_value(&m, ValueType::Int), Ok(Some(Value::Int(i.into()))));
            let m = metric_of(dt::DOUBLE, &Value::Float(f)).map_err(proptest::test_runner::TestCaseError::fail)?;
            proptest::prop_assert_eq!(metric_value(&m, ValueType::Float), Ok(Some(Value::Float(f))));
        }
    }
}
