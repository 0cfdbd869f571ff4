//! The Confluent Schema Registry REST API over the built-in registry, scoped per tenant.
//!
//! Confluent clients (serializers, Kafka Connect, the `schema-registry` tools) talk to it
//! unchanged. It is served on the gateway's gRPC port, so the caller's tenant is identified
//! exactly as for gRPC calls ([`crate::tenancy::auth`]): its client certificate, or in development mode
//! the `x-sluice-tenant` header, or else the user name of `Authorization: Basic` credentials
//! (what a client configured with `basic.auth.user.info` sends).
//!
//! A tenant sees only its own subjects, those [`SubjectNaming`] assigns to it. Another
//! tenant's subject is "not found" to reads (so its existence is not revealed) and forbidden
//! to writes; a schema id answers only when one of the caller's subjects uses it. The global
//! compatibility level can be read but not changed: it applies to every tenant, so it is the
//! operator's (`schemas.default_compatibility`).
//!
//! A worker (a client certificate naming `spiffe://<trust-domain>/worker/<name>`, issued by
//! `sluice-admin cert worker`) may read any schema by id and any subject's versions, and
//! nothing else: that is what a `sluice-worker` without the database needs to decode every
//! tenant's records.
//!
//! Errors are Confluent's: `{"error_code": N, "message": "..."}`, with its codes (40401
//! subject not found, 409 incompatible, 42201 invalid schema, and so on; see [`ApiError`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_core::schema_registry::builtin::{missing_reference, BuiltinRegistry};
use sluice_core::schema_registry::{
    CompatibilityLevel, RegistryError, SchemaId, SchemaReference, SchemaRegistry, SubjectNaming,
    SubjectVersion, VersionSelector,
};
use sluice_core::tenant::TenantId;
use tonic::metadata::MetadataMap;

use crate::tenancy::auth::{Authenticator, TENANT_HEADER};
use crate::tenancy::quota::QuotaGate;

/// The content type of every response (Confluent's v1 API).
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Request bodies may be sent as any of these (or with no content type).
const ACCEPTED_CONTENT_TYPES: [&str; 3] = [
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "application/json",
];

/// The only schema type the built-in registry holds.
const AVRO: &str = "AVRO";

struct Api {
    registry: Arc<BuiltinRegistry>,
    naming: SubjectNaming,
    auth: Authenticator,
    quotas: Arc<QuotaGate>,
}

type Shared = Arc<Api>;

/// The Confluent REST API's routes. Mounted beside the gRPC services, so it must not set a
/// fallback (the gRPC router has one).
pub fn router(
    registry: Arc<BuiltinRegistry>,
    naming: SubjectNaming,
    auth: Authenticator,
    quotas: Arc<QuotaGate>,
) -> Router {
    let api = Arc::new(Api {
        registry,
        naming,
        auth,
        quotas,
    });
    Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(schema_types))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_by_id))
        .route(
            "/config",
            get(global_config)
                .put(global_config_is_the_operators)
                .delete(global_config_is_the_operators),
        )
        .route(
            "/config/{subject}",
            get(subject_config)
                .put(set_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_against_level),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_against_version),
        )
        .route("/mode", get(mode))
        .route("/mode/{subject}", get(mode))
        .with_state(api)
}

// ---------------------------------------------------------------------------------------------
// Who is calling, and what they may see

/// The tenant a request acts for.
struct Tenant(TenantId);

impl FromRequestParts<Shared> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Shared) -> Result<Self, ApiError> {
        let mut headers = parts.headers.clone();
        if !headers.contains_key(TENANT_HEADER) {
            if let Some(user) = basic_auth_user(&headers) {
                if let Ok(value) = HeaderValue::from_str(&user) {
                    headers.insert(TENANT_HEADER, value);
                }
            }
        }
        // The same check as gRPC calls get, over the same connection's certificates.
        let request = tonic::Request::from_parts(
            MetadataMap::from_headers(headers),
            parts.extensions.clone(),
            (),
        );
        // Each call counts against the tenant's requests_per_second, as gRPC calls do.
        let caller = api.auth.caller(&request).map_err(ApiError::refused)?;
        api.quotas
            .request(&caller, "the schema registry REST API")
            .await
            .map_err(ApiError::refused)?;
        Ok(Tenant(caller.tenant))
    }
}

/// Who reads a schema: a tenant (only what its subjects use), or a worker (any tenant's, to
/// decode the records it indexes; see [`Authenticator::worker`]).
enum Reader {
    Tenant(TenantId),
    Worker,
}

impl FromRequestParts<Shared> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Shared) -> Result<Self, ApiError> {
        let request = tonic::Request::from_parts(
            MetadataMap::from_headers(parts.headers.clone()),
            parts.extensions.clone(),
            (),
        );
        if api
            .auth
            .worker(&request)
            .map_err(ApiError::refused)?
            .is_some()
        {
            return Ok(Reader::Worker);
        }
        let Tenant(tenant) = Tenant::from_request_parts(parts, api).await?;
        Ok(Reader::Tenant(tenant))
    }
}

