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

use futures::future::BoxFuture;
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
    fn caller(&self, request: &http::Request<Body>) -> Result<Caller, tonic::Status> {
        // The same view of the call the services get: metadata and the connection's
        // certificates (extensions).
        let mut probe = http::Request::new(());
        *probe.headers_mut() = request.headers().clone();
        *probe.extensions_mut() = request.extensions().clone();
        self.auth.caller(&tonic::Request::from_http(probe))
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
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let Some(method) = request.uri().path().strip_prefix("/sluice.v1.") else {
            return Box::pin(self.inner.call(request));
        };
        let caller = match self.admission.caller(&request) {
            Ok(caller) => caller,
            Err(status) => return Box::pin(futures::future::ready(Ok(status.into_http()))),
        };
        let counted = !INGESTIONS.contains(&method);
        let method = method.to_owned();
        // The service that was made ready serves this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let quotas = self.admission.quotas.clone();
        Box::pin(async move {
            if counted {
                if let Err(status) = quotas.request(&caller, &method).await {
                    return Ok(status.into_http());
                }
            }
            // The service reads it instead of reading the certificate again.
            request.extensions_mut().insert(AdmittedCaller(caller));
            inner.call(request).await
        })
    }
}
