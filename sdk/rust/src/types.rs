//! What the client hands back: plain, typed values made from the API's messages, and the
//! [`Document`] it takes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::SystemTime;

use serde::Serialize;

use crate::error::{Code, Error};
use crate::proto;

/// Where an ingestion is: [`Accepted`](Self::Accepted) until it ends
/// [`Indexed`](Self::Indexed), [`Failed`](Self::Failed) or [`Deleted`](Self::Deleted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum IngestionState {
    /// Not set, or a state newer than this client.
    Unspecified,
    /// Durably in Kafka, not yet processed.
    Accepted,
    /// Chunked, embedded and searchable.
    Indexed,
    /// Processing failed for good; see [`Ingestion::failure_reason`].
    Failed,
    /// The document and its chunks are gone.
    Deleted,
}

impl IngestionState {
    /// Whether this is a final state (indexed, failed or deleted).
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Indexed | Self::Failed | Self::Deleted)
    }

    /// The API's name for it, e.g. `INDEXED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "UNSPECIFIED",
            Self::Accepted => "ACCEPTED",
            Self::Indexed => "INDEXED",
            Self::Failed => "FAILED",
            Self::Deleted => "DELETED",
        }
    }

    fn from_proto(value: i32) -> Self {
        match proto::IngestionState::try_from(value) {
            Ok(proto::IngestionState::Accepted) => Self::Accepted,
            Ok(proto::IngestionState::Indexed) => Self::Indexed,
            Ok(proto::IngestionState::Failed) => Self::Failed,
            Ok(proto::IngestionState::Deleted) => Self::Deleted,
            Ok(proto::IngestionState::Unspecified) | Err(_) => Self::Unspecified,
        }
    }
}

impl fmt::Display for IngestionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What an ingestion does to its document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Not set, or an operation newer than this client.
    Unspecified,
    /// Creates or replaces the document (ingest).
    Upsert,
    /// Removes the document and its chunks.
    Delete,
}

impl Operation {
    fn from_proto(value: i32) -> Self {
        match proto::Operation::try_from(value) {
            Ok(proto::Operation::Upsert) => Self::Upsert,
            Ok(proto::Operation::Delete) => Self::Delete,
            Ok(proto::Operation::Unspecified) | Err(_) => Self::Unspecified,
        }
    }
}

fn time(stamp: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    stamp.and_then(|stamp| SystemTime::try_from(stamp).ok())
}

/// One document (or deletion) on its way through Sluice.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Ingestion {
    /// Assigned by the gateway; names the ingestion in
    /// [`get_ingestion`](crate::Client::get_ingestion) and watches.
    pub ingestion_id: String,
    /// The document it ingests or deletes.
    pub document_id: String,
    /// Where it is now.
    pub state: IngestionState,
    /// Whether it ingests or deletes the document.
    pub operation: Operation,
    /// Chunks indexed (indexed), or removed (deleted); 0 otherwise.
    pub chunk_count: u32,
    /// Why it failed (failed only).
    pub failure_reason: String,
    /// When the gateway accepted the request.
    pub accepted_at: Option<SystemTime>,
    /// When it ended; `None` while accepted.
    pub completed_at: Option<SystemTime>,
}

impl Ingestion {
    /// Whether it has ended (indexed, failed or deleted).
    pub fn is_finished(&self) -> bool {
        self.state.is_finished()
    }
}

impl From<proto::Ingestion> for Ingestion {
    fn from(message: proto::Ingestion) -> Self {
        Self {
            state: IngestionState::from_proto(message.state),
            operation: Operation::from_proto(message.operation),
            ingestion_id: message.ingestion_id,
            document_id: message.document_id,
            chunk_count: message.chunk_count,
            failure_reason: message.failure_reason,
            accepted_at: time(message.accepted_at),
            completed_at: time(message.completed_at),
        }
    }
}

/// What happened to an ingestion; [`cursor`](Self::cursor) resumes a watch after it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct IngestionEvent {
    /// The ingestion after the event: its state says which event this is.
    pub ingestion: Ingestion,
    /// Opaque: pass it to [`Watch::after_cursor`](crate::Watch::after_cursor) to resume after
    /// this event.
    pub cursor: String,
    /// When the event happened (for the current states a watch of ingestion ids starts with:
    /// when the gateway sent them).
    pub event_time: Option<SystemTime>,
}

impl From<proto::IngestionEvent> for IngestionEvent {
    fn from(message: proto::IngestionEvent) -> Self {
        Self {
            ingestion: message.ingestion.unwrap_or_default().into(),
            cursor: message.cursor,
            event_time: time(message.event_time),
        }
    }
}

/// One chunk that matched a search: its document, place, text, score and attributes.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Hit {
    /// The document the chunk belongs to.
    pub document_id: String,
    /// The chunk's place in its document's text: 0 for the first.
    pub chunk_index: u32,
    /// The chunk's text.
    pub text: String,
    /// Cosine similarity; higher is closer.
    pub score: f32,
    /// The document's request attributes and its schema's attribute fields.
    pub attributes: HashMap<String, String>,
}

