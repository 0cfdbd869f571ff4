//! The client over the wire, against the fake gateway: retries (bounded, honouring
//! RetryInfo, one idempotency key per write, never past the deadline), details, batching,
//! watch resumption (no event missed or repeated across broken streams and cut
//! connections), wait_for, search results.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use super::*;
use crate::{Document, Error, IngestionState, RetryPolicy};

const U: Code = Code::Unavailable;

fn fast() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        ..RetryPolicy::default()
    }
}

fn note() -> serde_json::Value {
    json!({"text": "hello"})
}

#[tokio::test]
async fn ingest_retries_with_one_key_and_writes_once() {
    let running = Running::start().await;
    running.fake.lock().refusals = VecDeque::from([
        Some(
            Refusal::new(
                Code::Aborted,
                "transaction aborted; nothing was written, retry",
            )
            .retry_after(Duration::from_millis(100)),
        ),
        Some(Refusal::new(U, "Kafka is unavailable").retry_after(Duration::from_millis(100))),
    ]);
    let sluice = running.client().build().unwrap();
    let started = Instant::now();
    let ingestion = sluice.ingest("doc-1", &note()).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(ingestion.document_id, "doc-1");
    assert_eq!(ingestion.state, IngestionState::Accepted);
    let state = running.fake.lock();
    let keys = &state.write_keys;
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k == &keys[0]), "{keys:?}");
    // As the Python client's `py-<32 hex>`: a prefix naming the client, a random UUID.
    let key = keys[0].strip_prefix("rs-").expect("an rs- key");
    assert!(
        key.len() == 32 && key.chars().all(|c| c.is_ascii_hexdigit()),
        "{key}"
    );
    assert_eq!(state.writes, 1);
    // Both RetryInfo delays were waited out.
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
}

#[tokio::test]
async fn every_write_has_its_own_key_kept_across_its_retries() {
    let running = Running::start().await;
    let retry = || Some(Refusal::new(U, "down").retry_after(Duration::from_millis(10)));
    running.fake.lock().refusals = VecDeque::from([retry(), None, retry(), None, retry(), None]);
    let sluice = running.client().build().unwrap();
    sluice.ingest("a", &note()).await.unwrap();
    sluice
        .ingest_many([("b", note()), ("c", note())])
        .await
        .unwrap();
    let deleted = sluice.delete("a").await.unwrap();
    assert_eq!(deleted.operation, crate::Operation::Delete);
    let state = running.fake.lock();
    let keys = &state.write_keys;
    assert_eq!(keys.len(), 6);
    for pair in keys.chunks(2) {
        assert_eq!(pair[0], pair[1]);
    }
    assert_ne!(keys[0], keys[2]);
    assert_ne!(keys[2], keys[4]);
    assert_eq!(state.writes, 3);
    let methods: Vec<_> = state.calls.iter().map(|c| c.method).collect();
    assert_eq!(
        methods,
        [
            "Ingest",
            "Ingest",
            "IngestBatch",
            "IngestBatch",
            "DeleteDocument",
            "DeleteDocument"
        ]
    );
}

#[tokio::test]
async fn a_repeated_call_with_the_same_key_is_not_a_second_write() {
    let running = Running::start().await;
    let sluice = running.client().build().unwrap();
    let first = sluice
        .ingest("doc-1", &note())
        .idempotency_key("mine-1")
        .await
        .unwrap();
    let again = sluice
        .ingest("doc-1", &note())
        .idempotency_key("mine-1")
        .await
        .unwrap();
    let other = sluice.ingest("doc-1", &note()).await.unwrap();
    assert_eq!(first.ingestion_id, again.ingestion_id);
    assert_ne!(first.ingestion_id, other.ingestion_id);
    assert_eq!(running.fake.lock().writes, 2);
}

