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

/// Claims several requests' keys, each `(tenant, [(key, ingestion id)])`, in one database
/// transaction: one commit (one wait for the disk) for all of them. Each request's keys are
/// claimed all or none; returns, per request, whether it holds them now (`false`: another
/// writer holds at least one of its keys, and none of them was claimed).
pub async fn claim(
    db: &DatabaseConnection,
    wanted: &[(String, Vec<(String, String)>)],
    now_ms: i64,
) -> Result<Vec<bool>, DbErr> {
    // Keys in one order for every writer: an insert waits for another transaction's
    // uncommitted row with the same key (PostgreSQL), so two gateways inserting the same keys
    // in different orders would each wait for the other. Requests claim one key each (see
    // the gateway's idempotency), so ordering requests by key orders every insert.
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    order.sort_by(|&a, &b| {
        let first = |i: usize| (&wanted[i].0, wanted[i].1.iter().min());
        first(a).cmp(&first(b))
    });
    let txn = db.begin().await?;
    let mut claimed = vec![true; wanted.len()];
    for i in order {
        let (tenant, claims) = &wanted[i];
        if claims.is_empty() {
            continue;
        }
        // A savepoint per request: a key held elsewhere undoes that request's rows only.
        let request = txn.begin().await?;
        let rows = claims.iter().map(|(key, ingestion_id)| ActiveModel {
            tenant: Set(tenant.clone()),
            key: Set(key.clone()),
            ingestion_id: Set(ingestion_id.clone()),
            claimed_at_ms: Set(now_ms),
        });
        match Entity::insert_many(rows).exec(&request).await {
            Ok(_) => request.commit().await?,
            Err(error) if super::is_unique_violation(&error) => {
                request.rollback().await?;
                claimed[i] = false;
            }
            Err(error) => return Err(error),
        }
    }
    txn.commit().await?;
    Ok(claimed)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn one(key: &str, ingestion_id: &str) -> Vec<(String, String)> {
        vec![(key.to_owned(), ingestion_id.to_owned())]
    }

    #[tokio::test]
    async fn a_held_key_refuses_its_own_request_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/claims.db?mode=rwc", dir.path().display());
        let db = crate::db::connect(&url).await.unwrap();
        assert_eq!(
            claim(&db, &[("t".into(), one("k1", "first"))], 1)
                .await
                .unwrap(),
            [true]
        );
        // Together: a new key, the held key again, the same key for another tenant, no key.
        let wanted = [
            ("t".into(), one("k2", "second")),
            ("t".into(), one("k1", "again")),
            ("u".into(), one("k1", "other tenant")),
            ("t".into(), Vec::new()),
        ];
        assert_eq!(
            claim(&db, &wanted, 2).await.unwrap(),
            [true, false, true, true]
        );
        let claims_of = |tenant: &'static str| {
            let db = db.clone();
            async move {
                let mut rows = held(&db, tenant, &["k1".into(), "k2".into()])
                    .await
                    .unwrap();
                rows.sort_by(|a, b| a.key.cmp(&b.key));
                rows.into_iter()
                    .map(|row| (row.key, row.ingestion_id))
                    .collect::<Vec<_>>()
            }
        };
        // The refused request left nothing behind, and the earlier claim stands.
        assert_eq!(
            claims_of("t").await,
            [
                ("k1".into(), "first".into()),
                ("k2".into(), "second".into())
            ]
        );
        assert_eq!(claims_of("u").await, [("k1".into(), "other tenant".into())]);
    }
}
