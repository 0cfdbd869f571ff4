//! Errors → gRPC statuses, with google.rpc details where they help the client.

use sluice_core::telemetry::Chain;
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

/// Bytes of violations one error reports, at most (fields and descriptions together). The
/// message and the google.rpc.BadRequest both carry them, the details base64-encoded, so every
/// error fits in 8 KB of trailers: clients commonly refuse more (grpcio's default is 8 KB of
/// metadata), and then they could not read the error at all.
pub const MAX_REPORT_BYTES: usize = 2048;
/// A field path or description longer than this is cut (they can echo the client's input).
const MAX_PART_BYTES: usize = 256;

/// INVALID_ARGUMENT with a google.rpc.BadRequest listing the violations; the message repeats
/// them for clients that do not read details (grpcurl shows both). As many as fit in
/// [`MAX_REPORT_BYTES`] are listed, then "and N more".
pub fn invalid_argument(violations: &[Violation]) -> Status {
    let mut shown = Vec::new();
    let mut used = 0;
    for v in violations {
        let (field, description) = (cut(&v.field), cut(&v.description));
        used += field.len() + description.len();
        if used > MAX_REPORT_BYTES && !shown.is_empty() {
            break;
        }
        shown.push((field, description));
    }
    let omitted = violations.len() - shown.len();
    if omitted > 0 {
        shown.push((String::new(), format!("and {omitted} more violations")));
    }
    let message = shown
        .iter()
        .map(|(field, description)| format!("{field}: {description}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for (field, description) in shown {
        details.add_bad_request_violation(field, description);
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// `text`, cut to [`MAX_PART_BYTES`] at a character boundary.
fn cut(text: &str) -> String {
    if text.len() <= MAX_PART_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_PART_BYTES - "…".len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
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
        // What Kafka refused will be refused again: no retry. Records the gateway accepts fit
        // the topics it creates; this is a topic configured for smaller records.
        TransactionError::Refused(reason) => Status::failed_precondition(format!(
            "not accepted: Kafka refused the document's record ({reason}); nothing was \
             written; the documents topic's max.message.bytes is smaller than the gateway's \
             document limits"
        )),
        TransactionError::Fatal(reason) => with_retry(
            Code::Unavailable,
            format!("not accepted: Kafka is unavailable ({reason}); nothing was written, retry"),
            Duration::from_secs(1),
        ),
    }
}

/// Another gateway holds the request's idempotency key and has not recorded its ingestion in
/// time: a retry finds it (or, if that gateway died, writes once its claim has lapsed).
pub fn written_elsewhere() -> Status {
    with_retry(
        Code::Aborted,
        "a request with this idempotency key is being written through another gateway; retry \
         to get its ingestion",
        Duration::from_secs(1),
    )
}

pub fn database(error: DbErr) -> Status {
    tracing::error!(error = %Chain(&error), "database error");
    with_retry(
        Code::Unavailable,
        "database unavailable",
        Duration::from_secs(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a status takes in trailers: grpc-message (percent-encoded) and the details
    /// (base64).
    fn trailer_bytes(status: &Status) -> usize {
        let mut headers = http::HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum()
    }

    #[test]
    fn any_number_of_violations_fits_in_8_kb_of_trailers() {
        for count in [1, 20, 1_000, 50_000] {
            let violations: Vec<Violation> = (0..count)
                .map(|i| {
                    Violation::new(
                        format!("document.avro_json.tags[{i}]"),
                        "expected string, found number ".repeat(20),
                    )
                })
                .collect();
            let status = invalid_argument(&violations);
            let bytes = trailer_bytes(&status);
            assert!(
                bytes <= 8192,
                "{count} violations: {bytes} bytes of trailers"
            );
            let details = status.get_details_bad_request().unwrap();
            let last = details.field_violations.last().unwrap();
            if count > 1 {
                assert!(
                    last.description.starts_with("and ")
                        && last.description.ends_with(" more violations"),
                    "{last:?}"
                );
            }
            assert_eq!(
                details.field_violations[0].field,
                "document.avro_json.tags[0]"
            );
        }
    }
}
