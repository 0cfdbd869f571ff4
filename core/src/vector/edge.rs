//! [`EdgeStore`]: Qdrant's engine in-process (`qdrant-edge` 0.7), one shard in one directory.
//!
//! What qdrant-edge 0.7 does that shapes this file:
//! - Every call is synchronous and may block on disk, so each runs in `spawn_blocking`.
//! - [`EdgeShard::load`] does not replay the WAL: a write survives a crash only once the segments
//!   themselves are flushed. So every write ends with [`EdgeShard::flush`] before it returns.
//! - `flush` panics (it `try_lock`s the WAL) when a write runs beside it, so writes and flushes
//!   take `Inner::write_lock`; reads run concurrently with everything.
//! - The WAL directory is locked (`flock`) while the shard is open: a second `open` of the same
//!   directory, in this process or another, fails instead of corrupting it.
//!
//! The second half of the file holds what [`super::server`] shares with this store: the payload
//! written for a chunk, the filters each operation uses, and how a payload reads back as a hit.

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    Condition, CountRequest, CreateIndex, Distance, EdgeConfig, EdgeShard, EdgeVectorParams,
    FieldCondition, FieldIndexOperations, Filter, JsonPath, KeywordIndexParams, Match, NamedQuery,
    OperationError, PayloadFieldSchema, PayloadSchemaParams, PayloadSchemaType, PointId,
    PointInsertOperations, PointOperations, PointStruct, PointStructPersisted, QueryEnum,
    QueryRequest, Range, ScoringQuery, UpdateOperation, ValueVariants, WithPayloadInterface,
    WithVector, DEFAULT_VECTOR_NAME,
};
use serde_json::{Map, Value};

use super::{
    payload, point_id, Chunk, IndexedDocument, VectorHit, VectorQuery, VectorStore,
    VectorStoreError,
};

/// The vector store embedded in this process. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct EdgeStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shard: EdgeShard,
    dimension: usize,
    /// Held by every write and its flush: `EdgeShard::flush` panics if the WAL is busy.
    write_lock: Mutex<()>,
}

impl EdgeStore {
    /// Opens the store in `dir`, creating it on first use (cosine distance, one unnamed dense
    /// vector of `dimension`). Reopening keeps every point; a store created with another
    /// dimension is refused rather than silently mixed.
    ///
    /// Blocks on disk: call it at startup, or inside `spawn_blocking`.
    pub fn open(dir: &Path, dimension: usize) -> Result<EdgeStore, VectorStoreError> {
        let shard = match EdgeConfig::load(dir) {
            Some(config) => {
                let config = config.map_err(engine_error("read the shard config"))?;
                check_stored_dimension(&config, dimension, dir)?;
                EdgeShard::load(dir, None).map_err(engine_error("load the shard"))?
            }
            None => {
                std::fs::create_dir_all(dir).map_err(|err| {
                    VectorStoreError::other(format!("create {}", dir.display())).caused_by(err)
                })?;
                EdgeShard::new(dir, new_config(dimension))
                    .map_err(engine_error("create the shard"))?
            }
        };
        create_missing_indexes(&shard)?;
        Ok(EdgeStore {
            inner: Arc::new(Inner {
                shard,
                dimension,
                write_lock: Mutex::new(()),
            }),
        })
    }

    /// Runs a read on a blocking thread.
    async fn read<T, F>(&self, read: F) -> Result<T, VectorStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&EdgeShard) -> Result<T, VectorStoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || read(&inner.shard))
            .await
            .map_err(join_error)?
    }

    /// Runs a write on a blocking thread, then flushes, so the write is on disk when this
    /// returns (the engine would not replay it from its WAL after a crash).
    async fn write<T, F>(&self, write: F) -> Result<T, VectorStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&EdgeShard) -> Result<T, VectorStoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // The guard protects no data, so a poisoned lock is still a working lock.
            let _guard = inner
                .write_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Flush even after a failed write: part of it may have been applied.
            let result = write(&inner.shard);
            flush(&inner.shard)?;
            result
        })
        .await
        .map_err(join_error)?
    }

    fn check_dimension(&self, vector: &[f32]) -> Result<(), VectorStoreError> {
        check_dimension(vector, self.inner.dimension)
    }
}

