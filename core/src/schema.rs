//! The Avro document schema: what a valid payload is, and what in it gets embedded.
//!
//! A schema declares its roles with a custom field property, `"sluice.role"`:
//! - `"text"` on exactly one string field: the text to chunk and embed;
//! - `"attribute"` on string (or nullable string) fields: stored with every chunk, filterable.
//!
//! Payloads come as Avro binary or in Avro's JSON encoding. JSON is decoded field by field
//! against the schema so a mistake is reported with its path (`tags[2]: expected string, found
//! number`), then re-encoded as binary: Kafka only ever holds binary Avro.

use std::collections::{BTreeMap, HashMap};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, RecordSchema, ResolvedSchema};
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// The default document schema, `schemas/document.avsc`.
pub const DEFAULT_DOCUMENT_SCHEMA: &str = include_str!("../../schemas/document.avsc");

const ROLE: &str = "sluice.role";

/// One thing wrong with a payload, addressed by its path inside the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// e.g. `tags[2]`, `title`, or empty for the payload as a whole.
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl std::fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.description)
        } else {
            write!(f, "{}: {}", self.field, self.description)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid Avro schema: {0}")]
    Invalid(String),
    #[error("schema must be a record with exactly one string field marked \"sluice.role\": \"text\" ({0})")]
    NoTextField(String),
    #[error("attribute field {0} must be a string or a nullable string")]
    BadAttributeField(String),
}

/// What the worker needs from a decoded payload.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentContent {
    pub text: String,
    /// The schema's attribute fields that are set.
    pub attributes: BTreeMap<String, String>,
}

/// A parsed document schema with its roles resolved.
#[derive(Debug, Clone)]
pub struct DocumentSchema {
    schema: Schema,
    /// Named types the schema references but does not define (registry references).
    referenced: Vec<Schema>,
    names: HashMap<Name, Schema>,
    text_field: String,
    attribute_fields: Vec<String>,
    fingerprint: String,
}

impl DocumentSchema {
    /// The schema in `schemas/document.avsc`.
    pub fn default_document() -> Self {
        Self::parse(DEFAULT_DOCUMENT_SCHEMA).expect("schemas/document.avsc is valid")
    }

    pub fn parse(json: &str) -> Result<Self, SchemaError> {
        Self::parse_with_references(json, &[] as &[&str])
    }

    /// Parses a schema that uses named types defined in `references` (the schema texts of a
    /// registry's references, dependencies first).
    pub fn parse_with_references(
        json: &str,
        references: &[impl AsRef<str>],
    ) -> Result<Self, SchemaError> {
        let invalid = |e: apache_avro::Error| SchemaError::Invalid(e.to_string());
        let (schema, referenced) = if references.is_empty() {
            (Schema::parse_str(json).map_err(invalid)?, Vec::new())
        } else {
            Schema::parse_str_with_list(json, references).map_err(invalid)?
        };
        let names = ResolvedSchema::new_with_schemata(
            std::iter::once(&schema).chain(&referenced).collect(),
        )
        .map_err(invalid)?
        .get_names()
        .iter()
        .map(|(name, schema)| (name.clone(), (*schema).clone()))
        .collect();
        let Schema::Record(record) = &schema else {
            return Err(SchemaError::NoTextField("not a record".into()));
        };
        let role = |field: &apache_avro::schema::RecordField| {
            field
                .custom_attributes
                .get(ROLE)
                .and_then(Json::as_str)
                .map(str::to_owned)
        };
        let text_fields: Vec<_> = record
            .fields
            .iter()
            .filter(|f| role(f).as_deref() == Some("text"))
            .collect();
        let text_field = match text_fields.as_slice() {
            [field] if is_string_like(&field.schema) => field.name.clone(),
            [field] => {
                return Err(SchemaError::NoTextField(format!(
                    "{} is not a string",
                    field.name
                )))
            }
            [] => return Err(SchemaError::NoTextField("none marked".into())),
            _ => return Err(SchemaError::NoTextField("more than one marked".into())),
        };
        let mut attribute_fields = Vec::new();
        for field in record
            .fields
            .iter()
            .filter(|f| role(f).as_deref() == Some("attribute"))
        {
            if !is_string_like(&field.schema) {
                return Err(SchemaError::BadAttributeField(field.name.clone()));
            }
            attribute_fields.push(field.name.clone());
        }
        let fingerprint = hex::encode(Sha256::digest(schema.canonical_form().as_bytes()));
        Ok(Self {
            schema,
            referenced,
            names,
            text_field,
            attribute_fields,
            fingerprint,
        })
    }