impl Api {
    fn owns(&self, tenant: &TenantId, subject: &str) -> bool {
        self.naming.name_in(tenant, subject).is_some()
    }

    /// For reads: another tenant's subject is as absent as one that does not exist.
    fn readable(&self, tenant: &TenantId, subject: &str) -> Result<(), ApiError> {
        if self.owns(tenant, subject) {
            Ok(())
        } else {
            Err(RegistryError::SubjectNotFound(subject.to_owned()).into())
        }
    }

    /// For writes: refused, saying which subjects are the tenant's.
    fn writable(&self, tenant: &TenantId, subject: &str) -> Result<(), ApiError> {
        if self.owns(tenant, subject) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            40301,
            format!(
                "subject {subject:?} is not tenant {tenant}'s: its subjects are named {:?}",
                self.naming.subject(tenant, "<name>")
            ),
        ))
    }

    /// References may name only the tenant's own subjects; any other is reported as missing.
    fn check_references(
        &self,
        tenant: &TenantId,
        references: &[SchemaReference],
    ) -> Result<(), ApiError> {
        match references.iter().find(|r| !self.owns(tenant, &r.subject)) {
            Some(foreign) => Err(missing_reference(foreign).into()),
            None => Ok(()),
        }
    }

    /// Whether one of the tenant's subjects uses schema `id` (soft-deleted versions count).
    async fn ensure_visible(&self, tenant: &TenantId, id: SchemaId) -> Result<(), ApiError> {
        let versions = self.registry.versions_using(id, true).await?;
        if versions
            .iter()
            .any(|(subject, _)| self.owns(tenant, subject))
        {
            Ok(())
        } else {
            Err(RegistryError::SchemaNotFound(id).into())
        }
    }
}

/// The user name of `Authorization: Basic` credentials.
fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, _password) = decoded.split_once(':')?;
    Some(user.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Requests and responses

/// A schema sent to register, look up or check.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: String,
    schema_type: Option<String>,
    references: Option<Vec<SchemaReference>>,
}

impl SchemaRequest {
    /// The Avro schema and its references; other schema types are refused.
    fn avro(self) -> Result<(String, Vec<SchemaReference>), ApiError> {
        match self.schema_type.as_deref() {
            None => {}
            Some(kind) if kind.eq_ignore_ascii_case(AVRO) => {}
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    42201,
                    "only AVRO schemas are supported",
                ))
            }
        }
        Ok((self.schema, self.references.unwrap_or_default()))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigRequest {
    compatibility: Option<String>,
    /// Some clients send the name the responses use.
    compatibility_level: Option<String>,
}

/// Parses a JSON request body sent with an acceptable content type.
fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    if let Some(value) = headers.get(header::CONTENT_TYPE) {
        let essence = value
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        if !ACCEPTED_CONTENT_TYPES
            .iter()
            .any(|accepted| accepted.eq_ignore_ascii_case(essence))
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                415,
                format!(
                    "unsupported content type {essence:?}; send one of {}",
                    ACCEPTED_CONTENT_TYPES.join(", ")
                ),
            ));
        }
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            400,
            format!("invalid request body: {e}"),
        )
    })
}

/// The query string's `name=true` flags (`deleted`, `permanent`, `verbose`, ...), read with
/// axum's `Query` (percent-decoded); other parameters are ignored. A query string that cannot
/// be read is answered in Confluent's error format, like every other error here.
struct Flags(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Flags {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, 400, e.body_text()))?;
        Ok(Self(pairs))
    }
}

impl Flags {
    fn on(&self, name: &str) -> bool {
        self.0
            .iter()
            .any(|(key, value)| key == name && value.eq_ignore_ascii_case("true"))
    }
}

/// A version in a path: a number from 1, or `latest` (or `-1`, Confluent's alias for it).
fn parse_version(text: &str) -> Result<VersionSelector, ApiError> {
    match text {
        "latest" | "-1" => Ok(VersionSelector::Latest),
        _ => match text.parse::<i32>() {
            Ok(number) if number >= 1 => Ok(VersionSelector::Number(number)),
            _ => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                42202,
                format!(
                    "the specified version {text:?} is not a valid version id: \
                     allowed values are between 1 and 2^31-1, and \"latest\""
                ),
            )),
        },
    }
}

fn parse_id(text: &str) -> Result<SchemaId, ApiError> {
    text.parse::<SchemaId>().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            40403,
            format!("schema {text} not found"),
        )
    })
}

fn parse_level(text: Option<String>) -> Result<CompatibilityLevel, ApiError> {
    text.unwrap_or_default().parse().map_err(|e: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!("invalid compatibility level: {e}"),
        )
    })
}