#[tokio::test]
async fn a_quota_with_retry_info_is_waited_out() {
    let running = Running::start().await;
    running.fake.lock().refusals = VecDeque::from([Some(
        Refusal::new(Code::ResourceExhausted, "over documents_per_second")
            .quota("documents_per_second")
            .retry_after(Duration::from_millis(150)),
    )]);
    let sluice = running.client().build().unwrap();
    let started = Instant::now();
    sluice.ingest("doc-1", &note()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(running.fake.lock().write_keys.len(), 2);
}

#[tokio::test]
async fn a_quota_without_retry_info_fails_at_once_with_the_quota() {
    let running = Running::start().await;
    running.fake.lock().refusals = VecDeque::from([Some(
        Refusal::new(
            Code::ResourceExhausted,
            "batch over a second of documents_per_second",
        )
        .quota("documents_per_second"),
    )]);
    let sluice = running.client().build().unwrap();
    let error = sluice.ingest("doc-1", &note()).await.unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert_eq!(error.quota_violations()[0].subject, "documents_per_second");
    assert_eq!(error.retry_delay(), None);
    assert_eq!(running.fake.lock().write_keys.len(), 1);
}

#[tokio::test]
async fn gives_up_after_max_attempts_with_the_last_error() {
    let running = Running::start().await;
    let aborted = Refusal::new(Code::Aborted, "aborted").retry_after(Duration::from_millis(10));
    running.fake.lock().refusals = std::iter::repeat_n(Some(aborted), 10).collect();
    let policy = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    let sluice = running.client().retry(policy).build().unwrap();
    let error = sluice.ingest("doc-1", &note()).await.unwrap_err();
    assert_eq!(error.code(), Code::Aborted);
    assert_eq!(error.retry_delay(), Some(Duration::from_millis(10)));
    assert_eq!(running.fake.lock().write_keys.len(), 3);
}

#[tokio::test]
async fn invalid_argument_is_not_retried_and_names_the_field() {
    let running = Running::start().await;
    running.fake.lock().refusals = VecDeque::from([Some(
        Refusal::new(Code::InvalidArgument, "bad").field("document.document_id", "required"),
    )]);
    let sluice = running.client().build().unwrap();
    let error = sluice.ingest("", &note()).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(error.field_violations()[0].field, "document.document_id");
    assert_eq!(error.field_violations()[0].description, "required");
    assert_eq!(running.fake.lock().write_keys.len(), 1);
}

#[tokio::test]
async fn no_retry_is_made_that_would_start_past_the_deadline() {
    let running = Running::start().await;
    running.fake.lock().refusals = VecDeque::from([Some(
        Refusal::new(U, "down").retry_after(Duration::from_secs(5)),
    )]);
    let sluice = running
        .client()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = sluice.ingest("doc-1", &note()).await.unwrap_err();
    assert_eq!(error.code(), U);
    assert_eq!(error.retry_delay(), Some(Duration::from_secs(5)));
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(running.fake.lock().write_keys.len(), 1);
}

#[tokio::test]
async fn each_attempt_carries_what_is_left_of_the_deadline() {
    let running = Running::start().await;
    running.fake.lock().refusals = VecDeque::from([Some(
        Refusal::new(U, "down").retry_after(Duration::from_millis(300)),
    )]);
    let sluice = running.client().build().unwrap();
    sluice.ingest("doc-1", &note()).await.unwrap();
    sluice.ingest("doc-2", &note()).wait(true).await.unwrap();
    let state = running.fake.lock();
    let timeouts: Vec<Duration> = state.calls.iter().map(|c| c.timeout.unwrap()).collect();
    assert!(timeouts[0] <= Duration::from_secs(10) && timeouts[0] > Duration::from_secs(9));
    assert!(
        timeouts[1] <= timeouts[0] - Duration::from_millis(300),
        "{timeouts:?}"
    );
    // A waiting call gets the wait timeout (120 s by default), and says it waits.
    assert!(timeouts[2] > Duration::from_secs(119), "{timeouts:?}");
    assert_eq!(state.waits, [false, false, true]);
    // Every call says who is calling: the tenant (development header) and the client.
    for call in &state.calls {
        assert_eq!(call.tenant.as_deref(), Some("t"));
        let agent = call.user_agent.as_deref().unwrap_or_default();
        assert!(agent.starts_with("sluice-client-rust/"), "{agent}");
    }
}

#[tokio::test]
async fn a_call_that_outlives_its_deadline_is_deadline_exceeded() {
    let running = Running::start().await;
    running.fake.lock().delay = Some(Duration::from_secs(5));
    let sluice = running.client().build().unwrap();
    let started = Instant::now();
    let error = sluice
        .ingest("doc-1", &note())
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::DeadlineExceeded, "{error}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert_eq!(running.fake.lock().calls.len(), 1);
}

#[tokio::test]
async fn a_gateway_that_is_not_there_is_unavailable_after_bounded_tries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        ..RetryPolicy::default()
    };
    let sluice = client_of(&format!("127.0.0.1:{port}"))
        .retry(policy)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = sluice.search("anything").await.unwrap_err();
    assert_eq!(error.code(), U, "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_client_reconnects_once_the_gateway_is_there() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sluice = client_of(&addr.to_string())
        .retry(RetryPolicy::never())
        .build()
        .unwrap();
    for _ in 0..3 {
        let error = sluice.search("anything").await.unwrap_err();
        assert_eq!(error.code(), U, "{error}");
    }
    // The gateway comes (back); the same client, its connection made anew, gets through.
    let _running = Running::start_on(addr).await;
    assert_eq!(sluice.search("anything").top_k(1).await.unwrap().len(), 1);
}

