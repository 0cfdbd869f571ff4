//! Errors: the status code and message a call ended with, and the google.rpc details the
//! gateway sent with it.

use std::fmt;
use std::time::Duration;

pub use tonic::Code;
use tonic_types::{ErrorDetail, StatusExt};

use crate::types::Ingestion;

/// One bad field of a request (google.rpc.BadRequest), named by its path, e.g.
/// `documents[3].avro_json.tags[1]`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FieldViolation {
    /// The field's path in the request.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// One quota that was hit (google.rpc.QuotaFailure), e.g. `documents_per_second`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaViolation {
    /// The quota's name.
    pub subject: String,
    /// What was over it.
    pub description: String,
}

/// One failed precondition (google.rpc.PreconditionFailure), e.g. of type `COMPATIBILITY`
/// for an incompatible schema.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PreconditionViolation {
    /// Its type (google.rpc's `type`), e.g. `COMPATIBILITY`.
    pub kind: String,
    /// What failed it, relative to the type.
    pub subject: String,
    /// Why.
    pub description: String,
}

/// What [`Client::wait_for`](crate::Client::wait_for) knew when its timeout passed.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct WaitTimeout {
    /// The ingestions that had ended, in the order asked for.
    pub finished: Vec<Ingestion>,
    /// The ids of those that had not.
    pub pending: Vec<String>,
}

/// A call the gateway (or the transport, or the client itself) refused.
///
/// [`code`](Self::code) says what kind of refusal it is; the google.rpc details the gateway
/// sent come with it: [`field_violations`](Self::field_violations) (INVALID_ARGUMENT),
/// [`quota_violations`](Self::quota_violations) (RESOURCE_EXHAUSTED),
/// [`precondition_violations`](Self::precondition_violations) (FAILED_PRECONDITION) and
/// [`retry_delay`](Self::retry_delay) (google.rpc.RetryInfo: waiting helps).
///
/// A broken connection is `Unavailable`, as gRPC's other clients have it, and a passed
/// deadline `DeadlineExceeded`. Mistakes caught before anything is sent (fields with no JSON
/// form) are `InvalidArgument` with no field violations.
pub struct Error(Box<Inner>);

