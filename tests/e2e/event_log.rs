//! The ingestion event log at the scale users run it: hundreds of documents through
//! IngestBatch and concurrent Ingest calls while several watchers follow, and a neighbour
//! tenant ingests at the same time.
//!
//! The promise under test (README, WatchIngestions): for every ingestion the log holds
//! ACCEPTED before exactly one terminal event; a reader that has seen cursor N never later
//! finds an event below N; every watcher sees every event once, in order; a stream waiting on
//! ids ends as soon as all of them have ended; the replay from "0", the live streams and
//! GetIngestion agree on every final state.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::{
    GetIngestionRequest, IngestBatchRequest, IngestRequest, IngestionEvent, IngestionState,
    WatchIngestionsRequest,
};
use sluice_tests::{as_tenant, document, rate_retry_delay, state, Database, Stack};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Streaming;

const TENANT: &str = "acme";
/// Another tenant ingesting at the same time: its events must never show in acme's streams,
/// and its activity must not disturb acme's numbering.
const NEIGHBOUR: &str = "globex";
/// Ingested (and waited for) before the watchers start, so one of them can start from a cursor.
const WARM_UP: usize = 10;
const BATCHES: usize = 4;
const BATCH: usize = 100;
const SINGLE_CLIENTS: usize = 10;
const SINGLES_PER_CLIENT: usize = 10;
const NEIGHBOUR_BATCHES: usize = 2;
/// The resumed watcher disconnects after this many events and reconnects with its cursor.
const DISCONNECT_AFTER: usize = 150;
/// How long any stream is read at most: the test ends by itself even when events are lost.
const READ_LIMIT: Duration = Duration::from_secs(240);
/// After the expected events, how long a stream is read on to catch any extra one.
const EXTRA_WAIT: Duration = Duration::from_millis(1500);

/// One event as a stream delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    cursor: i64,
    ingestion_id: String,
    state: IngestionState,
}

impl Seen {
    fn of(event: &IngestionEvent) -> Seen {
        let ingestion = event
            .ingestion
            .as_ref()
            .expect("events carry the ingestion");
        Seen {
            cursor: event.cursor.parse().expect("numeric cursor"),
            ingestion_id: ingestion.ingestion_id.clone(),
            state: state(ingestion),
        }
    }
}

fn terminal(state: IngestionState) -> bool {
    matches!(
        state,
        IngestionState::Indexed | IngestionState::Failed | IngestionState::Deleted
    )
}

/// 30–120 words: one chunk each, as in the report.
fn text(i: usize) -> String {
    const WORDS: [&str; 12] = [
        "river", "sluice", "gate", "water", "channel", "current", "mill", "stone", "flow", "bank",
        "lock", "weir",
    ];
    let words = 30 + (i * 37) % 91;
    (0..words)
        .map(|w| WORDS[(i + w * 7) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
        + &format!(" Document {i}.")
}

/// Retries a call refused over the tenant's rate, waiting as RetryInfo says (as a client should).
async fn with_rate_retries<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    for _ in 0..600 {
        match call().await {
            Ok(value) => return value,
            Err(status) => match rate_retry_delay(&status) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => panic!("refused: {status:?}"),
            },
        }
    }
    panic!("still over the rate after 600 tries");
}

async fn ingest_batches(
    client: IngestServiceClient<Channel>,
    tenant: &'static str,
    prefix: &'static str,
    batches: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for b in 0..batches {
        let documents: Vec<_> = (0..BATCH)
            .map(|i| {
                let n = b * BATCH + i;
                document(&format!("{prefix}-{n}"), "Batch", &text(n))
            })
            .collect();
        let response = with_rate_retries(|| {
            let mut client = client.clone();
            let request = as_tenant(
                tenant,
                IngestBatchRequest {
                    documents: documents.clone(),
                    idempotency_key: format!("{prefix}-batch-{b}"),
                },
            );
            async move { client.ingest_batch(request).await }
        })
        .await;
        ids.extend(
            response
                .into_inner()
                .ingestions
                .into_iter()
                .map(|i| i.ingestion_id),
        );
    }
    ids
}

async fn ingest_singles(client: IngestServiceClient<Channel>, k: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..SINGLES_PER_CLIENT {
        let n = 10_000 + k * SINGLES_PER_CLIENT + i;
        let response = with_rate_retries(|| {
            let mut client = client.clone();
            let request = as_tenant(
                TENANT,
                IngestRequest {
                    document: Some(document(&format!("single-{n}"), "Single", &text(n))),
                    ..Default::default()
                },
            );
            async move { client.ingest(request).await }
        })
        .await;
        ids.push(response.into_inner().ingestion.unwrap().ingestion_id);
    }
    ids
}

