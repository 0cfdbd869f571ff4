//! How ingestion events change the `ingestions` table.
//!
//! Every change is idempotent and first-terminal-wins: a completion delivered twice (a broker
//! that shows aborted transactions, a worker that crashed after indexing) moves a row at most
//! once, and the caller learns whether this delivery was the one that moved it.

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Statement, TransactionTrait,
};

use std::collections::{HashMap, HashSet};

use super::event;
use super::ingestion::{self, Column, Entity, Model, ACCEPTED, DELETED, FAILED, INDEXED};
use crate::record::{now_ms, Completion, DocumentRecord, Outcome, Position};

/// An ingestion after a change, and the number of the event that recorded the change (the
/// cursor a watch stream hands out with it).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub row: Model,
    pub seq: i64,
}

/// Starts a transaction that appends events. Writers take turns so that events become
/// visible in number order (a watch stream that has read event n must never later find a
/// smaller number appear) and so that what a writer reads before it writes stays true.
async fn begin_event_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    let txn = db.begin().await?;
    match txn.get_database_backend() {
        DatabaseBackend::Postgres => {
            txn.execute_unprepared("LOCK TABLE ingestion_events IN EXCLUSIVE MODE")
                .await?;
        }
        // A write statement, even one that matches nothing, takes SQLite's write lock now
        // (waiting up to busy_timeout), rather than failing a later upgrade from a read.
        _ => {
            txn.execute_unprepared("DELETE FROM ingestion_events WHERE 0 = 1")
                .await?;
        }
    }
    Ok(txn)
}

/// Appends an event for each row, in order, and returns the rows with their numbers.
async fn append_events(txn: &DatabaseTransaction, rows: Vec<Model>) -> Result<Vec<Change>, DbErr> {
    let at = now_ms();
    let mut next: HashMap<String, i64> = HashMap::new();
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        let seq = match next.get(&row.tenant) {
            Some(seq) => *seq,
            // Writers take turns (see begin_event_write): nobody else numbers meanwhile.
            None => latest_seq(txn, &row.tenant).await? + 1,
        };
        next.insert(row.tenant.clone(), seq + 1);
        changes.push(Change { row, seq });
    }
    if !changes.is_empty() {
        event::Entity::insert_many(
            changes
                .iter()
                .map(|change| event::recording(&change.row, change.seq, at)),
        )
        .exec_without_returning(txn)
        .await?;
    }
    Ok(changes)
}

/// The row of an ingestion whose record just committed at `position`.
pub fn accepted_row(
    record: &DocumentRecord,
    position: Position,
    idempotency_key: Option<String>,
) -> Model {
    Model {
        ingestion_id: record.ingestion_id.clone(),
        tenant: record.tenant.to_string(),
        document_id: record.document_id.clone(),
        operation: record.operation.as_str().to_owned(),
        state: ACCEPTED.to_owned(),
        kafka_topic: position.topic,
        kafka_partition: position.partition,
        kafka_offset: position.offset,
        chunk_count: 0,
        failure_reason: None,
        idempotency_key,
        accepted_at_ms: record.accepted_at_ms,
        completed_at_ms: None,
        content_hash: Some(record.content_hash()),
    }
}