#[derive(Debug)]
struct Inner {
    code: Code,
    message: String,
    field_violations: Vec<FieldViolation>,
    quota_violations: Vec<QuotaViolation>,
    precondition_violations: Vec<PreconditionViolation>,
    retry_delay: Option<Duration>,
    ingestion_id: Option<String>,
    accepted: Vec<Ingestion>,
    wait_timeout: Option<WaitTimeout>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// An error with a code and a message and no details.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            code,
            message: message.into(),
            field_violations: Vec::new(),
            quota_violations: Vec::new(),
            precondition_violations: Vec::new(),
            retry_delay: None,
            ingestion_id: None,
            accepted: Vec::new(),
            wait_timeout: None,
            source: None,
        }))
    }

    /// The error for a status, with the google.rpc details in its `grpc-status-details-bin`.
    ///
    /// Tolerant: details that cannot be read are ignored (the code and message still tell the
    /// story). A status tonic made from a transport failure (a reset or refused connection, a
    /// body cut short) is `Unavailable`, and tonic's own timeout `DeadlineExceeded`.
    pub fn from_status(status: tonic::Status) -> Self {
        let code = effective_code(&status);
        let mut error = Self::new(code, status.message());
        let inner = &mut error.0;
        for detail in status.get_error_details_vec() {
            match detail {
                ErrorDetail::BadRequest(bad) => {
                    inner
                        .field_violations
                        .extend(bad.field_violations.into_iter().map(|v| FieldViolation {
                            field: v.field,
                            description: v.description,
                        }))
                }
                ErrorDetail::QuotaFailure(quota) => {
                    inner
                        .quota_violations
                        .extend(quota.violations.into_iter().map(|v| QuotaViolation {
                            subject: v.subject,
                            description: v.description,
                        }))
                }
                ErrorDetail::PreconditionFailure(failure) => {
                    inner
                        .precondition_violations
                        .extend(
                            failure
                                .violations
                                .into_iter()
                                .map(|v| PreconditionViolation {
                                    kind: v.r#type,
                                    subject: v.subject,
                                    description: v.description,
                                }),
                        )
                }
                ErrorDetail::RetryInfo(info) => inner.retry_delay = info.retry_delay,
                _ => {}
            }
        }
        if matches!(code, Code::DeadlineExceeded | Code::Unavailable) {
            inner.ingestion_id = accepted_ingestion(&inner.message);
        }
        inner.source = Some(Box::new(status));
        error
    }

    /// The status code.
    pub fn code(&self) -> Code {
        self.0.code
    }

    /// The message, as the gateway wrote it.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The bad fields of an INVALID_ARGUMENT, by their paths in the request.
    pub fn field_violations(&self) -> &[FieldViolation] {
        &self.0.field_violations
    }

    /// The quotas a RESOURCE_EXHAUSTED was over.
    pub fn quota_violations(&self) -> &[QuotaViolation] {
        &self.0.quota_violations
    }

    /// The failed preconditions of a FAILED_PRECONDITION (e.g. schema incompatibilities).
    pub fn precondition_violations(&self) -> &[PreconditionViolation] {
        &self.0.precondition_violations
    }

    /// How long to wait before trying again, when the gateway said waiting helps
    /// (google.rpc.RetryInfo).
    pub fn retry_delay(&self) -> Option<Duration> {
        self.0.retry_delay
    }

    /// The accepted ingestion a `wait` call names when it could not wait to the end (its
    /// deadline passed, or the gateway shut down): the document is in; keep following it.
    pub fn ingestion_id(&self) -> Option<&str> {
        self.0.ingestion_id.as_deref()
    }

    /// For [`ingest_many`](crate::Client::ingest_many): the ingestions of the batches
    /// accepted before the one that failed (nothing of that one was written).
    pub fn accepted(&self) -> &[Ingestion] {
        &self.0.accepted
    }

    /// For [`wait_for`](crate::Client::wait_for) (code `DeadlineExceeded`): what had finished
    /// and what had not when the timeout passed.
    pub fn wait_timeout(&self) -> Option<&WaitTimeout> {
        self.0.wait_timeout.as_ref()
    }

    pub(crate) fn with_accepted(mut self, accepted: Vec<Ingestion>) -> Self {
        self.0.accepted = accepted;
        self
    }

    pub(crate) fn with_wait_timeout(mut self, wait_timeout: WaitTimeout) -> Self {
        self.0.wait_timeout = Some(wait_timeout);
        self
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.0.source = Some(source.into());
        self
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(status)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", code_name(self.0.code), self.0.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Why a [`Client`](crate::Client) could not be made: its credentials, target or options.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{}", describe_read(.what, .path, .hint, .source))]
    Read {
        /// What the file is, e.g. "the client certificate".
        what: &'static str,
        /// Where it was looked for.
        path: std::path::PathBuf,
        /// What writes it, when that helps.
        hint: String,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The certificate directory is not one.
    #[error("{} is not a directory", .0.display())]
    NotADirectory(std::path::PathBuf),
    /// [`TlsCredentials::from_directory`](crate::TlsCredentials::from_directory) was given no
    /// tenant, and the directory does not hold exactly one client certificate and key.
    #[error(
        "{} holds {} client certificates ({}); name the tenant",
        .directory.display(),
        .found.len(),
        listed(.found)
    )]
    AmbiguousTenant {
        /// The directory.
        directory: std::path::PathBuf,
        /// The tenants whose pairs it holds.
        found: Vec<String>,
    },
    /// Neither TLS credentials nor a development tenant were given.
    #[error(
        "give TLS credentials (the gateway's port is mTLS), or dev_tenant for a plaintext \
         development gateway"
    )]
    NoCredentials,
    /// The target is not a gateway address.
    #[error("target {target:?}: {reason}")]
    Target {
        /// The target given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An option is out of range.
    #[error("{0}")]
    Option(String),
    /// The TLS configuration could not be used (e.g. a certificate or key that is not PEM).
    #[error("TLS configuration: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// Made outside a Tokio runtime (the connection lives on one).
    #[error("a Client must be made inside a Tokio runtime")]
    NoRuntime,
}

fn listed(found: &[String]) -> String {
    if found.is_empty() {
        "none".to_owned()
    } else {
        found.join(", ")
    }
}

fn describe_read(
    what: &str,
    path: &std::path::Path,
    hint: &str,
    source: &std::io::Error,
) -> String {
    if source.kind() == std::io::ErrorKind::NotFound {
        format!("{what} {} does not exist{hint}", path.display())
    } else {
        format!("{what} {} cannot be read: {source}", path.display())
    }
}

/// The code as the gRPC spec writes it, e.g. `INVALID_ARGUMENT`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The code a status stands for. A status the server sent carries no source; one tonic made
/// from a failure of its own does, and a failed connection is UNAVAILABLE whatever tonic
/// called it (it calls a reset connection UNKNOWN or INTERNAL, one closed under a waiting
/// call CANCELLED), as gRPC's other clients have it, so that it is retried.
fn effective_code(status: &tonic::Status) -> Code {
    let mut source = std::error::Error::source(status);
    if source.is_none() {
        return status.code();
    }
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return Code::DeadlineExceeded;
        }
        source = error.source();
    }
    match status.code() {
        Code::Unknown | Code::Internal | Code::Cancelled => Code::Unavailable,
        code => code,
    }
}

