//! Admission: who is calling, and whether they may call now, decided on a gRPC request's
//! headers before its body is read. A refused caller costs the gateway its headers, however
//! large the body it announced; a tenant over its `requests_per_second` is refused
//! RESOURCE_EXHAUSTED (with how long to wait) before the call does any work.
//!
//! Ingest, IngestBatch and DeleteDocument count documents and bytes instead ([`QuotaGate::admit`], in the
//! service, once the documents are known). Health and reflection are not tenants' calls; the
//! REST schema registry API checks the same two things in its own extractor.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use tonic::body::Body;
use tower::{Layer, Service};

use crate::tenancy::auth::{Admitted as AdmittedCaller, Authenticator, Caller};
use crate::tenancy::quota::QuotaGate;

/// Methods that count documents, not calls.
const INGESTIONS: [&str; 3] = [
    "IngestService/Ingest",
    "IngestService/IngestBatch",
    "IngestService/DeleteDocument",
];

#[derive(Clone)]
pub struct Admission {
    auth: Authenticator,
    quotas: Arc<QuotaGate>,
}

impl Admission {
    pub fn new(auth: Authenticator, quotas: Arc<QuotaGate>) -> Self {
        Self { auth, quotas }
    }

    /// The caller of a call to `method` (`IngestService/GetIngestion`), or the refusal.
    fn check(&self, method: &str, request: &http::Request<Body>) -> Result<Caller, tonic::Status> {
        // The same view of the call the services get: metadata and the connection's
        // certificates (extensions).
        let mut probe = http::Request::new(());
        *probe.headers_mut() = request.headers().clone();
        *probe.extensions_mut() = request.extensions().clone();
        let caller = self.auth.caller(&tonic::Request::from_http(probe))?;
        if !INGESTIONS.contains(&method) {
            self.quotas.request(&caller, method)?;
        }
        Ok(caller)
    }
}

impl<S> Layer<S> for Admission {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Admitted<S> {
        Admitted {
            inner,
            admission: self.clone(),
        }
    }
}

/// The service with [`Admission`] in front.
#[derive(Clone)]
pub struct Admitted<S> {
    inner: S,
    admission: Admission,
}

impl<S> Service<http::Request<Body>> for Admitted<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<http::Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some(method) = request.uri().path().strip_prefix("/sluice.v1.") else {
            return Either::Right(self.inner.call(request));
        };
        match self.admission.check(method, &request) {
            Ok(caller) => {
                // The service reads it instead of reading the certificate again.
                let mut request = request;
                request.extensions_mut().insert(AdmittedCaller(caller));
                Either::Right(self.inner.call(request))
            }
            Err(status) => Either::Left(futures::future::ready(Ok(status.into_http()))),
        }
    }
}
