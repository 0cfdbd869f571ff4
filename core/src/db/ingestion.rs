//! One row per ingestion: where it is in Kafka and how far it got.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ingestions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub ingestion_id: String,
    pub tenant: String,
    pub document_id: String,
    /// `upsert` or `delete`.
    pub operation: String,
    /// `accepted`, `indexed`, `deleted` or `failed`.
    pub state: String,
    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub chunk_count: i32,
    pub failure_reason: Option<String>,
    pub idempotency_key: Option<String>,
    pub accepted_at_ms: i64,
    pub completed_at_ms: Option<i64>,
    /// Digest of what was ingested (operation, document id, payload, attributes): a repeat of
    /// the same request without an idempotency key is recognised by it.
    pub content_hash: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

pub const ACCEPTED: &str = "accepted";
pub const INDEXED: &str = "indexed";
pub const DELETED: &str = "deleted";
pub const FAILED: &str = "failed";
