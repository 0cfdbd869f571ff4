//! Limits on what a client can make the gateway hold, before any tenant code runs, and the
//! count of every call.
//!
//! # Layout
//! - [`connections`]: at most so many open connections; each one holds a permit until it
//!   closes.
//! - [`messages`]: each method's largest request message, checked on the message's 5-byte
//!   length prefix before its body is read.
//! - [`observe`]: every call counted and timed by method and status code (Prometheus).
//!
//! The rest are tonic's and hyper's settings, applied in [`crate::server`]: HTTP/2 streams per
//! connection, keepalive pings, TCP keepalive, the HTTP/1.1 header read timeout; the TLS
//! handshake timeout is in [`crate::tenancy::tls`]. `SECURITY.md` lists every limit.

pub mod connections;
pub mod messages;
pub mod observe;
