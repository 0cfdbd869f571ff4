//! The client: its settings, the retried unary calls, and the requests that take options.

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::batch::{batches, document_message};
use crate::error::{Code, ConfigError, Error};
use crate::proto;
use crate::proto::ingest_service_client::IngestServiceClient;
use crate::proto::schema_service_client::SchemaServiceClient;
use crate::proto::search_service_client::SearchServiceClient;
use crate::retry::{random, RetryPolicy};
use crate::tls::TlsCredentials;
use crate::types::{Compatibility, Document, Hit, Ingestion, Schema};
use crate::watch::Watch;

/// The header a plaintext development gateway (`--dev-tenant-header`) reads the tenant from.
pub const DEV_TENANT_HEADER: &str = "x-sluice-tenant";

/// What [`ClientBuilder`] settles; shared by a client's clones.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) timeout: Option<Duration>,
    pub(crate) wait_timeout: Option<Duration>,
    pub(crate) retry: RetryPolicy,
    pub(crate) watch_retry: RetryPolicy,
    pub(crate) batch_size: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) dev_tenant: Option<AsciiMetadataValue>,
}

type EndpointHook = Arc<dyn Fn(Endpoint) -> Endpoint + Send + Sync>;

/// How to reach a gateway and how to call it: [`Client::builder`], then
/// [`build`](Self::build).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use sluice_client::{Client, RetryPolicy, TlsCredentials};
///
/// let sluice = Client::builder("gateway.example.com:50051")
///     .tls(TlsCredentials::from_directory("certs", Some("acme"))?)
///     .timeout(Duration::from_secs(10))
///     .retry(RetryPolicy { max_attempts: 8, ..RetryPolicy::default() })
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until built"]
pub struct ClientBuilder {
    target: String,
    credentials: Option<TlsCredentials>,
    dev_tenant: Option<String>,
    server_name: Option<String>,
    timeout: Option<Duration>,
    wait_timeout: Option<Duration>,
    connect_timeout: Duration,
    retry: RetryPolicy,
    watch_retry: RetryPolicy,
    batch_size: usize,
    max_batch_bytes: usize,
    endpoint_hook: Option<EndpointHook>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("target", &self.target)
            .field("credentials", &self.credentials)
            .field("dev_tenant", &self.dev_tenant)
            .field("server_name", &self.server_name)
            .field("timeout", &self.timeout)
            .field("wait_timeout", &self.wait_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("watch_retry", &self.watch_retry)
            .field("batch_size", &self.batch_size)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("endpoint_hook", &self.endpoint_hook.is_some())
            .finish()
    }
}