async fn watch(
    client: &IngestServiceClient<Channel>,
    cursor: &str,
    ids: Vec<String>,
) -> Result<Streaming<IngestionEvent>, tonic::Status> {
    Ok(client
        .clone()
        .watch_ingestions(as_tenant(
            TENANT,
            WatchIngestionsRequest {
                ingestion_ids: ids,
                after_cursor: cursor.into(),
            },
        ))
        .await?
        .into_inner())
}

/// What one watcher saw.
#[derive(Debug, Default)]
struct Watched {
    events: Vec<Seen>,
    /// The stream ended by itself (only streams on ids should).
    ended: bool,
    /// The last event's time (when the gateway logged it) → stream end, for streams that
    /// ended.
    end_latency: Option<Duration>,
    reconnects: usize,
    /// The gateway refused the stream or ended it with an error.
    error: Option<tonic::Status>,
}

/// Reads a tenant stream until `expected` (once known) events have arrived and then
/// [`EXTRA_WAIT`] more, or until [`READ_LIMIT`]. With `disconnect_after`, drops the stream
/// after that many events and resumes from the last cursor, as a client that lost its
/// connection does.
async fn follow(
    client: IngestServiceClient<Channel>,
    from: String,
    mut expected: watch::Receiver<Option<usize>>,
    disconnect_after: Option<usize>,
) -> Watched {
    let limit = Instant::now() + READ_LIMIT;
    let mut watched = Watched::default();
    let mut until: Option<Instant> = None;
    let mut cursor = from;
    'connection: loop {
        let mut stream = match watch(&client, &cursor, vec![]).await {
            Ok(stream) => stream,
            Err(status) => {
                watched.error = Some(status);
                break;
            }
        };
        loop {
            if until.is_none() {
                if let Some(n) = *expected.borrow() {
                    if watched.events.len() >= n {
                        until = Some(Instant::now() + EXTRA_WAIT);
                    }
                }
            }
            let stop = until.unwrap_or(limit).min(limit);
            tokio::select! {
                _ = tokio::time::sleep_until(stop) => break 'connection,
                _ = expected.changed(), if until.is_none() => {}
                event = stream.next() => match event {
                    Some(Ok(event)) => {
                        watched.events.push(Seen::of(&event));
                        cursor = event.cursor;
                        if disconnect_after == Some(watched.events.len()) {
                            break;
                        }
                    }
                    Some(Err(status)) => {
                        watched.error = Some(status);
                        break 'connection;
                    }
                    None => {
                        watched.ended = true;
                        break 'connection;
                    }
                },
            }
        }
        // Disconnected mid-way: gone a moment, then back with the last cursor.
        drop(stream);
        watched.reconnects += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    watched
}

/// Reads a stream on ids until it ends by itself, or [`READ_LIMIT`].
async fn follow_ids(client: IngestServiceClient<Channel>, ids: Vec<String>) -> Watched {
    let limit = Instant::now() + READ_LIMIT;
    let mut watched = Watched::default();
    let mut stream = match watch(&client, "", ids).await {
        Ok(stream) => stream,
        Err(status) => {
            watched.error = Some(status);
            return watched;
        }
    };
    let mut last_event = std::time::SystemTime::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(limit) => break,
            event = stream.next() => match event {
                Some(Ok(event)) => {
                    watched.events.push(Seen::of(&event));
                    if let Some(time) = event.event_time {
                        last_event = time.try_into().expect("event time");
                    }
                }
                Some(Err(status)) => {
                    watched.error = Some(status);
                    break;
                }
                None => {
                    watched.ended = true;
                    watched.end_latency = Some(last_event.elapsed().unwrap_or_default());
                    break;
                }
            },
        }
    }
    watched
}

