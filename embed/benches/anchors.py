"""The embedding benchmark's anchors: what Sluice's embedder is measured against.

Run with the anchors' Python (deploy/dev/install --anchors creates it), never by the tests:

    anchors.py REQUEST.json            measure, print one JSON object on stdout
    anchors.py --export MODEL_DIR OUT  export all-MiniLM-L6-v2 to ONNX (the install step does it)

Two anchors, both fp32 on the CPU with as many threads as Sluice uses:
- sentence-transformers: `encode(normalize_embeddings=True)` on PyTorch, the reference whose
  vectors Sluice reproduces.
- ONNX Runtime: the same model exported with torch.onnx (opset 17), tokenised with the model's
  tokenizer.json, mean pooling and L2 normalisation in numpy.

The request (written by benches/embedding.rs):

    {"model_dir": ..., "onnx": ..., "threads": 2, "max_seq_len": 256, "vectors_per_workload": 8,
     "workloads": [{"name": ..., "texts": [...], "batch_sizes": [1, 8, 32],
                    "warm_up_s": 1.0, "measure_s": 4.0}]}

Each anchor is measured as the Rust side measures Sluice: per batch size, untimed calls for
warm_up_s, then at least 3 timed calls lasting at least measure_s, cycling through the texts so
consecutive calls embed different ones. A call's time includes tokenisation, as Sluice's does.
Tokens are those the model sees: [CLS] and [SEP] included, truncated at max_seq_len.
Progress goes to stderr; stdout carries only the result.
"""

import json
import os
import sys
import time
import warnings

# Everything comes from the model directory: never ask a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402

transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars on every load

ONNX_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def log(message):
    print(message, file=sys.stderr, flush=True)


def model_tokenizer(model_dir, max_seq_len, pad):
    """The model's own tokenizer.json, truncating where the model does (its file says 128)."""
    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tokenizer.enable_truncation(max_seq_len)
    if pad:
        tokenizer.enable_padding()  # to the longest text of the batch
    else:
        tokenizer.no_padding()
    return tokenizer


