//! A Confluent-compatible schema registry by URL, through schema_registry_converter.
//!
//! The registry decides compatibility itself (its own levels); what it answers is mapped onto
//! [`RegistryError`] by Confluent's error codes, and anything without one (refused connections,
//! timeouts, 5xx) is [`RegistryError::Unavailable`].

use std::time::Duration;

use async_trait::async_trait;
use schema_registry_converter::async_impl::schema_registry::{
    get_all_subjects, get_all_versions, get_schema_by_id, get_schema_by_subject_and_version,
    is_compatible_schema, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RegisteredReference, RegisteredSchema, SchemaType, SuppliedReference, SuppliedSchema,
};

use super::{
    CompatibilityLevel, CompatibilityReport, RegistryError, SchemaId, SchemaReference,
    SchemaRegistry, SubjectVersion, VersionSelector,
};
use crate::config::SchemasConfig;

pub struct ConfluentRegistry {
    url: String,
    settings: SrSettings,
}

impl ConfluentRegistry {
    pub fn new(config: &SchemasConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        let url = config
            .url
            .clone()
            .context("schemas.url is needed for a Confluent-compatible registry")?;
        // reqwest is built without its own crypto provider: use the process's (ring), as the
        // gateway's TLS does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut client =
            reqwest::Client::builder().timeout(Duration::from_millis(config.timeout_ms));
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).with_context(|| format!("schemas.ca {}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("schemas.ca {}", ca.display()))?;
            client = client.tls_certs_only(certs);
        }
        match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert)
                    .with_context(|| format!("schemas.client_cert {}", cert.display()))?;
                pem.extend(
                    std::fs::read(key)
                        .with_context(|| format!("schemas.client_key {}", key.display()))?,
                );
                client = client.identity(
                    reqwest::Identity::from_pem(&pem).context("schemas.client_cert/client_key")?,
                );
            }
            (None, None) => {}
            _ => anyhow::bail!("schemas.client_cert and schemas.client_key go together"),
        }
        let mut builder = SrSettings::new_builder(url.trim_end_matches('/').to_owned());
        if let Some(user) = &config.username {
            builder.set_basic_authorization(user, config.password.as_deref());
        }
        let settings = builder
            .build_with(client)
            .map_err(|e| anyhow::anyhow!("schema registry client: {}", describe(&e)))?;
        Ok(Self { url, settings })
    }
}

#[async_trait]
impl SchemaRegistry for ConfluentRegistry {
    async fn register(
        &self,
        subject: &str,
        schema: &str,
        references: &[SchemaReference],
    ) -> Result<SubjectVersion, RegistryError> {
        let supplied = self.supplied(schema, references).await?;
        let registered = post_schema(&self.settings, subject.to_owned(), supplied)
            .await
            .map_err(|e| classify(e, subject, "latest"))?;
        // The registry answers with the id only; the version comes from a lookup.
        match (registered.version, registered.subject.as_deref()) {
            (Some(version), Some(s)) if s == subject => {
                Ok(self.subject_version(registered, subject, version))
            }
            _ => self.find_version(subject, registered.id).await,
        }
    }

    async fn schema_by_id(
        &self,
        id: SchemaId,
    ) -> Result<(String, Vec<SchemaReference>), RegistryError> {
        let registered = get_schema_by_id(id, &self.settings)
            .await
            .map_err(|e| match classify(e, "", "") {
                RegistryError::SubjectNotFound(_) | RegistryError::VersionNotFound { .. } => {
                    RegistryError::SchemaNotFound(id)
                }
                other => other,
            })?;
        Ok((registered.schema, references_of(&registered.references)))
    }

    async fn version(
        &self,
        subject: &str,
        version: VersionSelector,
    ) -> Result<SubjectVersion, RegistryError> {
        let number = match version {
            VersionSelector::Latest => None,
            VersionSelector::Number(n) => {
                Some(
                    u32::try_from(n).map_err(|_| RegistryError::VersionNotFound {
                        subject: subject.into(),
                        version: n.to_string(),
                    })?,
                )
            }
        };
        let label = number.map_or("latest".to_owned(), |n| n.to_string());
        let registered = get_schema_by_subject_and_version(&self.settings, subject, number)
            .await
            .map_err(|e| classify(e, subject, &label))?;
        let found = registered.version.map_or(0, |v| v as i32);
        Ok(self.subject_version(registered, subject, found as u32))
    }

    async fn versions(&self, subject: &str) -> Result<Vec<i32>, RegistryError> {
        let versions = get_all_versions(&self.settings, subject.to_owned())
            .await
            .map_err(|e| classify(e, subject, ""))?;
        Ok(versions.into_iter().map(|v| v as i32).collect())
    }

