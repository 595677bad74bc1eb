//! Property values to and from OPC UA Variants.
//!
//! A property has one of four types (bool, int, float, string); the node
//! behind it has one of twelve scalar DataTypes. Writing converts the value
//! into the node's DataType and refuses what does not fit (300 into a Byte,
//! 2.5 into an Int32) instead of letting it wrap or round. Reading converts
//! back and refuses a Variant that does not match the property's type.

use opcua_types::{DataTypeId, NodeId, UAString, Variant};

use crate::model::{UaDataType, ValueType};
use crate::value::Value;

impl UaDataType {
    /// Its well-known DataType id in namespace 0.
    pub fn id(self) -> DataTypeId {
        match self {
            UaDataType::Boolean => DataTypeId::Boolean,
            UaDataType::SByte => DataTypeId::SByte,
            UaDataType::Byte => DataTypeId::Byte,
            UaDataType::Int16 => DataTypeId::Int16,
            UaDataType::UInt16 => DataTypeId::UInt16,
            UaDataType::Int32 => DataTypeId::Int32,
            UaDataType::UInt32 => DataTypeId::UInt32,
            UaDataType::Int64 => DataTypeId::Int64,
            UaDataType::UInt64 => DataTypeId::UInt64,
            UaDataType::Float => DataTypeId::Float,
            UaDataType::Double => DataTypeId::Double,
            UaDataType::String => DataTypeId::String,
        }
    }

    /// The scalar type a DataType node id names, if it is one of the twelve.
    pub fn from_node_id(id: &NodeId) -> Option<Self> {
        use UaDataType::*;
        [
            Boolean, SByte, Byte, Int16, UInt16, Int32, UInt32, Int64, UInt64, Float, Double,
            String,
        ]
        .into_iter()
        .find(|t| *id == t.id())
    }
}

/// Converts `value` into a Variant of type `datatype`, refusing values the
/// type cannot hold exactly.
pub fn to_variant(value: &Value, datatype: UaDataType) -> Result<Variant, String> {
    use UaDataType as T;
    let out_of_range = || format!("{value} does not fit the node's DataType {datatype}");
    let whole = |f: f64| -> Result<i128, String> {
        if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e30 {
            Ok(f as i128)
        } else {
            Err(format!(
                "{value} is not a whole number, and the node's DataType is {datatype}"
            ))
        }
    };
    let int = |v: &Value| -> Result<i128, String> {
        match v {
            Value::Int(i) => Ok(i128::from(*i)),
            Value::Float(f) => whole(*f),
            Value::Bool(_) | Value::String(_) => Err(mismatch(v, datatype)),
        }
    };
    macro_rules! integer {
        ($variant:ident, $ty:ty) => {{
            let i = int(value)?;
            <$ty>::try_from(i)
                .map(Variant::$variant)
                .map_err(|_| out_of_range())
        }};
    }
    match datatype {
        T::Boolean => match value {
            Value::Bool(b) => Ok(Variant::Boolean(*b)),
            _ => Err(mismatch(value, datatype)),
        },
        T::String => match value {
            Value::String(s) => Ok(Variant::String(UAString::from(s.as_str()))),
            _ => Err(mismatch(value, datatype)),
        },
        T::SByte => integer!(SByte, i8),
        T::Byte => integer!(Byte, u8),
        T::Int16 => integer!(Int16, i16),
        T::UInt16 => integer!(UInt16, u16),
        T::Int32 => integer!(Int32, i32),
        T::UInt32 => integer!(UInt32, u32),
        T::Int64 => integer!(Int64, i64),
        T::UInt64 => integer!(UInt64, u64),
        T::Float => {
            let f = value.as_f64().ok_or_else(|| mismatch(value, datatype))?;
            let narrow = f as f32;
            if f.is_finite() && !narrow.is_finite() {
                return Err(out_of_range());
            }
            Ok(Variant::Float(narrow))
        }
        T::Double => value
            .as_f64()
            .map(Variant::Double)
            .ok_or_else(|| mismatch(value, datatype)),
    }
}

