//! Schema registries: where tenants' document schemas live, and how Sluice reads them.
//!
//! # Layout
//! - [`SchemaRegistry`]: what the gateway and the worker need from a registry, whichever it is.
//! - [`builtin`]: the built-in registry (the embedded default), stored through sea-orm. It keeps
//!   the Confluent Schema Registry's model (global schema ids, subjects with numbered versions,
//!   soft and hard deletes, compatibility levels per subject and global), so the gateway can
//!   serve the Confluent REST API over it.
//! - [`compatibility`]: BACKWARD, FORWARD, FULL, their TRANSITIVE forms and NONE, decided by
//!   apache-avro's schema resolution rules.
//! - [`confluent`]: any Confluent-compatible registry by URL (Confluent, Apicurio's ccompat API,
//!   Karapace, Redpanda), through schema_registry_converter, with TLS and basic auth.
//! - [`catalog`]: parsed document schemas by id and by subject, cached, so known ids keep
//!   working while the registry is down.
//! - [`SubjectNaming`]: which subjects belong to which tenant (`<tenant>.<name>-value`).
//! - [`wire`]: the Confluent wire format (magic byte, schema id, Avro binary).

pub mod builtin;
pub mod catalog;
pub mod compatibility;
pub mod confluent;
pub mod limits;
pub mod wire;

use std::sync::Arc;

use async_trait::async_trait;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};

use crate::config::SchemasConfig;
use crate::tenant::TenantId;

pub use catalog::SchemaCatalog;

pub use compatibility::CompatibilityLevel;
pub use limits::RegistrationLimits;

/// A schema id, global across subjects (the Confluent model): the same schema text registered
/// under two subjects gets one id.
pub type SchemaId = u32;

/// A named reference from one schema to another (Avro named types defined elsewhere).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaReference {
    /// The full name of the referenced type, e.g. `com.example.Address`.
    pub name: String,
    pub subject: String,
    pub version: i32,
}

/// One version of a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i32,
    pub id: SchemaId,
    /// The Avro schema as JSON, as registered.
    pub schema: String,
    pub references: Vec<SchemaReference>,
}

/// Which version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSelector {
    Latest,
    Number(i32),
}

/// The outcome of a compatibility check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatibilityReport {
    pub compatible: bool,
    /// Why not, one message per incompatibility (empty when compatible).
    pub messages: Vec<String>,
    pub level: CompatibilityLevel,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("subject {0} not found")]
    SubjectNotFound(String),
    #[error("version {version} of subject {subject} not found")]
    VersionNotFound { subject: String, version: String },
    #[error("schema {0} not found")]
    SchemaNotFound(SchemaId),
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    #[error("schema is incompatible with {level} versions of the subject: {}", .messages.join("; "))]
    Incompatible {
        level: CompatibilityLevel,
        messages: Vec<String>,
    },
    /// The registry cannot be reached or failed; worth retrying.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    /// Every version of the subject is soft-deleted (Confluent 40404).
    #[error("subject {0} was soft deleted")]
    SubjectSoftDeleted(String),
    /// A permanent delete of a subject that still has live versions (Confluent 40405).
    #[error("subject {0} must be soft deleted before it is deleted permanently")]
    SubjectNotSoftDeleted(String),
    /// Confluent 40406.
    #[error("version {version} of subject {subject} was soft deleted")]
    VersionSoftDeleted { subject: String, version: i32 },
    /// A permanent delete of a live version (Confluent 40407).
    #[error("version {version} of subject {subject} must be soft deleted before it is deleted permanently")]
    VersionNotSoftDeleted { subject: String, version: i32 },
    /// A tenant holds as many subjects, or a subject as many versions, as it may.
    #[error("{message} ({limit})")]
    LimitReached {
        /// The setting that says how many.
        limit: &'static str,
        message: String,
    },
    /// The version is referenced by live schemas, so it cannot be deleted (Confluent 42206).
    #[error("version {version} of subject {subject} is referenced by schemas {referenced_by:?}")]
    ReferenceExists {
        subject: String,
        version: i32,
        referenced_by: Vec<SchemaId>,
    },
}

/// What Sluice needs from a schema registry. Subjects are full subject names; which of them a
/// tenant may touch is decided above this trait, by [`SubjectNaming`].
#[async_trait]
pub trait SchemaRegistry: Send + Sync {
    /// Registers `schema` under `subject` (a no-op returning the existing version when the same
    /// schema is already there), after checking the subject's compatibility level.
    async fn register(
        &self,
        subject: &str,
        schema: &str,
        references: &[SchemaReference],
    ) -> Result<SubjectVersion, RegistryError>;

    /// The schema text with this id, and its references.
    async fn schema_by_id(
        &self,
        id: SchemaId,
    ) -> Result<(String, Vec<SchemaReference>), RegistryError>;

    async fn version(
        &self,
        subject: &str,
        version: VersionSelector,
    ) -> Result<SubjectVersion, RegistryError>;

