//! The gRPC services besides ingest, and how errors become gRPC statuses.
//!
//! # Layout
//! - [`search`]: `sluice.v1.SearchService`: embeds the query and searches the tenant's chunks.
//! - [`schemas`]: `sluice.v1.SchemaService`: tenants' document schemas.
//! - [`health`]: gRPC health and the HTTP `/healthz` dependency report.
//! - [`status`]: errors → gRPC statuses with google.rpc details.

pub mod health;
pub mod schemas;
pub mod search;
pub mod status;