impl ClientBuilder {
    fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            credentials: None,
            dev_tenant: None,
            server_name: None,
            timeout: Some(Duration::from_secs(30)),
            wait_timeout: Some(Duration::from_secs(120)),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            watch_retry: RetryPolicy::watch(),
            batch_size: 500,
            max_batch_bytes: 8 << 20,
            endpoint_hook: None,
        }
    }

    /// The client certificate (which says the tenant) and the CA to trust: the gateway's
    /// port is mTLS.
    pub fn tls(mut self, credentials: TlsCredentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// For a plaintext gateway started with `--dev-tenant-header` only (development): the
    /// tenant to act as, sent in the `x-sluice-tenant` header.
    pub fn dev_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.dev_tenant = Some(tenant.into());
        self
    }

    /// The name the gateway's certificate must carry, when it is not the target's host.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The deadline of each call, its retries included (`None`: none). Default 30 s.
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into();
        self
    }

    /// The deadline of a call that waits for indexing (`wait(true)`,
    /// [`wait_for`](Client::wait_for)). Default 120 s.
    pub fn wait_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.wait_timeout = timeout.into();
        self
    }

    /// How long making a connection may take. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Retries of unary calls. Default [`RetryPolicy::default`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Reconnects of watch streams (attempts count failures in a row). Default
    /// [`RetryPolicy::watch`].
    pub fn watch_retry(mut self, policy: RetryPolicy) -> Self {
        self.watch_retry = policy;
        self
    }

    /// Documents per IngestBatch call of [`ingest_many`](Client::ingest_many), and ingestions
    /// per watch of [`wait_for`](Client::wait_for). Default 500.
    pub fn batch_size(mut self, documents: usize) -> Self {
        self.batch_size = documents;
        self
    }

    /// Encoded bytes per IngestBatch call, at most (under the gateway's 16 MiB). Default
    /// 8 MiB.
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes;
        self
    }

    /// Changes the tonic endpoint last, before connecting (window sizes, a proxy's origin,
    /// ...).
    pub fn endpoint(mut self, hook: impl Fn(Endpoint) -> Endpoint + Send + Sync + 'static) -> Self {
        self.endpoint_hook = Some(Arc::new(hook));
        self
    }

    /// The client. It connects on its first call (and again whenever the connection is
    /// lost), so this fails only on what is wrong with the configuration itself. Call it
    /// inside the Tokio runtime that will use the client.
    pub fn build(self) -> Result<Client, ConfigError> {
        let endpoint = self.make_endpoint()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::NoRuntime);
        }
        let settings = self.settings()?;
        Ok(Client {
            channel: endpoint.connect_lazy(),
            settings: Arc::new(settings),
        })
    }

    /// The client, over a channel of your own (its TLS is then yours too).
    pub fn build_with_channel(self, channel: Channel) -> Result<Client, ConfigError> {
        let settings = self.settings()?;
        Ok(Client {
            channel,
            settings: Arc::new(settings),
        })
    }

    fn settings(&self) -> Result<Settings, ConfigError> {
        self.retry
            .validate()
            .map_err(|e| ConfigError::Option(format!("retry: {e}")))?;
        self.watch_retry
            .validate()
            .map_err(|e| ConfigError::Option(format!("watch_retry: {e}")))?;
        if self.batch_size == 0 || self.max_batch_bytes == 0 {
            return Err(ConfigError::Option(
                "batch_size and max_batch_bytes must be positive".into(),
            ));
        }
        let dev_tenant = match &self.dev_tenant {
            None => None,
            Some(tenant) => Some(MetadataValue::try_from(tenant.as_str()).map_err(|_| {
                ConfigError::Option(format!("dev_tenant {tenant:?} is not a header value"))
            })?),
        };
        Ok(Settings {
            timeout: self.timeout,
            wait_timeout: self.wait_timeout,
            retry: self.retry.clone(),
            watch_retry: self.watch_retry.clone(),
            batch_size: self.batch_size,
            max_batch_bytes: self.max_batch_bytes,
            dev_tenant,
        })
    }

    fn make_endpoint(&self) -> Result<Endpoint, ConfigError> {
        let target_error = |reason: String| ConfigError::Target {
            target: self.target.clone(),
            reason,
        };
        let scheme = match (&self.credentials, &self.dev_tenant) {
            (Some(_), _) => "https",
            (None, Some(_)) => "http",
            (None, None) => return Err(ConfigError::NoCredentials),
        };
        let uri = match self.target.split_once("://") {
            None => format!("{scheme}://{}", self.target),
            Some((given, _)) if given == scheme => self.target.clone(),
            Some((given, _)) => {
                return Err(target_error(format!(
                    "{given}:// with {}: use {scheme}://, or no scheme",
                    if scheme == "https" {
                        "TLS credentials"
                    } else {
                        "a plaintext development gateway"
                    }
                )))
            }
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| target_error(e.to_string()))?
            .user_agent(concat!("sluice-client-rust/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| ConfigError::Option(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // A watch on a connection that died silently notices within 40 s.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if let Some(credentials) = &self.credentials {
            endpoint = endpoint
                .tls_config(credentials.tls_config(self.server_name.as_deref()))
                .map_err(ConfigError::Tls)?;
        }
        if let Some(hook) = &self.endpoint_hook {
            endpoint = hook(endpoint);
        }
        Ok(endpoint)
    }
}