#[async_trait]
impl VectorStore for EdgeStore {
    fn kind(&self) -> &'static str {
        "qdrant-edge"
    }

    async fn index_document(&self, document: IndexedDocument) -> Result<(), VectorStoreError> {
        self.index_documents(vec![document]).await
    }

    async fn index_documents(
        &self,
        documents: Vec<IndexedDocument>,
    ) -> Result<(), VectorStoreError> {
        // Each document: its points, then the filter for its chunks past the new last one.
        let mut writes = Vec::with_capacity(documents.len());
        for document in &documents {
            for chunk in &document.chunks {
                self.check_dimension(&chunk.vector)?;
            }
            let points: Vec<PointStructPersisted> = document
                .chunks
                .iter()
                .map(|chunk| edge_point(document, chunk))
                .collect();
            let stale = edge_filter(&stale_chunk_clauses(
                &document.tenant,
                &document.document_id,
                chunk_count(document)?,
            ))?;
            writes.push((points, stale));
        }
        // One write and one flush for all of them.
        self.write(move |shard| {
            for (points, stale) in writes {
                if !points.is_empty() {
                    let upsert =
                        PointOperations::UpsertPoints(PointInsertOperations::PointsList(points));
                    shard
                        .update(UpdateOperation::PointOperation(upsert))
                        .map_err(engine_error("upsert points"))?;
                }
                shard
                    .update(UpdateOperation::PointOperation(
                        PointOperations::DeletePointsByFilter(stale),
                    ))
                    .map_err(engine_error("delete stale chunks"))?;
            }
            Ok(())
        })
        .await
    }

    async fn delete_document(
        &self,
        tenant: &str,
        document_id: &str,
    ) -> Result<u64, VectorStoreError> {
        let filter = edge_filter(&document_clauses(tenant, document_id))?;
        // Counting under the write lock makes the count exactly what the delete removes.
        self.write(move |shard| {
            let count = exact_count(shard, filter.clone())?;
            if count > 0 {
                shard
                    .update(UpdateOperation::PointOperation(
                        PointOperations::DeletePointsByFilter(filter),
                    ))
                    .map_err(engine_error("delete points"))?;
            }
            Ok(count)
        })
        .await
    }

    async fn search(&self, query: VectorQuery) -> Result<Vec<VectorHit>, VectorStoreError> {
        self.check_dimension(&query.vector)?;
        if query.top_k == 0 {
            return Ok(Vec::new());
        }
        let request = QueryRequest {
            prefetches: Vec::new(),
            query: Some(ScoringQuery::Vector(QueryEnum::Nearest(
                NamedQuery::default_dense(query.vector.clone()),
            ))),
            filter: Some(edge_filter(&search_clauses(&query)?)?),
            score_threshold: None,
            limit: query.top_k as usize,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(true),
        };
        self.read(move |shard| {
            let points = shard.query(request).map_err(engine_error("search"))?;
            points
                .into_iter()
                .map(|point| {
                    let stored = point.payload.map(|stored| stored.0).unwrap_or_default();
                    hit_from_payload(&stored, point.score)
                })
                .collect()
        })
        .await
    }

    async fn count_document(
        &self,
        tenant: &str,
        document_id: &str,
    ) -> Result<u64, VectorStoreError> {
        let filter = edge_filter(&document_clauses(tenant, document_id))?;
        self.read(move |shard| exact_count(shard, filter)).await
    }

    async fn health(&self) -> Result<(), VectorStoreError> {
        // Touches every segment's lock without scanning points.
        self.read(|shard| {
            shard.info();
            Ok(())
        })
        .await
    }
}

