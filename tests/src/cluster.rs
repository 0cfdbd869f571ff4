//! The distributed shape as separate processes: gateway-only `sluice-gateway` instances and
//! `sluice-worker` processes, on one broker, one PostgreSQL database and a Qdrant server, on
//! mTLS (the workers read schemas through a gateway's registry API with a worker certificate,
//! and have no database). Every process can be killed (-9), stopped and started again on its
//! ports; every wait is bounded.
//!
//! A Qdrant server cannot be installed here: the tests that use a [`Cluster`] run only when
//! `SLUICE_TEST_QDRANT_URL` names one ([`qdrant_url`]), each in a collection of its own that it
//! deletes at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::search_service_client::SearchServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::{free_port, gateway_binary, model_dir, Broker, TestPki};

/// The Qdrant server's gRPC URL from `SLUICE_TEST_QDRANT_URL`, or `None` after saying loudly
/// that `test` is skipped.
pub fn qdrant_url(test: &str) -> Option<String> {
    match std::env::var("SLUICE_TEST_QDRANT_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            // Straight to the process's stderr: the test harness would swallow `eprintln!`
            // of a test that passes, and a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED {test}: no Qdrant server. Set SLUICE_TEST_QDRANT_URL to one's gRPC \
                 URL (e.g. http://127.0.0.1:6334) to run the server-store tests. ***\n"
            );
            None
        }
    }
}

