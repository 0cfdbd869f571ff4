//! Avro JSON payloads from JSON values.
//!
//! Without a schema, a document's fields are written as they are (the gateway takes a bare
//! value for a union when exactly one of its branches fits, as for `["null", "string"]`).
//! With the Avro schema the document is written in, unions are written as Avro's JSON
//! encoding has them, `{"<branch type>": value}`, so that no union is ambiguous. Either way
//! the gateway validates the document and names each bad field by its path; values the
//! encoder cannot place are passed through for it to report.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::error::{Code, Error};

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];
const NAMED: [&str; 4] = ["record", "error", "enum", "fixed"];

/// The Avro JSON encoding of a document's fields (a JSON object of field names to values).
///
/// `schema` is the document's Avro schema (e.g. [`Schema::definition`](crate::Schema),
/// parsed): unions are then tagged with the first branch the value fits, `{"int": 3}`, named
/// types by their full names (`{"com.example.Address": {...}}`). JSON cannot tell bytes from
/// strings: a string fits a `bytes` branch as well as a `string` one (the first wins).
///
/// ```
/// use serde_json::json;
/// let schema = json!({"type": "record", "name": "Article", "fields": [
///     {"name": "body", "type": "string"},
///     {"name": "pages", "type": ["null", "int", "string"]}]});
/// let encoded = sluice_client::to_avro_json(&json!({"body": "Ebb", "pages": 3}), Some(&schema)).unwrap();
/// assert_eq!(encoded, r#"{"body":"Ebb","pages":{"int":3}}"#);
/// ```
pub fn to_avro_json(fields: &Value, schema: Option<&Value>) -> Result<String, Error> {
    if !fields.is_object() {
        return Err(Error::new(
            Code::InvalidArgument,
            format!(
                "a document is a JSON object of field names to values, not {}",
                kind_of(fields)
            ),
        ));
    }
    let encoded = match schema {
        None => serde_json::to_string(fields),
        Some(schema) => serde_json::to_string(&Encoder::new(schema).encode(schema, fields, "")),
    };
    encoded.map_err(|e| Error::new(Code::InvalidArgument, format!("document fields: {e}")))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

fn namespace_of(full_name: &str) -> &str {
    full_name
        .rsplit_once('.')
        .map_or("", |(namespace, _)| namespace)
}

/// Identity of a node of the schema (the schema outlives the encoder).
fn id(schema: &Value) -> usize {
    std::ptr::from_ref(schema) as usize
}

/// Walks a value along its schema, writing unions as `{"<branch>": value}`.
struct Encoder<'s> {
    names: HashMap<String, &'s Value>,
    full_names: HashMap<usize, String>,
}

impl<'s> Encoder<'s> {
    fn new(schema: &'s Value) -> Self {
        let mut encoder = Self {
            names: HashMap::new(),
            full_names: HashMap::new(),
        };
        encoder.collect(schema, "", 0);
        encoder
    }

    fn collect(&mut self, schema: &'s Value, namespace: &str, depth: usize) {
        if depth > 64 {
            return;
        }
        match schema {
            Value::Array(branches) => {
                for branch in branches {
                    self.collect(branch, namespace, depth + 1);
                }
            }
            Value::Object(node) => {
                let kind = node.get("type");
                let mut inner = namespace.to_owned();
                let named = match (kind, node.get("name")) {
                    (Some(Value::String(kind)), Some(Value::String(name)))
                        if NAMED.contains(&kind.as_str()) =>
                    {
                        Some(name)
                    }
                    _ => None,
                };
                if let Some(name) = named {
                    let own = node
                        .get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or(namespace);
                    let name = full_name(name, own);
                    inner = namespace_of(&name).to_owned();
                    self.names.insert(name.clone(), schema);
                    self.full_names.insert(id(schema), name);
                }
                if let Some(Value::Array(fields)) = node.get("fields") {
                    for field in fields {
                        if let Some(kind) = field.get("type") {
                            self.collect(kind, &inner, depth + 1);
                        }
                    }
                }
                for key in ["items", "values"] {
                    if let Some(nested) = node.get(key) {
                        self.collect(nested, &inner, depth + 1);
                    }
                }
                if let Some(kind @ (Value::Array(_) | Value::Object(_))) = kind {
                    self.collect(kind, &inner, depth + 1);
                }
            }
            _ => {}
        }
    }

