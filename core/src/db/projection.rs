//! How ingestion events change the `ingestions` table.
//!
//! Every change is idempotent and first-terminal-wins: a completion delivered twice (a broker
//! that shows aborted transactions, a worker that crashed after indexing) moves a row at most
//! once, and the caller learns whether this delivery was the one that moved it.

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Set};

use super::ingestion::{self, Column, Entity, Model, ACCEPTED, DELETED, FAILED, INDEXED};
use crate::record::{Completion, Outcome};

/// Records ingestions whose transaction committed. Rows a completion already created are
/// left alone.
pub async fn record_accepted(db: &impl ConnectionTrait, rows: Vec<Model>) -> Result<(), DbErr> {
    if rows.is_empty() {
        return Ok(());
    }
    let models = rows.into_iter().map(|row| ingestion::ActiveModel {
        ingestion_id: Set(row.ingestion_id),
        tenant: Set(row.tenant),
        document_id: Set(row.document_id),
        operation: Set(row.operation),
        state: Set(row.state),
        kafka_topic: Set(row.kafka_topic),
        kafka_partition: Set(row.kafka_partition),
        kafka_offset: Set(row.kafka_offset),
        chunk_count: Set(row.chunk_count),
        failure_reason: Set(row.failure_reason),
        idempotency_key: Set(row.idempotency_key),
        accepted_at_ms: Set(row.accepted_at_ms),
        completed_at_ms: Set(row.completed_at_ms),
    });
    Entity::insert_many(models)
        .on_conflict(
            OnConflict::column(Column::IngestionId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

pub fn outcome_state(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Indexed => INDEXED,
        Outcome::Deleted => DELETED,
        Outcome::Failed => FAILED,
    }
}

/// Applies a completion. Returns the row when this call ended the ingestion, `None` when it
/// had already ended (a duplicate delivery).
pub async fn apply_completion(
    db: &impl ConnectionTrait,
    completion: &Completion,
) -> Result<Option<Model>, DbErr> {
    let state = outcome_state(completion.outcome);
    // Conditional on `accepted`, so of two deliveries (or two gateways) exactly one moves it.
    let moved = Entity::update_many()
        .col_expr(Column::State, Expr::value(state))
        .col_expr(
            Column::ChunkCount,
            Expr::value(completion.chunk_count as i32),
        )
        .col_expr(
            Column::FailureReason,
            Expr::value(completion.failure_reason.clone()),
        )
        .col_expr(
            Column::CompletedAtMs,
            Expr::value(Some(completion.completed_at_ms)),
        )
        .filter(Column::IngestionId.eq(&completion.ingestion_id))
        .filter(Column::Tenant.eq(&completion.tenant))
        .filter(Column::State.eq(ACCEPTED))
        .exec(db)
        .await?
        .rows_affected;
    if moved == 1 {
        return get(db, &completion.tenant, &completion.ingestion_id).await;
    }
    // Not accepted here yet (the completion overtook the gateway's own record) or already done.
    let row = Model {
        ingestion_id: completion.ingestion_id.clone(),
        tenant: completion.tenant.clone(),
        document_id: completion.document_id.clone(),
        operation: completion.operation.as_str().to_owned(),
        state: state.to_owned(),
        kafka_topic: completion.source.topic.clone(),
        kafka_partition: completion.source.partition,
        kafka_offset: completion.source.offset,
        chunk_count: completion.chunk_count as i32,
        failure_reason: completion.failure_reason.clone(),
        idempotency_key: None,
        accepted_at_ms: completion.accepted_at_ms,
        completed_at_ms: Some(completion.completed_at_ms),
    };
    let inserted = Entity::insert(ingestion::ActiveModel::from(row.clone()))
        .on_conflict(
            OnConflict::column(Column::IngestionId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok((inserted == 1).then_some(row))
}

/// One ingestion of one tenant; another tenant's id finds nothing.
pub async fn get(
    db: &impl ConnectionTrait,
    tenant: &str,
    ingestion_id: &str,
) -> Result<Option<Model>, DbErr> {
    Entity::find_by_id(ingestion_id.to_owned())
        .filter(Column::Tenant.eq(tenant))
        .one(db)
        .await
}

/// Several ingestions of one tenant, in no particular order.
pub async fn get_many(
    db: &impl ConnectionTrait,
    tenant: &str,
    ingestion_ids: &[String],
) -> Result<Vec<Model>, DbErr> {
    Entity::find()
        .filter(Column::Tenant.eq(tenant))
        .filter(Column::IngestionId.is_in(ingestion_ids.iter().cloned()))
        .all(db)
        .await
}

/// Ingestions of one tenant created with any of these idempotency keys.
pub async fn find_by_idempotency_keys(
    db: &impl ConnectionTrait,
    tenant: &str,
    keys: &[String],
) -> Result<Vec<Model>, DbErr> {
    Entity::find()
        .filter(Column::Tenant.eq(tenant))
        .filter(Column::IdempotencyKey.is_in(keys.iter().cloned()))
        .all(db)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Operation, Position};

    fn accepted(id: &str, tenant: &str) -> Model {
        Model {
            ingestion_id: id.into(),
            tenant: tenant.into(),
            document_id: "doc".into(),
            operation: "upsert".into(),
            state: ACCEPTED.into(),
            kafka_topic: "t".into(),
            kafka_partition: 0,
            kafka_offset: 7,
            chunk_count: 0,
            failure_reason: None,
            idempotency_key: None,
            accepted_at_ms: 1,
            completed_at_ms: None,
        }
    }

    fn completion(id: &str, outcome: Outcome) -> Completion {
        Completion {
            tenant: "a".into(),
            ingestion_id: id.into(),
            document_id: "doc".into(),
            operation: Operation::Upsert,
            outcome,
            chunk_count: 3,
            failure_reason: None,
            source: Position {
                topic: "t".into(),
                partition: 0,
                offset: 7,
            },
            accepted_at_ms: 1,
            completed_at_ms: 2,
        }
    }

    async fn exercise(db: sea_orm::DatabaseConnection) {
        record_accepted(&db, vec![accepted("i1", "a")])
            .await
            .unwrap();
        // Recording twice is harmless.
        record_accepted(&db, vec![accepted("i1", "a")])
            .await
            .unwrap();

        let first = apply_completion(&db, &completion("i1", Outcome::Indexed))
            .await
            .unwrap();
        assert_eq!(
            first.as_ref().map(|r| (r.state.as_str(), r.chunk_count)),
            Some((INDEXED, 3))
        );
        // A second delivery, even with another outcome, changes nothing and says so.
        assert_eq!(
            apply_completion(&db, &completion("i1", Outcome::Failed))
                .await
                .unwrap(),
            None
        );
        assert_eq!(get(&db, "a", "i1").await.unwrap().unwrap().state, INDEXED);

        // A completion that overtakes the gateway's record creates the row; the late
        // accepted record does not move it back.
        assert!(apply_completion(&db, &completion("i2", Outcome::Indexed))
            .await
            .unwrap()
            .is_some());
        record_accepted(&db, vec![accepted("i2", "a")])
            .await
            .unwrap();
        assert_eq!(get(&db, "a", "i2").await.unwrap().unwrap().state, INDEXED);

        // Tenants never see each other's rows.
        assert!(get(&db, "b", "i1").await.unwrap().is_none());
        assert_eq!(
            get_many(&db, "a", &["i1".into(), "i2".into()])
                .await
                .unwrap()
                .len(),
            2
        );
        assert!(get_many(&db, "b", &["i1".into()]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn projection_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
        exercise(super::super::connect(&url).await.unwrap()).await;
    }

    #[tokio::test]
    async fn projection_on_postgres() {
        let url = crate::db::testing::fresh_postgres_database().await;
        exercise(super::super::connect(&url).await.unwrap()).await;
    }
}
