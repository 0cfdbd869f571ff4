//! Which tenant a request acts for, and whether it may.
//!
//! Normally the tenant comes from the client certificate the TLS handshake verified
//! ([`crate::tenancy::tls`]): a URI SAN `spiffe://<trust-domain>/tenant/<id>` names it, or else a binding
//! in the registry of the certificate's fingerprint, subject or a SAN. The certificate must not
//! be revoked and the tenant must be registered and active. Each refusal says which of these it
//! was, to the client and in the server's log.
//!
//! The development mode (`gateway.dev_tenant_header`) serves plaintext and takes the tenant from
//! the `x-sluice-tenant` header, unauthenticated; the server announces it loudly at start.

use sluice_core::tenant::TenantId;
use sluice_core::tenants::{Quotas, TenantState};
use tonic::{Request, Status};

use crate::tenancy::directory::TenantDirectory;
use crate::tenancy::pki::CertificateIdentity;

/// The request header naming the tenant in development mode.
pub const TENANT_HEADER: &str = "x-sluice-tenant";
/// The request header naming a worker in development mode.
pub const WORKER_HEADER: &str = "x-sluice-worker";

/// Who is calling: the tenant, and the quotas in force for it right now.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    pub quotas: Quotas,
}

#[derive(Clone)]
enum Mode {
    DevHeader,
    ClientCertificate { trust_domain: String },
}

#[derive(Clone)]
pub struct Authenticator {
    mode: Mode,
    directory: TenantDirectory,
}

impl Authenticator {
    /// Tenants from verified client certificates.
    pub fn client_certificate(directory: TenantDirectory, trust_domain: &str) -> Self {
        Self {
            mode: Mode::ClientCertificate {
                trust_domain: trust_domain.to_owned(),
            },
            directory,
        }
    }

    /// DEVELOPMENT ONLY: tenants from the `x-sluice-tenant` header.
    pub fn dev_header(directory: TenantDirectory) -> Self {
        Self {
            mode: Mode::DevHeader,
            directory,
        }
    }

