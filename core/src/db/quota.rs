//! Per-tenant token buckets shared by every gateway, so that a quota holds in total however
//! many gateways a tenant's calls reach.
//!
//! One row per tenant and kind (documents, bytes, requests): the tokens left and when they
//! were last refilled. Nothing refills the row in the background: whoever takes from it first
//! adds what the elapsed time earned (at `rate` per second, up to `capacity`). Gateways do not
//! come here for every call: they lease a slice of tokens (see the gateway's quota gate) and
//! spend it locally. Each take is an optimistic update (`version` must be unchanged), so two
//! gateways taking at once never both spend the same tokens.

use sea_orm::entity::prelude::*;
use sea_orm::{QueryFilter, Set};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "quota_buckets")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant: String,
    /// `documents`, `bytes` or `requests`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub kind: String,
    pub tokens: f64,
    pub refilled_at_ms: i64,
    pub version: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// What a bucket gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Take {
    /// This many tokens, at least the `at_least` asked for.
    Granted(f64),
    /// Fewer than `at_least` are there now; nothing was taken.
    Short { available: f64 },
}

/// The bucket's shape: refills at `rate` tokens per second, holds at most `capacity`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub rate: f64,
    pub capacity: f64,
}

/// How many times a take is tried when other gateways keep changing the row under it.
const ATTEMPTS: usize = 16;

/// Takes between `at_least` and `at_most` tokens from the tenant's bucket of `kind`, or none
/// when fewer than `at_least` are there. A bucket seen for the first time starts full.
pub async fn take(
    db: &impl ConnectionTrait,
    tenant: &str,
    kind: &str,
    shape: Shape,
    at_least: f64,
    at_most: f64,
    now_ms: i64,
) -> Result<Take, DbErr> {
    for _ in 0..ATTEMPTS {
        let row = Entity::find_by_id((tenant.to_owned(), kind.to_owned()))
            .one(db)
            .await?;
        let Some(row) = row else {
            let created = Entity::insert(ActiveModel {
                tenant: Set(tenant.to_owned()),
                kind: Set(kind.to_owned()),
                tokens: Set(shape.capacity),
                refilled_at_ms: Set(now_ms),
                version: Set(0),
            })
            .exec(db)
            .await;
            match created {
                Ok(_) => continue,
                Err(error) if super::is_unique_violation(&error) => continue,
                Err(error) => return Err(error),
            }
        };
        let (available, refilled_at_ms) = refilled(&row, shape, now_ms);
        if available < at_least {
            return Ok(Take::Short { available });
        }
        let granted = at_most.max(at_least).min(available);
        let updated = Entity::update_many()
            .col_expr(Column::Tokens, Expr::value(available - granted))
            .col_expr(Column::RefilledAtMs, Expr::value(refilled_at_ms))
            .col_expr(Column::Version, Expr::value(row.version + 1))
            .filter(Column::Tenant.eq(tenant))
            .filter(Column::Kind.eq(kind))
            .filter(Column::Version.eq(row.version))
            .exec(db)
            .await?;
        if updated.rows_affected == 1 {
            return Ok(Take::Granted(granted));
        }
        // Another gateway took first: try again, out of step with it.
        let jitter_us = (uuid::Uuid::new_v4().as_u128() % 2_000) as u64;
        tokio::time::sleep(std::time::Duration::from_micros(jitter_us)).await;
    }
    // Sustained contention on one tenant's row: treat it as empty for now.
    Ok(Take::Short { available: 0.0 })
}

/// The tokens in `row` once the time since its last refill is added, and the new refill time.
/// A clock behind the row's (another gateway's) earns nothing rather than going back in time.
fn refilled(row: &Model, shape: Shape, now_ms: i64) -> (f64, i64) {
    let elapsed_ms = (now_ms - row.refilled_at_ms).max(0);
    let tokens = (row.tokens + elapsed_ms as f64 * shape.rate / 1000.0).min(shape.capacity);
    (tokens, row.refilled_at_ms.max(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tokens: f64, refilled_at_ms: i64) -> Model {
        Model {
            tenant: "t".into(),
            kind: "documents".into(),
            tokens,
            refilled_at_ms,
            version: 3,
        }
    }

    const SHAPE: Shape = Shape {
        rate: 100.0,
        capacity: 100.0,
    };

    #[test]
    fn refills_at_the_rate_up_to_the_capacity() {
        assert_eq!(refilled(&row(0.0, 1_000), SHAPE, 1_250), (25.0, 1_250));
        assert_eq!(refilled(&row(90.0, 1_000), SHAPE, 3_000), (100.0, 3_000));
    }

    #[test]
    fn a_clock_behind_earns_nothing() {
        assert_eq!(refilled(&row(10.0, 5_000), SHAPE, 4_000), (10.0, 5_000));
    }

    #[tokio::test]
    async fn takes_never_spend_more_than_the_bucket_earns_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("q.db").display());
        exercise(crate::db::connect(&url).await.unwrap()).await;
    }

    #[tokio::test]
    async fn takes_never_spend_more_than_the_bucket_earns_on_postgres() {
        let url = crate::db::testing::fresh_postgres_database().await;
        exercise(crate::db::connect(&url).await.unwrap()).await;
    }

    async fn exercise(db: DatabaseConnection) {
        let take =
            |at_least, at_most, now| take(&db, "t", "documents", SHAPE, at_least, at_most, now);
        assert_eq!(take(60.0, 60.0, 0).await.unwrap(), Take::Granted(60.0));
        assert_eq!(take(10.0, 80.0, 0).await.unwrap(), Take::Granted(40.0));
        assert_eq!(
            take(1.0, 1.0, 0).await.unwrap(),
            Take::Short { available: 0.0 }
        );
        // 100 ms later, 10 tokens are back.
        assert_eq!(
            take(20.0, 20.0, 100).await.unwrap(),
            Take::Short { available: 10.0 }
        );
        assert_eq!(take(5.0, 50.0, 100).await.unwrap(), Take::Granted(10.0));

        // Eight takers at the same instant (each gateway leases one at a time per tenant and
        // rate, so eight gateways) spend what is there once.
        let takers = (0..8).map(|_| {
            let db = db.clone();
            async move {
                super::take(&db, "u", "documents", SHAPE, 12.0, 12.0, 0)
                    .await
                    .unwrap()
            }
        });
        let granted: f64 = futures::future::join_all(takers)
            .await
            .iter()
            .map(|take| match take {
                Take::Granted(tokens) => *tokens,
                Take::Short { .. } => 0.0,
            })
            .sum();
        assert!(
            granted <= 96.0,
            "{granted} tokens granted from a bucket of 100"
        );
        assert_eq!(granted, 96.0, "eight takes of 12 from a bucket of 100");
    }
}
