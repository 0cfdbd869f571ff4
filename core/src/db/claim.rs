//! Idempotency claims: the database constraint that makes a key write once across gateways.
//!
//! A gateway claims a request's keys (one row per key, primary key `(tenant, key)`) before it
//! writes to Kafka. The insert either succeeds for every key or fails on the constraint, so of
//! two gateways given the same key at the same instant exactly one writes; the other waits
//! for the winner's ingestion to be recorded and answers with it. A claim whose write failed
//! is released; one left by a gateway that died mid-write is forgotten once it is older than the
//! lease (see [`forget`]).

use sea_orm::entity::prelude::*;
use sea_orm::{QueryFilter, Set, TransactionTrait};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_claims")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    /// The ingestion the claimer writes under this key.
    pub ingestion_id: String,
    pub claimed_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Claims every `(key, ingestion id)` for `tenant`, all or none. `Ok(false)`: another writer
/// holds at least one of the keys, and nothing was claimed.
pub async fn claim(
    db: &DatabaseConnection,
    tenant: &str,
    claims: &[(String, String)],
    now_ms: i64,
) -> Result<bool, DbErr> {
    if claims.is_empty() {
        return Ok(true);
    }
    let txn = db.begin().await?;
    let rows = claims.iter().map(|(key, ingestion_id)| ActiveModel {
        tenant: Set(tenant.to_owned()),
        key: Set(key.clone()),
        ingestion_id: Set(ingestion_id.clone()),
        claimed_at_ms: Set(now_ms),
    });
    match Entity::insert_many(rows).exec(&txn).await {
        Ok(_) => {
            txn.commit().await?;
            Ok(true)
        }
        Err(error) if super::is_unique_violation(&error) => {
            txn.rollback().await?;
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// The claims held on these keys.
pub async fn held(
    db: &impl ConnectionTrait,
    tenant: &str,
    keys: &[String],
) -> Result<Vec<Model>, DbErr> {
    Entity::find()
        .filter(Column::Tenant.eq(tenant))
        .filter(Column::Key.is_in(keys.iter().cloned()))
        .all(db)
        .await
}

/// Forgets a claim left behind (its holder neither recorded an ingestion nor released it
/// within the lease), only if it is still exactly `stale`: a claim renewed meanwhile stays.
pub async fn forget(db: &impl ConnectionTrait, stale: &Model) -> Result<bool, DbErr> {
    let result = Entity::delete_many()
        .filter(Column::Tenant.eq(&stale.tenant))
        .filter(Column::Key.eq(&stale.key))
        .filter(Column::IngestionId.eq(&stale.ingestion_id))
        .filter(Column::ClaimedAtMs.eq(stale.claimed_at_ms))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Releases claims whose write failed, so a retry can claim them again. Only the rows still
/// naming our ingestions: a claim taken over meanwhile is someone else's.
pub async fn release(
    db: &impl ConnectionTrait,
    tenant: &str,
    claims: &[(String, String)],
) -> Result<(), DbErr> {
    for (key, ingestion_id) in claims {
        Entity::delete_many()
            .filter(Column::Tenant.eq(tenant))
            .filter(Column::Key.eq(key))
            .filter(Column::IngestionId.eq(ingestion_id))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Forgets claims older than the idempotency window (their keys no longer repeat anything).
pub async fn prune(db: &impl ConnectionTrait, before_ms: i64) -> Result<u64, DbErr> {
    let result = Entity::delete_many()
        .filter(Column::ClaimedAtMs.lt(before_ms))
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}
