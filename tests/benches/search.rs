//! Search latency and recall at 100,000 chunks, in the embedded store and in a Qdrant server.
//!
//! `cargo bench -p sluice-tests --bench search --profile dev` (reuses the test build); set
//! `SLUICE_TEST_QDRANT_URL` (a gRPC URL, e.g. http://127.0.0.1:6334) to measure the server too.
//!
//! Issue 14's goal: p99 ≤ 20 ms per search (top 10, filtered by tenant) and recall@10 ≥ 0.95
//! against exact search. Embedding 100k texts would take an hour, so the bench embeds a few
//! thousand distinct short texts with the real model and derives the 100k chunk vectors from
//! them (normalised mixtures of two embeddings plus a little noise): clustered like real data.
//! The query texts are embedded separately; that time is printed on its own line and is not
//! part of the search latency. Recall compares each search with a brute-force top 10 over the
//! tenant's vectors. The embedded store builds its HNSW index on its own while the chunks are
//! inserted; the bench waits for its optimiser to go idle and says how much is indexed.
//! Bounded: fixed counts everywhere, and the wait for the server's index gives up after
//! [`INDEXING_TIMEOUT`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sluice_core::vector::edge::EdgeStore;
use sluice_core::vector::server::QdrantServerStore;
use sluice_core::vector::{Chunk, IndexedDocument, VectorQuery, VectorStore};
use sluice_embed::{Embedder, EmbedderOptions};
use sluice_tests::{drop_collection, model_dir, qdrant_url, quantile_ms, test_collection};

/// Distinct texts embedded with the model; every chunk vector is derived from them.
const BASE_TEXTS: usize = 3_000;
const DOCUMENTS: usize = 10_000;
const CHUNKS_PER_DOCUMENT: usize = 10;
/// Documents from this one on belong to the second tenant (10% of the chunks).
const FIRST_OTHER_DOCUMENT: usize = 9_000;
const TENANT: &str = "acme";
const OTHER_TENANT: &str = "globex";
/// Documents per `index_documents` call.
const BATCH: usize = 100;
const QUERIES: usize = 300;
/// Searches run (and discarded) before measuring: caches, connections, lazily loaded files.
const WARM_UP: usize = 20;
const TOP_K: usize = 10;
/// How long the server may take to build its index before the bench measures anyway (a debug
/// build of Qdrant on two cores indexes only a fraction of the 100k vectors in this time).
const INDEXING_TIMEOUT: Duration = Duration::from_secs(120);

const SUBJECTS: [&str; 24] = [
    "The harbour master",
    "A night-shift nurse",
    "The billing team",
    "Our Kafka consumer",
    "The support desk",
    "A glacier researcher",
    "The bakery owner",
    "The marathon coach",
    "A volcano observatory",
    "The printing press operator",
    "The market analyst",
    "The maintenance crew",
    "A weather station",
    "The schema registry",
    "The river authority",
    "A hospital pharmacist",
    "The retention policy",
    "The search service",
    "A field geologist",
    "The school librarian",
    "The city council",
    "A freight dispatcher",
    "The payroll system",
    "The museum curator",
];
const ACTIONS: [&str; 20] = [
    "reported a delay in",
    "explained how to fix",
    "measured",
    "rewrote the guide for",
    "complained about",
    "automated",
    "audited",
    "planned the budget for",
    "found a bug in",
    "documented",
    "postponed",
    "tested",
    "simplified",
    "asked for help with",
    "published a study of",
    "replaced",
    "monitored",
    "cancelled",
    "translated",
    "reviewed",
];
const OBJECTS: [&str; 32] = [
    "the spring tide schedule",
    "patient intake forms",
    "partition rebalancing",
    "overdue invoices",
    "password reset emails",
    "meltwater runoff",
    "sourdough fermentation",
    "interval training plans",
    "lava flow forecasts",
    "the offset press",
    "quarterly revenue figures",
    "window seal replacements",
    "storm warnings",
    "schema compatibility checks",
    "flood barriers",
    "medication dosage charts",
    "log segment deletion",
    "vector similarity ranking",
    "rock core samples",
    "late book returns",
    "parking permits",
    "container shipping routes",
    "overtime payments",
    "the bronze age exhibit",
    "consumer group lag",
    "oven temperature logs",
    "customer refund requests",
    "snow depth readings",
    "ferry timetables",
    "blood pressure monitoring",
    "the annual marathon route",
    "currency exchange rates",
];
const SETTINGS: [&str; 16] = [
    "after the storm",
    "during the quarterly audit",
    "before the holidays",
    "on the north coast",
    "in the south wing",
    "every evening",
    "for the new tenant",
    "while the servers were down",
    "at the start of winter",
    "in the old town",
    "for the second year running",
    "despite the budget cuts",
    "at the request of the board",
    "over the long weekend",
    "in three languages",
    "with almost no warning",
];
/// Query shapes, unlike the chunk texts' "subject action object setting".
const QUESTIONS: [&str; 6] = [
    "how do I deal with {object} {setting}?",
    "who {action} {object}?",
    "what went wrong with {object}",
    "{object} {setting}",
    "why has {subject} {action} {object}?",
    "latest news on {object}",
];

