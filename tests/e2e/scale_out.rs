//! Two gateways over one broker and one PostgreSQL: what a client sees does not depend on
//! which gateway it reaches. One is the standalone stack (it owns the embedded store and the
//! worker); the other is a gateway-only instance with its own database pool, Kafka producer,
//! completions consumer, idempotency locks and quota limiters (only the model and the
//! embedded store's handle are shared, for search).
//!
//! - an ingestion one gateway accepted is found on the other right after the OK;
//! - completions reach watchers and waiting calls on the gateway that did not accept the
//!   ingestion, promptly;
//! - the same idempotency key through both gateways at the same instant writes once;
//! - a tenant's documents_per_second holds in total, not per gateway;
//! - a worker with no database indexes every tenant's documents, reading their schemas through
//!   the gateway's registry API with a worker certificate.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use sluice_core::proto::document::Payload;
use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::schema_service_client::SchemaServiceClient;
use sluice_core::proto::{
    Document, GetIngestionRequest, IngestBatchRequest, IngestRequest, IngestionState,
    RegisterSchemaRequest, WatchIngestionsRequest,
};
use sluice_core::record::DocumentRecord;
use sluice_core::tenants::Quotas;
use sluice_gateway::server::{Gateway, RunningGateway};
use sluice_tests::{as_tenant, document, ended, read_topic, state, tenant_id, Database, Stack};
use sluice_worker::Shared;
use tonic::transport::Channel;
use tonic::Code;

/// A gateway-only instance beside the stack's standalone one, on the same broker and database.
async fn second_gateway(stack: &Stack) -> RunningGateway {
    let mut config = stack.config.clone();
    config.gateway.instance_id = format!("second-{}", uuid::Uuid::new_v4().simple());
    let db = sluice_core::db::connect(&config.database_url())
        .await
        .expect("second gateway's database");
    let schemas = sluice_core::schema_registry::open(&config.schemas, &db).expect("schemas");
    let first = &stack.standalone().shared;
    let shared = Shared {
        embedder: first.embedder.clone(),
        store: first.store.clone(),
        db,
        schemas: schemas.catalog,
        builtin_registry: schemas.builtin,
    };
    Gateway::start(&config, shared)
        .await
        .expect("start the second gateway")
}

async fn client_of(gateway: &RunningGateway) -> IngestServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", gateway.grpc_addr))
        .unwrap()
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
    IngestServiceClient::new(channel)
}

