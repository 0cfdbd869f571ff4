//! The vector store: one trait, two implementations.
//!
//! - [`edge::EdgeStore`]: Qdrant's engine in-process (`qdrant-edge`), on disk under the data dir.
//!   The default; one process owns it, so gateway and worker share it in `standalone` mode.
//! - [`server::QdrantServerStore`]: a Qdrant server through `qdrant-client`, for separate gateway
//!   and worker processes.
//!
//! Point ids derive from (tenant, document id, chunk index) so indexing a record twice changes
//! nothing, and every query filters by tenant.

use std::collections::BTreeMap;

use async_trait::async_trait;
use uuid::Uuid;

pub mod edge;
pub mod server;

/// Payload keys stored with every point. Kept in one place so both stores and the filters agree.
pub mod payload {
    pub const TENANT: &str = "tenant";
    pub const DOCUMENT_ID: &str = "document_id";
    pub const CHUNK_INDEX: &str = "chunk_index";
    pub const TEXT: &str = "text";
    pub const INGESTION_ID: &str = "ingestion_id";
    /// A JSON object of string attributes; filters address `attributes.<key>`.
    pub const ATTRIBUTES: &str = "attributes";
}

/// Namespace for point ids (UUID v5), fixed forever: changing it would orphan every stored point.
const POINT_NAMESPACE: Uuid = Uuid::from_u128(0x5c1e_a7e0_0b1d_4d6a_9a51_7e2f_0c0d_e001);

/// The deterministic id of one chunk's point.
pub fn point_id(tenant: &str, document_id: &str, chunk_index: u32) -> Uuid {
    // Length-prefix each part so ("a/b","c") and ("a","b/c") can never collide.
    let name = format!(
        "{}:{}{}:{}{}",
        tenant.len(),
        tenant,
        document_id.len(),
        document_id,
        chunk_index
    );
    Uuid::new_v5(&POINT_NAMESPACE, name.as_bytes())
}

/// One embedded chunk of a document.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub index: u32,
    pub text: String,
    pub vector: Vec<f32>,
}

/// Everything indexed for one document, replacing whatever was indexed for it before.
#[derive(Debug, Clone)]
pub struct IndexedDocument {
    pub tenant: String,
    pub document_id: String,
    pub ingestion_id: String,
    pub attributes: BTreeMap<String, String>,
    pub chunks: Vec<Chunk>,
}

/// A similarity query inside one tenant.
#[derive(Debug, Clone)]
pub struct VectorQuery {
    pub tenant: String,
    pub vector: Vec<f32>,
    pub top_k: u32,
    /// Every pair must match the point's attribute exactly.
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    pub document_id: String,
    pub chunk_index: u32,
    pub text: String,
    pub score: f32,
    pub attributes: BTreeMap<String, String>,
}

/// What went wrong underneath a [`VectorStoreError`] (the Qdrant client, the embedded engine,
/// the file system), kept as its source so logs show it.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum VectorStoreError {
    /// The store is unreachable or overloaded: worth retrying.
    #[error("vector store unavailable: {context}")]
    Unavailable {
        context: String,
        #[source]
        cause: Option<Cause>,
    },
    /// Anything else (a misconfigured collection, a refused request): retrying will not help.
    #[error("vector store: {context}")]
    Other {
        context: String,
        #[source]
        cause: Option<Cause>,
    },
}

impl VectorStoreError {
    pub fn unavailable(context: impl Into<String>) -> Self {
        VectorStoreError::Unavailable {
            context: context.into(),
            cause: None,
        }
    }

    pub fn other(context: impl Into<String>) -> Self {
        VectorStoreError::Other {
            context: context.into(),
            cause: None,
        }
    }

    /// The same error, caused by `error`.
    pub fn caused_by(mut self, error: impl Into<Cause>) -> Self {
        let (VectorStoreError::Unavailable { cause, .. } | VectorStoreError::Other { cause, .. }) =
            &mut self;
        *cause = Some(error.into());
        self
    }

    /// Whether a retry can succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, VectorStoreError::Unavailable { .. })
    }
}

#[async_trait]
pub trait VectorStore: Send + Sync + 'static {
    /// Short name for logs and health ("qdrant-edge", "qdrant").
    fn kind(&self) -> &'static str;

    /// Upserts each document's chunks and removes its chunks past the new last one, so that a
    /// document re-ingested with fewer chunks keeps no stale ones; the store ends as if the
    /// documents were written one by one, in order. Idempotent. Both stores write a batch as
    /// one upsert and one delete of the stale chunks (the embedded store then flushes to disk
    /// once; the server store makes two requests, not two per document). On an error some
    /// may be indexed and others not; indexing them again is harmless.
    async fn index_documents(
        &self,
        documents: Vec<IndexedDocument>,
    ) -> Result<(), VectorStoreError>;

    /// [`Self::index_documents`] of one document.
    async fn index_document(&self, document: IndexedDocument) -> Result<(), VectorStoreError> {
        self.index_documents(vec![document]).await
    }

    /// Removes every chunk of the document; returns how many points it had. Idempotent.
    async fn delete_document(
        &self,
        tenant: &str,
        document_id: &str,
    ) -> Result<u64, VectorStoreError>;

    /// Best chunks first, only from `query.tenant`.
    async fn search(&self, query: VectorQuery) -> Result<Vec<VectorHit>, VectorStoreError>;

    /// How many points one document has (tests and consistency checks use this).
    async fn count_document(
        &self,
        tenant: &str,
        document_id: &str,
    ) -> Result<u64, VectorStoreError>;

    /// Cheap liveness probe for `/healthz`.
    async fn health(&self) -> Result<(), VectorStoreError>;
}

/// The store's line in a health report: its kind when it answers, else why not.
pub async fn health_detail(store: &dyn VectorStore) -> Result<&'static str, String> {
    store
        .health()
        .await
        .map(|()| store.kind())
        .map_err(|e| crate::telemetry::Chain(&e).to_string())
}

/// Opens the configured store: qdrant-edge under `<data_dir>/vectors`, or a Qdrant server.
pub async fn open(
    config: &crate::config::Config,
    dimension: usize,
) -> Result<std::sync::Arc<dyn VectorStore>, VectorStoreError> {
    use crate::config::VectorStoreKind;
    Ok(match config.vector_store.kind {
        VectorStoreKind::Edge => std::sync::Arc::new(edge::EdgeStore::open(
            &config.data_dir.join("vectors"),
            dimension,
        )?),
        VectorStoreKind::Qdrant => std::sync::Arc::new(
            server::QdrantServerStore::connect(
                &config.vector_store.url,
                config.vector_store.api_key.clone(),
                &config.vector_store.collection,
                dimension,
            )
            .await?,
        ),
    })
}
