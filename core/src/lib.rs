//! What the Sluice gateway, worker and admin tool share. The model is `sluice-embed`; what a
//! process opens at start is `sluice_worker::Shared`.
//!
//! # Layout
//! - [`proto`]: the public gRPC API (`sluice.v1`), generated from `proto/`.
//! - [`config`]: one configuration (TOML file, `SLUICE_*` environment, flags) for every binary.
//! - [`telemetry`]: structured logs through `tracing`.
//! - [`tenant`]: who is calling; every layer carries it.
//! - [`schema`]: the Avro document schema: validation, decoding, the text and attributes it declares.
//! - [`schema_registry`]: where tenants' schemas live (built-in, or any Confluent-compatible
//!   registry), compatibility levels, the Confluent wire format, and a cache of parsed schemas.
//! - [`record`]: what travels through Kafka: document records and completion events.
//! - [`kafka`]: client configuration, topic creation, transactional producers.
//! - [`vector`]: the vector store trait, embedded qdrant-edge and a Qdrant server.
//! - [`db`]: the database (sea-orm): tenants and the ingestion projection of the log.
//! - [`tenants`]: the tenant registry: tenants, their state and quotas, certificate bindings,
//!   revocations, and the audit trail of every change.
//! - [`health`]: the dependency report behind `/healthz` and gRPC health.
//! - [`lag`]: consumer lag per partition, in offsets and seconds.
//! - [`metrics`]: the Prometheus recorder behind `/metrics`, and bounded tenant labels.

pub mod config;
pub mod db;
pub mod health;
pub mod kafka;
pub mod lag;
pub mod metrics;
pub mod proto;
pub mod record;
pub mod schema;
pub mod schema_registry;
pub mod telemetry;
pub mod tenant;
pub mod tenants;
pub mod vector;
