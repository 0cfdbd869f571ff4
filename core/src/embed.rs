//! Sentence embeddings with all-MiniLM-L6-v2 on the CPU.
//!
//! [`Embedder`] reproduces sentence-transformers' `encode(normalize_embeddings=True)`: BERT
//! tokenisation truncated to `max_seq_len` tokens (including `[CLS]` and `[SEP]`), the six
//! transformer layers, mean pooling over the real tokens, then L2 normalisation. The unit tests
//! check every vector against sentence-transformers' own output.
//!
//! # Why the encoder is written out here
//!
//! candle's stock `BertModel` spends as much time outside the matrix multiplications as inside
//! them: its element-wise operations (GELU with a scalar `erf`, softmax, layer norm, bias adds,
//! copies for transposes) run on one core, and it pads every batch to its longest text. On a
//! 2-core machine that gave ≈2,000 tokens/s where sentence-transformers gets ≈5,500.
//!
//! So only the weights and the matrix multiplications (≈90% of the arithmetic) go through candle,
//! whose `gemm` backend uses every core. Everything else is a short loop in this file, run on all
//! cores ([`for_each_parallel`]) and compiled for AVX2/FMA when the CPU has them ([`simd_kernel`]).
//! Texts are packed back to back without padding: every step except attention works token by
//! token, and attention runs per (text, head), so padding would only be wasted work.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use candle_transformers::models::bert::{Config, HiddenAct};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Environment variable that points at the model directory (read by callers, named here so the
/// error message and the callers agree).
pub const MODEL_DIR_ENV: &str = "SLUICE_MODEL_DIR";

/// Tokens per forward pass, at most (a longer single text still goes through whole). Measured on
/// 2 cores: passes of 512-1,500 tokens run ≈15% faster than 8,192 (32 texts of 256), whose
/// activations (50 MB for one layer's GELU input) no longer fit in the caches, and ≈10% faster
/// than 256, which leaves the matrix multiplications too small to split well between threads.
const TOKENS_PER_PASS: usize = 1024;

