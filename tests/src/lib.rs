//! The test harness: real parts, started for one test and stopped when it ends.
//!
//! # Layout
//! - [`Broker`]: a nisshi Kafka broker process on a free loopback port (in-memory storage, or
//!   SQLite on disk for restart tests).
//! - [`Database`]: SQLite in a temporary directory, or a fresh PostgreSQL database.
//! - [`Stack`]: broker + database + Sluice standalone (gateway and worker in this process, the
//!   real model, the embedded vector store), with gRPC clients that act for a tenant: through
//!   the development header ([`Stack::start`]) or over mTLS ([`Stack::start_tls`]).
//! - [`TestPki`]: a CA, the gateway's certificate and client certificates, made with rcgen.
//! - Tool paths ([`grpcurl`]) and small helpers to build documents and wait for events.
//!
//! Everything it needs is installed by `deploy/dev/install` (the test command runs it first);
//! a missing piece fails the test with the command that installs it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sluice_core::config::Config;
use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::search_service_client::SearchServiceClient;
use sluice_core::proto::{document::Payload, Document, Ingestion, IngestionState};
use sluice_core::tenant::TenantId;
use sluice_core::tenants::{Quotas, Tenants};
use sluice_gateway::standalone::Standalone;
use sluice_gateway::tenancy::pki::{Authority, CertSpec, Issued};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Where `deploy/dev/install` caches things.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SLUICE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/sluice")
        })
}

fn installed(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} not found at {}: run deploy/dev/install",
        path.display()
    );
    path
}

pub fn nisshi() -> PathBuf {
    installed(cache_dir().join("nisshi/bin/nisshi"), "the nisshi broker")
}

pub fn grpcurl() -> PathBuf {
    installed(cache_dir().join("bin/grpcurl"), "grpcurl")
}

pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("SLUICE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("model"));
    installed(dir, "the all-MiniLM-L6-v2 model")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A nisshi broker process, killed when dropped.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    storage: String,
    workdir: PathBuf,
}

impl Broker {
    /// A broker keeping everything in memory.
    pub async fn start() -> Broker {
        Self::start_with(
            format!("memory://sluice-{}/", uuid::Uuid::new_v4().simple()),
            std::env::temp_dir(),
            free_port(),
        )
        .await
    }

    /// A broker persisting to SQLite under `dir`, so it can be restarted with its data.
    pub async fn start_persistent(dir: &Path) -> Broker {
        // nisshi resolves sqlite paths against its working directory.
        Self::start_with("sqlite://broker.db".into(), dir.to_owned(), free_port()).await
    }

    async fn start_with(storage: String, workdir: PathBuf, port: u16) -> Broker {
        let mut broker = Broker {
            child: None,
            port,
            storage,
            workdir,
        };
        broker.spawn().await;
        broker
    }

    async fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(nisshi())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args([
                "--storage-engine",
                &self.storage,
                "--group-initial-rebalance-delay",
                "100ms",
            ])
            .current_dir(&self.workdir)
            .env(
                "RUST_LOG",
                std::env::var("NISSHI_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nisshi");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nisshi did not listen on {} within 30 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same broker again, on the same port and storage.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which database a stack uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    Sqlite,
    Postgres,
}

impl Database {
    async fn url(self, data_dir: &Path) -> String {
        match self {
            Database::Sqlite => {
                format!("sqlite://{}?mode=rwc", data_dir.join("sluice.db").display())
            }
            Database::Postgres => sluice_core::db::testing::fresh_postgres_database().await,
        }
    }
}

/// The configuration a test stack runs with: loopback ports, a temporary data dir.
pub async fn test_config(broker: &Broker, data_dir: &Path, database: Database) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    config.kafka.bootstrap_servers = broker.bootstrap();
    config.gateway.listen = "127.0.0.1:0".parse().unwrap();
    config.gateway.health_listen = "127.0.0.1:0".parse().unwrap();
    config.gateway.dev_tenant_header = true;
    config.gateway.instance_id = format!("test-{}", uuid::Uuid::new_v4().simple());
    config.worker.instance_id = format!("test-{}", uuid::Uuid::new_v4().simple());
    config.worker.retry_initial_ms = 20;
    config.database.url = Some(database.url(data_dir).await);
    config.model.dir = model_dir();
    config
}

/// Broker + Sluice standalone, for one test.
pub struct Stack {
    pub standalone: Option<Standalone>,
    pub config: Config,
    pub broker: Broker,
    pub data_dir: tempfile::TempDir,
    /// Set by [`Stack::start_tls`].
    pub pki: Option<TestPki>,
}

impl Stack {
    /// Development mode: plaintext, tenants from the `x-sluice-tenant` header ([`as_tenant`]).
    pub async fn start(database: Database) -> Stack {
        let (broker, data_dir, config) = Self::prepare(database).await;
        Self::launch(broker, data_dir, config, None).await
    }

