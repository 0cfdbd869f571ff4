//! Against a real local stack (`support`: the nisshi broker and `sluice-gateway
//! --standalone` on mTLS, as `deploy/dev/up` starts them): the example, the client's calls and
//! errors as the gateway sends them, quotas with RetryInfo, and a watch that outlives gateway
//! restarts (SIGTERM, then SIGKILL) with no event missed or repeated.
//!
//! They need the broker, the model and the built binaries, and fail without them unless
//! `SLUICE_SDK_REQUIRE_STACK=0` (then each says loudly that it is skipped).

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use sluice_client::{
    Client, Code, Document, Error, IngestionEvent, IngestionState, RetryPolicy, TlsCredentials,
};
use support::{tools_or_skip, LocalStack, ONE_AT_A_TIME};

/// A fresh stack for `test`, or `None` when it is skipped.
async fn stack(test: &str) -> Option<LocalStack> {
    let tools = tools_or_skip(test)?;
    Some(LocalStack::start(tools).await)
}

fn samples() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/dev/samples.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("samples.json")).expect("JSON")
}

/// The example binary cargo built next to this test (`cargo test` builds the examples).
fn example_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the target directory");
    let path = debug.join("examples/ingest_folder");
    assert!(
        path.exists(),
        "{} is missing: `cargo test -p sluice-client` builds it (or `cargo build -p sluice-client --examples`)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_ingests_a_folder_watches_and_searches() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(stack) = stack("the example").await else {
        return;
    };
    let folder = stack.root.path().join("notes");
    std::fs::create_dir(&folder).unwrap();
    let samples = samples();
    for sample in &samples {
        let body = format!(
            "{}\n\n{}\n",
            sample["title"].as_str().unwrap(),
            sample["text"].as_str().unwrap()
        );
        std::fs::write(
            folder.join(format!("{}.txt", sample["id"].as_str().unwrap())),
            body,
        )
        .unwrap();
    }
    let tls = stack.tls.display().to_string();
    let run = tokio::process::Command::new(example_binary())
        .arg(&folder)
        .args([
            "--target",
            &stack.target(),
            "--certs",
            &tls,
            "--tenant",
            &stack.tenant,
        ])
        .args(["--query", "how do glaciers shape the land"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the example finished within 300 s")
        .expect("the example ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        stack.log_tail(30)
    );
    assert!(
        stdout.contains(&format!("indexed {0} of {0}", samples.len())),
        "{stdout}"
    );
    let hits: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|line| line.starts_with("  0."))
        .map(|line| line.split_whitespace().collect())
        .collect();
    let glacier = samples
        .iter()
        .find(|s| s["title"].as_str().unwrap().contains("lacier"))
        .unwrap()["id"]
        .as_str()
        .unwrap();
    assert!(!hits.is_empty(), "no hits:\n{stdout}");
    assert_eq!(hits[0][1], format!("{glacier}.txt"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_search_delete_and_schemas() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(stack) = stack("ingest, search, delete and schemas").await else {
        return;
    };
    let sluice = stack.client().build().unwrap();
    let note = json!({"title": "Tides", "text": "The moon pulls the sea twice a day."});
    let ingestion = sluice
        .ingest("tides", &note)
        .attribute("kind", "note")
        .wait(true)
        .await
        .unwrap();
    assert_eq!(ingestion.state, IngestionState::Indexed);
    assert!(ingestion.chunk_count >= 1);
    assert!(ingestion.accepted_at.is_some() && ingestion.completed_at.is_some());
    assert_eq!(
        sluice.get_ingestion(&ingestion.ingestion_id).await.unwrap(),
        ingestion
    );
    let hits = sluice
        .search("what moves the tides")
        .top_k(3)
        .filter("kind", "note")
        .await
        .unwrap();
    assert_eq!(hits[0].document_id, "tides");
    assert_eq!(hits[0].attributes["kind"], "note");
    assert_eq!(hits[0].attributes["title"], "Tides");

    // A schema of the tenant's own; Avro JSON with tagged unions from its definition.
    let definition = json!({
        "type": "record", "name": "Article", "namespace": "com.example",
        "fields": [
            {"name": "headline", "type": "string", "sluice.role": "attribute"},
            {"name": "body", "type": "string", "sluice.role": "text"},
            {"name": "pages", "type": ["null", "int", "string"], "default": null}]});
    let schema = sluice
        .register_schema("article", definition.to_string())
        .await
        .unwrap();
    assert_eq!((schema.version, schema.text_field.as_str()), (1, "body"));
    assert_eq!(schema.attribute_fields, ["headline"]);
    assert!(sluice
        .list_schemas()
        .await
        .unwrap()
        .contains(&"article".to_owned()));
    assert_eq!(sluice.list_schema_versions("article").await.unwrap(), [1]);
    let latest = sluice.get_schema("article", 0).await.unwrap();
    assert_eq!(sluice.get_schema_by_id(latest.id).await.unwrap(), latest);
    let article = sluice
        .ingest(
            "a-1",
            &json!({"headline": "Ebb", "body": "The sea withdraws.", "pages": "iv"}),
        )
        .schema("article")
        .avro_schema(&latest.definition)
        .wait(true)
        .await
        .unwrap();
    assert_eq!(article.state, IngestionState::Indexed);

    let mut incompatible = definition.clone();
    incompatible["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "isbn", "type": "string"}));
    let check = sluice
        .check_compatibility("article", incompatible.to_string())
        .await
        .unwrap();
    assert!(!check.compatible && !check.reasons.is_empty());
    let refused = sluice
        .register_schema("article", incompatible.to_string())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    let violations = refused.precondition_violations();
    assert!(
        !violations.is_empty() && violations[0].kind == "COMPATIBILITY",
        "{refused:?}"
    );

    let deleted = sluice.delete("tides").wait(true).await.unwrap();
    assert_eq!(deleted.state, IngestionState::Deleted);
    assert_eq!(deleted.operation, sluice_client::Operation::Delete);
    let hits = sluice
        .search("what moves the tides")
        .top_k(5)
        .await
        .unwrap();
    assert!(hits.iter().all(|h| h.document_id != "tides"), "{hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_document_is_invalid_argument_naming_each_bad_field() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(stack) = stack("invalid documents").await else {
        return;
    };
    let sluice = stack.client().build().unwrap();
    let documents = [
        ("ok", json!({"text": "fine"})),
        ("bad", json!({"text": 5, "tags": ["a", 1]})),
    ];
    let error = sluice.ingest_many(documents).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");
    let fields: HashSet<&str> = error
        .field_violations()
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(
        fields,
        HashSet::from([
            "documents[1].avro_json.text",
            "documents[1].avro_json.tags[1]"
        ]),
        "{error:?}"
    );
    assert!(error.accepted().is_empty());
    let error = sluice.ingest("bad", &json!({"text": 5})).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        error.field_violations()[0].field,
        "document.avro_json.text",
        "{error:?}"
    );
    let error = sluice.get_ingestion("no-such-ingestion").await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_waited_out_when_retry_info_says_so() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(stack) = stack("quotas").await else {
        return;
    };
    stack
        .admin(&["tenant", "create", "tight", "--name", "Tight quotas"])
        .await;
    stack
        .admin(&[
            "tenant",
            "quotas",
            "tight",
            "--documents-per-second",
            "5",
            "--max-top-k",
            "2",
        ])
        .await;
    let certs = stack.root.path().join("tight-certs");
    let (tls, out) = (stack.tls.display().to_string(), certs.display().to_string());
    stack
        .admin(&["cert", "client", "tight", "--ca-dir", &tls, "--out", &out])
        .await;
    // This directory has no ca.pem (cert client --out writes only the pair): name the CA.
    let credentials = TlsCredentials::from_directory(&certs, None)
        .unwrap()
        .with_ca_file(stack.tls.join("ca.pem"))
        .unwrap();
    let sluice = Client::builder(stack.target())
        .tls(credentials)
        .build()
        .unwrap();
    // The gateway picks registry changes up within a second or so.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sluice.search("anything").top_k(3).await {
            // Not known yet, or known from before `tenant quotas` ran: the next refresh of the
            // registry brings the quotas (the gateway may read it between the two commands).
            Err(e) if e.code() == Code::PermissionDenied => {}
            Ok(_) => {}
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert_eq!(e.quota_violations()[0].subject, "max_top_k", "{e:?}");
                assert_eq!(e.retry_delay(), None);
                break;
            }
            other => panic!("expected the max_top_k quota, got {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the max_top_k quota did not take effect"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let started = Instant::now();
    for n in 0..3 {
        let documents = (0..5).map(|i| {
            (
                format!("q-{n}-{i}"),
                json!({"text": format!("quota {n} {i}")}),
            )
        });
        assert_eq!(sluice.ingest_many(documents).await.unwrap().len(), 5);
    }
    // 15 documents at 5 a second: the gateway's RetryInfo was waited out.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Over a second's worth at once: no RetryInfo, no retry.
    let too_big = sluice
        .ingest_many((0..6).map(|i| (format!("big-{i}"), json!({"text": "x"}))))
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::ResourceExhausted, "{too_big}");
    assert_eq!(too_big.retry_delay(), None);
    assert_eq!(
        too_big.quota_violations()[0].subject,
        "documents_per_second"
    );
}

/// Documents in batches of ten: four before the first restart, four during it, two before
/// the kill, two while it happens.
const BATCHES: usize = 12;
const DOCS: usize = BATCHES * 10;

type Events = Arc<Mutex<Vec<IngestionEvent>>>;

fn count(events: &Events) -> usize {
    events.lock().unwrap().len()
}

async fn wait_until(
    what: &str,
    watchers: &[Events],
    least: usize,
    failures: &Arc<Mutex<Vec<String>>>,
) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while watchers.iter().any(|w| count(w) < least) {
        assert!(
            failures.lock().unwrap().is_empty(),
            "{:?}",
            failures.lock().unwrap()
        );
        let counts: Vec<_> = watchers.iter().map(count).collect();
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: {counts:?} events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two watchers (each its own client and connection) follow the tenant's events from a cursor
/// while 120 documents are ingested and the gateway is stopped twice: gracefully (SIGTERM)
/// while documents are being written, then killed (SIGKILL) while the last batches are being
/// indexed. Each must see exactly the 240 events (ACCEPTED, then INDEXED, per document), in
/// cursor order, once each, and must have resumed at both stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_resumes_across_gateway_restarts_with_no_event_missed_or_repeated() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(mut stack) = stack("the watch across restarts").await else {
        return;
    };
    let patient = RetryPolicy {
        max_attempts: 60,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        ..RetryPolicy::default()
    };
    let sluice = stack.client().build().unwrap();
    let seed = sluice
        .ingest("seed", &json!({"text": "Where the watch starts."}))
        .wait(true)
        .await
        .unwrap();
    let mut seed_watch = sluice.watch().ingestion_ids([seed.ingestion_id]);
    while let Some(event) = seed_watch.next().await {
        event.unwrap();
    }
    let start = seed_watch.cursor().to_owned();

    let expected = 2 * DOCS;
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut watchers = Vec::new();
    let mut collected: Vec<Events> = Vec::new();
    for _ in 0..2 {
        let events: Events = Arc::default();
        collected.push(events.clone());
        let client = stack.client().watch_retry(patient.clone()).build().unwrap();
        let (start, failures) = (start.clone(), failures.clone());
        watchers.push(tokio::spawn(async move {
            let mut watch = client
                .watch()
                .after_cursor(start)
                .timeout(Duration::from_secs(400));
            while let Some(event) = watch.next().await {
                match event {
                    Ok(event) => {
                        let mut events = events.lock().unwrap();
                        events.push(event);
                        if events.len() == expected {
                            break;
                        }
                    }
                    Err(error) => failures.lock().unwrap().push(error.to_string()),
                }
            }
            watch.reconnects()
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // both streams open

    let writer = stack
        .client()
        .retry(patient.clone())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let ingest = |batches: std::ops::Range<usize>| {
        let (writer, ids) = (writer.clone(), ids.clone());
        async move {
            for batch in batches {
                let documents = (0..10).map(|i| {
                    let text = format!("Resume test document {batch}.{i}: the tide turns.");
                    Document::new(format!("resume-{batch}-{i}"), json!({ "text": text }))
                });
                let accepted = writer.ingest_many(documents).await?;
                ids.lock()
                    .unwrap()
                    .extend(accepted.into_iter().map(|i| i.ingestion_id));
            }
            Ok::<(), Error>(())
        }
    };

    let t0 = Instant::now();
    let mut phases = Vec::new();
    ingest(0..4).await.unwrap();
    wait_until("the watchers are mid-way", &collected, 40, &failures).await;
    phases.push(("40 documents in, watchers mid-way", t0.elapsed()));
    // Graceful: streams end UNAVAILABLE; the batches written meanwhile are retried (same key).
    let writing = tokio::spawn(ingest(4..8));
    stack.stop_gateway().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.start_gateway().await;
    phases.push(("SIGTERM, restarted", t0.elapsed()));
    tokio::time::timeout(Duration::from_secs(180), writing)
        .await
        .expect("the writer finished")
        .unwrap()
        .unwrap();
    ingest(8..10).await.unwrap();
    // Both watchers resumed on the new instance before it is killed.
    wait_until("the watchers resumed", &collected, 2 * 100, &failures).await;
    phases.push(("100 documents in, watchers resumed", t0.elapsed()));
    // Killed right after two batches are accepted, while they are being indexed: connections
    // reset, the worker redoes its open transaction.
    ingest(10..12).await.unwrap();
    stack.kill_gateway();
    let at_kill: Vec<_> = collected.iter().map(count).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.start_gateway().await;
    phases.push(("SIGKILL, restarted", t0.elapsed()));
    assert!(
        at_kill.iter().all(|n| *n < expected),
        "indexing finished before the kill: {at_kill:?}"
    );

    let mut reconnects = Vec::new();
    for watcher in watchers {
        let joined = tokio::time::timeout(Duration::from_secs(300), watcher).await;
        reconnects.push(
            joined
                .expect("the watcher finished")
                .expect("the watcher task"),
        );
    }
    phases.push(("watchers done", t0.elapsed()));
    let line: Vec<_> = phases
        .iter()
        .map(|(name, at)| format!("{name} +{:.1} s", at.as_secs_f64()))
        .collect();
    println!(
        "{}; reconnects {reconnects:?}; events at the kill {at_kill:?}",
        line.join(", ")
    );
    assert!(
        failures.lock().unwrap().is_empty(),
        "{:?}",
        failures.lock().unwrap()
    );

    let ids = ids.lock().unwrap().clone();
    assert_eq!(ids.len(), DOCS);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), DOCS);
    let want: HashSet<(String, IngestionState)> = ids
        .iter()
        .flat_map(|id| {
            [
                (id.clone(), IngestionState::Accepted),
                (id.clone(), IngestionState::Indexed),
            ]
        })
        .collect();
    for (n, events) in collected.iter().enumerate() {
        let events = events.lock().unwrap();
        assert_eq!(events.len(), expected, "watcher {n}");
        let cursors: Vec<u64> = events
            .iter()
            .map(|e| e.cursor.parse().expect("a numeric cursor"))
            .collect();
        assert!(
            cursors.windows(2).all(|w| w[0] < w[1]),
            "watcher {n}: cursors out of order or repeated"
        );
        let seen: Vec<_> = events
            .iter()
            .map(|e| (e.ingestion.ingestion_id.clone(), e.ingestion.state))
            .collect();
        let distinct: HashSet<_> = seen.iter().cloned().collect();
        assert_eq!(
            distinct.len(),
            expected,
            "watcher {n}: an event was repeated"
        );
        assert_eq!(distinct, want, "watcher {n}");
        for id in &ids {
            let at = |state| seen.iter().position(|s| s.0 == *id && s.1 == state);
            assert!(
                at(IngestionState::Accepted) < at(IngestionState::Indexed),
                "watcher {n}: {id}"
            );
        }
        // Each watcher's stream really broke, at both restarts.
        assert!(
            reconnects[n] >= 2,
            "watcher {n} reconnected {} times",
            reconnects[n]
        );
    }
    assert_eq!(stack.gateway_starts, 3);
    let ended = sluice
        .wait_for(ids.iter().cloned(), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(ended.iter().all(|i| i.state == IngestionState::Indexed));
}
