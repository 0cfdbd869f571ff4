//! [`QdrantServerStore`]: a Qdrant server through `qdrant-client` (gRPC).
//!
//! Same semantics as [`super::edge::EdgeStore`]: the payload, the filters and the reading of
//! hits come from the shared helpers in `edge.rs`; this file only translates them into
//! `qdrant-client` types. Every write passes `wait: true`, so it is applied when the call returns.

use std::collections::HashMap;

use async_trait::async_trait;
use qdrant_client::qdrant::r#match::MatchValue;
use qdrant_client::qdrant::value::Kind;
use qdrant_client::qdrant::{
    vectors_config, Condition, CountPointsBuilder, CreateCollectionBuilder,
    CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Distance, FieldType, Filter,
    KeywordIndexParamsBuilder, ListValue, NullValue, PointStruct, Query, QueryPointsBuilder, Range,
    Struct, UpsertPointsBuilder, Value as QdrantValue, VectorParamsBuilder,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use serde_json::{Map, Value as JsonValue};

use super::edge::{
    check_dimension, chunk_payload, document_clauses, hit_from_payload, search_clauses, BatchWrite,
    Clause,
};
use super::{
    payload, point_id, IndexedDocument, VectorHit, VectorQuery, VectorStore, VectorStoreError,
};

/// A collection on a Qdrant server, shared by any number of gateway and worker processes.
pub struct QdrantServerStore {
    client: Qdrant,
    collection: String,
    dimension: usize,
}

impl QdrantServerStore {
    /// Connects to the server at `url` (its gRPC port, usually 6334) and makes sure the
    /// collection exists with cosine vectors of `dimension` and keyword indexes on `tenant`
    /// (as the tenant key) and `document_id`. An existing collection with another dimension is
    /// refused.
    pub async fn connect(
        url: &str,
        api_key: Option<String>,
        collection: &str,
        dimension: usize,
    ) -> Result<Self, VectorStoreError> {
        // The compatibility check would block this async task on a health check of its own;
        // the calls below find an unreachable server just as well.
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            .skip_compatibility_check()
            .build()
            .map_err(client_error("build the client"))?;
        let store = QdrantServerStore {
            client,
            collection: collection.to_string(),
            dimension,
        };
        store.ensure_collection().await?;
        store.ensure_indexes().await?;
        Ok(store)
    }

    async fn ensure_collection(&self) -> Result<(), VectorStoreError> {
        if self.collection_exists().await? {
            return self.check_collection_dimension().await;
        }
        let create = CreateCollectionBuilder::new(&self.collection).vectors_config(
            VectorParamsBuilder::new(self.dimension as u64, Distance::Cosine),
        );
        match self.client.create_collection(create).await {
            Ok(_) => Ok(()),
            // Another process may have created it in between: fine if it is there now.
            Err(err) if self.collection_exists().await? => {
                tracing::debug!(collection = %self.collection, error = %err, "collection created concurrently");
                self.check_collection_dimension().await
            }
            Err(err) => Err(client_error("create the collection")(err)),
        }
    }

    async fn collection_exists(&self) -> Result<bool, VectorStoreError> {
        self.client
            .collection_exists(&self.collection)
            .await
            .map_err(client_error("check the collection"))
    }

    async fn check_collection_dimension(&self) -> Result<(), VectorStoreError> {
        let info = self
            .client
            .collection_info(&self.collection)
            .await
            .map_err(client_error("read the collection"))?;
        let params = info
            .result
            .and_then(|info| info.config)
            .and_then(|config| config.params)
            .and_then(|params| params.vectors_config)
            .and_then(|vectors| vectors.config);
        match params {
            Some(vectors_config::Config::Params(params))
                if params.size == self.dimension as u64
                    && params.distance == Distance::Cosine as i32 =>
            {
                Ok(())
            }
            other => Err(VectorStoreError::other(format!(
                "collection {:?} exists but does not hold one unnamed cosine vector of dimension \
                 {} (it has {other:?})",
                self.collection, self.dimension
            ))),
        }
    }

    /// Creating an index that exists with the same schema is a no-op on the server.
    async fn ensure_indexes(&self) -> Result<(), VectorStoreError> {
        let tenant = CreateFieldIndexCollectionBuilder::new(
            &self.collection,
            payload::TENANT,
            FieldType::Keyword,
        )
        .field_index_params(KeywordIndexParamsBuilder::default().is_tenant(true))
        .wait(true);
        let document = CreateFieldIndexCollectionBuilder::new(
            &self.collection,
            payload::DOCUMENT_ID,
            FieldType::Keyword,
        )
        .wait(true);
        for index in [tenant, document] {
            self.client
                .create_field_index(index)
                .await
                .map_err(client_error("create a payload index"))?;
        }
        Ok(())
    }

    async fn count(&self, filter: Filter) -> Result<u64, VectorStoreError> {
        let response = self
            .client
            .count(
                CountPointsBuilder::new(&self.collection)
                    .filter(filter)
                    .exact(true),
            )
            .await
            .map_err(client_error("count points"))?;
        Ok(response.result.map_or(0, |result| result.count))
    }

    async fn delete(&self, filter: Filter, action: &'static str) -> Result<(), VectorStoreError> {
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(filter)
                    .wait(true),
            )
            .await
            .map_err(client_error(action))?;
        Ok(())
    }
}

