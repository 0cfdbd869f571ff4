//! Requests → document records, or every reason they are invalid, addressed by field path.
//!
//! A document is validated against the tenant's schema from the registry: the version its
//! `schema` and `schema_version` select (latest by default), or for Avro binary the `schema_id`
//! it claims, which must be a version of that schema. Nothing is written unvalidated: when the
//! registry cannot answer and nothing cached can, the request is UNAVAILABLE.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::config::GatewayConfig;
use sluice_core::proto::{document::Payload, Document};
use sluice_core::record::{new_ingestion_id, now_ms, DocumentRecord, Operation};
use sluice_core::schema::DocumentSchema;
use sluice_core::schema_registry::catalog::{CatalogError, ResolvedSchema};
use sluice_core::schema_registry::{SchemaCatalog, VersionSelector};
use sluice_core::tenant::TenantId;
use tonic::{Code, Status};

use crate::services::status::{invalid_argument, with_retry, Violation};

/// Why a request cannot be accepted as it is.
#[derive(Debug)]
pub enum Refusal {
    /// The client's mistakes, each with its field path.
    Invalid(Vec<Violation>),
    /// The schema registry could not be asked; try again.
    Unavailable(String),
}

impl From<Vec<Violation>> for Refusal {
    fn from(violations: Vec<Violation>) -> Self {
        Refusal::Invalid(violations)
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Status {
        match refusal {
            Refusal::Invalid(violations) => invalid_argument(&violations),
            Refusal::Unavailable(reason) => with_retry(
                Code::Unavailable,
                format!("not accepted: {reason}; nothing was written, retry"),
                Duration::from_secs(1),
            ),
        }
    }
}

pub const MAX_DOCUMENT_ID_BYTES: usize = 512;
pub const MAX_ATTRIBUTES: usize = 64;
pub const MAX_ATTRIBUTE_KEY_CHARS: usize = 64;
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// Checks requests against the tenant's schemas and the configured limits.
#[derive(Clone)]
pub struct Validator {
    schemas: Arc<SchemaCatalog>,
    default_fingerprint: String,
    max_text_bytes: usize,
    max_payload_bytes: usize,
    cpu: CpuWork,
}

impl Validator {
    pub fn new(schemas: Arc<SchemaCatalog>, limits: &GatewayConfig) -> Self {
        Self {
            schemas,
            default_fingerprint: DocumentSchema::default_document().fingerprint().to_owned(),
            max_text_bytes: limits.max_text_bytes,
            max_payload_bytes: limits.max_payload_bytes,
            cpu: CpuWork::new(),
        }
    }

    /// A document → its record (with a fresh ingestion id). `path` names the document in the
    /// request (`document`, `documents[3]`).
    pub async fn document(
        &self,
        tenant: &TenantId,
        document: Document,
        path: &str,
    ) -> Result<DocumentRecord, Refusal> {
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
        let schema = self.schema(tenant, &document, path).await;
        let schema = match schema {
            Ok(schema) => Some(schema),
            Err(Refusal::Invalid(v)) => {
                violations.extend(v);
                None
            }
            Err(unavailable) => return Err(unavailable),
        };
        let payload = match &schema {
            Some(schema) => self.payload(schema, document.payload, path).await,
            None => Ok(Vec::new()),
        };
        let payload = payload.map_err(|v| violations.extend(v)).ok();
        if !violations.is_empty() {
            return Err(Refusal::Invalid(violations));
        }
        let schema = schema.expect("no violations means a schema");
        Ok(DocumentRecord {
            tenant: tenant.clone(),
            document_id: document.document_id,
            ingestion_id: new_ingestion_id(),
            operation: Operation::Upsert,
            attributes,
            schema_fingerprint: schema.schema.fingerprint().to_owned(),
            schema_id: Some(schema.id),
            accepted_at_ms: now_ms(),
            payload: payload.unwrap_or_default(),
            idempotency_key: None,
        })
    }

