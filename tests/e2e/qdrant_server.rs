//! Against a real Qdrant server: `SLUICE_TEST_QDRANT_URL` names its gRPC URL (e.g.
//! `http://127.0.0.1:6334`). Without it every test here says loudly that it is skipped and
//! passes; CI has no server (none installs from the registries), so these run outside CI.
//! Each test works in a collection of its own (`sluice_test_<name>_<random>`) and deletes it.
//!
//! - the server store itself: the collection and its tenant index (`is_tenant`), upsert,
//!   replacing a document with fewer chunks, delete, filtered search, tenant isolation, and the
//!   same hits as the embedded store on the same documents;
//! - the distributed shape as processes ([`Cluster`]): two gateways and two `sluice-worker`s
//!   (no database; schemas through a gateway with a worker certificate): ingest through both,
//!   watch on the other, search on either, every document INDEXED once with one point per
//!   chunk;
//! - a worker killed (-9) ten times and a gateway killed once during a 2,000-document ingest;
//! - the server unreachable for 20 s mid-ingest (a proxy in front of it is cut);
//! - a third worker added, then removed, during an ingest.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use qdrant_client::qdrant::payload_index_params::IndexParams;
use qdrant_client::Qdrant;
use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::{
    Document, IngestBatchRequest, IngestionState, SearchRequest, WatchIngestionsRequest,
};
use sluice_core::record::DocumentRecord;
use sluice_core::vector::edge::EdgeStore;
use sluice_core::vector::server::QdrantServerStore;
use sluice_core::vector::{Chunk, IndexedDocument, VectorQuery, VectorStore};
use sluice_embed::{Embedder, EmbedderOptions};
use sluice_tests::{
    document, drop_collection, model_dir, qdrant_url, read_topic, state, test_collection, Cluster,
    Proxy,
};
use tonic::transport::Channel;
use tonic::Code;

const TOPICS: [&str; 6] = [
    "tides and the moon",
    "bread baking with sourdough",
    "glaciers retreating in the alps",
    "the history of the printing press",
    "training for a marathon",
    "volcanoes and plate tectonics",
];

/// Document `n`'s paragraphs: a few sentences on one of the topics.
fn paragraphs(n: usize) -> Vec<String> {
    let topic = TOPICS[n % TOPICS.len()];
    (0..1 + n % 4)
        .map(|p| {
            format!(
                "Part {p} of note {n}: a few sentences about {topic}, number {n}, with detail {p}."
            )
        })
        .collect()
}

