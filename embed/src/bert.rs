//! The BERT encoder: its weights, read out of `model.safetensors`, and one forward pass over a
//! batch of packed texts. Matrix multiplications go through gemm (candle's CPU backend, called
//! directly so that each writes into a buffer of [`Activations`]); the rest through
//! [`kernels`](crate::kernels), on every core.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{Config, HiddenAct};

use crate::int8::Int8Dense;
use crate::kernels::{add_and_norm_rows, attend_one, bias_gelu_rows, AttentionJob};
use crate::pool::{self, for_each_parallel, for_each_row_block};
use crate::{EmbedError, PackedTokens};

/// BERT encoder weights. Matrices stay candle tensors (they feed its matrix multiplication);
/// vectors are plain `Vec<f32>` for the loops below.
pub(crate) struct Bert {
    pub(crate) hidden: usize,
    heads: usize,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    token_type_embeddings: Vec<f32>,
    embeddings_norm: LayerNorm,
    layers: Vec<BertLayer>,
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

/// A linear layer `x W^T + b`. The bias is added by whichever loop reads the product next,
/// saving a pass over it.
struct Dense {
    weights: DenseWeights,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

enum DenseWeights {
    /// `W^T`, `(in, out)`, row-major; multiplied by gemm.
    F32(Vec<f32>),
    /// Quantised, multiplied by [`Int8Dense`].
    Int8(Int8Dense),
}

/// Linear layers per encoder layer, in the order they run: qkv, attention output,
/// intermediate, output.
const DENSE_PER_LAYER: usize = 4;

/// Sees each linear layer's input, `(rows, in)` row-major: `observe(site, x, in)`.
type Observer<'a> = dyn FnMut(usize, &[f32], usize) -> Result<(), EmbedError> + 'a;

/// The activations of a forward pass, one buffer per step, reused by every layer and every
/// pass of a call, and kept by the embedder for later calls. Allocating them per step cost ≈5%
/// on 2 cores: zeroing and faulting in megabytes on the calling thread while the pool's
/// threads waited.
#[derive(Default)]
pub(crate) struct Activations {
    /// `(tokens, hidden)`: the input of a layer, then its output.
    hidden: Vec<f32>,
    /// `(tokens, 3 * hidden)`: queries, keys and values, before their biases.
    qkv: Vec<f32>,
    /// `(heads, tokens, head_dim)`: attention's output as the kernel writes it.
    by_head: Vec<f32>,
    /// `(tokens, hidden)`: attention's output as the next product reads it.
    context: Vec<f32>,
    /// `(tokens, hidden)`: the attention block's output.
    attended: Vec<f32>,
    /// `(tokens, intermediate)`.
    intermediate: Vec<f32>,
}

/// Sets `buffer` to `len` values for a step to overwrite. Only growth is zeroed (the step
/// writes every value), so a reused buffer costs nothing.
fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buffer.resize(len, 0.0);
    buffer
}

impl Dense {
    /// Turns fp32 weights into int8 ones; `channel_max` is the largest input per channel seen
    /// in calibration. Layers the kernel cannot take (none in all-MiniLM-L6-v2) stay fp32.
    fn quantise(&mut self, channel_max: &[f32]) -> Result<(), EmbedError> {
        let DenseWeights::F32(weight_t) = &self.weights else {
            return Ok(());
        };
        let (inputs, outputs) = (self.inputs, self.outputs);
        if !Int8Dense::fits(outputs) || channel_max.len() != inputs {
            return Ok(());
        }
        let layer = Int8Dense::new(weight_t, inputs, outputs, channel_max);
        self.weights = DenseWeights::Int8(layer);
        Ok(())
    }