fn text(n: usize) -> String {
    format!("Note {n} about the tides, the moon and harbour number {n}.")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_and_waiting_calls_on_one_gateway_see_ingestions_accepted_by_another() {
    let stack = Stack::start(Database::Postgres).await;
    let b = second_gateway(&stack).await;
    let on_a = stack.ingest_client().await;
    let on_b = client_of(&b).await;
    const TENANT: &str = "harbour";
    const DOCUMENTS: usize = 200;
    const WAITED: usize = 6;
    stack.generous_tenant(TENANT).await;

    // Three watchers on A, from the tenant's current end (the first event is the cursor).
    let mut watchers = Vec::new();
    for _ in 0..3 {
        let mut stream = on_a
            .clone()
            .watch_ingestions(as_tenant(TENANT, WatchIngestionsRequest::default()))
            .await
            .unwrap()
            .into_inner();
        watchers.push(tokio::spawn(async move {
            // ingestion id → (states seen, when INDEXED arrived)
            let mut seen: HashMap<String, (Vec<i32>, Option<Instant>)> = HashMap::new();
            let limit = Instant::now() + Duration::from_secs(180);
            let mut indexed = 0;
            // B's batches and the waited-for documents.
            while indexed < DOCUMENTS + WAITED && Instant::now() < limit {
                let next = tokio::time::timeout(Duration::from_secs(30), stream.message()).await;
                let Ok(Ok(Some(event))) = next else { break };
                let ingestion = event.ingestion.unwrap();
                let entry = seen.entry(ingestion.ingestion_id.clone()).or_default();
                entry.0.push(ingestion.state);
                if state(&ingestion) == IngestionState::Indexed {
                    entry.1 = Some(Instant::now());
                    indexed += 1;
                }
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // B accepts 200 documents in 4 batches.
    let mut accepted = Vec::new();
    for batch in 0..4 {
        let documents = (0..DOCUMENTS / 4)
            .map(|i| {
                let n = batch * 50 + i;
                document(&format!("doc-{n}"), "Tides", &text(n))
            })
            .collect();
        let response = on_b
            .clone()
            .ingest_batch(as_tenant(
                TENANT,
                IngestBatchRequest {
                    documents,
                    idempotency_key: format!("batch-{batch}"),
                },
            ))
            .await
            .unwrap();
        let ids: Vec<String> = response
            .into_inner()
            .ingestions
            .into_iter()
            .map(|i| i.ingestion_id)
            .collect();
        // B answers once the batch is in Kafka and records it just after: asked at once, A
        // (first) and B find every ingestion all the same.
        for (name, client) in [("A", &on_a), ("B", &on_b)] {
            let lookups = ids.iter().map(|id| {
                let mut client = client.clone();
                let request = GetIngestionRequest {
                    ingestion_id: id.clone(),
                };
                async move { client.get_ingestion(as_tenant(TENANT, request)).await }
            });
            for (id, found) in ids.iter().zip(futures::future::join_all(lookups).await) {
                let found = found
                    .unwrap_or_else(|e| panic!("{name} did not find {id} right after the OK: {e}"));
                assert_eq!(found.into_inner().ingestion_id, *id);
            }
        }
        accepted.extend(ids);
    }

    // Waiting calls on A for ingestions B accepted: the same key, so A answers with B's
    // ingestion and waits for its end. Several, since which gateway records a completion
    // first is a race, and A must hear of the end either way.
    let mut wakes = Vec::new();
    for w in 0..WAITED {
        let single = IngestRequest {
            document: Some(document(&format!("waited-{w}"), "Waited", &text(9_000 + w))),
            idempotency_key: format!("the-waited-one-{w}"),
            ..Default::default()
        };
        let first = on_b
            .clone()
            .ingest(as_tenant(TENANT, single.clone()))
            .await
            .unwrap()
            .into_inner()
            .ingestion
            .unwrap();
        let waited = on_a
            .clone()
            .ingest(as_tenant(
                TENANT,
                IngestRequest {
                    wait: true,
                    ..single
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .ingestion
            .unwrap();
        let answered_at_ms = sluice_core::record::now_ms();
        assert_eq!(
            waited.ingestion_id, first.ingestion_id,
            "A answered with B's ingestion"
        );
        assert_eq!(state(&waited), IngestionState::Indexed);
        let completed = waited.completed_at.unwrap();
        wakes.push(
            answered_at_ms - completed.seconds * 1000 - i64::from(completed.nanos / 1_000_000),
        );
    }
    println!(
        "wait=true on A for B's ingestions: answered {wakes:?} ms after the worker completed each"
    );
    assert!(
        wakes.iter().all(|wake| *wake < 1_000),
        "answered {wakes:?} ms after completion (the recheck is 1 s)"
    );

    let accepted: HashSet<String> = accepted.into_iter().collect();
    assert_eq!(accepted.len(), DOCUMENTS);
    for (w, watcher) in watchers.into_iter().enumerate() {
        let seen = watcher.await.unwrap();
        let mut indexed_once = 0;
        for id in &accepted {
            let (states, _) = seen
                .get(id)
                .unwrap_or_else(|| panic!("watcher {w} never saw {id}"));
            let indexed = states
                .iter()
                .filter(|s| **s == IngestionState::Indexed as i32)
                .count();
            assert_eq!(
                indexed, 1,
                "watcher {w}: {id} INDEXED {indexed} times ({states:?})"
            );
            indexed_once += 1;
        }
        println!(
            "watcher {w} on A: {indexed_once} of B's {DOCUMENTS} ingestions INDEXED, each once"
        );
    }
    b.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_key_through_two_gateways_at_once_writes_once() {
    let stack = Stack::start(Database::Postgres).await;
    let b = second_gateway(&stack).await;
    let on_a = stack.ingest_client().await;
    let on_b = client_of(&b).await;
    const TENANT: &str = "twice";
    const KEYS: usize = 60;
    stack.generous_tenant(TENANT).await;

    // Each key sent through both gateways at the same instant, three copies each.
    let mut calls = Vec::new();
    for k in 0..KEYS {
        for copy in 0..3 {
            let mut client = if (k + copy) % 2 == 0 {
                on_a.clone()
            } else {
                on_b.clone()
            };
            let request = as_tenant(
                TENANT,
                IngestRequest {
                    document: Some(document(&format!("doc-{k}"), "Twice", &text(k))),
                    idempotency_key: format!("key-{k}"),
                    ..Default::default()
                },
            );
            calls.push(tokio::spawn(
                async move { (k, client.ingest(request).await) },
            ));
        }
    }
    let mut answered: HashMap<usize, HashSet<String>> = HashMap::new();
    for call in calls {
        let (k, response) = call.await.unwrap();
        let ingestion = response
            .unwrap_or_else(|status| panic!("key-{k}: {status:?}"))
            .into_inner()
            .ingestion
            .unwrap();
        answered
            .entry(k)
            .or_default()
            .insert(ingestion.ingestion_id);
    }
    for (k, ids) in &answered {
        assert_eq!(ids.len(), 1, "key-{k} answered with {ids:?}");
    }

    // Kafka holds one record per key.
    let records = read_topic(&stack.config.kafka, &stack.config.kafka.documents_topic).await;
    let mut written: HashMap<String, HashSet<String>> = HashMap::new();
    for message in &records {
        let record = DocumentRecord::from_message(message).unwrap();
        if record.tenant.as_str() == TENANT {
            written
                .entry(record.document_id.clone())
                .or_default()
                .insert(record.ingestion_id.clone());
        }
    }
    assert_eq!(written.len(), KEYS, "documents written");
    for (document, ids) in &written {
        assert_eq!(ids.len(), 1, "{document} written as {ids:?}");
    }
    println!(
        "{} calls for {KEYS} keys through two gateways: {} records, one per key",
        KEYS * 3,
        written.values().map(HashSet::len).sum::<usize>()
    );
    let last = answered[&(KEYS - 1)].iter().next().unwrap().clone();
    assert_eq!(
        state(&ended(&on_a, TENANT, &last, Duration::from_secs(60)).await),
        IngestionState::Indexed
    );
    b.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_rate_holds_in_total_across_gateways() {
    let stack = Stack::start(Database::Postgres).await;
    const RATE: u32 = 40;
    const TENANT: &str = "rated";
    stack
        .tenants()
        .await
        .create_tenant(
            "tests",
            &tenant_id(TENANT),
            "Rated",
            Quotas {
                documents_per_second: RATE,
                ..Quotas::default()
            },
        )
        .await
        .unwrap();
    // B reads the registry at start; A within its refresh interval.
    let b = second_gateway(&stack).await;
    tokio::time::sleep(Duration::from_millis(
        2 * stack.config.tenants.refresh_interval_ms + 500,
    ))
    .await;
    let on_a = stack.ingest_client().await;
    let on_b = client_of(&b).await;

    // Four senders per gateway, as fast as they are answered, for RUN.
    const RUN: Duration = Duration::from_secs(4);
    let started = Instant::now();
    let mut senders = Vec::new();
    for s in 0..8 {
        let client = if s % 2 == 0 {
            on_a.clone()
        } else {
            on_b.clone()
        };
        senders.push(tokio::spawn(async move {
            let (mut accepted, mut refused) = (0usize, 0usize);
            let mut n = 0;
            while started.elapsed() < RUN {
                n += 1;
                let request = as_tenant(
                    TENANT,
                    IngestRequest {
                        document: Some(document(&format!("s{s}-{n}"), "Rated", &text(n))),
                        ..Default::default()
                    },
                );
                match client.clone().ingest(request).await {
                    Ok(_) => accepted += 1,
                    Err(status) if status.code() == Code::ResourceExhausted => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(status) => panic!("{status:?}"),
                }
            }
            (s % 2, accepted, refused)
        }));
    }
    let mut per_gateway = [0usize; 2];
    let mut refused = 0;
    for sender in senders {
        let (gateway, accepted, r) = sender.await.unwrap();
        per_gateway[gateway] += accepted;
        refused += r;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = per_gateway[0] + per_gateway[1];
    // The bound of tenancy::quota: rate × (T + reserve TTL) + one second's burst.
    let bound = f64::from(RATE) * (elapsed + 0.5) + f64::from(RATE);
    println!(
        "documents_per_second = {RATE} over {elapsed:.1} s through two gateways: {total} accepted \
         (A {}, B {}), {refused} refused; one gateway alone would allow {:.0}, the bound is {bound:.0}, \
         per-gateway limits would have allowed {:.0}",
        per_gateway[0],
        per_gateway[1],
        f64::from(RATE) * (elapsed + 1.0),
        2.0 * f64::from(RATE) * (elapsed + 1.0),
    );
    assert!(
        (total as f64) <= bound,
        "{total} accepted, more than {bound:.0}"
    );
    assert!(
        (total as f64) >= 0.8 * f64::from(RATE) * elapsed,
        "only {total} accepted in {elapsed:.1} s at {RATE}/s"
    );
    assert!(per_gateway[0] > 0 && per_gateway[1] > 0, "{per_gateway:?}");
    b.shutdown().await;
    stack.shutdown().await;
}

/// An article schema of `tenant`'s own (its namespace differs per tenant).
fn article_schema(tenant: &str) -> String {
    format!(
        r#"{{"type": "record", "name": "Article", "namespace": "com.{tenant}", "fields": [
            {{"name": "headline", "type": "string", "sluice.role": "attribute"}},
            {{"name": "body", "type": "string", "sluice.role": "text"}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_without_the_database_reads_schemas_through_the_gateway_with_its_certificate() {
    let mut stack = Stack::start_tls(Database::Sqlite, &["acme", "globex"]).await;
    // The stack's own worker steps aside, so the worker below indexes everything.
    stack.standalone_mut().stop_worker().await;

    // The worker's configuration: no database at all, the schemas through the gateway's
    // registry API with a worker certificate.
    let pki = stack.pki();
    let issued = pki.worker("indexer-1");
    let dir = stack.data_dir.path().join("worker-tls");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("worker.pem"), &issued.cert_pem).unwrap();
    std::fs::write(dir.join("worker-key.pem"), &issued.key_pem).unwrap();
    let mut config = stack.config.clone();
    config.database.url = Some("postgres://no-database-here.invalid/none".into());
    config.schemas.url = Some(format!(
        "https://localhost:{}",
        stack.standalone().gateway.grpc_addr.port()
    ));
    config.schemas.ca = Some(pki.dir.join("ca.pem"));
    config.schemas.client_cert = Some(dir.join("worker.pem"));
    config.schemas.client_key = Some(dir.join("worker-key.pem"));
    let schemas = sluice_core::schema_registry::open_by_url(&config.schemas).unwrap();
    let first = &stack.standalone().shared;
    let indexer = sluice_worker::indexer_for(
        &config,
        schemas.clone(),
        first.embedder.clone(),
        first.store.clone(),
    )
    .unwrap();
    let worker =
        sluice_worker::Worker::new(config.kafka.clone(), config.worker.clone(), indexer).spawn();

    // Each tenant registers its own schema and ingests with it.
    let mut ids = Vec::new();
    for tenant in ["acme", "globex"] {
        let channel = stack.client_channel(tenant).await;
        let schema = SchemaServiceClient::new(channel.clone())
            .register_schema(RegisterSchemaRequest {
                name: "article".into(),
                definition: article_schema(tenant),
            })
            .await
            .unwrap()
            .into_inner()
            .schema
            .unwrap();
        let mut ingest = IngestServiceClient::new(channel);
        for n in 0..20 {
            let json = serde_json::json!({"headline": format!("{tenant} {n}"), "body": text(n)});
            let accepted = ingest
                .ingest(IngestRequest {
                    document: Some(Document {
                        document_id: format!("{tenant}-{n}"),
                        payload: Some(Payload::AvroJson(json.to_string())),
                        schema: "article".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .ingestion
                .unwrap();
            ids.push((tenant, ingest.clone(), accepted.ingestion_id));
        }
        // The worker reads any tenant's schema by id; the schema is what the tenant registered.
        let read = schemas.by_id(schema.id as u32).await.unwrap();
        assert_eq!(read.fingerprint().len(), 64, "{tenant}'s schema read by id");
    }
    for (tenant, ingest, id) in &ids {
        let done = ended(ingest, tenant, id, Duration::from_secs(120)).await;
        assert_eq!(
            state(&done),
            IngestionState::Indexed,
            "{tenant} {id}: {:?}",
            done.failure_reason
        );
    }
    println!(
        "a worker with no database indexed {} documents of two tenants' own schemas, read through the gateway with its worker certificate",
        ids.len()
    );

    // The worker certificate reads schemas and nothing else: it registers nothing, lists no
    // subjects, and is no tenant on the gRPC API.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca.cert_pem().as_bytes()).unwrap()])
        .identity(
            reqwest::Identity::from_pem(
                format!("{}{}", issued.cert_pem, issued.key_pem).as_bytes(),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let base = config.schemas.url.clone().unwrap();
    let listed = client.get(format!("{base}/subjects")).send().await.unwrap();
    assert!(
        listed.status().is_client_error(),
        "a worker listed subjects: {}",
        listed.status()
    );
    let registered = client
        .post(format!("{base}/subjects/acme.other-value/versions"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"schema": article_schema("acme")}).to_string())
        .send()
        .await
        .unwrap();
    assert!(
        registered.status().is_client_error(),
        "a worker registered a schema: {}",
        registered.status()
    );
    let as_tenant = stack.tls_channel(Some(&issued)).await.unwrap();
    let refused = IngestServiceClient::new(as_tenant)
        .ingest(IngestRequest {
            document: Some(document("w", "W", "a worker is no tenant")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    worker.shutdown().await;
    stack.shutdown().await;
}
