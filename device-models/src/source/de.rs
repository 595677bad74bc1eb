//! A serde deserializer over [`Node`] trees.
//!
//! Every error it returns carries the position of the node that caused it:
//! an unknown key points at the key, a bad value at the value, a missing field
//! at the mapping that lacks it.
//!
//! Plain scalars are typed by the YAML 1.2 core schema (`~`/`null`, `true`,
//! `42`, `0x2a`, `1.5`, `.inf`); quoted scalars are always strings. A string
//! field accepts any scalar, so `value: 40` and `value: "40"` both read "40".

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, Unexpected, Visitor};

use super::{Node, NodeValue, Pos};

/// A deserialization error with the position it refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    /// What went wrong.
    pub message: String,
    /// Where, once known.
    pub pos: Option<Pos>,
}

impl DeError {
    /// Fills in the position unless a deeper node already did.
    pub fn at(mut self, pos: Pos) -> Self {
        self.pos.get_or_insert(pos);
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            pos: None,
        }
    }
}

/// Deserializes a `T` from `node`.
pub fn from_node<'de, T: de::Deserialize<'de>>(node: &'de Node) -> Result<T, DeError> {
    T::deserialize(node)
}

/// What a plain scalar means under the core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resolved<'a> {
    /// `~`, `null` or nothing.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A negative or small integer.
    Int(i64),
    /// An integer too large for `i64`.
    UInt(u64),
    /// A float.
    Float(f64),
    /// Anything else.
    Str(&'a str),
}

/// Resolves a scalar's text to its core-schema type.
pub fn resolve(text: &str, plain: bool) -> Resolved<'_> {
    if !plain {
        return Resolved::Str(text);
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(v) = u64::from_str_radix(hex, 16)
    {
        return int(v);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(v) = u64::from_str_radix(oct, 8)
    {
        return int(v);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(v) = text.parse::<i64>() {
            return Resolved::Int(v);
        }
        if let Ok(v) = text.trim_start_matches('+').parse::<u64>() {
            return Resolved::UInt(v);
        }
    }
    let float_chars = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if float_chars
        && digits.bytes().any(|b| b.is_ascii_digit())
        && let Ok(v) = text.parse::<f64>()
    {
        return Resolved::Float(v);
    }
    Resolved::Str(text)
}

fn int(v: u64) -> Resolved<'static> {
    i64::try_from(v).map_or(Resolved::UInt(v), Resolved::Int)
}

impl Node {
    fn unexpected(&self) -> Unexpected<'_> {
        match &self.value {
            NodeValue::Scalar { text, plain } => match resolve(text, *plain) {
                Resolved::Null => Unexpected::Unit,
                Resolved::Bool(b) => Unexpected::Bool(b),
                Resolved::Int(i) => Unexpected::Signed(i),
                Resolved::UInt(u) => Unexpected::Unsigned(u),
                Resolved::Float(f) => Unexpected::Float(f),
                Resolved::Str(s) => Unexpected::Str(s),
            },
            NodeValue::Seq(_) => Unexpected::Seq,
            NodeValue::Map(_) => Unexpected::Map,
        }
    }

    fn is_null(&self) -> bool {
        matches!(&self.value, NodeValue::Scalar { text, plain } if resolve(text, *plain) == Resolved::Null)
    }
}

/// Forwards the listed methods to `deserialize_any`, keeping positions.
macro_rules! forward_to_any {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            self.deserialize_any(visitor)
        }
    )*};
}

impl<'de> Deserializer<'de> for &'de Node {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.value {
            NodeValue::Scalar { text, plain } => match resolve(text, *plain) {
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Int(i) => visitor.visit_i64(i),
                Resolved::UInt(u) => visitor.visit_u64(u),
                Resolved::Float(f) => visitor.visit_f64(f),
                Resolved::Str(s) => visitor.visit_str(s),
            },
            NodeValue::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter(),
            }),
            NodeValue::Map(entries) => visitor.visit_map(MapAccess {
                entries: entries.iter(),
                value: None,
            }),
        };
        result.map_err(|e: DeError| e.at(self.pos))
    }

    forward_to_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_bytes deserialize_byte_buf
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.value {
            NodeValue::Scalar { text, .. } => visitor.visit_str(text),
            _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        }
        .map_err(|e: DeError| e.at(self.pos))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
        .map_err(|e: DeError| e.at(self.pos))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.is_null() {
            visitor.visit_unit()
        } else {
            Err(de::Error::invalid_type(self.unexpected(), &visitor))
        }
        .map_err(|e: DeError| e.at(self.pos))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor
            .visit_newtype_struct(self)
            .map_err(|e: DeError| e.at(self.pos))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.value {
            NodeValue::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter(),
            }),
            _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        }
        .map_err(|e: DeError| e.at(self.pos))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        const EMPTY: &[(Node, Node)] = &[];
        match &self.value {
            NodeValue::Map(entries) => visitor.visit_map(MapAccess {
                entries: entries.iter(),
                value: None,
            }),
            // `mqtt:` with nothing after it reads as an empty mapping.
            _ if self.is_null() => visitor.visit_map(MapAccess {
                entries: EMPTY.iter(),
                value: None,
            }),
            _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        }
        .map_err(|e: DeError| e.at(self.pos))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.value {
            NodeValue::Scalar { .. } => visitor.visit_enum(EnumAccess {
                tag: self,
                content: None,
            }),
            NodeValue::Map(entries) if entries.len() == 1 => {
                let (tag, content) = &entries[0];
                visitor.visit_enum(EnumAccess {
                    tag,
                    content: Some(content),
                })
            }
            _ => Err(DeError {
                message: format!(
                    "expected {}, given as a name or as a mapping with one key",
                    visitor_name(&visitor)
                ),
                pos: None,
            }),
        }
        .map_err(|e: DeError| e.at(self.pos))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