    /// The caller, or UNAUTHENTICATED / PERMISSION_DENIED saying why not. A call the
    /// [admission](crate::tenancy::admission) layer let in carries its answer already.
    pub fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        if let Some(Admitted(caller)) = request.extensions().get::<Admitted>() {
            return Ok(caller.clone());
        }
        self.check(request)
    }

    /// Decides who is calling from the request's metadata and certificates.
    fn check<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        // Fail closed: an old copy could miss a revocation or a suspension.
        let snapshot = self.directory.current().map_err(|stale| {
            refuse(crate::services::status::with_retry(
                tonic::Code::Unavailable,
                stale.to_string(),
                std::time::Duration::from_secs(1),
            ))
        })?;
        let tenant = match &self.mode {
            Mode::DevHeader => {
                let tenant = header_tenant(request)?;
                // Unregistered tenants are welcome in development, with the default quotas.
                if !snapshot.tenants.contains_key(&tenant) {
                    return Ok(Caller {
                        tenant,
                        quotas: Quotas::default(),
                    });
                }
                tenant
            }
            Mode::ClientCertificate { trust_domain } => {
                let certificates = request.peer_certs().ok_or_else(|| {
                    refuse(Status::unauthenticated(
                        "no client certificate was presented",
                    ))
                })?;
                let leaf = certificates.first().ok_or_else(|| {
                    refuse(Status::unauthenticated(
                        "no client certificate was presented",
                    ))
                })?;
                let identity = CertificateIdentity::from_der(leaf.as_ref()).map_err(|e| {
                    refuse(Status::unauthenticated(format!(
                        "the client certificate cannot be read: {e:#}"
                    )))
                })?;
                if identity
                    .revocations()
                    .iter()
                    .any(|r| snapshot.is_revoked(r))
                {
                    return Err(refuse(Status::unauthenticated(format!(
                        "the client certificate (serial {}) has been revoked",
                        identity.serial
                    ))));
                }
                tenant_of(&identity, trust_domain, &snapshot)?
            }
        };
        let Some(registered) = snapshot.tenants.get(&tenant) else {
            return Err(refuse(Status::permission_denied(format!(
                "tenant {tenant} is not registered"
            ))));
        };
        if registered.state == TenantState::Suspended {
            return Err(refuse(Status::permission_denied(format!(
                "tenant {tenant} is suspended"
            ))));
        }
        Ok(Caller {
            tenant,
            quotas: registered.quotas,
        })
    }

    /// The worker calling, when the request's verified client certificate names one
    /// (`spiffe://<trust-domain>/worker/<name>`, not revoked); in development mode, the
    /// `x-sluice-worker` header. Workers act for no tenant: the registry API lets them read
    /// schemas by id (to decode any tenant's records) and nothing else.
    pub fn worker<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        match &self.mode {
            Mode::DevHeader => Ok(request
                .metadata()
                .get(WORKER_HEADER)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)),
            Mode::ClientCertificate { trust_domain } => {
                let Some(leaf) = request.peer_certs().and_then(|c| c.first().cloned()) else {
                    return Ok(None);
                };
                let Ok(identity) = CertificateIdentity::from_der(leaf.as_ref()) else {
                    return Ok(None);
                };
                let Some(name) = identity.spiffe_worker(trust_domain) else {
                    return Ok(None);
                };
                let snapshot = self.directory.current().map_err(|stale| {
                    refuse(crate::services::status::with_retry(
                        tonic::Code::Unavailable,
                        stale.to_string(),
                        std::time::Duration::from_secs(1),
                    ))
                })?;
                if identity
                    .revocations()
                    .iter()
                    .any(|r| snapshot.is_revoked(r))
                {
                    return Err(refuse(Status::unauthenticated(format!(
                        "the worker certificate (serial {}) has been revoked",
                        identity.serial
                    ))));
                }
                Ok(Some(name))
            }
        }
    }

    /// What a call that lasts (a watch stream, a waiting Ingest) needs to ask again later
    /// whether its caller may still call.
    pub fn credentials<T>(&self, request: &Request<T>) -> Credentials {
        // Without the admission's answer, so that each check decides afresh.
        let mut extensions = request.extensions().clone();
        extensions.remove::<Admitted>();
        Credentials {
            auth: self.clone(),
            request: Request::from_parts(request.metadata().clone(), extensions, ()),
        }
    }

    /// The directory this checks against (for the health report).
    pub fn directory(&self) -> &TenantDirectory {
        &self.directory
    }

    /// The caller's tenant (for calls that need nothing else).
    pub fn tenant<T>(&self, request: &Request<T>) -> Result<TenantId, Status> {
        self.caller(request).map(|caller| caller.tenant)
    }
}

/// The caller the admission layer found, carried in the request's extensions (only server
/// code can put it there).
#[derive(Debug, Clone)]
pub struct Admitted(pub Caller);

/// A call's metadata and certificates, kept to check it again: a revocation, a suspension or
/// an unreadable registry ends open streams and waiting calls too, not only new ones.
pub struct Credentials {
    auth: Authenticator,
    request: Request<()>,
}

impl Credentials {
    /// UNAUTHENTICATED, PERMISSION_DENIED or UNAVAILABLE once the caller may no longer call.
    pub fn check(&self) -> Result<(), Status> {
        self.auth.caller(&self.request).map(|_| ())
    }
}

/// The tenant a verified certificate belongs to: its SPIFFE id in our trust domain, else the
/// first of its fingerprint, subject and SANs that the registry binds to a tenant.
fn tenant_of(
    identity: &CertificateIdentity,
    trust_domain: &str,
    snapshot: &sluice_core::tenants::TenantSnapshot,
) -> Result<TenantId, Status> {
    if let Some(id) = identity.spiffe_tenant(trust_domain) {
        return TenantId::parse(&id).map_err(|e| {
            refuse(Status::permission_denied(format!(
                "the client certificate's SPIFFE id names no valid tenant: {e}"
            )))
        });
    }
    identity
        .bindings()
        .iter()
        .find_map(|binding| snapshot.tenant_for(binding).cloned())
        .ok_or_else(|| {
            refuse(Status::permission_denied(format!(
                "the client certificate (subject \"{}\", fingerprint {}) is bound to no tenant",
                identity.subject, identity.fingerprint
            )))
        })
}

fn header_tenant<T>(request: &Request<T>) -> Result<TenantId, Status> {
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

/// Logs a refusal (operators need to know why a client is turned away) and passes it on.
fn refuse(status: Status) -> Status {
    tracing::warn!(code = ?status.code(), reason = status.message(), "request refused");
    status
}