fn new_config(dimension: usize) -> EdgeConfig {
    EdgeConfig::builder()
        .vector(
            DEFAULT_VECTOR_NAME,
            EdgeVectorParams::builder(dimension, Distance::Cosine).build(),
        )
        .build()
}

fn check_stored_dimension(
    config: &EdgeConfig,
    dimension: usize,
    dir: &Path,
) -> Result<(), VectorStoreError> {
    match config.vectors.get(DEFAULT_VECTOR_NAME) {
        Some(params) if params.size == dimension && params.distance == Distance::Cosine => Ok(()),
        Some(params) => Err(VectorStoreError::other(format!(
            "the store in {} holds {:?} vectors of dimension {}, not cosine vectors of dimension \
             {dimension}; use another directory or re-index into a fresh one",
            dir.display(),
            params.distance,
            params.size,
        ))),
        None => Err(VectorStoreError::other(format!(
            "the store in {} has no default dense vector",
            dir.display()
        ))),
    }
}

/// Creates the keyword indexes on `tenant` (as the tenant key) and `document_id` unless the
/// shard already has them, so that a store created by an older build gains them too.
fn create_missing_indexes(shard: &EdgeShard) -> Result<(), VectorStoreError> {
    let existing = shard.info().payload_schema;
    let tenant_index =
        PayloadFieldSchema::FieldParams(PayloadSchemaParams::Keyword(KeywordIndexParams {
            is_tenant: Some(true),
            ..KeywordIndexParams::default()
        }));
    let document_index = PayloadFieldSchema::FieldType(PayloadSchemaType::Keyword);

    let mut created = false;
    for (key, schema) in [
        (payload::TENANT, tenant_index),
        (payload::DOCUMENT_ID, document_index),
    ] {
        let field_name = json_path(key)?;
        if existing.contains_key(&field_name) {
            continue;
        }
        let create = FieldIndexOperations::CreateIndex(CreateIndex {
            field_name,
            field_schema: Some(schema),
        });
        shard
            .update(UpdateOperation::FieldIndexOperation(create))
            .map_err(engine_error("create a payload index"))?;
        created = true;
    }
    if created {
        flush(shard)?;
    }
    Ok(())
}

fn edge_point(document: &IndexedDocument, chunk: &Chunk) -> PointStructPersisted {
    let id = point_id(&document.tenant, &document.document_id, chunk.index);
    PointStruct::new(
        PointId::Uuid(id),
        chunk.vector.clone(),
        Value::Object(chunk_payload(document, chunk)),
    )
    .into()
}

fn exact_count(shard: &EdgeShard, filter: Filter) -> Result<u64, VectorStoreError> {
    let count = shard
        .count(CountRequest {
            filter: Some(filter),
            exact: true,
        })
        .map_err(engine_error("count points"))?;
    Ok(count as u64)
}

/// Flushes the WAL and every segment to disk. The engine reports a failed flush by panicking,
/// which is turned back into an error here.
fn flush(shard: &EdgeShard) -> Result<(), VectorStoreError> {
    panic::catch_unwind(AssertUnwindSafe(|| shard.flush())).map_err(|panic| {
        VectorStoreError::other(format!(
            "flush to disk failed: {}",
            panic_message(panic.as_ref())
        ))
    })
}

/// The engine's form of a shared filter: every clause must hold.
fn edge_filter(clauses: &[Clause]) -> Result<Filter, VectorStoreError> {
    let conditions = clauses
        .iter()
        .map(|clause| {
            let field = match clause {
                Clause::Equals { path, value } => FieldCondition::new_match(
                    json_path(path)?,
                    Match::new_value(ValueVariants::String(value.clone())),
                ),
                Clause::AtLeast { path, min } => FieldCondition::new_range(
                    json_path(path)?,
                    Range {
                        gte: Some(OrderedFloat(f64::from(*min))),
                        ..Range::default()
                    },
                ),
            };
            Ok(Condition::Field(field))
        })
        .collect::<Result<Vec<_>, VectorStoreError>>()?;
    Ok(Filter {
        must: Some(conditions),
        ..Filter::default()
    })
}

