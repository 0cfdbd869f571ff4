//! Records through the pipeline: decode → chunk → embed → index (or delete).
//!
//! A batch of records goes through together, in three calls the worker can run apart (it
//! writes one batch while the model embeds the next):
//! - [`Indexer::prepare`]: each record decoded and chunked (stages 1 and 2);
//! - [`Indexer::embed_batch`]: the chunks of all of them embedded together, so that many small
//!   documents still fill the model's passes (stage 3);
//! - [`Indexer::write`]: the store written in record order, consecutive upserts as one write
//!   (an upsert and a later delete of one document land in that order) (stage 4).
//!
//! [`Indexer::process_batch`] runs the three in a row; [`Indexer::process`] is one record alone
//! (the worker's retries).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info_span, Instrument, Span};

use sluice_core::record::{DocumentRecord, Operation, Outcome};
use sluice_core::schema::DocumentSchema;
use sluice_core::schema_registry::catalog::CatalogError;
use sluice_core::schema_registry::SchemaCatalog;
use sluice_core::telemetry::Chain;
use sluice_core::vector::{Chunk, IndexedDocument, VectorStore, VectorStoreError};
use sluice_embed::Embedder;

use crate::chunk::Chunker;

/// The dependencies a [`ProcessError::Unavailable`] names.
pub const VECTOR_STORE: &str = "vector store";
pub const SCHEMA_REGISTRY: &str = "schema registry";

/// What became of a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    pub outcome: Outcome,
    pub chunk_count: u32,
    pub failure_reason: Option<String>,
}

/// Why a record could not be processed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProcessError {
    /// The record itself is bad (undecodable payload, no text, unknown schema): retrying
    /// cannot help, so the ingestion fails with this reason.
    #[error("{0}")]
    Rejected(String),
    /// Something failed while processing this record (the model, say); retrying may help, a
    /// few times.
    #[error("{0}")]
    Transient(String),
    /// A dependency every record needs cannot be reached (the vector store, the schema
    /// registry): not the record's fault. The worker waits for it to come back rather than
    /// fail the record.
    #[error("{dependency} unavailable: {reason}")]
    Unavailable {
        dependency: &'static str,
        reason: String,
    },
}

impl ProcessError {
    /// Whether processing the record again may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, ProcessError::Rejected(_))
    }

    /// Short class for dead-letter headers, metrics and logs: `transient` for anything
    /// retrying could have fixed (the record was given up after its attempts).
    pub fn class(&self) -> &'static str {
        match self {
            ProcessError::Rejected(_) => "rejected",
            ProcessError::Transient(_) | ProcessError::Unavailable { .. } => "transient",
        }
    }

    fn store(error: &VectorStoreError) -> Self {
        let reason = Chain(error).to_string();
        if error.is_unavailable() {
            ProcessError::Unavailable {
                dependency: VECTOR_STORE,
                reason,
            }
        } else {
            ProcessError::Transient(reason)
        }
    }
}

/// A record on its way through the stages.
#[derive(Debug, Clone)]
pub enum Staged {
    /// Decoded and chunked (stages 1 and 2); `vectors` holds one embedding per piece once
    /// stage 3 has run.
    Upsert {
        pieces: Vec<String>,
        /// The schema's declared attributes.
        attributes: BTreeMap<String, String>,
        vectors: Vec<Vec<f32>>,
    },
    /// Nothing to prepare or embed.
    Delete,
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

    /// One record through the pipeline, in the current span.
    pub async fn process(&self, record: &DocumentRecord) -> Result<Processed, ProcessError> {
        let span = Span::current();
        self.process_batch(&[(record, span)]).await.remove(0)
    }

    /// Records through the pipeline together (see the module's doc), each result in its
    /// record's place.
    pub async fn process_batch(
        &self,
        records: &[(&DocumentRecord, Span)],
    ) -> Vec<Result<Processed, ProcessError>> {
        let staged = self.prepare(records).await;
        let staged = self.embed_batch(staged, records).await;
        self.write(records, staged).await
    }