fn text(n: usize) -> String {
    paragraphs(n).join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_store_and_the_embedded_store_give_the_same_results() {
    let Some(url) =
        qdrant_url("qdrant_server::the_server_store_and_the_embedded_store_give_the_same_results")
    else {
        return;
    };
    let collection = test_collection("parity");
    let embedder = Embedder::load(&model_dir(), EmbedderOptions::default()).unwrap();
    let dimension = embedder.dimension();
    let server = QdrantServerStore::connect(&url, None, &collection, dimension)
        .await
        .unwrap();
    let result = std::panic::AssertUnwindSafe(parity(&url, &collection, &embedder, &server));
    let outcome = futures::FutureExt::catch_unwind(result).await;
    drop_collection(&url, &collection).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn parity(url: &str, collection: &str, embedder: &Embedder, server: &QdrantServerStore) {
    // The collection: cosine vectors of the model's dimension; `tenant` indexed as the tenant
    // key (Qdrant's multitenancy guidance), `document_id` as a keyword.
    let client = Qdrant::from_url(url)
        .skip_compatibility_check()
        .build()
        .unwrap();
    let info = client
        .collection_info(collection)
        .await
        .unwrap()
        .result
        .expect("collection info");
    let tenant_index = info
        .payload_schema
        .get("tenant")
        .expect("a payload index on tenant");
    match tenant_index
        .params
        .as_ref()
        .and_then(|p| p.index_params.as_ref())
    {
        Some(IndexParams::KeywordIndexParams(keyword)) => {
            assert_eq!(
                keyword.is_tenant,
                Some(true),
                "tenant index without is_tenant"
            )
        }
        other => panic!("tenant index is not a keyword index: {other:?}"),
    }
    assert!(
        info.payload_schema.contains_key("document_id"),
        "no index on document_id: {:?}",
        info.payload_schema.keys().collect::<Vec<_>>()
    );
    // Connecting again to the existing collection is fine; another dimension is refused.
    QdrantServerStore::connect(url, None, collection, embedder.dimension())
        .await
        .expect("reconnect");
    assert!(QdrantServerStore::connect(url, None, collection, 17)
        .await
        .is_err());

    let dir = tempfile::tempdir().unwrap();
    let edge = EdgeStore::open(&dir.path().join("vectors"), embedder.dimension()).unwrap();
    let stores: [&dyn VectorStore; 2] = [server, &edge];

    // 60 documents of two tenants, 1 to 4 chunks each, with attributes.
    let mut documents = Vec::new();
    for n in 0..60 {
        let pieces = paragraphs(n);
        let texts: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let vectors = embedder.embed(&texts).unwrap();
        documents.push(IndexedDocument {
            tenant: if n % 3 == 0 { "beta" } else { "alpha" }.into(),
            document_id: format!("doc-{n}"),
            ingestion_id: format!("ing-{n}"),
            attributes: BTreeMap::from([
                ("topic".to_owned(), (n % TOPICS.len()).to_string()),
                ("parity".to_owned(), (n % 2).to_string()),
            ]),
            chunks: pieces
                .into_iter()
                .zip(vectors)
                .enumerate()
                .map(|(index, (text, vector))| Chunk {
                    index: index as u32,
                    text,
                    vector,
                })
                .collect(),
        });
    }
    for store in stores {
        for document in &documents {
            store.index_document(document.clone()).await.unwrap();
            // Idempotent: indexing again changes nothing.
            store.index_document(document.clone()).await.unwrap();
        }
    }
    for document in &documents {
        for store in stores {
            let points = store
                .count_document(&document.tenant, &document.document_id)
                .await
                .unwrap();
            assert_eq!(
                points as usize,
                document.chunks.len(),
                "{} in {}",
                document.document_id,
                store.kind()
            );
        }
    }

    // The same hits, in the same order, with the same scores, for queries with and without
    // filters, in both tenants.
    let mut compared = 0;
    for (q, query) in [
        "what makes the tides",
        "how to bake bread",
        "melting ice in the mountains",
        "Gutenberg",
        "running long distances",
        "lava and earthquakes",
    ]
    .iter()
    .enumerate()
    {
        let vector = embedder.embed(&[query]).unwrap().remove(0);
        for tenant in ["alpha", "beta"] {
            for filter in [
                BTreeMap::new(),
                BTreeMap::from([("parity".to_owned(), "1".to_owned())]),
                BTreeMap::from([("topic".to_owned(), q.to_string())]),
            ] {
                let asked = VectorQuery {
                    tenant: tenant.into(),
                    vector: vector.clone(),
                    top_k: 10,
                    attributes: filter.clone(),
                };
                let on_server = server.search(asked.clone()).await.unwrap();
                let embedded = edge.search(asked).await.unwrap();
                let ids = |hits: &[sluice_core::vector::VectorHit]| {
                    hits.iter()
                        .map(|h| (h.document_id.clone(), h.chunk_index))
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    ids(&on_server),
                    ids(&embedded),
                    "{tenant} {query:?}/{filter:?}"
                );
                for (a, b) in on_server.iter().zip(&embedded) {
                    assert!(
                        (a.score - b.score).abs() < 1e-4,
                        "{} vs {}",
                        a.score,
                        b.score
                    );
                    assert_eq!(a.attributes, b.attributes);
                    assert_eq!(a.text, b.text);
                    assert!(filter.iter().all(|(k, v)| a.attributes.get(k) == Some(v)));
                }
                // Only the tenant's own documents.
                let own: HashSet<String> = documents
                    .iter()
                    .filter(|d| d.tenant == tenant)
                    .map(|d| d.document_id.clone())
                    .collect();
                assert!(on_server.iter().all(|h| own.contains(&h.document_id)));
                compared += 1;
            }
        }
    }

    // A document replaced with fewer chunks keeps no stale ones; a delete removes all.
    let mut shorter = documents[3].clone();
    assert!(shorter.chunks.len() == 4, "doc-3 has 4 chunks");
    shorter.chunks.truncate(1);
    for store in stores {
        store.index_document(shorter.clone()).await.unwrap();
        assert_eq!(
            store.count_document("beta", "doc-3").await.unwrap(),
            1,
            "{}",
            store.kind()
        );
        assert_eq!(store.delete_document("beta", "doc-3").await.unwrap(), 1);
        assert_eq!(store.count_document("beta", "doc-3").await.unwrap(), 0);
        assert_eq!(
            store.delete_document("beta", "doc-3").await.unwrap(),
            0,
            "idempotent"
        );
        // Another tenant's document of the same id is untouched.
        assert_eq!(store.count_document("alpha", "doc-3").await.unwrap(), 0);
        assert!(store.count_document("alpha", "doc-4").await.unwrap() > 0);
    }
    // One batch is one upsert and one delete on either store; it leaves what writing its
    // documents in order would, a document coming twice included: doc-7 shorter then whole
    // keeps all 4 chunks, doc-11 whole then shorter keeps 1, doc-15 is untouched.
    let (longer, shorter) = (documents[7].clone(), documents[11].clone());
    let truncated = |document: &IndexedDocument| {
        let mut document = document.clone();
        document.chunks.truncate(1);
        document
    };
    for store in stores {
        store
            .index_documents(vec![
                truncated(&longer),
                longer.clone(),
                shorter.clone(),
                truncated(&shorter),
            ])
            .await
            .unwrap();
        for (id, chunks) in [("doc-7", 4), ("doc-11", 1), ("doc-15", 4)] {
            let tenant = if id == "doc-15" { "beta" } else { "alpha" };
            assert_eq!(
                store.count_document(tenant, id).await.unwrap(),
                chunks,
                "{id} in {}",
                store.kind()
            );
        }
    }
    store_health(server).await;
    println!("qdrant server and embedded store: {compared} searches compared, hit lists identical");
}

async fn store_health(store: &dyn VectorStore) {
    store.health().await.expect("server healthy");
}

/// 2 gateways, 2 workers (processes), `documents` per gateway in batches of 50.
async fn ingest_through(
    clients: &[IngestServiceClient<Channel>],
    prefix: &str,
    documents: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for batch in 0..documents.div_ceil(50) {
        let docs: Vec<Document> = (batch * 50..((batch + 1) * 50).min(documents))
            .map(|n| document(&format!("{prefix}-{n}"), "Note", &text(n)))
            .collect();
        let request = IngestBatchRequest {
            documents: docs,
            idempotency_key: format!("{prefix}-{batch}"),
        };
        // A gateway being killed: the same batch (same key) again on another, written once.
        let mut attempt = 0;
        let response = loop {
            let client = &clients[(batch + attempt) % clients.len()];
            match client.clone().ingest_batch(request.clone()).await {
                Ok(response) => break response,
                Err(status)
                    if attempt < 20
                        && matches!(
                            status.code(),
                            Code::Unavailable | Code::Aborted | Code::Unknown | Code::Cancelled
                        ) =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(status) => panic!("batch {batch}: {status:?}"),
            }
        };
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

/// Follows the ingestions on `client` until all have ended (bounded), counting terminal
/// events per ingestion. Reconnects (after the last cursor) when the stream breaks.
async fn watch_until_ended(
    client: IngestServiceClient<Channel>,
    ids: Vec<String>,
    limit: Duration,
) -> HashMap<String, Vec<i32>> {
    let deadline = Instant::now() + limit;
    let mut terminal: HashMap<String, Vec<i32>> = HashMap::new();
    let wanted: HashSet<String> = ids.iter().cloned().collect();
    let mut cursor = String::new();
    while Instant::now() < deadline {
        let pending: Vec<String> = wanted
            .iter()
            .filter(|id| !terminal.contains_key(*id))
            .cloned()
            .collect();
        if pending.is_empty() {
            break;
        }
        let request = WatchIngestionsRequest {
            ingestion_ids: if cursor.is_empty() { pending } else { vec![] },
            after_cursor: cursor.clone(),
        };
        let Ok(stream) = client.clone().watch_ingestions(request).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(30), stream.message()).await;
            let Ok(Ok(Some(event))) = next else { break };
            if !event.cursor.is_empty() {
                cursor = event.cursor.clone();
            }
            let Some(ingestion) = event.ingestion else {
                continue;
            };
            if wanted.contains(&ingestion.ingestion_id)
                && state(&ingestion) != IngestionState::Accepted
            {
                terminal
                    .entry(ingestion.ingestion_id)
                    .or_default()
                    .push(ingestion.state);
            }
            if wanted.iter().all(|id| terminal.contains_key(id)) {
                return terminal;
            }
        }
    }
    terminal
}

/// Every document INDEXED exactly once (one terminal event each), one point per chunk, no
/// dead letters, no duplicate records of an ingestion id beyond Kafka's redelivery.
async fn assert_all_indexed_once(
    cluster: &Cluster,
    tenant: &str,
    terminal: &HashMap<String, Vec<i32>>,
    ids: &[String],
    prefix: &str,
    documents: usize,
) {
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !terminal.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} never ended, e.g. {:?}",
        missing.len(),
        ids.len(),
        &missing[..missing.len().min(5)]
    );
    for (id, states) in terminal {
        assert_eq!(
            states,
            &[IngestionState::Indexed as i32],
            "{id}: terminal events {states:?}"
        );
    }
    let store = QdrantServerStore::connect(&cluster.qdrant_url, None, &cluster.collection, 384)
        .await
        .unwrap();
    for n in 0..documents {
        let points = store
            .count_document(tenant, &format!("{prefix}-{n}"))
            .await
            .unwrap();
        // Every note is far below one chunk's 256 tokens.
        assert_eq!(points, 1, "{prefix}-{n} has {points} points");
    }
    let dead: Vec<_> = read_topic(&cluster.kafka(), &cluster.kafka().dead_letter_topic)
        .await
        .into_iter()
        .filter(|m| DocumentRecord::from_message(m).is_ok_and(|r| r.tenant.as_str() == tenant))
        .collect();
    assert!(dead.is_empty(), "{} dead letters", dead.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_and_two_workers_as_processes_index_every_document_once() {
    let Some(url) = qdrant_url(
        "qdrant_server::two_gateways_and_two_workers_as_processes_index_every_document_once",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path(), &url, &test_collection("two_by_two")).await;
    const TENANT: &str = "harbour";
    cluster.create_tenant(TENANT).await;
    cluster.add_gateway().await;
    cluster.add_gateway().await;
    cluster.add_worker().await;
    cluster.add_worker().await;
    let a = cluster.ingest_client(0, TENANT).await;
    let b = cluster.ingest_client(1, TENANT).await;

    // 300 through A, 300 through B; each gateway watches what the other accepted.
    let (on_a, on_b) = tokio::join!(
        ingest_through(std::slice::from_ref(&a), "via-a", 300),
        ingest_through(std::slice::from_ref(&b), "via-b", 300)
    );
    let (seen_on_b, seen_on_a) = tokio::join!(
        watch_until_ended(b.clone(), on_a.clone(), Duration::from_secs(600)),
        watch_until_ended(a.clone(), on_b.clone(), Duration::from_secs(600))
    );
    assert_all_indexed_once(&cluster, TENANT, &seen_on_b, &on_a, "via-a", 300).await;
    assert_all_indexed_once(&cluster, TENANT, &seen_on_a, &on_b, "via-b", 300).await;

    // Search on either gateway finds documents accepted by the other.
    for n in [0usize, 1] {
        let mut search = cluster.search_client(n, TENANT).await;
        let hits = search
            .search(SearchRequest {
                query: "glaciers retreating".into(),
                top_k: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .hits;
        // via-a-n and via-b-n have the same text: the best hits come in pairs, one of each.
        assert_eq!(hits.len(), 10, "gateway {n}");
        for prefix in ["via-a-", "via-b-"] {
            assert!(
                hits.iter().any(|h| h.document_id.starts_with(prefix)),
                "gateway {n}: no {prefix} among {:?}",
                hits.iter().map(|h| &h.document_id).collect::<Vec<_>>()
            );
        }
    }
    println!("2 gateways + 2 workers (processes) on a Qdrant server: 600 documents INDEXED once each, watched on the other gateway");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_workers_and_a_gateway_loses_and_doubles_nothing() {
    let Some(url) =
        qdrant_url("qdrant_server::killing_workers_and_a_gateway_loses_and_doubles_nothing")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path(), &url, &test_collection("kill")).await;
    const TENANT: &str = "sturdy";
    const DOCUMENTS: usize = 2_000;
    cluster.create_tenant(TENANT).await;
    cluster.add_gateway().await;
    cluster.add_gateway().await;
    cluster.add_worker().await;
    cluster.add_worker().await;
    let clients = vec![
        cluster.ingest_client(0, TENANT).await,
        cluster.ingest_client(1, TENANT).await,
    ];

    let ingest = tokio::spawn({
        let clients = clients.clone();
        async move { ingest_through(&clients, "sturdy", DOCUMENTS).await }
    });
    // Gateway 1 is killed once while batches are sent (its callers retry on gateway 0, with
    // the same idempotency key); a worker is killed every 3 s, ten times, alternately.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.gateways[1].kill();
    let mut kills = 0;
    for round in 0..10 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let victim = round % 2;
        cluster.workers[victim].kill();
        kills += 1;
        if round == 1 {
            cluster.gateways[1].start();
            cluster.gateways[1]
                .wait_for("/readyz", Duration::from_secs(120))
                .await;
        }
        cluster.workers[victim].start();
    }
    let ids = ingest.await.unwrap();
    assert_eq!(ids.len(), DOCUMENTS);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        DOCUMENTS,
        "one ingestion per document"
    );
    let terminal =
        watch_until_ended(clients[0].clone(), ids.clone(), Duration::from_secs(900)).await;
    assert_all_indexed_once(&cluster, TENANT, &terminal, &ids, "sturdy", DOCUMENTS).await;

    // One record per document in Kafka (the retried batches were written once).
    let records = read_topic(&cluster.kafka(), &cluster.kafka().documents_topic).await;
    let mut written: HashMap<String, HashSet<String>> = HashMap::new();
    for record in records
        .iter()
        .filter_map(|m| DocumentRecord::from_message(m).ok())
    {
        if record.tenant.as_str() == TENANT {
            written
                .entry(record.document_id)
                .or_default()
                .insert(record.ingestion_id);
        }
    }
    assert_eq!(written.len(), DOCUMENTS);
    assert!(
        written.values().all(|ids| ids.len() == 1),
        "a document written twice"
    );
    println!("{DOCUMENTS} documents, {kills} worker kills (-9) and a gateway kill: all INDEXED once, one record and one terminal event each");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_gone_for_twenty_seconds_fails_nothing() {
    let Some(url) = qdrant_url("qdrant_server::the_server_gone_for_twenty_seconds_fails_nothing")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path(), &url, &test_collection("outage")).await;
    let mut proxy = Proxy::start(&url).await;
    cluster.worker_store_url = proxy.url();
    const TENANT: &str = "patient";
    const DOCUMENTS: usize = 600;
    cluster.create_tenant(TENANT).await;
    cluster.add_gateway().await;
    cluster.add_worker().await;
    cluster.add_worker().await;
    let client = cluster.ingest_client(0, TENANT).await;

    let ingest = tokio::spawn({
        let client = client.clone();
        async move { ingest_through(&[client], "patient", DOCUMENTS).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.cut();
    let cut_at = Instant::now();
    // The workers say they are paused, and why.
    let mut paused = 0;
    while cut_at.elapsed() < Duration::from_secs(20) {
        paused = 0;
        for worker in &cluster.workers {
            let (_, body) =
                sluice_tests::http_get(&format!("http://127.0.0.1:{}/healthz", worker.health))
                    .await;
            if body.contains("paused") {
                paused += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        paused > 0,
        "no worker reported itself paused during the outage"
    );
    proxy.restore().await;
    let ids = ingest.await.unwrap();
    let terminal = watch_until_ended(client, ids.clone(), Duration::from_secs(600)).await;
    assert_all_indexed_once(&cluster, TENANT, &terminal, &ids, "patient", DOCUMENTS).await;
    println!("the Qdrant server unreachable for 20 s mid-ingest: {DOCUMENTS} documents INDEXED, none FAILED, no dead letters");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_third_worker_added_then_removed_moves_partitions_and_loses_nothing() {
    let Some(url) = qdrant_url(
        "qdrant_server::a_third_worker_added_then_removed_moves_partitions_and_loses_nothing",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path(), &url, &test_collection("scale")).await;
    const TENANT: &str = "elastic";
    const DOCUMENTS: usize = 1_000;
    cluster.create_tenant(TENANT).await;
    cluster.add_gateway().await;
    cluster.add_worker().await;
    cluster.add_worker().await;
    let client = cluster.ingest_client(0, TENANT).await;
    let ingest = tokio::spawn({
        let client = client.clone();
        async move { ingest_through(&[client], "elastic", DOCUMENTS).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let third = cluster.add_worker().await;
    // It takes partitions: /readyz answers 200 once it holds one.
    cluster.workers[third]
        .wait_for("/readyz", Duration::from_secs(60))
        .await;
    let (_, report) = sluice_tests::http_get(&format!(
        "http://127.0.0.1:{}/readyz",
        cluster.workers[third].health
    ))
    .await;
    println!("the third worker: {report}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.workers[third].terminate().await;
    let ids = ingest.await.unwrap();
    let terminal = watch_until_ended(client, ids.clone(), Duration::from_secs(600)).await;
    assert_all_indexed_once(&cluster, TENANT, &terminal, &ids, "elastic", DOCUMENTS).await;
    for worker in &cluster.workers[..2] {
        worker.wait_for("/readyz", Duration::from_secs(30)).await;
    }
    println!("a third worker added and removed during {DOCUMENTS} documents: all INDEXED once");
    cluster.shutdown().await;
}