    /// mTLS, as in production: `tenants` are registered (active, default quotas) and
    /// [`Stack::client_channel`] connects with a certificate for one of them.
    pub async fn start_tls(database: Database, tenants: &[&str]) -> Stack {
        let (broker, data_dir, mut config) = Self::prepare(database).await;
        let pki = TestPki::create(&data_dir.path().join("tls"));
        config.gateway.dev_tenant_header = false;
        config.tls.cert = Some(pki.dir.join("server.pem"));
        config.tls.key = Some(pki.dir.join("server-key.pem"));
        config.tls.client_ca = Some(pki.dir.join("ca.pem"));
        config.tls.reload_interval_ms = 200;
        config.registry.refresh_interval_ms = 200;
        let registry = open_tenants(&config).await;
        for tenant in tenants {
            registry
                .create_tenant("tests", &tenant_id(tenant), tenant, Quotas::default())
                .await
                .expect("create tenant");
        }
        Self::launch(broker, data_dir, config, Some(pki)).await
    }

    /// Like [`Stack::start`], with the configuration changed by `configure` first.
    pub async fn start_configured(
        database: Database,
        configure: impl FnOnce(&mut Config),
    ) -> Stack {
        let (broker, data_dir, mut config) = Self::prepare(database).await;
        configure(&mut config);
        Self::launch(broker, data_dir, config, None).await
    }

    /// Like [`Stack::start`], with a broker that keeps its data on disk, so that
    /// `stack.broker.restart()` brings it back with everything committed.
    pub async fn start_with_persistent_broker(database: Database) -> Stack {
        init_logs();
        let data_dir = tempfile::tempdir().expect("tempdir");
        let broker = Broker::start_persistent(data_dir.path()).await;
        let config = test_config(&broker, data_dir.path(), database).await;
        Self::launch(broker, data_dir, config, None).await
    }

    /// A broker, a data dir and the test configuration for them.
    async fn prepare(database: Database) -> (Broker, tempfile::TempDir, Config) {
        init_logs();
        let broker = Broker::start().await;
        let data_dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(&broker, data_dir.path(), database).await;
        (broker, data_dir, config)
    }

    async fn launch(
        broker: Broker,
        data_dir: tempfile::TempDir,
        config: Config,
        pki: Option<TestPki>,
    ) -> Stack {
        let standalone = Standalone::start(&config)
            .await
            .expect("start sluice standalone");
        Stack {
            standalone: Some(standalone),
            config,
            broker,
            data_dir,
            pki,
        }
    }

    pub fn pki(&self) -> &TestPki {
        self.pki.as_ref().expect("started with start_tls")
    }

    /// A channel presenting `identity` (None: no client certificate); the error when the
    /// gateway refuses the handshake.
    pub async fn tls_channel(
        &self,
        identity: Option<&Issued>,
    ) -> Result<Channel, tonic::transport::Error> {
        self.tls_channel_with_ca(&self.pki().ca.cert_pem(), identity)
            .await
    }

    /// Like [`Stack::tls_channel`], trusting `ca_pem` for the gateway's certificate.
    pub async fn tls_channel_with_ca(
        &self,
        ca_pem: &str,
        identity: Option<&Issued>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        if let Some(issued) = identity {
            tls = tls.identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem));
        }
        Channel::from_shared(format!("https://{}", self.standalone().gateway.grpc_addr))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await
    }

    /// A channel acting for `tenant`, with a fresh certificate naming it (SPIFFE URI SAN).
    pub async fn client_channel(&self, tenant: &str) -> Channel {
        let issued = self.pki().client(tenant);
        self.tls_channel(Some(&issued))
            .await
            .expect("mTLS connection")
    }

    /// The tenant registry in this stack's database (for changing tenants under a running
    /// gateway).
    pub async fn tenants(&self) -> Tenants {
        open_tenants(&self.config).await
    }

    pub fn standalone(&self) -> &Standalone {
        self.standalone.as_ref().expect("running")
    }

    pub fn standalone_mut(&mut self) -> &mut Standalone {
        self.standalone.as_mut().expect("running")
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.standalone().gateway.grpc_addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc_url())
            .unwrap()
            .connect()
            .await
            .expect("connect to the gateway")
    }

    pub async fn ingest_client(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel().await)
    }

    pub async fn search_client(&self) -> SearchServiceClient<Channel> {
        SearchServiceClient::new(self.channel().await)
    }

    /// Stops Sluice gracefully and starts it again on the same broker, database and data dir
    /// (a new gRPC port: reconnect after).
    pub async fn restart(&mut self) {
        if let Some(standalone) = self.standalone.take() {
            standalone.shutdown().await;
        }
        self.standalone = Some(
            Standalone::start(&self.config)
                .await
                .expect("restart sluice standalone"),
        );
    }

    pub async fn shutdown(mut self) {
        if let Some(standalone) = self.standalone.take() {
            standalone.shutdown().await;
        }
    }
}

fn init_logs() {
    sluice_core::telemetry::init(&sluice_core::config::LogConfig {
        filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        ..Default::default()
    });
}

async fn open_tenants(config: &Config) -> Tenants {
    let db = sluice_core::db::connect(&config.database_url())
        .await
        .expect("database");
    Tenants::new(db)
}

