//! Consumes the workers' completion events into the database and the hub.
//!
//! Every gateway instance reads every completion (its own consumer group), because any
//! instance may hold the watch stream or waiting call an event is for. Completions that arrive
//! together (a worker commits a batch's at once) are recorded in one database transaction,
//! then their waiters are woken, each under its own trace span. The database update is
//! first-terminal-wins, so duplicates (several gateways, a broker that shows aborted records,
//! redelivery after a restart) end each ingestion once in the log. Every delivery wakes this
//! gateway's waiters, though: with several gateways on one database, another gateway may have
//! recorded the end first.

use sluice_core::telemetry::Chain;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt;
use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::Message;
use sea_orm::DatabaseConnection;
use sluice_core::config::KafkaConfig;
use sluice_core::db::projection::{self, Change};
use sluice_core::kafka::read_committed_consumer;
use sluice_core::record::Completion;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ingest::hub::Hub;
use crate::ingest::service::to_proto;

/// Completions recorded in one database transaction, at most.
const MAX_APPLIED_TOGETHER: usize = 64;

pub fn spawn(
    kafka: KafkaConfig,
    group_id: String,
    db: DatabaseConnection,
    hub: Hub,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    // Offsets are stored only after the database has the event, and committed periodically:
    // a restart replays at most the last few, which the projection ignores.
    let consumer: StreamConsumer = read_committed_consumer(
        &kafka,
        &group_id,
        &[
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
        ],
        DefaultConsumerContext,
    )?;
    consumer.subscribe(&[kafka.completions_topic.as_str()])?;
    Ok(tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                message = consumer.recv() => message,
            };
            let first = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(error = %Chain(&error), "completion consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // The completions already here go with it, into one database transaction: a
            // worker commits a batch's completions together, so they arrive together.
            let mut messages = vec![first];
            while messages.len() < MAX_APPLIED_TOGETHER {
                match consumer.recv().now_or_never() {
                    Some(Ok(message)) => messages.push(message),
                    Some(Err(error)) => {
                        tracing::warn!(error = %Chain(&error), "completion consumer error");
                        break;
                    }
                    None => break,
                }
            }
            let (mut spans, mut completions) = (Vec::new(), Vec::new());
            for message in &messages {
                match Completion::from_json(message.payload().unwrap_or_default()) {
                    // The end of the document's trace: the completion recorded, waiters woken.
                    Ok(completion) => {
                        spans.push(sluice_core::kafka::process_span(message));
                        completions.push(completion);
                    }
                    Err(error) => {
                        tracing::error!(error = %Chain(&error), offset = message.offset(), "unreadable completion skipped")
                    }
                }
            }
            apply(&db, &hub, spans, completions).await;
            for message in &messages {
                if let Err(error) = consumer.store_offset_from_message(message) {
                    tracing::warn!(error = %Chain(&error), "cannot store completion offset");
                }
            }
        }
        // Closing commits the stored offsets and leaves the group; it blocks (up to librdkafka's
        // timeouts when the broker is gone), so not on an async thread.
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        tracing::info!("completion consumer stopped");
    }))
}

/// Applies completions, in one database transaction, then wakes their waiters; retries the
/// database until it answers, since skipping would lose the events for watchers. Each
/// completion's span lasts until its waiters are woken.
async fn apply(
    db: &DatabaseConnection,
    hub: &Hub,
    spans: Vec<tracing::Span>,
    completions: Vec<Completion>,
) {
    if completions.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let changes = (|| projection::apply_completions(db, &completions))
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .without_max_times(),
        )
        .notify(|error, pause| tracing::warn!(error = %Chain(error), ?pause, "cannot record completions; retrying"))
        .await
        .expect("retried without limit");
    metrics::histogram!("sluice_gateway_database_duration_seconds", "operation" => "apply_completion")
        .record(started.elapsed().as_secs_f64());
    for ((span, completion), changes) in spans.into_iter().zip(&completions).zip(changes) {
        wake(db, hub, completion, changes).instrument(span).await;
    }
}

/// Hands one applied completion's events to this gateway's waiters.
async fn wake(db: &DatabaseConnection, hub: &Hub, completion: &Completion, changes: Vec<Change>) {
    // Already ended: a duplicate, or another gateway sharing the database recorded it first.
    // This gateway's waiting calls and watch streams must hear of it all the same (they may be
    // waiting for exactly this), so its end is handed on again; a watch stream reads the log
    // from its cursor, so nobody sees an event twice.
    let mut ended_elsewhere = None;
    if changes.is_empty() {
        match projection::latest_event_of(db, &completion.tenant, &completion.ingestion_id).await {
            Ok(Some(event)) => {
                let ingestion = to_proto(&event.ingestion());
                if crate::ingest::hub::is_terminal(&ingestion) {
                    ended_elsewhere = Some((event.tenant, event.tenant_seq, ingestion));
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "cannot read an ended ingestion; its waiters recheck at their deadline")
            }
        }
    }
    let _wake = tracing::info_span!("wake watchers", events = changes.len()).entered();
    if let Some((tenant, seq, ingestion)) = ended_elsewhere {
        hub.publish(&tenant, seq, ingestion);
    }
    for change in changes {
        hub.publish(&change.row.tenant, change.seq, to_proto(&change.row));
    }
    // From the worker's commit to the waiters' wake-up (two machines' clocks: approximate).
    metrics::histogram!("sluice_gateway_completion_wake_seconds").record(
        sluice_core::metrics::seconds_since_ms(completion.completed_at_ms),
    );
}
