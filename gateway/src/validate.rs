//! Requests → document records, or every reason they are invalid, addressed by field path.

use std::collections::{BTreeMap, HashMap};

use sluice_core::config::GatewayConfig;
use sluice_core::proto::{document::Payload, Document};
use sluice_core::record::{now_ms, DocumentRecord, Operation};
use sluice_core::schema::DocumentSchema;
use sluice_core::tenant::TenantId;

use crate::status::Violation;

pub const MAX_DOCUMENT_ID_BYTES: usize = 512;
pub const MAX_ATTRIBUTES: usize = 64;
pub const MAX_ATTRIBUTE_KEY_CHARS: usize = 64;
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// Checks requests against the schema and the configured limits.
#[derive(Debug, Clone)]
pub struct Validator {
    schema: std::sync::Arc<DocumentSchema>,
    max_text_bytes: usize,
    max_payload_bytes: usize,
}

impl Validator {
    pub fn new(schema: std::sync::Arc<DocumentSchema>, limits: &GatewayConfig) -> Self {
        Self {
            schema,
            max_text_bytes: limits.max_text_bytes,
            max_payload_bytes: limits.max_payload_bytes,
        }
    }

    /// A document → its record (with a fresh ingestion id). `path` names the document in the
    /// request (`document`, `documents[3]`).
    pub fn document(
        &self,
        tenant: &TenantId,
        document: Document,
        path: &str,
    ) -> Result<DocumentRecord, Vec<Violation>> {
        let mut violations = Vec::new();
        document_id(
            &document.document_id,
            &format!("{path}.document_id"),
            &mut violations,
        );
        let attributes = attributes(
            &document.attributes,
            &format!("{path}.attributes"),
            &mut violations,
        );
        let payload = self.payload(document.payload, path, &mut violations);
        if !violations.is_empty() {
            return Err(violations);
        }
        Ok(DocumentRecord {
            tenant: tenant.clone(),
            document_id: document.document_id,
            ingestion_id: new_ingestion_id(),
            operation: Operation::Upsert,
            attributes,
            schema_fingerprint: self.schema.fingerprint().to_owned(),
            accepted_at_ms: now_ms(),
            payload: payload.unwrap_or_default(),
        })
    }

    /// A deletion → its record.
    pub fn deletion(&self, tenant: &TenantId, id: &str) -> Result<DocumentRecord, Vec<Violation>> {
        let mut violations = Vec::new();
        document_id(id, "document_id", &mut violations);
        if !violations.is_empty() {
            return Err(violations);
        }
        Ok(DocumentRecord {
            tenant: tenant.clone(),
            document_id: id.to_owned(),
            ingestion_id: new_ingestion_id(),
            operation: Operation::Delete,
            attributes: BTreeMap::new(),
            schema_fingerprint: self.schema.fingerprint().to_owned(),
            accepted_at_ms: now_ms(),
            payload: Vec::new(),
        })
    }

    /// The payload as Avro binary, checked against the schema and the text limits.
    fn payload(
        &self,
        payload: Option<Payload>,
        path: &str,
        violations: &mut Vec<Violation>,
    ) -> Option<Vec<u8>> {
        let (field, size) = match &payload {
            None => {
                violations.push(Violation::new(
                    format!("{path}.payload"),
                    "required: set avro_binary or avro_json",
                ));
                return None;
            }
            Some(Payload::AvroBinary(bytes)) => (format!("{path}.avro_binary"), bytes.len()),
            Some(Payload::AvroJson(json)) => (format!("{path}.avro_json"), json.len()),
        };
        if size > self.max_payload_bytes {
            violations.push(Violation::new(
                &field,
                format!(
                    "{size} bytes, more than the maximum of {}",
                    self.max_payload_bytes
                ),
            ));
            return None;
        }
        let at = |v: sluice_core::schema::FieldViolation| {
            let field = if v.field.is_empty() {
                field.clone()
            } else {
                format!("{field}.{}", v.field)
            };
            Violation::new(field, v.description)
        };
        let binary = match payload? {
            Payload::AvroBinary(bytes) => bytes,
            Payload::AvroJson(json) => match self.schema.encode_json(&json) {
                Ok(binary) => binary,
                Err(errors) => {
                    violations.extend(errors.into_iter().map(at));
                    return None;
                }
            },
        };
        match self.schema.decode_binary(&binary) {
            Ok(content) if content.text.len() > self.max_text_bytes => {
                violations.push(Violation::new(
                    format!("{field}.{}", self.schema.text_field()),
                    format!(
                        "{} bytes of text, more than the maximum of {}",
                        content.text.len(),
                        self.max_text_bytes
                    ),
                ));
                None
            }
            Ok(_) => Some(binary),
            Err(errors) => {
                violations.extend(errors.into_iter().map(at));
                None
            }
        }
    }
}

