//! The `sluice.v1` API as generated from `proto/sluice/v1/` (messages and clients), for what
//! the typed [`Client`](crate::Client) does not cover. Never edited by hand: `build.rs`
//! generates it on every build.

#![allow(
    missing_docs,
    clippy::doc_lazy_continuation,
    clippy::large_enum_variant
)]

tonic::include_proto!("sluice.v1");