    /// The schema a document is written with, from its `schema`, `schema_version` and (for
    /// Avro binary) `schema_id`.
    async fn schema(
        &self,
        tenant: &TenantId,
        document: &Document,
        path: &str,
    ) -> Result<ResolvedSchema, Refusal> {
        let name = Some(document.schema.as_str());
        let binary = matches!(document.payload, Some(Payload::AvroBinary(_)));
        let (result, field) = match (document.schema_id, document.schema_version) {
            (0, version) if version < 0 => {
                return Err(Refusal::Invalid(vec![Violation::new(
                    format!("{path}.schema_version"),
                    "must be a version number, or 0 for the latest",
                )]))
            }
            (0, 0) => (
                self.schemas
                    .for_tenant(tenant, name, VersionSelector::Latest)
                    .await,
                "schema",
            ),
            (0, version) => (
                self.schemas
                    .for_tenant(tenant, name, VersionSelector::Number(version))
                    .await,
                "schema_version",
            ),
            (_, _) if !binary => {
                return Err(Refusal::Invalid(vec![Violation::new(
                    format!("{path}.schema_id"),
                    "only for avro_binary; JSON payloads name a schema and version",
                )]))
            }
            (id, _) => (
                self.schemas.for_tenant_id(tenant, name, id).await,
                "schema_id",
            ),
        };
        result.map_err(|e| match e {
            CatalogError::Unavailable(reason) => Refusal::Unavailable(reason),
            CatalogError::Unknown(reason) | CatalogError::NotADocumentSchema(reason) => {
                Refusal::Invalid(vec![Violation::new(format!("{path}.{field}"), reason)])
            }
        })
    }

    /// A deletion → its record.
    pub fn deletion(&self, tenant: &TenantId, id: &str) -> Result<DocumentRecord, Refusal> {
        let mut violations = Vec::new();
        document_id(id, "document_id", &mut violations);
        if !violations.is_empty() {
            return Err(Refusal::Invalid(violations));
        }
        Ok(DocumentRecord {
            tenant: tenant.clone(),
            document_id: id.to_owned(),
            ingestion_id: new_ingestion_id(),
            operation: Operation::Delete,
            attributes: BTreeMap::new(),
            // A deletion has no body; it carries the default schema's fingerprint as it always has.
            schema_fingerprint: self.default_fingerprint.clone(),
            schema_id: None,
            accepted_at_ms: now_ms(),
            payload: Vec::new(),
            idempotency_key: None,
        })
    }

    /// The payload as Avro binary, checked against the schema and the limits. Large payloads
    /// are checked off the async threads, a few at a time ([`CpuWork`]): the work grows with
    /// the payload, and the threads that serve other tenants and health must stay free.
    async fn payload(
        &self,
        schema: &ResolvedSchema,
        payload: Option<Payload>,
        path: &str,
    ) -> Result<Vec<u8>, Vec<Violation>> {
        let size = match &payload {
            Some(Payload::AvroBinary(bytes)) => bytes.len(),
            Some(Payload::AvroJson(json)) => json.len(),
            None => 0,
        };
        if size < INLINE_PAYLOAD_BYTES {
            return self.check_payload(schema, payload, path);
        }
        let (this, schema, owned_path) = (self.clone(), schema.clone(), path.to_owned());
        self.cpu
            .run(move || this.check_payload(&schema, payload, &owned_path))
            .await
            .unwrap_or_else(|| {
                Err(vec![Violation::new(
                    path_of_payload(path),
                    "the gateway is shutting down",
                )])
            })
    }

    fn check_payload(
        &self,
        schema: &ResolvedSchema,
        payload: Option<Payload>,
        path: &str,
    ) -> Result<Vec<u8>, Vec<Violation>> {
        let mut violations = Vec::new();
        match self.check_payload_into(schema, payload, path, &mut violations) {
            Some(binary) if violations.is_empty() => Ok(binary),
            _ => Err(violations),
        }
    }

    fn check_payload_into(
        &self,
        schema: &ResolvedSchema,
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
            Payload::AvroJson(json) => match schema.schema.encode_json(&json) {
                Ok(binary) => binary,
                Err(errors) => {
                    violations.extend(errors.into_iter().map(at));
                    return None;
                }
            },
        };
        match schema.schema.decode_binary(&binary) {
            Ok(content) if content.text.len() > self.max_text_bytes => {
                violations.push(Violation::new(
                    format!("{field}.{}", schema.schema.text_field()),
                    format!(
                        "{} bytes of text, more than the maximum of {}",
                        content.text.len(),
                        self.max_text_bytes
                    ),
                ));
                None
            }
            Ok(content) => {
                // Declared attributes go into every chunk, as request attributes do: the
                // same bounds.
                for (name, value) in &content.attributes {
                    if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
                        violations.push(Violation::new(
                            format!("{field}.{name}"),
                            format!(
                                "attribute of {} bytes, more than the maximum of \
                                 {MAX_ATTRIBUTE_VALUE_BYTES}",
                                value.len()
                            ),
                        ));
                    }
                }
                violations.is_empty().then_some(binary)
            }
            Err(errors) => {
                violations.extend(errors.into_iter().map(at));
                None
            }
        }
    }
}

