//! `sluice.v1.SchemaService`: a tenant's document schemas, over the same mTLS identity as
//! ingestion. Names are the tenant's own; subjects come from the configured naming, so a tenant
//! can only ever reach its own subjects.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::proto::schema_service_server::SchemaService;
use sluice_core::proto::{
    CheckCompatibilityRequest, CheckCompatibilityResponse, GetSchemaRequest,
    ListSchemaVersionsRequest, ListSchemaVersionsResponse, ListSchemasRequest, ListSchemasResponse,
    RegisterSchemaRequest, RegisterSchemaResponse, Schema,
};
use sluice_core::schema::DocumentSchema;
use sluice_core::schema_registry::{
    valid_schema_name, RegistryError, SchemaCatalog, SchemaId, SubjectVersion, VersionSelector,
};
use sluice_core::tenant::TenantId;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::services::status::{invalid_argument, with_retry, Violation};
use crate::tenancy::auth::Authenticator;

pub struct SchemaApi {
    pub auth: Authenticator,
    pub schemas: Arc<SchemaCatalog>,
}

#[tonic::async_trait]
impl SchemaService for SchemaApi {
    async fn register_schema(
        &self,
        request: Request<RegisterSchemaRequest>,
    ) -> Result<Response<RegisterSchemaResponse>, Status> {
        let tenant = self.auth.tenant(&request)?;
        let request = request.into_inner();
        let name = schema_name(&request.name)?;
        // Within the limits before anything parses it.
        self.schemas
            .limits()
            .check_definition(&request.definition)
            .map_err(|e| registry_status(e, name))?;
        // Only schemas that say what to embed can carry documents.
        if let Err(e) = DocumentSchema::parse(&request.definition) {
            return Err(invalid_argument(&[Violation::new(
                "definition",
                e.to_string(),
            )]));
        }
        let subject = self.schemas.naming().subject(&tenant, name);
        let registered = self
            .schemas
            .registry()
            .register(&subject, &request.definition, &[])
            .await
            .map_err(|e| registry_status(e, name))?;
        self.schemas.forget_latest(Some(&subject));
        tracing::info!(%tenant, %subject, version = registered.version, id = registered.id, "schema registered");
        Ok(Response::new(RegisterSchemaResponse {
            schema: Some(schema_message(name, registered)),
        }))
    }

    async fn get_schema(
        &self,
        request: Request<GetSchemaRequest>,
    ) -> Result<Response<Schema>, Status> {
        let tenant = self.auth.tenant(&request)?;
        let request = request.into_inner();
        if request.id != 0 {
            if !request.name.is_empty() || request.version != 0 {
                return Err(invalid_argument(&[Violation::new(
                    "id",
                    "give either an id, or a name (and version)",
                )]));
            }
            return self.by_id(&tenant, request.id).await.map(Response::new);
        }
        let name = schema_name(&request.name)?;
        let version = match request.version {
            0 => VersionSelector::Latest,
            n if n > 0 => VersionSelector::Number(n),
            _ => {
                return Err(invalid_argument(&[Violation::new(
                    "version",
                    "must be a version number, or 0 for the latest",
                )]))
            }
        };
        let subject = self.schemas.naming().subject(&tenant, name);
        let found = self
            .schemas
            .registry()
            .version(&subject, version)
            .await
            .map_err(|e| registry_status(e, name))?;
        Ok(Response::new(schema_message(name, found)))
    }

    async fn list_schemas(
        &self,
        request: Request<ListSchemasRequest>,
    ) -> Result<Response<ListSchemasResponse>, Status> {
        let tenant = self.auth.tenant(&request)?;
        let mut names = self.names(&tenant).await?;
        names.sort();
        Ok(Response::new(ListSchemasResponse { names }))
    }

    async fn list_schema_versions(
        &self,
        request: Request<ListSchemaVersionsRequest>,
    ) -> Result<Response<ListSchemaVersionsResponse>, Status> {
        let tenant = self.auth.tenant(&request)?;
        let name = schema_name(&request.get_ref().name)?;
        let subject = self.schemas.naming().subject(&tenant, name);
        let versions = self
            .schemas
            .registry()
            .versions(&subject)
            .await
            .map_err(|e| registry_status(e, name))?;
        Ok(Response::new(ListSchemaVersionsResponse { versions }))
    }