impl From<proto::SearchHit> for Hit {
    fn from(message: proto::SearchHit) -> Self {
        Self {
            document_id: message.document_id,
            chunk_index: message.chunk_index,
            text: message.text,
            score: message.score,
            attributes: message.attributes,
        }
    }
}

/// One registered version of a tenant's document schema.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Schema {
    /// The tenant's name for it, e.g. `article`.
    pub name: String,
    /// The registry subject it lives under, e.g. `acme.article-value`.
    pub subject: String,
    /// Its version under the subject: 1 for the first.
    pub version: i32,
    /// The registry's id (what Avro binary payloads carry).
    pub id: u32,
    /// The Avro schema, JSON.
    pub definition: String,
    /// The field whose text is chunked and embedded.
    pub text_field: String,
    /// The fields stored with every chunk and usable as search filters.
    pub attribute_fields: Vec<String>,
}

impl From<proto::Schema> for Schema {
    fn from(message: proto::Schema) -> Self {
        Self {
            name: message.name,
            subject: message.subject,
            version: message.version,
            id: message.id,
            definition: message.definition,
            text_field: message.text_field,
            attribute_fields: message.attribute_fields,
        }
    }
}

/// Whether a schema could be registered as the next version of a name, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Compatibility {
    /// True when it could; then `reasons` is empty.
    pub compatible: bool,
    /// One reason per incompatibility.
    pub reasons: Vec<String>,
}

/// A document to ingest: its id, its fields (the Avro record, as JSON) and options.
///
/// ```
/// use sluice_client::Document;
/// use serde_json::json;
///
/// let note = Document::new("note-1", json!({"title": "Note", "text": "Tides follow the moon."}))
///     .with_attribute("kind", "note");
/// assert_eq!(note.attributes["kind"], "note");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// Chosen by you and stable: the same id names (and replaces) the same document.
    pub document_id: String,
    /// The record's fields as Avro's JSON encoding has them, a JSON object (see
    /// [`to_avro_json`](crate::to_avro_json)).
    pub fields: serde_json::Value,
    /// Free-form string attributes stored with every chunk, usable as search filters.
    pub attributes: BTreeMap<String, String>,
    /// One of the tenant's schema names; empty: the gateway's default (`document`).
    pub schema: String,
    /// Which version of `schema`; 0: the latest.
    pub schema_version: i32,
    /// The Avro definition the fields are written in: when given, unions are written as
    /// Avro's `{"<type>": value}` (see [`to_avro_json`](crate::to_avro_json)).
    pub avro_schema: Option<serde_json::Value>,
}

impl Document {
    /// A document of the default schema (unless [`with_schema`](Self::with_schema) names
    /// another) with these fields.
    pub fn new(document_id: impl Into<String>, fields: serde_json::Value) -> Self {
        Self {
            document_id: document_id.into(),
            fields,
            attributes: BTreeMap::new(),
            schema: String::new(),
            schema_version: 0,
            avro_schema: None,
        }
    }

    /// A document whose fields are `fields` serialized to JSON (a struct, a map, ...).
    /// `InvalidArgument` (raised here, not by the gateway) when it has no JSON form.
    pub fn from_serialize(
        document_id: impl Into<String>,
        fields: &impl Serialize,
    ) -> Result<Self, Error> {
        let document_id = document_id.into();
        match serde_json::to_value(fields) {
            Ok(fields) => Ok(Self::new(document_id, fields)),
            Err(e) => Err(Error::new(
                Code::InvalidArgument,
                format!("document {document_id}: its fields have no JSON encoding: {e}"),
            )),
        }
    }

    /// Adds an attribute.
    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Adds attributes.
    pub fn with_attributes<K: Into<String>, V: Into<String>>(
        mut self,
        attributes: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.attributes
            .extend(attributes.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Names the tenant's schema the fields are written in.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Which version of the schema (0: the latest).
    pub fn with_schema_version(mut self, version: i32) -> Self {
        self.schema_version = version;
        self
    }

    /// The schema's Avro definition, JSON text (e.g. [`Schema::definition`]): unions are
    /// then written as Avro's `{"<type>": value}`. `InvalidArgument` when it is not JSON.
    pub fn with_avro_schema(mut self, definition: &str) -> Result<Self, Error> {
        match serde_json::from_str(definition) {
            Ok(schema) => {
                self.avro_schema = Some(schema);
                Ok(self)
            }
            Err(e) => Err(Error::new(
                Code::InvalidArgument,
                format!(
                    "document {}: the Avro schema is not JSON: {e}",
                    self.document_id
                ),
            )),
        }
    }
}

impl<S: Into<String>> From<(S, serde_json::Value)> for Document {
    fn from((document_id, fields): (S, serde_json::Value)) -> Self {
        Document::new(document_id, fields)
    }
}