fn mismatch(value: &Value, datatype: UaDataType) -> String {
    format!("{value} cannot be written to a node of DataType {datatype}")
}

/// Converts a Variant read from a node into a value of type `ty`.
pub fn from_variant(variant: &Variant, ty: ValueType) -> Result<Value, String> {
    let int = match variant {
        Variant::SByte(v) => Some(i128::from(*v)),
        Variant::Byte(v) => Some(i128::from(*v)),
        Variant::Int16(v) => Some(i128::from(*v)),
        Variant::UInt16(v) => Some(i128::from(*v)),
        Variant::Int32(v) => Some(i128::from(*v)),
        Variant::UInt32(v) => Some(i128::from(*v)),
        Variant::Int64(v) => Some(i128::from(*v)),
        Variant::UInt64(v) => Some(i128::from(*v)),
        _ => None,
    };
    let float = match variant {
        Variant::Float(f) => Some(f64::from(*f)),
        Variant::Double(f) => Some(*f),
        _ => None,
    };
    let wrong = || format!("the node holds {:?}, not a {ty}", variant.type_id());
    match ty {
        ValueType::Bool => match variant {
            Variant::Boolean(b) => Ok(Value::Bool(*b)),
            _ => Err(wrong()),
        },
        ValueType::String => match variant {
            Variant::String(s) => Ok(Value::String(s.value().clone().unwrap_or_default())),
            _ => Err(wrong()),
        },
        ValueType::Int => match int {
            Some(i) => i64::try_from(i)
                .map(Value::Int)
                .map_err(|_| format!("{i} does not fit a 64-bit int")),
            None => Err(wrong()),
        },
        ValueType::Float => match (float, int) {
            (Some(f), _) => Ok(Value::Float(f)),
            (None, Some(i)) => Ok(Value::Float(i as f64)),
            (None, None) => Err(wrong()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_must_fit_the_node_type_exactly() {
        assert_eq!(
            to_variant(&Value::Int(255), UaDataType::Byte),
            Ok(Variant::Byte(255))
        );
        assert!(to_variant(&Value::Int(256), UaDataType::Byte).is_err());
        assert!(to_variant(&Value::Int(-1), UaDataType::UInt64).is_err());
        assert_eq!(
            to_variant(&Value::Float(-3.0), UaDataType::Int16),
            Ok(Variant::Int16(-3))
        );
        assert!(to_variant(&Value::Float(2.5), UaDataType::Int32).is_err());
        assert!(to_variant(&Value::Float(1e300), UaDataType::Float).is_err());
        assert!(to_variant(&Value::Bool(true), UaDataType::Int32).is_err());
        assert!(to_variant(&Value::String("x".into()), UaDataType::Boolean).is_err());
    }

    #[test]
    fn every_type_round_trips() {
        use UaDataType::*;
        let cases = [
            (Boolean, ValueType::Bool, Value::Bool(true)),
            (SByte, ValueType::Int, Value::Int(-128)),
            (Byte, ValueType::Int, Value::Int(200)),
            (Int16, ValueType::Int, Value::Int(-30000)),
            (UInt16, ValueType::Int, Value::Int(65535)),
            (Int32, ValueType::Int, Value::Int(-2_000_000_000)),
            (UInt32, ValueType::Int, Value::Int(4_000_000_000)),
            (Int64, ValueType::Int, Value::Int(i64::MIN)),
            (UInt64, ValueType::Int, Value::Int(i64::MAX)),
            (Float, ValueType::Float, Value::Float(1.5)),
            (Double, ValueType::Float, Value::Float(-0.1)),
            (String, ValueType::String, Value::String("grün".into())),
        ];
        for (datatype, ty, value) in cases {
            let variant = to_variant(&value, datatype).expect("fits");
            assert_eq!(
                UaDataType::from_node_id(&datatype.id().into()),
                Some(datatype)
            );
            assert_eq!(from_variant(&variant, ty), Ok(value), "{datatype}");
        }
        assert!(from_variant(&Variant::UInt64(u64::MAX), ValueType::Int).is_err());
        assert!(from_variant(&Variant::Boolean(true), ValueType::Float).is_err());
    }
}
