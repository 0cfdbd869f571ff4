//! Per-tenant quotas over mTLS: over a limit is RESOURCE_EXHAUSTED (with google.rpc.RetryInfo
//! when waiting helps), quota changes take effect without a restart, and a tenant flooding the
//! gateway is refused (tests/e2e/fairness.rs shows it does not slow another tenant down).

use std::time::Duration;

use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::search_service_client::SearchServiceClient;
use sluice_core::proto::{IngestRequest, SearchRequest, WatchIngestionsRequest};
use sluice_core::tenants::QuotaUpdate;
use sluice_tests::{document, eventually, tenant_id, Database, Stack};
use tonic::Code;
use tonic_types::StatusExt;

fn note(id: &str) -> IngestRequest {
    IngestRequest {
        document: Some(document(id, id, "A short note about quotas.")),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_enforced_and_follow_the_registry() {
    let stack = Stack::start_tls(Database::Sqlite, &["acme"]).await;
    let tenants = stack.tenants().await;
    let channel = stack.client_channel("acme").await;
    let mut ingest = IngestServiceClient::new(channel.clone());
    let search = SearchServiceClient::new(channel);

    // Tighten acme's quotas under the running gateway.
    tenants
        .set_quotas(
            "tests",
            &tenant_id("acme"),
            QuotaUpdate {
                documents_per_second: Some(3),
                max_payload_bytes: Some(2_000),
                max_watch_streams: Some(1),
                max_top_k: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // max_top_k: refused once the gateway's copy of the registry has the new quota.
    let refused = eventually("the new top_k quota", Duration::from_secs(10), || {
        let mut search = search.clone();
        async move {
            search
                .search(SearchRequest {
                    query: "anything".into(),
                    top_k: 6,
                    ..Default::default()
                })
                .await
                .err()
        }
    })
    .await;
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("at most 5"),
        "{}",
        refused.message()
    );

    // Documents per second: a burst of 3 passes, the 4th waits, with RetryInfo.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut outcomes = Vec::new();
    for i in 0..6 {
        outcomes.push(ingest.ingest(note(&format!("doc-{i}"))).await);
    }
    let accepted = outcomes.iter().filter(|o| o.is_ok()).count();
    assert!((3..=4).contains(&accepted), "{accepted} of 6 accepted");
    let limited = outcomes
        .into_iter()
        .filter_map(Result::err)
        .next()
        .expect("some were refused");
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let details = limited.get_error_details();
    let retry = details
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(retry <= Duration::from_secs(1), "{retry:?}");
    assert_eq!(
        details.quota_failure().expect("QuotaFailure").violations[0].subject,
        "documents_per_second"
    );
    // After the advised wait, it passes.
    tokio::time::sleep(retry + Duration::from_millis(50)).await;
    ingest
        .ingest(note("after-wait"))
        .await
        .expect("admitted after the wait");

    // Payload size.
    let mut big = note("big");
    big.document = Some(document("big", "big", &"word ".repeat(1_000)));
    let refused = ingest.ingest(big).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("at most 2000 bytes"),
        "{}",
        refused.message()
    );

    // Watch streams: one open, the second refused, a place again once the first ends.
    let first = ingest
        .watch_ingestions(WatchIngestionsRequest::default())
        .await
        .expect("first watch");
    let second = ingest
        .watch_ingestions(WatchIngestionsRequest::default())
        .await
        .expect_err("second watch refused");
    assert_eq!(second.code(), Code::ResourceExhausted);
    drop(first);
    eventually(
        "the watch place given back",
        Duration::from_secs(10),
        || {
            let mut ingest = ingest.clone();
            async move {
                ingest
                    .watch_ingestions(WatchIngestionsRequest::default())
                    .await
                    .ok()
            }
        },
    )
    .await;

    stack.shutdown().await;
}

/// Every call has a per-tenant rate, not only ingestions: past `requests_per_second`,
/// GetIngestion, Search and WatchIngestions are refused RESOURCE_EXHAUSTED with RetryInfo
/// before they do any work, while ingestions (counted in documents) go on. A call that waits
/// (`wait = true`) holds a watch stream's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_has_a_rate_and_waiting_calls_count_as_watchers() {
    let stack = Stack::start_tls(Database::Sqlite, &["acme"]).await;
    let tenants = stack.tenants().await;
    tenants
        .set_quotas(
            "tests",
            &tenant_id("acme"),
            QuotaUpdate {
                requests_per_second: Some(4),
                max_watch_streams: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let channel = stack.client_channel("acme").await;
    let mut ingest = IngestServiceClient::new(channel.clone());
    let mut search = SearchServiceClient::new(channel);
    // Once the gateway's copy of the registry has the new quota, a burst of lookups runs
    // into it.
    let limited = eventually(
        "the requests_per_second quota",
        Duration::from_secs(10),
        || {
            let mut ingest = ingest.clone();
            async move {
                for _ in 0..10 {
                    let lookup = ingest
                        .get_ingestion(sluice_core::proto::GetIngestionRequest {
                            ingestion_id: "none".into(),
                        })
                        .await
                        .unwrap_err();
                    if lookup.code() == Code::ResourceExhausted {
                        return Some(lookup);
                    }
                }
                None
            }
        },
    )
    .await;
    let details = limited.get_error_details();
    assert_eq!(
        details.quota_failure().expect("QuotaFailure").violations[0].subject,
        "requests_per_second"
    );
    assert!(details.retry_info().is_some(), "{limited:?}");
    let refused = search
        .search(SearchRequest {
            query: "anything".into(),
            top_k: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Ingestions count documents, not calls.
    ingest
        .ingest(note("still-accepted"))
        .await
        .expect("an ingestion while calls are limited");

    // wait = true takes the one watch place: a second waiting call is refused meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let watch = ingest
        .watch_ingestions(WatchIngestionsRequest::default())
        .await
        .expect("the one watch stream");
    let mut waiting = note("waits");
    waiting.wait = true;
    let refused = ingest.ingest(waiting.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    drop(watch);
    let indexed = eventually(
        "the watch place given back",
        Duration::from_secs(10),
        || {
            let mut ingest = ingest.clone();
            let waiting = waiting.clone();
            async move { ingest.ingest(waiting).await.ok() }
        },
    )
    .await;
    assert!(indexed.into_inner().ingestion.is_some());
    stack.shutdown().await;
}
