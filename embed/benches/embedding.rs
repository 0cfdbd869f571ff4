// Embedding throughput of all-MiniLM-L6-v2, against the anchors of issue 14 in the same run.
//
//     cargo bench -p sluice-embed --bench embedding --profile dev   # reuses the test build
//
// Two workloads, each at batch 1, 8 and 32: 256-token chunks, the size the worker produces, and
// a mix of short documents (20-200 tokens), which most ingestions are. Reads the model from
// $SLUICE_MODEL_DIR, else ~/.cache/sluice/model (deploy/dev/install puts it there). Uses every
// core, as the worker does; RAYON_NUM_THREADS caps the threads (the embedder's kernels and
// candle's matrix multiplications share rayon's pool), and the anchors get as many.
//
// The anchors, when `deploy/dev/install --anchors` has installed them (benches/anchors.py runs
// them in their own Python): sentence-transformers on PyTorch and ONNX Runtime, both fp32 on
// the CPU. Each table then shows Sluice, the anchor and the ratio (Sluice ÷ anchor: above 1
// means Sluice is faster), and the lowest cosine between Sluice's vectors and
// sentence-transformers' (the goal is fp32 cosine ≥ 0.9999).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use sluice_embed::{Embedder, EmbedderOptions, Precision};

const BATCH_SIZES: [usize; 3] = [1, 8, 32];
/// Untimed calls per batch size first: page in the weights, warm caches and thread pools.
const WARM_UP: Duration = Duration::from_secs(1);
/// Timed calls per batch size go on at least this long (and at least three calls).
const MEASURE: Duration = Duration::from_secs(4);
/// Tokens the model sees per chunk, `[CLS]` and `[SEP]` included.
const TOKENS_PER_CHUNK: usize = 256;
/// Distinct chunks; calls cycle through them so no two consecutive calls embed the same text.
const CHUNKS: usize = 64;
/// Short documents in the mix, and their lengths in tokens the model sees (drawn uniformly).
const SHORT_DOCUMENTS: usize = 256;
const SHORT_TOKENS: std::ops::RangeInclusive<usize> = 20..=200;
/// Texts per workload whose vectors are compared with sentence-transformers'.
const COMPARED_VECTORS: usize = 8;
/// The anchors' environment variables and where `deploy/dev/install --anchors` puts them.
const ANCHORS_PYTHON_ENV: &str = "SLUICE_ANCHORS_PYTHON";
const ANCHORS_ONNX_ENV: &str = "SLUICE_ANCHORS_ONNX";

/// Prose in the register of the documents Sluice ingests, mixed into different texts.
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

/// Texts embedded together in one table.
struct Workload {
    name: &'static str,
    description: String,
    texts: Vec<String>,
    /// Tokens the model sees for each text, `[CLS]` and `[SEP]` included.
    tokens: Vec<usize>,
}

/// One embedder's numbers for one workload.
struct Run {
    precision: Precision,
    /// One per batch size, in `BATCH_SIZES`' order.
    measured: Vec<Measured>,
    /// Unit vectors of the workload's first `COMPARED_VECTORS` texts.
    vectors: Vec<Vec<f32>>,
}

/// One batch size's timed calls.
struct Measured {
    calls: usize,
    seconds: f64,
    tokens_per_s: f64,
}

/// An anchor's numbers for one workload, as anchors.py reports them.
struct AnchorResult {
    /// Tokens/s per batch size, in `BATCH_SIZES`' order.
    tokens_per_s: Vec<f64>,
    /// Unit vectors of the workload's first `COMPARED_VECTORS` texts.
    vectors: Vec<Vec<f32>>,
}

/// Both anchors' results for one workload.
struct Anchors {
    sentence_transformers: AnchorResult,
    onnx_runtime: AnchorResult,
}

/// What anchors.py reported: which versions ran, and one [`Anchors`] per workload.
struct AnchorsRun {
    labels: Vec<String>,
    workloads: Vec<Anchors>,
}