/// A JSON response with Confluent's content type.
fn reply(body: Value) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body.to_string(),
    )
        .into_response()
}

/// A schema as Confluent shows one: `references` only when there are some, and `schemaType`
/// left out because it is AVRO.
fn schema_json(mut body: Value, references: &[SchemaReference]) -> Value {
    if !references.is_empty() {
        body["references"] = json!(references);
    }
    body
}

fn version_json(version: &SubjectVersion) -> Value {
    schema_json(
        json!({
            "subject": version.subject,
            "id": version.id,
            "version": version.version,
            "schema": version.schema,
        }),
        &version.references,
    )
}

/// An error as Confluent reports one.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// A refusal by [`Authenticator`]: 401 when the caller is not identified, 403 when it
    /// may not act.
    fn refused(status: tonic::Status) -> Self {
        let (http, code) = match status.code() {
            tonic::Code::Unauthenticated => (StatusCode::UNAUTHORIZED, 40101),
            tonic::Code::PermissionDenied => (StatusCode::FORBIDDEN, 40301),
            tonic::Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, 42901),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
        };
        Self::new(http, code, status.message())
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        use RegistryError::*;
        let (status, code) = match &error {
            SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            VersionNotFound { .. } => (StatusCode::NOT_FOUND, 40402),
            SchemaNotFound(_) => (StatusCode::NOT_FOUND, 40403),
            SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, 40404),
            SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
            VersionSoftDeleted { .. } => (StatusCode::NOT_FOUND, 40406),
            VersionNotSoftDeleted { .. } => (StatusCode::NOT_FOUND, 40407),
            Incompatible { .. } => (StatusCode::CONFLICT, 409),
            InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            ReferenceExists { .. } => (StatusCode::UNPROCESSABLE_ENTITY, 42206),
            // Confluent's "operation not permitted": deleting permanently makes room.
            LimitReached { .. } => (StatusCode::UNPROCESSABLE_ENTITY, 42205),
            Unavailable(reason) => {
                tracing::warn!(%reason, "built-in schema registry failed");
                (StatusCode::INTERNAL_SERVER_ERROR, 50001)
            }
        };
        Self::new(status, code, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = reply(json!({
            "error_code": self.code,
            "message": self.message,
        }));
        *response.status_mut() = self.status;
        response
    }
}

type Reply = Result<Response, ApiError>;

// ---------------------------------------------------------------------------------------------
// Handlers, in the order of Confluent's API reference

async fn root(Tenant(_): Tenant) -> Response {
    reply(json!({}))
}

async fn schema_types(Tenant(_): Tenant) -> Response {
    reply(json!([AVRO]))
}

async fn list_subjects(State(api): State<Shared>, Tenant(tenant): Tenant, flags: Flags) -> Reply {
    let subjects: Vec<String> = api
        .registry
        .list_subjects(flags.on("deleted"))
        .await?
        .into_iter()
        .filter(|subject| api.owns(&tenant, subject))
        .collect();
    Ok(reply(json!(subjects)))
}

async fn list_versions(
    State(api): State<Shared>,
    Tenant(tenant): Tenant,
    Path(subject): Path<String>,
    flags: Flags,
) -> Reply {
    api.readable(&tenant, &subject)?;
    let versions = api
        .registry
        .list_versions(&subject, flags.on("deleted"))
        .await?;
    Ok(reply(json!(versions)))
}

async fn get_version(
    State(api): State<Shared>,
    reader: Reader,
    Path((subject, version)): Path<(String, String)>,
    flags: Flags,
) -> Reply {
    if let Reader::Tenant(tenant) = &reader {
        api.readable(tenant, &subject)?;
    }
    let found = api
        .registry
        .get_version(&subject, parse_version(&version)?, flags.on("deleted"))
        .await?;
    Ok(reply(version_json(&found)))
}

/// The schema itself, unwrapped.
async fn get_version_schema(
    State(api): State<Shared>,
    reader: Reader,
    Path((subject, version)): Path<(String, String)>,
    flags: Flags,
) -> Reply {
    if let Reader::Tenant(tenant) = &reader {
        api.readable(tenant, &subject)?;
    }
    let found = api
        .registry
        .get_version(&subject, parse_version(&version)?, flags.on("deleted"))
        .await?;
    Ok(raw(found.schema))
}

fn raw(schema: String) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        schema,
    )
        .into_response()
}

async fn referenced_by(
    State(api): State<Shared>,
    Tenant(tenant): Tenant,
    Path((subject, version)): Path<(String, String)>,
) -> Reply {
    api.readable(&tenant, &subject)?;
    let ids = api
        .registry
        .referenced_by(&subject, parse_version(&version)?)
        .await?;
    // References never cross tenants (see check_references); this only makes sure.
    let mut visible = Vec::with_capacity(ids.len());
    for id in ids {
        if api.ensure_visible(&tenant, id).await.is_ok() {
            visible.push(id);
        }
    }
    Ok(reply(json!(visible)))
}

