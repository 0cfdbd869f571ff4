//! One document record through the pipeline: decode → chunk → embed → index.

use std::sync::Arc;
use std::time::Instant;

use tracing::{info_span, Instrument};

use sluice_core::record::{DocumentRecord, Operation, Outcome};
use sluice_core::schema::DocumentSchema;
use sluice_core::schema_registry::catalog::CatalogError;
use sluice_core::schema_registry::SchemaCatalog;
use sluice_core::telemetry::Chain;
use sluice_core::vector::{Chunk, IndexedDocument, VectorStore};
use sluice_embed::Embedder;

use crate::chunk::Chunker;

/// What became of a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    pub outcome: Outcome,
    pub chunk_count: u32,
    pub failure_reason: Option<String>,
}

/// Why a record could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The record itself is bad (undecodable payload, no text, unknown schema): retrying
    /// cannot help, so the ingestion fails with this reason.
    #[error("{0}")]
    Rejected(String),
    /// The model, the vector store or the schema registry failed; retrying may help.
    #[error("{0}")]
    Transient(String),
}

impl ProcessError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ProcessError::Transient(_))
    }

    /// Short class for dead-letter headers and logs.
    pub fn class(&self) -> &'static str {
        match self {
            ProcessError::Rejected(_) => "rejected",
            ProcessError::Transient(_) => "transient",
        }
    }
}

/// The stages, wired together. Cheap to clone.
#[derive(Clone)]
pub struct Indexer {
    schemas: Arc<SchemaCatalog>,
    chunker: Arc<Chunker>,
    embedder: Arc<Embedder>,
    store: Arc<dyn VectorStore>,
}

impl Indexer {
    pub fn new(
        schemas: Arc<SchemaCatalog>,
        chunker: Arc<Chunker>,
        embedder: Arc<Embedder>,
        store: Arc<dyn VectorStore>,
    ) -> Self {
        Self {
            schemas,
            chunker,
            embedder,
            store,
        }
    }

    pub async fn process(&self, record: &DocumentRecord) -> Result<Processed, ProcessError> {
        match record.operation {
            Operation::Upsert => self.upsert(record).await,
            Operation::Delete => self.delete(record).await,
        }
    }

    async fn upsert(&self, record: &DocumentRecord) -> Result<Processed, ProcessError> {
        let text = self.decode(record).instrument(info_span!("decode")).await?;
        let pieces = self.chunk(text.0).instrument(info_span!("chunk")).await?;
        let started = Instant::now();
        let vectors = self
            .embed(&pieces)
            .instrument(info_span!("embed", chunks = pieces.len()))
            .await?;
        metrics::histogram!("sluice_worker_embedding_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("sluice_worker_embedding_chunks_per_batch").record(pieces.len() as f64);
        metrics::counter!("sluice_worker_chunks_embedded_total").increment(pieces.len() as u64);
        let chunks: Vec<Chunk> = pieces
            .into_iter()
            .zip(vectors)
            .enumerate()
            .map(|(index, (text, vector))| Chunk {
                index: index as u32,
                text,
                vector,
            })
            .collect();
        let chunk_count = chunks.len() as u32;
        // Request attributes first; the schema's declared attributes win on a clash because
        // they are part of the validated document.
        let mut attributes = record.attributes.clone();
        attributes.extend(text.1);
        let started = Instant::now();
        let upsert = info_span!("upsert", store = self.store.kind(), points = chunks.len());
        self.store
            .index_document(IndexedDocument {
                tenant: record.tenant.to_string(),
                document_id: record.document_id.clone(),
                ingestion_id: record.ingestion_id.clone(),
                attributes,
                chunks,
            })
            .instrument(upsert)
            .await
            .map_err(|e| ProcessError::Transient(Chain(&e).to_string()))?;
        metrics::histogram!("sluice_worker_upsert_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(Processed {
            outcome: Outcome::Indexed,
            chunk_count,
            failure_reason: None,
        })
    }

    async fn delete(&self, record: &DocumentRecord) -> Result<Processed, ProcessError> {
        let removed = self
            .store
            .delete_document(record.tenant.as_str(), &record.document_id)
            .await
            .map_err(|e| ProcessError::Transient(Chain(&e).to_string()))?;
        Ok(Processed {
            outcome: Outcome::Deleted,
            chunk_count: removed as u32,
            failure_reason: None,
        })
    }

    /// Stage 1: the Avro payload → its text and declared attributes, read with the schema its
    /// id names (whichever version that is: old records stay readable as schemas evolve).
    async fn decode(
        &self,
        record: &DocumentRecord,
    ) -> Result<(String, std::collections::BTreeMap<String, String>), ProcessError> {
        let schema = match record.schema_id {
            Some(id) => self.schemas.by_id(id).await.map_err(|e| match e {
                CatalogError::Unavailable(reason) => ProcessError::Transient(reason),
                other => ProcessError::Rejected(other.to_string()),
            })?,
            // Written before schemas were registered: plain Avro of the default schema.
            None => {
                let default = DocumentSchema::default_document();
                if record.schema_fingerprint != default.fingerprint() {
                    return Err(ProcessError::Rejected(format!(
                        "record carries no schema id and an unknown schema {}",
                        record.schema_fingerprint
                    )));
                }
                Arc::new(default)
            }
        };
        let content = schema
            .decode_binary(&record.payload)
            .map_err(|violations| {
                ProcessError::Rejected(
                    violations
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?;
        Ok((content.text, content.attributes))
    }

    /// Stage 2: text → chunks of at most the configured number of model tokens.
    async fn chunk(&self, text: String) -> Result<Vec<String>, ProcessError> {
        let chunker = self.chunker.clone();
        let chunks = tokio::task::spawn_blocking(move || chunker.split_document(&text))
            .await
            .map_err(|e| ProcessError::Transient(format!("chunking: {}", Chain(&e))))?
            .map_err(|too_long| ProcessError::Rejected(format!("text: {too_long}")))?;
        if chunks.is_empty() {
            return Err(ProcessError::Rejected("text: nothing to index".into()));
        }
        Ok(chunks)
    }

    /// Stage 3: chunks → embeddings (CPU-bound, so off the async threads).
    async fn embed(&self, chunks: &[String]) -> Result<Vec<Vec<f32>>, ProcessError> {
        let embedder = self.embedder.clone();
        let chunks = chunks.to_vec();
        tokio::task::spawn_blocking(move || {
            let texts: Vec<&str> = chunks.iter().map(String::as_str).collect();
            embedder.embed(&texts)
        })
        .await
        .map_err(|e| ProcessError::Transient(format!("embedding: {}", Chain(&e))))?
        .map_err(|e| ProcessError::Transient(format!("embedding: {}", Chain(&e))))
    }
}