fn json_path(path: &str) -> Result<JsonPath, VectorStoreError> {
    path.parse()
        .map_err(|()| VectorStoreError::other(format!("invalid payload path {path:?}")))
}

fn engine_error(action: &'static str) -> impl Fn(OperationError) -> VectorStoreError {
    move |err| VectorStoreError::other(format!("qdrant-edge: {action}")).caused_by(err)
}

fn join_error(err: tokio::task::JoinError) -> VectorStoreError {
    if err.is_panic() {
        VectorStoreError::other(format!(
            "qdrant-edge panicked: {}",
            panic_message(err.into_panic().as_ref())
        ))
    } else {
        // Only a shutting-down runtime cancels blocking tasks.
        VectorStoreError::unavailable("qdrant-edge call cancelled".to_string())
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

// ---------------------------------------------------------------------------------------------
// Shared with `server.rs`: both stores write the same payload and select points with the same
// clauses, each translating them into its own library's types.
// ---------------------------------------------------------------------------------------------

/// One condition of a filter, before a store turns it into its library's type. A filter is a
/// list of clauses that must all hold.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Clause {
    /// The keyword at payload path `path` equals `value`.
    Equals { path: String, value: String },
    /// The number at payload path `path` is at least `min`.
    AtLeast { path: String, min: u32 },
}

/// Every point of one document.
pub(super) fn document_clauses(tenant: &str, document_id: &str) -> Vec<Clause> {
    vec![
        Clause::Equals {
            path: payload::TENANT.to_string(),
            value: tenant.to_string(),
        },
        Clause::Equals {
            path: payload::DOCUMENT_ID.to_string(),
            value: document_id.to_string(),
        },
    ]
}

/// The points of one document from chunk `first_stale` on: left over from a longer version.
pub(super) fn stale_chunk_clauses(
    tenant: &str,
    document_id: &str,
    first_stale: u32,
) -> Vec<Clause> {
    let mut clauses = document_clauses(tenant, document_id);
    clauses.push(Clause::AtLeast {
        path: payload::CHUNK_INDEX.to_string(),
        min: first_stale,
    });
    clauses
}

/// The query's tenant, plus each requested attribute.
pub(super) fn search_clauses(query: &VectorQuery) -> Result<Vec<Clause>, VectorStoreError> {
    let mut clauses = vec![Clause::Equals {
        path: payload::TENANT.to_string(),
        value: query.tenant.clone(),
    }];
    for (key, value) in &query.attributes {
        clauses.push(Clause::Equals {
            path: attribute_path(key)?,
            value: value.clone(),
        });
    }
    Ok(clauses)
}

/// The payload path of one attribute. The key is quoted so that dots or brackets in it stay
/// part of the key; Qdrant's path syntax cannot express a key containing `"` or `\`.
pub(super) fn attribute_path(key: &str) -> Result<String, VectorStoreError> {
    if key.contains(['"', '\\']) {
        return Err(VectorStoreError::other(format!(
            "attribute {key:?} cannot be filtered on: keys with '\"' or '\\' are not supported"
        )));
    }
    Ok(format!("{}.\"{key}\"", payload::ATTRIBUTES))
}

/// The number of chunks, which is also the first chunk index that must not exist any more.
pub(super) fn chunk_count(document: &IndexedDocument) -> Result<u32, VectorStoreError> {
    u32::try_from(document.chunks.len())
        .map_err(|_| VectorStoreError::other("a document cannot have 2^32 chunks".to_string()))
}

pub(super) fn check_dimension(vector: &[f32], dimension: usize) -> Result<(), VectorStoreError> {
    if vector.len() == dimension {
        Ok(())
    } else {
        Err(VectorStoreError::other(format!(
            "vector has {} dimensions, the store holds {dimension}",
            vector.len()
        )))
    }
}

/// The payload stored with one chunk's point.
pub(super) fn chunk_payload(document: &IndexedDocument, chunk: &Chunk) -> Map<String, Value> {
    let attributes: Map<String, Value> = document
        .attributes
        .iter()
        .map(|(key, value)| (key.clone(), Value::String(value.clone())))
        .collect();
    let mut map = Map::new();
    map.insert(payload::TENANT.into(), document.tenant.clone().into());
    map.insert(
        payload::DOCUMENT_ID.into(),
        document.document_id.clone().into(),
    );
    map.insert(payload::CHUNK_INDEX.into(), chunk.index.into());
    map.insert(payload::TEXT.into(), chunk.text.clone().into());
    map.insert(
        payload::INGESTION_ID.into(),
        document.ingestion_id.clone().into(),
    );
    map.insert(payload::ATTRIBUTES.into(), Value::Object(attributes));
    map
}

/// Reads a stored payload back as a search hit.
pub(super) fn hit_from_payload(
    stored: &Map<String, Value>,
    score: f32,
) -> Result<VectorHit, VectorStoreError> {
    let string = |key: &str| {
        stored
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| corrupt_payload(key))
    };
    let chunk_index = stored
        .get(payload::CHUNK_INDEX)
        .and_then(Value::as_u64)
        .and_then(|index| u32::try_from(index).ok())
        .ok_or_else(|| corrupt_payload(payload::CHUNK_INDEX))?;
    // Attributes are always strings when written here; anything else is skipped, not fatal.
    let attributes: BTreeMap<String, String> = stored
        .get(payload::ATTRIBUTES)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_string())))
        .collect();
    Ok(VectorHit {
        document_id: string(payload::DOCUMENT_ID)?,
        chunk_index,
        text: string(payload::TEXT)?,
        score,
        attributes,
    })
}

