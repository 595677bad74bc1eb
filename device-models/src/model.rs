//! `kind: DeviceModel`: what one kind of device exposes, once.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use indexmap::IndexMap;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::Span;

/// The `kind` tag of a model document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ModelKind {
    /// The only value.
    DeviceModel,
}

/// A device model: typed properties, each with a binding per protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceModel {
    /// Always `DeviceModel`.
    pub kind: ModelKind,
    /// The name devices refer to.
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The model this one builds on (a template): its properties and
    /// methods come first, then this model's own, which add to them or
    /// override one of the same name (keeping its type). Once loaded, a
    /// model holds the whole chain's properties and methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// Properties by name, in file order.
    #[serde(default)]
    pub properties: IndexMap<String, Property>,
    /// Methods (commands the device runs, with typed inputs and outputs)
    /// by name, in file order. OPC UA only.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub methods: IndexMap<String, Method>,
}

/// A method of a model: a command the device runs when called through the
/// API (`POST /api/v1/devices/{id}/methods/{name}`), such as "reset the
/// counters" or "start a batch", with typed inputs and outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Method {
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What a call takes, in the order the device expects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Argument>,
    /// What a call returns, in the order the device returns it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<Argument>,
    /// Where the method lives on an OPC UA server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opcua: Option<OpcuaMethodBinding>,
}

/// One input or output of a [`Method`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Argument {
    /// Its name: the key of the call's `inputs` and of the answer's
    /// `outputs`.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: ValueType,
    /// Engineering unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Lowest value a call may pass (inputs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Highest value a call may pass (inputs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl Argument {
    /// Whether `v` lies outside `min`..`max`.
    pub fn outside_limits(&self, v: f64) -> bool {
        outside_limits(self.min, self.max, v)
    }

    /// The limits as text for messages, `…` where there is none.
    pub fn limits_text(&self) -> (String, String) {
        limits_text(self.min, self.max)
    }
}

/// Where a method lives on an OPC UA server: the object it is called on and
/// the method node. The DataType of each input is read from the method's
/// `InputArguments` (default: Boolean, Int32, Double or String after the
/// input's type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpcuaMethodBinding {
    /// The object the method is a component of, such as `ns=2;s=Boiler`.
    pub object: NodeId,
    /// The method node, such as `ns=2;s=Boiler.Reset`.
    pub method: NodeId,
}

/// One property of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Property {
    /// The value type seen through the API and by rules.
    #[serde(rename = "type")]
    pub ty: ValueType,
    /// Engineering unit, such as `°C` or `kWh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who may read and write it. Default `read`.
    #[serde(default)]
    pub access: Access,
    /// Lowest value a write may set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Highest value a write may set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// A change smaller than this is neither stored as history nor synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadband: Option<f64>,
    /// Where the value lives on a Modbus device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modbus: Option<ModbusBinding>,
    /// Where the value lives on an OPC UA server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opcua: Option<OpcuaBinding>,
    /// Where the value is published over MQTT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttBinding>,
}

impl Property {
    /// Whether writes are allowed.
    pub fn writable(&self) -> bool {
        matches!(self.access, Access::Write | Access::ReadWrite)
    }

    /// Whether reads are allowed.
    pub fn readable(&self) -> bool {
        matches!(self.access, Access::Read | Access::ReadWrite)
    }

    /// Whether `v` lies outside `min`..`max`.
    pub fn outside_limits(&self, v: f64) -> bool {
        outside_limits(self.min, self.max, v)
    }

    /// The limits as text for messages, `…` where there is none.
    pub fn limits_text(&self) -> (String, String) {
        limits_text(self.min, self.max)
    }
}

/// Whether `v` lies outside `min`..`max` (a property's or an input's).
fn outside_limits(min: Option<f64>, max: Option<f64>, v: f64) -> bool {
    min.is_some_and(|min| v < min) || max.is_some_and(|max| v > max)
}

/// Limits as text for messages, `…` where there is none.
fn limits_text(min: Option<f64>, max: Option<f64>) -> (String, String) {
    let text = |l: Option<f64>| l.map_or_else(|| "…".to_string(), |x| x.to_string());
    (text(min), text(max))
}

/// The type of a property's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// true or false.
    Bool,
    /// A 64-bit signed integer.
    Int,
    /// A 64-bit float.
    Float,
    /// UTF-8 text.
    String,
}

impl ValueType {
    /// Whether `min`, `max` and `deadband` make sense for it.
    pub fn is_numeric(self) -> bool {
        matches!(self, ValueType::Int | ValueType::Float)
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueType::Bool => "bool",
            ValueType::Int => "int",
            ValueType::Float => "float",
            ValueType::String => "string",
        })
    }
}

