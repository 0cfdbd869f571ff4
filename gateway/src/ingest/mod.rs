//! The ingest path, in the order a document takes it, and the way back (completions).
//!
//! # Layout
//! - [`service`]: `sluice.v1.IngestService`: Ingest, IngestBatch, DeleteDocument,
//!   GetIngestion and WatchIngestions.
//! - [`validate`]: requests → document records, or `INVALID_ARGUMENT` naming each bad field.
//! - [`idempotency`]: recognises repeated requests so they write nothing new.
//! - [`appender`]: writes records to Kafka in transactions; concurrent requests share one,
//!   and a caller hears OK only after its transaction committed.
//! - [`recorder`]: records accepted ingestions in the database, many requests per transaction.
//! - [`group_commit`]: what the appender and the recorder share: requests that arrive
//!   together share one commit, and each hears its own answer.
//! - [`completions`]: consumes workers' completion events into the database projection and
//!   the [`hub`], which fans ingestion events out to watchers and waiting calls.
//! - [`watch`]: one WatchIngestions stream: the tenant's event log from a cursor on.
//! - [`retention`]: prunes ingestion events older than resumable watch streams need.

pub mod appender;
pub mod completions;
pub mod group_commit;
pub mod hub;
pub mod idempotency;
pub mod recorder;
pub mod retention;
pub mod service;
pub mod validate;
pub mod watch;

pub use service::{to_proto, IngestApi};