/// A Sluice client, acting for the tenant its certificate names.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use serde_json::json;
/// use sluice_client::Client;
///
/// let sluice = Client::from_directory("127.0.0.1:50051", ".sluice/dev/tls", Some("demo"))?;
/// sluice.ingest("note-1", &json!({"title": "Note", "text": "Tides follow the moon."})).wait(true).await?;
/// for hit in sluice.search("what moves the tides").top_k(3).await? {
///     println!("{:.3} {}: {}", hit.score, hit.document_id, hit.text);
/// }
/// # Ok(()) }
/// ```
///
/// Calls fail with an [`Error`] after retrying what may succeed later (see
/// [`RetryPolicy`]); writes carry idempotency keys, so a retry never writes twice. Cloning is
/// cheap: clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    settings: Arc<Settings>,
}

/// An idempotency key: one per write, the same on each of its attempts.
pub(crate) fn new_key() -> String {
    format!("rs-{}", uuid::Uuid::new_v4().simple())
}

pub(crate) fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|timeout| Instant::now().checked_add(timeout))
}

pub(crate) fn deadline_error() -> Error {
    Error::new(Code::DeadlineExceeded, "deadline exceeded")
}

impl Client {
    /// A builder for a client of the gateway at `target` (`host:port`, or a URI).
    pub fn builder(target: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(target)
    }

    /// Connects with the certificate `sluice-admin cert client TENANT --out DIRECTORY` wrote
    /// (see [`TlsCredentials::from_directory`]), with the default options.
    pub fn from_directory(
        target: impl Into<String>,
        directory: impl AsRef<Path>,
        tenant: Option<&str>,
    ) -> Result<Self, ConfigError> {
        Self::builder(target)
            .tls(TlsCredentials::from_directory(directory, tenant)?)
            .build()
    }

    /// Connects with a client certificate and key, and the gateway's CA (`None`: the
    /// system's CAs), from PEM files, with the default options.
    pub fn from_files(
        target: impl Into<String>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        ca: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        Self::builder(target)
            .tls(TlsCredentials::from_files(cert, key, ca)?)
            .build()
    }

    /// This client with another deadline for each call (`None`: none), sharing the
    /// connection.
    pub fn with_timeout(&self, timeout: impl Into<Option<Duration>>) -> Self {
        let mut settings = (*self.settings).clone();
        settings.timeout = timeout.into();
        Self {
            channel: self.channel.clone(),
            settings: Arc::new(settings),
        }
    }

