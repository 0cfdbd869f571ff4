//! The Sluice gateway: the gRPC front door.
//!
//! # Layout
//! - [`server`]: assembles everything below and runs it, with graceful shutdown.
//! - [`tenancy`]: TLS, certificates, which tenant is calling, the tenant directory, quotas.
//! - [`ingest`]: the ingest path: validation, idempotency, Kafka transactions, the record of
//!   accepted ingestions, completions back from the workers, watch streams, retention.
//! - [`services`]: search, schemas, health, and errors as gRPC statuses.
//! - [`transport`]: limits on connections and request sizes, before any tenant code runs.
//! - [`schema_registry_api`]: the built-in schema registry's Confluent REST API, scoped per
//!   tenant.
//! - [`standalone`]: the worker in the same process, sharing the embedded vector store.
//! - [`periodic`]: the loop behind every task that runs every so often.
//!
//! The operator's `sluice-admin` (tenants, certificates, dead-letter re-drive) is its own crate,
//! `admin/`; certificates are `pki/`.

pub mod ingest;
pub mod periodic;
pub mod schema_registry_api;
pub mod server;
pub mod services;
pub mod standalone;
pub mod tenancy;
pub mod transport;

pub use server::{Gateway, RunningGateway};