    /// Stages 1 and 2, record by record: decode and chunk each upsert.
    pub async fn prepare(
        &self,
        records: &[(&DocumentRecord, Span)],
    ) -> Vec<Result<Staged, ProcessError>> {
        // Stage 1 record by record: a schema may have to be fetched.
        let mut decoded = Vec::with_capacity(records.len());
        for (record, span) in records {
            decoded.push(match record.operation {
                Operation::Upsert => self
                    .decode(record)
                    .instrument(info_span!(parent: span, "decode"))
                    .await
                    .map(Some),
                Operation::Delete => Ok(None),
            });
        }
        // Stage 2 for all of them in one blocking call (CPU work, off the async threads).
        let chunker = self.chunker.clone();
        let spans: Vec<Span> = records.iter().map(|(_, span)| span.clone()).collect();
        let count = decoded.len();
        tokio::task::spawn_blocking(move || {
            decoded
                .into_iter()
                .zip(spans)
                .map(|(decoded, span)| match decoded? {
                    None => Ok(Staged::Delete),
                    Some((text, attributes)) => {
                        let _chunk = info_span!(parent: &span, "chunk").entered();
                        Ok(Staged::Upsert {
                            pieces: chunk(&chunker, &text)?,
                            attributes,
                            vectors: Vec::new(),
                        })
                    }
                })
                .collect()
        })
        .await
        .unwrap_or_else(|e| {
            let error = ProcessError::Transient(format!("chunking: {}", Chain(&e)));
            vec![Err(error); count]
        })
    }