/// Records ingestions whose transaction committed, each with its ACCEPTED event. Rows that
/// are there already (recorded before, or created by a completion that overtook this record,
/// which logged ACCEPTED itself) get no second event; they only learn the request's
/// idempotency key and content hash, so a retry of the request is still recognised. Returns
/// the rows recorded, in order.
pub async fn record_accepted(
    db: &DatabaseConnection,
    rows: Vec<Model>,
) -> Result<Vec<Change>, DbErr> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let txn = begin_event_write(db).await?;
    // One statement inserts the rows not there yet and returns them.
    let mut insert = Entity::insert_many(rows.iter().cloned().map(ingestion::ActiveModel::from))
        .on_conflict(
            OnConflict::column(Column::IngestionId)
                .do_nothing()
                .to_owned(),
        )
        .into_query();
    insert.returning_all();
    let inserted: HashSet<String> = super::rows_written::<Entity>(&txn, &insert)
        .await?
        .into_iter()
        .map(|row| row.ingestion_id)
        .collect();
    let (recorded, known): (Vec<Model>, Vec<Model>) = rows
        .into_iter()
        .partition(|row| inserted.contains(&row.ingestion_id));
    for row in known {
        Entity::update_many()
            .col_expr(
                Column::IdempotencyKey,
                Expr::col(Column::IdempotencyKey).if_null(row.idempotency_key),
            )
            .col_expr(
                Column::ContentHash,
                Expr::col(Column::ContentHash).if_null(row.content_hash),
            )
            .filter(Column::IngestionId.eq(row.ingestion_id))
            .exec(&txn)
            .await?;
    }
    let changes = append_events(&txn, recorded).await?;
    txn.commit().await?;
    Ok(changes)
}

pub fn outcome_state(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Indexed => INDEXED,
        Outcome::Deleted => DELETED,
        Outcome::Failed => FAILED,
    }
}

/// Applies a completion. Returns the events it appended: the terminal one when this call
/// ended the ingestion, preceded by its ACCEPTED when the completion overtook the gateway's
/// own record of it (a worker is often quicker than the recorder under load, and an
/// ingestion's log always starts with ACCEPTED); nothing when it had already ended (a
/// duplicate delivery).
pub async fn apply_completion(
    db: &DatabaseConnection,
    completion: &Completion,
) -> Result<Vec<Change>, DbErr> {
    let mut changes = apply_completions(db, std::slice::from_ref(completion)).await?;
    Ok(changes.remove(0))
}

/// Applies completions in order, in one database transaction (a worker commits its
/// completions in batches, and they arrive together): each one's events, as
/// [`apply_completion`] returns them, in its place. Each completion costs one statement (an
/// update that returns the row it moved, or an insert); their events are appended together
/// at the end, in order.
pub async fn apply_completions(
    db: &DatabaseConnection,
    completions: &[Completion],
) -> Result<Vec<Vec<Change>>, DbErr> {
    let txn = begin_event_write(db).await?;
    let mut rows = Vec::new();
    let mut counts = Vec::with_capacity(completions.len());
    for completion in completions {
        let ended = apply_in(&txn, completion).await?;
        counts.push(ended.len());
        rows.extend(ended);
    }
    let mut changes = append_events(&txn, rows).await?.into_iter();
    txn.commit().await?;
    Ok(counts
        .into_iter()
        .map(|count| changes.by_ref().take(count).collect())
        .collect())
}