/// The ingestion a `wait` call's refusal names: "ingestion ID is accepted (durably in
/// Kafka) but not finished yet; ..." (IngestRequest.wait).
fn accepted_ingestion(message: &str) -> Option<String> {
    const LEAD: &str = "ingestion ";
    const TAIL: &str = " is accepted";
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut from = 0;
    while let Some(at) = message[from..].find(LEAD) {
        let start = from + at;
        from = start + 1;
        if word(message[..start].chars().next_back()) {
            continue;
        }
        let rest = &message[start + LEAD.len()..];
        let id = &rest[..rest.find(char::is_whitespace).unwrap_or(rest.len())];
        let Some(after) = rest[id.len()..].strip_prefix(TAIL) else {
            continue;
        };
        if !id.is_empty() && !word(after.chars().next()) {
            return Some(id.to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn bad_request_field_paths() {
        let mut details = ErrorDetails::new();
        details
            .add_bad_request_violation(
                "documents[3].avro_json.tags[1]",
                "expected string, found number",
            )
            .add_bad_request_violation("documents[4].document_id", "required");
        let message = "documents[3].avro_json.tags[1]: expected string, found number";
        let error = Error::from_status(tonic::Status::with_error_details(
            Code::InvalidArgument,
            message,
            details,
        ));
        assert_eq!(error.code(), Code::InvalidArgument);
        let fields: Vec<_> = error
            .field_violations()
            .iter()
            .map(|v| (v.field.as_str(), v.description.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                (
                    "documents[3].avro_json.tags[1]",
                    "expected string, found number"
                ),
                ("documents[4].document_id", "required"),
            ]
        );
        assert_eq!(error.retry_delay(), None);
        assert_eq!(error.to_string(), format!("INVALID_ARGUMENT: {message}"));
    }

    #[test]
    fn quota_failure_with_retry_info() {
        let mut details = ErrorDetails::new();
        details
            .add_quota_failure_violation("documents_per_second", "over")
            .set_retry_info(Some(Duration::from_millis(250)));
        let error = Error::from_status(tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "over documents_per_second",
            details,
        ));
        assert_eq!(error.code(), Code::ResourceExhausted);
        assert_eq!(error.quota_violations().len(), 1);
        assert_eq!(error.quota_violations()[0].subject, "documents_per_second");
        assert_eq!(error.quota_violations()[0].description, "over");
        assert_eq!(error.retry_delay(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn precondition_failure() {
        let mut details = ErrorDetails::new();
        details.add_precondition_failure_violation("COMPATIBILITY", "article", "field removed");
        let error = Error::from_status(tonic::Status::with_error_details(
            Code::FailedPrecondition,
            "incompatible",
            details,
        ));
        let violation = &error.precondition_violations()[0];
        assert_eq!(
            (
                violation.kind.as_str(),
                violation.subject.as_str(),
                violation.description.as_str()
            ),
            ("COMPATIBILITY", "article", "field removed")
        );
    }

    #[test]
    fn unreadable_details_are_ignored() {
        let status =
            tonic::Status::with_details(Code::Unavailable, "down", vec![0xff, 0xff, 0xff].into());
        let error = Error::from_status(status);
        assert_eq!(error.code(), Code::Unavailable);
        assert_eq!(error.retry_delay(), None);
        assert_eq!(error.message(), "down");
        assert!(std::error::Error::source(&error).is_some_and(|s| s.is::<tonic::Status>()));
    }

    #[test]
    fn a_waiting_ingests_deadline_names_the_ingestion() {
        let message = "ingestion 01a2-ff is accepted (durably in Kafka) but not finished yet; \
                       follow it with WatchIngestions or GetIngestion";
        let error = Error::from_status(tonic::Status::deadline_exceeded(message));
        assert_eq!(error.code(), Code::DeadlineExceeded);
        assert_eq!(error.ingestion_id(), Some("01a2-ff"));
        let shutdown = "gateway is shutting down; ingestion 7c is accepted (durably in Kafka), \
                        follow it on another instance";
        assert_eq!(
            Error::from_status(tonic::Status::unavailable(shutdown)).ingestion_id(),
            Some("7c")
        );
        for other in [
            "Deadline Exceeded",
            "reingestion 5 is accepted",
            "ingestion 5 is acceptedly",
            "ingestion  is accepted",
        ] {
            let error = Error::from_status(tonic::Status::deadline_exceeded(other));
            assert_eq!(error.ingestion_id(), None, "{other}");
        }
        let other_code = Error::from_status(tonic::Status::invalid_argument(message));
        assert_eq!(other_code.ingestion_id(), None);
    }

    #[test]
    fn every_code_keeps_its_name() {
        assert_eq!(Error::new(Code::DataLoss, "?").to_string(), "DATA_LOSS: ?");
        let error = Error::from_status(tonic::Status::out_of_range("old cursor"));
        assert_eq!(error.code(), Code::OutOfRange);
    }

    #[test]
    fn transport_failures_are_unavailable_and_tonics_timeout_a_deadline() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let reset = tonic::Status::from_error(Box::new(io));
        assert_eq!(Error::from_status(reset).code(), Code::Unavailable);
        let timeout = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(Error::from_status(timeout).code(), Code::DeadlineExceeded);
        // What a server sends is taken as it is.
        assert_eq!(
            Error::from_status(tonic::Status::internal("bug")).code(),
            Code::Internal
        );
        assert_eq!(
            Error::from_status(tonic::Status::cancelled("by the server")).code(),
            Code::Cancelled
        );
    }
}
