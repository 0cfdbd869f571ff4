//! `sluice.v1.SearchService`.

use std::sync::Arc;

use sluice_core::proto::search_service_server::SearchService;
use sluice_core::proto::{SearchHit, SearchRequest, SearchResponse};
use sluice_core::telemetry::Chain;
use sluice_core::vector::{VectorQuery, VectorStore};
use sluice_embed::Embedder;
use tonic::{Request, Response, Status};

use crate::ingest::validate::attribute_key;
use crate::services::status::{invalid_argument, Violation};
use crate::tenancy::auth::Authenticator;
use crate::tenancy::quota::QuotaGate;

pub const DEFAULT_TOP_K: u32 = 10;
/// Longest query text, in bytes; the model reads at most 256 tokens of it anyway.
pub const MAX_QUERY_BYTES: usize = 4096;

pub struct SearchApi {
    pub auth: Authenticator,
    pub quotas: Arc<QuotaGate>,
    pub embedder: Arc<Embedder>,
    pub store: Arc<dyn VectorStore>,
    pub max_top_k: u32,
}

#[tonic::async_trait]
impl SearchService for SearchApi {
    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        self.quotas.top_k(&caller, request.get_ref().top_k)?;
        let tenant = caller.tenant;
        let request = request.into_inner();
        let mut violations = Vec::new();
        if request.query.trim().is_empty() {
            violations.push(Violation::new("query", "required"));
        } else if request.query.len() > MAX_QUERY_BYTES {
            violations.push(Violation::new(
                "query",
                format!(
                    "{} bytes, more than the maximum of {MAX_QUERY_BYTES}",
                    request.query.len()
                ),
            ));
        }
        if request.top_k > self.max_top_k {
            violations.push(Violation::new(
                "top_k",
                format!(
                    "{} is more than the maximum of {}",
                    request.top_k, self.max_top_k
                ),
            ));
        }
        for key in request.attribute_filter.keys() {
            if let Err(reason) = attribute_key(key) {
                violations.push(Violation::new(format!("attribute_filter[{key:?}]"), reason));
            }
        }
        if !violations.is_empty() {
            return Err(invalid_argument(&violations));
        }

        let embedder = self.embedder.clone();
        let query = request.query;
        let vector = tokio::task::spawn_blocking(move || embedder.embed(&[query.as_str()]))
            .await
            .map_err(|e| Status::internal(format!("embedding task: {e}")))?
            .map_err(|e| Status::unavailable(format!("embedding model: {}", Chain(&e))))?
            .pop()
            .ok_or_else(|| Status::internal("embedding model returned nothing"))?;
        let hits = self
            .store
            .search(VectorQuery {
                tenant: tenant.to_string(),
                vector,
                top_k: if request.top_k == 0 {
                    DEFAULT_TOP_K
                } else {
                    request.top_k
                },
                attributes: request.attribute_filter.into_iter().collect(),
            })
            .await
            // UNAVAILABLE (retry) only when the store is unreachable; otherwise a retry fails too.
            .map_err(|e| {
                let message = Chain(&e).to_string();
                if e.is_unavailable() {
                    Status::unavailable(message)
                } else {
                    Status::internal(message)
                }
            })?;
        let hits = hits
            .into_iter()
            .map(|hit| SearchHit {
                document_id: hit.document_id,
                chunk_index: hit.chunk_index,
                text: hit.text,
                score: hit.score,
                attributes: hit.attributes.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(SearchResponse { hits }))
    }
}