/// Files a model directory must hold.
const REQUIRED_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Tuning knobs for [`Embedder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedderOptions {
    /// Most texts tokenised at once. The model itself runs on up to 1,024 tokens at a time
    /// (four 256-token texts), which measured fastest; this bounds memory for tokens and vectors.
    pub max_batch: usize,
    /// Tokens per text, `[CLS]` and `[SEP]` included; longer texts are truncated.
    /// 256 is what all-MiniLM-L6-v2 was trained with and what sentence-transformers uses.
    pub max_seq_len: usize,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_seq_len: 256,
        }
    }
}

/// Why the embedder could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model directory or one of its files does not exist.
    #[error("embedding model not found at {}: {hint}", path.display())]
    ModelMissing { path: PathBuf, hint: String },
    /// The model files exist but could not be read or do not describe a supported model.
    #[error("could not load the embedding model: {0}")]
    Load(String),
    /// The tokenizer rejected a text.
    #[error("could not tokenize text for embedding: {0}")]
    Tokenize(String),
    /// The forward pass failed (a bug or an exhausted resource, not bad input).
    #[error("embedding inference failed: {0}")]
    Inference(String),
}

impl From<candle_core::Error> for EmbedError {
    fn from(error: candle_core::Error) -> Self {
        EmbedError::Inference(error.to_string())
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
}

impl Embedder {
    /// Loads the model from `model_dir` (`config.json`, `tokenizer.json`, `model.safetensors`
    /// and, optionally, sentence-transformers' `1_Pooling/config.json`). Nothing is downloaded.
    pub fn load(model_dir: &Path, options: EmbedderOptions) -> Result<Embedder, EmbedError> {
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
            return Err(EmbedError::Load("max_batch must be at least 1".into()));
        }
        check_pooling(model_dir)?;

        let config_text = std::fs::read_to_string(model_dir.join("config.json"))
            .map_err(|e| EmbedError::Load(format!("reading config.json: {e}")))?;
        let config: Config = serde_json::from_str(&config_text)
            .map_err(|e| EmbedError::Load(format!("parsing config.json: {e}")))?;
        // Two tokens go to [CLS] and [SEP]; positions beyond the table have no embedding.
        if options.max_seq_len < 2 || options.max_seq_len > config.max_position_embeddings {
            return Err(EmbedError::Load(format!(
                "max_seq_len must be between 2 and {} for this model, not {}",
                config.max_position_embeddings, options.max_seq_len
            )));
        }
        let model = Bert::load(&model_dir.join("model.safetensors"), &config)?;

        let mut tokenizer = Tokenizer::from_file(model_dir.join("tokenizer.json"))
            .map_err(|e| EmbedError::Load(format!("reading tokenizer.json: {e}")))?;
        // tokenizer.json ships with padding and truncation at 128, which would silently
        // undercount long texts; both are decided here instead.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| EmbedError::Load(e.to_string()))?;
        let mut model_tokenizer = tokenizer.clone();
        model_tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: options.max_seq_len,
                strategy: TruncationStrategy::LongestFirst,
                direction: TruncationDirection::Right,
                stride: 0,
            }))
            .map_err(|e| EmbedError::Load(e.to_string()))?;

        Ok(Embedder {
            model,
            tokenizer,
            model_tokenizer,
            model_dir: model_dir.to_path_buf(),
            options,
        })
    }

    /// One unit-length vector per text, in order. Texts longer than `max_seq_len` tokens are
    /// embedded from their beginning, as sentence-transformers does.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.options.max_batch) {
            let encodings = self
                .model_tokenizer
                .encode_batch_fast(batch.to_vec(), true)
                .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
            let mut rest = &encodings[..];
            while !rest.is_empty() {
                // Whole texts up to TOKENS_PER_PASS tokens (at least one text) per forward pass.
                let mut take = 1;
                let mut tokens = rest[0].len();
                while take < rest.len() && tokens + rest[take].len() <= TOKENS_PER_PASS {
                    tokens += rest[take].len();
                    take += 1;
                }
                let (pass, tail) = rest.split_at(take);
                rest = tail;
                let tokens = PackedTokens::new(pass);
                let hidden = self.model.forward(&tokens)?;
                vectors.extend(mean_pool_normalised(&hidden, &tokens, self.dimension()));
            }
        }
        Ok(vectors)
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
        .map_err(|e| EmbedError::Load(format!("parsing {}: {e}", path.display())))?;
    let flag = |name: &str| pooling.get(name).and_then(|v| v.as_bool()) == Some(true);
    let others = [
        "pooling_mode_cls_token",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
    ];
    if flag("pooling_mode_mean_tokens") && !others.iter().any(|name| flag(name)) {
        Ok(())
    } else {
        Err(EmbedError::Load(format!(
            "{} asks for a pooling other than mean pooling, which is all Sluice implements",
            path.display()
        )))
    }
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
    fn new(encodings: &[tokenizers::Encoding]) -> Self {
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

// ---------------------------------------------------------------------------------------------
// The encoder
// ---------------------------------------------------------------------------------------------

/// BERT encoder weights. Matrices stay candle tensors (they feed its matrix multiplication);
/// vectors are plain `Vec<f32>` for the loops below.
struct Bert {
    hidden: usize,
    heads: usize,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    token_type_embeddings: Vec<f32>,
    embeddings_norm: LayerNorm,
    layers: Vec<BertLayer>,
    /// Threads for the loops in this file (candle sizes its own pool the same way).
    threads: usize,
}

struct BertLayer {
    /// Query, key and value projections fused into one matrix: one multiplication instead of three.
    qkv: Dense,
    attention_output: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

/// A linear layer `x W^T + b`. The multiplication happens in candle; the bias is added by
/// whichever loop reads the product next, saving a pass over it.
struct Dense {
    /// `W^T`, `(in, out)`, contiguous.
    weight_t: Tensor,
    bias: Vec<f32>,
}

struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

/// Reads named tensors out of a safetensors file, checking their shapes.
struct Weights {
    tensors: std::collections::HashMap<String, Tensor>,
    /// "" or "bert." (checkpoints saved from `BertForMaskedLM` and friends use the latter).
    prefix: &'static str,
}

impl Weights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, EmbedError> {
        let full = format!("{}{name}", self.prefix);
        let tensor = self
            .tensors
            .get(&full)
            .ok_or_else(|| EmbedError::Load(format!("model.safetensors lacks {full}")))?;
        if tensor.dims() != shape {
            return Err(EmbedError::Load(format!(
                "{full} has shape {:?}, expected {shape:?}",
                tensor.dims()
            )));
        }
        tensor
            .to_dtype(DType::F32)
            .map_err(|e| EmbedError::Load(e.to_string()))
    }

    fn vector(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EmbedError> {
        self.tensor(name, shape)?
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(|e| EmbedError::Load(e.to_string()))
    }

    /// Loads `{name}.weight` (`(out, in)`) of each given layer, stacked along `out`, and their
    /// biases.
    fn dense(&self, names: &[String], inputs: usize, outputs: usize) -> Result<Dense, EmbedError> {
        let mut weights = Vec::new();
        let mut bias = Vec::new();
        for name in names {
            weights.push(self.tensor(&format!("{name}.weight"), &[outputs, inputs])?);
            bias.extend(self.vector(&format!("{name}.bias"), &[outputs])?);
        }
        let weight_t = Tensor::cat(&weights, 0)
            .and_then(|w| w.t()?.contiguous())
            .map_err(|e| EmbedError::Load(e.to_string()))?;
        Ok(Dense { weight_t, bias })
    }

    fn layer_norm(&self, name: &str, width: usize, eps: f32) -> Result<LayerNorm, EmbedError> {
        Ok(LayerNorm {
            gamma: self.vector(&format!("{name}.weight"), &[width])?,
            beta: self.vector(&format!("{name}.bias"), &[width])?,
            eps,
        })
    }
}

impl Bert {
    fn load(path: &Path, config: &Config) -> Result<Bert, EmbedError> {
        if config.hidden_act != HiddenAct::Gelu {
            return Err(EmbedError::Load(format!(
                "unsupported activation {:?}; only exact GELU is implemented",
                config.hidden_act
            )));
        }
        let (hidden, heads) = (config.hidden_size, config.num_attention_heads);
        if heads == 0 || hidden % heads != 0 {
            return Err(EmbedError::Load(format!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            )));
        }
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| EmbedError::Load(format!("reading {}: {e}", path.display())))?;
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let w = Weights { tensors, prefix };
        let eps = config.layer_norm_eps as f32;
        let inter = config.intermediate_size;

        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let qkv_names =
                    ["query", "key", "value"].map(|n| format!("{p}.attention.self.{n}"));
                Ok(BertLayer {
                    qkv: w.dense(&qkv_names, hidden, hidden)?,
                    attention_output: w.dense(
                        &[format!("{p}.attention.output.dense")],
                        hidden,
                        hidden,
                    )?,
                    attention_norm: w.layer_norm(
                        &format!("{p}.attention.output.LayerNorm"),
                        hidden,
                        eps,
                    )?,
                    intermediate: w.dense(&[format!("{p}.intermediate.dense")], hidden, inter)?,
                    output: w.dense(&[format!("{p}.output.dense")], inter, hidden)?,
                    output_norm: w.layer_norm(&format!("{p}.output.LayerNorm"), hidden, eps)?,
                })
            })
            .collect::<Result<Vec<_>, EmbedError>>()?;

        Ok(Bert {
            hidden,
            heads,
            word_embeddings: w.vector(
                "embeddings.word_embeddings.weight",
                &[config.vocab_size, hidden],
            )?,
            position_embeddings: w.vector(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, hidden],
            )?,
            token_type_embeddings: w.vector(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, hidden],
            )?,
            embeddings_norm: w.layer_norm("embeddings.LayerNorm", hidden, eps)?,
            layers,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// The last layer's output for every token, `(tokens.total(), hidden)` row-major.
    fn forward(&self, tokens: &PackedTokens) -> Result<Vec<f32>, EmbedError> {
        let mut hidden = self.embed_tokens(tokens)?;
        for layer in &self.layers {
            hidden = self.run_layer(layer, &hidden, tokens)?;
        }
        Ok(hidden.flatten_all()?.to_vec1()?)
    }

    /// Word + token-type + position embeddings, then layer norm.
    fn embed_tokens(&self, tokens: &PackedTokens) -> Result<Tensor, EmbedError> {
        let width = self.hidden;
        let mut words = vec![0.0f32; tokens.total() * width];
        let mut positions = vec![0.0f32; tokens.total() * width];
        for (start, len) in tokens.texts() {
            for position in 0..len {
                let t = start + position;
                let word = table_row(&self.word_embeddings, width, tokens.ids[t] as usize)?;
                let kind = table_row(
                    &self.token_type_embeddings,
                    width,
                    tokens.type_ids[t] as usize,
                )?;
                let row = &mut words[t * width..(t + 1) * width];
                for ((o, &w), &k) in row.iter_mut().zip(word).zip(kind) {
                    *o = w + k;
                }
                positions[t * width..(t + 1) * width].copy_from_slice(table_row(
                    &self.position_embeddings,
                    width,
                    position,
                )?);
            }
        }
        let no_bias = vec![0.0f32; width];
        let normed = self.add_and_norm(&words, &no_bias, &positions, &self.embeddings_norm);
        Ok(Tensor::from_vec(
            normed,
            (tokens.total(), width),
            &Device::Cpu,
        )?)
    }

    fn run_layer(
        &self,
        layer: &BertLayer,
        hidden: &Tensor,
        tokens: &PackedTokens,
    ) -> Result<Tensor, EmbedError> {
        let rows = tokens.total();
        let qkv = hidden.matmul(&layer.qkv.weight_t)?;
        let context = with_slice(&qkv, |qkv| self.attention(qkv, &layer.qkv.bias, tokens))??;

        let projected = context.matmul(&layer.attention_output.weight_t)?;
        let attended = with_slice(&projected, |projected| {
            with_slice(hidden, |residual| {
                let bias = &layer.attention_output.bias;
                self.add_and_norm(projected, bias, residual, &layer.attention_norm)
            })
        })??;
        let attended = Tensor::from_vec(attended, (rows, self.hidden), &Device::Cpu)?;

        let intermediate = attended.matmul(&layer.intermediate.weight_t)?;
        let activated = with_slice(&intermediate, |x| {
            self.bias_gelu(x, &layer.intermediate.bias)
        })?;
        let width = layer.intermediate.bias.len();
        let activated = Tensor::from_vec(activated, (rows, width), &Device::Cpu)?;

        let output = activated.matmul(&layer.output.weight_t)?;
        let out = with_slice(&output, |output| {
            with_slice(&attended, |residual| {
                self.add_and_norm(output, &layer.output.bias, residual, &layer.output_norm)
            })
        })??;
        Ok(Tensor::from_vec(out, (rows, self.hidden), &Device::Cpu)?)
    }

    /// Multi-head self-attention of each text with itself. `qkv` holds, per token, the query,
    /// key and value projections (without `bias`). Returns the context vectors `(tokens, hidden)`.
    fn attention(
        &self,
        qkv: &[f32],
        bias: &[f32],
        tokens: &PackedTokens,
    ) -> Result<Tensor, EmbedError> {
        let (hidden, heads) = (self.hidden, self.heads);
        let head_dim = hidden / heads;
        let total = tokens.total();
        // Computed head by head, so each (head, text) writes one contiguous block.
        let mut by_head = vec![0.0f32; heads * total * head_dim];
        let mut jobs = Vec::new();
        for (head, block) in by_head.chunks_mut(total * head_dim).enumerate() {
            let mut rest = block;
            for (start, len) in tokens.texts() {
                let (out, tail) = rest.split_at_mut(len * head_dim);
                rest = tail;
                jobs.push(AttentionJob {
                    head,
                    start,
                    len,
                    out,
                });
            }
        }
        // Longest first: the expensive jobs start early and the short ones fill the gaps.
        jobs.sort_by_key(|job| std::cmp::Reverse(job.len));
        for_each_parallel(jobs, self.threads, |job| {
            attend_one(qkv, bias, hidden, head_dim, job)
        });

        // (heads, tokens, head_dim) -> (tokens, heads * head_dim), the layout BERT expects.
        Ok(
            Tensor::from_vec(by_head, (heads, total, head_dim), &Device::Cpu)?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((total, hidden))?,
        )
    }

    /// `layer_norm(x + bias + residual)` row by row.
    fn add_and_norm(
        &self,
        x: &[f32],
        bias: &[f32],
        residual: &[f32],
        norm: &LayerNorm,
    ) -> Vec<f32> {
        let width = bias.len();
        let mut out = vec![0.0f32; x.len()];
        for_each_row_block(&mut out, width, self.threads, |first_row, block| {
            let range = first_row * width..first_row * width + block.len();
            add_and_norm_rows(&x[range.clone()], bias, &residual[range], norm, block);
        });
        out
    }

    /// `gelu(x + bias)` row by row.
    fn bias_gelu(&self, x: &[f32], bias: &[f32]) -> Vec<f32> {
        let width = bias.len();
        let mut out = vec![0.0f32; x.len()];
        for_each_row_block(&mut out, width, self.threads, |first_row, block| {
            let start = first_row * width;
            bias_gelu_rows(&x[start..start + block.len()], bias, block);
        });
        out
    }
}

/// Row `index` of an embedding table with rows of `width` values.
fn table_row(table: &[f32], width: usize, index: usize) -> Result<&[f32], EmbedError> {
    table
        .get(index * width..(index + 1) * width)
        .ok_or_else(|| EmbedError::Inference(format!("id {index} is outside the embedding table")))
}

/// Runs `f` on the contents of a contiguous f32 CPU tensor without copying them out.
fn with_slice<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R, EmbedError> {
    let (storage, layout) = tensor.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => Ok(f(&data[start..end])),
        _ => Err(EmbedError::Inference(
            "expected a contiguous f32 tensor on the CPU".into(),
        )),
    }
}

/// Defines a function whose body is compiled twice: once for the baseline CPU, and once with
/// AVX2 and FMA enabled, picked at run time when the CPU has them. The crate is built for plain
/// x86-64 (SSE2, no fused multiply-add), which would leave these loops 2-4x slower. The loops
/// are written so that the compiler vectorises them (no cross-iteration dependencies; the
/// helpers they call are `#[inline(always)]` so they are compiled with the same features).
macro_rules! simd_kernel {
    (
        $(#[$doc:meta])*
        fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block
    ) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn portable($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2_fma($($arg: $ty),*) {
                    portable($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features `avx2_fma` was compiled for.
                    return unsafe { avx2_fma($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Kernels: the loops candle would otherwise run on one core
// ---------------------------------------------------------------------------------------------

/// One attention head over one text.
struct AttentionJob<'a> {
    head: usize,
    /// First row of the text in the packed batch.
    start: usize,
    len: usize,
    /// `(len, head_dim)` output block.
    out: &'a mut [f32],
}

/// Register tile of the attention kernel: `TILE_ROWS` queries against `TILE_COLS` keys (or value
/// columns) at a time, 8 AVX registers of accumulators. Tiles let one load feed several
/// multiply-adds; multiply-adds into a row held in memory would stall on loads and stores.
const TILE_ROWS: usize = 4;
const TILE_COLS: usize = 16;

simd_kernel! {
    /// softmax(q k^T / sqrt(d)) v for one head of one text, reading the projections out of the
    /// packed `(tokens, 3 * hidden)` qkv matrix and adding their biases on the way.
    fn attend_one(
        qkv: &[f32],
        bias: &[f32],
        hidden: usize,
        head_dim: usize,
        job: AttentionJob<'_>,
    ) {
        let AttentionJob { head, start, len, out } = job;
        // Sizes rounded up to whole tiles; the padding is zeros and never reaches `out`.
        let rows = len.next_multiple_of(TILE_ROWS);
        let cols = len.next_multiple_of(TILE_COLS);
        let dims = head_dim.next_multiple_of(TILE_COLS);
        let scale = 1.0 / (head_dim as f32).sqrt();
        // Where this head's query, key and value columns start in a row of `qkv`.
        let q_at = head * head_dim;
        let (k_at, v_at) = (hidden + q_at, 2 * hidden + q_at);

        // Queries (pre-scaled) as (rows, head_dim); keys transposed to (head_dim, cols) so a tile
        // of scores reads contiguous keys; values as (cols, dims).
        let mut queries = vec![0.0f32; rows * head_dim];
        let mut keys_t = vec![0.0f32; head_dim * cols];
        let mut values = vec![0.0f32; cols * dims];
        for t in 0..len {
            let row = &qkv[(start + t) * 3 * hidden..(start + t + 1) * 3 * hidden];
            let part = |at: usize| row[at..at + head_dim].iter().zip(&bias[at..at + head_dim]);
            let query = &mut queries[t * head_dim..(t + 1) * head_dim];
            for (q, (&x, &b)) in query.iter_mut().zip(part(q_at)) {
                *q = (x + b) * scale;
            }
            let value = &mut values[t * dims..t * dims + head_dim];
            for (v, (&x, &b)) in value.iter_mut().zip(part(v_at)) {
                *v = x + b;
            }
            for (d, (&x, &b)) in part(k_at).enumerate() {
                keys_t[d * cols + t] = x + b;
            }
        }

        // Scores: (rows, cols) = queries · keys_t, tile by tile.
        let mut scores = vec![0.0f32; rows * cols];
        for i in (0..rows).step_by(TILE_ROWS) {
            for j in (0..cols).step_by(TILE_COLS) {
                let queries = &queries[i * head_dim..];
                let tile = product_tile(queries, head_dim, &keys_t[j..], cols, head_dim);
                for (r, tile_row) in tile.iter().enumerate() {
                    scores[(i + r) * cols + j..][..TILE_COLS].copy_from_slice(tile_row);
                }
            }
        }
        // Probabilities over the real keys; padding columns become 0 and so drop out below.
        for row in scores.chunks_exact_mut(cols) {
            let (real, padding) = row.split_at_mut(len);
            softmax_in_place(real);
            padding.fill(0.0);
        }

        // Context: (rows, dims) = probabilities · values, tile by tile; real rows go to `out`.
        for i in (0..rows).step_by(TILE_ROWS) {
            for c in (0..dims).step_by(TILE_COLS) {
                let tile = product_tile(&scores[i * cols..], cols, &values[c..], dims, len);
                let width = TILE_COLS.min(head_dim - c);
                for (r, tile_row) in tile.iter().enumerate().take(len.saturating_sub(i)) {
                    out[(i + r) * head_dim + c..][..width].copy_from_slice(&tile_row[..width]);
                }
            }
        }
    }
}

simd_kernel! {
    /// `out = layer_norm(x + bias + residual)` for whole rows of `bias.len()` values.
    fn add_and_norm_rows(
        x: &[f32],
        bias: &[f32],
        residual: &[f32],
        norm: &LayerNorm,
        out: &mut [f32],
    ) {
        let width = bias.len();
        let rows = x.chunks_exact(width).zip(residual.chunks_exact(width));
        for ((x, residual), out) in rows.zip(out.chunks_exact_mut(width)) {
            for (((o, &x), &b), &r) in out.iter_mut().zip(x).zip(bias).zip(residual) {
                *o = x + b + r;
            }
            let mean = sum(out) / width as f32;
            out.iter_mut().for_each(|o| *o -= mean);
            let variance = sum_of_squares(out) / width as f32;
            let inv_std = 1.0 / (variance + norm.eps).sqrt();
            for ((o, &g), &b) in out.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
                *o = (*o * inv_std).mul_add(g, b);
            }
        }
    }
}

simd_kernel! {
    /// `out = gelu(x + bias)` with the exact (erf) GELU that BERT uses.
    fn bias_gelu_rows(x: &[f32], bias: &[f32], out: &mut [f32]) {
        for (x, out) in x.chunks_exact(bias.len()).zip(out.chunks_exact_mut(bias.len())) {
            for ((o, &x), &b) in out.iter_mut().zip(x).zip(bias) {
                let v = x + b;
                *o = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }
}

type Tile = [[f32; TILE_COLS]; TILE_ROWS];

/// One tile of a matrix product: `tile[r][c] = Σ_d a[r * a_stride + d] * b[d * b_stride + c]`
/// for `d < depth`. Written with explicit AVX2 instructions where available, because the
/// compiler does not keep a tile of accumulators in vector registers on its own.
#[inline(always)]
fn product_tile(a: &[f32], a_stride: usize, b: &[f32], b_stride: usize, depth: usize) -> Tile {
    if depth == 0 {
        return [[0.0; TILE_COLS]; TILE_ROWS];
    }
    // These bounds make every read below valid, including the unchecked ones in `avx2`.
    assert!(a.len() >= (TILE_ROWS - 1) * a_stride + depth);
    assert!(b.len() >= (depth - 1) * b_stride + TILE_COLS);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA; the slices are long enough (asserted above).
        return unsafe { avx2::product_tile(a, a_stride, b, b_stride, depth) };
    }
    let mut tile = [[0.0f32; TILE_COLS]; TILE_ROWS];
    for d in 0..depth {
        let b_row = &b[d * b_stride..][..TILE_COLS];
        for (r, tile_row) in tile.iter_mut().enumerate() {
            let x = a[r * a_stride + d];
            for (acc, &y) in tile_row.iter_mut().zip(b_row) {
                *acc = x.mul_add(y, *acc);
            }
        }
    }
    tile
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, TILE_COLS, TILE_ROWS};
    use std::arch::x86_64::*;

    /// [`super::product_tile`] in AVX2: the 4x16 tile lives in eight 8-lane registers; each step
    /// of `d` loads one row of `b` (two registers) and broadcasts four values of `a`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA, and the slices must be as long as
    /// [`super::product_tile`] asserts.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn product_tile(
        a: &[f32],
        a_stride: usize,
        b: &[f32],
        b_stride: usize,
        depth: usize,
    ) -> Tile {
        const _: () = assert!(TILE_ROWS == 4 && TILE_COLS == 16);
        let (a, b) = (a.as_ptr(), b.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); 2]; TILE_ROWS];
        for d in 0..depth {
            // SAFETY (all reads): within the bounds the caller asserted.
            let b_row = unsafe { b.add(d * b_stride) };
            let (b_lo, b_hi) = unsafe { (_mm256_loadu_ps(b_row), _mm256_loadu_ps(b_row.add(8))) };
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_ps(unsafe { *a.add(r * a_stride + d) });
                acc_row[0] = _mm256_fmadd_ps(x, b_lo, acc_row[0]);
                acc_row[1] = _mm256_fmadd_ps(x, b_hi, acc_row[1]);
            }
        }
        let mut tile = [[0.0f32; TILE_COLS]; TILE_ROWS];
        for (row, acc_row) in tile.iter_mut().zip(&acc) {
            // SAFETY: each row has 16 floats.
            unsafe {
                _mm256_storeu_ps(row.as_mut_ptr(), acc_row[0]);
                _mm256_storeu_ps(row.as_mut_ptr().add(8), acc_row[1]);
            }
        }
        tile
    }
}

/// Softmax over `x`, in place.
#[inline(always)]
fn softmax_in_place(x: &mut [f32]) {
    let max = max(x);
    x.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / sum(x);
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Sum with eight running partial sums, which the compiler can keep in one vector register
/// (a single running sum would force it to add one number at a time).
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Largest value, vectorised like [`sum`].
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    let rest = chunks.remainder().iter().copied();
    lanes
        .into_iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Sum of squares, vectorised like [`sum`].
#[inline(always)]
fn sum_of_squares(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = v.mul_add(v, *lane);
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|v| v * v).sum::<f32>()
}

/// `e^x` to within 2 ulp for x ≤ 88, without branches so the compiler can vectorise loops that
/// call it (the standard library's `exp` is a scalar libm call). Tiny results flush towards
/// 1e-38 instead of 0, which is immaterial next to the 1 every softmax row contains.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // e^x = 2^n * e^r with n = round(x / ln 2) and |r| <= ln(2) / 2.
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 split in two so that n * LN2_HI is exact (Cody and Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    // Taylor series of e^r to r^7/7!: relative error below 2e-8 on |r| <= 0.35.
    let mut p: f32 = 1.0 / 5040.0;
    p = p.mul_add(r, 1.0 / 720.0);
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // 2^n, built from its exponent bits: adding 2^23 puts the integer n + 127 (1..=254 after
    // clamping) in the low mantissa bits, and the shift moves it into the exponent. (`n as i32`
    // would do, but its saturating conversion does not vectorise.)
    let biased = (n + (127.0 + 8_388_608.0)).to_bits();
    p * f32::from_bits(biased << 23)
}

/// The error function to within 1.5e-7 (Abramowitz and Stegun 7.1.26), branch-free like [`exp`].
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let mut p = 1.061_405_4f32;
    p = p.mul_add(t, -1.453_152);
    p = p.mul_add(t, 1.421_413_8);
    p = p.mul_add(t, -0.284_496_72);
    p = p.mul_add(t, 0.254_829_6);
    let y = 1.0 - p * t * exp(-a * a);
    y.copysign(x)
}

// ---------------------------------------------------------------------------------------------
// Running the kernels: every core, and the CPU's vector instructions
// ---------------------------------------------------------------------------------------------

/// Runs `work` once for every item, spread over `threads` threads (the calling one included).
/// Threads take items from a shared queue one at a time, so unequal items still balance.
fn for_each_parallel<T: Send>(items: Vec<T>, threads: usize, work: impl Fn(T) + Sync) {
    let threads = threads.min(items.len());
    if threads <= 1 {
        items.into_iter().for_each(work);
        return;
    }
    let queue = Mutex::new(items.into_iter());
    let next = || queue.lock().unwrap_or_else(PoisonError::into_inner).next();
    let drain = || {
        while let Some(item) = next() {
            work(item);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(drain);
        }
        drain();
    });
}

