//! The Rust client for Sluice, the multi-tenant gRPC ingestion gateway: ingest documents,
//! follow their indexing, search them.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use serde_json::json;
//! use sluice_client::Client;
//!
//! let sluice = Client::from_directory("127.0.0.1:50051", ".sluice/dev/tls", Some("demo"))?;
//! sluice.ingest("note-1", &json!({"title": "Note", "text": "Tides follow the moon."})).wait(true).await?;
//! for hit in sluice.search("what moves the tides").top_k(3).await? {
//!     println!("{:.3} {}: {}", hit.score, hit.document_id, hit.text);
//! }
//! # Ok(()) }
//! ```
//!
//! A thin layer over the `sluice.v1` stubs ([`proto`], generated from the repository's
//! `proto/` at build time):
//!
//! - **mTLS** from PEM files or a directory as `sluice-admin cert client` writes it
//!   ([`TlsCredentials`]); the client certificate says which tenant you are.
//! - **Retries** of UNAVAILABLE, ABORTED and RESOURCE_EXHAUSTED, bounded in attempts, with
//!   exponential backoff and jitter, at least as long as the gateway's google.rpc.RetryInfo
//!   says, never past the call's deadline ([`RetryPolicy`]). RESOURCE_EXHAUSTED without
//!   RetryInfo is not retried: waiting would not help.
//! - **Idempotency keys**: every Ingest, IngestBatch and DeleteDocument carries a fresh key,
//!   the same on each retry, so a retry never writes twice.
//! - **Avro JSON** from any [`serde::Serialize`] value ([`to_avro_json`] tags unions when
//!   given the schema); **batches** by count and bytes ([`Client::ingest_many`]).
//! - **A watch that resumes** across disconnects from its last cursor, no event missed or
//!   repeated ([`Watch`]), and [`Client::wait_for`].
//! - **Errors** carrying the status code and the google.rpc details: field, quota and
//!   precondition violations, the retry delay ([`Error`]).
//!
//! Retries and reconnects are logged (`tracing`, INFO, target `sluice_client`).
//!
//! A [`Client`] lives on the Tokio runtime it was built in.

#![warn(missing_docs)]

mod avro;
mod batch;
mod client;
mod error;
pub mod proto;
mod retry;
mod tls;
mod types;
mod watch;

#[cfg(test)]
mod testing;

pub use avro::to_avro_json;
pub use client::{Client, ClientBuilder, Delete, Ingest, IngestMany, Search, DEV_TENANT_HEADER};
pub use error::{
    code_name, Code, ConfigError, Error, FieldViolation, PreconditionViolation, QuotaViolation,
    WaitTimeout,
};
pub use retry::RetryPolicy;
pub use tls::TlsCredentials;
pub use types::{
    Compatibility, Document, Hit, Ingestion, IngestionEvent, IngestionState, Operation, Schema,
};
pub use watch::Watch;
