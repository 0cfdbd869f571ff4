//! The database: the tenant registry and projections of the Kafka log.
//!
//! Kafka is the source of truth; these tables can be rebuilt from it. SQLite by default,
//! PostgreSQL when configured; both go through sea-orm and the same migrations.
//!
//! - [`ingestion`]: the `ingestions` table entity: one row per ingestion, its current state.
//! - [`event`]: the `ingestion_events` log: every state change, numbered (watch cursors).
//! - [`migration`]: the schema, applied at start.
//! - [`projection`]: how ingestion events change rows (idempotently: a completion seen twice
//!   changes nothing the second time).
//! - [`claim`]: idempotency keys claimed before a write, so that a key writes once across
//!   gateways.
//! - [`quota`]: per-tenant token buckets every gateway draws from.

pub mod claim;
pub mod event;
pub mod ingestion;
pub mod migration;
pub mod projection;
pub mod quota;

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr};
use sea_orm_migration::MigratorTrait;

/// Connects and brings the schema up to date.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or_default();
        if let Some(parent) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| DbErr::Custom(format!("{}: {e}", parent.display())))?;
        }
    }
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    let db = Database::connect(options).await?;
    if db.get_database_backend() == sea_orm::DatabaseBackend::Sqlite {
        // WAL lets readers (GetIngestion) proceed while the completion consumer writes.
        db.execute_unprepared("PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;")
            .await?;
    }
    migration::Migrator::up(&db, None).await?;
    Ok(db)
}

/// Runs an insert or update that ends in `RETURNING *` (sea-query's `returning_all`) and reads
/// back the rows it wrote. sea-orm's own RETURNING is PostgreSQL-only unless configured, and
/// SQLite has had RETURNING since 3.35, so callers build the statement and run it here.
pub(crate) async fn rows_written<E: sea_orm::EntityTrait>(
    db: &impl ConnectionTrait,
    statement: &impl sea_orm::StatementBuilder,
) -> Result<Vec<E::Model>, DbErr> {
    E::find()
        .from_raw_sql(db.get_database_backend().build(statement))
        .all(db)
        .await
}

/// Whether an error is a unique-constraint violation: another writer (perhaps another
/// gateway on the same database) inserted the same key first.
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// Whether the database answers, for health reports.
pub async fn probe(db: &DatabaseConnection) -> Result<&'static str, DbErr> {
    db.ping().await?;
    Ok(match db.get_database_backend() {
        sea_orm::DatabaseBackend::Sqlite => "sqlite",
        sea_orm::DatabaseBackend::Postgres => "postgres",
        sea_orm::DatabaseBackend::MySql => "mysql",
    })
}

/// Helpers for tests that run against the real PostgreSQL.
pub mod testing {
    use sea_orm::{ConnectionTrait, Database};

    /// The server tests use: `SLUICE_TEST_POSTGRES_URL`, default the local one.
    pub fn postgres_server_url() -> String {
        std::env::var("SLUICE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
    }

    /// Creates an empty database for one test and returns its URL. Panics (failing the test)
    /// when PostgreSQL is unreachable: the tests must run on both databases.
    pub async fn fresh_postgres_database() -> String {
        let server = postgres_server_url();
        let admin = Database::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {server}: {e}"));
        let name = format!("sluice_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let base = server
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&server);
        format!("{base}/{name}")
    }
}
