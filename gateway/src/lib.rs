//! The Sluice gateway: the gRPC front door.
//!
//! # Layout
//! - [`server`]: assembles everything below and runs it, with graceful shutdown.
//! - [`tls`]: the gRPC port's TLS, client certificates required, reloaded without a restart.
//! - [`auth`]: which tenant a request acts for (its client certificate), and whether it may.
//! - [`directory`]: the gateway's copy of the tenant registry, refreshed every second or so.
//! - [`quota`]: per-tenant rates and limits, so one tenant cannot slow another.
//! - [`validate`]: requests → document records, or `INVALID_ARGUMENT` naming each bad field.
//! - [`appender`]: writes records to Kafka in transactions; concurrent requests share one
//!   (group commit), and a caller hears OK only after its transaction committed.
//! - [`completions`]: consumes workers' completion events into the database projection and
//!   the [`hub`], which fans ingestion events out to watchers and waiting calls.
//! - [`recorder`]: records accepted ingestions in the database, many requests per transaction.
//! - [`group_commit`]: what the appender and the recorder share: requests that arrive
//!   together share one commit, and each hears its own answer.
//! - [`idempotency`]: recognises repeated requests so they write nothing new.
//! - [`periodic`]: the loop behind every task that runs every so often.
//! - [`retention`]: prunes ingestion events older than resumable watch streams need.
//! - [`ingest`], [`search`] and [`schemas`]: the gRPC services.
//! - [`schema_registry_api`]: the built-in schema registry's Confluent REST API, scoped per
//!   tenant.
//! - [`health`]: gRPC health and the HTTP `/healthz` dependency report.
//! - [`status`]: errors → gRPC statuses with google.rpc details.
//! - [`standalone`]: the worker in the same process, sharing the embedded vector store.
//! - [`pki`]: development certificates (rcgen) and reading certificates' identities.
//! - [`admin`]: the `sluice-admin` command line: tenants, quotas, certificates, audit,
//!   dead letters.
//! - [`redrive`]: sends dead letters back for another try, exactly once.

pub mod admin;
pub mod appender;
pub mod auth;
pub mod completions;
pub mod directory;
pub mod group_commit;
pub mod health;
pub mod hub;
pub mod idempotency;
pub mod ingest;
pub mod periodic;
pub mod pki;
pub mod quota;
pub mod recorder;
pub mod redrive;
pub mod retention;
pub mod schema_registry_api;
pub mod schemas;
pub mod search;
pub mod server;
pub mod standalone;
pub mod status;
pub mod tls;
pub mod validate;

pub use server::{Gateway, RunningGateway};