/// SplitMix64: small, deterministic, good enough to pick words and add noise.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    fn gaussian(&mut self) -> f32 {
        let u = self.unit().max(f32::MIN_POSITIVE);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len())]
    }
}

/// `count` distinct texts from `make`, none of them in `taken`.
fn distinct_texts(
    count: usize,
    taken: &HashSet<String>,
    mut make: impl FnMut() -> String,
) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut texts = Vec::with_capacity(count);
    // The combinations far outnumber `count`, so this ends quickly; the cap makes sure it ends.
    for _ in 0..count * 100 {
        if texts.len() == count {
            break;
        }
        let text = make();
        if !taken.contains(&text) && seen.insert(text.clone()) {
            texts.push(text);
        }
    }
    assert_eq!(texts.len(), count, "not enough distinct texts");
    texts
}

fn chunk_texts() -> Vec<String> {
    let mut rng = Rng(14);
    distinct_texts(BASE_TEXTS, &HashSet::new(), || {
        format!(
            "{} {} {} {}.",
            rng.pick(&SUBJECTS),
            rng.pick(&ACTIONS),
            rng.pick(&OBJECTS),
            rng.pick(&SETTINGS)
        )
    })
}

fn query_texts(chunk_texts: &[String]) -> Vec<String> {
    let taken: HashSet<String> = chunk_texts.iter().cloned().collect();
    let mut rng = Rng(41);
    distinct_texts(QUERIES, &taken, || {
        rng.pick(&QUESTIONS)
            .replace("{subject}", &rng.pick(&SUBJECTS).to_lowercase())
            .replace("{action}", rng.pick(&ACTIONS))
            .replace("{object}", rng.pick(&OBJECTS))
            .replace("{setting}", rng.pick(&SETTINGS))
    })
}

fn normalise(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    vector.iter_mut().for_each(|x| *x /= norm);
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One chunk's vector and the text it was derived from.
struct DerivedChunk {
    text: String,
    vector: Vec<f32>,
}

/// `DOCUMENTS × CHUNKS_PER_DOCUMENT` chunks. A document keeps to one topic (one base text
/// dominates each of its chunks) mixed with a second, random one, plus noise, so chunks cluster
/// by document and by the words their base texts share, as real chunks do.
fn derive_chunks(texts: &[String], embeddings: &[Vec<f32>]) -> Vec<DerivedChunk> {
    let dimension = embeddings[0].len();
    // Noise of about 0.15 in norm against the unit-length mixture.
    let sigma = 0.15 / (dimension as f32).sqrt();
    let mut rng = Rng(2024);
    let mut chunks = Vec::with_capacity(DOCUMENTS * CHUNKS_PER_DOCUMENT);
    for _ in 0..DOCUMENTS {
        let topic = rng.below(texts.len());
        for _ in 0..CHUNKS_PER_DOCUMENT {
            let other = rng.below(texts.len());
            let (a, b) = (0.6 + 0.4 * rng.unit(), 0.6 * rng.unit());
            let mut vector: Vec<f32> = embeddings[topic]
                .iter()
                .zip(&embeddings[other])
                .map(|(x, y)| a * x + b * y + sigma * rng.gaussian())
                .collect();
            normalise(&mut vector);
            chunks.push(DerivedChunk {
                text: texts[topic].clone(),
                vector,
            });
        }
    }
    chunks
}

fn tenant_of(document: usize) -> &'static str {
    if document < FIRST_OTHER_DOCUMENT {
        TENANT
    } else {
        OTHER_TENANT
    }
}

