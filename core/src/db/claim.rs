//! Idempotency claims: the database constraint that makes a key write once across gateways.
//!
//! A gateway claims a request's key (one row, primary key `(tenant, key)`) before it writes to
//! Kafka. The insert either succeeds or finds the key taken, so of two gateways given the same
//! key at the same instant exactly one writes; the other waits for the winner's ingestion to
//! be recorded and answers with it. A claim whose write failed is released; one left by a
//! gateway that died mid-write is forgotten once it is older than the lease (see [`forget`]).

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{QueryFilter, QueryTrait, Set};

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

/// What one request claims: its tenant, its key, and the ingestion it writes under the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub tenant: String,
    pub key: String,
    pub ingestion_id: String,
}

/// Claims several requests' keys in one statement (one commit, one wait for the disk, one
/// round trip however many requests). Returns, per request, whether it holds its key now
/// (`false`: another writer, or an earlier request of the same group, holds it).
pub async fn claim(
    db: &DatabaseConnection,
    wanted: &[Wanted],
    now_ms: i64,
) -> Result<Vec<bool>, DbErr> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    // Keys in one order for every writer: an insert waits for another transaction's
    // uncommitted row with the same key (PostgreSQL), so two gateways inserting the same keys
    // in different orders could each wait for the other.
    let mut rows: Vec<&Wanted> = wanted.iter().collect();
    rows.sort_by(|a, b| (&a.tenant, &a.key).cmp(&(&b.tenant, &b.key)));
    let mut insert = Entity::insert_many(rows.into_iter().map(|w| ActiveModel {
        tenant: Set(w.tenant.clone()),
        key: Set(w.key.clone()),
        ingestion_id: Set(w.ingestion_id.clone()),
        claimed_at_ms: Set(now_ms),
    }))
    // A key held already is skipped, not an error: the statement claims every other one, and
    // returns the rows it inserted.
    .on_conflict(
        OnConflict::columns([Column::Tenant, Column::Key])
            .do_nothing()
            .to_owned(),
    )
    .into_query();
    insert.returning_all();
    let inserted: std::collections::HashSet<(String, String, String)> =
        super::rows_written::<Entity>(db, &insert)
            .await?
            .into_iter()
            .map(|row| (row.tenant, row.key, row.ingestion_id))
            .collect();
    // Matched on the ingestion too: of two requests with the same key, only the one whose
    // row went in holds it.
    Ok(wanted
        .iter()
        .map(|w| inserted.contains(&(w.tenant.clone(), w.key.clone(), w.ingestion_id.clone())))
        .collect())
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

    fn wanted(tenant: &str, key: &str, ingestion_id: &str) -> Wanted {
        Wanted {
            tenant: tenant.into(),
            key: key.into(),
            ingestion_id: ingestion_id.into(),
        }
    }

    async fn a_held_key_refuses_its_own_request_and_no_other(db: DatabaseConnection) {
        assert_eq!(
            claim(&db, &[wanted("t", "k1", "first")], 1).await.unwrap(),
            [true]
        );
        // Together: a new key, the held key again, the same key for another tenant, and two
        // requests with one new key (the first in the statement's order wins).
        let group = [
            wanted("t", "k2", "second"),
            wanted("t", "k1", "again"),
            wanted("u", "k1", "other tenant"),
            wanted("t", "k3", "one"),
            wanted("t", "k3", "two"),
        ];
        let claimed = claim(&db, &group, 2).await.unwrap();
        assert_eq!(claimed[..3], [true, false, true]);
        assert_eq!(
            claimed[3..].iter().filter(|held| **held).count(),
            1,
            "{claimed:?}"
        );
        // Nothing held at all is an answer too.
        assert_eq!(
            claim(&db, &[wanted("t", "k1", "third")], 3).await.unwrap(),
            [false]
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
        // The refused requests left nothing behind, and the earlier claim stands.
        assert_eq!(
            claims_of("t").await,
            [
                ("k1".into(), "first".into()),
                ("k2".into(), "second".into())
            ]
        );
        assert_eq!(claims_of("u").await, [("k1".into(), "other tenant".into())]);
    }

    #[tokio::test]
    async fn claims_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/claims.db?mode=rwc", dir.path().display());
        a_held_key_refuses_its_own_request_and_no_other(crate::db::connect(&url).await.unwrap())
            .await;
    }

    #[tokio::test]
    async fn claims_on_postgres() {
        let url = crate::db::testing::fresh_postgres_database().await;
        a_held_key_refuses_its_own_request_and_no_other(crate::db::connect(&url).await.unwrap())
            .await;
    }
}