/// Access mode of a property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read only.
    #[default]
    Read,
    /// Write only.
    Write,
    /// Read and write.
    #[serde(rename = "readwrite")]
    ReadWrite,
}

/// A Modbus register or coil binding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModbusBinding {
    /// Which of the four tables.
    pub table: Table,
    /// 0-based address of the first register or coil.
    pub address: u16,
    /// How the registers encode the value. Default: `bool` for coils and
    /// discrete inputs, `u16` for registers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// Word and byte order of multi-register values. Default `ABCD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<WordOrder>,
    /// Picks one bit (0..15) of a register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bit: Option<u8>,
    /// value = raw × scale + offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// value = raw × scale + offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<f64>,
}

impl ModbusBinding {
    /// The format, with the table's default filled in.
    pub fn format(&self) -> Format {
        self.format.unwrap_or(if self.table.is_bits() {
            Format::Bool
        } else {
            Format::U16
        })
    }

    /// The word order, default `ABCD`.
    pub fn order(&self) -> WordOrder {
        self.order.unwrap_or_default()
    }

    /// How many registers (or coils) the value spans.
    pub fn width(&self) -> u32 {
        if self.table.is_bits() {
            1
        } else {
            self.format().registers()
        }
    }
}

/// The four Modbus tables.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Read/write bits (FC 01, 05, 15).
    Coil,
    /// Read-only bits (FC 02).
    Discrete,
    /// Read-only registers (FC 04).
    Input,
    /// Read/write registers (FC 03, 06, 16).
    Holding,
}

impl Table {
    /// Coils and discrete inputs hold bits rather than registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// Whether the protocol allows writing the table at all.
    pub fn is_writable(self) -> bool {
        matches!(self, Table::Coil | Table::Holding)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Table::Coil => "coil",
            Table::Discrete => "discrete",
            Table::Input => "input",
            Table::Holding => "holding",
        })
    }
}

/// How a value is encoded in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// One bit, or a register that is zero or not.
    Bool,
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// Unsigned 64-bit, four registers.
    U64,
    /// Signed 64-bit, four registers.
    I64,
    /// IEEE 754 single, two registers.
    F32,
    /// IEEE 754 double, four registers.
    F64,
    /// N bytes of text, two per register, NUL-padded.
    String(u16),
}

/// The longest `string(N)` a single Modbus read can carry: 125 registers.
pub const MAX_STRING_BYTES: u16 = 250;

impl Format {
    /// Registers the format spans.
    pub fn registers(self) -> u32 {
        match self {
            Format::Bool | Format::U16 | Format::I16 => 1,
            Format::U32 | Format::I32 | Format::F32 => 2,
            Format::U64 | Format::I64 | Format::F64 => 4,
            Format::String(n) => u32::from(n).div_ceil(2),
        }
    }

    /// Whether it holds an integer.
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            Format::U16 | Format::I16 | Format::U32 | Format::I32 | Format::U64 | Format::I64
        )
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "bool" => Format::Bool,
            "u16" => Format::U16,
            "i16" => Format::I16,
            "u32" => Format::U32,
            "i32" => Format::I32,
            "u64" => Format::U64,
            "i64" => Format::I64,
            "f32" => Format::F32,
            "f64" => Format::F64,
            other => {
                let len = other
                    .strip_prefix("string(")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .ok_or_else(|| {
                        format!("unknown format `{other}`, expected one of bool, u16, i16, u32, i32, u64, i64, f32, f64, string(N)")
                    })?;
                let n: u16 = len.trim().parse().map_err(|_| {
                    format!("`{other}`: the length in string(N) must be a whole number")
                })?;
                if n == 0 {
                    return Err("string(0) holds nothing; give a length of 1 or more".into());
                }
                Format::String(n)
            }
        })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::Bool => f.write_str("bool"),
            Format::U16 => f.write_str("u16"),
            Format::I16 => f.write_str("i16"),
            Format::U32 => f.write_str("u32"),
            Format::I32 => f.write_str("i32"),
            Format::U64 => f.write_str("u64"),
            Format::I64 => f.write_str("i64"),
            Format::F32 => f.write_str("f32"),
            Format::F64 => f.write_str("f64"),
            Format::String(n) => write!(f, "string({n})"),
        }
    }
}

