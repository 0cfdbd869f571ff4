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

/// Most violations one payload reports; the rest are counted in a last one ("and N more"), so
/// an error response stays small whatever the payload (see `SECURITY.md`).
pub const MAX_VIOLATIONS: usize = 20;

/// Validation steps (values visited, union branches tried) a JSON payload may take: a fixed
/// allowance plus a few per byte. A walk without unions takes at most one step per value, and
/// every value is at least a byte; the margin is for the lenient union branches, which nested
/// unions would otherwise multiply without bound.
const BASE_STEPS: usize = 10_000;
const STEPS_PER_BYTE: usize = 4;

/// Caps what the Avro decoder may allocate at once (a string, or a collection's items) at 16×
/// the largest payload: a length or block count in a payload can then never make a decoder
/// reserve more than that, whatever it claims. apache-avro keeps the first value it is given
/// for the life of the process (its default is 512 MiB); the gateway and the worker set it at
/// start, before decoding anything.
pub fn limit_decoder_allocations(max_payload_bytes: usize) -> usize {
    apache_avro::util::max_allocation_bytes(max_payload_bytes.saturating_mul(16).max(1 << 20))
}

/// What a walk over a JSON payload collects: the first [`MAX_VIOLATIONS`] violations, a count
/// of the rest, and the steps it has left.
struct Walk {
    violations: Vec<FieldViolation>,
    more: usize,
    steps_left: usize,
    out_of_steps: bool,
}

impl Walk {
    fn new(steps: usize) -> Self {
        Walk {
            violations: Vec::new(),
            more: 0,
            steps_left: steps,
            out_of_steps: false,
        }
    }