/// Time-ordered, so ids sort by acceptance.
pub fn new_ingestion_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn document_id(id: &str, field: &str, violations: &mut Vec<Violation>) {
    if id.is_empty() {
        violations.push(Violation::new(field, "required"));
    } else if id.len() > MAX_DOCUMENT_ID_BYTES {
        violations.push(Violation::new(
            field,
            format!(
                "{} bytes, more than the maximum of {MAX_DOCUMENT_ID_BYTES}",
                id.len()
            ),
        ));
    } else if id.chars().any(char::is_control) {
        violations.push(Violation::new(field, "must not contain control characters"));
    }
}

fn attributes(
    attributes: &HashMap<String, String>,
    field: &str,
    violations: &mut Vec<Violation>,
) -> BTreeMap<String, String> {
    if attributes.len() > MAX_ATTRIBUTES {
        violations.push(Violation::new(
            field,
            format!(
                "{} attributes, more than the maximum of {MAX_ATTRIBUTES}",
                attributes.len()
            ),
        ));
    }
    for (key, value) in attributes {
        let path = format!("{field}[{key:?}]");
        if let Err(reason) = attribute_key(key) {
            violations.push(Violation::new(&path, reason));
        }
        if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            violations.push(Violation::new(
                &path,
                format!(
                    "value of {} bytes, more than the maximum of {MAX_ATTRIBUTE_VALUE_BYTES}",
                    value.len()
                ),
            ));
        }
    }
    attributes
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Attribute names become payload keys in the vector store; keep them plain.
pub fn attribute_key(key: &str) -> Result<(), String> {
    let plain = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if key.is_empty() || key.chars().count() > MAX_ATTRIBUTE_KEY_CHARS || !plain {
        return Err(format!("attribute names are 1 to {MAX_ATTRIBUTE_KEY_CHARS} characters of A-Z, a-z, 0-9, '_', '-' and '.'"));
    }
    Ok(())
}

pub fn idempotency_key(key: &str, field: &str) -> Result<Option<String>, Vec<Violation>> {
    match key.len() {
        0 => Ok(None),
        n if n > MAX_IDEMPOTENCY_KEY_BYTES => Err(vec![Violation::new(
            field,
            format!("{n} bytes, more than the maximum of {MAX_IDEMPOTENCY_KEY_BYTES}"),
        )]),
        _ => Ok(Some(key.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> Validator {
        Validator::new(
            std::sync::Arc::new(DocumentSchema::default_document()),
            &GatewayConfig {
                max_text_bytes: 10,
                ..Default::default()
            },
        )
    }

    fn doc(json: &str) -> Document {
        Document {
            document_id: "d1".into(),
            payload: Some(Payload::AvroJson(json.into())),
            attributes: HashMap::new(),
        }
    }

    fn fields(result: Result<DocumentRecord, Vec<Violation>>) -> Vec<String> {
        result.unwrap_err().into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_valid_document_becomes_a_record() {
        let tenant = TenantId::parse("t").unwrap();
        let record = validator()
            .document(&tenant, doc(r#"{"text": "short"}"#), "document")
            .unwrap();
        assert_eq!(record.document_id, "d1");
        assert!(!record.payload.is_empty());
    }

    #[test]
    fn each_bad_field_is_named() {
        let tenant = TenantId::parse("t").unwrap();
        let v = validator();
        assert_eq!(
            fields(v.document(&tenant, doc(r#"{"text": ""}"#), "document")),
            ["document.avro_json.text"]
        );
        assert_eq!(
            fields(v.document(
                &tenant,
                doc(r#"{"text": "far too long a text"}"#),
                "documents[2]"
            )),
            ["documents[2].avro_json.text"]
        );
        assert_eq!(
            fields(v.document(&tenant, doc(r#"{"text": 5}"#), "document")),
            ["document.avro_json.text"]
        );
        let mut bad = doc(r#"{"text": "ok"}"#);
        bad.document_id.clear();
        bad.attributes.insert("no spaces".into(), "x".into());
        assert_eq!(
            fields(v.document(&tenant, bad, "document")),
            ["document.document_id", "document.attributes[\"no spaces\"]"]
        );
        let mut none = doc("");
        none.payload = None;
        assert_eq!(
            fields(v.document(&tenant, none, "document")),
            ["document.payload"]
        );
    }
}
