//! The test harness: real parts, started for one test and stopped when it ends.
//!
//! # Layout
//! - [`broker`]: a nisshi Kafka broker process on a free loopback port (in-memory storage, or
//!   SQLite on disk for restart tests), and reading a topic back.
//! - [`stack`]: the [`Database`] (SQLite in a temporary directory, or a fresh PostgreSQL database)
//!   and [`Stack`]: broker + database + Sluice standalone (gateway and worker in this process,
//!   the real model, the embedded vector store), with gRPC clients that act for a tenant:
//!   through the development header ([`Stack::start`]) or over mTLS ([`Stack::start_tls`]).
//! - [`certificates`]: [`TestPki`], a CA, the gateway's certificate and client certificates.
//! - [`tools`]: where the installed tools are ([`grpcurl`], the broker, the model), free ports.
//! - [`helpers`]: building documents and requests, reading statuses, waiting for events.
//! - [`process`]: [`GatewayProcess`], Sluice standalone as its own process (kill -9, its own
//!   environment).
//! - [`cluster`]: [`Cluster`], the distributed shape as processes: gateway-only instances and
//!   `sluice-worker`s without a database, on a Qdrant server (`SLUICE_TEST_QDRANT_URL`).
//!
//! Everything it needs is installed by `deploy/dev/install` (the test command runs it first);
//! a missing piece fails the test with the command that installs it.

pub mod broker;
pub mod certificates;
pub mod cluster;
pub mod helpers;
pub mod process;
pub mod stack;
pub mod tools;

pub use broker::*;
pub use certificates::*;
pub use cluster::*;
pub use helpers::*;
pub use process::*;
pub use stack::*;
pub use tools::*;
