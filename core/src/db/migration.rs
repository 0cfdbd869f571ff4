//! Database schema, as sea-orm migrations applied in order at start.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, big_integer_null, boolean, double, integer, pk_auto, string, string_null,
    string_uniq, text,
};

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateIngestions),
            Box::new(CreateTenantRegistry),
            Box::new(CreateIngestionEvents),
            Box::new(CreateSchemaRegistry),
            Box::new(AddRequestsPerSecond),
            Box::new(CreateIdempotencyClaims),
            Box::new(CreateQuotaBuckets),
            Box::new(IndexIdempotencyKeys),
        ]
    }
}

#[derive(DeriveIden)]
enum Ingestions {
    Table,
    IngestionId,
    Tenant,
    DocumentId,
    Operation,
    State,
    KafkaTopic,
    KafkaPartition,
    KafkaOffset,
    ChunkCount,
    FailureReason,
    IdempotencyKey,
    AcceptedAtMs,
    CompletedAtMs,
    ContentHash,
}

struct CreateIngestions;

impl MigrationName for CreateIngestions {
    fn name(&self) -> &str {
        "m20261123_000001_create_ingestions"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateIngestions {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Ingestions::Table)
                    .if_not_exists()
                    .col(string(Ingestions::IngestionId).primary_key())
                    .col(string(Ingestions::Tenant))
                    .col(string(Ingestions::DocumentId))
                    .col(string(Ingestions::Operation))
                    .col(string(Ingestions::State))
                    .col(string(Ingestions::KafkaTopic))
                    .col(integer(Ingestions::KafkaPartition))
                    .col(big_integer(Ingestions::KafkaOffset))
                    .col(integer(Ingestions::ChunkCount))
                    .col(string_null(Ingestions::FailureReason))
                    .col(string_null(Ingestions::IdempotencyKey))
                    .col(big_integer(Ingestions::AcceptedAtMs))
                    .col(big_integer_null(Ingestions::CompletedAtMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ingestions_tenant_document")
                    .table(Ingestions::Table)
                    .col(Ingestions::Tenant)
                    .col(Ingestions::DocumentId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Ingestions::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
    Name,
    State,
    DocumentsPerSecond,
    BytesPerSecond,
    MaxPayloadBytes,
    MaxWatchStreams,
    MaxTopK,
    RequestsPerSecond,
    CreatedAtMs,
    UpdatedAtMs,
}

#[derive(DeriveIden)]
enum TenantCertificates {
    Table,
    Kind,
    Value,
    Tenant,
    CreatedAtMs,
}

#[derive(DeriveIden)]
enum RevokedCertificates {
    Table,
    Kind,
    Value,
    Reason,
    RevokedAtMs,
}

#[derive(DeriveIden)]
enum RegistryAudit {
    Table,
    Id,
    AtMs,
    Actor,
    Action,
    Tenant,
    Detail,
}

/// The tenant registry (`crate::tenants`): tenants with their quotas, the certificates that
/// authenticate them, revoked certificates, and the audit trail of every change.
struct CreateTenantRegistry;

impl MigrationName for CreateTenantRegistry {
    fn name(&self) -> &str {
        "m20261201_000002_create_tenant_registry"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateTenantRegistry {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Quotas are 64-bit: PostgreSQL has no unsigned types, and u32 limits overflow i32.
        manager
            .create_table(
                Table::create()
                    .table(Tenants::Table)
                    .if_not_exists()
                    .col(string(Tenants::Id).primary_key())
                    .col(string(Tenants::Name))
                    .col(string(Tenants::State))
                    .col(big_integer(Tenants::DocumentsPerSecond))
                    .col(big_integer(Tenants::BytesPerSecond))
                    .col(big_integer(Tenants::MaxPayloadBytes))
                    .col(big_integer(Tenants::MaxWatchStreams))
                    .col(big_integer(Tenants::MaxTopK))
                    .col(big_integer(Tenants::CreatedAtMs))
                    .col(big_integer(Tenants::UpdatedAtMs))
                    .to_owned(),
            )
            .await?;
        // (kind, value) is the key: one certificate identity authenticates at most one tenant.
        manager
            .create_table(
                Table::create()
                    .table(TenantCertificates::Table)
                    .if_not_exists()
                    .col(string(TenantCertificates::Kind))
                    .col(string(TenantCertificates::Value))
                    .col(string(TenantCertificates::Tenant))
                    .col(big_integer(TenantCertificates::CreatedAtMs))
                    .primary_key(
                        Index::create()
                            .col(TenantCertificates::Kind)
                            .col(TenantCertificates::Value),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("tenant_certificates_tenant")
                            .from(TenantCertificates::Table, TenantCertificates::Tenant)
                            .to(Tenants::Table, Tenants::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("tenant_certificates_by_tenant")
                    .table(TenantCertificates::Table)
                    .col(TenantCertificates::Tenant)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RevokedCertificates::Table)
                    .if_not_exists()
                    .col(string(RevokedCertificates::Kind))
                    .col(string(RevokedCertificates::Value))
                    .col(string(RevokedCertificates::Reason))
                    .col(big_integer(RevokedCertificates::RevokedAtMs))
                    .primary_key(
                        Index::create()
                            .col(RevokedCertificates::Kind)
                            .col(RevokedCertificates::Value),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RegistryAudit::Table)
                    .if_not_exists()
                    .col(pk_auto(RegistryAudit::Id))
                    .col(big_integer(RegistryAudit::AtMs))
                    .col(string(RegistryAudit::Actor))
                    .col(string(RegistryAudit::Action))
                    .col(string_null(RegistryAudit::Tenant))
                    .col(text(RegistryAudit::Detail))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            RegistryAudit::Table.into_iden(),
            RevokedCertificates::Table.into_iden(),
            TenantCertificates::Table.into_iden(),
            Tenants::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum IngestionEvents {
    Table,
    Seq,
    Tenant,
    TenantSeq,
    IngestionId,
    DocumentId,
    Operation,
    State,
    KafkaTopic,
    KafkaPartition,
    KafkaOffset,
    ChunkCount,
    FailureReason,
    AcceptedAtMs,
    CompletedAtMs,
    EventAtMs,
}

/// The ingestion event log that resumable watch streams read (its sequence number is the
/// cursor), and each ingestion's content hash for idempotency without a key.
struct CreateIngestionEvents;

impl MigrationName for CreateIngestionEvents {
    fn name(&self) -> &str {
        "m20261202_000003_create_ingestion_events"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateIngestionEvents {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IngestionEvents::Table)
                    .if_not_exists()
                    .col(
                        big_integer(IngestionEvents::Seq)
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(string(IngestionEvents::Tenant))
                    .col(big_integer(IngestionEvents::TenantSeq))
                    .col(string(IngestionEvents::IngestionId))
                    .col(string(IngestionEvents::DocumentId))
                    .col(string(IngestionEvents::Operation))
                    .col(string(IngestionEvents::State))
                    .col(string(IngestionEvents::KafkaTopic))
                    .col(integer(IngestionEvents::KafkaPartition))
                    .col(big_integer(IngestionEvents::KafkaOffset))
                    .col(integer(IngestionEvents::ChunkCount))
                    .col(string_null(IngestionEvents::FailureReason))
                    .col(big_integer(IngestionEvents::AcceptedAtMs))
                    .col(big_integer_null(IngestionEvents::CompletedAtMs))
                    .col(big_integer(IngestionEvents::EventAtMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ingestion_events_tenant_seq")
                    .table(IngestionEvents::Table)
                    .col(IngestionEvents::Tenant)
                    .col(IngestionEvents::TenantSeq)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Ingestions::Table)
                    .add_column(string_null(Ingestions::ContentHash))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Ingestions::Table)
                    .drop_column(Ingestions::ContentHash)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(IngestionEvents::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum SchemaRegistrySchemas {
    Table,
    Id,
    Fingerprint,
    Schema,
    References,
    CreatedAtMs,
}

#[derive(DeriveIden)]
enum SchemaRegistryVersions {
    Table,
    Subject,
    Version,
    SchemaId,
    Deleted,
    CreatedAtMs,
}

#[derive(DeriveIden)]
enum SchemaRegistryConfig {
    Table,
    Subject,
    Compatibility,
}

/// The built-in schema registry (`crate::schema_registry::builtin`): schemas by global id,
/// subjects' numbered versions of them, and compatibility levels.
struct CreateSchemaRegistry;

impl MigrationName for CreateSchemaRegistry {
    fn name(&self) -> &str {
        "m20261215_000004_create_schema_registry"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateSchemaRegistry {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The fingerprint is unique: two gateways registering the same schema at once get
        // one id (the loser's insert fails and it retries, finding the winner's row).
        // References are JSON text: SQLite has no JSON type, and text compares on both.
        manager
            .create_table(
                Table::create()
                    .table(SchemaRegistrySchemas::Table)
                    .if_not_exists()
                    .col(pk_auto(SchemaRegistrySchemas::Id))
                    .col(string_uniq(SchemaRegistrySchemas::Fingerprint))
                    .col(text(SchemaRegistrySchemas::Schema))
                    .col(text(SchemaRegistrySchemas::References))
                    .col(big_integer(SchemaRegistrySchemas::CreatedAtMs))
                    .to_owned(),
            )
            .await?;
        // (subject, version) is the key, so concurrent registrations cannot both take the
        // next version number.
        manager
            .create_table(
                Table::create()
                    .table(SchemaRegistryVersions::Table)
                    .if_not_exists()
                    .col(string(SchemaRegistryVersions::Subject))
                    .col(integer(SchemaRegistryVersions::Version))
                    .col(integer(SchemaRegistryVersions::SchemaId))
                    .col(boolean(SchemaRegistryVersions::Deleted))
                    .col(big_integer(SchemaRegistryVersions::CreatedAtMs))
                    .primary_key(
                        Index::create()
                            .col(SchemaRegistryVersions::Subject)
                            .col(SchemaRegistryVersions::Version),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("schema_registry_versions_schema")
                            .from(
                                SchemaRegistryVersions::Table,
                                SchemaRegistryVersions::SchemaId,
                            )
                            .to(SchemaRegistrySchemas::Table, SchemaRegistrySchemas::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("schema_registry_versions_by_schema")
                    .table(SchemaRegistryVersions::Table)
                    .col(SchemaRegistryVersions::SchemaId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // One row per subject with a level of its own; the empty subject holds the global one.
        manager
            .create_table(
                Table::create()
                    .table(SchemaRegistryConfig::Table)
                    .if_not_exists()
                    .col(string(SchemaRegistryConfig::Subject).primary_key())
                    .col(string(SchemaRegistryConfig::Compatibility))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            SchemaRegistryConfig::Table.into_iden(),
            SchemaRegistryVersions::Table.into_iden(),
            SchemaRegistrySchemas::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

/// A rate for every call that is not an ingestion (searches, lookups, watches, schemas).
/// Existing tenants get the default quota (1,000).
struct AddRequestsPerSecond;

impl MigrationName for AddRequestsPerSecond {
    fn name(&self) -> &str {
        "m20261216_000005_add_requests_per_second"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddRequestsPerSecond {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tenants::Table)
                    .add_column(big_integer(Tenants::RequestsPerSecond).default(1000))
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum IdempotencyClaims {
    Table,
    Tenant,
    Key,
    IngestionId,
    ClaimedAtMs,
}

/// Idempotency keys claimed before a write ([`super::claim`]): the primary key is the
/// constraint that lets one of several gateways write a key.
struct CreateIdempotencyClaims;

impl MigrationName for CreateIdempotencyClaims {
    fn name(&self) -> &str {
        "m20261217_000006_create_idempotency_claims"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateIdempotencyClaims {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyClaims::Table)
                    .if_not_exists()
                    .col(string(IdempotencyClaims::Tenant))
                    .col(string(IdempotencyClaims::Key))
                    .col(string(IdempotencyClaims::IngestionId))
                    .col(big_integer(IdempotencyClaims::ClaimedAtMs))
                    .primary_key(
                        Index::create()
                            .col(IdempotencyClaims::Tenant)
                            .col(IdempotencyClaims::Key),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idempotency_claims_claimed_at")
                    .table(IdempotencyClaims::Table)
                    .col(IdempotencyClaims::ClaimedAtMs)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum QuotaBuckets {
    Table,
    Tenant,
    Kind,
    Tokens,
    RefilledAtMs,
    Version,
}

/// Per-tenant token buckets every gateway draws from ([`super::quota`]), so a quota holds
/// across gateways.
struct CreateQuotaBuckets;

impl MigrationName for CreateQuotaBuckets {
    fn name(&self) -> &str {
        "m20261217_000007_create_quota_buckets"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateQuotaBuckets {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(QuotaBuckets::Table)
                    .if_not_exists()
                    .col(string(QuotaBuckets::Tenant))
                    .col(string(QuotaBuckets::Kind))
                    .col(double(QuotaBuckets::Tokens))
                    .col(big_integer(QuotaBuckets::RefilledAtMs))
                    .col(big_integer(QuotaBuckets::Version))
                    .primary_key(
                        Index::create()
                            .col(QuotaBuckets::Tenant)
                            .col(QuotaBuckets::Kind),
                    )
                    .to_owned(),
            )
            .await
    }
}

/// Looking a request's idempotency keys up (every keyed write does) reads only the rows with
/// those keys, not every ingestion of the tenant.
struct IndexIdempotencyKeys;

impl MigrationName for IndexIdempotencyKeys {
    fn name(&self) -> &str {
        "m20261218_000008_index_idempotency_keys"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for IndexIdempotencyKeys {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("ingestions_tenant_idempotency_key")
                    .table(Ingestions::Table)
                    .col(Ingestions::Tenant)
                    .col(Ingestions::IdempotencyKey)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}
