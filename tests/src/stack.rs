//! Broker + database + Sluice standalone (gateway and worker in this process, the real model,
//! the embedded vector store), with gRPC clients that act for a tenant.

use std::path::Path;

use sluice_core::config::Config;
use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::search_service_client::SearchServiceClient;
use sluice_core::tenant::TenantId;
use sluice_core::tenants::{Quotas, Tenants};
use sluice_gateway::standalone::Standalone;
use sluice_gateway::tenancy::pki::Issued;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::broker::Broker;
use crate::certificates::TestPki;
use crate::tools::model_dir;

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
    config.worker.health_listen = "127.0.0.1:0".parse().unwrap();
    // Stacks share the process's metrics recorder: every test's tenants keep their names.
    config.metrics.max_tenant_labels = 100_000;
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
        Self::start_tls_configured(database, tenants, |_| {}).await
    }

    /// Like [`Stack::start_tls`], with the configuration changed by `configure` last.
    pub async fn start_tls_configured(
        database: Database,
        tenants: &[&str],
        configure: impl FnOnce(&mut Config),
    ) -> Stack {
        let (broker, data_dir, mut config) = Self::prepare(database).await;
        let pki = TestPki::create(&data_dir.path().join("tls"));
        config.gateway.dev_tenant_header = false;
        config.tls.cert = Some(pki.dir.join("server.pem"));
        config.tls.key = Some(pki.dir.join("server-key.pem"));
        config.tls.client_ca = Some(pki.dir.join("ca.pem"));
        config.tls.reload_interval_ms = 200;
        config.tenants.refresh_interval_ms = 200;
        let registry = open_tenants(&config).await;
        for tenant in tenants {
            registry
                .create_tenant("tests", &tenant_id(tenant), tenant, Quotas::default())
                .await
                .expect("create tenant");
        }
        configure(&mut config);
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
        // As `Config::load` does for the binaries.
        let config = config.with_derived_limits();
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

    /// Registers `tenant` with rates far above what a test sends (the default 100 documents
    /// per second would refuse a test's batches), and waits until the gateway has read it.
    pub async fn generous_tenant(&self, tenant: &str) {
        self.tenants()
            .await
            .create_tenant(
                "tests",
                &tenant_id(tenant),
                tenant,
                Quotas {
                    documents_per_second: 100_000,
                    bytes_per_second: 1 << 30,
                    ..Quotas::default()
                },
            )
            .await
            .expect("create the tenant");
        tokio::time::sleep(std::time::Duration::from_millis(
            2 * self.config.tenants.refresh_interval_ms + 500,
        ))
        .await;
    }

    /// A worker of the stack's group beside the standalone one, sharing its model, store and
    /// schemas (`instance` keeps its transactional id apart). Spawn it to start it.
    pub fn worker(&self, instance: &str) -> sluice_worker::Worker {
        let shared = &self.standalone().shared;
        let mut settings = self.config.worker.clone();
        settings.instance_id = format!("{instance}-{}", uuid::Uuid::new_v4().simple());
        let indexer = sluice_worker::indexer_for(
            &self.config,
            shared.schemas.clone(),
            shared.embedder.clone(),
            shared.store.clone(),
        )
        .expect("an indexer");
        sluice_worker::Worker::new(self.config.kafka.clone(), settings, indexer)
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

    /// The Rust SDK's client acting for `tenant` (development header), for tests that use
    /// the API as a tenant developer would rather than test its wire contract.
    pub fn client(&self, tenant: &str) -> sluice_client::Client {
        sluice_client::Client::builder(self.grpc_url())
            .dev_tenant(tenant)
            .wait_timeout(std::time::Duration::from_secs(300))
            .build()
            .expect("sluice-client")
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
    sluice_core::telemetry::init(
        &sluice_core::config::LogConfig {
            filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            ..Default::default()
        },
        "sluice-tests",
    );
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