fn main() -> anyhow::Result<()> {
    let cache = match std::env::var_os("SLUICE_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/sluice"),
    };
    let model_dir = std::env::var_os(sluice_embed::MODEL_DIR_ENV)
        .map_or_else(|| cache.join("model"), PathBuf::from);
    let loading = Instant::now();
    let options = EmbedderOptions::default();
    let max_seq_len = options.max_seq_len;
    let embedder = Embedder::load(&model_dir, options.clone())?;
    let loaded_in = loading.elapsed();
    // The reduced-precision mode too, where the CPU has what it needs.
    let int8 = match Embedder::load(
        &model_dir,
        EmbedderOptions {
            precision: Precision::Int8,
            ..options
        },
    ) {
        Ok(embedder) => Some(embedder),
        Err(sluice_embed::EmbedError::Unsupported(why)) => {
            println!("!!! int8 not measured: {why}");
            None
        }
        Err(error) => return Err(error.into()),
    };
    let embedders: Vec<(Precision, &Embedder)> = std::iter::once((Precision::F32, &embedder))
        .chain(int8.as_ref().map(|e| (Precision::Int8, e)))
        .collect();
    // The size of rayon's pool, which RAYON_NUM_THREADS sets: the anchors get as many threads.
    let threads = rayon::current_num_threads();

    let workloads = [
        chunk_workload(&embedder)?,
        short_document_workload(&embedder)?,
    ];
    println!(
        "Embedding benchmark: all-MiniLM-L6-v2 from {}",
        model_dir.display()
    );
    println!(
        "loaded in {:.2} s; {threads} threads; tokens are those the model sees ([CLS] and [SEP] \
         included, at most {max_seq_len})",
        loaded_in.as_secs_f64()
    );

    // Sluice first, then the anchors, so that they never compete for the cores.
    let mut sluice: Vec<Vec<Run>> = Vec::new();
    for workload in &workloads {
        let mut runs = Vec::new();
        for &(precision, embedder) in &embedders {
            let measured: Vec<Measured> = BATCH_SIZES
                .iter()
                .map(|&batch_size| measure(embedder, workload, batch_size))
                .collect::<anyhow::Result<_>>()?;
            let vectors = embedder.embed(&compared_texts(workload))?;
            runs.push(Run {
                precision,
                measured,
                vectors,
            });
        }
        sluice.push(runs);
    }

    let python = anchors_path(ANCHORS_PYTHON_ENV, &cache, "bin/python");
    let onnx = anchors_path(ANCHORS_ONNX_ENV, &cache, "all-MiniLM-L6-v2.onnx");
    let installed = python.exists() && onnx.exists();
    // A failure of the anchors is reported after Sluice's tables, which are worth having anyway.
    let (anchors, failure) = match installed.then(|| {
        eprintln!("running the anchors with {}", python.display());
        run_anchors(&python, &onnx, &model_dir, threads, max_seq_len, &workloads)
    }) {
        Some(Ok(anchors)) => (Some(anchors), None),
        Some(Err(error)) => (None, Some(error)),
        None => (None, None),
    };

    if let Some(anchors) = &anchors {
        println!(
            "anchors, {threads} threads each: {}; ratio = Sluice ÷ anchor (above 1: Sluice is faster)",
            anchors.labels.join(", ")
        );
    }
    for (i, (workload, runs)) in workloads.iter().zip(&sluice).enumerate() {
        println!();
        println!("{}: {}", workload.name, workload.description);
        match &anchors {
            Some(anchors) => print_comparison(runs, &anchors.workloads[i]),
            None => print_sluice_only(runs),
        }
    }

    if let Some(error) = failure {
        return Err(error.context("the anchors failed (Sluice's numbers are above)"));
    }
    if !installed {
        println!(
            "\n!!! The anchors (sentence-transformers, ONNX Runtime) are not installed, so only \
             Sluice's numbers are shown.\n!!! Install them with `deploy/dev/install --anchors` \
             (a 5 GB venv, about 3 minutes).\n!!! Looked for {} and {}.",
            python.display(),
            onnx.display()
        );
    }
    Ok(())
}

