//! Parsed document schemas, by id and by tenant, cached in front of the registry.
//!
//! Ids never change meaning, so a schema fetched by id is kept for good: known ids keep working
//! while the registry is down. A subject's latest version is trusted for `latest_ttl`, and used
//! past it (with a warning) when the registry cannot be reached. Anything not yet seen while the
//! registry is down is [`CatalogError::Unavailable`]: nothing is validated against a guess.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::{
    RegistrationLimits, RegistryError, SchemaId, SchemaReference, SchemaRegistry, SubjectNaming,
    SubjectVersion, VersionSelector,
};
use crate::config::SchemasConfig;
use crate::schema::{DocumentSchema, DEFAULT_DOCUMENT_SCHEMA};
use crate::tenant::TenantId;

/// A tenant's document schema, ready to validate and decode with.
#[derive(Debug, Clone)]
pub struct ResolvedSchema {
    pub id: SchemaId,
    /// The tenant's name for it (`document`, `article`).
    pub name: String,
    pub subject: String,
    pub schema: Arc<DocumentSchema>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogError {
    /// The tenant has no such schema (name, version or id); the client's mistake.
    #[error("{0}")]
    Unknown(String),
    /// The schema exists but cannot be used for documents (no text field, say).
    #[error("{0}")]
    NotADocumentSchema(String),
    /// The registry cannot answer and nothing cached does.
    #[error("{0}")]
    Unavailable(String),
}

pub struct SchemaCatalog {
    registry: Arc<dyn SchemaRegistry>,
    naming: SubjectNaming,
    default_name: String,
    auto_register_default: bool,
    latest_ttl: Duration,
    limits: RegistrationLimits,
    by_id: RwLock<HashMap<SchemaId, Arc<DocumentSchema>>>,
    by_version: RwLock<HashMap<(String, i32), SchemaId>>,
    latest: RwLock<HashMap<String, (Instant, SchemaId)>>,
    /// (subject, id) pairs seen to belong together: a binary payload's id is checked against
    /// the subject it claims.
    members: RwLock<HashSet<(String, SchemaId)>>,
}

impl SchemaCatalog {
    pub fn new(registry: Arc<dyn SchemaRegistry>, config: &SchemasConfig) -> anyhow::Result<Self> {
        let naming = SubjectNaming::parse(&config.subject_template).map_err(anyhow::Error::msg)?;
        super::valid_schema_name(&config.default_name)
            .map_err(|e| anyhow::anyhow!("schemas.default_name: {e}"))?;
        Ok(Self {
            registry,
            naming,
            default_name: config.default_name.clone(),
            auto_register_default: config.auto_register_default,
            latest_ttl: Duration::from_millis(config.latest_ttl_ms),
            limits: config.limits(),
            by_id: RwLock::default(),
            by_version: RwLock::default(),
            latest: RwLock::default(),
            members: RwLock::default(),
        })
    }

    pub fn registry(&self) -> &Arc<dyn SchemaRegistry> {
        &self.registry
    }

    /// What a tenant may register.
    pub fn limits(&self) -> &RegistrationLimits {
        &self.limits
    }

    pub fn naming(&self) -> &SubjectNaming {
        &self.naming
    }

    pub fn default_name(&self) -> &str {
        &self.default_name
    }

    /// Forgets which version is the latest of `subject` (all subjects when `None`), so the next
    /// document sees a version just registered through this process at once. Other processes
    /// see it within `latest_ttl`.
    pub fn forget_latest(&self, subject: Option<&str>) {
        let mut latest = self.latest.write().expect("lock");
        match subject {
            Some(subject) => {
                latest.remove(subject);
            }
            None => latest.clear(),
        }
    }