    /// The channel, for calls of [`proto`](crate::proto) the client does not wrap.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    fn timeout(&self, explicit: Option<Option<Duration>>, wait: bool) -> Option<Duration> {
        explicit.unwrap_or(if wait {
            self.settings.wait_timeout
        } else {
            self.settings.timeout
        })
    }

    /// A request carrying what remains of `deadline` (as `grpc-timeout`) and the
    /// development tenant, if any.
    pub(crate) fn request<T>(
        &self,
        message: T,
        deadline: Option<Instant>,
    ) -> Result<tonic::Request<T>, Error> {
        let mut request = tonic::Request::new(message);
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(deadline_error());
            }
            request.set_timeout(left);
        }
        if let Some(tenant) = &self.settings.dev_tenant {
            request
                .metadata_mut()
                .insert(DEV_TENANT_HEADER, tenant.clone());
        }
        Ok(request)
    }

    /// Calls `send` until it succeeds, the retry policy gives up, or the deadline passes.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        message: Req,
        timeout: Option<Duration>,
        send: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let deadline = deadline_after(timeout);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let call = send(
                self.channel.clone(),
                self.request(message.clone(), deadline)?,
            );
            let outcome = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, call).await {
                    Ok(outcome) => outcome,
                    Err(_) => return Err(deadline_error()),
                },
                None => call.await,
            };
            let error = match outcome {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => Error::from_status(status),
            };
            let policy = &self.settings.retry;
            let Some(delay) =
                policy.next_delay(&error, attempt, deadline, Instant::now(), random())
            else {
                return Err(error);
            };
            tracing::info!(
                target: "sluice_client",
                "{method}: {error} (attempt {attempt}); retrying in {:.2} s",
                delay.as_secs_f64()
            );
            tokio::time::sleep(delay).await;
        }
    }

    // Writing.

    /// Ingests one document, its `fields` (a `serde_json::Value`, a struct, a map, ...)
    /// written as Avro JSON; options on the returned [`Ingest`], then `.await` it.
    ///
    /// It returns once the document is durably in Kafka (accepted), or with
    /// [`wait`](Ingest::wait) once it is indexed or failed. The same id replaces the
    /// document.
    pub fn ingest(&self, document_id: impl Into<String>, fields: &impl Serialize) -> Ingest<'_> {
        Ingest::new(self, Document::from_serialize(document_id, fields))
    }

    /// Ingests a [`Document`] (see [`ingest`](Self::ingest)).
    pub fn ingest_document(&self, document: Document) -> Ingest<'_> {
        Ingest::new(self, Ok(document))
    }

    /// Ingests documents (or `(document_id, serde_json::Value)` pairs) in IngestBatch calls of
    /// at most [`batch_size`](ClientBuilder::batch_size) documents and
    /// [`max_batch_bytes`](ClientBuilder::max_batch_bytes), each one Kafka transaction (all
    /// of its documents are accepted, or none). Returns the ingestions in order.
    ///
    /// When a call fails, the error's [`accepted`](Error::accepted) holds the ingestions of
    /// the calls before it. Every document is encoded before the first call: one that
    /// cannot be is an error before anything is written.
    pub fn ingest_many<D: Into<Document>>(
        &self,
        documents: impl IntoIterator<Item = D>,
    ) -> IngestMany<'_> {
        IngestMany {
            client: self,
            documents: documents.into_iter().map(Into::into).collect(),
            batch_size: None,
            wait: false,
            timeout: None,
        }
    }

    /// Removes a document and its chunks (ordered after every earlier ingest of it).
    /// Deleting a document that does not exist is not an error.
    pub fn delete(&self, document_id: impl Into<String>) -> Delete<'_> {
        Delete {
            client: self,
            document_id: document_id.into(),
            wait: false,
            idempotency_key: None,
            timeout: None,
        }
    }

    // Following.

    /// The current state of an ingestion. `NotFound` when the tenant has none with that id.
    pub async fn get_ingestion(&self, ingestion_id: impl Into<String>) -> Result<Ingestion, Error> {
        let message = proto::GetIngestionRequest {
            ingestion_id: ingestion_id.into(),
        };
        let ingestion = self
            .unary(
                "GetIngestion",
                message,
                self.timeout(None, false),
                |c, r| async move { IngestServiceClient::new(c).get_ingestion(r).await },
            )
            .await?;
        Ok(ingestion.into())
    }

    /// The tenant's ingestion events, across disconnects: none missed, none repeated. A
    /// [`Stream`](futures::Stream); options on [`Watch`] before it is first polled.
    pub fn watch(&self) -> Watch {
        Watch::new(self, Vec::new(), String::new(), None)
    }

    /// Waits until every ingestion has ended; returns them in the order given (each id once).
    ///
    /// `timeout`: `None` is the client's [`wait_timeout`](ClientBuilder::wait_timeout). When
    /// it passes first, the error is `DeadlineExceeded` with a
    /// [`wait_timeout`](Error::wait_timeout) saying what finished and what is pending.
    pub async fn wait_for<S: Into<String>>(
        &self,
        ingestion_ids: impl IntoIterator<Item = S>,
        timeout: Option<Duration>,
    ) -> Result<Vec<Ingestion>, Error> {
        let timeout = timeout.or(self.settings.wait_timeout);
        crate::watch::wait_for(self, ingestion_ids, deadline_after(timeout)).await
    }

    // Searching.

    /// The chunks closest in meaning to `query`, best first; options on the returned
    /// [`Search`] (10 hits unless [`top_k`](Search::top_k) says otherwise).
    pub fn search(&self, query: impl Into<String>) -> Search<'_> {
        Search {
            client: self,
            query: query.into(),
            top_k: 10,
            filters: HashMap::new(),
            timeout: None,
        }
    }

    // Schemas.

    /// Registers a version of a document schema (or returns the equal one registered).
    /// `FailedPrecondition`, with the reasons as precondition violations of type
    /// `COMPATIBILITY`, when it is incompatible with the earlier versions.
    pub async fn register_schema(
        &self,
        name: impl Into<String>,
        definition: impl Into<String>,
    ) -> Result<Schema, Error> {
        let message = proto::RegisterSchemaRequest {
            name: name.into(),
            definition: definition.into(),
        };
        let response = self
            .unary(
                "RegisterSchema",
                message,
                self.timeout(None, false),
                |c, r| async move { SchemaServiceClient::new(c).register_schema(r).await },
            )
            .await?;
        Ok(response.schema.unwrap_or_default().into())
    }

    /// One version of a schema (0: the latest).
    pub async fn get_schema(&self, name: impl Into<String>, version: i32) -> Result<Schema, Error> {
        self.get_schema_request(proto::GetSchemaRequest {
            name: name.into(),
            version,
            id: 0,
        })
        .await
    }

    /// A schema by its registry id (one of the tenant's).
    pub async fn get_schema_by_id(&self, id: u32) -> Result<Schema, Error> {
        self.get_schema_request(proto::GetSchemaRequest {
            id,
            ..Default::default()
        })
        .await
    }

    async fn get_schema_request(&self, message: proto::GetSchemaRequest) -> Result<Schema, Error> {
        let schema = self
            .unary(
                "GetSchema",
                message,
                self.timeout(None, false),
                |c, r| async move { SchemaServiceClient::new(c).get_schema(r).await },
            )
            .await?;
        Ok(schema.into())
    }

    /// The names of the tenant's schemas, sorted.
    pub async fn list_schemas(&self) -> Result<Vec<String>, Error> {
        let message = proto::ListSchemasRequest {};
        let response = self
            .unary(
                "ListSchemas",
                message,
                self.timeout(None, false),
                |c, r| async move { SchemaServiceClient::new(c).list_schemas(r).await },
            )
            .await?;
        Ok(response.names)
    }

    /// The live versions of a schema, ascending.
    pub async fn list_schema_versions(&self, name: impl Into<String>) -> Result<Vec<i32>, Error> {
        let message = proto::ListSchemaVersionsRequest { name: name.into() };
        let response = self
            .unary(
                "ListSchemaVersions",
                message,
                self.timeout(None, false),
                |c, r| async move { SchemaServiceClient::new(c).list_schema_versions(r).await },
            )
            .await?;
        Ok(response.versions)
    }

    /// Whether a definition could be registered as the next version of `name`, and if not,
    /// why.
    pub async fn check_compatibility(
        &self,
        name: impl Into<String>,
        definition: impl Into<String>,
    ) -> Result<Compatibility, Error> {
        let message = proto::CheckCompatibilityRequest {
            name: name.into(),
            definition: definition.into(),
        };
        let response = self
            .unary(
                "CheckCompatibility",
                message,
                self.timeout(None, false),
                |c, r| async move { SchemaServiceClient::new(c).check_compatibility(r).await },
            )
            .await?;
        Ok(Compatibility {
            compatible: response.compatible,
            reasons: response.reasons,
        })
    }
}