/// `CHUNKS` texts of exactly `TOKENS_PER_CHUNK` tokens: what the worker embeds for long documents.
fn chunk_workload(embedder: &Embedder) -> anyhow::Result<Workload> {
    let texts = make_texts(embedder, &[TOKENS_PER_CHUNK - 2; CHUNKS], 0x5eed)?;
    Ok(Workload {
        name: "256-token chunks",
        description: format!("{CHUNKS} distinct chunks of {TOKENS_PER_CHUNK} tokens"),
        tokens: vec![TOKENS_PER_CHUNK; CHUNKS],
        texts,
    })
}

/// `SHORT_DOCUMENTS` texts of 20-200 tokens, lengths drawn uniformly: short documents each fit in
/// one chunk, so the model sees them as they are.
fn short_document_workload(embedder: &Embedder) -> anyhow::Result<Workload> {
    let mut random = Lcg(0x5407);
    let tokens: Vec<usize> = (0..SHORT_DOCUMENTS)
        .map(|_| SHORT_TOKENS.start() + random.below(SHORT_TOKENS.end() - SHORT_TOKENS.start() + 1))
        .collect();
    let without_specials: Vec<usize> = tokens.iter().map(|n| n - 2).collect();
    let texts = make_texts(embedder, &without_specials, 0xd0c5)?;
    let mean = tokens.iter().sum::<usize>() as f64 / tokens.len() as f64;
    Ok(Workload {
        name: "short documents",
        description: format!(
            "{SHORT_DOCUMENTS} documents of {}-{} tokens (mean {mean:.0})",
            SHORT_TOKENS.start(),
            SHORT_TOKENS.end()
        ),
        texts,
        tokens,
    })
}

fn compared_texts(workload: &Workload) -> Vec<&str> {
    workload
        .texts
        .iter()
        .take(COMPARED_VECTORS)
        .map(String::as_str)
        .collect()
}

/// Warm up, then time at least three calls and at least `MEASURE`, each on the next
/// `batch_size` texts of the workload (wrapping around).
fn measure(
    embedder: &Embedder,
    workload: &Workload,
    batch_size: usize,
) -> anyhow::Result<Measured> {
    let count = workload.texts.len();
    let mut next = 0;
    let mut next_batch = || {
        let indices: Vec<usize> = (0..batch_size).map(|i| (next + i) % count).collect();
        next = (next + batch_size) % count;
        indices
    };
    let texts = |indices: &[usize]| -> Vec<&str> {
        indices
            .iter()
            .map(|&i| workload.texts[i].as_str())
            .collect()
    };

    let warm_up = Instant::now();
    while warm_up.elapsed() < WARM_UP {
        embedder.embed(&texts(&next_batch()))?;
    }
    let (mut calls, mut tokens) = (0, 0);
    let started = Instant::now();
    while calls < 3 || started.elapsed() < MEASURE {
        let indices = next_batch();
        let vectors = embedder.embed(&texts(&indices))?;
        ensure!(
            vectors.len() == batch_size,
            "{} vectors for {batch_size} texts",
            vectors.len()
        );
        tokens += indices.iter().map(|&i| workload.tokens[i]).sum::<usize>();
        calls += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Measured {
        calls,
        seconds,
        tokens_per_s: tokens as f64 / seconds,
    })
}

/// An anchor file: the environment variable's value, else where the install step puts it.
fn anchors_path(env: &str, cache: &Path, default: &str) -> PathBuf {
    std::env::var_os(env).map_or_else(|| cache.join("anchors").join(default), PathBuf::from)
}

