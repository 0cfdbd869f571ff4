//! A real local Sluice stack for the integration tests, as `deploy/dev/up` starts one (and
//! as `sdk/python/tests/stack.py` does).
//!
//! A nisshi broker (SQLite storage) and `sluice-gateway --standalone` (gateway and worker,
//! the embedded database and vector store) on free loopback ports, on mTLS with a
//! development CA, the gateway's certificate and a tenant's client certificate made by
//! `sluice-admin`; all of it in one temporary directory (with a `sluice.toml` that shortens
//! the Kafka session, so that a killed worker's partitions move on in seconds). Every wait is
//! bounded; dropping the stack stops both processes.
//!
//! Where things are: `SLUICE_CACHE` (default `~/.cache/sluice`) has the broker
//! (`nisshi/bin/nisshi`); `SLUICE_BIN_DIR` (default `$CARGO_TARGET_DIR/debug`, itself by
//! default `$SLUICE_CACHE/target`) has `sluice-gateway` and `sluice-admin`;
//! `SLUICE_MODEL_DIR` (default `$SLUICE_CACHE/model`) the embedding model. When one is
//! missing the tests fail, unless `SLUICE_SDK_REQUIRE_STACK=0`: then they are skipped, saying
//! so loudly.

#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_client::{Client, ClientBuilder, TlsCredentials};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The tools a stack runs.
#[derive(Clone, Debug)]
pub struct Tools {
    pub nisshi: PathBuf,
    pub gateway: PathBuf,
    pub admin: PathBuf,
    pub model_dir: PathBuf,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The installed tools, or why they cannot be used.
pub fn find_tools() -> Result<Tools, String> {
    let home = env_path("HOME").unwrap_or_default();
    let cache = env_path("SLUICE_CACHE").unwrap_or_else(|| home.join(".cache/sluice"));
    let target = env_path("CARGO_TARGET_DIR").unwrap_or_else(|| cache.join("target"));
    let bin_dir = env_path("SLUICE_BIN_DIR").unwrap_or_else(|| target.join("debug"));
    let tools = Tools {
        nisshi: cache.join("nisshi/bin/nisshi"),
        gateway: bin_dir.join("sluice-gateway"),
        admin: bin_dir.join("sluice-admin"),
        model_dir: env_path("SLUICE_MODEL_DIR").unwrap_or_else(|| cache.join("model")),
    };
    for path in [&tools.nisshi, &tools.gateway, &tools.admin] {
        if !executable(path) {
            return Err(format!(
                "{} is missing (deploy/dev/install installs the broker; `cargo build --workspace` the binaries)",
                path.display()
            ));
        }
    }
    if !tools.model_dir.join("model.safetensors").exists() {
        return Err(format!(
            "no model in {} (deploy/dev/install installs it)",
            tools.model_dir.display()
        ));
    }
    Ok(tools)
}

/// The tools, or `None` (printed loudly) when they are missing and
/// `SLUICE_SDK_REQUIRE_STACK=0` lets the test be skipped; otherwise a missing tool fails it.
pub fn tools_or_skip(test: &str) -> Option<Tools> {
    match find_tools() {
        Ok(tools) => Some(tools),
        Err(why) if std::env::var("SLUICE_SDK_REQUIRE_STACK").as_deref() == Ok("0") => {
            // Straight to the process's stderr: the test harness captures eprintln!, and a
            // skip has to be seen.
            let banner = "*".repeat(78);
            let _ = writeln!(
                std::io::stderr(),
                "\n{banner}\nSKIPPED {test}: the local stack cannot start: {why}\n\
                 (SLUICE_SDK_REQUIRE_STACK=0 lets it be skipped)\n{banner}\n"
            );
            None
        }
        Err(why) => panic!(
            "the local stack cannot start: {why}\n(SLUICE_SDK_REQUIRE_STACK=0 skips the stack tests instead)"
        ),
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn port_open(port: u16) -> bool {
    let connect = TcpStream::connect(("127.0.0.1", port));
    matches!(
        tokio::time::timeout(Duration::from_millis(500), connect).await,
        Ok(Ok(_))
    )
}

/// GET /healthz answers 200.
async fn healthy(port: u16) -> bool {
    let check = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        std::io::Result::Ok(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Ok(true))
    )
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(_) => "(no log)".into(),
    }
}

/// SIGTERM, then SIGKILL if it has not exited within `limit`.
fn stop(child: &mut Child, limit: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Broker + Sluice standalone on mTLS, in a fresh temporary directory.
pub struct LocalStack {
    pub tools: Tools,
    pub root: tempfile::TempDir,
    pub tenant: String,
    pub tls: PathBuf,
    pub data: PathBuf,
    pub kafka_port: u16,
    pub grpc_port: u16,
    pub health_port: u16,
    broker: Option<Child>,
    gateway: Option<Child>,
    pub gateway_starts: u32,
}

impl LocalStack {
    /// Starts a stack with tenant `demo`.
    pub async fn start(tools: Tools) -> Self {
        let root = tempfile::Builder::new()
            .prefix("sluice-sdk-rust-")
            .tempdir()
            .expect("a temporary directory");
        let mut stack = Self {
            tls: root.path().join("tls"),
            data: root.path().join("data"),
            tools,
            root,
            tenant: "demo".into(),
            kafka_port: free_port(),
            grpc_port: free_port(),
            health_port: free_port(),
            broker: None,
            gateway: None,
            gateway_starts: 0,
        };
        // What deploy/dev/up gives on the command line, plus what the tests of killing a
        // process need: a killed worker holds its partitions until its session times out.
        std::fs::write(
            stack.root.path().join("sluice.toml"),
            "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n",
        )
        .expect("sluice.toml");
        // deploy/dev/up's steps: CA, server certificate, tenant, client certificate.
        let tls = stack.tls.display().to_string();
        stack.admin(&["cert", "init-ca", "--out", &tls]).await;
        stack
            .admin(&[
                "cert",
                "server",
                "--ca-dir",
                &tls,
                "--out",
                &tls,
                "--name",
                "localhost",
                "--name",
                "127.0.0.1",
            ])
            .await;
        let tenant = stack.tenant.clone();
        stack
            .admin(&["tenant", "create", &tenant, "--name", "SDK test tenant"])
            .await;
        stack
            .admin(&["cert", "client", &tenant, "--ca-dir", &tls, "--out", &tls])
            .await;
        stack.start_broker().await;
        stack.start_gateway().await;
        stack
    }

    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// A client acting for the stack's tenant, certificates from its TLS directory.
    pub fn client(&self) -> ClientBuilder {
        let credentials =
            TlsCredentials::from_directory(&self.tls, Some(&self.tenant)).expect("credentials");
        Client::builder(self.target()).tls(credentials)
    }

    /// The environment of a child: only what this stack sets (no SLUICE_* configuration of
    /// the caller's leaks in).
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SLUICE_") {
                command.env_remove(key);
            }
        }
        command
            .current_dir(self.root.path())
            .env("SLUICE_MODEL_DIR", &self.tools.model_dir)
            .env("RUST_LOG", "info");
        command
    }

    pub async fn admin(&self, args: &[&str]) -> String {
        let data = self.data.display().to_string();
        let mut command = tokio::process::Command::from(self.command(&self.tools.admin));
        command
            .args(["--data-dir", &data, "--actor", "sdk/rust tests"])
            .args(args)
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .unwrap_or_else(|_| panic!("sluice-admin {} took over 60 s", args.join(" ")))
            .expect("run sluice-admin");
        assert!(
            output.status.success(),
            "sluice-admin {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn log(&self, name: &str) -> File {
        File::options()
            .create(true)
            .append(true)
            .open(self.root.path().join(name))
            .expect("a log file")
    }

    async fn start_broker(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.kafka_port);
        let log = self.log("broker.log");
        // nisshi resolves sqlite:// paths against its working directory.
        let child = self
            .command(&self.tools.nisshi)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://broker.db"])
            .args(["--group-initial-rebalance-delay", "100ms"])
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the broker");
        let broker = self.broker.insert(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !port_open(self.kafka_port).await {
            let exited = matches!(broker.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                panic!(
                    "the broker did not start:\n{}",
                    tail(&self.root.path().join("broker.log"), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts `sluice-gateway --standalone` and waits (at most 180 s) until it is healthy.
    pub async fn start_gateway(&mut self) {
        let started = Instant::now();
        let log = self.log("sluice.log");
        let child = self
            .command(&self.tools.gateway)
            .env("SLUICE_TLS__CERT", self.tls.join("server.pem"))
            .env("SLUICE_TLS__KEY", self.tls.join("server-key.pem"))
            .env("SLUICE_TLS__CLIENT_CA", self.tls.join("ca.pem"))
            .arg("--standalone")
            .arg("--config")
            .arg(self.root.path().join("sluice.toml"))
            .args(["--listen", &self.target()])
            .args([
                "--health-listen",
                &format!("127.0.0.1:{}", self.health_port),
            ])
            .args([
                "--bootstrap-servers",
                &format!("127.0.0.1:{}", self.kafka_port),
            ])
            .arg("--data-dir")
            .arg(&self.data)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start sluice-gateway");
        self.gateway_starts += 1;
        let log_path = self.root.path().join("sluice.log");
        let gateway = self.gateway.insert(child);
        let limit = Duration::from_secs(180);
        while !healthy(self.health_port).await {
            if let Ok(Some(status)) = gateway.try_wait() {
                panic!("sluice-gateway exited ({status}):\n{}", tail(&log_path, 40));
            }
            if started.elapsed() > limit {
                panic!(
                    "sluice-gateway not healthy within {limit:?}:\n{}",
                    tail(&log_path, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!(
            "sluice-gateway start {} healthy in {:.1} s",
            self.gateway_starts,
            started.elapsed().as_secs_f64()
        );
    }

    /// SIGTERM (graceful: in-flight calls finish, streams end UNAVAILABLE), then SIGKILL
    /// after 30 s.
    pub async fn stop_gateway(&mut self) {
        if let Some(mut gateway) = self.gateway.take() {
            tokio::task::spawn_blocking(move || stop(&mut gateway, Duration::from_secs(30)))
                .await
                .expect("stop the gateway");
        }
    }

    /// SIGKILL: no goodbye; connections are reset.
    pub fn kill_gateway(&mut self) {
        if let Some(mut gateway) = self.gateway.take() {
            gateway.kill().expect("SIGKILL the gateway");
            gateway.wait().expect("the gateway's exit");
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.root.path().join("sluice.log"), lines)
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        // The gateway first, so that it finishes its transactions while the broker is up.
        if let Some(gateway) = &mut self.gateway {
            stop(gateway, Duration::from_secs(30));
        }
        if let Some(broker) = &mut self.broker {
            stop(broker, Duration::from_secs(10));
        }
        if std::thread::panicking() {
            eprintln!(
                "sluice.log ({} start(s)):\n{}",
                self.gateway_starts,
                self.log_tail(30)
            );
        }
    }
}

/// One stack at a time: the tests of a binary run in parallel threads, and two stacks would
/// share two cores with each other.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