fn visitor_name<'de, V: Visitor<'de>>(visitor: &V) -> String {
    struct Expecting<'a, V>(&'a V);
    impl<'de, V: Visitor<'de>> fmt::Display for Expecting<'_, V> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.expecting(f)
        }
    }
    Expecting(visitor).to_string()
}

struct SeqAccess<'de> {
    items: std::slice::Iter<'de, Node>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        self.items
            .next()
            .map(|item| seed.deserialize(item).map_err(|e| e.at(item.pos)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'de> {
    entries: std::slice::Iter<'de, (Node, Node)>,
    value: Option<&'de Node>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            None => Ok(None),
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(key).map(Some)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            // A `Deserialize` impl may fail after reading the value (a
            // `FromStr` check, say); pin such errors on the value too.
            Some(value) => seed.deserialize(value).map_err(|e| e.at(value.pos)),
            None => Err(de::Error::custom(
                "a mapping value was asked for before its key",
            )),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct EnumAccess<'de> {
    tag: &'de Node,
    content: Option<&'de Node>,
}

impl<'de> de::EnumAccess<'de> for EnumAccess<'de> {
    type Error = DeError;
    type Variant = VariantAccess<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), DeError> {
        let variant = seed.deserialize(self.tag)?;
        Ok((
            variant,
            VariantAccess {
                tag: self.tag,
                content: self.content,
            },
        ))
    }
}

struct VariantAccess<'de> {
    tag: &'de Node,
    content: Option<&'de Node>,
}

impl<'de> VariantAccess<'de> {
    fn content(&self) -> Result<&'de Node, DeError> {
        self.content.ok_or_else(|| DeError {
            message: format!("`{}` needs a value", self.tag.as_str().unwrap_or_default()),
            pos: Some(self.tag.pos),
        })
    }
}

impl<'de> de::VariantAccess<'de> for VariantAccess<'de> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.content {
            None => Ok(()),
            Some(c) if c.is_null() => Ok(()),
            Some(c) => Err(DeError {
                message: format!("`{}` takes no value", self.tag.as_str().unwrap_or_default()),
                pos: Some(c.pos),
            }),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        let content = self.content()?;
        seed.deserialize(content).map_err(|e| e.at(content.pos))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        self.content()?.deserialize_seq(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.content()?.deserialize_map(visitor)
    }
}

impl<'de> IntoDeserializer<'de, DeError> for &'de Node {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::yaml;

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        assert_eq!(resolve("~", true), Resolved::Null);
        assert_eq!(resolve("True", true), Resolved::Bool(true));
        assert_eq!(resolve("-42", true), Resolved::Int(-42));
        assert_eq!(resolve("0x2A", true), Resolved::Int(42));
        assert_eq!(
            resolve("18446744073709551615", true),
            Resolved::UInt(u64::MAX)
        );
        assert_eq!(resolve("1.5e3", true), Resolved::Float(1500.0));
        assert_eq!(resolve("-.inf", true), Resolved::Float(f64::NEG_INFINITY));
        assert_eq!(resolve("inf", true), Resolved::Str("inf"));
        assert_eq!(resolve("1s", true), Resolved::Str("1s"));
        assert_eq!(resolve("42", false), Resolved::Str("42"));
    }

    #[test]
    fn errors_point_at_the_offending_node() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct S {
            port: u16,
            name: String,
        }
        let docs = yaml::parse("name: x\nport: 70000\n", &mut Vec::new()).expect("yaml");
        let err = from_node::<S>(&docs[0]).expect_err("out of range");
        assert_eq!(err.pos, Some(Pos::new(2, 7)));
        assert!(err.message.contains("70000"), "{err}");
        let docs = yaml::parse("name: x\n", &mut Vec::new()).expect("yaml");
        let err = from_node::<S>(&docs[0]).expect_err("missing");
        assert_eq!(
            (err.pos, err.message.as_str()),
            (Some(Pos::new(1, 1)), "missing field `port`")
        );
    }
}
