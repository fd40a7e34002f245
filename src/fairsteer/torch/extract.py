"""Sentence representations from any Hugging Face encoder, cached on disk.

:func:`encode` runs a (tokenizer, network) pair over sentences in batches and
pools the hidden states of one layer into one vector per sentence
(:func:`pool`: the mean over the non-padding tokens, or the last non-padding
token, the usual summary of a causal LM). The cache key hashes the name, the
layer, the pooling and the exact sentences, so a changed input can never
return stale vectors. Loaders of particular packaged models (MiniLM,
SmolLM2) live with the experiments that use them
(``fairsteer_experiments.models``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairsteer.errors import InputError

__all__ = ["POOLINGS", "encode", "encode_shards", "fit_shards", "pool"]

POOLINGS = ("mean", "last")


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
    encoder: tuple[Any, Any] | Callable[[], tuple[Any, Any]],
    name: str,
    layer: int = -1,
    pooling: str = "mean",
    batch_size: int = 64,
    cache_dir: str | os.PathLike[str] | None = ".fairsteer-cache",
    progress: bool = True,
) -> np.ndarray:
    """Pooled hidden states of one layer, shape (n, hidden size), float32.

    Parameters
    ----------
    sentences : sequence of str
    encoder : (tokenizer, network), or a function returning them
        A function is called only when the cache misses (loading a model can
        take longer than reading the cache). The tokenizer follows the Hugging
        Face call convention (``padding``, ``truncation``, ``max_length``,
        ``return_tensors``); the network returns ``hidden_states``.
    name : str
        Names the encoder in the cache file.
    layer : int
        Index into ``hidden_states`` (0 = embeddings, -1 = last layer).
    pooling : {"mean", "last"}
        See :func:`pool`.
    cache_dir : path or None
        Cache folder (None disables caching). The file name hashes name,
        layer, pooling and every sentence.
    """
    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    path = None
    if cache_dir is not None:
        key = _key(name, layer, pooling, sentences)
        path = Path(cache_dir) / f"{name}-L{layer}-{pooling}-{key}.npy"
        if path.exists():
            return np.load(path)
    tok, net = encoder() if callable(encoder) else encoder
    out = []
    batches: Any = range(0, len(sentences), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"encoding ({name}, layer {layer})", unit="batch")
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


def encode_shards(
    sentences: Sequence[str],
    *,
    encoder: tuple[Any, Any] | Callable[[], tuple[Any, Any]],
    name: str,
    out_dir: str | os.PathLike[str],
    shard_size: int = 10_000,
    layer: int = -1,
    pooling: str = "mean",
    batch_size: int = 64,
    progress: bool = True,
) -> list[Path]:
    """Pooled hidden states of many sentences, written as shards; resumable.

    The sentences are cut into consecutive shards of ``shard_size``; each is
    encoded by :func:`encode` into ``out_dir`` (one ``.npy`` file per shard,
    written atomically, named by a hash of its own sentences, layer and
    pooling). A rerun after an interruption finds the finished shards and
    encodes only the missing ones; the encoder is loaded at most once, and
    only if a shard is missing.

    Returns
    -------
    list of Path
        The shard files in sentence order (feed them to :func:`fit_shards`).
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard_size must be a whole number >= 1, got {shard_size!r}")
    loaded: list[tuple[Any, Any]] = []

    def load_once() -> tuple[Any, Any]:
        if not loaded:
            loaded.append(encoder() if callable(encoder) else encoder)
        return loaded[0]

    paths = []
    for lo in range(0, len(sentences), shard_size):
        part = sentences[lo : lo + shard_size]
        encode(
            part,
            encoder=load_once,
            name=name,
            layer=layer,
            pooling=pooling,
            batch_size=batch_size,
            cache_dir=out_dir,
            progress=progress,
        )
        key = _key(name, layer, pooling, part)
        paths.append(Path(out_dir) / f"{name}-L{layer}-{pooling}-{key}.npy")
    return paths


def fit_shards(
    paths: Sequence[str | os.PathLike[str]],
    y: Sequence[Any],
    groups: Sequence[Any],
    **fit_options: Any,
) -> Any:
    """The model of representations stored as shards, one shard in memory at a time.

    Parameters
    ----------
    paths : sequence of path
        ``.npy`` shards of (rows, d) representations, in the order of ``y``.
    y, groups : sequence
        Class and group label of every row of all shards together.
    **fit_options
        ``covariance``, ``shrinkage``, ``features`` of
        :class:`fairsteer.fit.Fitter` (normal family).

    Returns
    -------
    GaussianModel
        Equal to ``fit_model`` of the concatenated shards to round-off (the
        statistics merge exactly); labels in sorted order.
    """
    from fairsteer.fit import Fitter
    from fairsteer.stats import encode_labels

    y_arr, g_arr = np.asarray(y), np.asarray(groups)
    if y_arr.shape != g_arr.shape or y_arr.ndim != 1:
        raise InputError("y and groups need one label each per row of the shards")
    fitter = Fitter(
        group_labels=encode_labels(g_arr, None, "group")[0],
        class_labels=encode_labels(y_arr, None, "class")[0],
        **fit_options,
    )
    start = 0
    for path in paths:
        try:
            X = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read shard {path}: {exc}") from None
        stop = start + X.shape[0]
        if stop > y_arr.size:
            raise InputError(f"the shards hold more rows than labels ({y_arr.size})")
        fitter.update(np.asarray(X, dtype=np.float64), y_arr[start:stop], g_arr[start:stop])
        start = stop
    if start != y_arr.size:
        raise InputError(f"the shards hold {start} rows but {y_arr.size} labels were given")
    return fitter.model()