/// What went wrong in one tenant stream that should hold exactly [ACCEPTED, terminal] for
/// each of `ids`, in cursor order. Returns (missing events, problems).
fn check_tenant_stream(
    name: &str,
    watched: &Watched,
    ids: &[String],
    final_states: &HashMap<String, IngestionState>,
) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut missing = 0;
    if let Some(w) = watched
        .events
        .windows(2)
        .find(|w| w[0].cursor >= w[1].cursor)
    {
        problems.push(format!(
            "{name}: cursor {} came after {}",
            w[1].cursor, w[0].cursor
        ));
    }
    let mut per_ingestion: HashMap<&str, Vec<IngestionState>> = HashMap::new();
    for seen in &watched.events {
        per_ingestion
            .entry(seen.ingestion_id.as_str())
            .or_default()
            .push(seen.state);
    }
    let known: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let strangers = per_ingestion
        .keys()
        .filter(|id| !known.contains(*id))
        .count();
    if strangers > 0 {
        problems.push(format!(
            "{name}: events of {strangers} ingestions nobody ingested here"
        ));
    }
    let mut bad = 0;
    for id in ids {
        let expected = [IngestionState::Accepted, final_states[id]];
        let got = per_ingestion.get(id.as_str()).cloned().unwrap_or_default();
        missing += expected.iter().filter(|s| !got.contains(s)).count();
        if got != expected {
            bad += 1;
            if bad <= 3 {
                problems.push(format!(
                    "{name}: ingestion {id}: {got:?}, expected {expected:?}"
                ));
            }
        }
    }
    if bad > 3 {
        problems.push(format!("{name}: {} more ingestions like that", bad - 3));
    }
    (missing, problems)
}

async fn final_states(
    client: &IngestServiceClient<Channel>,
    ids: &[String],
) -> HashMap<String, IngestionState> {
    let mut states = HashMap::new();
    for id in ids {
        let ingestion = client
            .clone()
            .get_ingestion(as_tenant(
                TENANT,
                GetIngestionRequest {
                    ingestion_id: id.clone(),
                },
            ))
            .await
            .expect("GetIngestion")
            .into_inner();
        states.insert(id.clone(), state(&ingestion));
    }
    states
}