/// A collection name of its own for one test run.
pub fn test_collection(test: &str) -> String {
    format!(
        "sluice_test_{test}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Deletes `collection` on the server (at the end of a test, whatever its outcome).
pub async fn drop_collection(url: &str, collection: &str) {
    let client = qdrant_client::Qdrant::from_url(url)
        .skip_compatibility_check()
        .build()
        .expect("qdrant client");
    if let Err(error) = client.delete_collection(collection).await {
        eprintln!("could not delete test collection {collection}: {error}");
    }
}

/// The `sluice-worker` binary cargo built next to this test.
pub fn worker_binary() -> PathBuf {
    gateway_binary().with_file_name("sluice-worker")
}

/// One Sluice process of a cluster: its configuration file, its ports, the child when running.
pub struct Member {
    pub name: String,
    binary: PathBuf,
    config: PathBuf,
    pub grpc: Option<u16>,
    pub health: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .env("SLUICE_MODEL_DIR", model_dir())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        self.child = Some(child);
    }

    /// kill -9: nothing finishes.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for it to exit.
    pub async fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within 60 s of SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The process's peak resident memory so far (VmHWM), in MB; `None` when not running.
    pub fn peak_rss_mb(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        crate::peak_rss_mb(&format!("/proc/{pid}/status"))
    }

    /// Waits (bounded) until its health port answers `path` with 200.
    pub async fn wait_for(&self, path: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let (code, body) =
                crate::http_get(&format!("http://127.0.0.1:{}{path}", self.health)).await;
            if code == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not answering {path} within {limit:?} (last: {code} {body}); log:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Gateways and workers as processes, on one broker, database and Qdrant collection.
pub struct Cluster {
    pub dir: PathBuf,
    pub broker: Broker,
    pub pki: TestPki,
    pub database_url: String,
    pub qdrant_url: String,
    pub collection: String,
    /// Where workers reach the Qdrant server (a [`Proxy`] in the outage test).
    pub worker_store_url: String,
    pub gateways: Vec<Member>,
    pub workers: Vec<Member>,
}

impl Cluster {
    /// The shared parts; no Sluice process yet.
    pub async fn new(dir: &Path, qdrant_url: &str, collection: &str) -> Cluster {
        let broker = Broker::start().await;
        let pki = TestPki::create(&dir.join("tls"));
        Cluster {
            dir: dir.to_owned(),
            broker,
            pki,
            database_url: sluice_core::db::testing::fresh_postgres_database().await,
            qdrant_url: qdrant_url.to_owned(),
            collection: collection.to_owned(),
            worker_store_url: qdrant_url.to_owned(),
            gateways: Vec::new(),
            workers: Vec::new(),
        }
    }

    /// What every process shares: broker, database, store, the tenant registry's refresh.
    fn common(&self) -> String {
        format!(
            r#"
data_dir = "{data}"
[database]
url = "{database}"
[kafka]
bootstrap_servers = "{bootstrap}"
[kafka.properties]
# A killed member holds its partitions until its session times out.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
[vector_store]
kind = "qdrant"
url = "{qdrant}"
collection = "{collection}"
"#,
            data = self.dir.join("data").display(),
            database = self.database_url,
            bootstrap = self.broker.bootstrap(),
            qdrant = self.qdrant_url,
            collection = self.collection,
        )
    }

    /// Adds (and starts) a gateway-only process on mTLS; returns its index.
    pub async fn add_gateway(&mut self) -> usize {
        let n = self.gateways.len();
        let name = format!("gateway-{n}");
        let (grpc, health) = (free_port(), free_port());
        let tls = &self.pki.dir;
        let config = self.dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"{common}
[gateway]
listen = "127.0.0.1:{grpc}"
health_listen = "127.0.0.1:{health}"
instance_id = "{name}"
[tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
trust_domain = "{domain}"
"#,
                common = self.common(),
                cert = tls.join("server.pem").display(),
                key = tls.join("server-key.pem").display(),
                ca = tls.join("ca.pem").display(),
                domain = self.pki.trust_domain,
            ),
        )
        .unwrap();
        let mut member = Member {
            name: name.clone(),
            binary: gateway_binary(),
            config,
            grpc: Some(grpc),
            health,
            log: self.dir.join(format!("{name}.log")),
            child: None,
        };
        member.start();
        member.wait_for("/readyz", Duration::from_secs(120)).await;
        self.gateways.push(member);
        n
    }

    /// Adds (and starts) a `sluice-worker` that reads schemas through gateway 0's registry API
    /// with a worker certificate of its own, and has no database; returns its index.
    pub async fn add_worker(&mut self) -> usize {
        let n = self.workers.len();
        let name = format!("worker-{n}");
        let health = free_port();
        let issued = self.pki.worker(&name);
        let cert = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        let registry = self
            .gateways
            .first()
            .and_then(|g| g.grpc)
            .expect("a gateway first");
        let config = self.dir.join(format!("{name}.toml"));
        // No [database]: a worker must not need it (the common part's is overridden by an
        // address that cannot be reached, so using it would fail the test).
        let common = self
            .common()
            .replace(
                &format!("url = \"{}\"", self.database_url),
                "url = \"postgres://no-database-for-workers.invalid/none\"",
            )
            .replace(
                &format!("url = \"{}\"", self.qdrant_url),
                &format!("url = \"{}\"", self.worker_store_url),
            );
        std::fs::write(
            &config,
            format!(
                r#"{common}
[worker]
instance_id = "{name}"
health_listen = "127.0.0.1:{health}"
retry_initial_ms = 50
[schemas]
url = "https://localhost:{registry}"
ca = "{ca}"
client_cert = "{cert}"
client_key = "{key}"
"#,
                ca = self.pki.dir.join("ca.pem").display(),
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .unwrap();
        let mut member = Member {
            name: name.clone(),
            binary: worker_binary(),
            config,
            grpc: None,
            health,
            log: self.dir.join(format!("{name}.log")),
            child: None,
        };
        member.start();
        member.wait_for("/livez", Duration::from_secs(120)).await;
        self.workers.push(member);
        n
    }

    /// The Kafka configuration every process has (topic names, the broker).
    pub fn kafka(&self) -> sluice_core::config::KafkaConfig {
        sluice_core::config::KafkaConfig {
            bootstrap_servers: self.broker.bootstrap(),
            ..Default::default()
        }
    }

    /// A channel to gateway `n` acting for `tenant` (a fresh client certificate).
    pub async fn channel(&self, n: usize, tenant: &str) -> Channel {
        let issued = self.pki.client(tenant);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.pki.ca.cert_pem()))
            .domain_name("localhost")
            .identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem));
        let port = self.gateways[n].grpc.expect("a gateway");
        Channel::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .timeout(Duration::from_secs(60))
            .connect_lazy()
    }

    pub async fn ingest_client(&self, n: usize, tenant: &str) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel(n, tenant).await)
    }

    pub async fn search_client(&self, n: usize, tenant: &str) -> SearchServiceClient<Channel> {
        SearchServiceClient::new(self.channel(n, tenant).await)
    }

    /// Registers `tenant` (the gateways read the registry within their refresh interval).
    pub async fn create_tenant(&self, tenant: &str) {
        let db = sluice_core::db::connect(&self.database_url).await.unwrap();
        sluice_core::tenants::Tenants::new(db)
            .create_tenant(
                "tests",
                &crate::tenant_id(tenant),
                tenant,
                sluice_core::tenants::Quotas {
                    documents_per_second: 100_000,
                    bytes_per_second: 1 << 30,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }

    /// Stops every process (workers first, so they finish their batches), then the collection.
    pub async fn shutdown(mut self) {
        for worker in &mut self.workers {
            worker.terminate().await;
        }
        for gateway in &mut self.gateways {
            gateway.terminate().await;
        }
        drop_collection(&self.qdrant_url, &self.collection).await;
    }
}

/// A loopback TCP proxy in front of a server (the Qdrant server, in the outage test): cutting
/// it refuses new connections and drops the open ones, as a stopped server does; restoring it
/// listens on the same port again.
pub struct Proxy {
    pub port: u16,
    target: String,
    cut: Option<tokio_util::sync::CancellationToken>,
}

impl Proxy {
    /// A proxy to `url` (`http://host:port`); serving at once.
    pub async fn start(url: &str) -> Proxy {
        let target = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_owned();
        let mut proxy = Proxy {
            port: free_port(),
            target,
            cut: None,
        };
        proxy.restore().await;
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Refuses and drops every connection until [`Proxy::restore`].
    pub fn cut(&mut self) {
        if let Some(cut) = self.cut.take() {
            cut.cancel();
        }
    }

    pub async fn restore(&mut self) {
        let cut = tokio_util::sync::CancellationToken::new();
        let listener = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                    Ok(listener) => break listener,
                    Err(error) if Instant::now() < deadline => {
                        eprintln!("proxy port {} not free yet: {error}", self.port);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(error) => panic!("proxy cannot listen on {}: {error}", self.port),
                }
            }
        };
        let target = self.target.clone();
        let stop = cut.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                };
                let (target, stop) = (target.clone(), stop.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        self.cut = Some(cut);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}