fn corrupt_payload(key: &str) -> VectorStoreError {
    VectorStoreError::other(format!("stored point lacks a valid {key:?}"))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const DIM: usize = 4;

    fn document(tenant: &str, document_id: &str, chunks: &[(&str, [f32; DIM])]) -> IndexedDocument {
        IndexedDocument {
            tenant: tenant.to_string(),
            document_id: document_id.to_string(),
            ingestion_id: format!("ing-{document_id}"),
            attributes: BTreeMap::new(),
            chunks: chunks
                .iter()
                .enumerate()
                .map(|(index, (text, vector))| Chunk {
                    index: index as u32,
                    text: text.to_string(),
                    vector: vector.to_vec(),
                })
                .collect(),
        }
    }

    fn with_attributes(mut document: IndexedDocument, pairs: &[(&str, &str)]) -> IndexedDocument {
        document.attributes = pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        document
    }

    fn query(tenant: &str, vector: [f32; DIM], top_k: u32) -> VectorQuery {
        VectorQuery {
            tenant: tenant.to_string(),
            vector: vector.to_vec(),
            top_k,
            attributes: BTreeMap::new(),
        }
    }

    fn texts(hits: &[VectorHit]) -> Vec<&str> {
        hits.iter().map(|hit| hit.text.as_str()).collect()
    }

    /// For hits with equal scores, whose order is arbitrary.
    fn sorted_texts(hits: &[VectorHit]) -> Vec<&str> {
        let mut texts = texts(hits);
        texts.sort_unstable();
        texts
    }

    fn open(dir: &Path) -> EdgeStore {
        EdgeStore::open(dir, DIM).expect("open the store")
    }

    /// Copies a directory tree: what a crashed process would leave on disk.
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target: PathBuf = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn search_returns_best_first_with_payload() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let doc = with_attributes(
            document(
                "acme",
                "doc-1",
                &[
                    ("east", [1.0, 0.0, 0.0, 0.0]),
                    ("north", [0.0, 1.0, 0.0, 0.0]),
                    ("north-east", [1.0, 1.0, 0.0, 0.0]),
                ],
            ),
            &[("lang", "en")],
        );
        store.index_document(doc).await.unwrap();

        let hits = store
            .search(query("acme", [1.0, 0.2, 0.0, 0.0], 3))
            .await
            .unwrap();

        assert_eq!(texts(&hits), ["east", "north-east", "north"]);
        assert!(hits.windows(2).all(|pair| pair[0].score > pair[1].score));
        // Cosine of (1, 0.2) and (1, 0).
        let expected = 1.0 / (1.0f32 + 0.04).sqrt();
        assert!((hits[0].score - expected).abs() < 1e-4, "{}", hits[0].score);
        let best = &hits[0];
        assert_eq!(best.document_id, "doc-1");
        assert_eq!(best.chunk_index, 0);
        assert_eq!(best.attributes.get("lang").map(String::as_str), Some("en"));
        assert_eq!(hits[1].chunk_index, 2);

        let top_one = store
            .search(query("acme", [0.0, 1.0, 0.0, 0.0], 1))
            .await
            .unwrap();
        assert_eq!(texts(&top_one), ["north"]);
        assert!(store
            .search(query("acme", [1.0, 0.0, 0.0, 0.0], 0))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn tenants_are_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let vector = [1.0, 0.0, 0.0, 0.0];
        store
            .index_document(document("a", "shared", &[("a0", vector), ("a1", vector)]))
            .await
            .unwrap();
        store
            .index_document(document("b", "shared", &[("b0", vector)]))
            .await
            .unwrap();

        assert_eq!(store.count_document("a", "shared").await.unwrap(), 2);
        assert_eq!(store.count_document("b", "shared").await.unwrap(), 1);
        let hits = store.search(query("a", vector, 10)).await.unwrap();
        assert_eq!(sorted_texts(&hits), ["a0", "a1"]);
        let hits = store.search(query("b", vector, 10)).await.unwrap();
        assert_eq!(texts(&hits), ["b0"]);
        assert!(store
            .search(query("c", vector, 10))
            .await
            .unwrap()
            .is_empty());

        // Deleting in one tenant leaves the other's document of the same id alone.
        assert_eq!(store.delete_document("a", "shared").await.unwrap(), 2);
        assert_eq!(store.count_document("b", "shared").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn reindexing_with_fewer_chunks_removes_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let v = [0.0, 0.0, 1.0, 0.0];
        store
            .index_document(document("t", "d", &[("old0", v), ("old1", v), ("old2", v)]))
            .await
            .unwrap();
        // Another document whose chunks must survive the cleanup.
        store
            .index_document(document("t", "other", &[("o0", v), ("o1", v), ("o2", v)]))
            .await
            .unwrap();
        assert_eq!(store.count_document("t", "d").await.unwrap(), 3);

        store
            .index_document(document("t", "d", &[("new0", v)]))
            .await
            .unwrap();

        assert_eq!(store.count_document("t", "d").await.unwrap(), 1);
        assert_eq!(store.count_document("t", "other").await.unwrap(), 3);
        let hits = store.search(query("t", v, 10)).await.unwrap();
        assert_eq!(sorted_texts(&hits), ["new0", "o0", "o1", "o2"]);

        // No chunks at all leaves nothing of the document.
        store.index_document(document("t", "d", &[])).await.unwrap();
        assert_eq!(store.count_document("t", "d").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn indexing_twice_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let doc = document(
            "t",
            "d",
            &[
                ("c0", [1.0, 0.0, 0.0, 0.0]),
                ("c1", [0.0, 1.0, 0.0, 0.0]),
                ("c2", [0.0, 0.0, 1.0, 0.0]),
            ],
        );
        store.index_document(doc.clone()).await.unwrap();
        store.index_document(doc).await.unwrap();

        assert_eq!(store.count_document("t", "d").await.unwrap(), 3);
        let hits = store
            .search(query("t", [1.0, 1.0, 1.0, 0.0], 10))
            .await
            .unwrap();
        assert_eq!(hits.len(), 3);
    }

    #[tokio::test]
    async fn delete_returns_count_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let v = [0.0, 1.0, 0.0, 0.0];
        store
            .index_document(document("t", "d", &[("c0", v), ("c1", v)]))
            .await
            .unwrap();
        store
            .index_document(document("t", "keep", &[("k0", v)]))
            .await
            .unwrap();

        assert_eq!(store.delete_document("t", "d").await.unwrap(), 2);
        assert_eq!(store.count_document("t", "d").await.unwrap(), 0);
        assert_eq!(
            texts(&store.search(query("t", v, 10)).await.unwrap()),
            ["k0"]
        );
        // Deleting again is a no-op.
        assert_eq!(store.delete_document("t", "d").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn search_filters_by_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let v = [1.0, 0.0, 0.0, 1.0];
        for (id, lang, kind) in [
            ("en-faq", "en", "help desk"),
            ("de-faq", "de", "help desk"),
            ("en-doc", "en", "manual"),
        ] {
            let doc = with_attributes(
                document("t", id, &[(id, v)]),
                &[("lang", lang), ("source.kind", kind)],
            );
            store.index_document(doc).await.unwrap();
        }
        let search = |pairs: &[(&str, &str)]| {
            let mut q = query("t", v, 10);
            q.attributes = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            store.search(q)
        };

        let english = search(&[("lang", "en")]).await.unwrap();
        assert_eq!(sorted_texts(&english), ["en-doc", "en-faq"]);
        // Both attributes must match; the dotted key is one key, not a nested path.
        let hits = search(&[("lang", "en"), ("source.kind", "help desk")])
            .await
            .unwrap();
        assert_eq!(texts(&hits), ["en-faq"]);
        // Equality, not word matching.
        assert!(search(&[("source.kind", "help")]).await.unwrap().is_empty());
        assert!(search(&[("lang", "fr")]).await.unwrap().is_empty());
        assert!(search(&[("missing", "x")]).await.unwrap().is_empty());
        assert!(search(&[("bad\"key", "x")]).await.is_err());
    }

    #[tokio::test]
    async fn reopening_keeps_points_and_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let v = [0.5, 0.5, 0.0, 0.0];
        {
            let store = open(dir.path());
            store
                .index_document(document("t", "d", &[("c0", v), ("c1", v), ("c2", v)]))
                .await
                .unwrap();
        }

        let store = open(dir.path());
        assert_eq!(store.count_document("t", "d").await.unwrap(), 3);
        assert_eq!(store.search(query("t", v, 10)).await.unwrap().len(), 3);
        let schema = store.inner.shard.info().payload_schema;
        let tenant = &schema[&json_path(payload::TENANT).unwrap()];
        assert!(matches!(
            &tenant.params,
            Some(PayloadSchemaParams::Keyword(KeywordIndexParams {
                is_tenant: Some(true),
                ..
            }))
        ));
        assert!(schema.contains_key(&json_path(payload::DOCUMENT_ID).unwrap()));

        // Writes after a reopen land too.
        store
            .index_document(document("t", "d", &[("c0", v)]))
            .await
            .unwrap();
        drop(store);
        assert_eq!(open(dir.path()).count_document("t", "d").await.unwrap(), 1);
    }

    /// A killed process runs no destructor: leak the store (nothing is flushed on drop) and open
    /// a copy of what is on disk at that moment.
    #[tokio::test]
    async fn writes_are_on_disk_when_index_returns() {
        let dir = tempfile::tempdir().unwrap();
        let v = [0.0, 0.0, 0.0, 1.0];
        let store = open(dir.path());
        store
            .index_document(document("t", "d", &[("c0", v), ("c1", v), ("c2", v)]))
            .await
            .unwrap();
        store
            .index_document(document("t", "gone", &[("g0", v)]))
            .await
            .unwrap();
        assert_eq!(store.delete_document("t", "gone").await.unwrap(), 1);
        std::mem::forget(store);

        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let reopened = open(copy.path());
        assert_eq!(reopened.count_document("t", "d").await.unwrap(), 3);
        assert_eq!(reopened.count_document("t", "gone").await.unwrap(), 0);
        let hits = reopened.search(query("t", v, 10)).await.unwrap();
        assert_eq!(sorted_texts(&hits), ["c0", "c1", "c2"]);
    }

    /// Without the store's write lock the engine's `flush` panics when writes overlap.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_and_reads_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
        let v = [1.0, 0.0, 1.0, 0.0];
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let id = format!("d{i}");
                    store
                        .index_document(document("t", &id, &[("a", v), ("b", v)]))
                        .await?;
                    store.search(query("t", v, 5)).await?;
                    store.count_document("t", &id).await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 2);
        }
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_directory_fails() {
        let dir = tempfile::tempdir().unwrap();
        let _store = open(dir.path());
        assert!(EdgeStore::open(dir.path(), DIM).is_err());
    }

    #[tokio::test]
    async fn wrong_dimensions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            let mut doc = document("t", "d", &[("c0", [1.0, 0.0, 0.0, 0.0])]);
            doc.chunks[0].vector.push(1.0);
            assert!(store.index_document(doc).await.is_err());
            assert_eq!(store.count_document("t", "d").await.unwrap(), 0);
            let mut q = query("t", [1.0, 0.0, 0.0, 0.0], 1);
            q.vector.pop();
            assert!(store.search(q).await.is_err());
        }
        let err = EdgeStore::open(dir.path(), DIM + 1).unwrap_err();
        assert!(err.to_string().contains("dimension 4"), "{err}");
    }

    #[test]
    fn clauses_select_documents_and_quote_attribute_keys() {
        assert_eq!(
            stale_chunk_clauses("t", "d", 2),
            [
                Clause::Equals {
                    path: "tenant".into(),
                    value: "t".into()
                },
                Clause::Equals {
                    path: "document_id".into(),
                    value: "d".into()
                },
                Clause::AtLeast {
                    path: "chunk_index".into(),
                    min: 2
                },
            ]
        );
        let mut q = query("t", [0.0; DIM], 1);
        q.attributes.insert("a.b[0]".into(), "x".into());
        assert_eq!(
            search_clauses(&q).unwrap()[1],
            Clause::Equals {
                path: "attributes.\"a.b[0]\"".into(),
                value: "x".into()
            }
        );
        // The quoted path parses as a single key under `attributes`.
        let parsed = json_path("attributes.\"a.b[0]\"").unwrap();
        assert_eq!(parsed.first_key, "attributes");
        assert_eq!(parsed.rest.len(), 1);
        assert!(attribute_path("a\\b").is_err());
    }

    #[test]
    fn payload_round_trips_into_a_hit() {
        let doc = with_attributes(document("t", "d", &[("hello", [0.0; DIM])]), &[("k", "v")]);
        let stored = chunk_payload(&doc, &doc.chunks[0]);
        assert_eq!(stored[payload::INGESTION_ID], "ing-d");
        assert_eq!(stored[payload::TENANT], "t");
        let hit = hit_from_payload(&stored, 0.5).unwrap();
        assert_eq!(
            hit,
            VectorHit {
                document_id: "d".into(),
                chunk_index: 0,
                text: "hello".into(),
                score: 0.5,
                attributes: BTreeMap::from([("k".into(), "v".into())]),
            }
        );
        let mut broken = stored.clone();
        broken.remove(payload::TEXT);
        assert!(hit_from_payload(&broken, 0.5).is_err());
    }
}