    fn push(&mut self, violation: FieldViolation) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(violation);
        } else {
            self.more += 1;
        }
    }

    /// Takes one step; false once the budget is spent (the walk then unwinds quickly).
    fn step(&mut self) -> bool {
        if self.steps_left == 0 {
            self.out_of_steps = true;
            return false;
        }
        self.steps_left -= 1;
        true
    }

    fn failed(&self) -> bool {
        !self.violations.is_empty() || self.out_of_steps
    }

    /// The violations to report, with the count of the rest and the reason a walk stopped.
    fn finish(mut self, limit: usize) -> Vec<FieldViolation> {
        if self.more > 0 {
            let more = self.more;
            self.violations.push(FieldViolation::new(
                "",
                format!("and {more} more violations"),
            ));
        }
        if self.out_of_steps {
            self.violations.push(FieldViolation::new(
                "",
                format!(
                    "too complex to validate within {limit} steps (unions tried against every \
                     value); send Avro binary or write unions as {{\"<type>\": value}}"
                ),
            ));
        }
        self.violations
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
    /// Reports at most [`MAX_VIOLATIONS`] violations (and how many more there were), and its
    /// work is bounded by the payload's size.
    pub fn encode_json(&self, json: &str) -> Result<Vec<u8>, Vec<FieldViolation>> {
        let len = json.len();
        let json: Json = serde_json::from_str(json)
            .map_err(|e| vec![FieldViolation::new("", format!("not valid JSON: {e}"))])?;
        let steps = BASE_STEPS.saturating_add(STEPS_PER_BYTE.saturating_mul(len));
        let mut walk = Walk::new(steps);
        let value = self.decode_json(&self.schema, &json, "", &mut walk);
        if walk.failed() {
            return Err(walk.finish(steps));
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

    /// Avro JSON → Avro value, guided by the schema; collects violations with their paths.
    fn decode_json(
        &self,
        schema: &Schema,
        json: &Json,
        path: &str,
        violations: &mut Walk,
    ) -> Option<Value> {
        if !violations.step() {
            return None;
        }
        let wrong = |violations: &mut Walk, expected: &str| {
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
                // The trials share the walk's step budget; their violations are thrown away.
                let mut fits = Vec::new();
                for (i, variant) in variants.iter().enumerate() {
                    if matches!(variant, Schema::Null) || fits.len() > 1 {
                        continue;
                    }
                    let mut scratch = Walk::new(violations.steps_left);
                    let value = self.decode_json(variant, json, path, &mut scratch);
                    violations.steps_left = scratch.steps_left;
                    if scratch.out_of_steps {
                        violations.out_of_steps = true;
                        return None;
                    }
                    if let Some(value) = value {
                        fits.push((i, value));
                    }
                }
                match (fits.pop(), fits.is_empty()) {
                    (Some((i, value)), true) => Some(Value::Union(i as u32, Box::new(value))),
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
        violations: &mut Walk,
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
        violations: &mut Walk,
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
    fn violations_are_capped_and_counted() {
        let items = vec![serde_json::json!(1); 50_000];
        let json = serde_json::json!({ "text": "x", "tags": items }).to_string();
        let started = std::time::Instant::now();
        let err = schema().encode_json(&json).unwrap_err();
        assert_eq!(err.len(), MAX_VIOLATIONS + 1, "{err:?}");
        assert_eq!(err[0].to_string(), "tags[0]: expected string, found number");
        assert_eq!(
            err[MAX_VIOLATIONS].to_string(),
            format!("and {} more violations", 50_000 - MAX_VIOLATIONS)
        );
        println!("50,000 bad items refused in {:?}", started.elapsed());
    }

    #[test]
    fn nested_unions_cannot_multiply_the_work() {
        // Each level is a union of three records that all accept the next level, so a bare
        // value makes every level try every branch: 3^depth trials without a budget.
        // The first record of a level defines the level below; the others refer to it by
        // name (Avro names are defined once).
        let mut inner = serde_json::json!(["null", "string"]);
        let mut names = inner.clone();
        for level in 0..12 {
            let record = |name: &str, field: &serde_json::Value| {
                serde_json::json!({
                    "type": "record",
                    "name": format!("{name}{level}"),
                    "fields": [{ "name": "v", "type": field, "default": null }]
                })
            };
            inner = serde_json::json!([
                "null",
                record("A", &inner),
                record("B", &names),
                record("C", &names)
            ]);
            names = serde_json::json!([
                "null",
                format!("A{level}"),
                format!("B{level}"),
                format!("C{level}")
            ]);
        }
        let schema = serde_json::json!({
            "type": "record",
            "name": "Deep",
            "fields": [
                { "name": "text", "type": "string", "sluice.role": "text" },
                { "name": "deep", "type": inner }
            ]
        });
        let schema = DocumentSchema::parse(&schema.to_string()).unwrap();
        let mut value = serde_json::json!({ "v": 1 });
        for _ in 0..12 {
            value = serde_json::json!({ "v": value });
        }
        let payload = serde_json::json!({ "text": "x", "deep": value }).to_string();
        let started = std::time::Instant::now();
        let err = schema.encode_json(&payload).unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            err.iter()
                .any(|v| v.description.contains("too complex to validate")),
            "{err:?}"
        );
        println!("nested unions refused in {elapsed:?}");
    }

    /// Avro's zig-zag varint encoding of a long.
    fn long(n: i64) -> Vec<u8> {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let byte = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    #[test]
    fn hostile_binary_is_refused_without_allocating() {
        limit_decoder_allocations(4 << 20);
        let schema = schema();
        // title: null; text: "hi"; source, language: null; then the tags array.
        let head = |tags: &[u8]| [&[0u8][..], &long(2), b"hi", &[0, 0], tags].concat();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "a string of 2^40 bytes",
                [&[0u8][..], &long(1 << 40)].concat(),
            ),
            ("a negative string length", [&[0u8][..], &long(-7)].concat()),
            ("10^12 array items", head(&long(1_000_000_000_000))),
            (
                "a negative block count with a huge block size",
                head(&[long(-1_000_000_000), long(1 << 50)].concat()),
            ),
            ("an empty payload", Vec::new()),
            ("a truncated payload", head(&long(3))),
        ];
        for (what, bytes) in cases {
            let started = std::time::Instant::now();
            let refused = schema.decode_binary(&bytes);
            assert!(refused.is_err(), "{what} was accepted");
            assert!(
                started.elapsed() < std::time::Duration::from_millis(500),
                "{what} took {:?}",
                started.elapsed()
            );
        }
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