    /// What a (possibly named, possibly wrapped) schema is, and the namespace inside it.
    fn resolve(&self, mut schema: &'s Value, mut namespace: String) -> (&'s Value, String) {
        // Bounded: a name cannot refer to itself through wrappers forever.
        for _ in 0..64 {
            match schema {
                Value::String(name) if !PRIMITIVES.contains(&name.as_str()) => {
                    let found = self
                        .names
                        .get(&full_name(name, &namespace))
                        .or_else(|| self.names.get(name.as_str()));
                    match found {
                        Some(found) => schema = found,
                        None => return (schema, namespace),
                    }
                }
                Value::Object(node) => match node.get("type") {
                    Some(wrapped @ (Value::Array(_) | Value::Object(_))) => schema = wrapped,
                    Some(Value::String(kind))
                        if !PRIMITIVES.contains(&kind.as_str())
                            && !NAMED.contains(&kind.as_str())
                            && kind != "array"
                            && kind != "map" =>
                    {
                        schema = node.get("type").unwrap_or(schema);
                    }
                    _ => break,
                },
                _ => break,
            }
        }
        if let Some(name) = self.full_names.get(&id(schema)) {
            namespace = namespace_of(name).to_owned();
        }
        (schema, namespace)
    }

    /// The name Avro's JSON encoding tags a resolved union branch with.
    fn type_name(&self, schema: &Value) -> String {
        match schema {
            Value::String(name) => name.clone(),
            _ => self
                .full_names
                .get(&id(schema))
                .cloned()
                .unwrap_or_else(|| match schema.get("type") {
                    Some(Value::String(kind)) => kind.clone(),
                    other => other.map(Value::to_string).unwrap_or_default(),
                }),
        }
    }

    fn fits(&self, schema: &'s Value, value: &Value, namespace: &str) -> bool {
        let (schema, _) = self.resolve(schema, namespace.to_owned());
        let kind = match schema {
            Value::String(kind) => kind.as_str(),
            Value::Object(node) => node.get("type").and_then(Value::as_str).unwrap_or(""),
            // A union directly inside a union is not Avro.
            _ => return false,
        };
        match kind {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "int" | "long" => value.is_i64() || value.is_u64(),
            "float" | "double" => value.is_number(),
            "bytes" | "fixed" | "string" => value.is_string(),
            "enum" => value.as_str().is_some_and(|symbol| {
                schema
                    .get("symbols")
                    .and_then(Value::as_array)
                    .is_some_and(|symbols| symbols.iter().any(|s| s.as_str() == Some(symbol)))
            }),
            "array" => value.is_array(),
            "map" => value.is_object(),
            "record" | "error" => match value {
                Value::Object(record) => {
                    let fields = schema.get("fields").and_then(Value::as_array);
                    record.keys().all(|key| {
                        fields.is_some_and(|fields| {
                            fields
                                .iter()
                                .any(|f| f.get("name").and_then(Value::as_str) == Some(key))
                        })
                    })
                }
                _ => false,
            },
            _ => false,
        }
    }

    fn encode(&self, schema: &'s Value, value: &Value, namespace: &str) -> Value {
        if let Value::Array(branches) = schema {
            return self.union(branches, value, namespace);
        }
        let (schema, namespace) = self.resolve(schema, namespace.to_owned());
        if let Value::Array(branches) = schema {
            return self.union(branches, value, &namespace);
        }
        if schema.is_string() || !self.fits(schema, value, &namespace) {
            return value.clone();
        }
        match (schema.get("type").and_then(Value::as_str), value) {
            (Some("record" | "error"), Value::Object(record)) => {
                let fields = schema.get("fields").and_then(Value::as_array);
                let field = |name: &str| {
                    fields?
                        .iter()
                        .find(|f| f.get("name").and_then(Value::as_str) == Some(name))?
                        .get("type")
                };
                let encoded: Map<String, Value> = record
                    .iter()
                    .map(|(key, item)| {
                        let item = match field(key) {
                            Some(kind) => self.encode(kind, item, &namespace),
                            None => item.clone(),
                        };
                        (key.clone(), item)
                    })
                    .collect();
                Value::Object(encoded)
            }
            (Some("array"), Value::Array(items)) => match schema.get("items") {
                Some(kind) => Value::Array(
                    items
                        .iter()
                        .map(|item| self.encode(kind, item, &namespace))
                        .collect(),
                ),
                None => value.clone(),
            },
            (Some("map"), Value::Object(entries)) => match schema.get("values") {
                Some(kind) => Value::Object(
                    entries
                        .iter()
                        .map(|(key, item)| (key.clone(), self.encode(kind, item, &namespace)))
                        .collect(),
                ),
                None => value.clone(),
            },
            _ => value.clone(),
        }
    }

