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

/// Whether a request is a gRPC call (the REST API shares the port).
pub fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

pub mod connections;
pub mod messages;
pub mod observe;
