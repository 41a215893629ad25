//! `-o json`: a `gofer.v1` message as JSON, made from the message's descriptor, so a field added to the
//! proto shows up here without code.
//!
//! prost-reflect writes the message in the proto3 JSON mapping with the proto field names, 64-bit
//! integers as numbers and every default value. One pass over the descriptor then makes it read as
//! goferctl's JSON always has:
//! - an enum value is its name without the enum's prefix (`SUCCEEDED`, not `RUN_STATE_SUCCEEDED`), and
//!   `UNKNOWN` for a number this goferctl does not know; inside a pipeline config it is lowercase, as the
//!   pipeline file that `pipeline register` reads spells it (`success`);
//! - an unset message field or `optional` field is `null`, not absent;
//! - bytes are text (lossy UTF-8), not base64: the only bytes goferctl prints are task logs;
//! - a oneof adds a key of its own name that names the field set (`"kind": "run"`), or `"unknown"`
//!   (and `"unknown": null`) when the server sent one this goferctl does not know.
//!
//! It knows no message by its fields, and it cannot fail on a server's answer: the messages are our
//! own generated types and the descriptors are compiled in.

use std::sync::OnceLock;

use base64::Engine as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions,
};
use serde_json::{Map, Value};

#[cfg(test)]
pub mod samples;
#[cfg(test)]
mod tests;

/// The message whose enum values print as the pipeline file spells them.
const PIPELINE_FILE: &str = "gofer.v1.PipelineConfig";

/// The name of a oneof's field when none that this goferctl knows is set.
const UNKNOWN_ONEOF_FIELD: &str = "unknown";

/// How enum values are spelled.
#[derive(Clone, Copy)]
enum Spelling {
    /// As the API names them, without the prefix: `SUCCEEDED`.
    Api,
    /// As the pipeline file names them: `success`.
    PipelineFile,
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(gofer_proto::FILE_DESCRIPTOR_SET).expect("the compiled-in descriptor set decodes")
    })
}

/// A message as `-o json` prints it.
pub fn value<M: prost::Name>(message: &M) -> Value {
    let descriptor = pool()
        .get_message_by_name(&M::full_name())
        .expect("every gofer.v1 message is in the compiled-in descriptor set");
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .expect("a message decodes with its own descriptor");
    dynamic_value(&dynamic)
}

/// Messages as a JSON array, as `-o json` prints a list.
pub fn values<M: prost::Name>(messages: &[M]) -> Value {
    Value::Array(messages.iter().map(value).collect())
}

fn dynamic_value(message: &DynamicMessage) -> Value {
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true)
        .skip_default_fields(false);
    let mut value = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("a message serializes to a JSON value");
    shape(&Kind::Message(message.descriptor()), &mut value, Spelling::Api);
    value
}

fn shape(kind: &Kind, value: &mut Value, spelling: Spelling) {
    match (kind, value) {
        (Kind::Enum(descriptor), value) => *value = Value::String(enum_name(descriptor, value, spelling)),
        (Kind::Bytes, Value::String(base64)) => {
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(base64.as_bytes()) {
                *base64 = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        (Kind::Message(descriptor), Value::Object(object)) => shape_message(descriptor, object, spelling),
        _ => {}
    }
}

fn shape_message(descriptor: &MessageDescriptor, object: &mut Map<String, Value>, spelling: Spelling) {
    let spelling = if descriptor.full_name() == PIPELINE_FILE {
        Spelling::PipelineFile
    } else {
        spelling
    };
    for field in descriptor.fields() {
        let in_oneof = field.containing_oneof().is_some_and(|oneof| !oneof.is_synthetic());
        match object.get_mut(field.name()) {
            Some(value) => shape_field(&field, value, spelling),
            None if in_oneof => {}
            None => {
                object.insert(field.name().to_string(), Value::Null);
            }
        }
    }
    for oneof in descriptor.oneofs().filter(|oneof| !oneof.is_synthetic()) {
        let set = oneof.fields().find(|field| object.contains_key(field.name()));
        let name = match set {
            Some(field) => field.name().to_string(),
            None => {
                object.insert(UNKNOWN_ONEOF_FIELD.to_string(), Value::Null);
                UNKNOWN_ONEOF_FIELD.to_string()
            }
        };
        object.insert(oneof.name().to_string(), Value::String(name));
    }
}

fn shape_field(field: &FieldDescriptor, value: &mut Value, spelling: Spelling) {
    let kind = field.kind();
    if field.is_map() {
        let value_kind = kind.as_message().map(|entry| entry.map_entry_value_field().kind());
        if let (Some(value_kind), Value::Object(entries)) = (value_kind, value) {
            entries
                .values_mut()
                .for_each(|entry| shape(&value_kind, entry, spelling));
        }
    } else if let (true, Value::Array(items)) = (field.is_list(), &mut *value) {
        items.iter_mut().for_each(|item| shape(&kind, item, spelling));
    } else {
        shape(&kind, value, spelling);
    }
}

/// An enum value's name without the prefix the proto style puts on every value (`RUN_STATE_` on
/// `RunState`'s). prost-reflect writes a number it has no name for as the number.
fn enum_name(descriptor: &EnumDescriptor, value: &Value, spelling: Spelling) -> String {
    let name = match value {
        Value::String(full) => {
            let prefix = format!("{}_", upper_snake_case(descriptor.name()));
            full.strip_prefix(&prefix).unwrap_or(full)
        }
        _ => "UNKNOWN",
    };
    match spelling {
        Spelling::Api => name.to_string(),
        Spelling::PipelineFile => name.to_lowercase(),
    }
}

/// `RunState` as `RUN_STATE`.
fn upper_snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}