    async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        get_all_subjects(&self.settings)
            .await
            .map_err(|e| classify(e, "", ""))
    }

    async fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
        references: &[SchemaReference],
        _version: Option<VersionSelector>,
    ) -> Result<CompatibilityReport, RegistryError> {
        let supplied = self.supplied(schema, references).await?;
        // A subject without versions accepts anything; the registry answers 404 for it.
        let compatible = match is_compatible_schema(&self.settings, subject.to_owned(), supplied)
            .await
            .map_err(|e| classify(e, subject, "latest"))
        {
            Ok(compatible) => compatible,
            Err(RegistryError::SubjectNotFound(_) | RegistryError::VersionNotFound { .. }) => true,
            Err(e) => return Err(e),
        };
        Ok(CompatibilityReport {
            compatible,
            messages: if compatible {
                Vec::new()
            } else {
                vec![format!(
                    "{} refuses the schema under the subject's compatibility level",
                    self.url
                )]
            },
            // The remote registry applies its own level; not reported by this API.
            level: CompatibilityLevel::default(),
        })
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

impl ConfluentRegistry {
    fn subject_version(&self, r: RegisteredSchema, subject: &str, version: u32) -> SubjectVersion {
        SubjectVersion {
            subject: subject.to_owned(),
            version: version as i32,
            id: r.id,
            references: references_of(&r.references),
            schema: r.schema,
        }
    }

    /// The version of `subject` that holds schema `id` (newest first).
    async fn find_version(
        &self,
        subject: &str,
        id: SchemaId,
    ) -> Result<SubjectVersion, RegistryError> {
        for version in self.versions(subject).await?.into_iter().rev() {
            let found = self
                .version(subject, VersionSelector::Number(version))
                .await?;
            if found.id == id {
                return Ok(found);
            }
        }
        Err(RegistryError::Unavailable(format!(
            "{} registered schema {id} under {subject} but lists no version of it",
            self.url
        )))
    }

    /// References as the client library wants them: with their schema texts.
    async fn supplied(
        &self,
        schema: &str,
        references: &[SchemaReference],
    ) -> Result<SuppliedSchema, RegistryError> {
        let mut supplied = Vec::new();
        for reference in references {
            let found = self
                .version(
                    &reference.subject,
                    VersionSelector::Number(reference.version),
                )
                .await?;
            // Nested references are already registered; the registry resolves them.
            supplied.push(SuppliedReference::new(
                reference.name.clone(),
                reference.subject.clone(),
                found.schema,
            ));
        }
        Ok(
            SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned())
                .with_references(supplied),
        )
    }
}

fn references_of(references: &[RegisteredReference]) -> Vec<SchemaReference> {
    references
        .iter()
        .map(|r| SchemaReference {
            name: r.name.clone(),
            subject: r.subject.clone(),
            version: r.version as i32,
        })
        .collect()
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}

/// Confluent's error code in a client error (`error_code: 40401, message: …`), if it has one.
fn error_code(e: &SRCError) -> Option<u32> {
    let cause = e.cause.as_deref()?;
    let rest = cause.split("error_code: ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn message(e: &SRCError) -> String {
    e.cause
        .as_deref()
        .and_then(|c| c.split("message: ").nth(1))
        .map(str::to_owned)
        .unwrap_or_else(|| describe(e))
}

fn classify(e: SRCError, subject: &str, version: &str) -> RegistryError {
    match error_code(&e) {
        Some(40401) => RegistryError::SubjectNotFound(subject.to_owned()),
        Some(40402) => RegistryError::VersionNotFound {
            subject: subject.to_owned(),
            version: version.to_owned(),
        },
        Some(40403) => RegistryError::SchemaNotFound(0),
        Some(409) => RegistryError::Incompatible {
            level: CompatibilityLevel::default(),
            messages: vec![message(&e)],
        },
        Some(code) if (42200..42300).contains(&code) => RegistryError::InvalidSchema(message(&e)),
        _ => RegistryError::Unavailable(describe(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors_are_classified_by_confluent_code() {
        let raw = |code: u32, msg: &str| {
            SRCError::non_retryable_with_cause(
                std::io::Error::other(format!("error_code: {code}, message: {msg}")),
                "HTTP request to schema registry failed with status 404",
            )
        };
        assert!(matches!(
            classify(raw(40401, "Subject not found"), "s", ""),
            RegistryError::SubjectNotFound(s) if s == "s"
        ));
        assert!(matches!(
            classify(raw(42201, "Invalid schema"), "s", ""),
            RegistryError::InvalidSchema(m) if m == "Invalid schema"
        ));
        assert!(matches!(
            classify(SRCError::new("connection refused", None, true), "s", ""),
            RegistryError::Unavailable(_)
        ));
    }
}
