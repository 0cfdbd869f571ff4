//! Errors → gRPC statuses, with google.rpc details where they help the client.

use std::time::Duration;

use sea_orm::DbErr;
use sluice_core::kafka::TransactionError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path inside the request, e.g. `document.avro_json.tags[2]`.
    pub field: String,
    pub description: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// INVALID_ARGUMENT with a google.rpc.BadRequest listing every violation; the message repeats
/// them for clients that do not read details (grpcurl shows both).
pub fn invalid_argument(violations: &[Violation]) -> Status {
    let message = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for v in violations {
        details.add_bad_request_violation(v.field.clone(), v.description.clone());
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// A status that tells the client to try again after `retry_after`.
pub fn with_retry(code: Code, message: impl Into<String>, retry_after: Duration) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

/// A transaction that did not commit: nothing of the request is in Kafka.
pub fn transaction_failed(error: &TransactionError) -> Status {
    match error {
        TransactionError::Aborted(reason) => with_retry(
            Code::Aborted,
            format!("not accepted: the Kafka transaction was aborted ({reason}); nothing was written, retry"),
            Duration::from_millis(200),
        ),
        TransactionError::Fatal(reason) => with_retry(
            Code::Unavailable,
            format!("not accepted: Kafka is unavailable ({reason}); nothing was written, retry"),
            Duration::from_secs(1),
        ),
    }
}

pub fn database(error: DbErr) -> Status {
    tracing::error!(%error, "database error");
    with_retry(
        Code::Unavailable,
        "database unavailable",
        Duration::from_secs(1),
    )
}
