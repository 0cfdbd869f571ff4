//! Sentence embeddings with all-MiniLM-L6-v2 on the CPU.
//!
//! [`Embedder`] reproduces sentence-transformers' `encode(normalize_embeddings=True)`: BERT
//! tokenisation truncated to `max_seq_len` tokens (including `[CLS]` and `[SEP]`), the six
//! transformer layers, mean pooling over the real tokens, then L2 normalisation. The unit tests
//! check every vector against sentence-transformers' own output.
//!
//! # Layout
//! - this file: the public API ([`Embedder`], [`EmbedderOptions`], [`EmbedError`]), loading a
//!   model directory, tokenisation, packing texts into shards (a thread's work at a time) and
//!   passes, and pooling.
//! - [`bert`]: the encoder, its weights and one forward pass.
//! - [`kernels`]: the element-wise loops and attention, compiled for AVX2/FMA and AVX-512 when
//!   the CPU has them.
//! - [`int8`]: the reduced-precision linear layers ([`Precision::Int8`]) on AVX-512 VNNI.
//! - [`pool`]: running those loops on every core (rayon's pool, the one candle's matrix
//!   multiplications use), or on one thread alone while the others run shards of their own.
//! - `benches/embedding.rs`: tokens/s at batch 1, 8 and 32, on 256-token chunks and short
//!   documents, beside sentence-transformers and ONNX Runtime when they are installed
//!   (`benches/anchors.py`, `deploy/dev/install --anchors`).
//!
//! # Why the encoder is written out here
//!
//! candle's stock `BertModel` spends as much time outside the matrix multiplications as inside
//! them: its element-wise operations (GELU with a scalar `erf`, softmax, layer norm, bias adds,
//! copies for transposes) run on one core, and it pads every batch to its longest text. On a
//! 2-core machine that gave ≈2,000 tokens/s where sentence-transformers gets ≈5,500.
//!
//! So only the matrix multiplications (≈90% of the arithmetic) go through candle's `gemm` backend
//! (called directly), which uses every core. Everything else is a short loop in [`kernels`], run on all
//! cores ([`pool`]) and compiled for the CPU's vector instructions. Texts are packed back to back
//! without padding: every step except attention works token by token, and attention runs per
//! (text, head), so padding would only be wasted work.