    /// `out = x W^T` for `x` of `rows × in` values, row-major; `out` becomes `rows × out`.
    fn product(&self, x: &[f32], out: &mut Vec<f32>) {
        let rows = x.len() / self.inputs;
        match &self.weights {
            DenseWeights::F32(weight_t) => {
                let out = sized(out, rows * self.outputs);
                let threads = pool::threads();
                let parallelism = if threads > 1 {
                    gemm::Parallelism::Rayon(threads)
                } else {
                    gemm::Parallelism::None
                };
                let (m, n, k) = (rows, self.outputs, self.inputs);
                assert!(x.len() == m * k && weight_t.len() == k * n && out.len() == m * n);
                // SAFETY: the three matrices are row-major (column stride 1, row stride their
                // width) and the assert above checks each slice holds all of its matrix;
                // `read_dst: false` makes gemm write `out` without reading it.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        out.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        x.as_ptr(),
                        1,
                        k as isize,
                        weight_t.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism,
                    );
                }
            }
            DenseWeights::Int8(layer) => layer.forward_into(x, sized(out, rows * self.outputs)),
        }
    }
}

pub(crate) struct LayerNorm {
    pub(crate) gamma: Vec<f32>,
    pub(crate) beta: Vec<f32>,
    pub(crate) eps: f32,
}

/// Reads named tensors out of a safetensors file one at a time, checking their shapes. Each is
/// read from the file straight into the buffer it ends up in: reading the whole file first (as
/// `candle_core::safetensors::load` does) held the file and a copy of every tensor at once,
/// and the process's peak memory was 183 MB against 108 MB once loaded.
struct Weights {
    file: std::fs::File,
    tensors: HashMap<String, StoredTensor>,
    /// Where the data section starts, after the header.
    data_start: u64,
    /// "" or "bert." (checkpoints saved from `BertForMaskedLM` and friends use the latter).
    prefix: &'static str,
}

/// One entry of a safetensors header.
struct StoredTensor {
    /// The dtype, or the name of one this reader does not convert.
    dtype: Result<DType, String>,
    shape: Vec<usize>,
    /// Byte range in the data section.
    start: u64,
    end: u64,
}

/// A safetensors header is JSON of a few hundred bytes per tensor; this bounds what a corrupt
/// length field could make us allocate.
const MAX_HEADER_BYTES: u64 = 100 << 20;

impl Weights {
    /// Reads the header of the safetensors file at `path`: 8 bytes of length, then JSON naming
    /// each tensor's dtype, shape and byte range.
    fn open(path: &Path) -> Result<Weights, EmbedError> {
        let reading = || format!("reading {}", path.display());
        let mut file = std::fs::File::open(path).map_err(EmbedError::load(reading()))?;
        let mut length = [0u8; 8];
        file.read_exact(&mut length)
            .map_err(EmbedError::load(reading()))?;
        let length = u64::from_le_bytes(length);
        if length > MAX_HEADER_BYTES {
            return Err(EmbedError::Unsupported(format!(
                "{}: a header of {length} bytes; is it a safetensors file?",
                path.display()
            )));
        }
        let mut header = vec![0u8; length as usize];
        file.read_exact(&mut header)
            .map_err(EmbedError::load(reading()))?;
        let header: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(EmbedError::load(reading()))?;
        let mut tensors = HashMap::new();
        for (name, entry) in header {
            if name == "__metadata__" {
                continue;
            }
            let invalid =
                || EmbedError::Unsupported(format!("{}: bad entry {name}", path.display()));
            // Tensors of other types (BERT checkpoints carry an I64 `position_ids`) are listed
            // and refused only if read.
            let dtype = match entry["dtype"].as_str().ok_or_else(invalid)? {
                "F32" => Ok(DType::F32),
                "F16" => Ok(DType::F16),
                "BF16" => Ok(DType::BF16),
                other => Err(other.to_string()),
            };
            let shape = entry["shape"]
                .as_array()
                .and_then(|dims| {
                    dims.iter()
                        .map(|d| d.as_u64().map(|d| d as usize))
                        .collect()
                })
                .ok_or_else(invalid)?;
            let offsets = entry["data_offsets"].as_array().ok_or_else(invalid)?;
            let (Some(start), Some(end)) = (
                offsets.first().and_then(|v| v.as_u64()),
                offsets.get(1).and_then(|v| v.as_u64()),
            ) else {
                return Err(invalid());
            };
            tensors.insert(
                name,
                StoredTensor {
                    dtype,
                    shape,
                    start,
                    end,
                },
            );
        }
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        Ok(Weights {
            file,
            tensors,
            data_start: 8 + length,
            prefix,
        })
    }