fn document_id(document: usize) -> String {
    format!("doc-{document}")
}

/// The chunk's position in the derived list, from what a search returns.
fn chunk_position(document_id: &str, chunk_index: u32) -> usize {
    let document: usize = document_id
        .strip_prefix("doc-")
        .and_then(|n| n.parse().ok())
        .expect("a document id of this bench");
    document * CHUNKS_PER_DOCUMENT + chunk_index as usize
}

fn documents(chunks: &[DerivedChunk]) -> Vec<IndexedDocument> {
    chunks
        .chunks(CHUNKS_PER_DOCUMENT)
        .enumerate()
        .map(|(document, its_chunks)| IndexedDocument {
            tenant: tenant_of(document).to_string(),
            document_id: document_id(document),
            ingestion_id: format!("ing-{document}"),
            attributes: BTreeMap::new(),
            chunks: its_chunks
                .iter()
                .enumerate()
                .map(|(index, chunk)| Chunk {
                    index: index as u32,
                    text: chunk.text.clone(),
                    vector: chunk.vector.clone(),
                })
                .collect(),
        })
        .collect()
}

/// The exact top 10 in `TENANT` for each query, by brute force (all vectors are unit length,
/// so the dot product is the cosine the stores rank by). Split over the machine's cores.
fn exact_top_k(chunks: &[DerivedChunk], queries: &[Vec<f32>]) -> Vec<Vec<usize>> {
    let in_tenant = FIRST_OTHER_DOCUMENT * CHUNKS_PER_DOCUMENT;
    let top = |query: &Vec<f32>| {
        let mut scored: Vec<(f32, usize)> = chunks[..in_tenant]
            .iter()
            .enumerate()
            .map(|(position, chunk)| (dot(query, &chunk.vector), position))
            .collect();
        scored.select_nth_unstable_by(TOP_K, |a, b| b.0.total_cmp(&a.0));
        scored.truncate(TOP_K);
        scored.into_iter().map(|(_, position)| position).collect()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = queries.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = queries
            .chunks(per_thread)
            .map(|part| scope.spawn(move || part.iter().map(top).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|part| part.join().expect("brute force"))
            .collect()
    })
}

/// What one store measured: a row of the table.
struct Measured {
    store: String,
    latencies: Vec<Duration>,
    recall: f64,
}