    /// Stage 3: the chunks of every prepared upsert embedded at once, so that many small
    /// documents still fill the model's passes. Each record's `embed` span (under its own)
    /// lasts as long as the shared embedding. A failed embedding fails every upsert of the
    /// batch.
    pub async fn embed_batch(
        &self,
        mut staged: Vec<Result<Staged, ProcessError>>,
        records: &[(&DocumentRecord, Span)],
    ) -> Vec<Result<Staged, ProcessError>> {
        let texts: Vec<String> = staged
            .iter()
            .flat_map(|s| match s {
                Ok(Staged::Upsert { pieces, .. }) => pieces.clone(),
                _ => Vec::new(),
            })
            .collect();
        if texts.is_empty() {
            return staged;
        }
        let spans: Vec<Span> = records
            .iter()
            .zip(&staged)
            .filter_map(|((_, span), s)| match s {
                Ok(Staged::Upsert { pieces, .. }) => Some(info_span!(parent: span, "embed", chunks = pieces.len(), batch_chunks = texts.len())),
                _ => None,
            })
            .collect();
        let started = Instant::now();
        let vectors = self.embed(texts).await;
        metrics::histogram!("sluice_worker_embedding_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        drop(spans);
        let mut vectors = match vectors {
            Ok(vectors) => {
                metrics::histogram!("sluice_worker_embedding_chunks_per_batch")
                    .record(vectors.len() as f64);
                metrics::counter!("sluice_worker_chunks_embedded_total")
                    .increment(vectors.len() as u64);
                vectors.into_iter()
            }
            Err(error) => {
                for s in &mut staged {
                    if matches!(s, Ok(Staged::Upsert { .. })) {
                        *s = Err(error.clone());
                    }
                }
                return staged;
            }
        };
        for s in &mut staged {
            if let Ok(Staged::Upsert {
                pieces,
                vectors: mine,
                ..
            }) = s
            {
                mine.extend(vectors.by_ref().take(pieces.len()));
            }
        }
        staged
    }

    /// Stage 4, in record order: consecutive upserts go to the store as one write; a delete
    /// waits for the upserts before it. `staged` is what [`Indexer::embed_batch`] returned for
    /// the same records.
    pub async fn write(
        &self,
        records: &[(&DocumentRecord, Span)],
        staged: Vec<Result<Staged, ProcessError>>,
    ) -> Vec<Result<Processed, ProcessError>> {
        let mut results: Vec<Option<Result<Processed, ProcessError>>> = vec![None; records.len()];
        let mut run = Vec::new();
        for (i, ((record, span), staged)) in records.iter().zip(staged).enumerate() {
            match staged {
                Err(error) => results[i] = Some(Err(error)),
                Ok(Staged::Upsert {
                    pieces,
                    attributes,
                    vectors,
                }) => run.push((i, indexed_document(record, pieces, attributes, vectors))),
                Ok(Staged::Delete) => {
                    self.upsert(std::mem::take(&mut run), records, &mut results)
                        .await;
                    results[i] = Some(self.delete(record).instrument(span.clone()).await);
                }
            }
        }
        self.upsert(run, records, &mut results).await;
        results
            .into_iter()
            .map(|result| result.expect("every record has a result"))
            .collect()
    }

    /// Stage 4 of a run of upserts: their chunks and embeddings into the store, in one write.
    async fn upsert(
        &self,
        run: Vec<(usize, IndexedDocument)>,
        records: &[(&DocumentRecord, Span)],
        results: &mut [Option<Result<Processed, ProcessError>>],
    ) {
        if run.is_empty() {
            return;
        }
        // An `upsert` span under each record's own, for as long as the shared write takes.
        let spans: Vec<Span> = run
            .iter()
            .map(|(i, document)| {
                info_span!(parent: &records[*i].1, "upsert", store = self.store.kind(), points = document.chunks.len(), batch_documents = run.len())
            })
            .collect();
        let counts: Vec<(usize, u32)> = run
            .iter()
            .map(|(i, document)| (*i, document.chunks.len() as u32))
            .collect();
        let started = Instant::now();
        let written = self
            .store
            .index_documents(run.into_iter().map(|(_, document)| document).collect())
            .await
            .map_err(|e| ProcessError::store(&e));
        metrics::histogram!("sluice_worker_upsert_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        drop(spans);
        for (i, chunk_count) in counts {
            results[i] = Some(written.clone().map(|()| Processed {
                outcome: Outcome::Indexed,
                chunk_count,
                failure_reason: None,
            }));
        }
    }

    async fn delete(&self, record: &DocumentRecord) -> Result<Processed, ProcessError> {
        let removed = self
            .store
            .delete_document(record.tenant.as_str(), &record.document_id)
            .await
            .map_err(|e| ProcessError::store(&e))?;
        Ok(Processed {
            outcome: Outcome::Deleted,
            chunk_count: removed as u32,
            failure_reason: None,
        })
    }

    /// Whether the dependencies every record needs answer now (the vector store's health
    /// check): while they do not, a failed record waits instead of failing.
    pub async fn dependencies(&self) -> Result<(), ProcessError> {
        self.store
            .health()
            .await
            .map_err(|e| ProcessError::store(&e))
    }

    /// Stage 1: the Avro payload → its text and declared attributes, read with the schema its
    /// id names (whichever version that is: old records stay readable as schemas evolve).
    async fn decode(
        &self,
        record: &DocumentRecord,
    ) -> Result<(String, BTreeMap<String, String>), ProcessError> {
        let schema = match record.schema_id {
            Some(id) => self.schemas.by_id(id).await.map_err(|e| match e {
                CatalogError::Unavailable(reason) => ProcessError::Unavailable {
                    dependency: SCHEMA_REGISTRY,
                    reason,
                },
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

    /// Stage 3: chunks → embeddings (CPU-bound, so off the async threads).
    async fn embed(&self, chunks: Vec<String>) -> Result<Vec<Vec<f32>>, ProcessError> {
        let embedder = self.embedder.clone();
        tokio::task::spawn_blocking(move || {
            let texts: Vec<&str> = chunks.iter().map(String::as_str).collect();
            embedder.embed(&texts)
        })
        .await
        .map_err(|e| ProcessError::Transient(format!("embedding: {}", Chain(&e))))?
        .map_err(|e| ProcessError::Transient(format!("embedding: {}", Chain(&e))))
    }
}

/// Stage 2: text → chunks of at most the configured number of model tokens.
fn chunk(chunker: &Chunker, text: &str) -> Result<Vec<String>, ProcessError> {
    let chunks = chunker
        .split_document(text)
        .map_err(|too_long| ProcessError::Rejected(format!("text: {too_long}")))?;
    if chunks.is_empty() {
        return Err(ProcessError::Rejected("text: nothing to index".into()));
    }
    Ok(chunks)
}

/// What the store keeps for an upsert: its chunks with their embeddings, and the attributes.
fn indexed_document(
    record: &DocumentRecord,
    pieces: Vec<String>,
    declared: BTreeMap<String, String>,
    vectors: Vec<Vec<f32>>,
) -> IndexedDocument {
    let chunks = pieces
        .into_iter()
        .zip(vectors)
        .enumerate()
        .map(|(index, (text, vector))| Chunk {
            index: index as u32,
            text,
            vector,
        })
        .collect();
    // Request attributes first; the schema's declared attributes win on a clash because they
    // are part of the validated document.
    let mut attributes = record.attributes.clone();
    attributes.extend(declared);
    IndexedDocument {
        tenant: record.tenant.to_string(),
        document_id: record.document_id.clone(),
        ingestion_id: record.ingestion_id.clone(),
        attributes,
        chunks,
    }
}