#[tokio::test]
async fn ingest_many_calls_ingest_batch_per_batch_with_a_key_each() {
    let running = Running::start().await;
    let sluice = running.client().batch_size(3).build().unwrap();
    let mut docs: Vec<Document> = (0..7)
        .map(|i| {
            Document::new(format!("d{i}"), json!({"text": i.to_string()})).with_attribute("k", "v")
        })
        .collect();
    docs.push(("pair", json!({"text": "a pair"})).into());
    let ingestions = sluice.ingest_many(docs).await.unwrap();
    let ids: Vec<_> = ingestions.iter().map(|i| i.document_id.as_str()).collect();
    let mut want: Vec<String> = (0..7).map(|i| format!("d{i}")).collect();
    want.push("pair".into());
    assert_eq!(ids, want);
    let state = running.fake.lock();
    assert_eq!(state.batch_sizes, [3, 3, 2]);
    let keys: HashSet<_> = state.write_keys.iter().collect();
    assert_eq!(keys.len(), 3);
}

#[tokio::test]
async fn ingest_many_splits_by_bytes_too() {
    let running = Running::start().await;
    let sluice = running.client().max_batch_bytes(2500).build().unwrap();
    let text = "x".repeat(1000);
    let docs = (0..5).map(|i| (format!("d{i}"), json!({ "text": text })));
    assert_eq!(sluice.ingest_many(docs).await.unwrap().len(), 5);
    assert_eq!(running.fake.lock().batch_sizes, [2, 2, 1]);
}

#[tokio::test]
async fn a_failed_batch_reports_what_was_accepted_before_it() {
    let running = Running::start().await;
    running.fake.lock().refusals = VecDeque::from([
        None,
        Some(Refusal::new(Code::InvalidArgument, "bad").field("documents[1].document_id", "bad")),
    ]);
    let sluice = running.client().batch_size(2).build().unwrap();
    let docs = ["a", "b", "c", "d", "e"].map(|name| (name, json!({"text": ""})));
    let error = sluice.ingest_many(docs).await.unwrap_err();
    let accepted: Vec<_> = error
        .accepted()
        .iter()
        .map(|i| i.document_id.as_str())
        .collect();
    assert_eq!(accepted, ["a", "b"]);
    assert_eq!(
        error.field_violations()[0].field,
        "documents[1].document_id"
    );
    assert_eq!(running.fake.lock().batch_sizes, [2, 2]);
}