/// One completion, inside the caller's event-writing transaction: the rows whose events it
/// adds (none when the ingestion had already ended).
async fn apply_in(txn: &DatabaseTransaction, completion: &Completion) -> Result<Vec<Model>, DbErr> {
    let state = outcome_state(completion.outcome);
    // Conditional on `accepted`, so of two deliveries (or two gateways) exactly one moves it;
    // the statement returns the row it moved.
    let mut update = Entity::update_many()
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
        .into_query();
    update.returning_all();
    let moved = super::rows_written::<Entity>(txn, &update).await?;
    if !moved.is_empty() {
        return Ok(moved);
    }
    // Not recorded here yet (the completion overtook the gateway's own record) or done.
    let accepted = Model {
        ingestion_id: completion.ingestion_id.clone(),
        tenant: completion.tenant.clone(),
        document_id: completion.document_id.clone(),
        operation: completion.operation.as_str().to_owned(),
        state: ACCEPTED.to_owned(),
        kafka_topic: completion.source.topic.clone(),
        kafka_partition: completion.source.partition,
        kafka_offset: completion.source.offset,
        chunk_count: 0,
        failure_reason: None,
        // A gateway that died before recording the ingestion leaves these to the worker:
        // a retry with the same key (or the same content) is still recognised.
        idempotency_key: completion.idempotency_key.clone(),
        accepted_at_ms: completion.accepted_at_ms,
        completed_at_ms: None,
        content_hash: completion.content_hash.clone(),
    };
    let ended = Model {
        state: state.to_owned(),
        chunk_count: completion.chunk_count as i32,
        failure_reason: completion.failure_reason.clone(),
        completed_at_ms: Some(completion.completed_at_ms),
        ..accepted.clone()
    };
    let inserted = Entity::insert(ingestion::ActiveModel::from(ended.clone()))
        .on_conflict(
            OnConflict::column(Column::IngestionId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    Ok(if inserted == 1 {
        vec![accepted, ended]
    } else {
        Vec::new()
    })
}

/// The latest event of one ingestion in the log, if any.
pub async fn latest_event_of(
    db: &impl ConnectionTrait,
    tenant: &str,
    ingestion_id: &str,
) -> Result<Option<event::Model>, DbErr> {
    event::Entity::find()
        .filter(event::Column::Tenant.eq(tenant))
        .filter(event::Column::IngestionId.eq(ingestion_id))
        .order_by_desc(event::Column::TenantSeq)
        .one(db)
        .await
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

/// Ingestions of one tenant created with any of these idempotency keys since `since_ms`.
pub async fn find_by_idempotency_keys(
    db: &impl ConnectionTrait,
    tenant: &str,
    keys: &[String],
    since_ms: i64,
) -> Result<Vec<Model>, DbErr> {
    Entity::find()
        .filter(Column::Tenant.eq(tenant))
        .filter(Column::IdempotencyKey.is_in(keys.iter().cloned()))
        .filter(Column::AcceptedAtMs.gte(since_ms))
        .all(db)
        .await
}

/// The latest ingestion of a document (the one furthest along its partition), if any.
pub async fn latest_of_document(
    db: &impl ConnectionTrait,
    tenant: &str,
    document_id: &str,
) -> Result<Option<Model>, DbErr> {
    Entity::find()
        .filter(Column::Tenant.eq(tenant))
        .filter(Column::DocumentId.eq(document_id))
        .order_by_desc(Column::KafkaOffset)
        .one(db)
        .await
}

/// The number of the tenant's latest event (0 when there is none).
pub async fn latest_seq(db: &impl ConnectionTrait, tenant: &str) -> Result<i64, DbErr> {
    let latest: Option<Option<i64>> = event::Entity::find()
        .select_only()
        .column_as(event::Column::TenantSeq.max(), "latest")
        .filter(event::Column::Tenant.eq(tenant))
        .into_tuple()
        .one(db)
        .await?;
    Ok(latest.flatten().unwrap_or(0))
}

/// A tenant's events after `after`, oldest first, at most `limit`; only those of `ingestion_ids`
/// when given.
pub async fn events_after(
    db: &impl ConnectionTrait,
    tenant: &str,
    after: i64,
    ingestion_ids: Option<&[String]>,
    limit: u64,
) -> Result<Vec<event::Model>, DbErr> {
    let mut query = event::Entity::find()
        .filter(event::Column::Tenant.eq(tenant))
        .filter(event::Column::TenantSeq.gt(after));
    if let Some(ids) = ingestion_ids {
        query = query.filter(event::Column::IngestionId.is_in(ids.iter().cloned()));
    }
    query
        .order_by_asc(event::Column::TenantSeq)
        .limit(limit)
        .all(db)
        .await
}

/// A consistent view for a new watch stream: the tenant's latest event number and, at that
/// very moment, the current rows of `ingestion_ids`.
pub async fn snapshot(
    db: &DatabaseConnection,
    tenant: &str,
    ingestion_ids: &[String],
) -> Result<(i64, Vec<Model>), DbErr> {
    let txn = match db.get_database_backend() {
        DatabaseBackend::Postgres => {
            db.begin_with_config(Some(sea_orm::IsolationLevel::RepeatableRead), None)
                .await?
        }
        // A SQLite transaction reads one snapshot already.
        _ => db.begin().await?,
    };
    let latest = latest_seq(&txn, tenant).await?;
    let rows = if ingestion_ids.is_empty() {
        Vec::new()
    } else {
        get_many(&txn, tenant, ingestion_ids).await?
    };
    txn.commit().await?;
    Ok((latest, rows))
}

/// Removes events older than `before_ms`, except each tenant's latest (its number carries the
/// count on); cursors pointing before what remains can no longer resume.
pub async fn prune_events(db: &impl ConnectionTrait, before_ms: i64) -> Result<u64, DbErr> {
    let statement = Statement::from_sql_and_values(
        db.get_database_backend(),
        match db.get_database_backend() {
            DatabaseBackend::Postgres => {
                "DELETE FROM ingestion_events WHERE event_at_ms < $1 AND seq NOT IN \
                 (SELECT MAX(seq) FROM ingestion_events GROUP BY tenant)"
            }
            _ => {
                "DELETE FROM ingestion_events WHERE event_at_ms < ? AND seq NOT IN \
                 (SELECT MAX(seq) FROM ingestion_events GROUP BY tenant)"
            }
        },
        [before_ms.into()],
    );
    Ok(db.execute(statement).await?.rows_affected())
}

/// The number of the tenant's oldest event still kept (0 when there is none).
pub async fn oldest_seq(db: &impl ConnectionTrait, tenant: &str) -> Result<i64, DbErr> {
    let oldest: Option<Option<i64>> = event::Entity::find()
        .select_only()
        .column_as(event::Column::TenantSeq.min(), "oldest")
        .filter(event::Column::Tenant.eq(tenant))
        .into_tuple()
        .one(db)
        .await?;
    Ok(oldest.flatten().unwrap_or(0))
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
            content_hash: None,
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
            idempotency_key: None,
            content_hash: None,
        }
    }

    async fn exercise(db: sea_orm::DatabaseConnection) {
        let recorded = record_accepted(&db, vec![accepted("i1", "a")])
            .await
            .unwrap();
        assert_eq!(recorded.len(), 1);
        // Recording twice is harmless and adds no event.
        assert!(record_accepted(&db, vec![accepted("i1", "a")])
            .await
            .unwrap()
            .is_empty());

        let mut first = apply_completion(&db, &completion("i1", Outcome::Indexed))
            .await
            .unwrap();
        assert_eq!(first.len(), 1, "the first completion ends the ingestion");
        let first = first.remove(0);
        assert_eq!(
            (first.row.state.as_str(), first.row.chunk_count),
            (INDEXED, 3)
        );
        assert!(first.seq > recorded[0].seq, "events are numbered in order");
        // A second delivery, even with another outcome, changes nothing and says so.
        assert_eq!(
            apply_completion(&db, &completion("i1", Outcome::Failed))
                .await
                .unwrap(),
            []
        );
        assert_eq!(get(&db, "a", "i1").await.unwrap().unwrap().state, INDEXED);

        // A completion that overtakes the gateway's record creates the row and logs ACCEPTED
        // before the end; the late accepted record neither moves it back nor adds an event
        // after the end, but leaves its idempotency key and content hash for retries.
        let overtaking = apply_completion(&db, &completion("i2", Outcome::Indexed))
            .await
            .unwrap();
        let states: Vec<&str> = overtaking.iter().map(|c| c.row.state.as_str()).collect();
        assert_eq!(states, [ACCEPTED, INDEXED]);
        let late = Model {
            idempotency_key: Some("key-2".into()),
            content_hash: Some("hash-2".into()),
            ..accepted("i2", "a")
        };
        assert!(record_accepted(&db, vec![late]).await.unwrap().is_empty());
        let row = get(&db, "a", "i2").await.unwrap().unwrap();
        assert_eq!(row.state, INDEXED);
        assert_eq!(row.idempotency_key.as_deref(), Some("key-2"));
        assert_eq!(row.content_hash.as_deref(), Some("hash-2"));
        assert_eq!(
            find_by_idempotency_keys(&db, "a", &["key-2".into()], 0)
                .await
                .unwrap()
                .len(),
            1
        );

        // The event log: each change once, in order, per tenant.
        let events = events_after(&db, "a", 0, None, 100).await.unwrap();
        let states: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.ingestion_id.as_str(), e.state.as_str()))
            .collect();
        assert_eq!(
            states,
            [
                ("i1", ACCEPTED),
                ("i1", INDEXED),
                ("i2", ACCEPTED),
                ("i2", INDEXED)
            ]
        );
        assert_eq!(
            events.iter().map(|e| e.tenant_seq).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );

        let after_first = events_after(&db, "a", 1, Some(&["i2".into()]), 100)
            .await
            .unwrap();
        assert_eq!(after_first.len(), 2);
        assert!(events_after(&db, "b", 0, None, 100)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(latest_seq(&db, "a").await.unwrap(), 4);
        assert_eq!(latest_seq(&db, "b").await.unwrap(), 0);
        let (latest, rows) = snapshot(&db, "a", &["i1".into()]).await.unwrap();
        assert_eq!((latest, rows.len()), (4, 1));
        // Pruning keeps each tenant's latest event, so numbering carries on.
        assert_eq!(prune_events(&db, now_ms() + 1).await.unwrap(), 3);
        assert_eq!(oldest_seq(&db, "a").await.unwrap(), 4);

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

        // The gateway died after its commit and never recorded the ingestion: the completion
        // carries the request's key and content hash, so a retry is still recognised.
        let orphan = Completion {
            idempotency_key: Some("key-3".into()),
            content_hash: Some("hash-3".into()),
            ..completion("i3", Outcome::Indexed)
        };
        apply_completion(&db, &orphan).await.unwrap();
        let found = find_by_idempotency_keys(&db, "a", &["key-3".into()], 0)
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].ingestion_id, "i3");
        assert_eq!(found[0].content_hash.as_deref(), Some("hash-3"));
    }

    /// Completions applied together: each as if alone, in order, in one transaction.
    async fn exercise_together(db: sea_orm::DatabaseConnection) {
        record_accepted(&db, vec![accepted("j1", "a"), accepted("j2", "a")])
            .await
            .unwrap();
        let changes = apply_completions(
            &db,
            &[
                completion("j1", Outcome::Indexed),
                // A duplicate in the same batch: the first one won.
                completion("j1", Outcome::Failed),
                completion("j2", Outcome::Failed),
                // Overtook the gateway's record.
                completion("j3", Outcome::Indexed),
            ],
        )
        .await
        .unwrap();
        let states: Vec<Vec<(&str, i64)>> = changes
            .iter()
            .map(|c| c.iter().map(|c| (c.row.state.as_str(), c.seq)).collect())
            .collect();
        assert_eq!(
            states,
            [
                vec![(INDEXED, 3)],
                vec![],
                vec![(FAILED, 4)],
                vec![(ACCEPTED, 5), (INDEXED, 6)]
            ]
        );
        assert_eq!(get(&db, "a", "j1").await.unwrap().unwrap().state, INDEXED);
        assert_eq!(latest_seq(&db, "a").await.unwrap(), 6);
    }

    #[tokio::test]
    async fn completions_together_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
        exercise_together(super::super::connect(&url).await.unwrap()).await;
    }

    #[tokio::test]
    async fn completions_together_on_postgres() {
        let url = crate::db::testing::fresh_postgres_database().await;
        exercise_together(super::super::connect(&url).await.unwrap()).await;
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
