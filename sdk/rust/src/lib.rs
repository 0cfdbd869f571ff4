//! The Rust client for Sluice (in progress): the API's stubs, typed values, errors, the
//! retry policy, TLS credentials and Avro JSON.

#![warn(missing_docs)]
#![allow(dead_code)]

mod avro;
mod batch;
mod error;
pub mod proto;
mod retry;
mod tls;
mod types;

pub use avro::to_avro_json;

pub use error::{
    code_name, Code, ConfigError, Error, FieldViolation, PreconditionViolation, QuotaViolation,
    WaitTimeout,
};
pub use retry::RetryPolicy;
pub use tls::TlsCredentials;
pub use types::{
    Compatibility, Document, Hit, Ingestion, IngestionEvent, IngestionState, Operation, Schema,
};