/// Registers a schema (`?normalize` is accepted: schemas are always compared parsed).
async fn register(
    State(api): State<Shared>,
    Tenant(tenant): Tenant,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    api.writable(&tenant, &subject)?;
    let (schema, references) = json_body::<SchemaRequest>(&headers, &body)?.avro()?;
    api.check_references(&tenant, &references)?;
    let registered = api
        .registry
        .register(&subject, &schema, &references)
        .await
        .map_err(|error| match error {
            RegistryError::Incompatible { level, messages } => ApiError::new(
                StatusCode::CONFLICT,
                409,
                format!(
                    "Schema being registered is incompatible with an earlier schema for \
                     subject {subject:?} ({level}), details: [{}]",
                    messages.join("; ")
                ),
            ),
            other => other.into(),
        })?;
    Ok(reply(json!({ "id": registered.id })))
}

/// Whether a schema is registered under a subject, and as which version.
async fn lookup(
    State(api): State<Shared>,
    Tenant(tenant): Tenant,
    Path(subject): Path<String>,
    flags: Flags,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    api.readable(&tenant, &subject)?;
    let (schema, references) = json_body::<SchemaRequest>(&headers, &body)?.avro()?;
    api.check_references(&tenant, &references)?;
    match api
        .registry
        .lookup(&subject, &schema, &references, flags.on("deleted"))
        .await?
    {
        Some(found) => Ok(reply(version_json(&found))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            40403,
            format!("schema not found under subject {subject:?}"),
        )),
    }
}

async fn delete_subject(
    State(api): State<Shared>,
    Tenant(tenant): Tenant,
    Path(subject): Path<String>,
    flags: Flags,
) -> Reply {
    api.writable(&tenant, &subject)?;
    let deleted = api
        .registry
        .delete_subject(&subject, flags.on("permanent"))
        .await?;
    Ok(reply(json!(deleted)))
}

async fn delete_version(
    State(api): State<Shared>,
    Tenant(tenant): Tenant,
    Path((subject, version)): Path<(String, String)>,
    flags: Flags,
) -> Reply {
    api.writable(&tenant, &subject)?;
    let deleted = api
        .registry
        .delete_version(&subject, parse_version(&version)?, flags.on("permanent"))
        .await?;
    Ok(reply(json!(deleted)))
}

/// A schema by id (`?subject=` is accepted; ids are global).
async fn schema_by_id(State(api): State<Shared>, reader: Reader, Path(id): Path<String>) -> Reply {
    let id = parse_id(&id)?;
    if let Reader::Tenant(tenant) = &reader {
        api.ensure_visible(tenant, id).await?;
    }
    let (schema, references) = api.registry.schema_by_id(id).await?;
    Ok(reply(schema_json(json!({ "schema": schema }), &references)))
}

async fn raw_schema_by_id(
    State(api): State<Shared>,
    reader: Reader,
    Path(id): Path<String>,
) -> Reply {
    let id = parse_id(&id)?;
    if let Reader::Tenant(tenant) = &reader {
        api.ensure_visible(tenant, id).await?;
    }
    let (schema, _) = api.registry.schema_by_id(id).await?;
    Ok(raw(schema))
}

async fn subjects_by_id(
    State(api): State<Shared>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    flags: Flags,
) -> Reply {
    let id = parse_id(&id)?;
    api.ensure_visible(&tenant, id).await?;
    let subjects: Vec<String> = api
        .registry
        .subjects_using(id, flags.on("deleted"))
        .await
        .or_else(none_found)?
        .into_iter()
        .filter(|subject| api.owns(&tenant, subject))
        .collect();
    Ok(reply(json!(subjects)))
}

async fn versions_by_id(
    State(api): State<Shared>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    flags: Flags,
) -> Reply {
    let id = parse_id(&id)?;
    api.ensure_visible(&tenant, id).await?;
    let versions: Vec<Value> = api
        .registry
        .versions_using(id, flags.on("deleted"))
        .await
        .or_else(none_found)?
        .into_iter()
        .filter(|(subject, _)| api.owns(&tenant, subject))
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    Ok(reply(json!(versions)))
}

/// An id visible through soft-deleted versions only has no live ones: an empty list.
fn none_found<T>(error: RegistryError) -> Result<Vec<T>, RegistryError> {
    match error {
        RegistryError::SchemaNotFound(_) => Ok(Vec::new()),
        other => Err(other),
    }
}

async fn global_config(State(api): State<Shared>, Tenant(_): Tenant) -> Reply {
    let level = api.registry.global_level().await?;
    Ok(reply(json!({ "compatibilityLevel": level })))
}