pub fn tenant_id(id: &str) -> TenantId {
    TenantId::parse(id).expect("valid tenant id")
}

/// A CA (written to `ca.pem`, the gateway's client CA bundle), the gateway's certificate
/// (`server.pem`, `server-key.pem`, for localhost and 127.0.0.1) and client certificates.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: Authority,
    pub trust_domain: String,
}

impl TestPki {
    pub fn create(dir: &Path) -> TestPki {
        std::fs::create_dir_all(dir).expect("tls dir");
        let pki = TestPki {
            dir: dir.to_owned(),
            ca: Authority::generate("Sluice test CA", Duration::from_secs(86_400)).expect("CA"),
            trust_domain: "sluice.local".into(),
        };
        pki.install(&pki.ca);
        pki
    }

    /// Makes `ca` the gateway's client CA and has it sign a new server certificate; the
    /// gateway picks both up on its next reload.
    pub fn install(&self, ca: &Authority) {
        let server = ca
            .issue(&CertSpec::server(
                &["localhost", "127.0.0.1"],
                Duration::from_secs(86_400),
            ))
            .expect("server certificate");
        // The key first, the bundle last: a reload seeing half of it keeps the old files.
        std::fs::write(self.dir.join("server-key.pem"), &server.key_pem).unwrap();
        std::fs::write(self.dir.join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(self.dir.join("ca.pem"), ca.cert_pem()).unwrap();
    }

    /// A client certificate for `tenant` (URI SAN spiffe://sluice.local/tenant/<tenant>).
    pub fn client(&self, tenant: &str) -> Issued {
        self.ca
            .issue(&CertSpec::client_for_tenant(
                &self.trust_domain,
                &tenant_id(tenant),
                Duration::from_secs(3600),
            ))
            .expect("client certificate")
    }
}

/// A request acting for `tenant` (development-mode header).
pub fn as_tenant<T>(tenant: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        sluice_gateway::tenancy::auth::TENANT_HEADER,
        tenant.parse().expect("ascii tenant"),
    );
    request
}

/// A document in the default schema, as Avro JSON.
pub fn document(id: &str, title: &str, text: &str) -> Document {
    let json = serde_json::json!({ "title": title, "text": text, "source": "tests" });
    Document {
        document_id: id.into(),
        payload: Some(Payload::AvroJson(json.to_string())),
        ..Default::default()
    }
}

pub fn state(ingestion: &Ingestion) -> IngestionState {
    IngestionState::try_from(ingestion.state).unwrap_or(IngestionState::Unspecified)
}

/// The google.rpc.BadRequest field paths of an INVALID_ARGUMENT status.
pub fn bad_request_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Every committed record of `topic`, read from the beginning (bounded: stops once nothing new
/// arrives for two seconds, or after 20 s).
pub async fn read_topic(
    kafka: &sluice_core::config::KafkaConfig,
    topic: &str,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let config = sluice_core::kafka::client_config(
        kafka,
        &[
            (
                "group.id",
                &format!("reader-{}", uuid::Uuid::new_v4().simple()),
            ),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
            ("enable.auto.commit", "false"),
        ],
    );
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        let mut records = Vec::new();
        let started = std::time::Instant::now();
        let mut last = std::time::Instant::now();
        while last.elapsed() < Duration::from_secs(2) && started.elapsed() < Duration::from_secs(20)
        {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                records.push(message.detach());
                last = std::time::Instant::now();
            }
        }
        records.sort_by_key(|m| (m.partition(), m.offset()));
        records
    })
    .await
    .expect("reader task")
}

/// Asks GetIngestion (as `tenant`, through the development header) until the ingestion has
/// ended; panics after `timeout`.
pub async fn ended(
    ingest: &IngestServiceClient<Channel>,
    tenant: &str,
    ingestion_id: &str,
    timeout: Duration,
) -> Ingestion {
    eventually(ingestion_id, timeout, || {
        let mut ingest = ingest.clone();
        let request = as_tenant(
            tenant,
            sluice_core::proto::GetIngestionRequest {
                ingestion_id: ingestion_id.to_owned(),
            },
        );
        async move {
            let ingestion = ingest.get_ingestion(request).await.ok()?.into_inner();
            (state(&ingestion) != IngestionState::Accepted).then_some(ingestion)
        }
    })
    .await
}

/// Asserts that each of `documents` has exactly `points` points in the store.
pub async fn assert_points(
    store: &dyn sluice_core::vector::VectorStore,
    tenant: &str,
    documents: impl IntoIterator<Item = String>,
    points: u64,
) {
    for document in documents {
        let count = store
            .count_document(tenant, &document)
            .await
            .expect("count points");
        assert_eq!(count, points, "points of {document}");
    }
}

/// How long to wait before retrying a call refused over the tenant's rate
/// (RESOURCE_EXHAUSTED), as its google.rpc.RetryInfo advises; `None` for any other refusal.
pub fn rate_retry_delay(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    (status.code() == tonic::Code::ResourceExhausted).then(|| {
        status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
            .unwrap_or(Duration::from_millis(100))
    })
}

/// Polls `check` until it returns Some, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