#[async_trait]
impl VectorStore for QdrantServerStore {
    fn kind(&self) -> &'static str {
        "qdrant"
    }

    /// Two requests for the whole batch (an upsert, then a delete of the stale chunks) instead
    /// of two per document: each waits for the server to apply it.
    async fn index_documents(
        &self,
        documents: Vec<IndexedDocument>,
    ) -> Result<(), VectorStoreError> {
        let Some(batch) = BatchWrite::new(documents)? else {
            return Ok(());
        };
        let points = batch.points(self.dimension, |document, chunk| {
            let id = point_id(&document.tenant, &document.document_id, chunk.index);
            PointStruct::new(
                id.to_string(),
                chunk.vector.clone(),
                server_payload(chunk_payload(document, chunk)),
            )
        })?;
        if !points.is_empty() {
            self.client
                .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
                .await
                .map_err(client_error("upsert points"))?;
        }
        let stale = Filter::should(
            batch
                .stale
                .iter()
                .map(|clauses| Condition::from(server_filter(clauses))),
        );
        self.delete(stale, "delete stale chunks").await
    }

    /// The count and the delete are two requests: a write to the same document between them
    /// (which the ingestion pipeline does not do) would make the count inexact.
    async fn delete_document(
        &self,
        tenant: &str,
        document_id: &str,
    ) -> Result<u64, VectorStoreError> {
        let filter = server_filter(&document_clauses(tenant, document_id));
        let count = self.count(filter.clone()).await?;
        if count > 0 {
            self.delete(filter, "delete points").await?;
        }
        Ok(count)
    }

    async fn search(&self, query: VectorQuery) -> Result<Vec<VectorHit>, VectorStoreError> {
        check_dimension(&query.vector, self.dimension)?;
        if query.top_k == 0 {
            return Ok(Vec::new());
        }
        let request = QueryPointsBuilder::new(&self.collection)
            .query(Query::new_nearest(query.vector.clone()))
            .filter(server_filter(&search_clauses(&query)?))
            .limit(u64::from(query.top_k))
            .with_payload(true);
        let response = self
            .client
            .query(request)
            .await
            .map_err(client_error("search"))?;
        response
            .result
            .into_iter()
            .map(|point| hit_from_payload(&json_payload(point.payload), point.score))
            .collect()
    }

    async fn count_document(
        &self,
        tenant: &str,
        document_id: &str,
    ) -> Result<u64, VectorStoreError> {
        self.count(server_filter(&document_clauses(tenant, document_id)))
            .await
    }

    async fn health(&self) -> Result<(), VectorStoreError> {
        self.client
            .health_check()
            .await
            .map_err(client_error("health check"))?;
        Ok(())
    }
}

/// The client's form of a shared filter: every clause must hold.
fn server_filter(clauses: &[Clause]) -> Filter {
    Filter::must(clauses.iter().map(|clause| match clause {
        // Spelled out: the client turns a `String` containing whitespace into a full-text match.
        Clause::Equals { path, value } => {
            Condition::matches(path.as_str(), MatchValue::Keyword(value.clone()))
        }
        Clause::AtLeast { path, min } => Condition::range(
            path.as_str(),
            Range {
                gte: Some(f64::from(*min)),
                ..Range::default()
            },
        ),
    }))
}

/// The shared JSON payload as the client's payload (its `serde` conversions are not enabled).
fn server_payload(payload: Map<String, JsonValue>) -> Payload {
    payload
        .into_iter()
        .map(|(key, value)| (key, qdrant_value(value)))
        .collect::<HashMap<String, QdrantValue>>()
        .into()
}

fn qdrant_value(value: JsonValue) -> QdrantValue {
    let kind = match value {
        JsonValue::Null => Kind::NullValue(NullValue::NullValue as i32),
        JsonValue::Bool(b) => Kind::BoolValue(b),
        JsonValue::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntegerValue(i),
            None => Kind::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        JsonValue::String(s) => Kind::StringValue(s),
        JsonValue::Array(values) => Kind::ListValue(ListValue {
            values: values.into_iter().map(qdrant_value).collect(),
        }),
        JsonValue::Object(map) => Kind::StructValue(Struct {
            fields: map
                .into_iter()
                .map(|(key, value)| (key, qdrant_value(value)))
                .collect(),
        }),
    };
    QdrantValue { kind: Some(kind) }
}

/// A returned payload as JSON, so that the shared [`hit_from_payload`] reads it.
fn json_payload(payload: HashMap<String, QdrantValue>) -> Map<String, JsonValue> {
    payload
        .into_iter()
        .map(|(key, value)| (key, json_value(value)))
        .collect()
}

