//! The ingestion event log: one row per change of an ingestion's state, numbered per tenant in
//! commit order. A watch stream's cursor is the tenant's number of the last event it delivered,
//! so a client that reconnects with it resumes exactly after that event, on any gateway. The
//! numbers are per tenant so that a tenant learns nothing of another's activity from them.

use sea_orm::entity::prelude::*;

use super::ingestion;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ingestion_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub tenant: String,
    /// 1, 2, 3, … within the tenant: the cursor.
    pub tenant_seq: i64,
    pub ingestion_id: String,
    pub document_id: String,
    pub operation: String,
    /// The ingestion's state after this event.
    pub state: String,
    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub chunk_count: i32,
    pub failure_reason: Option<String>,
    pub accepted_at_ms: i64,
    pub completed_at_ms: Option<i64>,
    pub event_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Model {
    /// The ingestion as it was right after this event.
    pub fn ingestion(&self) -> ingestion::Model {
        ingestion::Model {
            ingestion_id: self.ingestion_id.clone(),
            tenant: self.tenant.clone(),
            document_id: self.document_id.clone(),
            operation: self.operation.clone(),
            state: self.state.clone(),
            kafka_topic: self.kafka_topic.clone(),
            kafka_partition: self.kafka_partition,
            kafka_offset: self.kafka_offset,
            chunk_count: self.chunk_count,
            failure_reason: self.failure_reason.clone(),
            idempotency_key: None,
            accepted_at_ms: self.accepted_at_ms,
            completed_at_ms: self.completed_at_ms,
            content_hash: None,
        }
    }
}

/// The event recording `row`'s current state as the tenant's event number `tenant_seq`.
pub fn recording(row: &ingestion::Model, tenant_seq: i64, event_at_ms: i64) -> ActiveModel {
    use sea_orm::ActiveValue::{NotSet, Set};
    ActiveModel {
        seq: NotSet,
        tenant: Set(row.tenant.clone()),
        tenant_seq: Set(tenant_seq),
        ingestion_id: Set(row.ingestion_id.clone()),
        document_id: Set(row.document_id.clone()),
        operation: Set(row.operation.clone()),
        state: Set(row.state.clone()),
        kafka_topic: Set(row.kafka_topic.clone()),
        kafka_partition: Set(row.kafka_partition),
        kafka_offset: Set(row.kafka_offset),
        chunk_count: Set(row.chunk_count),
        failure_reason: Set(row.failure_reason.clone()),
        accepted_at_ms: Set(row.accepted_at_ms),
        completed_at_ms: Set(row.completed_at_ms),
        event_at_ms: Set(event_at_ms),
    }
}
