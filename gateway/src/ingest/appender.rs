//! Writes document records to Kafka in transactions.
//!
//! A transaction costs a broker round trip or more (about 100 ms on the local broker), so
//! requests that arrive while one is in flight are committed together in the next one
//! ([group commit](crate::ingest::group_commit)). Each request's records stay all-or-nothing: a transaction commits or
//! aborts as a whole. A caller gets its positions only after the commit.

use sluice_core::telemetry::Chain;
use std::time::Duration;

use sluice_core::config::KafkaConfig;
use sluice_core::kafka::{
    record_size, with_headers, OutgoingRecord, TransactionError, TransactionalProducer,
};
use sluice_core::record::{DocumentRecord, Position};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::ingest::group_commit::{Commit, GroupCommit};

/// Bound on each transaction step; a dead broker is reported within it.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The handle requests use; cheap to clone. When every handle is dropped the appender
/// finishes the transaction in flight and stops.
#[derive(Clone)]
pub struct Appender {
    transactions: GroupCommit<Transactions>,
    topic: String,
    max_record_bytes: usize,
}

impl Appender {
    /// Starts the appender task with a ready producer.
    pub fn spawn(
        kafka: KafkaConfig,
        transactional_id: String,
        producer: TransactionalProducer,
        max_records: usize,
    ) -> (Self, JoinHandle<()>) {
        let topic = kafka.documents_topic.clone();
        let max_record_bytes = kafka.max_record_bytes;
        let transactions = Transactions {
            kafka,
            transactional_id,
            producer: Some(producer),
        };
        let (transactions, task) = GroupCommit::spawn("appender", transactions, max_records);
        (
            Self {
                transactions,
                topic,
                max_record_bytes,
            },
            task,
        )
    }

    /// Writes `records` in one transaction (possibly shared with other requests) and returns
    /// where each landed. A record larger than Kafka takes is refused here, before it could
    /// fail the transaction it would share with other requests.
    pub async fn append(
        &self,
        records: &[DocumentRecord],
    ) -> Result<Vec<Position>, TransactionError> {
        // The producer span (OpenTelemetry's messaging conventions); its context travels in
        // each record's headers to the worker.
        let span = tracing::info_span!(
            "send",
            otel.name = %format!("send {}", self.topic),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.destination.name = %self.topic,
            messaging.batch.message_count = records.len(),
        );
        let mut context = Vec::new();
        sluice_core::telemetry::inject(&span, |key, value| context.push((key.to_owned(), value)));
        let records: Vec<OutgoingRecord> = records
            .iter()
            .map(|r| OutgoingRecord {
                topic: self.topic.clone(),
                key: r.key(),
                payload: r.value(),
                headers: with_headers(r.headers(), &context),
            })
            .collect();
        for record in &records {
            let size = record_size(record);
            if size > self.max_record_bytes {
                return Err(TransactionError::Refused(format!(
                    "the record of {} is {size} bytes; records hold at most {} bytes \
                     (gateway.max_payload_bytes plus 128 KiB)",
                    record.key, self.max_record_bytes
                )));
            }
        }
        self.transactions
            .submit(records)
            .instrument(span)
            .await
            .map_err(|_| TransactionError::Fatal("gateway is shutting down".into()))?
    }
}

/// Commits groups of records as Kafka transactions, rebuilding the producer when one fails
/// for good.
struct Transactions {
    kafka: KafkaConfig,
    transactional_id: String,
    producer: Option<TransactionalProducer>,
}

impl Commit for Transactions {
    type Item = OutgoingRecord;
    type Output = Position;
    type Error = TransactionError;

    async fn commit(
        &mut self,
        records: &[OutgoingRecord],
    ) -> Result<Vec<Position>, TransactionError> {
        if self.producer.is_none() {
            // The previous producer failed for good (fenced, broker gone too long); try a
            // new one.
            match TransactionalProducer::new(&self.kafka, &self.transactional_id, STEP_TIMEOUT)
                .await
            {
                Ok(fresh) => self.producer = Some(fresh),
                Err(error) => {
                    tracing::warn!(error = %Chain(&error), "Kafka producer unavailable");
                    return Err(TransactionError::Fatal(error.to_string()));
                }
            }
        }
        let active = self.producer.as_ref().expect("set above");
        let started = std::time::Instant::now();
        let result = active.commit(records, None).await;
        metrics::histogram!("sluice_gateway_transaction_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("sluice_gateway_transaction_records_per_batch")
            .record(records.len() as f64);
        if let Err(error) = &result {
            metrics::counter!("sluice_gateway_transactions_aborted_total").increment(1);
            tracing::warn!(error = %Chain(error), records = records.len(), "transaction not committed");
            if matches!(error, TransactionError::Fatal(_)) {
                self.producer = None;
            }
        }
        result
    }

    /// Kafka refused a record for what it is: the other requests of its group did nothing
    /// wrong.
    fn retry_alone(error: &TransactionError) -> bool {
        matches!(error, TransactionError::Refused(_))
    }
}

/// Faults a real broker cannot be made to show on demand, injected with librdkafka's mock
/// cluster (it has no last-stable offset, so what these tests check is what the caller is
/// told: never OK for a transaction that did not commit, and recovery afterwards).
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use sluice_core::record::Operation;
    use sluice_core::tenant::TenantId;

    use super::*;

    fn record(n: usize) -> DocumentRecord {
        DocumentRecord {
            tenant: TenantId::parse("acme").unwrap(),
            document_id: format!("doc-{n}"),
            ingestion_id: format!("ingestion-{n}"),
            operation: Operation::Upsert,
            attributes: BTreeMap::new(),
            schema_fingerprint: "test".into(),
            schema_id: None,
            accepted_at_ms: 1,
            payload: b"avro".to_vec(),
            idempotency_key: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn injected_faults_are_never_acknowledged_and_the_appender_recovers() {
        let mock = MockCluster::new(3).unwrap();
        let kafka = KafkaConfig {
            bootstrap_servers: mock.bootstrap_servers(),
            ..Default::default()
        };
        mock.create_topic(&kafka.documents_topic, 3, 3).unwrap();
        let producer = TransactionalProducer::new(&kafka, "mock-gateway", STEP_TIMEOUT)
            .await
            .unwrap();
        let (appender, task) = Appender::spawn(kafka, "mock-gateway".into(), producer, 100);
        let mut n = 0;
        let mut append = || {
            n += 1;
            let appender = appender.clone();
            async move { appender.append(&[record(n)]).await }
        };
        assert!(append().await.is_ok(), "healthy");

        // The transaction coordinator moves while committing: the client finds the new one
        // and the commit goes through.
        mock.request_errors(
            RDKafkaApiKey::EndTxn,
            &[
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            ],
        );
        assert!(append().await.is_ok(), "after a coordinator move");

        // The broker refuses a record for good: the transaction is aborted and the caller
        // hears so; the next one commits.
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD],
        );
        let refused = append().await;
        assert!(refused.is_err(), "a refused record was acknowledged");
        let next = append().await;
        assert!(next.is_ok(), "after {refused:?}: {next:?}");

        // Fenced by a newer instance while committing: this producer is done; the appender
        // builds a new one and the next request commits.
        mock.request_errors(
            RDKafkaApiKey::EndTxn,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
        );
        let fenced = append().await;
        assert!(
            matches!(fenced, Err(TransactionError::Fatal(_))),
            "fenced: {fenced:?}"
        );
        assert!(append().await.is_ok(), "after fencing, with a new producer");

        drop(appender);
        task.await.unwrap();
    }
}