/// Implements serde and JSON Schema for a type that is written as a string,
/// through its `FromStr` and `Display`.
macro_rules! string_type {
    ($ty:ty, $name:literal, $schema:tt) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

string_type!(Format, "ModbusFormat", {
    "type": "string",
    "description": "bool | u16 | i16 | u32 | i32 | u64 | i64 | f32 | f64 | string(N)",
    "pattern": r"^(bool|u16|i16|u32|i32|u64|i64|f32|f64|string\([1-9][0-9]*\))$"
});

/// Word and byte order of a multi-register value, naming the bytes of a
/// big-endian value A (most significant) to D.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum WordOrder {
    /// Big-endian: the Modbus default.
    #[default]
    ABCD,
    /// Little-endian.
    DCBA,
    /// Bytes swapped within each word.
    BADC,
    /// Words swapped ("word-swapped big-endian").
    CDAB,
}

/// An OPC UA node binding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpcuaBinding {
    /// The node id, such as `ns=2;s=Boiler.Temperature` or `i=2258`.
    pub node: NodeId,
    /// The node's DataType, when it must be a particular one. The gateway
    /// reads each node's DataType once per session and reports a mismatch;
    /// the simulator serves this type (default: Boolean, Int32, Double or
    /// String after the property's type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datatype: Option<UaDataType>,
}

/// The OPC UA built-in scalar types a property can map onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[allow(missing_docs)]
pub enum UaDataType {
    Boolean,
    SByte,
    Byte,
    Int16,
    UInt16,
    Int32,
    UInt32,
    Int64,
    UInt64,
    Float,
    Double,
    String,
}

impl UaDataType {
    /// Whether a property of type `ty` can live in a node of this type.
    pub fn fits(self, ty: ValueType) -> bool {
        use UaDataType::*;
        match ty {
            ValueType::Bool => self == Boolean,
            ValueType::Int => matches!(
                self,
                SByte | Byte | Int16 | UInt16 | Int32 | UInt32 | Int64 | UInt64
            ),
            ValueType::Float => matches!(
                self,
                Float | Double | SByte | Byte | Int16 | UInt16 | Int32 | UInt32 | Int64 | UInt64
            ),
            ValueType::String => self == String,
        }
    }

    /// The type the simulator serves for a property of type `ty`.
    pub fn default_for(ty: ValueType) -> Self {
        match ty {
            ValueType::Bool => UaDataType::Boolean,
            ValueType::Int => UaDataType::Int32,
            ValueType::Float => UaDataType::Double,
            ValueType::String => UaDataType::String,
        }
    }
}

impl fmt::Display for UaDataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// An OPC UA NodeId in its text form, checked for syntax.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(pub String);

impl FromStr for NodeId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        check_node_id(s).map(|()| NodeId(s.to_string()))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_type!(NodeId, "NodeId", {
    "type": "string",
    "description": "An OPC UA NodeId: [ns=N;](i=NUMBER|s=TEXT|g=GUID|b=BASE64)",
    "pattern": r"^(ns=[0-9]+;)?(i=[0-9]+|s=.+|g=[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|b=[A-Za-z0-9+/]+={0,2})$"
});

/// Checks the text form of a NodeId (OPC UA Part 6, 5.3.1.10).
///
/// A small hand-written check keeps this leaf crate free of the OPC UA stack;
/// the driver parses the same text with async-opcua when it connects.
fn check_node_id(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("bad NodeId `{s}`: {why}"));
    let rest = match s.strip_prefix("ns=") {
        Some(after) => {
            let Some((ns, rest)) = after.split_once(';') else {
                return bad("`ns=N` must be followed by `;`");
            };
            if ns.parse::<u16>().is_err() {
                return bad("the namespace index must be a number from 0 to 65535");
            }
            rest
        }
        None => s,
    };
    let Some((id_type, id)) = rest.split_once('=') else {
        return bad("expected i=, s=, g= or b= (for example ns=2;s=Boiler.Temperature)");
    };
    match id_type {
        "i" if id.parse::<u32>().is_ok() => Ok(()),
        "i" => bad("a numeric identifier (i=) must be a number from 0 to 4294967295"),
        "s" if !id.is_empty() => Ok(()),
        "s" => bad("the string identifier (s=) is empty"),
        "g" => {
            let groups: Vec<&str> = id.split('-').collect();
            let lens = [8, 4, 4, 4, 12];
            let ok = groups.len() == 5
                && groups
                    .iter()
                    .zip(lens)
                    .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
            if ok {
                Ok(())
            } else {
                bad("a GUID (g=) looks like 09087e75-8e5e-499b-954f-f2a9603db28a")
            }
        }
        "b" => {
            let body = id.trim_end_matches('=');
            let ok = !body.is_empty()
                && id.len() - body.len() <= 2
                && body
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
            if ok {
                Ok(())
            } else {
                bad("an opaque identifier (b=) must be base64")
            }
        }
        other => bad(&format!(
            "unknown identifier type `{other}=`; expected i=, s=, g= or b="
        )),
    }
}