async fn under_load(database: Database) {
    let stack = Stack::start(database).await;
    let client = stack.ingest_client().await;

    // Warm-up: a few ingestions that end before anyone watches, so one watcher can start
    // from a cursor.
    let mut warm_up = Vec::new();
    for i in 0..WARM_UP {
        let response = client
            .clone()
            .ingest(as_tenant(
                TENANT,
                IngestRequest {
                    document: Some(document(&format!("warm-{i}"), "Warm", &text(i))),
                    wait: true,
                    ..Default::default()
                },
            ))
            .await
            .expect("warm-up ingest")
            .into_inner()
            .ingestion
            .unwrap();
        assert_eq!(state(&response), IngestionState::Indexed);
        warm_up.push(response.ingestion_id);
    }
    let start_cursor = (2 * WARM_UP).to_string();

    // Three tenant watchers before the load: live from now, from the warm-up's last cursor,
    // and one that disconnects mid-way and resumes.
    let (expected_tx, expected_rx) = watch::channel(None::<usize>);
    let live = tokio::spawn(follow(
        client.clone(),
        String::new(),
        expected_rx.clone(),
        None,
    ));
    let from_cursor = tokio::spawn(follow(
        client.clone(),
        start_cursor.clone(),
        expected_rx.clone(),
        None,
    ));
    let resumed = tokio::spawn(follow(
        client.clone(),
        String::new(),
        expected_rx.clone(),
        Some(DISCONNECT_AFTER),
    ));
    // Let the watchers open before the first write.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let batches = tokio::spawn(ingest_batches(client.clone(), TENANT, "batch", BATCHES));
    let singles: Vec<_> = (0..SINGLE_CLIENTS)
        .map(|k| tokio::spawn(ingest_singles(client.clone(), k)))
        .collect();
    let neighbour = tokio::spawn(ingest_batches(
        client.clone(),
        NEIGHBOUR,
        "neighbour",
        NEIGHBOUR_BATCHES,
    ));
    let mut ids = batches.await.unwrap();
    for single in singles {
        ids.extend(single.await.unwrap());
    }
    let neighbour_ids = neighbour.await.unwrap();
    let accepted_in = started.elapsed();
    assert_eq!(
        ids.len(),
        BATCHES * BATCH + SINGLE_CLIENTS * SINGLES_PER_CLIENT
    );

    // A watcher on the ids, opened while workers are still indexing: it must end by itself.
    let by_ids = follow_ids(client.clone(), ids.clone()).await;
    let indexed_in = started.elapsed();
    // Every ingestion has ended by now (GetIngestion agrees with the stream below).
    let states = final_states(&client, &ids).await;
    let expected = 2 * ids.len();
    expected_tx.send(Some(expected)).unwrap();
    let live = live.await.unwrap();
    let from_cursor = from_cursor.await.unwrap();
    let resumed = resumed.await.unwrap();

    // The replay from "0": the warm-up and then the same events as the live streams.
    let (replay_tx, replay_rx) = watch::channel(Some(2 * (WARM_UP + ids.len())));
    let replay = follow(client.clone(), "0".into(), replay_rx, None).await;
    drop(replay_tx);

    let mut problems = Vec::new();
    let mut missing = Vec::new();
    for (name, watched) in [
        ("live", &live),
        ("from-cursor", &from_cursor),
        ("resumed", &resumed),
        ("replay", &replay),
        ("by-ids", &by_ids),
    ] {
        if let Some(status) = &watched.error {
            problems.push(format!("{name}: {:?}: {}", status.code(), status.message()));
        }
    }
    for (name, watched) in [
        ("live", &live),
        ("from-cursor", &from_cursor),
        ("resumed", &resumed),
    ] {
        let (lost, found) = check_tenant_stream(name, watched, &ids, &states);
        missing.push((name, lost));
        problems.extend(found);
        if watched.ended {
            problems.push(format!("{name}: a tenant stream ended by itself"));
        }
    }
    let mut all_ids = warm_up.clone();
    all_ids.extend(ids.iter().cloned());
    let mut all_states = final_states(&client, &warm_up).await;
    all_states.extend(states.clone());
    let (lost, found) = check_tenant_stream("replay", &replay, &all_ids, &all_states);
    missing.push(("replay", lost));
    problems.extend(found);
    if resumed.reconnects != 1 {
        problems.push(format!(
            "resumed: reconnected {} times, expected once",
            resumed.reconnects
        ));
    }

    // The replay after the warm-up is exactly what the live streams saw.
    let cut = start_cursor.parse::<i64>().unwrap();
    let replayed: Vec<&Seen> = replay.events.iter().filter(|e| e.cursor > cut).collect();
    for (name, watched) in [
        ("live", &live),
        ("from-cursor", &from_cursor),
        ("resumed", &resumed),
    ] {
        let seen: Vec<&Seen> = watched.events.iter().collect();
        if seen != replayed {
            problems.push(format!(
                "{name} ({} events) differs from the replay ({} events)",
                seen.len(),
                replayed.len()
            ));
        }
    }

    // The stream on ids: each ingestion's state when it opened, then each one still going
    // ends exactly once; the stream ends by itself.
    let mut by_ids_lost = 0;
    if !by_ids.ended {
        problems.push("by-ids: the stream did not end after every ingestion ended".into());
    }
    let mut last: HashMap<&str, IngestionState> = HashMap::new();
    let mut terminals: HashMap<&str, usize> = HashMap::new();
    for seen in &by_ids.events {
        if terminal(seen.state) {
            *terminals.entry(seen.ingestion_id.as_str()).or_default() += 1;
        }
        last.insert(seen.ingestion_id.as_str(), seen.state);
    }
    if let Some(w) = by_ids.events.windows(2).find(|w| w[0].cursor > w[1].cursor) {
        problems.push(format!(
            "by-ids: cursor {} came after {}",
            w[1].cursor, w[0].cursor
        ));
    }
    for id in &ids {
        match terminals.get(id.as_str()) {
            None => by_ids_lost += 1,
            Some(1) => {}
            Some(n) => problems.push(format!("by-ids: ingestion {id} ended {n} times")),
        }
        if last.get(id.as_str()) != Some(&states[id]) {
            problems.push(format!(
                "by-ids: ingestion {id} last seen {:?}, GetIngestion says {:?}",
                last.get(id.as_str()),
                states[id]
            ));
        }
    }
    missing.push(("by-ids", by_ids_lost));

    // The neighbour's ingestions all ended too, in its own log.
    for id in &neighbour_ids {
        let ingestion = sluice_tests::ended(&client, NEIGHBOUR, id, Duration::from_secs(60)).await;
        assert_eq!(state(&ingestion), IngestionState::Indexed);
    }

    let indexed = states
        .values()
        .filter(|s| **s == IngestionState::Indexed)
        .count();
    println!(
        "event log on {database:?}: {} ingestions ({} indexed) accepted in {accepted_in:.1?}, \
         all ended after {indexed_in:.1?}; missing events: {}; the stream on ids ended {} after \
         its last event was logged",
        ids.len(),
        indexed,
        missing
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        by_ids
            .end_latency
            .map(|d| format!("{d:.1?}"))
            .unwrap_or_else(|| "never".into()),
    );
    let shown = problems.len().min(30);
    assert!(
        problems.is_empty() && missing.iter().all(|(_, n)| *n == 0),
        "the event log broke its promise ({} problems):\n{}",
        problems.len(),
        problems[..shown].join("\n")
    );
    assert_eq!(indexed, ids.len(), "every document indexes");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_event_under_load_on_sqlite() {
    under_load(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_event_under_load_on_postgres() {
    under_load(Database::Postgres).await;
}
