//! Every gRPC call counted and timed, by method and status code, as it leaves the gateway:
//! `sluice_grpc_server_requests_total` and `sluice_grpc_server_duration_seconds` (the
//! OpenTelemetry RPC conventions' `rpc.server.duration`, in seconds), and refusals by reason
//! (`sluice_gateway_refusals_total`).
//!
//! The outermost layer, so that it sees what admission and the message limits refuse too. The
//! code comes from the response headers (a trailers-only error) or from the trailers at the
//! end of the body; a body dropped before its end (the client went away) counts as CANCELLED.
//! A stream's duration is its whole life.
//!
//! Method labels are the methods the gateway serves (read from the services' descriptors);
//! any other path is `unknown`, so that a client cannot make new series by calling made-up
//! methods.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prost::Message;
use tonic::body::Body;
use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument;

#[derive(Clone)]
pub struct RpcMetrics {
    /// `/package.Service/Method` of every method served.
    methods: Arc<HashSet<String>>,
}

impl RpcMetrics {
    /// The methods in these encoded `FileDescriptorSet`s (what reflection serves).
    pub fn new(descriptor_sets: &[&[u8]]) -> Self {
        let mut methods = HashSet::new();
        for encoded in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*encoded) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = service.name.unwrap_or_default();
                    for method in service.method {
                        methods.insert(format!(
                            "/{package}.{service_name}/{}",
                            method.name.unwrap_or_default()
                        ));
                    }
                }
            }
        }
        Self {
            methods: Arc::new(methods),
        }
    }

    fn label(&self, path: &str) -> String {
        if self.methods.contains(path) {
            path.trim_start_matches('/').to_owned()
        } else if path.starts_with("/grpc.reflection.") {
            "reflection".to_owned()
        } else {
            "unknown".to_owned()
        }
    }
}

impl<S> Layer<S> for RpcMetrics {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            metrics: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    metrics: RpcMetrics,
}

impl<S> Service<http::Request<Body>> for Observed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let is_grpc = super::is_grpc(&request);
        let call = is_grpc.then(|| {
            let method = self.metrics.label(request.uri().path());
            // The call's span, a child of the client's trace when it sent `traceparent`
            // (OpenTelemetry's RPC conventions: named `package.Service/Method`).
            let (service, name) = method.split_once('/').unwrap_or((&method, ""));
            let span = tracing::info_span!(
                "rpc",
                otel.name = %method,
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = %service,
                rpc.method = %name,
                rpc.grpc.status_code = tracing::field::Empty,
            );
            sluice_core::telemetry::extract(&span, |key| {
                request.headers().get(key)?.to_str().ok().map(str::to_owned)
            });
            Call {
                method,
                started: Instant::now(),
                span,
            }
        });
        let span = call
            .as_ref()
            .map_or_else(tracing::Span::none, |call| call.span.clone());
        let response = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let response = response.await?;
            let Some(call) = call else {
                return Ok(response);
            };
            if let Some(code) = grpc_status(response.headers()) {
                // Trailers-only: the call ended with its headers.
                call.end(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(Watched {
                    inner: body,
                    call: Some(call),
                })
            }))
        })
    }
}

/// A call on its way: what it will be recorded as, and its span (which ends with it).
struct Call {
    method: String,
    started: Instant,
    span: tracing::Span,
}

impl Call {
    fn end(self, code: Code) {
        let name = code_name(code);
        self.span.record("rpc.grpc.status_code", code as i32);
        let elapsed = self.started.elapsed().as_secs_f64();
        metrics::counter!("sluice_grpc_server_requests_total", "method" => self.method.clone(), "code" => name)
            .increment(1);
        metrics::histogram!("sluice_grpc_server_duration_seconds", "method" => self.method, "code" => name)
            .record(elapsed);
        if let Some(reason) = refusal(code) {
            metrics::counter!("sluice_gateway_refusals_total", "reason" => reason).increment(1);
        }
    }
}

/// The response body, watched for the trailers that carry the status.
struct Watched {
    inner: Body,
    call: Option<Call>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    if let Some(call) = self.call.take() {
                        call.end(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.call.take() {
                    call.end(Code::Internal);
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    call.end(Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // Dropped before its trailers: the client cancelled or went away.
        if let Some(call) = self.call.take() {
            call.end(Code::Cancelled);
        }
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// Why a call was refused, for `sluice_gateway_refusals_total`; `None` for calls that were
/// not refused (OK, NOT_FOUND, CANCELLED by the client).
fn refusal(code: Code) -> Option<&'static str> {
    match code {
        Code::ResourceExhausted => Some("quota"),
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => Some("invalid"),
        Code::Unauthenticated | Code::PermissionDenied => Some("identity"),
        Code::Unavailable | Code::Aborted => Some("unavailable"),
        Code::DeadlineExceeded => Some("deadline"),
        Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented => Some("internal"),
        Code::Ok | Code::NotFound | Code::AlreadyExists | Code::Cancelled => None,
    }
}

/// gRPC's canonical names (`OK`, `INVALID_ARGUMENT`), as Prometheus labels usually carry.
fn code_name(code: Code) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_the_descriptors_and_others_are_unknown() {
        let metrics = RpcMetrics::new(&[sluice_core::proto::FILE_DESCRIPTOR_SET]);
        assert_eq!(
            metrics.label("/sluice.v1.IngestService/Ingest"),
            "sluice.v1.IngestService/Ingest"
        );
        assert_eq!(metrics.label("/sluice.v1.IngestService/Nope"), "unknown");
        assert_eq!(metrics.label("/anything/at-all"), "unknown");
    }
}
