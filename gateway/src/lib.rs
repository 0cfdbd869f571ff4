//! The Sluice gateway: the gRPC front door.
//!
//! # Layout
//! - [`server`]: assembles everything below and runs it, with graceful shutdown.
//! - [`auth`]: which tenant a request acts for.
//! - [`validate`]: requests → document records, or `INVALID_ARGUMENT` naming each bad field.
//! - [`appender`]: writes records to Kafka in transactions; concurrent requests share one
//!   (group commit), and a caller hears OK only after its transaction committed.
//! - [`completions`]: consumes workers' completion events into the database projection and
//!   the [`hub`], which fans ingestion events out to watchers and waiting calls.
//! - [`ingest`] and [`search`]: the two gRPC services.
//! - [`health`]: gRPC health and the HTTP `/healthz` dependency report.
//! - [`status`]: errors → gRPC statuses with google.rpc details.
//! - [`standalone`]: the worker in the same process, sharing the embedded vector store.

pub mod appender;
pub mod auth;
pub mod completions;
pub mod health;
pub mod hub;
pub mod ingest;
pub mod search;
pub mod server;
pub mod standalone;
pub mod status;
pub mod validate;

pub use server::{Gateway, RunningGateway};
