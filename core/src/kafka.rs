//! Kafka clients as Sluice uses them: configuration, topics, transactional producers and
//! read_committed consumers.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{ConsumerContext, ConsumerGroupMetadata, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::TopicPartitionList;

use crate::config::KafkaConfig;
use crate::record::Position;

/// How long a transaction may stay open before the broker aborts it.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on calls to the broker that should answer quickly (metadata, topic creation).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A client configuration: the bootstrap servers, Sluice's own settings for the role, then the
/// operator's `kafka.properties`, passed through untouched (they win).
pub fn client_config(kafka: &KafkaConfig, role: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in role {
        config.set(*key, *value);
    }
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// A record to produce inside a transaction.
#[derive(Debug, Clone)]
pub struct OutgoingRecord {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// `headers` with `extra` (name, value) pairs added, e.g. a trace context.
pub fn with_headers(headers: OwnedHeaders, extra: &[(String, String)]) -> OwnedHeaders {
    extra.iter().fold(headers, |headers, (key, value)| {
        headers.insert(rdkafka::message::Header {
            key,
            value: Some(value.as_bytes()),
        })
    })
}

/// A consumed record's `process` span (OpenTelemetry's messaging conventions), a child of
/// the producer's span when the record carries its trace context.
pub fn process_span(message: &impl rdkafka::Message) -> tracing::Span {
    let span = tracing::info_span!(
        "process",
        otel.name = %format!("process {}", message.topic()),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = %message.topic(),
        messaging.destination.partition.id = message.partition(),
        messaging.kafka.offset = message.offset(),
    );
    crate::telemetry::extract(&span, |key| header_text(message, key));
    span
}

/// The last value of header `key` on a message, as text.
pub fn header_text(message: &impl rdkafka::Message, key: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers
        .iter()
        .filter(|h| h.key == key)
        .last()
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

/// Why a transaction did not commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransactionError {
    /// Aborted: nothing of it is visible to read_committed consumers; trying again is safe.
    #[error("Kafka transaction aborted: {0}")]
    Aborted(String),
    /// The producer can no longer be used (fenced by a newer instance, or an unrecoverable
    /// state); it must be rebuilt. Nothing of the transaction committed.
    #[error("Kafka producer failed: {0}")]
    Fatal(String),
    /// A record was refused for what it is (too large, invalid), so sending it again fails
    /// again. The transaction was aborted; other records that shared it can be sent alone.
    #[error("Kafka refused a record: {0}")]
    Refused(String),
}

/// Bytes of a produce request around its one record (batch and request headers): the
/// producers' `message.max.bytes` and the topics' `max.message.bytes` are the largest record
/// plus this.
const PROTOCOL_OVERHEAD_BYTES: usize = 16 << 10;

/// The `message.max.bytes` / `max.message.bytes` setting that takes records of
/// `kafka.max_record_bytes`.
pub fn max_message_bytes(kafka: &KafkaConfig) -> String {
    kafka
        .max_record_bytes
        .saturating_add(PROTOCOL_OVERHEAD_BYTES)
        .to_string()
}

/// Bytes a record takes in Kafka's size checks: key, value and headers.
pub fn record_size(record: &OutgoingRecord) -> usize {
    use rdkafka::message::Headers;
    let headers: usize = record
        .headers
        .iter()
        .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
        .sum();
    record.key.len() + record.payload.len() + headers
}

/// The settings of a [`TransactionalProducer`]: `kafka.properties` over these. Public so that
/// the ingest benchmark's bare producer runs with exactly the gateway's.
pub fn transactional_config(
    kafka: &KafkaConfig,
    transactional_id: &str,
    timeout: Duration,
) -> ClientConfig {
    let delivery = timeout.as_millis().to_string();
    let transaction = TRANSACTION_TIMEOUT.as_millis().to_string();
    let max_message = max_message_bytes(kafka);
    client_config(
        kafka,
        &[
            ("transactional.id", transactional_id),
            // Every record Sluice accepts must fit (librdkafka's default is 1 MB).
            ("message.max.bytes", &max_message),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("transaction.timeout.ms", &transaction),
            ("message.timeout.ms", &delivery),
            // Records of one transaction go out together.
            ("linger.ms", "1"),
        ],
    )
}

/// A transactional producer. `transactional_id` must be stable per instance: a restarted
/// instance with the same id fences its predecessor's open transaction.
///
/// One transaction at a time: callers serialise (the gateway's appender, the worker's loop).
#[derive(Clone)]
pub struct TransactionalProducer {
    producer: FutureProducer,
    timeout: Duration,
}

impl TransactionalProducer {
    /// Creates the producer and initialises its transactions. `timeout` bounds every step
    /// (delivery, offsets, commit), so a caller learns of a dead broker within it.
    pub async fn new(
        kafka: &KafkaConfig,
        transactional_id: &str,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let producer: FutureProducer =
            transactional_config(kafka, transactional_id, timeout).create()?;
        let init = producer.clone();
        blocking(move || init.init_transactions(timeout)).await?;
        Ok(Self { producer, timeout })
    }

    /// Produces `records` and, when given, the consumer's `offsets`, as one transaction, and
    /// commits it. Returns where each record landed, in order. On any failure the transaction
    /// is aborted.
    pub async fn commit(
        &self,
        records: &[OutgoingRecord],
        offsets: Option<(TopicPartitionList, ConsumerGroupMetadata)>,
    ) -> Result<Vec<Position>, TransactionError> {
        let retry_purged = offsets.is_none();
        let producer = self.producer.clone();
        blocking(move || producer.begin_transaction())
            .await
            .map_err(|e| self.classify(e))?;
        match self.produce_and_commit(records, offsets).await {
            Ok(positions) => Ok(positions),
            // After an aborted transaction librdkafka finishes its recovery (a new producer
            // epoch) by purging what was queued meanwhile: those records never reached the
            // broker, so the transaction is tried once more.
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue)) if retry_purged => {
                let error = KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue);
                if let TransactionError::Fatal(message) = self.abort(error).await {
                    return Err(TransactionError::Fatal(message));
                }
                let producer = self.producer.clone();
                blocking(move || producer.begin_transaction())
                    .await
                    .map_err(|e| self.classify(e))?;
                match self.produce_and_commit(records, None).await {
                    Ok(positions) => Ok(positions),
                    Err(error) => Err(self.abort(error).await),
                }
            }
            Err(error) => Err(self.abort(error).await),
        }
    }

    async fn produce_and_commit(
        &self,
        records: &[OutgoingRecord],
        offsets: Option<(TopicPartitionList, ConsumerGroupMetadata)>,
    ) -> Result<Vec<Position>, KafkaError> {
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            let future = FutureRecord::to(&record.topic)
                .key(&record.key)
                .payload(&record.payload)
                .headers(record.headers.clone());
            deliveries.push(
                self.producer
                    .send_result(future)
                    .map_err(|(error, _)| error)?,
            );
        }
        let mut positions = Vec::with_capacity(records.len());
        for (record, delivery) in records
            .iter()
            .zip(futures::future::join_all(deliveries).await)
        {
            let delivery = delivery
                .map_err(|_| KafkaError::Canceled)?
                .map_err(|(error, _)| error)?;
            positions.push(Position {
                topic: record.topic.clone(),
                partition: delivery.partition,
                offset: delivery.offset,
            });
        }
        if let Some((offsets, group)) = offsets {
            let (producer, timeout) = (self.producer.clone(), self.timeout);
            blocking(move || producer.send_offsets_to_transaction(&offsets, &group, timeout))
                .await?;
        }
        let (producer, timeout) = (self.producer.clone(), self.timeout);
        blocking(move || {
            settle_deliveries(&producer);
            producer.commit_transaction(timeout)
        })
        .await?;
        Ok(positions)
    }

    async fn abort(&self, error: KafkaError) -> TransactionError {
        let classified = self.classify(error.clone());
        if let TransactionError::Fatal(message) = classified {
            return TransactionError::Fatal(message);
        }
        let (producer, timeout) = (self.producer.clone(), self.timeout);
        match blocking(move || producer.abort_transaction(timeout)).await {
            Ok(()) => classified,
            Err(abort) => {
                TransactionError::Fatal(format!("{error}; then the abort failed: {abort}"))
            }
        }
    }

    fn classify(&self, error: KafkaError) -> TransactionError {
        match &error {
            KafkaError::Transaction(e) if e.is_fatal() => {
                TransactionError::Fatal(error.to_string())
            }
            KafkaError::MessageProduction(code) if refuses_the_record(*code) => {
                TransactionError::Refused(error.to_string())
            }
            _ => TransactionError::Aborted(error.to_string()),
        }
    }

    /// Whether the broker answers a metadata request, for health reports.
    pub async fn probe(&self) -> Result<String, KafkaError> {
        let producer = self.producer.clone();
        blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(None, Duration::from_secs(3))?;
            Ok(format!(
                "{} broker(s), {} topic(s)",
                metadata.brokers().len(),
                metadata.topics().len()
            ))
        })
        .await
    }
}

