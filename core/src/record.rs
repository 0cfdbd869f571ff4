//! What travels through Kafka.
//!
//! - [`DocumentRecord`] on the documents topic: key `<tenant>/<document id>` (so one document's
//!   records stay in one partition, in order), metadata in `sluice-*` headers, and the document
//!   in the Confluent wire format in the value (magic byte, schema id, Avro binary; empty for a
//!   deletion), so any Confluent-compatible consumer can read it.
//! - [`Completion`] on the completions topic: how one ingestion ended, as JSON, same key.
//! - Dead letters on the dead-letter topic: the original record with [`dead_letter_header`]s;
//!   re-driven, a record carries [`header::REDRIVEN_FROM`].
//!
//! This module is the Kafka wire contract: every record, header name and id format that
//! crosses between the gateway, the workers and other consumers is defined here, once.

use std::collections::BTreeMap;

use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::Message;
use serde::{Deserialize, Serialize};

use crate::schema_registry::{wire, SchemaId};
use crate::tenant::TenantId;

pub mod header {
    pub const TENANT: &str = "sluice-tenant";
    pub const DOCUMENT_ID: &str = "sluice-document-id";
    pub const INGESTION_ID: &str = "sluice-ingestion-id";
    pub const OPERATION: &str = "sluice-operation";
    /// JSON object of the request's attributes.
    pub const ATTRIBUTES: &str = "sluice-attributes";
    /// Fingerprint of the Avro schema the value is written with.
    pub const SCHEMA: &str = "sluice-schema";
    /// The registry id of that schema (also in the value's wire-format prefix).
    pub const SCHEMA_ID: &str = "sluice-schema-id";
    pub const ACCEPTED_AT_MS: &str = "sluice-accepted-at-ms";
    /// The request's idempotency key, when it had one: the worker hands it back in the
    /// completion, so an ingestion whose gateway died before recording it still keeps its key.
    pub const IDEMPOTENCY_KEY: &str = "sluice-idempotency-key";
    /// On a re-driven dead letter: the ingestion it replaces.
    pub const REDRIVEN_FROM: &str = "sluice-redriven-from";
}

/// Headers a worker adds to a dead letter, next to the original record's own.
pub mod dead_letter_header {
    pub const ORIGIN_TOPIC: &str = "sluice-dlq-origin-topic";
    pub const ORIGIN_PARTITION: &str = "sluice-dlq-origin-partition";
    pub const ORIGIN_OFFSET: &str = "sluice-dlq-origin-offset";
    pub const ERROR_CLASS: &str = "sluice-dlq-error-class";
    pub const ERROR: &str = "sluice-dlq-error";
    pub const ATTEMPTS: &str = "sluice-dlq-attempts";
}

/// A new ingestion id: a UUIDv7, time-ordered, so ids sort by acceptance.
pub fn new_ingestion_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// When an ingestion id of [`new_ingestion_id`] was made, which is when its request was
/// accepted; `None` for anything else (it says nothing about when).
pub fn ingestion_accepted_at(ingestion_id: &str) -> Option<std::time::SystemTime> {
    let id = uuid::Uuid::parse_str(ingestion_id).ok()?;
    if id.get_version_num() != 7 {
        return None;
    }
    let (seconds, nanos) = id.get_timestamp()?.to_unix();
    Some(std::time::UNIX_EPOCH + std::time::Duration::new(seconds, nanos))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Upsert,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Upsert => "upsert",
            Operation::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "upsert" => Some(Operation::Upsert),
            "delete" => Some(Operation::Delete),
            _ => None,
        }
    }
}

/// The Kafka key of everything about one document.
pub fn document_key(tenant: &TenantId, document_id: &str) -> String {
    format!("{tenant}/{document_id}")
}

/// One ingestion as written to the documents topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentRecord {
    pub tenant: TenantId,
    pub document_id: String,
    pub ingestion_id: String,
    pub operation: Operation,
    pub attributes: BTreeMap<String, String>,
    pub schema_fingerprint: String,
    /// The registry id the payload is written with; `None` for deletions (and for records
    /// written before schemas were registered, which carry the default schema's plain Avro).
    pub schema_id: Option<SchemaId>,
    pub accepted_at_ms: i64,
    /// Avro binary, without the wire-format prefix; empty for deletions.
    pub payload: Vec<u8>,
    /// The request's idempotency key (not part of [`Self::content_hash`]).
    pub idempotency_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed document record: {0}")]
pub struct MalformedRecord(pub String);

impl DocumentRecord {
    pub fn key(&self) -> String {
        document_key(&self.tenant, &self.document_id)
    }

    /// The Kafka value: the payload framed with its schema id.
    pub fn value(&self) -> Vec<u8> {
        match self.schema_id {
            Some(id) => wire::frame(id, &self.payload),
            None => self.payload.clone(),
        }
    }

