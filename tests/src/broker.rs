//! A nisshi Kafka broker process on a free loopback port (in-memory storage, or SQLite on disk
//! for restart tests), and reading a topic back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::tools::{free_port, nisshi};

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