def sentence_transformers_anchor(request):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(request["threads"])
    model = SentenceTransformer(request["model_dir"], device="cpu", local_files_only=True)
    model.eval()
    if model.max_seq_length != request["max_seq_len"]:
        raise SystemExit(
            f"sentence-transformers truncates at {model.max_seq_length}, Sluice at {request['max_seq_len']}"
        )

    def embed(texts):
        with torch.inference_mode():
            return model.encode(
                texts,
                batch_size=len(texts),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

    return embed


def onnx_runtime_anchor(request):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = request["threads"]
    session = onnxruntime.InferenceSession(
        request["onnx"], options, providers=["CPUExecutionProvider"]
    )
    tokenizer = model_tokenizer(request["model_dir"], request["max_seq_len"], pad=True)

    def embed(texts):
        inputs = tokenizer_inputs(tokenizer, texts)
        (hidden,) = session.run(["last_hidden_state"], inputs)
        return mean_pool_normalised(hidden, inputs["attention_mask"])

    return embed


def tokenizer_inputs(tokenizer, texts):
    """The ONNX model's inputs for a batch: token ids, padded to the longest text."""
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def mean_pool_normalised(hidden, attention_mask):
    """sentence-transformers' pooling: the mean over real tokens, then unit length."""
    mask = attention_mask[..., None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def measure(embed, texts, tokens, batch_size, warm_up_s, measure_s):
    next_text = 0

    def next_batch():
        nonlocal next_text
        indices = [(next_text + i) % len(texts) for i in range(batch_size)]
        next_text = (next_text + batch_size) % len(texts)
        return indices

    warm_up = time.perf_counter()
    while time.perf_counter() - warm_up < warm_up_s:
        embed([texts[i] for i in next_batch()])

    calls = embedded = 0
    started = time.perf_counter()
    while calls < 3 or time.perf_counter() - started < measure_s:
        indices = next_batch()
        vectors = embed([texts[i] for i in indices])
        assert len(vectors) == batch_size
        embedded += sum(tokens[i] for i in indices)
        calls += 1
    seconds = time.perf_counter() - started
    return {
        "batch": batch_size,
        "calls": calls,
        "seconds": seconds,
        "tokens_per_s": embedded / seconds,
    }


def bench(request):
    import onnxruntime
    import sentence_transformers
    import torch

    counter = model_tokenizer(request["model_dir"], request["max_seq_len"], pad=False)
    anchors = [
        (
            "sentence-transformers",
            f"sentence-transformers {sentence_transformers.__version__} (PyTorch {torch.__version__})",
            sentence_transformers_anchor,
        ),
        (
            "onnxruntime",
            f"ONNX Runtime {onnxruntime.__version__} (torch.onnx opset 17)",
            onnx_runtime_anchor,
        ),
    ]
    result = {"threads": request["threads"], "anchors": []}
    for name, label, load in anchors:
        log(f"anchors: loading {label}")
        embed = load(request)
        workloads = {}
        for workload in request["workloads"]:
            texts = workload["texts"]
            tokens = [len(e.ids) for e in counter.encode_batch(texts)]
            batches = []
            for batch_size in workload["batch_sizes"]:
                measured = measure(
                    embed,
                    texts,
                    tokens,
                    batch_size,
                    workload["warm_up_s"],
                    workload["measure_s"],
                )
                log(
                    f"anchors: {name}, {workload['name']}, batch {batch_size}: "
                    f"{measured['tokens_per_s']:.0f} tokens/s"
                )
                batches.append(measured)
            first = texts[: request["vectors_per_workload"]]
            workloads[workload["name"]] = {
                "tokens": sum(tokens),
                "batches": batches,
                "vectors": np.asarray(embed(first), dtype=np.float64).tolist(),
            }
        result["anchors"].append({"name": name, "label": label, "workloads": workloads})
    return result


def export(model_dir, out):
    """all-MiniLM-L6-v2's encoder (token ids in, last hidden state out) as ONNX, opset 17,
    any batch size and sequence length. Checked against PyTorch on a padded batch of another
    shape than the one traced, so a shape baked into the graph would show."""
    import onnx
    import onnxruntime
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    # PyTorch's vectors for the check, computed first: the model answers differently once
    # traced for export.
    tokenizer = model_tokenizer(model_dir, 256, pad=True)
    inputs = tokenizer_inputs(tokenizer, ["A short one.", "Checked at another shape. " * 12] * 3)
    mask = inputs["attention_mask"]
    with torch.inference_mode():
        hidden = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).last_hidden_state
    expected = mean_pool_normalised(hidden.numpy(), mask)

    class Encoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state

    traced = torch.ones(2, 16, dtype=torch.long)
    partial = out + ".partial"
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated, and tracing warns about every Python condition
        # on a shape (constant for this model: no cache, no causal mask). The check below is what
        # tells whether the graph is right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Encoder(model),
            (traced, torch.ones_like(traced), torch.zeros_like(traced)),
            partial,
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: one self-contained file, dynamic axes
            input_names=ONNX_INPUTS,
            output_names=["last_hidden_state"],
            dynamic_axes={
                name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS + ["last_hidden_state"]
            },
        )
    onnx.checker.check_model(partial)

    session = onnxruntime.InferenceSession(partial, providers=["CPUExecutionProvider"])
    (hidden,) = session.run(["last_hidden_state"], inputs)
    cosines = (mean_pool_normalised(hidden, mask) * expected).sum(axis=1)
    if cosines.min() < 0.9999:
        raise SystemExit(f"the exported model disagrees with PyTorch: cosine {cosines.min()}")
    os.replace(partial, out)
    log(f"exported {out} (minimum cosine to PyTorch {cosines.min():.6f})")


def main(argv):
    if len(argv) == 4 and argv[1] == "--export":
        export(argv[2], argv[3])
    elif len(argv) == 2:
        with open(argv[1]) as file:
            request = json.load(file)
        json.dump(bench(request), sys.stdout)
        sys.stdout.write("\n")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