    fn union(&self, branches: &'s [Value], value: &Value, namespace: &str) -> Value {
        if value.is_null() {
            return Value::Null;
        }
        for branch in branches {
            if self.fits(branch, value, namespace) {
                let (resolved, _) = self.resolve(branch, namespace.to_owned());
                let mut tagged = Map::new();
                tagged.insert(
                    self.type_name(resolved),
                    self.encode(branch, value, namespace),
                );
                return Value::Object(tagged);
            }
        }
        value.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encode(fields: Value, schema: Value) -> Value {
        serde_json::from_str(&to_avro_json(&fields, Some(&schema)).unwrap()).unwrap()
    }

    #[test]
    fn without_a_schema_fields_are_written_as_they_are() {
        let fields = json!({"title": "T", "text": "x", "tags": ["a"], "n": null});
        let encoded = to_avro_json(&fields, None).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&encoded).unwrap(), fields);
    }

    #[test]
    fn a_document_is_an_object() {
        let error = to_avro_json(&json!(["text"]), None).unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().contains("not an array"), "{error}");
    }

    #[test]
    fn unions_are_tagged_with_the_first_branch_that_fits() {
        let schema = json!({"type": "record", "name": "Article", "namespace": "com.example",
        "fields": [
            {"name": "headline", "type": "string"},
            {"name": "pages", "type": ["null", "int", "string"]},
            {"name": "ratio", "type": ["null", "long", "double"]},
            {"name": "flag", "type": ["null", "boolean"]},
            {"name": "missing", "type": ["null", "string"]},
        ]});
        let fields = json!({"headline": "Ebb", "pages": "iv", "ratio": 0.5, "flag": true,
                            "missing": null});
        assert_eq!(
            encode(fields, schema.clone()),
            json!({"headline": "Ebb", "pages": {"string": "iv"}, "ratio": {"double": 0.5},
                   "flag": {"boolean": true}, "missing": null})
        );
        // A field the schema does not have: the record is not the schema's, and is written
        // as it is, for the gateway to name the field.
        let stray = json!({"pages": 3, "extra": 1});
        assert_eq!(encode(stray.clone(), schema.clone()), stray);
        assert_eq!(
            encode(json!({"pages": 3, "ratio": 2}), schema),
            json!({"pages": {"int": 3}, "ratio": {"long": 2}})
        );
    }

    #[test]
    fn named_types_are_tagged_by_full_name_through_references() {
        let schema = json!({"type": "record", "name": "Doc", "namespace": "ns",
        "fields": [
            {"name": "home", "type": ["null",
                {"type": "record", "name": "Address", "fields": [
                    {"name": "city", "type": "string"},
                    {"name": "zip", "type": ["null", "string"]}]}]},
            {"name": "work", "type": ["null", "Address"]},
            {"name": "mood", "type": ["null",
                {"type": "enum", "name": "Mood", "namespace": "other", "symbols": ["HAPPY"]}]},
            {"name": "scores", "type": {"type": "map", "values": ["null", "float"]}},
            {"name": "notes", "type": {"type": "array", "items": ["null", "string"]}},
            {"name": "stamp", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}]},
        ]});
        let fields = json!({"home": {"city": "Oslo", "zip": "0150"}, "work": {"city": "Bergen"},
                            "mood": "HAPPY", "scores": {"a": 1.5, "b": null},
                            "notes": ["x", null], "stamp": 1700000000000_i64});
        assert_eq!(
            encode(fields, schema),
            json!({"home": {"ns.Address": {"city": "Oslo", "zip": {"string": "0150"}}},
                   "work": {"ns.Address": {"city": "Bergen"}},
                   "mood": {"other.Mood": "HAPPY"},
                   "scores": {"a": {"float": 1.5}, "b": null},
                   "notes": [{"string": "x"}, null],
                   "stamp": {"long": 1700000000000_i64}})
        );
    }

    #[test]
    fn what_fits_no_branch_is_passed_through_for_the_gateway_to_report() {
        let schema = json!({"type": "record", "name": "R", "fields": [
            {"name": "n", "type": ["null", "int"]},
            {"name": "sym", "type": {"type": "enum", "name": "E", "symbols": ["A"]}},
            {"name": "unknown", "type": ["null", "NoSuchType"]}]});
        assert_eq!(
            encode(json!({"n": "five", "sym": "B", "unknown": 1}), schema),
            json!({"n": "five", "sym": "B", "unknown": 1})
        );
    }

    #[test]
    fn a_self_referencing_schema_terminates() {
        let schema = json!({"type": "record", "name": "Node", "fields": [
            {"name": "next", "type": ["null", "Node"]},
            {"name": "loop", "type": {"type": {"type": "Loop"}}}]});
        assert_eq!(
            encode(json!({"next": {"next": null}, "loop": 1}), schema),
            json!({"next": {"Node": {"next": null}}, "loop": 1})
        );
    }
}
