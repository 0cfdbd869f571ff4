//! Re-drives dead letters: after the cause of their failure is fixed (a vector store that was
//! down, say), their documents go back onto the documents topic as new ingestions.
//!
//! Exactly once: the re-driven records and this re-drive's consumer offsets on the dead-letter
//! topic are committed in one Kafka transaction, so a dead letter is re-driven once however
//! often the command runs or wherever it is interrupted. Each re-driven record gets a new
//! ingestion id (the old ingestion has ended FAILED and stays so) and names the old one in
//! the `sluice-redriven-from` header; the new ingestions are recorded as ACCEPTED, so clients
//! can follow them like any other.

use sluice_core::telemetry::Chain;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::message::{Header, OwnedMessage};
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_core::config::Config;
use sluice_core::db::projection;
use sluice_core::kafka::{read_committed_consumer, OutgoingRecord, TransactionalProducer};
use sluice_core::record::dead_letter_header::{
    ERROR, ORIGIN_OFFSET, ORIGIN_PARTITION, ORIGIN_TOPIC,
};
use sluice_core::record::header::REDRIVEN_FROM;
use sluice_core::record::{new_ingestion_id, now_ms, DocumentRecord};
use tokio::time::Instant;

/// The consumer group whose offsets say which dead letters were re-driven already.
pub const GROUP: &str = "sluice-dead-letter-redrive";
/// Reading stops once the dead-letter topic has been quiet this long.
const QUIET: Duration = Duration::from_secs(3);

/// What to re-drive.
#[derive(Debug, Clone)]
pub struct Options {
    /// At most this many dead letters in one run.
    pub max: usize,
    /// Only list what would be re-driven; commit nothing.
    pub dry_run: bool,
    /// Give up reading after this long.
    pub timeout: Duration,
}

/// One dead letter and what became of it.
#[derive(Debug, Clone)]
pub struct Redriven {
    pub tenant: String,
    pub document_id: String,
    pub failed_ingestion_id: String,
    /// The new ingestion (None in a dry run).
    pub ingestion_id: Option<String>,
    pub error: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub redriven: Vec<Redriven>,
    /// Dead letters without a readable document record (listed, never re-driven).
    pub unreadable: Vec<String>,
    /// The same dead letter seen twice (a broker that shows aborted transactions).
    pub duplicates: usize,
}

pub async fn redrive(config: &Config, options: &Options) -> anyhow::Result<Report> {
    let kafka = &config.kafka;
    let consumer: StreamConsumer =
        read_committed_consumer(kafka, GROUP, &[], DefaultConsumerContext)?;
    consumer.subscribe(&[kafka.dead_letter_topic.as_str()])?;

    let mut report = Report::default();
    let mut records = Vec::new();
    let mut seen = HashSet::new();
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + options.timeout;
    while records.len() < options.max && Instant::now() < deadline {
        let message = match tokio::time::timeout(QUIET, consumer.recv()).await {
            Err(_) if !consumer.assignment()?.elements().is_empty() => break,
            Err(_) => continue,
            Ok(Err(error)) => {
                tracing::warn!(error = %Chain(&error), "reading dead letters");
                continue;
            }
            Ok(Ok(message)) => message.detach(),
        };
        next_offsets.insert(message.partition(), message.offset() + 1);
        // A dead letter is known by the record it came from.
        let origin = [ORIGIN_TOPIC, ORIGIN_PARTITION, ORIGIN_OFFSET]
            .map(|name| header(&message, name).unwrap_or_default())
            .join("/");
        if !seen.insert(origin) {
            report.duplicates += 1;
            continue;
        }
        let error = header(&message, ERROR).unwrap_or_default();
        match DocumentRecord::from_message(&message) {
            Ok(failed) => records.push((failed, error)),
            Err(problem) => report.unreadable.push(format!(
                "{} partition {} offset {}: {problem}",
                kafka.dead_letter_topic,
                message.partition(),
                message.offset()
            )),
        }
    }

    let mut outgoing = Vec::with_capacity(records.len());
    let mut fresh = Vec::with_capacity(records.len());
    for (failed, error) in &records {
        let mut record = failed.clone();
        record.ingestion_id = new_ingestion_id();
        record.accepted_at_ms = now_ms();
        // A new ingestion the operator asked for, not a retry of the client's request: the
        // request's key stays with the ingestion that failed.
        record.idempotency_key = None;
        report.redriven.push(Redriven {
            tenant: failed.tenant.to_string(),
            document_id: failed.document_id.clone(),
            failed_ingestion_id: failed.ingestion_id.clone(),
            ingestion_id: (!options.dry_run).then(|| record.ingestion_id.clone()),
            error: error.clone(),
        });
        outgoing.push(OutgoingRecord {
            topic: kafka.documents_topic.clone(),
            key: record.key(),
            payload: record.value(),
            headers: record.headers().insert(Header {
                key: REDRIVEN_FROM,
                value: Some(failed.ingestion_id.as_str()),
            }),
        });
        fresh.push(record);
    }
    if options.dry_run || next_offsets.is_empty() {
        drop_off_thread(consumer).await;
        return Ok(report);
    }

    let producer = TransactionalProducer::new(kafka, GROUP, Duration::from_secs(30))
        .await
        .context("initialising the re-drive's transactional producer")?;
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in &next_offsets {
        offsets.add_partition_offset(
            &kafka.dead_letter_topic,
            *partition,
            Offset::Offset(*offset),
        )?;
    }
    let group = consumer
        .group_metadata()
        .context("the re-drive consumer has no group metadata")?;
    let positions = producer
        .commit(&outgoing, Some((offsets, group)))
        .await
        .context("committing the re-drive")?;
    drop_off_thread(consumer).await;

    // Durably in Kafka now; record the new ingestions so clients can follow them. If this
    // fails, their completions create the rows.
    let db = sluice_core::db::connect(&config.database_url()).await?;
    let rows = fresh
        .iter()
        .zip(positions)
        .map(|(record, position)| projection::accepted_row(record, position, None))
        .collect();
    if let Err(error) = projection::record_accepted(&db, rows).await {
        tracing::warn!(error = %Chain(&error), "re-driven ingestions not recorded; their completions will");
    }
    Ok(report)
}

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Leaving the group blocks; not on an async thread.
async fn drop_off_thread(consumer: StreamConsumer) {
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
}