    async fn check_compatibility(
        &self,
        request: Request<CheckCompatibilityRequest>,
    ) -> Result<Response<CheckCompatibilityResponse>, Status> {
        let tenant = self.auth.tenant(&request)?;
        let request = request.into_inner();
        let name = schema_name(&request.name)?;
        if let Err(e) = DocumentSchema::parse(&request.definition) {
            return Ok(Response::new(CheckCompatibilityResponse {
                compatible: false,
                reasons: vec![e.to_string()],
            }));
        }
        let subject = self.schemas.naming().subject(&tenant, name);
        let report = self
            .schemas
            .registry()
            .check_compatibility(&subject, &request.definition, &[], None)
            .await
            .map_err(|e| registry_status(e, name))?;
        Ok(Response::new(CheckCompatibilityResponse {
            compatible: report.compatible,
            reasons: report.messages,
        }))
    }
}

impl SchemaApi {
    /// The names of the tenant's schemas (its live subjects).
    async fn names(&self, tenant: &TenantId) -> Result<Vec<String>, Status> {
        let subjects = self
            .schemas
            .registry()
            .subjects()
            .await
            .map_err(|e| registry_status(e, ""))?;
        Ok(subjects
            .iter()
            .filter_map(|s| self.schemas.naming().name_in(tenant, s))
            .map(str::to_owned)
            .collect())
    }

    /// A schema by id, when it is a version of one of the tenant's schemas (ids are global:
    /// another tenant's id is answered exactly like an unknown one).
    async fn by_id(&self, tenant: &TenantId, id: SchemaId) -> Result<Schema, Status> {
        let registry = self.schemas.registry();
        for name in self.names(tenant).await? {
            let subject = self.schemas.naming().subject(tenant, &name);
            let versions = registry
                .versions(&subject)
                .await
                .map_err(|e| registry_status(e, &name))?;
            for version in versions.into_iter().rev() {
                let found = registry
                    .version(&subject, VersionSelector::Number(version))
                    .await
                    .map_err(|e| registry_status(e, &name))?;
                if found.id == id {
                    return Ok(schema_message(&name, found));
                }
            }
        }
        Err(Status::not_found(format!("no schema of yours has id {id}")))
    }
}

fn schema_name(name: &str) -> Result<&str, Status> {
    valid_schema_name(name).map_err(|e| invalid_argument(&[Violation::new("name", e)]))?;
    Ok(name)
}

fn schema_message(name: &str, found: SubjectVersion) -> Schema {
    // Roles are reported when the registered schema declares them (it may have been registered
    // through the REST API without them).
    let roles = DocumentSchema::parse(&found.schema).ok();
    Schema {
        name: name.to_owned(),
        subject: found.subject,
        version: found.version,
        id: found.id,
        text_field: roles
            .as_ref()
            .map(|r| r.text_field().to_owned())
            .unwrap_or_default(),
        attribute_fields: roles
            .map(|r| r.attribute_fields().to_vec())
            .unwrap_or_default(),
        definition: found.schema,
    }
}

/// Registry errors → statuses: the client's mistakes say which field; an unreachable registry
/// says to retry.
fn registry_status(error: RegistryError, name: &str) -> Status {
    match error {
        RegistryError::SubjectNotFound(_) => {
            Status::not_found(format!("no schema {name:?} is registered"))
        }
        RegistryError::VersionNotFound { version, .. } => {
            Status::not_found(format!("schema {name:?} has no version {version}"))
        }
        RegistryError::SchemaNotFound(id) => Status::not_found(format!("no schema has id {id}")),
        RegistryError::SubjectSoftDeleted(_) => {
            Status::not_found(format!("schema {name:?} was deleted"))
        }
        RegistryError::VersionSoftDeleted { version, .. } => {
            Status::not_found(format!("version {version} of schema {name:?} was deleted"))
        }
        // Deletion refusals: the service offers no deletes, but the registry may say so.
        e @ (RegistryError::SubjectNotSoftDeleted(_)
        | RegistryError::VersionNotSoftDeleted { .. }
        | RegistryError::ReferenceExists { .. }) => Status::failed_precondition(e.to_string()),
        RegistryError::InvalidSchema(reason) => {
            invalid_argument(&[Violation::new("definition", reason)])
        }
        RegistryError::LimitReached { limit, message } => {
            let mut details = ErrorDetails::new();
            details.add_quota_failure_violation(limit, message.clone());
            Status::with_error_details(Code::ResourceExhausted, message, details)
        }
        RegistryError::Incompatible { level, messages } => {
            let mut details = ErrorDetails::new();
            for message in &messages {
                details.add_precondition_failure_violation("COMPATIBILITY", name, message);
            }
            Status::with_error_details(
                Code::FailedPrecondition,
                format!(
                    "schema {name:?} is incompatible under {level}: {}",
                    messages.join("; ")
                ),
                details,
            )
        }
        RegistryError::Unavailable(reason) => {
            tracing::warn!(%reason, "schema registry unavailable");
            with_retry(
                Code::Unavailable,
                format!("schema registry unavailable: {reason}"),
                Duration::from_secs(1),
            )
        }
    }
}