/// Splits `out` into blocks of whole rows (`width` values each) and runs
/// `work(first_row, block)` on every block, in parallel.
fn for_each_row_block(
    out: &mut [f32],
    width: usize,
    threads: usize,
    work: impl Fn(usize, &mut [f32]) + Sync,
) {
    let rows = out.len() / width.max(1);
    // A few blocks per thread evens out scheduling noise; at least 8 rows keeps the overhead low.
    let rows_per_block = rows.div_ceil(threads * 4).max(8);
    let blocks: Vec<_> = out
        .chunks_mut(rows_per_block * width)
        .enumerate()
        .map(|(i, block)| (i * rows_per_block, block))
        .collect();
    for_each_parallel(blocks, threads, |(first_row, block)| work(first_row, block));
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

        let vectors = embedder.embed(&texts).unwrap();
        let mut min = f32::INFINITY;
        for ((text, expected), actual) in reference.iter().zip(&vectors) {
            assert_eq!(actual.len(), 384);
            let similarity = cosine(expected, actual);
            let shown: String = text.chars().take(40).collect();
            println!("cosine {similarity:.7}  {shown:?}");
            assert!(similarity >= 0.9999, "cosine {similarity} for {shown:?}");
            min = min.min(similarity);
        }
        println!("minimum cosine to sentence-transformers: {min:.7}");
    }

    #[test]
    fn batched_equals_one_at_a_time() {
        let embedder = embedder();
        let reference = reference();
        let texts: Vec<&str> = reference.iter().map(|(text, _)| text.as_str()).collect();
        let batched = embedder.embed(&texts).unwrap();
        for (text, from_batch) in texts.iter().zip(&batched) {
            let alone = &embedder.embed(&[text]).unwrap()[0];
            let gap = alone
                .iter()
                .zip(from_batch)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(gap < 1e-5, "batch and single differ by {gap} for {text:?}");
        }
    }

    #[test]
    fn batches_larger_than_max_batch_are_split() {
        let embedder = Embedder::load(
            &model_dir(),
            EmbedderOptions {
                max_batch: 3,
                ..EmbedderOptions::default()
            },
        )
        .unwrap();
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

    #[test]
    fn fast_math_is_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            let exp_error = (exp(x) - x.exp()).abs() / x.exp();
            assert!(exp_error < 3e-7, "exp({x}) off by {exp_error}");
        }
        // Reference erf values (from mpmath).
        let known = [
            (0.5f32, 0.520_499_9f32),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
        ];
        for (x, expected) in known {
            assert!((erf(x) - expected).abs() < 3e-7, "erf({x})");
        }
        assert!(erf(0.0).abs() < 2e-7);
    }
}