    /// The live (not deleted) version numbers of a subject, ascending.
    async fn versions(&self, subject: &str) -> Result<Vec<i32>, RegistryError>;

    /// Every live subject.
    async fn subjects(&self) -> Result<Vec<String>, RegistryError>;

    /// Whether `schema` could be registered under `subject` now (against `version`, or against
    /// what the subject's level requires when `None`).
    async fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
        references: &[SchemaReference],
        version: Option<VersionSelector>,
    ) -> Result<CompatibilityReport, RegistryError>;

    /// Where this registry is, for logs and health (`built-in` or a URL).
    fn describe(&self) -> String;
}

/// The schema registry a process uses.
pub struct Schemas {
    /// Parsed schemas by id and by tenant, in front of whichever registry is configured.
    pub catalog: Arc<SchemaCatalog>,
    /// The built-in registry, when no external one is configured: the gateway serves the
    /// Confluent REST API over it.
    pub builtin: Option<Arc<builtin::BuiltinRegistry>>,
}

/// The registry as configured: the Confluent-compatible one at `schemas.url`, else the built-in
/// one in `db`.
pub fn open(config: &SchemasConfig, db: &DatabaseConnection) -> anyhow::Result<Schemas> {
    let (registry, builtin): (Arc<dyn SchemaRegistry>, _) = match &config.url {
        Some(_) => (Arc::new(confluent::ConfluentRegistry::new(config)?), None),
        None => {
            let level = config
                .default_compatibility
                .parse()
                .map_err(|e| anyhow::anyhow!("schemas.default_compatibility: {e}"))?;
            let naming =
                SubjectNaming::parse(&config.subject_template).map_err(anyhow::Error::msg)?;
            let builtin = Arc::new(
                builtin::BuiltinRegistry::new(db.clone(), level)
                    .with_rules(naming, config.limits()),
            );
            (builtin.clone(), Some(builtin))
        }
    };
    Ok(Schemas {
        catalog: catalog(registry, config)?,
        builtin,
    })
}

/// The Confluent-compatible registry at `schemas.url` (an external one, or the gateway's REST
/// API over the built-in one), for a process without the database: `sluice-worker`.
pub fn open_by_url(config: &SchemasConfig) -> anyhow::Result<Arc<SchemaCatalog>> {
    anyhow::ensure!(
        config.url.is_some(),
        "schemas.url is needed without a database: the gateway's address (its REST registry \
         API, with a worker certificate from `sluice-admin cert worker`) or an external registry"
    );
    catalog(Arc::new(confluent::ConfluentRegistry::new(config)?), config)
}

fn catalog(
    registry: Arc<dyn SchemaRegistry>,
    config: &SchemasConfig,
) -> anyhow::Result<Arc<SchemaCatalog>> {
    tracing::info!(registry = %registry.describe(), "schema registry");
    let registry: Arc<dyn SchemaRegistry> = Arc::new(Timed(registry));
    Ok(Arc::new(SchemaCatalog::new(registry, config)?))
}

/// A registry whose every call is timed: `sluice_schema_registry_duration_seconds{operation,
/// outcome}` (a cached schema costs no call, so this is what reaches the registry).
struct Timed(Arc<dyn SchemaRegistry>);

async fn timed<T>(
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T, RegistryError>>,
) -> Result<T, RegistryError> {
    let started = std::time::Instant::now();
    let result = call.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(RegistryError::Unavailable(_)) => "unavailable",
        Err(_) => "refused",
    };
    metrics::histogram!("sluice_schema_registry_duration_seconds", "operation" => operation, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    result
}

#[async_trait]
impl SchemaRegistry for Timed {
    async fn register(
        &self,
        subject: &str,
        schema: &str,
        references: &[SchemaReference],
    ) -> Result<SubjectVersion, RegistryError> {
        timed("register", self.0.register(subject, schema, references)).await
    }

    async fn schema_by_id(
        &self,
        id: SchemaId,
    ) -> Result<(String, Vec<SchemaReference>), RegistryError> {
        timed("schema_by_id", self.0.schema_by_id(id)).await
    }

    async fn version(
        &self,
        subject: &str,
        version: VersionSelector,
    ) -> Result<SubjectVersion, RegistryError> {
        timed("version", self.0.version(subject, version)).await
    }

    async fn versions(&self, subject: &str) -> Result<Vec<i32>, RegistryError> {
        timed("versions", self.0.versions(subject)).await
    }

    async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        timed("subjects", self.0.subjects()).await
    }

    async fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
        references: &[SchemaReference],
        version: Option<VersionSelector>,
    ) -> Result<CompatibilityReport, RegistryError> {
        timed(
            "check_compatibility",
            self.0
                .check_compatibility(subject, schema, references, version),
        )
        .await
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// How a tenant's schema names map to registry subjects: a template with `{tenant}` and `{name}`,
/// by default `{tenant}.{name}-value` (Confluent's TopicNameStrategy shape, one namespace per
/// tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectNaming {
    prefix: String,
    infix: String,
    suffix: String,
}