/// One document to ingest ([`Client::ingest`]): set options, then `.await` it.
#[must_use = "a request does nothing until awaited"]
pub struct Ingest<'c> {
    client: &'c Client,
    document: Result<Document, Error>,
    wait: bool,
    idempotency_key: Option<String>,
    timeout: Option<Option<Duration>>,
}

impl<'c> Ingest<'c> {
    fn new(client: &'c Client, document: Result<Document, Error>) -> Self {
        Self {
            client,
            document,
            wait: false,
            idempotency_key: None,
            timeout: None,
        }
    }

    fn map(mut self, change: impl FnOnce(Document) -> Result<Document, Error>) -> Self {
        self.document = self.document.and_then(change);
        self
    }

    /// Adds an attribute (stored with every chunk, usable as a search filter).
    pub fn attribute(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.map(|d| Ok(d.with_attribute(key, value)))
    }

    /// Adds attributes.
    pub fn attributes<K: Into<String>, V: Into<String>>(
        self,
        attributes: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.map(|d| Ok(d.with_attributes(attributes)))
    }

    /// The tenant's schema the fields are written in (default: the gateway's, `document`).
    pub fn schema(self, name: impl Into<String>) -> Self {
        self.map(|d| Ok(d.with_schema(name)))
    }

    /// Which version of the schema (0, the default: the latest).
    pub fn schema_version(self, version: i32) -> Self {
        self.map(|d| Ok(d.with_schema_version(version)))
    }

