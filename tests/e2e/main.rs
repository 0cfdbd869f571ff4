//! The end-to-end tests: one binary (one link), a module per surface, each against the real
//! broker, model, databases and vector store that the harness (`sluice_tests`) starts.
//!
//! Tests marked `#[ignore]` measure time and must have the machine to themselves:
//! `deploy/dev/test` runs them after the rest, alone (`cargo test --workspace --test e2e -- --ignored --test-threads=1`).

mod event_log;
mod exactly_once;
mod fairness;
mod faults;
mod hostile;
mod isolation;
mod metrics;
mod operations;
mod outage;
mod pipeline;
mod qdrant_server;
mod quotas;
mod rebalance;
mod scale_out;
mod schemas;
mod tenants;
mod traces;