/// Payloads smaller than this are checked on the calling thread (cheaper than a hand-off).
const INLINE_PAYLOAD_BYTES: usize = 16 << 10;

fn path_of_payload(path: &str) -> String {
    format!("{path}.payload")
}

/// CPU-heavy checks, off the async threads and at most one per core at a time, so that a
/// flood of large payloads queues here instead of taking every thread.
#[derive(Clone)]
pub struct CpuWork {
    permits: Arc<tokio::sync::Semaphore>,
}

impl CpuWork {
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(cores)),
        }
    }

    /// Runs `work` on a blocking thread once a core is free; `None` if it could not run.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .ok()
    }
}

impl Default for CpuWork {
    fn default() -> Self {
        Self::new()
    }
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
    use sluice_core::config::SchemasConfig;

    /// A validator over the built-in registry in a fresh SQLite database.
    async fn validator() -> (Validator, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/sluice.db?mode=rwc", dir.path().display());
        let db = sluice_core::db::connect(&url).await.unwrap();
        let schemas = sluice_core::schema_registry::open(&SchemasConfig::default(), &db).unwrap();
        let limits = GatewayConfig {
            max_text_bytes: 10,
            ..Default::default()
        };
        (Validator::new(schemas.catalog, &limits), dir)
    }

    fn doc(json: &str) -> Document {
        Document {
            document_id: "d1".into(),
            payload: Some(Payload::AvroJson(json.into())),
            ..Default::default()
        }
    }

    fn fields(result: Result<DocumentRecord, Refusal>) -> Vec<String> {
        match result {
            Err(Refusal::Invalid(violations)) => violations.into_iter().map(|v| v.field).collect(),
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_valid_document_becomes_a_record_with_the_default_schemas_id() {
        let tenant = TenantId::parse("t").unwrap();
        let (v, _dir) = validator().await;
        let record = v
            .document(&tenant, doc(r#"{"text": "short"}"#), "document")
            .await
            .unwrap();
        assert_eq!(record.document_id, "d1");
        assert!(!record.payload.is_empty());
        // The default schema was registered for the tenant on first use.
        let registered = v
            .schemas
            .registry()
            .version(
                "t.document-value",
                sluice_core::schema_registry::VersionSelector::Latest,
            )
            .await
            .unwrap();
        assert_eq!(record.schema_id, Some(registered.id));
    }

    #[tokio::test]
    async fn each_bad_field_is_named() {
        let tenant = TenantId::parse("t").unwrap();
        let (v, _dir) = validator().await;
        assert_eq!(
            fields(
                v.document(&tenant, doc(r#"{"text": ""}"#), "document")
                    .await
            ),
            ["document.avro_json.text"]
        );
        assert_eq!(
            fields(
                v.document(
                    &tenant,
                    doc(r#"{"text": "far too long a text"}"#),
                    "documents[2]"
                )
                .await
            ),
            ["documents[2].avro_json.text"]
        );
        assert_eq!(
            fields(v.document(&tenant, doc(r#"{"text": 5}"#), "document").await),
            ["document.avro_json.text"]
        );
        let mut bad = doc(r#"{"text": "ok"}"#);
        bad.document_id.clear();
        bad.attributes.insert("no spaces".into(), "x".into());
        assert_eq!(
            fields(v.document(&tenant, bad, "document").await),
            ["document.document_id", "document.attributes[\"no spaces\"]"]
        );
        let mut none = doc("");
        none.payload = None;
        assert_eq!(
            fields(v.document(&tenant, none, "document").await),
            ["document.payload"]
        );
        let mut unknown = doc(r#"{"text": "ok"}"#);
        unknown.schema = "article".into();
        assert_eq!(
            fields(v.document(&tenant, unknown, "document").await),
            ["document.schema"]
        );
        let mut old = doc(r#"{"text": "ok"}"#);
        old.schema_version = 7;
        assert_eq!(
            fields(v.document(&tenant, old, "document").await),
            ["document.schema_version"]
        );
        let mut claimed = doc(r#"{"text": "ok"}"#);
        claimed.payload = Some(Payload::AvroBinary(vec![0]));
        claimed.schema_id = 99;
        assert_eq!(
            fields(v.document(&tenant, claimed, "document").await),
            ["document.schema_id"]
        );
    }
}