    /// The schema's Avro definition (e.g. [`Schema::definition`]): unions are then written
    /// as Avro's `{"<type>": value}`.
    pub fn avro_schema(self, definition: &str) -> Self {
        self.map(|d| d.with_avro_schema(definition))
    }

    /// Return only once the document is indexed or failed (within the client's
    /// [`wait_timeout`](ClientBuilder::wait_timeout), unless [`timeout`](Self::timeout)
    /// says otherwise). When that passes first: `DeadlineExceeded`, with the
    /// [`ingestion_id`](Error::ingestion_id) to keep following.
    pub fn wait(mut self, wait: bool) -> Self {
        self.wait = wait;
        self
    }

    /// Your own idempotency key (at most 256 bytes), to make your own retries safe too; by
    /// default a fresh one, the same on each of the client's retries.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// This call's deadline, retries included (`None`: none).
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = Some(timeout.into());
        self
    }

    /// Sends it (what `.await` does).
    pub async fn send(self) -> Result<Ingestion, Error> {
        let message = proto::IngestRequest {
            document: Some(document_message(&self.document?)?),
            idempotency_key: self.idempotency_key.unwrap_or_else(new_key),
            wait: self.wait,
        };
        let client = self.client;
        let response = client
            .unary(
                "Ingest",
                message,
                client.timeout(self.timeout, self.wait),
                |c, r| async move { IngestServiceClient::new(c).ingest(r).await },
            )
            .await?;
        Ok(response.ingestion.unwrap_or_default().into())
    }
}

impl<'c> IntoFuture for Ingest<'c> {
    type Output = Result<Ingestion, Error>;
    type IntoFuture = BoxFuture<'c, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// Documents to ingest in batches ([`Client::ingest_many`]): set options, then `.await` it.
#[must_use = "a request does nothing until awaited"]
pub struct IngestMany<'c> {
    client: &'c Client,
    documents: Vec<Document>,
    batch_size: Option<usize>,
    wait: bool,
    timeout: Option<Option<Duration>>,
}

impl<'c> IngestMany<'c> {
    /// Documents per IngestBatch call (default the client's; 0 is taken as 1).
    pub fn batch_size(mut self, documents: usize) -> Self {
        self.batch_size = Some(documents.max(1));
        self
    }

    /// Return the ingestions once all have ended (within the client's
    /// [`wait_timeout`](ClientBuilder::wait_timeout), unless [`timeout`](Self::timeout)
    /// says otherwise; see [`Client::wait_for`]).
    pub fn wait(mut self, wait: bool) -> Self {
        self.wait = wait;
        self
    }

    /// The deadline of each IngestBatch call, and of the wait (`None`: none).
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = Some(timeout.into());
        self
    }

    /// Sends it (what `.await` does).
    pub async fn send(self) -> Result<Vec<Ingestion>, Error> {
        let client = self.client;
        let settings = client.settings();
        let size = self.batch_size.unwrap_or(settings.batch_size);
        let messages = self
            .documents
            .iter()
            .map(document_message)
            .collect::<Result<Vec<_>, _>>()?;
        let mut accepted: Vec<Ingestion> = Vec::with_capacity(messages.len());
        for batch in batches(messages, size, settings.max_batch_bytes) {
            let message = proto::IngestBatchRequest {
                documents: batch,
                idempotency_key: new_key(),
            };
            let timeout = client.timeout(self.timeout, false);
            let response = client
                .unary("IngestBatch", message, timeout, |c, r| async move {
                    IngestServiceClient::new(c).ingest_batch(r).await
                })
                .await;
            match response {
                Ok(response) => {
                    accepted.extend(response.ingestions.into_iter().map(Ingestion::from))
                }
                Err(error) => return Err(error.with_accepted(accepted)),
            }
        }
        if !self.wait {
            return Ok(accepted);
        }
        let timeout = client.timeout(self.timeout, true);
        let ids = accepted.iter().map(|i| i.ingestion_id.clone());
        let ended: HashMap<String, Ingestion> =
            crate::watch::wait_for(client, ids, deadline_after(timeout))
                .await?
                .into_iter()
                .map(|i| (i.ingestion_id.clone(), i))
                .collect();
        Ok(accepted
            .into_iter()
            .map(|i| ended.get(&i.ingestion_id).cloned().unwrap_or(i))
            .collect())
    }
}