    pub fn headers(&self) -> OwnedHeaders {
        let attributes = serde_json::to_string(&self.attributes).expect("string map serialises");
        let accepted = self.accepted_at_ms.to_string();
        let schema_id = self.schema_id.map(|id| id.to_string());
        let headers = [
            (header::TENANT, self.tenant.as_str()),
            (header::DOCUMENT_ID, self.document_id.as_str()),
            (header::INGESTION_ID, self.ingestion_id.as_str()),
            (header::OPERATION, self.operation.as_str()),
            (header::ATTRIBUTES, attributes.as_str()),
            (header::SCHEMA, self.schema_fingerprint.as_str()),
            (header::ACCEPTED_AT_MS, accepted.as_str()),
        ]
        .into_iter()
        .chain(schema_id.as_deref().map(|id| (header::SCHEMA_ID, id)))
        .chain(
            self.idempotency_key
                .as_deref()
                .map(|key| (header::IDEMPOTENCY_KEY, key)),
        )
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        });
        headers
    }

    /// A digest of what this record asks for: operation, document id, schema, payload and
    /// attributes (not the ingestion id or time). Two requests that would write the same
    /// document the same way have the same hash, however the payload was sent (Avro JSON and
    /// Avro binary validate to the same bytes).
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        // Length-prefixed, so no two different records concatenate to the same bytes.
        for part in [
            self.operation.as_str().as_bytes(),
            self.document_id.as_bytes(),
            self.schema_fingerprint.as_bytes(),
            &self.payload,
            serde_json::to_string(&self.attributes)
                .expect("string map serialises")
                .as_bytes(),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hex::encode(hasher.finalize())
    }

    /// Reads a record back from a consumed message.
    pub fn from_message<M: Message>(message: &M) -> Result<Self, MalformedRecord> {
        let headers = message
            .headers()
            .ok_or_else(|| MalformedRecord("no headers".into()))?;
        let get = |name: &str| -> Result<String, MalformedRecord> {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .ok_or_else(|| MalformedRecord(format!("header {name} missing")))
        };
        let tenant =
            TenantId::parse(&get(header::TENANT)?).map_err(|e| MalformedRecord(e.to_string()))?;
        let operation = get(header::OPERATION)?;
        let operation = Operation::parse(&operation)
            .ok_or_else(|| MalformedRecord(format!("unknown operation {operation:?}")))?;
        let attributes = serde_json::from_str(&get(header::ATTRIBUTES)?)
            .map_err(|e| MalformedRecord(format!("attributes: {e}")))?;
        let value = message.payload().unwrap_or_default();
        let (schema_id, payload) = match get(header::SCHEMA_ID).ok() {
            None => (None, value.to_vec()),
            Some(header_id) => {
                let (id, datum) =
                    wire::unframe(value).map_err(|e| MalformedRecord(e.to_string()))?;
                if header_id != id.to_string() {
                    return Err(MalformedRecord(format!(
                        "schema id {id} in the value, {header_id} in the header"
                    )));
                }
                (Some(id), datum.to_vec())
            }
        };
        Ok(Self {
            tenant,
            document_id: get(header::DOCUMENT_ID)?,
            ingestion_id: get(header::INGESTION_ID)?,
            operation,
            attributes,
            schema_fingerprint: get(header::SCHEMA)?,
            schema_id,
            accepted_at_ms: get(header::ACCEPTED_AT_MS)?.parse().unwrap_or_default(),
            payload,
            idempotency_key: get(header::IDEMPOTENCY_KEY).ok(),
        })
    }
}

/// How an ingestion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Indexed,
    Deleted,
    Failed,
}

/// Where a record sits in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The event a worker commits together with the consumed offset of the record it processed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub tenant: String,
    pub ingestion_id: String,
    pub document_id: String,
    pub operation: Operation,
    pub outcome: Outcome,
    #[serde(default)]
    pub chunk_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// The document record this completes.
    pub source: Position,
    /// When the gateway accepted the ingestion (from the record), so a completion alone can
    /// rebuild the ingestion's row.
    #[serde(default)]
    pub accepted_at_ms: i64,
    pub completed_at_ms: i64,
    /// The record's idempotency key and content hash, so that a completion that creates the
    /// ingestion's row (its gateway never recorded it) leaves a retry recognisable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
}

impl Completion {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("completion serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_json_round_trips() {
        let completion = Completion {
            tenant: "t".into(),
            ingestion_id: "i".into(),
            document_id: "d".into(),
            operation: Operation::Upsert,
            outcome: Outcome::Failed,
            chunk_count: 0,
            failure_reason: Some("boom".into()),
            source: Position {
                topic: "x".into(),
                partition: 1,
                offset: 2,
            },
            accepted_at_ms: 1,
            completed_at_ms: 3,
            idempotency_key: Some("key-1".into()),
            content_hash: Some("abc".into()),
        };
        assert_eq!(
            Completion::from_json(&completion.to_json()).unwrap(),
            completion
        );
    }

    #[test]
    fn content_hash_ignores_ingestion_id_and_time_but_not_content() {
        let record = DocumentRecord {
            tenant: TenantId::parse("a").unwrap(),
            document_id: "doc".into(),
            ingestion_id: "i1".into(),
            operation: Operation::Upsert,
            attributes: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            schema_fingerprint: "s".into(),
            schema_id: Some(7),
            accepted_at_ms: 1,
            payload: b"body".to_vec(),
            idempotency_key: None,
        };
        let again = DocumentRecord {
            ingestion_id: "i2".into(),
            accepted_at_ms: 2,
            idempotency_key: Some("retry".into()),
            ..record.clone()
        };
        assert_eq!(record.content_hash(), again.content_hash());
        let edited = DocumentRecord {
            payload: b"body!".to_vec(),
            ..record.clone()
        };
        assert_ne!(record.content_hash(), edited.content_hash());
        let relabelled = DocumentRecord {
            attributes: BTreeMap::from([("k".to_owned(), "w".to_owned())]),
            ..record.clone()
        };
        assert_ne!(record.content_hash(), relabelled.content_hash());
    }

    #[test]
    fn keys_keep_tenants_apart() {
        let a = TenantId::parse("a").unwrap();
        assert_eq!(document_key(&a, "doc"), "a/doc");
    }
}