#[tokio::test]
async fn a_document_that_cannot_be_encoded_writes_nothing() {
    let running = Running::start().await;
    let sluice = running.client().build().unwrap();
    let docs = [
        ("ok", json!({"text": "fine"})),
        ("bad", json!(["not", "a", "record"])),
    ];
    let error = sluice.ingest_many(docs).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().starts_with("document bad:"), "{error}");
    assert!(running.fake.lock().calls.is_empty());
}

#[tokio::test]
async fn ingest_many_can_wait_until_all_have_ended() {
    let running = Running::start().await;
    running.fake.lock().auto_index = true;
    let sluice = running
        .client()
        .batch_size(2)
        .watch_retry(fast())
        .build()
        .unwrap();
    let ended = sluice
        .ingest_many((0..3).map(|i| (format!("d{i}"), json!({"text": "x"}))))
        .wait(true)
        .await
        .unwrap();
    let states: Vec<_> = ended
        .iter()
        .map(|i| (i.document_id.as_str(), i.state))
        .collect();
    assert_eq!(
        states,
        [
            ("d0", IngestionState::Indexed),
            ("d1", IngestionState::Indexed),
            ("d2", IngestionState::Indexed)
        ]
    );
    assert!(uuid::Uuid::parse_str(&ended[0].ingestion_id).is_ok());
    assert_eq!(running.fake.lock().batch_sizes, [2, 1]);
}

#[tokio::test]
async fn get_ingestion_and_not_found() {
    let running = Running::start().await;
    running
        .fake
        .add_events([ingestion(1, ACCEPTED), ingestion(1, INDEXED)]);
    let sluice = running.client().build().unwrap();
    let found = sluice.get_ingestion("ing-1").await.unwrap();
    assert_eq!(found.state, IngestionState::Indexed);
    assert!(found.is_finished());
    let error = sluice.get_ingestion("ing-2").await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
}

async fn collect(watch: &mut crate::Watch, count: usize) -> Vec<crate::IngestionEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
        match next.expect("an event within 10 s") {
            Some(Ok(event)) => events.push(event),
            Some(Err(error)) => panic!("the watch failed: {error}"),
            None => break,
        }
    }
    events
}

#[tokio::test]
async fn a_watch_resumes_after_each_broken_stream_with_no_event_missed_or_repeated() {
    let running = Running::start().await;
    running
        .fake
        .add_events((0..30).map(|i| ingestion(i, ACCEPTED)));
    running
        .fake
        .add_events((0..30).map(|i| ingestion(i, INDEXED)));
    {
        let mut state = running.fake.lock();
        state.break_every = 7;
        state.breaks = 100;
    }
    let sluice = running.client().watch_retry(fast()).build().unwrap();
    let mut watch = sluice.watch().after_cursor("0");
    let events = collect(&mut watch, 60).await;
    let cursors: Vec<_> = events.iter().map(|e| e.cursor.clone()).collect();
    assert_eq!(cursors, (1..=60).map(|n| n.to_string()).collect::<Vec<_>>());
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.ingestion.ingestion_id.clone(), e.ingestion.state))
        .collect();
    let want: Vec<_> = (0..30)
        .map(|i| (format!("ing-{i}"), IngestionState::Accepted))
        .chain((0..30).map(|i| (format!("ing-{i}"), IngestionState::Indexed)))
        .collect();
    assert_eq!(seen, want);
    // Each new stream asked for the events after the last one received.
    let asked: Vec<_> = running
        .fake
        .lock()
        .watch_requests
        .iter()
        .map(|r| r.after_cursor.clone())
        .collect();
    assert_eq!(asked[..4], ["0", "7", "14", "21"]);
    assert_eq!(watch.reconnects(), 8);
    assert_eq!(watch.cursor(), "60");
}