/// Indexes every document in batches of `BATCH`, `concurrency` batches at a time; prints the
/// throughput.
async fn insert(store: &Arc<dyn VectorStore>, documents: Vec<IndexedDocument>, concurrency: usize) {
    let started = Instant::now();
    let mut batches = Vec::new();
    let mut rest = documents.into_iter().peekable();
    while rest.peek().is_some() {
        batches.push(rest.by_ref().take(BATCH).collect::<Vec<_>>());
    }
    let mut writes = futures::stream::iter(batches)
        .map(|batch| {
            let store = Arc::clone(store);
            async move { store.index_documents(batch).await }
        })
        .buffer_unordered(concurrency);
    while let Some(written) = writes.next().await {
        written.expect("index a batch");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let chunks = DOCUMENTS * CHUNKS_PER_DOCUMENT;
    println!(
        "{}: inserted {chunks} chunks ({DOCUMENTS} documents, {BATCH} per call, {concurrency} \
         call(s) at a time) in {elapsed:.1} s: {:.0} chunks/s",
        store.kind(),
        chunks as f64 / elapsed
    );
}

/// Warms up, then runs every query once, one at a time; recall against `exact`.
async fn measure(
    store: &Arc<dyn VectorStore>,
    label: &str,
    queries: &[Vec<f32>],
    exact: &[Vec<usize>],
) -> Measured {
    let query = |vector: &Vec<f32>| VectorQuery {
        tenant: TENANT.to_string(),
        vector: vector.clone(),
        top_k: TOP_K as u32,
        attributes: BTreeMap::new(),
    };
    for vector in queries.iter().cycle().take(WARM_UP) {
        store.search(query(vector)).await.expect("warm-up search");
    }
    let mut latencies = Vec::with_capacity(queries.len());
    let mut found = 0;
    for (vector, expected) in queries.iter().zip(exact) {
        let request = query(vector);
        let started = Instant::now();
        let hits = store.search(request).await.expect("search");
        latencies.push(started.elapsed());
        let expected: HashSet<usize> = expected.iter().copied().collect();
        found += hits
            .iter()
            .filter(|hit| expected.contains(&chunk_position(&hit.document_id, hit.chunk_index)))
            .count();
    }
    Measured {
        store: label.to_string(),
        latencies,
        recall: found as f64 / (queries.len() * TOP_K) as f64,
    }
}

async fn edge_store(
    dimension: usize,
    documents: Vec<IndexedDocument>,
    queries: &[Vec<f32>],
    exact: &[Vec<usize>],
) -> Measured {
    let dir = tempfile::tempdir().expect("temporary directory");
    let edge = Arc::new(EdgeStore::open(dir.path(), dimension).expect("open the embedded store"));
    let store: Arc<dyn VectorStore> = Arc::clone(&edge) as Arc<dyn VectorStore>;
    // Its writes take one lock each, so more at a time would only queue. The store's optimiser
    // indexes as the points arrive (its log lines say how long each run took), and writes wait
    // while it runs: the insert time includes that.
    insert(&store, documents, 1).await;
    let started = Instant::now();
    edge.wait_for_optimiser()
        .await
        .expect("wait for the optimiser");
    let coverage = edge.index_coverage().await.expect("index coverage");
    println!(
        "qdrant-edge: optimiser idle {:.1} s after the last write: {} of {} vectors in HNSW \
         segments, {} segments",
        started.elapsed().as_secs_f64(),
        coverage.indexed_vectors,
        coverage.points,
        coverage.segments
    );
    let measured = measure(&store, "qdrant-edge (embedded)", queries, exact).await;
    // The store stops its optimiser and flushes on drop: before its directory goes.
    drop(store);
    drop(edge);
    drop(dir);
    measured
}

/// Waits until the server has finished optimising (status green twice in a row, a second
/// apart), at most `INDEXING_TIMEOUT`; says how far it got.
async fn wait_for_index(url: &str, collection: &str) {
    let client = qdrant_client::Qdrant::from_url(url)
        .skip_compatibility_check()
        .build()
        .expect("qdrant client");
    let started = Instant::now();
    let mut green_in_a_row = 0;
    loop {
        let info = client
            .collection_info(collection)
            .await
            .expect("collection info")
            .result
            .expect("collection info result");
        let green = info.status == qdrant_client::qdrant::CollectionStatus::Green as i32;
        green_in_a_row = if green { green_in_a_row + 1 } else { 0 };
        let done = green_in_a_row >= 2;
        if done || started.elapsed() >= INDEXING_TIMEOUT {
            println!(
                "qdrant: {} after {:.1} s: {} of {} vectors in HNSW segments, {} segments",
                if done {
                    "optimised (status green)"
                } else {
                    "STILL OPTIMISING, measuring anyway"
                },
                started.elapsed().as_secs_f64(),
                info.indexed_vectors_count.unwrap_or(0),
                info.points_count.unwrap_or(0),
                info.segments_count
            );
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn server_store(
    url: String,
    dimension: usize,
    documents: Vec<IndexedDocument>,
    queries: Arc<Vec<Vec<f32>>>,
    exact: Arc<Vec<Vec<usize>>>,
) -> Measured {
    let collection = test_collection("search_bench");
    // In a task of its own, so that the collection is deleted even when a step panics.
    let run = {
        let (url, collection) = (url.clone(), collection.clone());
        tokio::spawn(async move {
            let store: Arc<dyn VectorStore> = Arc::new(
                QdrantServerStore::connect(&url, None, &collection, dimension)
                    .await
                    .expect("connect to the Qdrant server"),
            );
            // One request per document and chunk set: several at a time, as several workers
            // would write.
            insert(&store, documents, 8).await;
            wait_for_index(&url, &collection).await;
            measure(&store, "qdrant server", &queries, &exact).await
        })
    };
    let outcome = run.await;
    drop_collection(&url, &collection).await;
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
}

/// The 1-minute load average: the latencies mean little on a machine busy with other work.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|line| line.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}

fn main() {
    // The embedded store logs each optimisation it runs: how long, how many vectors indexed.
    // (qdrant-edge warns on every optimisation that its feature flags were never initialised,
    // which nothing outside the crate can do; it then uses their defaults.)
    sluice_core::telemetry::init(
        &sluice_core::config::LogConfig {
            filter: "warn,qdrant_edge::common::flags=error,sluice_core::vector=info".to_string(),
            ..Default::default()
        },
        "search-bench",
    );
    println!(
        "{} cores, load average {} at the start",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average()
    );
    let embedder = Embedder::load(&model_dir(), EmbedderOptions::default()).expect("load model");
    let dimension = embedder.dimension();

    let texts = chunk_texts();
    let started = Instant::now();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let embeddings = embedder.embed(&refs).expect("embed the chunk texts");
    println!(
        "embedded {} distinct chunk texts in {:.1} s (the only real embedding of chunks)",
        texts.len(),
        started.elapsed().as_secs_f64()
    );
    let chunks = derive_chunks(&texts, &embeddings);

    // Queries one at a time, as a search request embeds its query.
    let mut embedding_times = Vec::with_capacity(QUERIES);
    let queries: Vec<Vec<f32>> = query_texts(&texts)
        .iter()
        .map(|text| {
            let started = Instant::now();
            let mut vector = embedder.embed(&[text.as_str()]).expect("embed a query");
            embedding_times.push(started.elapsed());
            vector.pop().expect("one vector")
        })
        .collect();
    embedding_times.sort();
    println!(
        "query embedding (not part of the search latency below): p50 {:.1} ms, p99 {:.1} ms \
         over {QUERIES} queries",
        quantile_ms(&embedding_times, 0.50),
        quantile_ms(&embedding_times, 0.99)
    );

    let started = Instant::now();
    let exact = exact_top_k(&chunks, &queries);
    println!(
        "exact top {TOP_K} by brute force in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let documents = documents(&chunks);
    drop(chunks);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut rows = Vec::new();
    rows.push(runtime.block_on(edge_store(dimension, documents.clone(), &queries, &exact)));
    match qdrant_url("the search bench's Qdrant server part") {
        Some(url) => rows.push(runtime.block_on(server_store(
            url,
            dimension,
            documents,
            Arc::new(queries),
            Arc::new(exact),
        ))),
        None => println!("qdrant server: SKIPPED (SLUICE_TEST_QDRANT_URL is not set)"),
    }

    println!();
    println!("load average {} at the end", load_average());
    println!(
        "top {TOP_K} in tenant {TENANT:?} ({} of the {} chunks), {QUERIES} queries after \
         {WARM_UP} warm-up, one at a time",
        FIRST_OTHER_DOCUMENT * CHUNKS_PER_DOCUMENT,
        DOCUMENTS * CHUNKS_PER_DOCUMENT
    );
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}  goal (p99 ≤ 20 ms, recall ≥ 0.95)",
        "store", "chunks", "p50 ms", "p95 ms", "p99 ms", "max ms", "recall@10"
    );
    for mut row in rows {
        row.latencies.sort();
        let p99 = quantile_ms(&row.latencies, 0.99);
        let met = p99 <= 20.0 && row.recall >= 0.95;
        println!(
            "{:<24} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>10.3}  {}",
            row.store,
            DOCUMENTS * CHUNKS_PER_DOCUMENT,
            quantile_ms(&row.latencies, 0.50),
            quantile_ms(&row.latencies, 0.95),
            p99,
            quantile_ms(&row.latencies, 1.0),
            row.recall,
            if met { "met" } else { "NOT MET" }
        );
    }
}