/// Runs benches/anchors.py on the same workloads and reads its JSON.
fn run_anchors(
    python: &Path,
    onnx: &Path,
    model_dir: &Path,
    threads: usize,
    max_seq_len: usize,
    workloads: &[Workload],
) -> anyhow::Result<AnchorsRun> {
    let request = json!({
        "model_dir": model_dir,
        "onnx": onnx,
        "threads": threads,
        "max_seq_len": max_seq_len,
        "vectors_per_workload": COMPARED_VECTORS,
        "workloads": workloads.iter().map(|w| json!({
            "name": w.name,
            "texts": w.texts,
            "batch_sizes": BATCH_SIZES,
            "warm_up_s": WARM_UP.as_secs_f64(),
            "measure_s": MEASURE.as_secs_f64(),
        })).collect::<Vec<_>>(),
    });
    let dir = tempfile::tempdir()?;
    let request_path = dir.path().join("request.json");
    std::fs::write(&request_path, serde_json::to_vec(&request)?)?;
    // stdout goes to a file: the vectors are more than a pipe holds while we wait on the child.
    let output_path = dir.path().join("result.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/anchors.py");
    let mut child = Command::new(python)
        .arg(&script)
        .arg(&request_path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output_path)?)
        .spawn()
        .with_context(|| format!("cannot start {}", python.display()))?;

    // Bounded: three times what the measurements themselves take, plus time to load PyTorch.
    let measurements = (2 * workloads.len() * BATCH_SIZES.len()) as u32;
    let limit = (WARM_UP + MEASURE) * measurements * 3 + Duration::from_secs(300);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            child.kill()?;
            child.wait()?;
            bail!(
                "{} did not finish within {} s",
                script.display(),
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(status.success(), "{} failed: {status}", script.display());
    let result: Value = serde_json::from_slice(&std::fs::read(&output_path)?)
        .with_context(|| format!("{} printed no JSON result", script.display()))?;

    let anchor = |name: &str| -> anyhow::Result<&Value> {
        result["anchors"]
            .as_array()
            .and_then(|anchors| anchors.iter().find(|a| a["name"] == name))
            .with_context(|| format!("no {name} in the anchors' result"))
    };
    let (st, ort) = (anchor("sentence-transformers")?, anchor("onnxruntime")?);
    Ok(AnchorsRun {
        labels: [st, ort]
            .iter()
            .map(|a| a["label"].as_str().unwrap_or("?").to_string())
            .collect(),
        workloads: workloads
            .iter()
            .map(|workload| {
                Ok(Anchors {
                    sentence_transformers: anchor_result(st, workload)?,
                    onnx_runtime: anchor_result(ort, workload)?,
                })
            })
            .collect::<anyhow::Result<_>>()?,
    })
}

