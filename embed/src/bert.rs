//! The BERT encoder: its weights, read out of `model.safetensors`, and one forward pass over a
//! batch of packed texts. Matrix multiplications go through candle; the rest through
//! [`kernels`](crate::kernels), on every core.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use candle_transformers::models::bert::{Config, HiddenAct};

use crate::int8::Int8Dense;
use crate::kernels::{add_and_norm_rows, attend_one, bias_gelu_rows, AttentionJob};
use crate::pool::{for_each_parallel, for_each_row_block};
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
}

enum DenseWeights {
    /// `W^T`, `(in, out)`, contiguous; multiplied by candle.
    F32(Tensor),
    /// Quantised, multiplied by [`Int8Dense`].
    Int8(Int8Dense),
}

/// Linear layers per encoder layer, in the order they run: qkv, attention output,
/// intermediate, output.
const DENSE_PER_LAYER: usize = 4;

/// Sees each linear layer's input, `(rows, in)`: `observe(site, x)`.
type Observer<'a> = dyn FnMut(usize, &Tensor) -> Result<(), EmbedError> + 'a;

impl Dense {
    /// Turns fp32 weights into int8 ones; `channel_max` is the largest input per channel seen
    /// in calibration. Layers the kernel cannot take (none in all-MiniLM-L6-v2) stay fp32.
    fn quantise(&mut self, channel_max: &[f32]) -> Result<(), EmbedError> {
        let DenseWeights::F32(weight_t) = &self.weights else {
            return Ok(());
        };
        let (inputs, outputs) = weight_t.dims2()?;
        if !Int8Dense::fits(outputs) || channel_max.len() != inputs {
            return Ok(());
        }
        let layer = with_slice(weight_t, |w| {
            Int8Dense::new(w, inputs, outputs, channel_max)
        })?;
        self.weights = DenseWeights::Int8(layer);
        Ok(())
    }

    /// `x W^T` for `x` of shape `(rows, in)`.
    fn product(&self, x: &Tensor) -> Result<Tensor, EmbedError> {
        match &self.weights {
            DenseWeights::F32(weight_t) => Ok(x.matmul(weight_t)?),
            DenseWeights::Int8(layer) => {
                let rows = x.dim(0)?;
                let product = with_slice(x, |x| layer.forward(x))?;
                let outputs = product.len() / rows.max(1);
                Ok(Tensor::from_vec(product, (rows, outputs), &Device::Cpu)?)
            }
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
            .and_then(|w| w.t()?.contiguous())
            .map_err(EmbedError::load(format!(
                "transposing {}",
                names.join(", ")
            )))?;
        Ok(Dense {
            weights: DenseWeights::F32(weight_t),
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

    /// The last layer's output for every token, `(tokens.total(), hidden)` row-major.
    pub(crate) fn forward(&self, tokens: &PackedTokens) -> Result<Vec<f32>, EmbedError> {
        self.forward_observed(tokens, &mut |_, _| Ok(()))
    }

    /// [`Bert::forward`], showing `observe` the input of every linear layer before it is
    /// multiplied (by layer and [`DENSE_PER_LAYER`] position).
    fn forward_observed(
        &self,
        tokens: &PackedTokens,
        observe: &mut Observer<'_>,
    ) -> Result<Vec<f32>, EmbedError> {
        let mut hidden = self.embed_tokens(tokens)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let mut observe_layer =
                |dense: usize, x: &Tensor| observe(index * DENSE_PER_LAYER + dense, x);
            hidden = self.run_layer(layer, &hidden, tokens, &mut observe_layer)?;
        }
        Ok(hidden.flatten_all()?.to_vec1()?)
    }

    /// Replaces every linear layer's weights by int8 ones ([`Int8Dense`]), smoothed with the
    /// largest value each input channel reaches on `calibration`, run through the fp32 model
    /// first. Without smoothing a few channels (99, 63, 223 in all-MiniLM-L6-v2) reach 10-30
    /// times the typical value, and each token's 8-bit scale, set by them, leaves the other
    /// channels a handful of steps: cosine to fp32 fell to 0.986 on short texts.
    pub(crate) fn quantise(&mut self, calibration: &PackedTokens) -> Result<(), EmbedError> {
        let mut channel_max: Vec<Vec<f32>> = vec![Vec::new(); self.layers.len() * DENSE_PER_LAYER];
        self.forward_observed(calibration, &mut |site, x| {
            let width = x.dim(1)?;
            let maxima = &mut channel_max[site];
            maxima.resize(width, 0.0);
            with_slice(x, |x| {
                for row in x.chunks_exact(width) {
                    for (m, &v) in maxima.iter_mut().zip(row) {
                        *m = m.max(v.abs());
                    }
                }
            })
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
        // glibc keeps the freed fp32 matrices (a few MB each, 42 MB in all) in its heap rather
        // than giving them back: without this the int8 process stayed at the fp32 one's size.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free memory to the system.
        unsafe {
            libc::malloc_trim(0);
        }
        Ok(())
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
        observe: &mut Observer<'_>,
    ) -> Result<Tensor, EmbedError> {
        let rows = tokens.total();
        observe(0, hidden)?;
        let qkv = layer.qkv.product(hidden)?;
        let context = with_slice(&qkv, |qkv| self.attention(qkv, &layer.qkv.bias, tokens))??;

        observe(1, &context)?;
        let projected = layer.attention_output.product(&context)?;
        let attended = with_slice(&projected, |projected| {
            with_slice(hidden, |residual| {
                let bias = &layer.attention_output.bias;
                self.add_and_norm(projected, bias, residual, &layer.attention_norm)
            })
        })??;
        let attended = Tensor::from_vec(attended, (rows, self.hidden), &Device::Cpu)?;

        observe(2, &attended)?;
        let intermediate = layer.intermediate.product(&attended)?;
        let activated = with_slice(&intermediate, |x| {
            self.bias_gelu(x, &layer.intermediate.bias)
        })?;
        let width = layer.intermediate.bias.len();
        let activated = Tensor::from_vec(activated, (rows, width), &Device::Cpu)?;

        observe(3, &activated)?;
        let output = layer.output.product(&activated)?;
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
        for_each_parallel(jobs, |job| attend_one(qkv, bias, hidden, head_dim, job));

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
        for_each_row_block(&mut out, width, |first_row, block| {
            let range = first_row * width..first_row * width + block.len();
            add_and_norm_rows(&x[range.clone()], bias, &residual[range], norm, block);
        });
        out
    }

    /// `gelu(x + bias)` row by row.
    fn bias_gelu(&self, x: &[f32], bias: &[f32]) -> Vec<f32> {
        let width = bias.len();
        let mut out = vec![0.0f32; x.len()];
        for_each_row_block(&mut out, width, |first_row, block| {
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
        .ok_or_else(|| {
            EmbedError::Inference(format!("id {index} is outside the embedding table").into())
        })
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