    /// The schema with this id, for decoding a record (the gateway checked whose it is).
    pub async fn by_id(&self, id: SchemaId) -> Result<Arc<DocumentSchema>, CatalogError> {
        if let Some(schema) = self.by_id.read().expect("lock").get(&id) {
            return Ok(schema.clone());
        }
        let (text, references) = self.registry.schema_by_id(id).await.map_err(|e| match e {
            RegistryError::SchemaNotFound(_) => {
                CatalogError::Unknown(format!("schema id {id} is not registered"))
            }
            other => unavailable(other),
        })?;
        let referenced = self.referenced_texts(&references).await?;
        let schema = DocumentSchema::parse_with_references(&text, &referenced)
            .map_err(|e| CatalogError::NotADocumentSchema(format!("schema id {id}: {e}")))?;
        let schema = Arc::new(schema);
        self.by_id.write().expect("lock").insert(id, schema.clone());
        Ok(schema)
    }

    /// The tenant's schema `name` (default: `schemas.default_name`) at `version`. The default
    /// schema is registered for the tenant on first use when `auto_register_default` is set.
    pub async fn for_tenant(
        &self,
        tenant: &TenantId,
        name: Option<&str>,
        version: VersionSelector,
    ) -> Result<ResolvedSchema, CatalogError> {
        let name = self.name(name)?;
        let subject = self.naming.subject(tenant, name);
        let id = match version {
            VersionSelector::Latest => self.latest_id(&subject, name).await?,
            VersionSelector::Number(n) => self.version_id(&subject, name, n).await?,
        };
        self.resolved(id, name, subject).await
    }

    /// A binary payload's schema id, checked to be a version of the tenant's schema `name`.
    pub async fn for_tenant_id(
        &self,
        tenant: &TenantId,
        name: Option<&str>,
        id: SchemaId,
    ) -> Result<ResolvedSchema, CatalogError> {
        let name = self.name(name)?;
        let subject = self.naming.subject(tenant, name);
        let known = self
            .members
            .read()
            .expect("lock")
            .contains(&(subject.clone(), id));
        if !known {
            let versions = match self.registry.versions(&subject).await {
                Ok(versions) => versions,
                Err(RegistryError::SubjectNotFound(_) | RegistryError::SubjectSoftDeleted(_)) => {
                    Vec::new()
                }
                Err(other) => return Err(unavailable(other)),
            };
            let mut found = false;
            // Newest first: a payload is most likely written with a recent version.
            for version in versions.into_iter().rev() {
                if self.version_id(&subject, name, version).await? == id {
                    found = true;
                    break;
                }
            }
            if !found {
                return Err(CatalogError::Unknown(format!(
                    "schema id {id} is not a version of schema {name:?}"
                )));
            }
        }
        self.resolved(id, name, subject).await
    }

    async fn resolved(
        &self,
        id: SchemaId,
        name: &str,
        subject: String,
    ) -> Result<ResolvedSchema, CatalogError> {
        let schema = self.by_id(id).await.map_err(|e| match e {
            CatalogError::NotADocumentSchema(reason) => {
                CatalogError::NotADocumentSchema(format!("schema {name:?}: {reason}"))
            }
            other => other,
        })?;
        Ok(ResolvedSchema {
            id,
            name: name.to_owned(),
            subject,
            schema,
        })
    }

    fn name<'a>(&'a self, name: Option<&'a str>) -> Result<&'a str, CatalogError> {
        let name = name.filter(|n| !n.is_empty()).unwrap_or(&self.default_name);
        super::valid_schema_name(name).map_err(CatalogError::Unknown)?;
        Ok(name)
    }

