//! Consumer lag, per group, topic and partition, in offsets and in seconds, as Prometheus
//! gauges (`sluice_consumer_lag_offsets`, `sluice_consumer_lag_seconds`), the way
//! kafka-lag-exporter and KMinion report it: the group's committed offset against the
//! partition's high watermark.
//!
//! Offsets: high watermark − committed offset (the low watermark when the group has committed
//! nothing), except that offsets holding no record a read_committed consumer would see
//! (transaction markers, which follow every transactional write) are not lag: the monitor
//! reads from the committed offset, and reaching the partition's end first means 0. Seconds:
//! how old the first record the group has not consumed is, by its timestamp; 0 when there is
//! none. The monitor reads the group's offsets without joining it,
//! so any process that reaches the broker can watch any group: the gateway watches the workers'
//! group and its own completions consumer, a worker its group.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::kafka::client_config;
use crate::record::now_ms;

/// How long each broker request of a round may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One partition's lag.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct PartitionLag {
    pub offsets: i64,
    pub seconds: f64,
}

/// The latest lag of every partition of the topic, by partition.
pub type LagReport = Arc<Mutex<BTreeMap<i32, PartitionLag>>>;

/// Watches one group on one topic every `every`, until `shutdown`.
pub fn spawn(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    every: Duration,
    shutdown: CancellationToken,
) -> Result<(LagReport, JoinHandle<()>), KafkaError> {
    // The group's id, to read its committed offsets; never subscribed, so never a member.
    let consumer: BaseConsumer<EndIsNews> = client_config(
        kafka,
        &[
            ("group.id", group),
            ("isolation.level", "read_committed"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            // Reaching the end says that what is left holds no record (see above).
            ("enable.partition.eof", "true"),
        ],
    )
    .create_with_context(EndIsNews)?;
    let consumer = Arc::new(consumer);
    let report = LagReport::default();
    let (group, topic) = (group.to_owned(), topic.to_owned());
    let shared = report.clone();
    let task = tokio::spawn(async move {
        loop {
            let (consumer, group, topic) = (consumer.clone(), group.clone(), topic.clone());
            // librdkafka's calls block: not on an async thread.
            let measured =
                tokio::task::spawn_blocking(move || measure(&consumer, &group, &topic)).await;
            match measured {
                Ok(Ok(lags)) => *shared.lock().expect("lag report lock") = lags,
                Ok(Err(error)) => tracing::debug!(%error, "consumer lag not measured"),
                Err(error) => tracing::warn!(%error, "consumer lag task failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
    Ok((report, task))
}

/// librdkafka reports reaching a partition's end as an error, and logs it as one; here it is
/// what the probe looks for.
struct EndIsNews;

impl ClientContext for EndIsNews {
    fn error(&self, error: KafkaError, reason: &str) {
        let end = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !end {
            tracing::warn!(%error, reason, "lag monitor");
        }
    }
}

impl ConsumerContext for EndIsNews {}

/// One round: every partition's lag, also set as gauges.
fn measure(
    consumer: &BaseConsumer<EndIsNews>,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, PartitionLag>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut wanted = TopicPartitionList::new();
    for &partition in &partitions {
        wanted.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(wanted, REQUEST_TIMEOUT)?;
    let mut lags = BTreeMap::new();
    for &partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT)?;
        let position = match committed
            .find_partition(topic, partition)
            .map(|p| p.offset())
        {
            Some(Offset::Offset(offset)) => offset.max(low),
            _ => low,
        };
        let mut offsets = (high - position).max(0);
        let mut seconds = 0.0;
        if offsets > 0 {
            match first_record(consumer, topic, partition, position) {
                Probe::Record { age } => seconds = age,
                Probe::End => offsets = 0,
                Probe::Unknown => {}
            }
        }
        let label = partition.to_string();
        metrics::gauge!("sluice_consumer_lag_offsets", "group" => group.to_owned(), "topic" => topic.to_owned(), "partition" => label.clone())
            .set(offsets as f64);
        metrics::gauge!("sluice_consumer_lag_seconds", "group" => group.to_owned(), "topic" => topic.to_owned(), "partition" => label)
            .set(seconds);
        lags.insert(partition, PartitionLag { offsets, seconds });
    }
    Ok(lags)
}

/// What reading a partition from the group's position found.
enum Probe {
    /// A record, written `age` seconds ago.
    Record { age: f64 },
    /// The partition's end: nothing but transaction markers (or aborted records) is left.
    End,
    /// Nothing within a second.
    Unknown,
}

/// The first record at or after `offset` that a read_committed consumer would see.
fn first_record(
    consumer: &BaseConsumer<EndIsNews>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Probe {
    let mut at = TopicPartitionList::new();
    if at
        .add_partition_offset(topic, partition, Offset::Offset(offset))
        .is_err()
        || consumer.assign(&at).is_err()
    {
        return Probe::Unknown;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let probe = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break Probe::Unknown;
        }
        match consumer.poll(left) {
            Some(Ok(message)) if message.partition() == partition => {
                break match message.timestamp().to_millis() {
                    Some(ms) => Probe::Record {
                        age: (now_ms() - ms).max(0) as f64 / 1000.0,
                    },
                    None => Probe::Unknown,
                };
            }
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => break Probe::End,
            Some(_) => continue,
            None => break Probe::Unknown,
        }
    };
    let _ = consumer.unassign();
    probe
}
