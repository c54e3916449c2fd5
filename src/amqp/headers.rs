//! AMQP header tables <-> JSON, for storing dead letters' headers and republishing them.

use base64::{Engine, engine::general_purpose::STANDARD};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value};

/// Lossy only where JSON has no type: byte arrays become base64 strings, decimals numbers.
pub fn to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Float(n) => serde_json::Number::from_f64(f64::from(*n)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => serde_json::Number::from_f64(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
            .map_or(Value::Null, Value::Number),
        AMQPValue::ShortString(s) => s.as_str().into(),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => text.into(),
            Err(_) => STANDARD.encode(s.as_bytes()).into(),
        },
        AMQPValue::FieldArray(items) => Value::Array(items.as_slice().iter().map(to_json).collect()),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::FieldTable(table) => table_to_json(table),
        AMQPValue::ByteArray(bytes) => STANDARD.encode(bytes.as_slice()).into(),
        AMQPValue::Void => Value::Null,
    }
}

pub fn table_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
            .collect::<Map<_, _>>(),
    )
}

/// Back to AMQP for republishing: strings, integers, booleans, nested objects and lists.
pub fn from_json(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(items) => AMQPValue::FieldArray(items.iter().map(from_json).collect::<Vec<_>>().into()),
        Value::Object(map) => {
            let mut table = FieldTable::default();
            for (k, v) in map {
                table.insert(k.as_str().into(), from_json(v));
            }
            AMQPValue::FieldTable(table)
        }
    }
}