    async fn latest_id(&self, subject: &str, name: &str) -> Result<SchemaId, CatalogError> {
        let cached = self.latest.read().expect("lock").get(subject).copied();
        if let Some((at, id)) = cached {
            if at.elapsed() < self.latest_ttl {
                return Ok(id);
            }
        }
        let found = match self
            .registry
            .version(subject, VersionSelector::Latest)
            .await
        {
            Ok(found) => found,
            Err(
                RegistryError::SubjectNotFound(_)
                | RegistryError::VersionNotFound { .. }
                | RegistryError::SubjectSoftDeleted(_)
                | RegistryError::VersionSoftDeleted { .. },
            ) if name == self.default_name && self.auto_register_default => self
                .registry
                .register(subject, DEFAULT_DOCUMENT_SCHEMA, &[])
                .await
                .map_err(unavailable)?,
            Err(
                RegistryError::SubjectNotFound(_)
                | RegistryError::VersionNotFound { .. }
                | RegistryError::SubjectSoftDeleted(_)
                | RegistryError::VersionSoftDeleted { .. },
            ) => {
                return Err(CatalogError::Unknown(format!(
                    "no schema {name:?} is registered"
                )))
            }
            Err(other) => {
                return match cached {
                    Some((_, id)) => {
                        tracing::warn!(%subject, id, error = %other, "schema registry unreachable; using the last known latest version");
                        // Ask again after another TTL, not on every request meanwhile.
                        self.latest
                            .write()
                            .expect("lock")
                            .insert(subject.to_owned(), (Instant::now(), id));
                        Ok(id)
                    }
                    None => Err(unavailable(other)),
                };
            }
        };
        self.remember(&found);
        self.latest
            .write()
            .expect("lock")
            .insert(subject.to_owned(), (Instant::now(), found.id));
        Ok(found.id)
    }

    async fn version_id(
        &self,
        subject: &str,
        name: &str,
        version: i32,
    ) -> Result<SchemaId, CatalogError> {
        let key = (subject.to_owned(), version);
        if let Some(id) = self.by_version.read().expect("lock").get(&key) {
            return Ok(*id);
        }
        let found = self
            .registry
            .version(subject, VersionSelector::Number(version))
            .await
            .map_err(|e| match e {
                RegistryError::SubjectNotFound(_)
                | RegistryError::VersionNotFound { .. }
                | RegistryError::SubjectSoftDeleted(_)
                | RegistryError::VersionSoftDeleted { .. } => {
                    CatalogError::Unknown(format!("schema {name:?} has no version {version}"))
                }
                other => unavailable(other),
            })?;
        self.remember(&found);
        Ok(found.id)
    }

    fn remember(&self, found: &SubjectVersion) {
        self.by_version
            .write()
            .expect("lock")
            .insert((found.subject.clone(), found.version), found.id);
        self.members
            .write()
            .expect("lock")
            .insert((found.subject.clone(), found.id));
    }

    /// The texts of a schema's references and theirs, dependencies first.
    async fn referenced_texts(
        &self,
        references: &[SchemaReference],
    ) -> Result<Vec<String>, CatalogError> {
        let mut texts = Vec::new();
        let mut pending: Vec<(SchemaReference, bool)> = references
            .iter()
            .rev()
            .cloned()
            .map(|r| (r, false))
            .collect();
        let mut seen = HashSet::new();
        // Depth-first, emitting a reference after its own references.
        while let Some((reference, expanded)) = pending.pop() {
            let key = (reference.subject.clone(), reference.version);
            let found = self
                .registry
                .version(
                    &reference.subject,
                    VersionSelector::Number(reference.version),
                )
                .await
                .map_err(|e| match e {
                    RegistryError::SubjectNotFound(_)
                    | RegistryError::VersionNotFound { .. }
                    | RegistryError::SubjectSoftDeleted(_)
                    | RegistryError::VersionSoftDeleted { .. } => {
                        CatalogError::NotADocumentSchema(format!(
                            "reference {} (subject {} version {}) is not registered",
                            reference.name, reference.subject, reference.version
                        ))
                    }
                    other => unavailable(other),
                })?;
            if expanded {
                if seen.insert(key) {
                    texts.push(found.schema);
                }
            } else if !seen.contains(&key) {
                pending.push((reference, true));
                pending.extend(found.references.into_iter().rev().map(|r| (r, false)));
            }
        }
        Ok(texts)
    }
}

fn unavailable(e: RegistryError) -> CatalogError {
    match e {
        RegistryError::Unavailable(reason) => {
            CatalogError::Unavailable(format!("schema registry unavailable: {reason}"))
        }
        other => CatalogError::Unavailable(format!("schema registry: {other}")),
    }
}