/// Errors that are about the record itself, from the producer's own checks or the broker's.
fn refuses_the_record(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
    )
}

/// Waits (briefly, bounded) until librdkafka has let go of the delivery reports already
/// handed to us. A delivery future completes inside the producer's polling thread just before
/// that thread frees the report; a commit that starts in between finds the producer not yet
/// flushed, and rdkafka's `commit_transaction` then polls for up to 100 ms for an event the
/// polling thread has already taken (100 ms lost, on a commit that otherwise takes a few).
pub fn settle_deliveries(producer: &FutureProducer) {
    const SETTLE: Duration = Duration::from_millis(50);
    let started = std::time::Instant::now();
    while producer.in_flight_count() > 0 && started.elapsed() < SETTLE {
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// librdkafka's transaction calls block; keep them off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// A consumer that sees only committed records and commits nothing by itself.
pub fn read_committed_consumer<C: ConsumerContext + 'static>(
    kafka: &KafkaConfig,
    group_id: &str,
    extra: &[(&str, &str)],
    context: C,
) -> Result<StreamConsumer<C>, KafkaError> {
    let mut role = vec![
        ("group.id", group_id),
        ("isolation.level", "read_committed"),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("enable.partition.eof", "false"),
        // How long the broker may hold a fetch that found nothing new (librdkafka: 500 ms).
        // Records of a transaction become visible to read_committed only at its commit
        // marker, and a broker that does not answer a waiting fetch on the marker leaves them
        // waiting for the whole interval, at each hop (the worker's fetch, then the gateway's
        // completions): ingest → searchable at light load was p50 240 ms, 47 ms with 25 ms
        // (the embedding itself 9-26 ms). An idle consumer then fetches 40 times a second;
        // `kafka.properties` can raise it.
        ("fetch.wait.max.ms", "25"),
    ];
    role.extend_from_slice(extra);
    client_config(kafka, &role).create_with_context(context)
}

/// Creates the documents, completions and dead-letter topics when they are missing.
pub async fn ensure_topics(kafka: &KafkaConfig) -> Result<(), KafkaError> {
    if !kafka.create_topics {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, &[]).create()?;
    // Documents and dead letters (which carry documents) take the largest record Sluice
    // accepts; a broker's default (1 MB on Apache Kafka) would refuse large documents.
    let max_message = max_message_bytes(kafka);
    let topics = [
        NewTopic::new(
            &kafka.documents_topic,
            kafka.documents_partitions,
            TopicReplication::Fixed(kafka.replication_factor),
        )
        .set("max.message.bytes", &max_message),
        NewTopic::new(
            &kafka.completions_topic,
            kafka.completions_partitions,
            TopicReplication::Fixed(kafka.replication_factor),
        ),
        NewTopic::new(
            &kafka.dead_letter_topic,
            kafka.dead_letter_partitions,
            TopicReplication::Fixed(kafka.replication_factor),
        )
        .set("max.message.bytes", &max_message),
    ];
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(topic) => tracing::info!(%topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::error!(%topic, ?code, "cannot create topic"));
            }
        }
    }
    Ok(())
}
