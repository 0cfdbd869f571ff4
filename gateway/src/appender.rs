//! Writes document records to Kafka in transactions.
//!
//! A transaction costs a broker round trip or more (about 100 ms on the local broker), so
//! requests that arrive while one is in flight are committed together in the next one
//! (group commit). Each request's records stay all-or-nothing: a transaction commits or
//! aborts as a whole. A caller gets its positions only after the commit.

use std::time::Duration;

use sluice_core::config::KafkaConfig;
use sluice_core::kafka::{OutgoingRecord, TransactionError, TransactionalProducer};
use sluice_core::record::{DocumentRecord, Position};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Bound on each transaction step; a dead broker is reported within it.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

struct Append {
    records: Vec<OutgoingRecord>,
    reply: oneshot::Sender<Result<Vec<Position>, TransactionError>>,
}

/// The handle requests use; cheap to clone. When every handle is dropped the appender
/// finishes the transaction in flight and stops.
#[derive(Clone)]
pub struct Appender {
    requests: mpsc::Sender<Append>,
    topic: String,
}

impl Appender {
    /// Starts the appender task with a ready producer.
    pub fn spawn(
        kafka: KafkaConfig,
        transactional_id: String,
        producer: TransactionalProducer,
        max_records: usize,
    ) -> (Self, JoinHandle<()>) {
        let (requests, receiver) = mpsc::channel(1024);
        let topic = kafka.documents_topic.clone();
        let task = tokio::spawn(run(
            kafka,
            transactional_id,
            Some(producer),
            receiver,
            max_records.max(1),
        ));
        (Self { requests, topic }, task)
    }

    /// Writes `records` in one transaction (possibly shared with other requests) and returns
    /// where each landed.
    pub async fn append(
        &self,
        records: &[DocumentRecord],
    ) -> Result<Vec<Position>, TransactionError> {
        let records = records
            .iter()
            .map(|r| OutgoingRecord {
                topic: self.topic.clone(),
                key: r.key(),
                payload: r.value(),
                headers: r.headers(),
            })
            .collect();
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Append { records, reply })
            .await
            .map_err(|_| TransactionError::Fatal("gateway is shutting down".into()))?;
        answer
            .await
            .map_err(|_| TransactionError::Fatal("gateway is shutting down".into()))?
    }
}

async fn run(
    kafka: KafkaConfig,
    transactional_id: String,
    mut producer: Option<TransactionalProducer>,
    mut requests: mpsc::Receiver<Append>,
    max_records: usize,
) {
    while let Some(first) = requests.recv().await {
        // Everything already waiting joins this transaction, up to the record limit. A single
        // request larger than the limit still goes alone: it must stay all-or-nothing.
        let mut group = vec![first];
        let mut count = group[0].records.len();
        while count < max_records {
            match requests.try_recv() {
                Ok(next) if count + next.records.len() <= max_records => {
                    count += next.records.len();
                    group.push(next);
                }
                Ok(next) => {
                    commit_group(
                        &kafka,
                        &transactional_id,
                        &mut producer,
                        std::mem::take(&mut group),
                    )
                    .await;
                    group.push(next);
                    break;
                }
                Err(_) => break,
            }
        }
        commit_group(&kafka, &transactional_id, &mut producer, group).await;
    }
    tracing::info!("appender stopped");
}

/// Commits one group and answers each of its requests.
async fn commit_group(
    kafka: &KafkaConfig,
    transactional_id: &str,
    producer: &mut Option<TransactionalProducer>,
    group: Vec<Append>,
) {
    if group.is_empty() {
        return;
    }
    if producer.is_none() {
        // The previous producer failed for good (fenced, broker gone too long); try a new one.
        match TransactionalProducer::new(kafka, transactional_id, STEP_TIMEOUT).await {
            Ok(fresh) => *producer = Some(fresh),
            Err(error) => {
                tracing::warn!(%error, "Kafka producer unavailable");
                for append in group {
                    let _ = append
                        .reply
                        .send(Err(TransactionError::Fatal(error.to_string())));
                }
                return;
            }
        }
    }
    let active = producer.as_ref().expect("set above");
    let records: Vec<OutgoingRecord> = group
        .iter()
        .flat_map(|a| a.records.iter().cloned())
        .collect();
    let result = active.commit(&records, None).await;
    if let Err(error) = &result {
        tracing::warn!(%error, records = records.len(), "transaction not committed");
        if matches!(error, TransactionError::Fatal(_)) {
            *producer = None;
        }
    }
    let mut positions = result.map(Vec::into_iter);
    for append in group {
        let answer = match &mut positions {
            Ok(all) => Ok(all.by_ref().take(append.records.len()).collect()),
            Err(error) => Err(match error {
                TransactionError::Aborted(m) => TransactionError::Aborted(m.clone()),
                TransactionError::Fatal(m) => TransactionError::Fatal(m.clone()),
            }),
        };
        let _ = append.reply.send(answer);
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
