//! Who is calling, and how much they may do.
//!
//! # Layout
//! - [`tls`]: the gRPC port's TLS, client certificates required, reloaded without a restart.
//! - [`pki`] (the `sluice-pki` crate): development certificates (rcgen) and reading
//!   certificates' identities.
//! - [`auth`]: which tenant a request acts for (its client certificate), and whether it may.
//! - [`admission`]: both decided on a call's headers, before its body is read, with the
//!   tenant's rate of calls.
//! - [`directory`]: the gateway's copy of the tenant registry, refreshed every second or so.
//! - [`quota`]: per-tenant rates and limits, so one tenant cannot slow another.

pub mod admission;
pub mod auth;
pub mod directory;
pub mod quota;
pub mod tls;

/// Certificates live in a crate of their own (`sluice-pki`), shared with `sluice-admin`.
pub use sluice_pki as pki;
