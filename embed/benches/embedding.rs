// Embedding throughput of all-MiniLM-L6-v2 on 256-token chunks, the size the worker produces.
//
//     cargo bench --workspace --bench embedding --profile dev   # reuses the test build
//
// Reads the model from $SLUICE_MODEL_DIR, else ~/.cache/sluice/model (deploy/dev/install
// puts it there). Uses every core, as the worker does; RAYON_NUM_THREADS caps the threads
// (the embedder's kernels and candle's matrix multiplications share rayon's pool). For comparison on a 2-core machine: sentence-transformers
// (PyTorch) ≈ 5,500 tokens/s, a plain candle BertModel ≈ 2,000 tokens/s.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_embed::{Embedder, EmbedderOptions};

/// Tokens the model sees per chunk, `[CLS]` and `[SEP]` included.
const TOKENS_PER_CHUNK: usize = 256;
const BATCH_SIZES: [usize; 3] = [1, 8, 32];
/// Untimed calls per batch size first: page in the weights, warm caches and thread pools.
const WARM_UP: Duration = Duration::from_secs(1);
/// Timed calls per batch size go on at least this long (and at least three calls).
const MEASURE: Duration = Duration::from_secs(4);
/// Distinct chunks; calls cycle through them so no two consecutive calls embed the same text.
const POOL: usize = 64;

/// Prose in the register of the documents Sluice ingests, mixed into different chunks.
const SENTENCES: [&str; 16] = [
    "Kafka keeps every record in an append-only log that is split into partitions.",
    "Consumers in the same group divide the partitions between them, so adding consumers adds throughput.",
    "A transactional producer writes to several partitions atomically, and readers that ask for committed data never see a half-written batch.",
    "The vector store keeps each embedding next to a payload of attributes that search filters can match.",
    "Cosine similarity compares the directions of two vectors and ignores their lengths.",
    "Before accepting a document, the gateway checks it against the schema its tenant registered.",
    "Neighbouring chunks overlap slightly, so a sentence cut at a boundary still appears whole in one of them.",
    "Embedding models read a limited number of tokens and silently ignore whatever follows.",
    "Quarterly revenue grew by eleven percent, driven mainly by subscriptions in the European market.",
    "The maintenance window starts at two in the morning, when traffic is lowest, and lasts about an hour.",
    "Patients were asked to record their symptoms every evening for the first three weeks of treatment.",
    "If the disk fills up, the broker stops accepting writes until retention has removed old segments.",
    "Our support team answers most questions within a day, although complex billing issues can take longer.",
    "The committee reviewed forty proposals and selected six of them for funding in the coming year.",
    "Retries use exponential backoff with jitter, which keeps a struggling service from being overwhelmed.",
    "Each tenant sees only its own documents; queries carry the tenant identifier all the way down.",
];

fn main() -> anyhow::Result<()> {
    let model_dir = match std::env::var_os("SLUICE_MODEL_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/sluice/model"),
    };
    let loading = Instant::now();
    let embedder = Embedder::load(&model_dir, EmbedderOptions::default())?;
    let loaded_in = loading.elapsed();

    let chunks = make_chunks(&embedder, POOL, TOKENS_PER_CHUNK - 2)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Embedding benchmark: all-MiniLM-L6-v2 from {}",
        model_dir.display()
    );
    println!(
        "loaded in {:.2} s; {threads} threads; {POOL} distinct chunks of {TOKENS_PER_CHUNK} tokens \
         ([CLS] and [SEP] included)",
        loaded_in.as_secs_f64()
    );
    println!();
    println!(
        "{:>5}  {:>5}  {:>10}  {:>10}  {:>12}",
        "batch", "calls", "chunks/s", "tokens/s", "ms per call"
    );

    let mut next = 0;
    let mut batch_of = |size: usize| -> Vec<&str> {
        let batch = (0..size)
            .map(|i| chunks[(next + i) % chunks.len()].as_str())
            .collect();
        next = (next + size) % chunks.len();
        batch
    };
    for batch_size in BATCH_SIZES {
        let warm_up = Instant::now();
        while warm_up.elapsed() < WARM_UP {
            embedder.embed(&batch_of(batch_size))?;
        }

        let mut calls = 0usize;
        let started = Instant::now();
        while calls < 3 || started.elapsed() < MEASURE {
            let batch = batch_of(batch_size);
            let vectors = embedder.embed(&batch)?;
            assert_eq!(vectors.len(), batch_size);
            calls += 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        let chunks_per_second = (calls * batch_size) as f64 / seconds;
        println!(
            "{batch_size:>5}  {calls:>5}  {chunks_per_second:>10.1}  {:>10.0}  {:>12.1}",
            chunks_per_second * TOKENS_PER_CHUNK as f64,
            seconds * 1000.0 / calls as f64
        );
    }
    Ok(())
}

/// `count` different texts of exactly `tokens` tokens each (without `[CLS]`/`[SEP]`), made of
/// whole sentences picked pseudo-randomly, the last one cut to fit.
fn make_chunks(embedder: &Embedder, count: usize, tokens: usize) -> anyhow::Result<Vec<String>> {
    // BERT's tokenizer splits at whitespace before anything else, so a text's token count is the
    // sum of its words' counts: count words once, then assemble texts without re-tokenizing.
    let sentences: Vec<Vec<(&str, usize)>> = SENTENCES
        .iter()
        .map(|s| {
            s.split(' ')
                .map(|w| (w, embedder.count_tokens(w)))
                .collect()
        })
        .collect();
    let mut seed: u64 = 0x5eed;
    let mut random = move |below: usize| {
        // Knuth's MMIX linear congruential generator: deterministic and good enough here.
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % below
    };

    let mut chunks = Vec::with_capacity(count);
    for _ in 0..count {
        let mut words: Vec<&str> = Vec::new();
        let mut used = 0;
        'fill: loop {
            for &(word, n) in &sentences[random(sentences.len())] {
                if used + n > tokens {
                    break 'fill;
                }
                words.push(word);
                used += n;
            }
        }
        // Top up with one-token words so every chunk is exactly `tokens` long.
        words.extend(std::iter::repeat_n("and", tokens - used));
        let chunk = words.join(" ");
        let actual = embedder.count_tokens(&chunk);
        anyhow::ensure!(
            actual == tokens,
            "built a chunk of {actual} tokens, not {tokens}"
        );
        chunks.push(chunk);
    }
    Ok(chunks)
}