/// One anchor's numbers for one workload, checked against what Sluice counted.
fn anchor_result(anchor: &Value, workload: &Workload) -> anyhow::Result<AnchorResult> {
    let name = anchor["name"].as_str().unwrap_or("?");
    let result = &anchor["workloads"][workload.name];
    // Both sides must count the same tokens, or the ratios compare different work.
    let counted = result["tokens"].as_u64().context("no token count")? as usize;
    let expected: usize = workload.tokens.iter().sum();
    ensure!(
        counted == expected,
        "{name} counted {counted} tokens in {}, Sluice {expected}",
        workload.name
    );
    let tokens_per_s = BATCH_SIZES
        .iter()
        .map(|&batch_size| {
            result["batches"]
                .as_array()
                .and_then(|batches| batches.iter().find(|b| b["batch"] == batch_size))
                .and_then(|b| b["tokens_per_s"].as_f64())
                .with_context(|| format!("{name}: no tokens/s at batch {batch_size}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let vectors = serde_json::from_value(result["vectors"].clone())
        .with_context(|| format!("{name}: no vectors for {}", workload.name))?;
    Ok(AnchorResult {
        tokens_per_s,
        vectors,
    })
}

fn print_sluice_only(runs: &[Run]) {
    println!(
        "{:>5}  {:>9}  {:>5}  {:>15}  {:>11}",
        "batch", "precision", "calls", "Sluice tokens/s", "ms per call"
    );
    for run in runs {
        for (batch_size, m) in BATCH_SIZES.iter().zip(&run.measured) {
            println!(
                "{batch_size:>5}  {:>9}  {:>5}  {:>15.0}  {:>11.1}",
                run.precision.as_str(),
                m.calls,
                m.tokens_per_s,
                m.seconds * 1000.0 / m.calls as f64
            );
        }
    }
    if let [fp32, int8] = runs {
        println!(
            "lowest cosine of {} to {} over the first {} texts: {:.5}",
            int8.precision,
            fp32.precision,
            fp32.vectors.len(),
            lowest_cosine(&int8.vectors, &fp32.vectors)
        );
    }
}

/// Sluice's rows beside both anchors (fp32 each): the goals are fp32 ≥ 1.0× and int8 ≥ 1.5×
/// ONNX Runtime, at cosine ≥ 0.9999 (fp32) and ≥ 0.99 (int8) to sentence-transformers.
fn print_comparison(runs: &[Run], anchors: &Anchors) {
    let (st, ort) = (&anchors.sentence_transformers, &anchors.onnx_runtime);
    println!(
        "{:>5}  {:>9}  {:>15}  {:>11}  {:>21}  {:>6}  {:>12}  {:>6}",
        "batch",
        "precision",
        "Sluice tokens/s",
        "ms per call",
        "sentence-transformers",
        "ratio",
        "ONNX Runtime",
        "ratio"
    );
    for run in runs {
        for (i, (batch_size, m)) in BATCH_SIZES.iter().zip(&run.measured).enumerate() {
            println!(
                "{batch_size:>5}  {:>9}  {:>15.0}  {:>11.1}  {:>21.0}  {:>5.2}×  {:>12.0}  {:>5.2}×",
                run.precision.as_str(),
                m.tokens_per_s,
                m.seconds * 1000.0 / m.calls as f64,
                st.tokens_per_s[i],
                m.tokens_per_s / st.tokens_per_s[i],
                ort.tokens_per_s[i],
                m.tokens_per_s / ort.tokens_per_s[i],
            );
        }
    }
    for run in runs {
        println!(
            "lowest cosine to sentence-transformers over the first {} texts: Sluice {} {:.7}",
            run.vectors.len(),
            run.precision,
            lowest_cosine(&run.vectors, &st.vectors),
        );
    }
    println!(
        "lowest cosine to sentence-transformers, ONNX Runtime: {:.7}",
        lowest_cosine(&ort.vectors, &st.vectors)
    );
}

/// The lowest cosine between paired unit vectors.
fn lowest_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            x.iter()
                .zip(y)
                .map(|(&p, &q)| p as f64 * q as f64)
                .sum::<f64>()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Knuth's MMIX linear congruential generator: deterministic and good enough here.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize % bound
    }
}

/// One text per entry of `lengths`, of exactly that many tokens (without `[CLS]`/`[SEP]`), made
/// of whole sentences picked pseudo-randomly from `seed`, the last one cut to fit.
fn make_texts(embedder: &Embedder, lengths: &[usize], seed: u64) -> anyhow::Result<Vec<String>> {
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
    let mut random = Lcg(seed);

    let mut texts = Vec::with_capacity(lengths.len());
    for &tokens in lengths {
        let mut words: Vec<&str> = Vec::new();
        let mut used = 0;
        'fill: loop {
            for &(word, n) in &sentences[random.below(sentences.len())] {
                if used + n > tokens {
                    break 'fill;
                }
                words.push(word);
                used += n;
            }
        }
        // Top up with one-token words so every text is exactly `tokens` long.
        words.extend(std::iter::repeat_n("and", tokens - used));
        let text = words.join(" ");
        let actual = embedder.count_tokens(&text);
        ensure!(
            actual == tokens,
            "built a text of {actual} tokens, not {tokens}"
        );
        texts.push(text);
    }
    Ok(texts)
}