async fn global_config_is_the_operators(Tenant(_): Tenant) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        40301,
        "the global compatibility level is the operator's: schemas.default_compatibility",
    )
}

async fn subject_config(
    State(api): State<Shared>,
    Tenant(tenant): Tenant,
    Path(subject): Path<String>,
    flags: Flags,
) -> Reply {
    api.readable(&tenant, &subject)?;
    let level = match api.registry.subject_level(&subject).await? {
        Some(level) => level,
        None if flags.on("defaultToGlobal") => api.registry.global_level().await?,
        None => return Err(no_subject_level(&subject)),
    };
    Ok(reply(json!({ "compatibilityLevel": level })))
}

async fn set_subject_config(
    State(api): State<Shared>,
    Tenant(tenant): Tenant,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    api.writable(&tenant, &subject)?;
    let request: ConfigRequest = json_body(&headers, &body)?;
    let level = parse_level(request.compatibility.or(request.compatibility_level))?;
    api.registry.set_subject_level(&subject, level).await?;
    Ok(reply(json!({ "compatibility": level })))
}

/// Removes the subject's own level; answers with the level it had.
async fn delete_subject_config(
    State(api): State<Shared>,
    Tenant(tenant): Tenant,
    Path(subject): Path<String>,
) -> Reply {
    api.writable(&tenant, &subject)?;
    match api.registry.delete_subject_level(&subject).await? {
        Some(level) => Ok(reply(json!({ "compatibilityLevel": level }))),
        None => Err(no_subject_level(&subject)),
    }
}

fn no_subject_level(subject: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        40408,
        format!("subject {subject:?} does not have subject-level compatibility configured"),
    )
}

/// Against what the subject's level requires.
async fn check_against_level(
    State(api): State<Shared>,
    Tenant(tenant): Tenant,
    Path(subject): Path<String>,
    flags: Flags,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    check(&api, &tenant, &subject, None, &flags, &headers, &body).await
}

async fn check_against_version(
    State(api): State<Shared>,
    Tenant(tenant): Tenant,
    Path((subject, version)): Path<(String, String)>,
    flags: Flags,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let version = parse_version(&version)?;
    check(
        &api,
        &tenant,
        &subject,
        Some(version),
        &flags,
        &headers,
        &body,
    )
    .await
}

async fn check(
    api: &Api,
    tenant: &TenantId,
    subject: &str,
    version: Option<VersionSelector>,
    flags: &Flags,
    headers: &HeaderMap,
    body: &Bytes,
) -> Reply {
    api.readable(tenant, subject)?;
    let (schema, references) = json_body::<SchemaRequest>(headers, body)?.avro()?;
    api.check_references(tenant, &references)?;
    let report = api
        .registry
        .check_compatibility(subject, &schema, &references, version)
        .await?;
    let mut answer = json!({ "is_compatible": report.compatible });
    if flags.on("verbose") {
        answer["messages"] = json!(report.messages);
    }
    Ok(reply(answer))
}