    /// The values of tensor `name` as f32, row-major, checked to have `shape`.
    fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EmbedError> {
        let full = format!("{}{name}", self.prefix);
        let stored = self
            .tensors
            .get(&full)
            .ok_or_else(|| EmbedError::Unsupported(format!("model.safetensors lacks {full}")))?;
        if stored.shape != shape {
            return Err(EmbedError::Unsupported(format!(
                "{full} has shape {:?}, expected {shape:?}",
                stored.shape
            )));
        }
        let dtype = stored.dtype.clone().map_err(|other| {
            EmbedError::Unsupported(format!(
                "{full} is {other}; only F32, F16 and BF16 weights are read"
            ))
        })?;
        let count: usize = shape.iter().product();
        let bytes = (count * dtype.size_in_bytes()) as u64;
        if stored.end.checked_sub(stored.start) != Some(bytes) {
            return Err(EmbedError::Unsupported(format!(
                "{full}: {} bytes stored for {count} values",
                stored.end.saturating_sub(stored.start)
            )));
        }
        let reading = || format!("reading {full}");
        let mut file = &self.file;
        file.seek(SeekFrom::Start(self.data_start + stored.start))
            .map_err(EmbedError::load(reading()))?;
        if dtype == DType::F32 {
            let mut values = vec![0.0f32; count];
            // SAFETY: every byte pattern is a valid f32, and the slice covers exactly `values`.
            let raw = unsafe {
                std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), count * 4)
            };
            file.read_exact(raw).map_err(EmbedError::load(reading()))?;
            // Stored little-endian; a no-op on the machines this runs on.
            values
                .iter_mut()
                .for_each(|v| *v = f32::from_le_bytes(v.to_ne_bytes()));
            return Ok(values);
        }
        let mut raw = vec![0u8; bytes as usize];
        file.read_exact(&mut raw)
            .map_err(EmbedError::load(reading()))?;
        Tensor::from_raw_buffer(&raw, dtype, shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1())
            .map_err(EmbedError::load(format!("converting {full} to f32")))
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, EmbedError> {
        Ok(Tensor::from_vec(
            self.values(name, shape)?,
            shape,
            &Device::Cpu,
        )?)
    }

    /// Loads `{name}.weight` (`(out, in)`) of each given layer, stacked along `out`, and their
    /// biases.
    fn dense(&self, names: &[String], inputs: usize, outputs: usize) -> Result<Dense, EmbedError> {
        let mut weights = Vec::new();
        let mut bias = Vec::new();
        for name in names {
            weights.push(self.tensor(&format!("{name}.weight"), &[outputs, inputs])?);
            bias.extend(self.values(&format!("{name}.bias"), &[outputs])?);
        }
        let weight_t = Tensor::cat(&weights, 0)
            .and_then(|w| w.t()?.contiguous()?.flatten_all()?.to_vec1())
            .map_err(EmbedError::load(format!(
                "transposing {}",
                names.join(", ")
            )))?;
        Ok(Dense {
            weights: DenseWeights::F32(weight_t),
            inputs,
            outputs: bias.len(),
            bias,
        })
    }

    fn layer_norm(&self, name: &str, width: usize, eps: f32) -> Result<LayerNorm, EmbedError> {
        Ok(LayerNorm {
            gamma: self.values(&format!("{name}.weight"), &[width])?,
            beta: self.values(&format!("{name}.bias"), &[width])?,
            eps,
        })
    }
}

