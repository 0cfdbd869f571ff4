//! Sluice standalone as a process of its own, for tests that kill it or give it its own
//! environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_core::proto::ingest_service_client::IngestServiceClient;
use tonic::transport::Channel;

use crate::{free_port, model_dir, Broker};

/// The `sluice-gateway` binary cargo built next to this test.
pub fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("sluice-gateway");
    assert!(
        path.exists(),
        "{} missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// Sluice standalone (`sluice-gateway --standalone`) as its own process, restartable on the
/// same port and data.
pub struct GatewayProcess {
    /// Extra environment for the process (e.g. `OTEL_*`).
    pub env: Vec<(String, String)>,
    config: PathBuf,
    grpc: String,
    child: Option<Child>,
}

impl GatewayProcess {
    pub fn new(dir: &Path, broker: &Broker) -> Self {
        let grpc = format!("127.0.0.1:{}", free_port());
        let config = dir.join("sluice.toml");
        std::fs::write(
            &config,
            format!(
                r#"
data_dir = "{data}"
[kafka]
bootstrap_servers = "{bootstrap}"
[kafka.properties]
# A killed member holds its partitions until its session times out.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
[gateway]
listen = "{grpc}"
health_listen = "127.0.0.1:{health}"
dev_tenant_header = true
instance_id = "faults-gateway"
[worker]
instance_id = "faults-worker"
retry_initial_ms = 20
"#,
                data = dir.join("data").display(),
                bootstrap = broker.bootstrap(),
                health = free_port(),
            ),
        )
        .unwrap();
        Self {
            env: Vec::new(),
            config,
            grpc,
            child: None,
        }
    }

    pub fn start(&mut self) {
        let child = Command::new(gateway_binary())
            .args(["--standalone", "--config"])
            .arg(&self.config)
            .env("SLUICE_MODEL_DIR", model_dir())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sluice-gateway --standalone");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then the exit status (within `limit`).
    pub async fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {limit:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn client(&self) -> IngestServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        IngestServiceClient::new(channel)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A process's peak resident memory (VmHWM) in MB, from its `/proc/<pid>/status` file.
pub fn peak_rss_mb(status_file: &str) -> Option<f64> {
    let status = std::fs::read_to_string(status_file).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