fn json_value(value: QdrantValue) -> JsonValue {
    match value.kind {
        None | Some(Kind::NullValue(_)) => JsonValue::Null,
        Some(Kind::BoolValue(b)) => JsonValue::Bool(b),
        Some(Kind::IntegerValue(i)) => JsonValue::from(i),
        Some(Kind::DoubleValue(d)) => JsonValue::from(d),
        Some(Kind::StringValue(s)) => JsonValue::String(s),
        Some(Kind::ListValue(list)) => list.values.into_iter().map(json_value).collect(),
        Some(Kind::StructValue(object)) => JsonValue::Object(json_payload(object.fields)),
    }
}

/// Maps a client error; transport failures and overload are `Unavailable` (worth retrying).
fn client_error(action: &'static str) -> impl Fn(QdrantError) -> VectorStoreError {
    move |err| {
        let context = format!("qdrant: {action}");
        let retryable = match &err {
            QdrantError::ResponseError { status } => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::ResourceExhausted
            ),
            QdrantError::ResourceExhaustedError { .. } | QdrantError::Io(_) => true,
            _ => false,
        };
        if retryable {
            VectorStoreError::unavailable(context).caused_by(err)
        } else {
            VectorStoreError::other(context).caused_by(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use qdrant_client::qdrant::condition::ConditionOneOf;
    use qdrant_client::qdrant::FieldCondition;

    use super::super::edge::stale_chunk_clauses;
    use super::super::Chunk;
    use super::*;

    fn field(condition: &Condition) -> &FieldCondition {
        match &condition.condition_one_of {
            Some(ConditionOneOf::Field(field)) => field,
            other => panic!("not a field condition: {other:?}"),
        }
    }

    #[test]
    fn stale_chunk_filter_matches_tenant_document_and_later_chunks() {
        let filter = server_filter(&stale_chunk_clauses("acme", "doc-1", 3));

        assert!(filter.should.is_empty() && filter.must_not.is_empty());
        let [tenant, document, chunk] = filter.must.as_slice() else {
            panic!("expected three conditions, got {:?}", filter.must);
        };
        assert_eq!(field(tenant).key, "tenant");
        assert_eq!(
            field(tenant)
                .r#match
                .as_ref()
                .and_then(|m| m.match_value.clone()),
            Some(MatchValue::Keyword("acme".into()))
        );
        assert_eq!(field(document).key, "document_id");
        assert_eq!(
            field(document)
                .r#match
                .as_ref()
                .and_then(|m| m.match_value.clone()),
            Some(MatchValue::Keyword("doc-1".into()))
        );
        assert_eq!(field(chunk).key, "chunk_index");
        assert_eq!(
            field(chunk).range,
            Some(Range {
                gte: Some(3.0),
                ..Range::default()
            })
        );
    }

    #[test]
    fn search_filter_adds_quoted_attribute_keys() {
        let query = VectorQuery {
            tenant: "acme".into(),
            vector: vec![0.0; 4],
            top_k: 5,
            attributes: BTreeMap::from([("source.kind".into(), "New York".into())]),
        };
        let filter = server_filter(&search_clauses(&query).unwrap());

        let keys: Vec<&str> = filter.must.iter().map(|c| field(c).key.as_str()).collect();
        assert_eq!(keys, ["tenant", "attributes.\"source.kind\""]);
        // Exact equality even with whitespace, never a full-text match.
        assert_eq!(
            field(&filter.must[1])
                .r#match
                .as_ref()
                .and_then(|m| m.match_value.clone()),
            Some(MatchValue::Keyword("New York".into()))
        );
    }

    #[test]
    fn payload_survives_the_round_trip_through_client_values() {
        let document = IndexedDocument {
            tenant: "acme".into(),
            document_id: "doc-1".into(),
            ingestion_id: "ing-1".into(),
            attributes: BTreeMap::from([("lang".into(), "en".into())]),
            chunks: vec![Chunk {
                index: 7,
                text: "hello".into(),
                vector: vec![0.0; 4],
            }],
        };
        let json = chunk_payload(&document, &document.chunks[0]);

        let stored: HashMap<String, QdrantValue> = server_payload(json.clone()).into();
        assert_eq!(stored["chunk_index"].kind, Some(Kind::IntegerValue(7)));
        assert_eq!(json_payload(stored.clone()), json);

        let hit = hit_from_payload(&json_payload(stored), 0.25).unwrap();
        assert_eq!(hit.document_id, "doc-1");
        assert_eq!(hit.chunk_index, 7);
        assert_eq!(hit.text, "hello");
        assert_eq!(hit.attributes["lang"], "en");
    }

    #[test]
    fn transport_failures_are_unavailable() {
        let unavailable = client_error("x")(QdrantError::ResponseError {
            status: tonic::Status::unavailable("connection refused"),
        });
        assert!(unavailable.is_unavailable());
        let invalid = client_error("x")(QdrantError::ResponseError {
            status: tonic::Status::invalid_argument("bad filter"),
        });
        assert!(!invalid.is_unavailable());
    }
}