#[tokio::test]
async fn a_watch_resumes_across_cut_connections() {
    let running = Running::start().await;
    let proxy = Proxy::start(running.addr).await;
    let sluice = client_of(&proxy.addr.to_string())
        .watch_retry(fast())
        .build()
        .unwrap();
    running
        .fake
        .add_events((0..10).map(|i| ingestion(i, ACCEPTED)));
    let mut watch = sluice.watch().after_cursor("0");
    let mut events = collect(&mut watch, 10).await;
    for round in 0..3 {
        // The connection goes as a killed gateway's does; events keep coming meanwhile.
        assert_eq!(proxy.cut(), 1, "round {round}: one connection open");
        running
            .fake
            .add_events((0..10).map(|i| ingestion(10 * (round + 1) + i, ACCEPTED)));
        events.extend(collect(&mut watch, 10).await);
    }
    let cursors: Vec<_> = events.iter().map(|e| e.cursor.clone()).collect();
    assert_eq!(cursors, (1..=40).map(|n| n.to_string()).collect::<Vec<_>>());
    assert_eq!(watch.reconnects(), 3);
}

#[tokio::test]
async fn watching_ids_restarts_a_broken_snapshot_and_hands_out_each_state_once() {
    let running = Running::start().await;
    running
        .fake
        .add_events((0..5).map(|i| ingestion(i, ACCEPTED)));
    running
        .fake
        .add_events((0..3).map(|i| ingestion(i, INDEXED)));
    {
        let mut state = running.fake.lock();
        // The first stream breaks inside the snapshot.
        state.break_every = 2;
        state.breaks = 1;
    }
    let ids: Vec<String> = (0..5).map(|i| format!("ing-{i}")).collect();
    let sluice = running.client().watch_retry(fast()).build().unwrap();
    let mut watch = sluice.watch().ingestion_ids(ids.clone());
    let mut seen = Vec::new();
    while let Some(event) = watch.next().await {
        let event = event.unwrap();
        seen.push((event.ingestion.ingestion_id, event.ingestion.state));
        if seen.len() == 2 {
            running
                .fake
                .add_events((3..5).map(|i| ingestion(i, INDEXED)));
        }
    }
    // The first snapshot said ing-0 and ing-1 were indexed; the new snapshot repeats them
    // (dropped) and shows the rest as they are now.
    seen.sort();
    let want: Vec<_> = ids
        .iter()
        .map(|i| (i.clone(), IngestionState::Indexed))
        .collect();
    assert_eq!(seen, want);
    let asked: Vec<_> = running
        .fake
        .lock()
        .watch_requests
        .iter()
        .map(|r| r.after_cursor.clone())
        .collect();
    assert_eq!(asked, ["", ""]);
}

#[tokio::test]
async fn a_watch_gives_up_after_its_attempts_in_a_row() {
    let running = Running::start().await;
    running.fake.lock().watch_refusal =
        Some(Refusal::new(U, "down").retry_after(Duration::from_millis(1)));
    let sluice = running.client().watch_retry(fast()).build().unwrap();
    let mut watch = sluice.watch();
    let error = watch.next().await.unwrap().unwrap_err();
    assert_eq!(error.code(), U);
    assert!(watch.next().await.is_none());
    assert_eq!(running.fake.lock().watch_requests.len(), 5);
}

#[tokio::test]
async fn an_expired_cursor_is_out_of_range_at_once() {
    let running = Running::start().await;
    running.fake.lock().watch_refusal = Some(Refusal::new(
        Code::OutOfRange,
        "the events after this cursor are older than the gateway keeps",
    ));
    let sluice = running.client().watch_retry(fast()).build().unwrap();
    let error = sluice
        .watch()
        .after_cursor("1")
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code(), Code::OutOfRange);
    assert_eq!(running.fake.lock().watch_requests.len(), 1);
}

