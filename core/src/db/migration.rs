//! Database schema, as sea-orm migrations applied in order at start.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_integer_null, integer, string, string_null};

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateIngestions)]
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