    /// SHA-256 of the schema's Parsing Canonical Form, hex: names the schema in Kafka headers.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn text_field(&self) -> &str {
        &self.text_field
    }

    pub fn attribute_fields(&self) -> &[String] {
        &self.attribute_fields
    }

    /// Decodes a payload in Avro's JSON encoding and returns it as Avro binary.
    pub fn encode_json(&self, json: &str) -> Result<Vec<u8>, Vec<FieldViolation>> {
        let json: Json = serde_json::from_str(json)
            .map_err(|e| vec![FieldViolation::new("", format!("not valid JSON: {e}"))])?;
        let mut violations = Vec::new();
        let value = self.decode_json(&self.schema, &json, "", &mut violations);
        if !violations.is_empty() {
            return Err(violations);
        }
        let value = value.expect("no violations means a value");
        GenericDatumWriter::builder(&self.schema)
            .schemata(self.referenced.iter().collect())
            .and_then(|builder| builder.build())
            .and_then(|writer| writer.write_value_to_vec(value))
            .map_err(|e| {
                vec![FieldViolation::new(
                    "",
                    format!("does not match the schema: {e}"),
                )]
            })
    }

    /// Checks that `bytes` is exactly one Avro binary datum of this schema, and returns the
    /// text and attributes it declares.
    pub fn decode_binary(&self, bytes: &[u8]) -> Result<DocumentContent, Vec<FieldViolation>> {
        let mut reader = bytes;
        let value = GenericDatumReader::builder(&self.schema)
            .writer_schemata(self.referenced.iter().collect())
            .and_then(|builder| builder.build())
            .and_then(|datum| datum.read_value(&mut reader))
            .map_err(|e| {
                vec![FieldViolation::new(
                    "",
                    format!("not Avro binary of the document schema: {e}"),
                )]
            })?;
        if !reader.is_empty() {
            return Err(vec![FieldViolation::new(
                "",
                format!("{} bytes left over after the document", reader.len()),
            )]);
        }
        self.content(value)
    }

    /// Pulls out the declared text and attributes; the text must not be blank.
    fn content(&self, value: Value) -> Result<DocumentContent, Vec<FieldViolation>> {
        let Value::Record(fields) = value else {
            return Err(vec![FieldViolation::new("", "expected a record")]);
        };
        let mut text = None;
        let mut attributes = BTreeMap::new();
        for (name, value) in fields {
            if name == self.text_field {
                text = string_of(value);
            } else if self.attribute_fields.contains(&name) {
                if let Some(value) = string_of(value) {
                    attributes.insert(name, value);
                }
            }
        }
        match text {
            Some(text) if !text.trim().is_empty() => Ok(DocumentContent { text, attributes }),
            _ => Err(vec![FieldViolation::new(
                &self.text_field,
                "must not be empty",
            )]),
        }
    }

    /// Avro JSON → Avro value, guided by the schema; collects every violation with its path.
    fn decode_json(
        &self,
        schema: &Schema,
        json: &Json,
        path: &str,
        violations: &mut Vec<FieldViolation>,
    ) -> Option<Value> {
        let wrong = |violations: &mut Vec<FieldViolation>, expected: &str| {
            violations.push(FieldViolation::new(
                path,
                format!("expected {expected}, found {}", json_kind(json)),
            ));
            None
        };
        match schema {
            Schema::Null => json
                .is_null()
                .then_some(Value::Null)
                .or_else(|| wrong(violations, "null")),
            Schema::Boolean => json
                .as_bool()
                .map(Value::Boolean)
                .or_else(|| wrong(violations, "boolean")),
            Schema::Int => int_of(json)
                .map(Value::Int)
                .or_else(|| wrong(violations, "int")),
            Schema::Date => int_of(json)
                .map(Value::Date)
                .or_else(|| wrong(violations, "int (date)")),
            Schema::TimeMillis => int_of(json)
                .map(Value::TimeMillis)
                .or_else(|| wrong(violations, "int")),
            Schema::Long => json
                .as_i64()
                .map(Value::Long)
                .or_else(|| wrong(violations, "long")),
            Schema::TimeMicros => json
                .as_i64()
                .map(Value::TimeMicros)
                .or_else(|| wrong(violations, "long")),
            Schema::TimestampMillis => json
                .as_i64()
                .map(Value::TimestampMillis)
                .or_else(|| wrong(violations, "long (timestamp-millis)")),
            Schema::TimestampMicros => json
                .as_i64()
                .map(Value::TimestampMicros)
                .or_else(|| wrong(violations, "long (timestamp-micros)")),
            Schema::TimestampNanos => json
                .as_i64()
                .map(Value::TimestampNanos)
                .or_else(|| wrong(violations, "long")),
            Schema::LocalTimestampMillis => json
                .as_i64()
                .map(Value::LocalTimestampMillis)
                .or_else(|| wrong(violations, "long")),
            Schema::LocalTimestampMicros => json
                .as_i64()
                .map(Value::LocalTimestampMicros)
                .or_else(|| wrong(violations, "long")),
            Schema::LocalTimestampNanos => json
                .as_i64()
                .map(Value::LocalTimestampNanos)
                .or_else(|| wrong(violations, "long")),
            Schema::Float => json
                .as_f64()
                .map(|f| Value::Float(f as f32))
                .or_else(|| wrong(violations, "float")),
            Schema::Double => json
                .as_f64()
                .map(Value::Double)
                .or_else(|| wrong(violations, "double")),
            Schema::String => json
                .as_str()
                .map(|s| Value::String(s.into()))
                .or_else(|| wrong(violations, "string")),
            Schema::Uuid(_) => match json.as_str().map(uuid::Uuid::parse_str) {
                Some(Ok(uuid)) => Some(Value::Uuid(uuid)),
                _ => wrong(violations, "a UUID string"),
            },
            // Avro's JSON encoding writes bytes as a string of code points 0–255.
            Schema::Bytes => latin1_bytes(json)
                .map(Value::Bytes)
                .or_else(|| wrong(violations, "bytes (a string of code points 0-255)")),
            Schema::Fixed(fixed) => match latin1_bytes(json) {
                Some(bytes) if bytes.len() == fixed.size => Some(Value::Fixed(fixed.size, bytes)),
                _ => wrong(violations, &format!("fixed of {} bytes", fixed.size)),
            },
            Schema::Enum(e) => match json.as_str() {
                Some(symbol) => match e.symbols.iter().position(|s| s == symbol) {
                    Some(index) => Some(Value::Enum(index as u32, symbol.into())),
                    None => {
                        violations.push(FieldViolation::new(
                            path,
                            format!("{symbol:?} is not one of {}", e.symbols.join(", ")),
                        ));
                        None
                    }
                },
                None => wrong(violations, "an enum symbol string"),
            },
            Schema::Array(array) => {
                let Some(items) = json.as_array() else {
                    return wrong(violations, "array");
                };
                let values: Vec<_> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        self.decode_json(&array.items, item, &format!("{path}[{i}]"), violations)
                    })
                    .collect();
                values
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .map(Value::Array)
            }
            Schema::Map(map) => {
                let Some(entries) = json.as_object() else {
                    return wrong(violations, "map (object)");
                };
                let mut out = HashMap::new();
                let mut ok = true;
                for (key, item) in entries {
                    match self.decode_json(&map.types, item, &join(path, key), violations) {
                        Some(value) => {
                            out.insert(key.clone(), value);
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(Value::Map(out))
            }
            Schema::Record(record) => self.record_from_json(record, json, path, violations),
            Schema::Union(union) => {
                let variants = union.variants();
                if json.is_null() {
                    return match variants.iter().position(|v| matches!(v, Schema::Null)) {
                        Some(i) => Some(Value::Union(i as u32, Box::new(Value::Null))),
                        None => wrong(
                            violations,
                            &format!("one of {}", self.union_names(variants)),
                        ),
                    };
                }
                // Avro's JSON encoding: {"<branch type name>": value}.
                if let Some((branch, inner)) = json
                    .as_object()
                    .filter(|o| o.len() == 1)
                    .and_then(|o| o.iter().next())
                {
                    if let Some(i) = variants.iter().position(|v| self.type_name(v) == *branch) {
                        let inner = self.decode_json(&variants[i], inner, path, violations)?;
                        return Some(Value::Union(i as u32, Box::new(inner)));
                    }
                }
                // Leniency for people typing JSON by hand: a bare value that fits exactly one
                // non-null branch is taken as that branch.
                let mut fits = variants
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !matches!(v, Schema::Null))
                    .filter_map(|(i, v)| {
                        let mut scratch = Vec::new();
                        self.decode_json(v, json, path, &mut scratch)
                            .map(|value| (i, value))
                    });
                match (fits.next(), fits.next()) {
                    (Some((i, value)), None) => Some(Value::Union(i as u32, Box::new(value))),
                    _ => wrong(
                        violations,
                        &format!(
                            "one of {} (Avro JSON writes a union as {{\"<type>\": value}})",
                            self.union_names(variants)
                        ),
                    ),
                }
            }
            Schema::Ref { name } => match self.names.get(name) {
                Some(schema) => self.decode_json(schema, json, path, violations),
                None => wrong(violations, &format!("a value of the unknown type {name}")),
            },
            Schema::Decimal(_) | Schema::BigDecimal | Schema::Duration(_) => {
                violations.push(FieldViolation::new(path, "decimal and duration fields are not supported in JSON payloads; send Avro binary"));
                None
            }
        }
    }

    fn record_from_json(
        &self,
        record: &RecordSchema,
        json: &Json,
        path: &str,
        violations: &mut Vec<FieldViolation>,
    ) -> Option<Value> {
        let Some(object) = json.as_object() else {
            violations.push(FieldViolation::new(
                path,
                format!("expected record {}, found {}", record.name, json_kind(json)),
            ));
            return None;
        };
        for key in object.keys() {
            if !record.lookup.contains_key(key) {
                violations.push(FieldViolation::new(
                    join(path, key),
                    "no such field in the schema",
                ));
            }
        }
        let mut fields = Vec::with_capacity(record.fields.len());
        let mut ok = true;
        for field in &record.fields {
            let field_path = join(path, &field.name);
            let value = match (object.get(&field.name), &field.default) {
                (Some(json), _) => self.decode_json(&field.schema, json, &field_path, violations),
                // A default is written in the type of the union's first branch, unwrapped.
                (None, Some(default)) => {
                    self.default_value(&field.schema, default, &field_path, violations)
                }
                (None, None) => {
                    violations.push(FieldViolation::new(
                        &field_path,
                        "required field is missing",
                    ));
                    None
                }
            };
            match value {
                Some(value) => fields.push((field.name.clone(), value)),
                None => ok = false,
            }
        }
        ok.then_some(Value::Record(fields))
    }

    fn default_value(
        &self,
        schema: &Schema,
        default: &Json,
        path: &str,
        violations: &mut Vec<FieldViolation>,
    ) -> Option<Value> {
        match schema {
            Schema::Union(union) => {
                let first = union.variants().first()?;
                let value = self.decode_json(first, default, path, violations)?;
                Some(Value::Union(0, Box::new(value)))
            }
            _ => self.decode_json(schema, default, path, violations),
        }
    }

    /// The name Avro's JSON encoding uses for a union branch.
    fn type_name(&self, schema: &Schema) -> String {
        match schema {
            Schema::Record(r) => r.name.fullname(None),
            Schema::Enum(e) => e.name.fullname(None),
            Schema::Fixed(f) => f.name.fullname(None),
            Schema::Ref { name } => name.fullname(None),
            Schema::Array(_) => "array".into(),
            Schema::Map(_) => "map".into(),
            Schema::Null => "null".into(),
            Schema::Boolean => "boolean".into(),
            Schema::Int | Schema::Date | Schema::TimeMillis => "int".into(),
            Schema::Float => "float".into(),
            Schema::Double => "double".into(),
            Schema::Bytes | Schema::Decimal(_) | Schema::BigDecimal => "bytes".into(),
            Schema::String | Schema::Uuid(_) => "string".into(),
            Schema::Duration(_) => "fixed".into(),
            _ => "long".into(),
        }
    }

    fn union_names(&self, variants: &[Schema]) -> String {
        variants
            .iter()
            .map(|v| self.type_name(v))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn is_string_like(schema: &Schema) -> bool {
    match schema {
        Schema::String => true,
        Schema::Union(u) => {
            let non_null: Vec<_> = u
                .variants()
                .iter()
                .filter(|v| !matches!(v, Schema::Null))
                .collect();
            matches!(non_null.as_slice(), [Schema::String])
        }
        _ => false,
    }
}

fn string_of(value: Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s),
        Value::Union(_, inner) => string_of(*inner),
        _ => None,
    }
}