impl<'c> IntoFuture for IngestMany<'c> {
    type Output = Result<Vec<Ingestion>, Error>;
    type IntoFuture = BoxFuture<'c, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A document to delete ([`Client::delete`]): set options, then `.await` it.
#[must_use = "a request does nothing until awaited"]
pub struct Delete<'c> {
    client: &'c Client,
    document_id: String,
    wait: bool,
    idempotency_key: Option<String>,
    timeout: Option<Option<Duration>>,
}

impl<'c> Delete<'c> {
    /// Return once the deletion has ended (see [`Ingest::wait`]).
    pub fn wait(mut self, wait: bool) -> Self {
        self.wait = wait;
        self
    }

    /// Your own idempotency key (see [`Ingest::idempotency_key`]).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// This call's deadline, retries included (`None`: none).
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = Some(timeout.into());
        self
    }

    /// Sends it (what `.await` does).
    pub async fn send(self) -> Result<Ingestion, Error> {
        let message = proto::DeleteDocumentRequest {
            document_id: self.document_id,
            idempotency_key: self.idempotency_key.unwrap_or_else(new_key),
            wait: self.wait,
        };
        let client = self.client;
        let timeout = client.timeout(self.timeout, self.wait);
        let response = client
            .unary("DeleteDocument", message, timeout, |c, r| async move {
                IngestServiceClient::new(c).delete_document(r).await
            })
            .await?;
        Ok(response.ingestion.unwrap_or_default().into())
    }
}

impl<'c> IntoFuture for Delete<'c> {
    type Output = Result<Ingestion, Error>;
    type IntoFuture = BoxFuture<'c, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A search ([`Client::search`]): set options, then `.await` it.
#[must_use = "a request does nothing until awaited"]
pub struct Search<'c> {
    client: &'c Client,
    query: String,
    top_k: u32,
    filters: HashMap<String, String>,
    timeout: Option<Option<Duration>>,
}

impl<'c> Search<'c> {
    /// How many chunks at most (default 10).
    pub fn top_k(mut self, top_k: u32) -> Self {
        self.top_k = top_k;
        self
    }

    /// Only chunks whose attribute `key` is `value`.
    pub fn filter(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.filters.insert(key.into(), value.into());
        self
    }

    /// Only chunks with all of these attribute values.
    pub fn filters<K: Into<String>, V: Into<String>>(
        mut self,
        filters: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.filters
            .extend(filters.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// This call's deadline, retries included (`None`: none).
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = Some(timeout.into());
        self
    }

    /// Sends it (what `.await` does).
    pub async fn send(self) -> Result<Vec<Hit>, Error> {
        let message = proto::SearchRequest {
            query: self.query,
            top_k: self.top_k,
            attribute_filter: self.filters,
        };
        let client = self.client;
        let timeout = client.timeout(self.timeout, false);
        let response = client
            .unary("Search", message, timeout, |c, r| async move {
                SearchServiceClient::new(c).search(r).await
            })
            .await?;
        Ok(response.hits.into_iter().map(Hit::from).collect())
    }
}

impl<'c> IntoFuture for Search<'c> {
    type Output = Result<Vec<Hit>, Error>;
    type IntoFuture = BoxFuture<'c, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}