mod bert;
mod int8;
mod kernels;
mod pool;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bert::{Activations, Bert};
use candle_transformers::models::bert::Config;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Environment variable that points at the model directory (read by callers, named here so the
/// error message and the callers agree).
pub const MODEL_DIR_ENV: &str = "SLUICE_MODEL_DIR";

/// Tokens per forward pass, at most (a longer single text still goes through whole). Measured on
/// 2 cores: passes of 512-1,500 tokens run ≈15% faster than 8,192 (32 texts of 256), whose
/// activations (50 MB for one layer's GELU input) no longer fit in the caches, and ≈10% faster
/// than 256, which leaves the matrix multiplications too small to split well between threads.
const TOKENS_PER_PASS: usize = 1024;

/// Tokens per shard, about: a call waiting for the pool (a query, while the worker embeds
/// a batch) waits for one shard at most (≈ 50 ms fp32 on one core). Measured on 2 cores,
/// shards of 256, 512 and 2,048 tokens ran as fast (single-threaded products of 256 rows
/// keep the cores busy; split between threads they did not).
const SHARD_TOKENS: usize = 256;
/// Tokens per shard, at least, for a batch to be split into a shard per thread.
const MIN_SHARD_TOKENS: usize = 128;
/// How much heavier than an even share the heaviest shard may be.
const MAX_SHARD_IMBALANCE: f64 = 1.15;

/// Texts whose activations set the int8 mode's smoothing ([`bert::Bert::quantise`]): varied
/// prose, a list, a short query and code, so that every channel's usual range shows up.
const CALIBRATION: [&str; 8] = [
    "Kafka keeps every record in an append-only log that is split into partitions, and \
     consumers in one group divide the partitions between them.",
    "Quarterly revenue grew by eleven percent, driven mainly by subscriptions in the European \
     market; operating costs fell after two warehouses closed.",
    "Patients were asked to record their symptoms every evening for the first three weeks of \
     treatment, and most of them did.",
    "The glacier has retreated two kilometres since 1950. A lake of meltwater now fills the \
     valley it carved, and the village below worries about floods.",
    "how do I reset my password",
    "Ingredients: 500 g flour, 350 ml water, 10 g salt, 100 g starter. Mix, rest 30 min, fold \
     four times, shape, and bake at 240 °C for 45 minutes.",
    "fn main() { let total: u64 = (1..=10).map(|n| n * n).sum(); println!(\"{total}\"); }",
    "The committee reviewed forty proposals — from universities, start-ups and two city \
     councils — and selected six of them for funding in the coming year.",
];

/// Files a model directory must hold.
const REQUIRED_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Tuning knobs for [`Embedder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedderOptions {
    /// Most texts tokenised at once. The model itself runs shards of about 256 tokens, handed
    /// to its threads from the whole call, whatever this is.
    pub max_batch: usize,
    /// Tokens per text, `[CLS]` and `[SEP]` included; longer texts are truncated.
    /// 256 is what all-MiniLM-L6-v2 was trained with and what sentence-transformers uses.
    pub max_seq_len: usize,
    /// Arithmetic of the linear layers (≈90% of the work).
    pub precision: Precision,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_seq_len: 256,
            precision: Precision::F32,
        }
    }
}

/// How the embedder multiplies its linear layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// fp32 throughout: the vectors match sentence-transformers' to cosine 0.9999999.
    #[default]
    F32,
    /// Weights and activations quantised to 8 bits, products on AVX-512 VNNI (see `int8.rs`);
    /// attention, layer norms and pooling stay fp32. Faster, and the vectors stay within cosine
    /// 0.99 of fp32 (tests check that, and that a fixed set of queries finds the same first
    /// document). Refused at load on a CPU without AVX-512 VNNI.
    Int8,
}

impl Precision {
    /// The name used in configuration: `fp32` or `int8`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "fp32",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "fp32" => Ok(Precision::F32),
            "int8" => Ok(Precision::Int8),
            other => Err(format!(
                "unknown precision {other:?}: expected fp32 or int8"
            )),
        }
    }
}

/// The cause of an [`EmbedError`]: the libraries underneath (candle, tokenizers, serde_json,
/// std::io) each have their own error type, and tokenizers already boxes its errors this way.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why the embedder could not load or run. Each variant keeps what went wrong underneath as its
/// [`source`](std::error::Error::source), so logs can show the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model directory or one of its files does not exist.
    #[error("embedding model not found at {}: {hint}", path.display())]
    ModelMissing { path: PathBuf, hint: String },
    /// A model file could not be read or parsed.
    #[error("could not load the embedding model: {what}")]
    Load {
        what: String,
        #[source]
        cause: Cause,
    },
    /// The model files or the options describe something this embedder does not implement.
    #[error("unsupported embedding model or options: {0}")]
    Unsupported(String),
    /// The tokenizer rejected a text.
    #[error("could not tokenize text for embedding")]
    Tokenize(#[source] Cause),
    /// The forward pass failed (a bug or an exhausted resource, not bad input).
    #[error("embedding inference failed")]
    Inference(#[source] Cause),
}

impl EmbedError {
    /// A `map_err` adapter: loading `what` failed because of the error it is given.
    pub(crate) fn load<E: Into<Cause>>(what: impl Into<String>) -> impl FnOnce(E) -> EmbedError {
        let what = what.into();
        move |cause| EmbedError::Load {
            what,
            cause: cause.into(),
        }
    }
}

impl From<candle_core::Error> for EmbedError {
    fn from(error: candle_core::Error) -> Self {
        EmbedError::Inference(Box::new(error))
    }
}

/// all-MiniLM-L6-v2 (or another BERT sentence encoder with mean pooling), ready to embed text.
///
/// Cheap to share: wrap it in an `Arc` and call [`Embedder::embed`] from any thread.
pub struct Embedder {
    model: Bert,
    /// Plain tokenizer (no padding, no truncation): counts tokens and sizes chunks.
    tokenizer: Tokenizer,
    /// Same tokenizer, truncating to `max_seq_len`: prepares the model's input.
    model_tokenizer: Tokenizer,
    model_dir: PathBuf,
    options: EmbedderOptions,
    /// Activation buffers of finished calls, for the next ones: a call of one short text
    /// otherwise spent a tenth of its time allocating and faulting in fresh ones. At most
    /// [`SPARE_ACTIVATIONS`], each as large as the largest pass it served (≈ 17 MB for 1,024 tokens).
    spare: Mutex<Vec<Activations>>,
}

/// Activation buffers kept between calls, at most: one per call (or, in a sharded batch, per
/// shard) running at once, up to this.
const SPARE_ACTIVATIONS: usize = 4;

impl Embedder {
    /// Loads the model from `model_dir` (`config.json`, `tokenizer.json`, `model.safetensors`
    /// and, optionally, sentence-transformers' `1_Pooling/config.json`). Nothing is downloaded.
    pub fn load(model_dir: &Path, options: EmbedderOptions) -> Result<Embedder, EmbedError> {
        pool::start();
        let missing: Vec<&str> = REQUIRED_FILES
            .into_iter()
            .filter(|file| !model_dir.join(file).is_file())
            .collect();
        if !missing.is_empty() {
            let what = if model_dir.is_dir() {
                format!("the directory lacks {}", missing.join(", "))
            } else {
                "the directory does not exist".to_string()
            };
            return Err(EmbedError::ModelMissing {
                path: model_dir.to_path_buf(),
                hint: format!(
                    "{what}; run `deploy/dev/install` to install all-MiniLM-L6-v2 there, \
                     or set {MODEL_DIR_ENV} to a directory holding {}",
                    REQUIRED_FILES.join(", ")
                ),
            });
        }
        if options.max_batch == 0 {
            return Err(EmbedError::Unsupported(
                "max_batch must be at least 1".into(),
            ));
        }
        check_pooling(model_dir)?;

        let config_text = std::fs::read_to_string(model_dir.join("config.json"))
            .map_err(EmbedError::load("reading config.json"))?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(EmbedError::load("parsing config.json"))?;
        // Two tokens go to [CLS] and [SEP]; positions beyond the table have no embedding.
        if options.max_seq_len < 2 || options.max_seq_len > config.max_position_embeddings {
            return Err(EmbedError::Unsupported(format!(
                "max_seq_len must be between 2 and {} for this model, not {}",
                config.max_position_embeddings, options.max_seq_len
            )));
        }
        if options.precision == Precision::Int8 && !int8::Int8Dense::supported() {
            return Err(EmbedError::Unsupported(
                "precision int8 needs a CPU with AVX-512 VNNI; use fp32 on this one".into(),
            ));
        }
        let mut model = Bert::load(&model_dir.join("model.safetensors"), &config)?;

        let mut tokenizer = Tokenizer::from_file(model_dir.join("tokenizer.json"))
            .map_err(EmbedError::load("reading tokenizer.json"))?;
        // tokenizer.json ships with padding and truncation at 128, which would silently
        // undercount long texts; both are decided here instead.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(EmbedError::load("configuring the tokenizer"))?;
        let mut model_tokenizer = tokenizer.clone();
        model_tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: options.max_seq_len,
                strategy: TruncationStrategy::LongestFirst,
                direction: TruncationDirection::Right,
                stride: 0,
            }))
            .map_err(EmbedError::load("configuring the tokenizer"))?;

        if options.precision == Precision::Int8 {
            let encodings = model_tokenizer
                .encode_batch_fast(CALIBRATION.to_vec(), true)
                .map_err(EmbedError::Tokenize)?;
            model.quantise(&PackedTokens::new(&encodings.iter().collect::<Vec<_>>()))?;
        }

        Ok(Embedder {
            model,
            tokenizer,
            model_tokenizer,
            model_dir: model_dir.to_path_buf(),
            options,
            spare: Mutex::default(),
        })
    }

    /// One unit-length vector per text, in order. Texts longer than `max_seq_len` tokens are
    /// embedded from their beginning, as sentence-transformers does.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        // One text (a query, a document of one chunk) runs whole on one of the pool's
        // threads: its layers' parallel loops are then split between the pool's threads
        // directly, instead of each loop being handed to the pool from outside and waited for
        // (a wake-up of the calling thread per loop, dozens a pass): +13-17% tokens/s at
        // batch 1 on 2 cores. Several texts go in shards, each whole on one thread, handed
        // out one at a time (`embed_here`). Either way a pool thread takes up one text or one
        // shard at a time, so a query waits behind a batch for that long at most.
        if texts.len() == 1 {
            return rayon::scope(|_| self.embed_here(texts));
        }
        self.embed_here(texts)
    }

    /// [`Embedder::embed`] on the calling thread.
    fn embed_here(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut encodings = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.options.max_batch) {
            encodings.extend(
                self.model_tokenizer
                    .encode_batch_fast(batch.to_vec(), true)
                    .map_err(EmbedError::Tokenize)?,
            );
        }
        let shards = shards(&encodings, pool::threads());
        if shards.len() == 1 {
            return self.passes(&encodings.iter().collect::<Vec<_>>());
        }
        // Each shard whole on one thread ([`pool::alone`]), so that no thread waits for
        // another in the middle of a pass, handed out as threads free up ([`pool::stream`]).
        let results = pool::stream(&shards, |shard| {
            let texts: Vec<_> = shard.iter().map(|&i| &encodings[i]).collect();
            pool::alone(|| self.passes(&texts))
        });
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; encodings.len()];
        for (shard, result) in shards.iter().zip(results) {
            for (&i, vector) in shard.iter().zip(result?) {
                vectors[i] = Some(vector);
            }
        }
        Ok(vectors
            .into_iter()
            .map(|v| v.expect("every text is in a shard"))
            .collect())
    }

    /// The vectors of `texts`, in order, in forward passes of up to [`TOKENS_PER_PASS`]
    /// tokens each.
    fn passes(&self, texts: &[&tokenizers::Encoding]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut vectors = Vec::with_capacity(texts.len());
        let mut activations = self.spare_activations().pop().unwrap_or_default();
        let mut rest = texts;
        while !rest.is_empty() {
            let take = fitting(rest.iter().map(|e| e.len()), TOKENS_PER_PASS);
            let (pass, tail) = rest.split_at(take);
            rest = tail;
            let tokens = PackedTokens::new(pass);
            let hidden = self.model.forward(&tokens, &mut activations)?;
            vectors.extend(mean_pool_normalised(hidden, &tokens, self.dimension()));
        }
        let mut spare = self.spare_activations();
        if spare.len() < SPARE_ACTIVATIONS {
            spare.push(activations);
        }
        Ok(vectors)
    }

    fn spare_activations(&self) -> std::sync::MutexGuard<'_, Vec<Activations>> {
        // The buffers hold no invariant a panicking call could break.
        self.spare
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Length of every vector (384 for all-MiniLM-L6-v2).
    pub fn dimension(&self) -> usize {
        self.model.hidden
    }

    /// The model's tokenizer without padding or truncation, for sizing chunks.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokens in `text`, not counting `[CLS]` and `[SEP]` (the model sees two more).
    /// Text the tokenizer rejects counts as 0.
    pub fn count_tokens(&self, text: &str) -> usize {
        self.tokenizer
            .encode_fast(text, false)
            .map(|encoding| encoding.len())
            .unwrap_or(0)
    }

    /// The directory the model was loaded from.
    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }
}

/// Refuses models whose sentence-transformers pooling is not plain mean pooling, the only kind
/// implemented here. Directories without `1_Pooling/config.json` are assumed to use it.
fn check_pooling(model_dir: &Path) -> Result<(), EmbedError> {
    let path = model_dir.join("1_Pooling").join("config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let pooling: serde_json::Value = serde_json::from_str(&text)
        .map_err(EmbedError::load(format!("parsing {}", path.display())))?;
    let flag = |name: &str| pooling.get(name).and_then(|v| v.as_bool()) == Some(true);
    let others = [
        "pooling_mode_cls_token",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
    ];
    if flag("pooling_mode_mean_tokens") && !others.iter().any(|name| flag(name)) {
        Ok(())
    } else {
        Err(EmbedError::Unsupported(format!(
            "{} asks for a pooling other than mean pooling, which is all Sluice implements",
            path.display()
        )))
    }
}

/// How many texts, whole and from the first, fit in `limit` tokens: at least one (a longer
/// text goes alone). `lengths` are the texts' lengths in tokens.
fn fitting(mut lengths: impl Iterator<Item = usize>, limit: usize) -> usize {
    let mut tokens = lengths.next().unwrap_or(0);
    let mut take = 1;
    for length in lengths {
        if tokens + length > limit {
            break;
        }
        tokens += length;
        take += 1;
    }
    take
}

/// The texts of a call (by index) in shards of about [`SHARD_TOKENS`] each, heaviest first,
/// for a thread each: as many shards as fit, in a multiple of `threads`, each text (longest
/// first) to the shard with the fewest tokens so far, so that the threads run out of work at
/// about the same time. One shard (all of them, in order) when the texts are too few, or too
/// short, or too uneven to split: then every loop of a pass is split between the threads
/// instead.
fn shards(encodings: &[tokenizers::Encoding], threads: usize) -> Vec<Vec<usize>> {
    let all = || vec![(0..encodings.len()).collect()];
    let total: usize = encodings.iter().map(|e| e.len()).sum();
    if threads < 2 || encodings.len() < threads || total < threads * MIN_SHARD_TOKENS {
        return all();
    }
    let rounds = (total as f64 / (threads * SHARD_TOKENS) as f64).round() as usize;
    let count = (threads * rounds.max(1)).min(encodings.len() / threads * threads);
    let mut order: Vec<usize> = (0..encodings.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len()));
    let mut shards: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); count];
    for i in order {
        let lightest = shards
            .iter_mut()
            .min_by_key(|(tokens, _)| *tokens)
            .expect("at least two shards");
        lightest.0 += encodings[i].len();
        lightest.1.push(i);
    }
    // With a shard per thread, the call lasts as long as the heaviest; with more, the threads
    // even out as they take the next (heaviest first).
    let heaviest = shards.iter().map(|(tokens, _)| *tokens).max().unwrap_or(0);
    if count == threads && heaviest as f64 > MAX_SHARD_IMBALANCE * total as f64 / threads as f64 {
        return all();
    }
    shards.sort_by_key(|(tokens, _)| std::cmp::Reverse(*tokens));
    shards
        .into_iter()
        .map(|(_, mut texts)| {
            texts.sort_unstable();
            texts
        })
        .collect()
}

/// A batch of tokenised texts laid end to end: token `t` of text `i` is row
/// `starts[i] + t` of every activation matrix.
struct PackedTokens {
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    /// Where each text starts; a final entry holds the total number of tokens.
    starts: Vec<usize>,
}

impl PackedTokens {
    fn new(encodings: &[&tokenizers::Encoding]) -> Self {
        let mut packed = PackedTokens {
            ids: Vec::new(),
            type_ids: Vec::new(),
            starts: vec![0],
        };
        for encoding in encodings {
            packed.ids.extend_from_slice(encoding.get_ids());
            packed.type_ids.extend_from_slice(encoding.get_type_ids());
            packed.starts.push(packed.ids.len());
        }
        packed
    }

    fn total(&self) -> usize {
        self.ids.len()
    }

    /// `(first row, number of tokens)` of each text.
    fn texts(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.starts.windows(2).map(|w| (w[0], w[1] - w[0]))
    }
}

/// Mean of each text's token vectors, scaled to unit length: sentence-transformers' `Pooling`
/// (mean mode) followed by its `Normalize` module, including their epsilons.
fn mean_pool_normalised(hidden: &[f32], tokens: &PackedTokens, width: usize) -> Vec<Vec<f32>> {
    tokens
        .texts()
        .map(|(start, len)| {
            let mut mean = vec![0.0f32; width];
            for row in hidden[start * width..(start + len) * width].chunks_exact(width) {
                for (m, &x) in mean.iter_mut().zip(row) {
                    *m += x;
                }
            }
            let count = (len as f32).max(1e-9);
            mean.iter_mut().for_each(|m| *m /= count);
            let norm = mean.iter().map(|m| m * m).sum::<f32>().sqrt().max(1e-12);
            mean.iter_mut().for_each(|m| *m /= norm);
            mean
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// sentence-transformers' vectors for eight texts; `make_reference_vectors.py` beside the
    /// file regenerates it.
    const REFERENCE: &str = include_str!("../tests/data/all-MiniLM-L6-v2.vectors.json");

    /// The model directory: `SLUICE_MODEL_DIR`, else `~/.cache/sluice/model`. Tests fail (not
    /// skip) without it: CI installs the model before running them.
    fn model_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os(MODEL_DIR_ENV) {
            return PathBuf::from(dir);
        }
        let home = std::env::var_os("HOME").expect("HOME or SLUICE_MODEL_DIR must be set");
        Path::new(&home).join(".cache/sluice/model")
    }

    /// Loaded once for all tests: loading takes a while in unoptimised builds.
    fn embedder() -> &'static Embedder {
        static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
        EMBEDDER.get_or_init(|| {
            Embedder::load(&model_dir(), EmbedderOptions::default())
                .unwrap_or_else(|e| panic!("the embedding tests need the model: {e}"))
        })
    }

    fn with_max_batch(max_batch: usize) -> Embedder {
        let options = EmbedderOptions {
            max_batch,
            ..EmbedderOptions::default()
        };
        Embedder::load(&model_dir(), options).unwrap()
    }

    /// The largest difference between two vectors, value by value.
    fn largest_gap(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    }

    fn reference() -> Vec<(String, Vec<f32>)> {
        let json: serde_json::Value = serde_json::from_str(REFERENCE).unwrap();
        json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                let text = item["text"].as_str().unwrap().to_string();
                let vector = item["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                (text, vector)
            })
            .collect()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    }

    /// The int8 embedder, or `None` (having said so) on a CPU without AVX-512 VNNI.
    fn int8_embedder() -> Option<&'static Embedder> {
        static EMBEDDER: OnceLock<Option<Embedder>> = OnceLock::new();
        EMBEDDER
            .get_or_init(|| {
                let options = EmbedderOptions {
                    precision: Precision::Int8,
                    ..EmbedderOptions::default()
                };
                match Embedder::load(&model_dir(), options) {
                    Ok(embedder) => Some(embedder),
                    Err(EmbedError::Unsupported(why)) => {
                        eprintln!("*** SKIPPED int8 checks: {why} ***");
                        None
                    }
                    Err(e) => panic!("the embedding tests need the model: {e}"),
                }
            })
            .as_ref()
    }

    /// Index of the document closest to each query.
    fn first_hits(embedder: &Embedder, documents: &[&str], queries: &[&str]) -> Vec<usize> {
        let documents = embedder.embed(documents).unwrap();
        let queries = embedder.embed(queries).unwrap();
        queries
            .iter()
            .map(|query| {
                let scores = documents.iter().map(|d| cosine(query, d));
                let best = scores.enumerate().max_by(|a, b| a.1.total_cmp(&b.1));
                best.unwrap().0
            })
            .collect()
    }

    #[test]
    fn int8_stays_close_to_sentence_transformers() {
        let Some(embedder) = int8_embedder() else {
            return;
        };
        assert_close_to_reference(embedder, "int8", 0.99);
    }

    /// Embeds the reference texts and checks each vector's cosine to sentence-transformers'
    /// against `at_least`, printing them all and the lowest.
    fn assert_close_to_reference(embedder: &Embedder, label: &str, at_least: f32) {
        let reference = reference();
        let texts: Vec<&str> = reference.iter().map(|(text, _)| text.as_str()).collect();
        let vectors = embedder.embed(&texts).unwrap();
        let mut min = f32::INFINITY;
        for ((text, expected), actual) in reference.iter().zip(&vectors) {
            assert_eq!(actual.len(), 384);
            let similarity = cosine(expected, actual);
            let shown: String = text.chars().take(40).collect();
            println!("{label} cosine {similarity:.7}  {shown:?}");
            assert!(
                similarity >= at_least,
                "{label} cosine {similarity} for {shown:?}"
            );
            min = min.min(similarity);
        }
        println!("{label}: minimum cosine to sentence-transformers: {min:.7}");
    }

    /// `tests/data/retrieval.json`: 40 documents in pairs that share a topic, and one query
    /// written for each. int8 must pick the same first document as fp32 for every query.
    #[test]
    fn int8_finds_the_same_first_documents_as_fp32() {
        let Some(int8) = int8_embedder() else {
            return;
        };
        let set: serde_json::Value =
            serde_json::from_str(include_str!("../tests/data/retrieval.json")).unwrap();
        let strings = |key: &str| -> Vec<&str> {
            set[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect()
        };
        let (documents, queries) = (strings("documents"), strings("queries"));
        let fp32_hits = first_hits(embedder(), &documents, &queries);
        // The set itself is sound: in fp32 every query finds the document written for it.
        let written_for: Vec<usize> = (0..queries.len()).collect();
        assert_eq!(fp32_hits, written_for, "fp32 first documents");
        assert_eq!(
            first_hits(int8, &documents, &queries),
            fp32_hits,
            "int8 first documents"
        );
    }

    #[test]
    fn embedder_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Embedder>();
    }

    #[test]
    fn matches_sentence_transformers() {
        let embedder = embedder();
        let reference = reference();
        assert_eq!(reference.len(), 8);
        let texts: Vec<&str> = reference.iter().map(|(text, _)| text.as_str()).collect();
        // The long text must actually exceed the limit, or truncation goes untested.
        assert!(texts.iter().any(|t| embedder.count_tokens(t) > 254));
        assert_close_to_reference(embedder, "fp32", 0.9999);
    }

    #[test]
    fn batched_equals_one_at_a_time() {
        let embedder = embedder();
        let reference = reference();
        let texts: Vec<&str> = reference.iter().map(|(text, _)| text.as_str()).collect();
        let batched = embedder.embed(&texts).unwrap();
        for (text, from_batch) in texts.iter().zip(&batched) {
            let alone = &embedder.embed(&[text]).unwrap()[0];
            let gap = largest_gap(alone, from_batch);
            assert!(gap < 1e-5, "batch and single differ by {gap} for {text:?}");
        }
    }

    /// A batch split into shards (each whole on one thread, handed out as threads free up)
    /// gives every text the vector it gets alone, in the order of the texts.
    #[test]
    fn sharded_batches_equal_one_at_a_time() {
        let embedder = embedder();
        let sentence = "Consumers in the same group divide the partitions between them. ";
        let texts: Vec<String> = (0..40).map(|n| sentence.repeat(1 + n % 5)).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings = embedder
            .model_tokenizer
            .encode_batch_fast(texts.clone(), true)
            .unwrap();
        // Shards on 2 threads: several rounds of them.
        assert!(shards(&encodings, 2).len() > 2, "the test needs shards");
        let batched = embedder.embed(&texts).unwrap();
        for (text, from_batch) in texts.iter().zip(&batched) {
            let alone = &embedder.embed(&[text]).unwrap()[0];
            let gap = largest_gap(alone, from_batch);
            assert!(
                gap < 1e-5,
                "sharded and single differ by {gap} for {text:?}"
            );
        }
    }

    #[test]
    fn passes_take_whole_texts_within_their_tokens() {
        assert_eq!(fitting([100, 100, 100].into_iter(), 250), 2);
        assert_eq!(fitting([10, 10].into_iter(), 256), 2);
        // A text longer than the limit still goes, alone.
        assert_eq!(fitting([300, 10].into_iter(), 256), 1);
    }

    #[test]
    fn shards_balance_tokens_and_hold_every_text_once() {
        let embedder = embedder();
        let encode = |lengths: &[usize]| {
            let texts: Vec<String> = lengths.iter().map(|&n| "tide ".repeat(n)).collect();
            embedder
                .model_tokenizer
                .encode_batch_fast(texts, true)
                .unwrap()
        };
        // Each shard's tokens, after checking that the shards hold every text once.
        let tokens_of = |encodings: &[tokenizers::Encoding], shards: &[Vec<usize>]| {
            let mut all: Vec<usize> = shards.concat();
            all.sort_unstable();
            assert_eq!(all, (0..encodings.len()).collect::<Vec<_>>());
            shards
                .iter()
                .map(|shard| shard.iter().map(|&i| encodings[i].len()).sum())
                .collect::<Vec<usize>>()
        };
        let encodings = encode(&[100, 20, 90, 30, 60, 50]);
        let shards = shards(&encodings, 2);
        assert_eq!(shards.len(), 2);
        let tokens = tokens_of(&encodings, &shards);
        assert!(tokens[0].abs_diff(tokens[1]) <= 10, "{tokens:?}");
        // A larger call: shards of about SHARD_TOKENS, a multiple of the threads in number,
        // heaviest first, even.
        let lengths: Vec<usize> = (0..60).map(|n| 20 + (n * 37) % 150).collect();
        let encodings = encode(&lengths);
        let shards = super::shards(&encodings, 2);
        let total: usize = encodings.iter().map(|e| e.len()).sum();
        assert_eq!(shards.len() % 2, 0);
        assert_eq!(
            shards.len(),
            2 * (total as f64 / (2 * SHARD_TOKENS) as f64).round() as usize
        );
        let tokens = tokens_of(&encodings, &shards);
        assert!(tokens.windows(2).all(|w| w[0] >= w[1]), "{tokens:?}");
        assert!(tokens[0] - tokens[tokens.len() - 1] <= 175, "{tokens:?}");
        // Too uneven, too few texts or too few tokens: one shard, in order.
        for lengths in [&[200, 20][..], &[200][..], &[30, 30][..]] {
            let encodings = encode(lengths);
            assert_eq!(
                super::shards(&encodings, 2),
                vec![(0..lengths.len()).collect::<Vec<_>>()],
                "{lengths:?}"
            );
        }
        assert_eq!(super::shards(&encodings, 1).len(), 1);
    }

    /// Every pass of a call reuses the buffers of the one before: a short text after a long
    /// one (and the reverse) must not see what the longer pass left in them.
    #[test]
    fn passes_of_one_call_do_not_leak_into_each_other() {
        let one_per_pass = with_max_batch(1);
        let long = "Kafka keeps every record in an append-only log. ".repeat(30);
        let texts = [
            "short query",
            long.as_str(),
            "another short one",
            long.as_str(),
        ];
        let together = one_per_pass.embed(&texts).unwrap();
        for (text, vector) in texts.iter().zip(&together) {
            let alone = &embedder().embed(&[text]).unwrap()[0];
            let gap = largest_gap(alone, vector);
            assert!(gap < 1e-5, "{gap} apart for {text:?}");
        }
    }

    #[test]
    fn calls_do_not_leak_into_each_other() {
        // Buffers are kept between calls and taken by calls running at once: every text still
        // gets the vector a fresh embedder gives it, after longer texts and beside other calls.
        let long = "Kafka keeps every record in an append-only log. ".repeat(30);
        let texts = ["short query", long.as_str(), "another short one"];
        let fresh: Vec<Vec<f32>> = texts
            .iter()
            .map(|text| with_max_batch(32).embed(&[text]).unwrap().remove(0))
            .collect();
        let reused = with_max_batch(32);
        let check = |round: usize| {
            for i in [1, 0, 2, 1, 2, 0] {
                let vector = reused.embed(&[texts[i]]).unwrap().remove(0);
                let gap = largest_gap(&fresh[i], &vector);
                assert!(gap < 1e-5, "{gap} apart for {:?} (round {round})", texts[i]);
            }
        };
        check(0);
        std::thread::scope(|scope| {
            for round in 1..=4 {
                scope.spawn(move || check(round));
            }
        });
        assert!(reused.spare_activations().len() <= SPARE_ACTIVATIONS);
    }

    #[test]
    fn batches_larger_than_max_batch_are_split() {
        let embedder = with_max_batch(3);
        let reference = reference();
        let texts: Vec<&str> = reference.iter().map(|(text, _)| text.as_str()).collect();
        let vectors = embedder.embed(&texts).unwrap();
        assert_eq!(vectors.len(), texts.len());
        for ((_, expected), actual) in reference.iter().zip(&vectors) {
            assert!(cosine(expected, actual) >= 0.9999);
        }
        assert!(embedder.embed(&[]).unwrap().is_empty());
    }

    #[test]
    fn vectors_have_unit_length() {
        let vectors = embedder()
            .embed(&[
                "short",
                "",
                "a somewhat longer sentence about Kafka and Qdrant",
            ])
            .unwrap();
        for vector in vectors {
            let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        }
    }

    #[test]
    fn counts_tokens_without_special_tokens() {
        let embedder = embedder();
        assert_eq!(embedder.dimension(), 384);
        assert_eq!(embedder.count_tokens(""), 0);
        assert_eq!(embedder.count_tokens("A man is eating food."), 6);
        // No truncation at tokenizer.json's 128 or at max_seq_len.
        assert!(embedder.count_tokens(&"word ".repeat(600)) >= 600);
        assert!(embedder.tokenizer().get_padding().is_none());
        assert!(embedder.tokenizer().get_truncation().is_none());
        assert_eq!(embedder.model_dir(), model_dir());
    }

    #[test]
    fn missing_model_says_how_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        let error = Embedder::load(&missing, EmbedderOptions::default())
            .err()
            .expect("loading from a missing directory must fail");
        assert!(matches!(error, EmbedError::ModelMissing { .. }));
        let message = error.to_string();
        assert!(message.contains("deploy/dev/install"), "{message}");
        assert!(message.contains(MODEL_DIR_ENV), "{message}");
    }
}
