//! The Kafka side of the worker: consume, process, and commit completions with offsets.
//!
//! Each batch of records ends in one Kafka transaction holding their completion events (and
//! dead letters) together with the consumed offsets, so a record's completion is committed
//! exactly when its offset is. A failed transaction aborts both; the worker then rebuilds its
//! consumer and producer and resumes from the last committed offsets, processing those records
//! again, which is harmless because indexing is idempotent.
//!
//! Batches overlap, so that the model never waits for Kafka, the store or the decoding:
//!
//! ```text
//! batch n:    gather ── decode, chunk ── embed ── write, commit
//! batch n+1:       gather ── decode, chunk ···· embed ── write, commit
//! ```
//!
//! While the model embeds one batch (stages 1–3 of [`Indexer`], on a task of their own) the
//! next gathers; once it is full its records are decoded and chunked at once, and it waits for
//! the model, which takes it the moment it is done with the first (a batch that is not full
//! goes when the model is idle, or after a short linger). Only then is the first written to
//! the store and committed. Batches are embedded, written and committed one at a time, in the
//! order they were consumed. A record that fails in a way that may pass is retried alone;
//! while the vector store or the schema registry is down the worker waits for it (paused, and
//! its health says why) rather than fail documents into the dead-letter topic.

use sluice_core::telemetry::Chain;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_core::config::{KafkaConfig, WorkerConfig};
use sluice_core::kafka::{read_committed_consumer, OutgoingRecord, TransactionalProducer};
use sluice_core::record::{
    dead_letter_header, now_ms, Completion, DocumentRecord, MalformedRecord, Outcome, Position,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use crate::indexer::{Indexer, ProcessError, Processed, Staged, SCHEMA_REGISTRY};
use crate::rebalance::Rebalances;

/// Records in one batch (one embedding call, one transaction), at most. The model spreads a
/// call over its threads in shards of ≈256 tokens, and its threads only fall idle at the end
/// of a call: measured on 2 cores with documents of ≈85 tokens, batches of up to 64 took the
/// worker from 0.82-0.85 of the embedder's own throughput to 0.90-0.93 (16 before). Light load
/// is unaffected (a batch goes once its first record has waited `BATCH_LINGER`).
const MAX_BATCH: usize = 64;
/// Batches past gathering at once: the one at the model and the next, made ready meanwhile.
const MAX_AHEAD: usize = 2;
/// How long to wait for more records to join a batch once one has arrived.
const BATCH_LINGER: Duration = Duration::from_millis(5);
/// Records stop joining a batch once their payloads add up to this.
const MAX_BATCH_BYTES: usize = 256 << 10;
/// How long a batch may take before the broker gives this worker's partitions to another:
/// above the longest a batch can take (one document of `chunking.max_document_tokens`, ≈ 90 s
/// on 2 cores at the default), with room for a slow machine.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(900);
/// The longest wait between retries of a record.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// How long a worker waits for a dependency that is down before it gives up the batch (and
/// consumes it again): well inside [`MAX_POLL_INTERVAL`].
const MAX_PAUSE: Duration = Duration::from_secs(600);
/// Bound on each transaction step; a dead broker is noticed within it.
const TRANSACTION_STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// A consumer group member.
pub struct Worker {
    kafka: KafkaConfig,
    settings: WorkerConfig,
    indexer: Indexer,
    assignment: Assignment,
    pause: Pause,
}

/// The partitions a worker holds and when it last polled, for its health and readiness.
/// Cheap to clone; clones share.
#[derive(Clone, Default)]
pub struct Assignment {
    inner: Arc<Mutex<(Vec<i32>, Option<Instant>)>>,
}

impl Assignment {
    /// The documents topic's partitions held now; empty while idle or joining.
    pub fn partitions(&self) -> Vec<i32> {
        self.inner.lock().expect("assignment lock").0.clone()
    }

    /// How long ago the consumer last polled; `None` before it first did.
    pub fn last_poll(&self) -> Option<Duration> {
        self.inner
            .lock()
            .expect("assignment lock")
            .1
            .map(|at| at.elapsed())
    }

    fn update<C: ConsumerContext>(&self, consumer: &StreamConsumer<C>) {
        let mut partitions: Vec<i32> = consumer
            .assignment()
            .map(|list| list.elements().iter().map(|p| p.partition()).collect())
            .unwrap_or_default();
        partitions.sort_unstable();
        metrics::gauge!("sluice_worker_assigned_partitions").set(partitions.len() as f64);
        *self.inner.lock().expect("assignment lock") = (partitions, Some(Instant::now()));
    }
}

/// Why the worker is paused (a dependency every record needs is down) and since when, for
/// its health. Cheap to clone; clones share.
#[derive(Clone, Default)]
pub struct Pause {
    inner: Arc<Mutex<Option<(String, Instant)>>>,
}

impl Pause {
    /// Why, and for how long so far; `None` while the worker is not paused.
    pub fn reason(&self) -> Option<(String, Duration)> {
        self.inner
            .lock()
            .expect("pause lock")
            .as_ref()
            .map(|(reason, since)| (reason.clone(), since.elapsed()))
    }

    fn set(&self, reason: &str, since: Instant) {
        metrics::gauge!("sluice_worker_paused").set(1.0);
        *self.inner.lock().expect("pause lock") = Some((reason.to_owned(), since));
    }

    fn clear(&self) {
        metrics::gauge!("sluice_worker_paused").set(0.0);
        *self.inner.lock().expect("pause lock") = None;
    }
}

/// A running worker; [`WorkerHandle::shutdown`] stops it after its current batch.
pub struct WorkerHandle {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl WorkerHandle {
    /// Finishes (or aborts) the batch in flight, leaves the group, and returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Stops the worker without letting it finish anything, like a crash would (tests).
    pub fn abort(self) {
        self.task.abort();
    }
}

impl Worker {
    pub fn new(kafka: KafkaConfig, settings: WorkerConfig, indexer: Indexer) -> Self {
        Self {
            kafka,
            settings,
            indexer,
            assignment: Assignment::default(),
            pause: Pause::default(),
        }
    }

    /// What this worker holds, kept up to date while it runs.
    pub fn assignment(&self) -> Assignment {
        self.assignment.clone()
    }

    /// Whether it is paused waiting for a dependency, kept up to date while it runs.
    pub fn pause(&self) -> Pause {
        self.pause.clone()
    }

    pub fn spawn(self) -> WorkerHandle {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(self.run(shutdown.clone()));
        WorkerHandle { shutdown, task }
    }

    /// Runs sessions until shut down; a session that fails is rebuilt after a pause.
    pub async fn run(self, shutdown: CancellationToken) {
        let stop = shutdown.clone();
        // The pause ends early at shutdown; the next try then sees it and starts nothing.
        let pause = move |pause: Duration| {
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        };
        let session = || async {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            self.session(&shutdown).await
        };
        let ended = session
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(500))
                    .with_max_delay(Duration::from_secs(10))
                    .without_max_times(),
            )
            .sleep(pause)
            .when(|_| !shutdown.is_cancelled())
            .notify(|error, pause| tracing::warn!(error = %Chain(error.as_ref()), ?pause, "worker session ended; resuming from committed offsets"))
            .await;
        if let Err(error) = ended {
            tracing::warn!(error = %Chain(error.as_ref()), "worker session ended at shutdown");
        }
        tracing::info!("worker stopped");
    }

    /// One consumer and one producer, until shutdown (Ok) or a failed transaction (Err).
    async fn session(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let poll_interval = MAX_POLL_INTERVAL.as_millis().to_string();
        let consumer: Arc<StreamConsumer<Rebalances>> = Arc::new(read_committed_consumer(
            &self.kafka,
            &self.settings.group_id,
            &[("max.poll.interval.ms", &poll_interval)],
            Rebalances::default(),
        )?);
        let result = self.consume(&consumer, shutdown).await;
        // Leaving the group blocks (up to librdkafka's timeouts when the broker is gone), so
        // not on an async thread.
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        result
    }

    async fn consume(
        &self,
        consumer: &StreamConsumer<Rebalances>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        consumer.subscribe(&[self.kafka.documents_topic.as_str()])?;
        let transactional_id = format!("sluice-worker-{}", self.settings.instance_id);
        let producer =
            TransactionalProducer::new(&self.kafka, &transactional_id, TRANSACTION_STEP_TIMEOUT)
                .await?;
        tracing::info!(group = %self.settings.group_id, %transactional_id, "worker consuming {}", self.kafka.documents_topic);

        let mut refresh = tokio::time::interval(Duration::from_secs(1));
        // The batches in stages 1–3 (each on a task of its own), oldest first: the one at the
        // model and perhaps the next, decoded and chunked meanwhile; and the records gathering
        // for the one after.
        let mut batches: VecDeque<Embedding> = VecDeque::with_capacity(MAX_AHEAD);
        let mut gathering = Gathering::default();
        loop {
            let stopping = shutdown.is_cancelled();
            // The model is idle: the next batch goes to it once full, or once its first record
            // has waited BATCH_LINGER for company. While it is busy, a full batch gets ready to
            // follow (a partial one keeps gathering, so that batches stay large under load).
            let ready = match batches.len() {
                0 => gathering.ready(),
                n => n < MAX_AHEAD && gathering.is_full(),
            };
            if ready && !stopping {
                let next = self.start(gathering.take(), consumer, batches.back_mut());
                batches.extend(next);
            }
            if stopping && batches.is_empty() {
                // What was gathered is left uncommitted, for whoever holds its partitions next.
                return Ok(());
            }
            let linger = gathering.linger_until();
            tokio::select! {
                _ = shutdown.cancelled(), if !stopping => {}
                staged = embedded(batches.front_mut()) => {
                    let done = batches.pop_front().expect("a batch was at the model");
                    // The model goes on with the next batch while this one is written and
                    // committed. From here to the commit nothing calls recv(), so no partition
                    // can move in between (see `rebalance`).
                    if !stopping && batches.is_empty() && !gathering.is_empty() {
                        batches.extend(self.start(gathering.take(), consumer, None));
                    }
                    self.finish(done, staged, consumer, &producer, shutdown).await?;
                    let oldest = batches
                        .iter()
                        .flat_map(|e| e.epochs.iter())
                        .chain(gathering.epochs())
                        .min()
                        .copied();
                    consumer.context().forget(oldest);
                }
                _ = refresh.tick() => {
                    // Rebalances happen inside recv(); what it holds is read here.
                    self.assignment.update(consumer);
                }
                message = consumer.recv(), if !stopping && !gathering.is_full() => match message {
                    Ok(message) => gathering.push(message.detach(), consumer.context().epoch()),
                    Err(error) => {
                        // Broker hiccups surface here; librdkafka reconnects by itself.
                        tracing::warn!(error = %Chain(&error), "consume error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = tokio::time::sleep_until(linger), if batches.is_empty() && !gathering.is_empty() => {}
            }
        }
    }

    /// Sends gathered records to the model: stages 1–3 (decode, chunk, embed) on a task of
    /// their own, embedding once the `previous` batch's embedding is done. Records of a
    /// partition revoked since they arrived are dropped first; `None` when that leaves nothing.
    fn start(
        &self,
        received: Vec<(OwnedMessage, u64)>,
        consumer: &StreamConsumer<Rebalances>,
        previous: Option<&mut Embedding>,
    ) -> Option<Embedding> {
        let fresh = drop_stale(received, consumer.context());
        if fresh.is_empty() {
            return None;
        }
        let (messages, epochs): (Vec<OwnedMessage>, Vec<u64>) = fresh.into_iter().unzip();
        // One span per record, a child of the gateway's `send`.
        let spans: Vec<Span> = messages
            .iter()
            .map(sluice_core::kafka::process_span)
            .collect();
        let records: Vec<Result<DocumentRecord, MalformedRecord>> =
            messages.iter().map(DocumentRecord::from_message).collect();
        let inputs: Vec<(DocumentRecord, Span)> = records
            .iter()
            .zip(&spans)
            .filter_map(|(record, span)| Some((record.as_ref().ok()?.clone(), span.clone())))
            .collect();
        let indexer = self.indexer.clone();
        // Dropped when this batch's embedding is over (or its task ended otherwise).
        let (model_free, model_freed) = oneshot::channel::<()>();
        let turn = previous.and_then(|previous| previous.model_freed.take());
        let stages = tokio::spawn(async move {
            let inputs: Vec<(&DocumentRecord, Span)> =
                inputs.iter().map(|(r, s)| (r, s.clone())).collect();
            let staged = indexer.prepare(&inputs).await;
            // The model takes batches in the order they were consumed.
            if let Some(turn) = turn {
                let _ = turn.await;
            }
            let staged = indexer.embed_batch(staged, &inputs).await;
            drop(model_free);
            staged
        });
        Some(Embedding {
            messages,
            epochs,
            spans,
            records,
            stages,
            model_freed: Some(model_freed),
        })
    }

    /// Stage 4 and the commit of a batch back from the model: its records written to the
    /// store (what failed in a way that may pass is retried record by record), then their
    /// completions, dead letters and offsets committed in one transaction. Records of a
    /// partition revoked while the batch was at the model are left to their new owner.
    async fn finish(
        &self,
        batch: Embedding,
        staged: Vec<Result<Staged, ProcessError>>,
        consumer: &StreamConsumer<Rebalances>,
        producer: &TransactionalProducer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let Embedding {
            messages,
            epochs,
            spans,
            records,
            ..
        } = batch;
        let mut staged = staged.into_iter();
        let mut outgoing = Vec::with_capacity(messages.len());
        let mut next_offsets = BTreeMap::new();
        let (mut inputs, mut kept, mut origins) = (Vec::new(), Vec::new(), Vec::new());
        let mut dropped = 0;
        for (i, (message, record)) in messages.iter().zip(&records).enumerate() {
            // Every record's stages are taken in order, kept or not.
            let stages = record.as_ref().ok().map(|_| {
                staged
                    .next()
                    .expect("one result of stages 1-3 per document record")
            });
            let partition = (message.topic().to_owned(), message.partition());
            if consumer.context().is_stale(&partition, epochs[i]) {
                dropped += 1;
                continue;
            }
            next_offsets.insert(partition, message.offset() + 1);
            match (record, stages) {
                (Ok(record), Some(stages)) => {
                    inputs.push((record, spans[i].clone()));
                    kept.push(stages);
                    origins.push(i);
                }
                (Err(error), _) => {
                    let _entered = spans[i].enter();
                    outgoing.push(self.malformed(message, error));
                }
                (Ok(_), None) => unreachable!("a document record has its stages"),
            }
        }
        count_stale(dropped);
        if next_offsets.is_empty() {
            return Ok(());
        }
        let results = self.indexer.write(&inputs, kept).await;
        let mut completed = Vec::with_capacity(inputs.len());
        for (((record, span), result), i) in inputs.iter().zip(results).zip(origins) {
            let settled = match result {
                Err(error) if error.is_transient() => {
                    self.retry(record, error, shutdown)
                        .instrument(span.clone())
                        .await?
                }
                other => other.map_err(|error| (error, 1)),
            };
            let (records, completion) =
                span.in_scope(|| self.complete(&messages[i], record, settled));
            outgoing.extend(records);
            completed.push(completion);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in next_offsets {
            offsets.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        let group = consumer
            .group_metadata()
            .ok_or_else(|| anyhow::anyhow!("no consumer group metadata"))?;
        let started = Instant::now();
        let committed = producer.commit(&outgoing, Some((offsets, group))).await;
        metrics::histogram!("sluice_worker_commit_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        if committed.is_err() {
            metrics::counter!("sluice_worker_transactions_aborted_total").increment(1);
        }
        committed?;
        let count = messages.len() - dropped;
        metrics::counter!("sluice_worker_records_consumed_total").increment(count as u64);
        metrics::histogram!("sluice_worker_batch_records_per_batch").record(count as f64);
        completed.iter().for_each(count_completion);
        tracing::debug!(records = count, "batch committed");
        Ok(())
    }

    /// A record without the headers of an ingestion: there is nothing to complete, so it is
    /// kept in the dead-letter topic.
    fn malformed(&self, message: &OwnedMessage, error: &MalformedRecord) -> OutgoingRecord {
        let origin = position(message);
        tracing::error!(error = %Chain(error), ?origin, "malformed record sent to dead letters");
        metrics::counter!("sluice_worker_dead_letters_total", "class" => "malformed").increment(1);
        self.dead_letter(message, &origin, "malformed", &error.to_string(), 1)
    }

    /// Processes a record again after `error`: a few times (`worker.max_attempts` in all) for
    /// trouble of its own; for as long as a dependency every record needs is down, without
    /// counting, so an outage fails no document. While it waits the worker is paused (its
    /// health says why) and consumes nothing else. A pause longer than [`MAX_PAUSE`] ends
    /// the session instead, before the broker would take the partitions away: the batch is
    /// uncommitted and consumed again.
    async fn retry(
        &self,
        record: &DocumentRecord,
        mut error: ProcessError,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Result<Processed, (ProcessError, u32)>> {
        let mut attempts = 1;
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.settings.retry_initial_ms))
            .with_max_delay(MAX_RETRY_DELAY)
            .with_jitter()
            .without_max_times()
            .build();
        let mut paused_since = None;
        let settled = loop {
            let outage = match &error {
                ProcessError::Rejected(_) => break Ok(Err((error, attempts))),
                // The registry cannot answer, and no cached schema can: nothing else to ask.
                ProcessError::Unavailable {
                    dependency: SCHEMA_REGISTRY,
                    ..
                } => true,
                // The store failing this record is an outage only if its health check fails
                // too; otherwise the trouble is the record's, and counts against its attempts.
                _ => self.indexer.dependencies().await.is_err(),
            };
            if outage {
                let since = *paused_since.get_or_insert_with(Instant::now);
                self.pause.set(&error.to_string(), since);
                if since.elapsed() > MAX_PAUSE {
                    break Err(anyhow::anyhow!(
                        "paused for {} s ({error}): leaving the batch uncommitted",
                        MAX_PAUSE.as_secs()
                    ));
                }
            } else {
                if paused_since.take().is_some() {
                    self.pause.clear();
                }
                if attempts >= self.settings.max_attempts {
                    break Ok(Err((error, attempts)));
                }
                attempts += 1;
            }
            let delay = delays.next().unwrap_or(MAX_RETRY_DELAY);
            metrics::counter!("sluice_worker_retries_total").increment(1);
            tracing::warn!(ingestion_id = %record.ingestion_id, error = %Chain(&error), ?delay, outage, "retrying");
            tokio::select! {
                _ = shutdown.cancelled() => break Err(anyhow::anyhow!("shut down while retrying: leaving the batch uncommitted")),
                _ = tokio::time::sleep(delay) => {}
            }
            match self.indexer.process(record).await {
                Ok(processed) => break Ok(Ok(processed)),
                Err(next) => error = next,
            }
        };
        if paused_since.is_some() {
            self.pause.clear();
        }
        settled
    }

    /// What the transaction must carry for a processed record: its completion, and a dead
    /// letter when retrying could not help. Also returns the completion, counted in the
    /// metrics once the transaction commits.
    fn complete(
        &self,
        message: &OwnedMessage,
        record: &DocumentRecord,
        settled: Result<Processed, (ProcessError, u32)>,
    ) -> (Vec<OutgoingRecord>, Completion) {
        let origin = position(message);
        let mut outgoing = Vec::with_capacity(2);
        let processed = match settled {
            Ok(processed) => processed,
            Err((error, attempts)) => {
                tracing::warn!(ingestion_id = %record.ingestion_id, error = %Chain(&error), attempts, "ingestion failed");
                if error.is_transient() {
                    metrics::counter!("sluice_worker_dead_letters_total", "class" => error.class())
                        .increment(1);
                    outgoing.push(self.dead_letter(
                        message,
                        &origin,
                        error.class(),
                        &error.to_string(),
                        attempts,
                    ));
                }
                let reason = match &error {
                    ProcessError::Rejected(reason) => reason.clone(),
                    transient => format!("gave up after {attempts} attempts: {transient}"),
                };
                Processed {
                    outcome: Outcome::Failed,
                    chunk_count: 0,
                    failure_reason: Some(reason),
                }
            }
        };
        let completion = Completion {
            tenant: record.tenant.to_string(),
            ingestion_id: record.ingestion_id.clone(),
            document_id: record.document_id.clone(),
            operation: record.operation,
            outcome: processed.outcome,
            chunk_count: processed.chunk_count,
            failure_reason: processed.failure_reason,
            source: origin,
            accepted_at_ms: record.accepted_at_ms,
            completed_at_ms: now_ms(),
            idempotency_key: record.idempotency_key.clone(),
            content_hash: Some(record.content_hash()),
        };
        // The completion carries the trace back to the gateway.
        let mut context = Vec::new();
        sluice_core::telemetry::inject(&tracing::Span::current(), |key, value| {
            context.push((key.to_owned(), value))
        });
        outgoing.push(OutgoingRecord {
            topic: self.kafka.completions_topic.clone(),
            key: record.key(),
            payload: completion.to_json(),
            headers: sluice_core::kafka::with_headers(OwnedHeaders::new(), &context),
        });
        (outgoing, completion)
    }

    fn dead_letter(
        &self,
        message: &OwnedMessage,
        origin: &Position,
        class: &str,
        error: &str,
        attempts: u32,
    ) -> OutgoingRecord {
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        let (partition, offset, attempts) = (
            origin.partition.to_string(),
            origin.offset.to_string(),
            attempts.to_string(),
        );
        for (key, value) in [
            (dead_letter_header::ORIGIN_TOPIC, origin.topic.as_str()),
            (dead_letter_header::ORIGIN_PARTITION, &partition),
            (dead_letter_header::ORIGIN_OFFSET, &offset),
            (dead_letter_header::ERROR_CLASS, class),
            (dead_letter_header::ERROR, error),
            (dead_letter_header::ATTEMPTS, &attempts),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        OutgoingRecord {
            topic: self.kafka.dead_letter_topic.clone(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }
}

/// A batch at the model: the records received, and stages 1–3 running on their own task.
struct Embedding {
    messages: Vec<OwnedMessage>,
    /// The revocation number each message was received at (see `rebalance`).
    epochs: Vec<u64>,
    /// Each message's `process` span.
    spans: Vec<Span>,
    /// Each message as an ingestion record, or why its headers are not one.
    records: Vec<Result<DocumentRecord, MalformedRecord>>,
    /// The stages' results, one per document record, in order.
    stages: JoinHandle<Vec<Result<Staged, ProcessError>>>,
    /// Closes when the model is done with this batch; the next batch waits for it.
    model_freed: Option<oneshot::Receiver<()>>,
}

/// The results of the oldest batch in stages 1–3, once it is done; never, while none is.
async fn embedded(embedding: Option<&mut Embedding>) -> Vec<Result<Staged, ProcessError>> {
    let Some(batch) = embedding else {
        return std::future::pending().await;
    };
    let count = batch.records.iter().filter(|r| r.is_ok()).count();
    match (&mut batch.stages).await {
        Ok(staged) => staged,
        // A panic in a stage: each record is tried again alone, as after any transient error.
        Err(error) => {
            let error = ProcessError::Transient(format!("preparing and embedding: {error}"));
            vec![Err(error); count]
        }
    }
}

/// Records received for the next batch. Small records batch up; a large one goes (nearly)
/// alone, so that a batch's work stays about that of one document.
#[derive(Default)]
struct Gathering {
    /// Each with the revocation number it was received at.
    received: Vec<(OwnedMessage, u64)>,
    bytes: usize,
    since: Option<Instant>,
}

impl Gathering {
    fn push(&mut self, message: OwnedMessage, epoch: u64) {
        self.bytes += message.payload().map_or(0, <[u8]>::len);
        self.since.get_or_insert_with(Instant::now);
        self.received.push((message, epoch));
    }

    fn is_empty(&self) -> bool {
        self.received.is_empty()
    }

    fn is_full(&self) -> bool {
        self.received.len() >= MAX_BATCH || self.bytes >= MAX_BATCH_BYTES
    }

    /// Full, or waited long enough for more.
    fn ready(&self) -> bool {
        self.is_full()
            || self
                .since
                .is_some_and(|since| since.elapsed() >= BATCH_LINGER)
    }

    /// When the first record will have waited long enough (far off while there is none).
    fn linger_until(&self) -> tokio::time::Instant {
        match self.since {
            Some(since) => (since + BATCH_LINGER).into(),
            None => tokio::time::Instant::now() + Duration::from_secs(3600),
        }
    }

    fn epochs(&self) -> impl Iterator<Item = &u64> {
        self.received.iter().map(|(_, epoch)| epoch)
    }

    fn take(&mut self) -> Vec<(OwnedMessage, u64)> {
        self.bytes = 0;
        self.since = None;
        std::mem::take(&mut self.received)
    }
}

/// The records of `received` whose partition was not revoked since they arrived.
fn drop_stale(
    received: Vec<(OwnedMessage, u64)>,
    rebalances: &Rebalances,
) -> Vec<(OwnedMessage, u64)> {
    let count = received.len();
    let fresh: Vec<_> = received
        .into_iter()
        .filter(|(message, epoch)| {
            let partition = (message.topic().to_owned(), message.partition());
            !rebalances.is_stale(&partition, *epoch)
        })
        .collect();
    count_stale(count - fresh.len());
    fresh
}

/// Records of revoked partitions are their new owner's (or, re-assigned, read again from the
/// committed offset): not processed here.
fn count_stale(dropped: usize) {
    if dropped > 0 {
        tracing::info!(
            dropped,
            "records of revoked partitions left to their new owner"
        );
        metrics::counter!("sluice_worker_revoked_records_total").increment(dropped as u64);
    }
}

/// A committed completion in the metrics: documents by outcome and tenant, and how long the
/// document took from the gateway's acceptance to here.
fn count_completion(completion: &Completion) {
    let tenant = sluice_core::metrics::tenant_label(&completion.tenant);
    let name = match completion.outcome {
        Outcome::Indexed => "sluice_worker_documents_indexed_total",
        Outcome::Deleted => "sluice_worker_documents_deleted_total",
        Outcome::Failed => "sluice_worker_documents_failed_total",
    };
    metrics::counter!(name, "tenant" => tenant).increment(1);
    metrics::histogram!("sluice_worker_ingest_to_completed_seconds").record(
        sluice_core::metrics::seconds_since_ms(completion.accepted_at_ms),
    );
}

/// Where a message is.
fn position(message: &OwnedMessage) -> Position {
    Position {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
    }
}