/// An MQTT binding: where the device publishes the value, and where writes go.
///
/// A plain device names a `topic` (and optionally a `json` pointer and a
/// `command` topic); a Sparkplug B device names its `metric` instead, and
/// writes go out as DCMD (or NCMD for a node's own metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttBinding {
    /// Topic template; `{device}` becomes the device name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<TopicTemplate>,
    /// JSON Pointer into the payload. Without it, the payload is the bare value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<JsonPointer>,
    /// Topic template that a write is published on, such as
    /// `boiler/{device}/setpoint/set`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<TopicTemplate>,
    /// Sparkplug B metric name, such as `Inputs/Temperature`, for devices
    /// with `mqtt.sparkplug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// After a write, wait up to this long for the device to publish the
    /// written value before answering. Without it, a write answers once the
    /// command is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<Span>,
}

/// An MQTT topic with optional `{device}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicTemplate(pub String);

impl TopicTemplate {
    /// The topic for one device.
    pub fn render(&self, device: &str) -> String {
        self.0.replace("{device}", device)
    }
}

impl FromStr for TopicTemplate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("the topic is empty".into());
        }
        if s.contains(['+', '#', '\0']) {
            return Err(format!("topic `{s}` must not contain `+`, `#` or NUL"));
        }
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("topic `{s}` has a `{{` without a closing `}}`"));
            };
            let name = &rest[open + 1..open + close];
            if name != "device" {
                return Err(format!(
                    "topic `{s}`: unknown placeholder `{{{name}}}`; only {{device}} is known"
                ));
            }
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("topic `{s}` has a `}}` without an opening `{{`"));
        }
        Ok(TopicTemplate(s.to_string()))
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_type!(TopicTemplate, "TopicTemplate", {
    "type": "string",
    "description": "An MQTT topic; {device} is replaced by the device name",
    "pattern": r"^[^+#\u0000]+$"
});

/// A JSON Pointer (RFC 6901), such as `/value` or `/readings/0/t`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonPointer(pub String);

impl FromStr for JsonPointer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if !s.is_empty() && !s.starts_with('/') {
            return Err(format!(
                "JSON Pointer `{s}` must start with `/` (for example /value)"
            ));
        }
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(format!(
                    "JSON Pointer `{s}`: `~` must be followed by 0 or 1"
                ));
            }
        }
        Ok(JsonPointer(s.to_string()))
    }
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_type!(JsonPointer, "JsonPointer", {
    "type": "string",
    "description": "A JSON Pointer (RFC 6901) into the payload",
    "pattern": r"^(/([^~]|~[01])*)*$"
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip_and_know_their_width() {
        for text in [
            "bool",
            "u16",
            "i16",
            "u32",
            "i32",
            "u64",
            "i64",
            "f32",
            "f64",
            "string(10)",
        ] {
            let f: Format = text.parse().expect(text);
            assert_eq!(f.to_string(), text);
        }
        assert_eq!(Format::String(11).registers(), 6);
        assert_eq!(Format::U64.registers(), 4);
        assert!("u8".parse::<Format>().is_err());
        assert!("string(0)".parse::<Format>().is_err());
        assert!("string(x)".parse::<Format>().is_err());
    }

    #[test]
    fn node_ids_are_checked() {
        for ok in [
            "i=2258",
            "ns=2;s=Boiler.Temperature",
            "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a",
            "ns=3;b=M/RbKBsRVkePCePcx24oRA==",
        ] {
            assert!(ok.parse::<NodeId>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ns=2",
            "ns=x;i=1",
            "i=abc",
            "s=",
            "x=1",
            "ns=2;g=1234",
            "b=***",
        ] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn topics_and_pointers_are_checked() {
        assert_eq!(
            "boiler/{device}/t"
                .parse::<TopicTemplate>()
                .map(|t| t.render("b1")),
            Ok("boiler/b1/t".to_string())
        );
        assert!("a/{dev}".parse::<TopicTemplate>().is_err());
        assert!("a/+/b".parse::<TopicTemplate>().is_err());
        assert!("a/{device".parse::<TopicTemplate>().is_err());
        assert!("/value".parse::<JsonPointer>().is_ok());
        assert!("/a~1b/0".parse::<JsonPointer>().is_ok());
        assert!("value".parse::<JsonPointer>().is_err());
        assert!("/a~2".parse::<JsonPointer>().is_err());
    }
}