fn int_of(json: &Json) -> Option<i32> {
    json.as_i64().and_then(|n| i32::try_from(n).ok())
}

fn latin1_bytes(json: &Json) -> Option<Vec<u8>> {
    json.as_str()?
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect()
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn json_kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> DocumentSchema {
        DocumentSchema::default_document()
    }

    #[test]
    fn default_schema_declares_text_and_attributes() {
        let s = schema();
        assert_eq!(s.text_field(), "text");
        assert_eq!(s.attribute_fields(), ["title", "source", "language"]);
        assert_eq!(s.fingerprint().len(), 64);
    }

    #[test]
    fn avro_json_round_trips_to_binary() {
        let s = schema();
        let bytes = s
            .encode_json(
                r#"{"title": {"string": "Rivers"}, "text": "Water flows.", "tags": ["a"]}"#,
            )
            .unwrap();
        let content = s.decode_binary(&bytes).unwrap();
        assert_eq!(content.text, "Water flows.");
        assert_eq!(
            content.attributes.get("title").map(String::as_str),
            Some("Rivers")
        );
        assert!(!content.attributes.contains_key("source"));
    }

    #[test]
    fn bare_values_fit_nullable_unions() {
        let bytes = schema()
            .encode_json(r#"{"title": "Rivers", "text": "x", "created_at": 5}"#)
            .unwrap();
        let content = schema().decode_binary(&bytes).unwrap();
        assert_eq!(content.attributes["title"], "Rivers");
    }

    #[test]
    fn violations_name_their_paths() {
        let err = schema()
            .encode_json(r#"{"text": "x", "tags": ["a", "b", 3], "colour": "red", "title": 7}"#)
            .unwrap_err();
        let rendered: Vec<String> = err.iter().map(ToString::to_string).collect();
        assert!(
            rendered.contains(&"tags[2]: expected string, found number".to_string()),
            "{rendered:?}"
        );
        assert!(
            rendered.contains(&"colour: no such field in the schema".to_string()),
            "{rendered:?}"
        );
        assert!(
            rendered
                .iter()
                .any(|r| r.starts_with("title: expected one of null, string")),
            "{rendered:?}"
        );
    }

    #[test]
    fn missing_required_text_is_named() {
        let err = schema().encode_json(r#"{"title": null}"#).unwrap_err();
        assert_eq!(
            err,
            vec![FieldViolation::new("text", "required field is missing")]
        );
    }

    #[test]
    fn blank_text_is_rejected_on_decode() {
        let bytes = schema().encode_json(r#"{"text": "   "}"#).unwrap();
        let err = schema().decode_binary(&bytes).unwrap_err();
        assert_eq!(err[0].field, "text");
    }

    #[test]
    fn binary_with_trailing_bytes_or_garbage_is_rejected() {
        let mut bytes = schema().encode_json(r#"{"text": "ok"}"#).unwrap();
        bytes.push(0);
        assert!(schema().decode_binary(&bytes).unwrap_err()[0]
            .description
            .contains("left over"));
        assert!(schema().decode_binary(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn schemas_without_a_text_role_are_refused() {
        let err = DocumentSchema::parse(
            r#"{"type":"record","name":"X","fields":[{"name":"body","type":"string"}]}"#,
        )
        .unwrap_err();
        assert!(matches!(err, SchemaError::NoTextField(_)));
    }
}