/// The registry is always writable (no import mode, no read-only replicas).
async fn mode(Tenant(_): Tenant) -> Response {
    reply(json!({ "mode": "READWRITE" }))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Method, Request};
    use sluice_core::tenants::Tenants;
    use tower::ServiceExt;

    use super::*;
    use crate::tenancy::directory::TenantDirectory;

    const ACME: &str = "acme";
    const GLOBEX: &str = "globex";
    const ARTICLE: &str = "acme.article-value";

    fn doc(fields: &str) -> String {
        format!(r#"{{"type":"record","name":"Doc","fields":[{fields}]}}"#)
    }

    fn v1() -> String {
        doc(r#"{"name":"text","type":"string"}"#)
    }

    fn v2() -> String {
        doc(r#"{"name":"text","type":"string"},{"name":"lang","type":"string","default":"en"}"#)
    }

    /// The API on a fresh SQLite database, tenants from the development header.
    struct Harness {
        app: Router,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        async fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
            let db = sluice_core::db::connect(&url).await.unwrap();
            let directory = TenantDirectory::load(Tenants::new(db.clone()))
                .await
                .unwrap();
            let registry = Arc::new(BuiltinRegistry::new(db, CompatibilityLevel::Backward));
            let app = router(
                registry,
                SubjectNaming::default(),
                Authenticator::dev_header(directory),
                Arc::new(crate::tenancy::quota::QuotaGate::new()),
            );
            Self { app, _dir: dir }
        }

        /// Sends a request as `tenant` (none when `None`); returns the status and the body as
        /// JSON (or as a JSON string when it is not JSON).
        async fn send(
            &self,
            tenant: Option<&str>,
            method: Method,
            uri: &str,
            body: Option<Value>,
        ) -> (StatusCode, Value) {
            let mut request = Request::builder().method(method).uri(uri);
            if let Some(tenant) = tenant {
                request = request.header(TENANT_HEADER, tenant);
            }
            let body = match body {
                Some(body) => {
                    request = request.header(header::CONTENT_TYPE, CONTENT_TYPE);
                    Body::from(body.to_string())
                }
                None => Body::empty(),
            };
            self.call(request.body(body).unwrap()).await
        }

        async fn call(&self, request: Request<Body>) -> (StatusCode, Value) {
            let response = self.app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            if status != StatusCode::METHOD_NOT_ALLOWED {
                assert_eq!(
                    response.headers()[header::CONTENT_TYPE],
                    CONTENT_TYPE,
                    "every answer is Confluent JSON"
                );
            }
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
            (status, body)
        }

        async fn get(&self, tenant: &str, uri: &str) -> (StatusCode, Value) {
            self.send(Some(tenant), Method::GET, uri, None).await
        }

        async fn register(&self, tenant: &str, subject: &str, schema: &str) -> (StatusCode, Value) {
            self.send(
                Some(tenant),
                Method::POST,
                &format!("/subjects/{subject}/versions"),
                Some(json!({ "schema": schema })),
            )
            .await
        }

        async fn delete(&self, tenant: &str, uri: &str) -> (StatusCode, Value) {
            self.send(Some(tenant), Method::DELETE, uri, None).await
        }
    }

    fn error_code(body: &Value) -> i64 {
        body["error_code"].as_i64().unwrap_or_default()
    }

    #[tokio::test]
    async fn registers_and_reads_back() {
        let api = Harness::new().await;
        let (status, body) = api.register(ACME, ARTICLE, &v1()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id = body["id"].as_u64().unwrap();
        // Again: the same id, no new version.
        assert_eq!(api.register(ACME, ARTICLE, &v1()).await.1["id"], id);

        let expected = json!({ "subject": ARTICLE, "id": id, "version": 1, "schema": v1() });
        for version in ["1", "latest", "-1"] {
            let (status, body) = api
                .get(ACME, &format!("/subjects/{ARTICLE}/versions/{version}"))
                .await;
            assert_eq!((status, body), (StatusCode::OK, expected.clone()));
        }
        assert_eq!(
            api.get(ACME, &format!("/subjects/{ARTICLE}/versions/1/schema"))
                .await
                .1,
            serde_json::from_str::<Value>(&v1()).unwrap()
        );
        assert_eq!(
            api.get(ACME, &format!("/schemas/ids/{id}")).await,
            (StatusCode::OK, json!({ "schema": v1() }))
        );
        assert_eq!(
            api.get(ACME, &format!("/schemas/ids/{id}/subjects"))
                .await
                .1,
            json!([ARTICLE])
        );
        assert_eq!(
            api.get(ACME, &format!("/schemas/ids/{id}/versions"))
                .await
                .1,
            json!([{ "subject": ARTICLE, "version": 1 }])
        );
        assert_eq!(api.get(ACME, "/subjects").await.1, json!([ARTICLE]));
        assert_eq!(
            api.get(ACME, &format!("/subjects/{ARTICLE}/versions"))
                .await
                .1,
            json!([1])
        );
        assert_eq!(api.get(ACME, "/schemas/types").await.1, json!(["AVRO"]));
        assert_eq!(
            api.get(ACME, "/mode").await.1,
            json!({ "mode": "READWRITE" })
        );

        // Lookup: registered, and not.
        let (status, body) = api
            .send(
                Some(ACME),
                Method::POST,
                &format!("/subjects/{ARTICLE}"),
                Some(json!({ "schema": v1() })),
            )
            .await;
        assert_eq!((status, body), (StatusCode::OK, expected));
        let (status, body) = api
            .send(
                Some(ACME),
                Method::POST,
                &format!("/subjects/{ARTICLE}"),
                Some(json!({ "schema": v2() })),
            )
            .await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40403));

        // What is missing or malformed.
        let (status, body) = api
            .get(ACME, &format!("/subjects/{ARTICLE}/versions/7"))
            .await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40402));
        let (status, body) = api
            .get(ACME, &format!("/subjects/{ARTICLE}/versions/0"))
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, 42202)
        );
        let (status, body) = api.get(ACME, "/subjects/acme.missing-value/versions").await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40401));
        let (status, body) = api.register(ACME, ARTICLE, "{\"type\":\"nope\"}").await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, 42201)
        );
        let (status, body) = api
            .send(
                Some(ACME),
                Method::POST,
                &format!("/subjects/{ARTICLE}/versions"),
                Some(json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" })),
            )
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, 42201)
        );
        assert_eq!(body["message"], "only AVRO schemas are supported");

        // Plain JSON is accepted; other content types are not.
        let request = |content_type: &str| {
            Request::post(format!("/subjects/{ARTICLE}/versions"))
                .header(TENANT_HEADER, ACME)
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(json!({ "schema": v1() }).to_string()))
                .unwrap()
        };
        assert_eq!(
            api.call(request("application/json; charset=utf-8")).await.0,
            StatusCode::OK
        );
        assert_eq!(
            api.call(request("text/plain")).await.0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[tokio::test]
    async fn tenants_see_only_their_own() {
        let api = Harness::new().await;
        let id = api.register(ACME, ARTICLE, &v1()).await.1["id"]
            .as_u64()
            .unwrap();

        // Reads: as if it did not exist.
        assert_eq!(api.get(GLOBEX, "/subjects").await.1, json!([]));
        for uri in [
            format!("/subjects/{ARTICLE}/versions"),
            format!("/subjects/{ARTICLE}/versions/1"),
            format!("/config/{ARTICLE}"),
        ] {
            let (status, body) = api.get(GLOBEX, &uri).await;
            assert_eq!(
                (status, error_code(&body)),
                (StatusCode::NOT_FOUND, 40401),
                "{uri}"
            );
        }
        for uri in [
            format!("/schemas/ids/{id}"),
            format!("/schemas/ids/{id}/subjects"),
        ] {
            let (status, body) = api.get(GLOBEX, &uri).await;
            assert_eq!(
                (status, error_code(&body)),
                (StatusCode::NOT_FOUND, 40403),
                "{uri}"
            );
        }
        // Writes: forbidden.
        let (status, body) = api.register(GLOBEX, ARTICLE, &v2()).await;
        assert_eq!((status, error_code(&body)), (StatusCode::FORBIDDEN, 40301));
        let (status, body) = api.delete(GLOBEX, &format!("/subjects/{ARTICLE}")).await;
        assert_eq!((status, error_code(&body)), (StatusCode::FORBIDDEN, 40301));
        // References to another tenant's subject are as missing as nonexistent ones.
        let (status, body) = api
            .send(
                Some(GLOBEX),
                Method::POST,
                "/subjects/globex.person-value/versions",
                Some(json!({
                    "schema": doc(r#"{"name":"doc","type":"Doc"}"#),
                    "references": [{ "name": "Doc", "subject": ARTICLE, "version": 1 }],
                })),
            )
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, 42201)
        );
        // The same schema under globex's own subject gets globex's own id: registering it
        // says nothing about whether acme has it, and acme's id stays invisible to globex.
        let (status, body) = api.register(GLOBEX, "globex.article-value", &v1()).await;
        let globex_id = body["id"].as_u64().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_ne!(globex_id, id);
        assert_eq!(
            api.get(GLOBEX, &format!("/schemas/ids/{globex_id}/subjects"))
                .await
                .1,
            json!(["globex.article-value"])
        );
        assert_eq!(
            api.get(GLOBEX, &format!("/schemas/ids/{id}")).await.0,
            StatusCode::NOT_FOUND
        );

        // Who is calling must be known.
        let (status, body) = api.send(None, Method::GET, "/subjects", None).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNAUTHORIZED, 40101)
        );
        // Basic credentials name the tenant in development mode ("acme:secret").
        let request = Request::get("/subjects")
            .header(header::AUTHORIZATION, "Basic YWNtZTpzZWNyZXQ=")
            .body(Body::empty())
            .unwrap();
        assert_eq!(api.call(request).await, (StatusCode::OK, json!([ARTICLE])));
    }

    #[tokio::test]
    async fn compatibility_is_enforced_and_configurable() {
        let api = Harness::new().await;
        api.register(ACME, ARTICLE, &v1()).await;
        let required = doc(r#"{"name":"text","type":"string"},{"name":"lang","type":"string"}"#);

        let (status, body) = api.register(ACME, ARTICLE, &required).await;
        assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, 409));
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("incompatible") && message.contains("version 1"),
            "{message}"
        );

        // Checks, with and without the reasons.
        let check = |uri: String| {
            let (api, body) = (&api, json!({ "schema": required }));
            async move { api.send(Some(ACME), Method::POST, &uri, Some(body)).await }
        };
        let (status, body) = check(format!(
            "/compatibility/subjects/{ARTICLE}/versions/latest?verbose=true"
        ))
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["is_compatible"], false);
        assert!(!body["messages"].as_array().unwrap().is_empty());
        assert_eq!(
            check(format!("/compatibility/subjects/{ARTICLE}/versions"))
                .await
                .1,
            json!({ "is_compatible": false })
        );
        assert_eq!(
            check("/compatibility/subjects/acme.fresh-value/versions".into())
                .await
                .1,
            json!({ "is_compatible": true })
        );

        // The subject's level: unset, then NONE, which lets the change in.
        let config = format!("/config/{ARTICLE}");
        let (status, body) = api.get(ACME, &config).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40408));
        assert_eq!(
            api.get(ACME, &format!("{config}?defaultToGlobal=true"))
                .await
                .1,
            json!({ "compatibilityLevel": "BACKWARD" })
        );
        let (status, body) = api
            .send(
                Some(ACME),
                Method::PUT,
                &config,
                Some(json!({ "compatibility": "sideways" })),
            )
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, 42203)
        );
        assert_eq!(
            api.send(
                Some(ACME),
                Method::PUT,
                &config,
                Some(json!({ "compatibility": "NONE" })),
            )
            .await,
            (StatusCode::OK, json!({ "compatibility": "NONE" }))
        );
        assert_eq!(
            api.get(ACME, &config).await.1,
            json!({ "compatibilityLevel": "NONE" })
        );
        assert_eq!(
            api.register(ACME, ARTICLE, &required).await.0,
            StatusCode::OK
        );
        assert_eq!(
            api.delete(ACME, &config).await,
            (StatusCode::OK, json!({ "compatibilityLevel": "NONE" }))
        );

        // The global level is readable, and the operator's to change.
        assert_eq!(
            api.get(ACME, "/config").await.1,
            json!({ "compatibilityLevel": "BACKWARD" })
        );
        let (status, body) = api
            .send(
                Some(ACME),
                Method::PUT,
                "/config",
                Some(json!({ "compatibility": "NONE" })),
            )
            .await;
        assert_eq!((status, error_code(&body)), (StatusCode::FORBIDDEN, 40301));
        assert_eq!(api.delete(ACME, "/config").await.0, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn deletes_soft_then_permanently() {
        let api = Harness::new().await;
        api.register(ACME, ARTICLE, &v1()).await;
        api.register(ACME, ARTICLE, &v2()).await;
        let versions = format!("/subjects/{ARTICLE}/versions");

        let (status, body) = api
            .delete(ACME, &format!("{versions}/2?permanent=true"))
            .await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40407));
        assert_eq!(
            api.delete(ACME, &format!("{versions}/2")).await,
            (StatusCode::OK, json!(2))
        );
        let (status, body) = api.delete(ACME, &format!("{versions}/2")).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40406));
        assert_eq!(api.get(ACME, &versions).await.1, json!([1]));
        assert_eq!(
            api.get(ACME, &format!("{versions}?deleted=true")).await.1,
            json!([1, 2])
        );
        assert_eq!(
            api.get(ACME, &format!("{versions}/2?deleted=true")).await.1["version"],
            2
        );
        assert_eq!(
            api.delete(ACME, &format!("{versions}/2?permanent=true"))
                .await,
            (StatusCode::OK, json!(2))
        );

        let subject = format!("/subjects/{ARTICLE}");
        let (status, body) = api.delete(ACME, &format!("{subject}?permanent=true")).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40405));
        assert_eq!(
            api.delete(ACME, &subject).await,
            (StatusCode::OK, json!([1]))
        );
        let (status, body) = api.delete(ACME, &subject).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40404));
        assert_eq!(api.get(ACME, "/subjects").await.1, json!([]));
        assert_eq!(
            api.get(ACME, "/subjects?deleted=true").await.1,
            json!([ARTICLE])
        );
        // Flags are read as query parameters: percent-decoded, any case, among others.
        assert_eq!(
            api.get(ACME, "/subjects?limit=5&deleted=%54rue").await.1,
            json!([ARTICLE])
        );
        assert_eq!(api.get(ACME, "/subjects?deleted=no").await.1, json!([]));
        assert_eq!(
            api.delete(ACME, &format!("{subject}?permanent=true")).await,
            (StatusCode::OK, json!([1]))
        );
        let (status, body) = api.get(ACME, &versions).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40401));

        // A referenced version stays until what references it goes.
        let address =
            r#"{"type":"record","name":"Address","fields":[{"name":"city","type":"string"}]}"#;
        api.register(ACME, "acme.address-value", address).await;
        let (status, body) = api
            .send(
                Some(ACME),
                Method::POST,
                "/subjects/acme.person-value/versions",
                Some(json!({
                    "schema": r#"{"type":"record","name":"Person","fields":[{"name":"home","type":"Address"}]}"#,
                    "references": [{ "name": "Address", "subject": "acme.address-value", "version": 1 }],
                })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let person = body["id"].clone();
        assert_eq!(
            api.get(ACME, "/subjects/acme.address-value/versions/1/referencedby")
                .await
                .1,
            json!([person])
        );
        assert_eq!(
            api.get(ACME, &format!("/schemas/ids/{person}")).await.1["references"][0]["subject"],
            "acme.address-value"
        );
        let (status, body) = api
            .delete(ACME, "/subjects/acme.address-value/versions/1")
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, 42206)
        );
    }

    #[test]
    fn basic_credentials_decode() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("basic YWNtZTpzZWNyZXQ="),
        );
        assert_eq!(basic_auth_user(&headers).as_deref(), Some("acme"));
    }
}