impl Bert {
    pub(crate) fn load(path: &Path, config: &Config) -> Result<Bert, EmbedError> {
        if config.hidden_act != HiddenAct::Gelu {
            return Err(EmbedError::Unsupported(format!(
                "activation {:?}; only exact GELU is implemented",
                config.hidden_act
            )));
        }
        let (hidden, heads) = (config.hidden_size, config.num_attention_heads);
        if heads == 0 || hidden % heads != 0 {
            return Err(EmbedError::Unsupported(format!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            )));
        }
        let w = Weights::open(path)?;
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
            word_embeddings: w.values(
                "embeddings.word_embeddings.weight",
                &[config.vocab_size, hidden],
            )?,
            position_embeddings: w.values(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, hidden],
            )?,
            token_type_embeddings: w.values(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, hidden],
            )?,
            embeddings_norm: w.layer_norm("embeddings.LayerNorm", hidden, eps)?,
            layers,
        })
    }

    /// The last layer's output for every token, `(tokens.total(), hidden)` row-major, in
    /// `activations` (whose buffers a caller keeps from pass to pass).
    pub(crate) fn forward<'a>(
        &self,
        tokens: &PackedTokens,
        activations: &'a mut Activations,
    ) -> Result<&'a [f32], EmbedError> {
        self.forward_observed(tokens, activations, &mut |_, _, _| Ok(()))?;
        Ok(&activations.hidden)
    }

    /// [`Bert::forward`], showing `observe` the input of every linear layer before it is
    /// multiplied (by layer and [`DENSE_PER_LAYER`] position).
    fn forward_observed(
        &self,
        tokens: &PackedTokens,
        activations: &mut Activations,
        observe: &mut Observer<'_>,
    ) -> Result<(), EmbedError> {
        self.embed_tokens(tokens, activations)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let mut observe_layer = |dense: usize, x: &[f32], width: usize| {
                observe(index * DENSE_PER_LAYER + dense, x, width)
            };
            self.run_layer(layer, tokens, activations, &mut observe_layer)?;
        }
        Ok(())
    }

    /// Measures each linear layer's input channels on `calibration` and quantises the layers
    /// to int8 with them.
    pub(crate) fn quantise(&mut self, calibration: &PackedTokens) -> Result<(), EmbedError> {
        let mut channel_max: Vec<Vec<f32>> = vec![Vec::new(); self.layers.len() * DENSE_PER_LAYER];
        let mut activations = Activations::default();
        self.forward_observed(calibration, &mut activations, &mut |site, x, width| {
            let maxima = &mut channel_max[site];
            maxima.resize(width, 0.0);
            for row in x.chunks_exact(width) {
                for (m, &v) in maxima.iter_mut().zip(row) {
                    *m = m.max(v.abs());
                }
            }
            Ok(())
        })?;
        for (index, layer) in self.layers.iter_mut().enumerate() {
            let denses = [
                &mut layer.qkv,
                &mut layer.attention_output,
                &mut layer.intermediate,
                &mut layer.output,
            ];
            for (position, dense) in denses.into_iter().enumerate() {
                dense.quantise(&channel_max[index * DENSE_PER_LAYER + position])?;
            }
        }
        drop(activations);
        // glibc keeps the freed fp32 matrices (a few MB each, 42 MB in all) in its heap rather
        // than giving them back: without this the int8 process stayed at the fp32 one's size.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free memory to the system.
        unsafe {
            libc::malloc_trim(0);
        }
        Ok(())
    }

    /// Word, position and token-type embeddings, summed and normalised, into
    /// `activations.hidden`.
    fn embed_tokens(
        &self,
        tokens: &PackedTokens,
        activations: &mut Activations,
    ) -> Result<(), EmbedError> {
        let width = self.hidden;
        let words = sized(&mut activations.hidden, tokens.total() * width);
        // The positions' rows, in a buffer the first layer overwrites anyway.
        let positions = sized(&mut activations.context, tokens.total() * width);
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
        add_and_norm(words, &no_bias, positions, &self.embeddings_norm);
        Ok(())
    }

    /// One encoder layer: `activations.hidden` in, `activations.hidden` out.
    fn run_layer(
        &self,
        layer: &BertLayer,
        tokens: &PackedTokens,
        activations: &mut Activations,
        observe: &mut Observer<'_>,
    ) -> Result<(), EmbedError> {
        let a = activations;
        let hidden = self.hidden;
        observe(0, &a.hidden, hidden)?;
        layer.qkv.product(&a.hidden, &mut a.qkv);
        self.attention(
            &a.qkv,
            &layer.qkv.bias,
            tokens,
            &mut a.by_head,
            &mut a.context,
        );

        observe(1, &a.context, hidden)?;
        layer.attention_output.product(&a.context, &mut a.attended);
        let bias = &layer.attention_output.bias;
        add_and_norm(&mut a.attended, bias, &a.hidden, &layer.attention_norm);

        observe(2, &a.attended, hidden)?;
        layer.intermediate.product(&a.attended, &mut a.intermediate);
        bias_gelu(&mut a.intermediate, &layer.intermediate.bias);

        observe(3, &a.intermediate, layer.intermediate.bias.len())?;
        // The layer's output replaces its input, which nothing reads any more.
        layer.output.product(&a.intermediate, &mut a.hidden);
        add_and_norm(
            &mut a.hidden,
            &layer.output.bias,
            &a.attended,
            &layer.output_norm,
        );
        Ok(())
    }

    /// Multi-head self-attention within each text: `qkv` in (biases not yet added),
    /// `context` `(tokens, hidden)` out, by way of `by_head`.
    fn attention(
        &self,
        qkv: &[f32],
        bias: &[f32],
        tokens: &PackedTokens,
        by_head: &mut Vec<f32>,
        context: &mut Vec<f32>,
    ) {
        let (hidden, heads) = (self.hidden, self.heads);
        let head_dim = hidden / heads;
        let total = tokens.total();
        let by_head = sized(by_head, heads * total * head_dim);
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
        for_each_parallel(jobs, |job| attend_one(qkv, bias, hidden, head_dim, job));

        // (heads, tokens, head_dim) -> (tokens, heads * head_dim), the layout BERT expects.
        let by_head = &*by_head;
        for_each_row_block(
            sized(context, total * hidden),
            hidden,
            |first_row, block| {
                for (r, row) in block.chunks_exact_mut(hidden).enumerate() {
                    let t = first_row + r;
                    for (head, out) in row.chunks_exact_mut(head_dim).enumerate() {
                        let from = (head * total + t) * head_dim;
                        out.copy_from_slice(&by_head[from..from + head_dim]);
                    }
                }
            },
        );
    }
}

/// `x = layer_norm(x + bias + residual)` row by row, in place.
fn add_and_norm(x: &mut [f32], bias: &[f32], residual: &[f32], norm: &LayerNorm) {
    let width = bias.len();
    for_each_row_block(x, width, |first_row, block| {
        let range = first_row * width..first_row * width + block.len();
        add_and_norm_rows(block, bias, &residual[range], norm);
    });
}

/// `x = gelu(x + bias)` row by row, in place.
fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    for_each_row_block(x, bias.len(), |_, block| bias_gelu_rows(block, bias));
}

/// Row `index` of an embedding table with rows of `width` values.
fn table_row(table: &[f32], width: usize, index: usize) -> Result<&[f32], EmbedError> {
    table
        .get(index * width..(index + 1) * width)
        .ok_or_else(|| {
            EmbedError::Inference(format!("id {index} is outside the embedding table").into())
        })
}