#[tokio::test]
async fn a_watchs_timeout_ends_it_with_deadline_exceeded() {
    let running = Running::start().await;
    let sluice = running.client().build().unwrap();
    let started = Instant::now();
    let mut watch = sluice.watch().timeout(Duration::from_millis(300));
    let error = watch.next().await.unwrap().unwrap_err();
    assert_eq!(error.code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(watch.next().await.is_none());
}

#[tokio::test]
async fn wait_for_returns_each_ingestion_as_it_ended() {
    let running = Running::start().await;
    for i in 0..4 {
        running
            .fake
            .add_events([ingestion(i, ACCEPTED), ingestion(i, INDEXED)]);
    }
    let sluice = running
        .client()
        .batch_size(3)
        .watch_retry(fast())
        .build()
        .unwrap();
    let ids = [3, 0, 1, 2, 0].map(|i| format!("ing-{i}"));
    let ended = sluice.wait_for(ids, None).await.unwrap();
    let got: Vec<_> = ended.iter().map(|i| i.ingestion_id.as_str()).collect();
    assert_eq!(got, ["ing-3", "ing-0", "ing-1", "ing-2"]);
    assert!(ended
        .iter()
        .all(|i| i.state == IngestionState::Indexed && i.is_finished()));
    let sizes: Vec<_> = running
        .fake
        .lock()
        .watch_requests
        .iter()
        .map(|r| r.ingestion_ids.len())
        .collect();
    assert_eq!(sizes, [3, 1]);
}

#[tokio::test]
async fn wait_for_times_out_with_what_finished() {
    let running = Running::start().await;
    running.fake.add_events([
        ingestion(0, ACCEPTED),
        ingestion(0, INDEXED),
        ingestion(1, ACCEPTED),
    ]);
    let sluice = running.client().build().unwrap();
    let started = Instant::now();
    let error: Error = sluice
        .wait_for(["ing-0", "ing-1"], Some(Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(error.code(), Code::DeadlineExceeded);
    assert_eq!(
        error.message(),
        "1 of 2 ingestions had not finished in time"
    );
    let waited = error.wait_timeout().expect("what finished and what not");
    assert_eq!(waited.finished.len(), 1);
    assert_eq!(waited.finished[0].ingestion_id, "ing-0");
    assert_eq!(waited.pending, ["ing-1"]);
}

#[tokio::test]
async fn search_returns_typed_hits() {
    let running = Running::start().await;
    let sluice = running.client().build().unwrap();
    let hits = sluice
        .search("tides")
        .top_k(2)
        .filter("kind", "sample")
        .await
        .unwrap();
    assert_eq!(hits.len(), 2);
    assert_eq!(
        (hits[0].document_id.as_str(), hits[0].chunk_index),
        ("d0", 0)
    );
    assert_eq!(
        (hits[1].document_id.as_str(), hits[1].chunk_index),
        ("d1", 1)
    );
    assert_eq!(hits[0].text, "tides");
    assert!((hits[0].score - 1.0).abs() < 1e-6 && (hits[1].score - 0.9).abs() < 1e-6);
    assert_eq!(hits[1].attributes["kind"], "sample");
    // top_k defaults to 10.
    assert_eq!(sluice.search("tides").await.unwrap().len(), 10);
}

#[tokio::test]
async fn a_client_needs_credentials_a_valid_target_and_sane_options() {
    use crate::ConfigError;
    let error = Client::builder("127.0.0.1:1").build().unwrap_err();
    assert!(matches!(error, ConfigError::NoCredentials), "{error}");
    assert!(error.to_string().contains("mTLS"));
    let error = client_of("https://127.0.0.1:1").build().unwrap_err();
    assert!(matches!(error, ConfigError::Target { .. }), "{error}");
    let error = client_of("127.0.0.1:1").batch_size(0).build().unwrap_err();
    assert!(matches!(error, ConfigError::Option(_)), "{error}");
    let never = RetryPolicy {
        max_attempts: 0,
        ..RetryPolicy::default()
    };
    assert!(client_of("127.0.0.1:1").retry(never).build().is_err());
    // PEM that is not a certificate is refused when the client is made.
    let credentials =
        crate::TlsCredentials::from_pem("not pem", "not pem", Some(b"nor this".to_vec()));
    let error = Client::builder("127.0.0.1:1").tls(credentials).build();
    assert!(matches!(error, Err(ConfigError::Tls(_))), "{error:?}");
}

#[test]
fn a_client_is_made_inside_a_runtime() {
    let error = client_of("127.0.0.1:1").build().unwrap_err();
    assert!(matches!(error, crate::ConfigError::NoRuntime), "{error}");
}
