//! Which tenant a request acts for.
//!
//! Until mTLS lands, the only mode is the development one: the tenant is whatever the
//! `x-sluice-tenant` header says, with no authentication. The server refuses to start without
//! it being switched on explicitly, and says so loudly when it is.

use sluice_core::tenant::TenantId;
use tonic::{Request, Status};

/// The request header naming the tenant in development mode.
pub const TENANT_HEADER: &str = "x-sluice-tenant";

#[derive(Debug, Clone)]
pub struct Authenticator {
    dev_tenant_header: bool,
}

impl Authenticator {
    pub fn new(dev_tenant_header: bool) -> Self {
        Self { dev_tenant_header }
    }

    /// The caller's tenant, or UNAUTHENTICATED saying what is missing.
    pub fn tenant<T>(&self, request: &Request<T>) -> Result<TenantId, Status> {
        if !self.dev_tenant_header {
            return Err(Status::unauthenticated(
                "no authentication is configured on this gateway",
            ));
        }
        let value = request.metadata().get(TENANT_HEADER).ok_or_else(|| {
            Status::unauthenticated(format!(
                "missing the {TENANT_HEADER} header (development mode)"
            ))
        })?;
        let value = value
            .to_str()
            .map_err(|_| Status::unauthenticated(format!("{TENANT_HEADER} is not ASCII")))?;
        TenantId::parse(value).map_err(|e| Status::unauthenticated(e.to_string()))
    }
}