impl SubjectNaming {
    pub const DEFAULT_TEMPLATE: &'static str = "{tenant}.{name}-value";

    /// Parses a template: `{tenant}` first, then `{name}`, separated by text that starts with a
    /// character tenant ids cannot hold (so that a subject names exactly one tenant).
    pub fn parse(template: &str) -> Result<Self, String> {
        let bad = || {
            format!("subject template {template:?} must contain {{tenant}} and then {{name}}, separated by some text, e.g. \"{}\"", Self::DEFAULT_TEMPLATE)
        };
        let (prefix, rest) = template.split_once("{tenant}").ok_or_else(bad)?;
        let (infix, suffix) = rest.split_once("{name}").ok_or_else(bad)?;
        let separates = infix
            .bytes()
            .next()
            .is_some_and(|b| TenantId::parse(&(b as char).to_string()).is_err());
        if !separates || [prefix, infix, suffix].iter().any(|p| p.contains('{')) {
            return Err(bad());
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            infix: infix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    pub fn subject(&self, tenant: &TenantId, name: &str) -> String {
        format!(
            "{}{}{}{}{}",
            self.prefix, tenant, self.infix, name, self.suffix
        )
    }

    /// The tenant `subject` belongs to, if any (the tenant id as written; not validated
    /// further).
    pub fn tenant_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(self.prefix.as_str())?;
        // The infix starts with a character tenant ids cannot hold, so the tenant id ends there.
        let end = rest
            .find(|c: char| TenantId::parse(&c.to_string()).is_err())
            .unwrap_or(rest.len());
        let (tenant, rest) = rest.split_at(end);
        let name = rest
            .strip_prefix(self.infix.as_str())?
            .strip_suffix(self.suffix.as_str())?;
        (!tenant.is_empty() && valid_schema_name(name).is_ok()).then_some(tenant)
    }

    /// What every subject of `tenant` starts with (and maybe some others': check with
    /// [`Self::tenant_of`]).
    pub fn tenant_prefix(&self, tenant: &str) -> String {
        format!("{}{}{}", self.prefix, tenant, self.infix)
    }

    /// The schema name within `tenant`, when `subject` belongs to it.
    pub fn name_in<'a>(&self, tenant: &TenantId, subject: &'a str) -> Option<&'a str> {
        let name = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(tenant.as_str())?
            .strip_prefix(self.infix.as_str())?
            .strip_suffix(self.suffix.as_str())?;
        valid_schema_name(name).is_ok().then_some(name)
    }
}

impl Default for SubjectNaming {
    fn default() -> Self {
        Self::parse(Self::DEFAULT_TEMPLATE).expect("the default template is valid")
    }
}

/// Schema names are 1–128 characters of A-Z, a-z, 0-9, `_`, `-` and `.`.
pub fn valid_schema_name(name: &str) -> Result<(), String> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if name.is_empty() || name.len() > 128 || !plain {
        return Err(
            "schema names are 1 to 128 characters of A-Z, a-z, 0-9, '_', '-' and '.'".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_belong_to_exactly_one_tenant() {
        let naming = SubjectNaming::default();
        let acme = TenantId::parse("acme").unwrap();
        let acme_eu = TenantId::parse("acme-eu").unwrap();
        let subject = naming.subject(&acme, "article");
        assert_eq!(subject, "acme.article-value");
        assert_eq!(naming.name_in(&acme, &subject), Some("article"));
        assert_eq!(naming.name_in(&acme_eu, &subject), None);
        assert_eq!(naming.name_in(&acme, "acme-eu.article-value"), None);
        assert_eq!(naming.name_in(&acme, "acme.article-key"), None);
        assert!(SubjectNaming::parse("{name}-{tenant}").is_err());
        assert!(SubjectNaming::parse("{tenant}{name}").is_err());
        assert!(SubjectNaming::parse("{tenant}-{name}").is_err());
        assert_eq!(naming.tenant_of(&subject), Some("acme"));
        assert_eq!(naming.tenant_of("acme-eu.article-value"), Some("acme-eu"));
        assert_eq!(naming.tenant_of("acme.article-key"), None);
        assert_eq!(naming.tenant_of(".article-value"), None);
        assert_eq!(naming.tenant_of("article"), None);
        assert_eq!(naming.tenant_prefix("acme"), "acme.");
        let custom = SubjectNaming::parse("tenants/{tenant}/{name}").unwrap();
        assert_eq!(custom.tenant_of("tenants/acme/a"), Some("acme"));
        assert_eq!(custom.subject(&acme, "a"), "tenants/acme/a");
        assert_eq!(custom.name_in(&acme, "tenants/acme/a"), Some("a"));
    }
}
