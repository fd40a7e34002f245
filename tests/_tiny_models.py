"""Tiny random transformers shared by the torch tests (import after importorskip)."""

import torch
import transformers

_SIZES = dict(
    vocab_size=64,
    hidden_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=64,
)


def tiny_bert():
    """A 3-layer BERT encoder with random weights (seed 0)."""
    torch.manual_seed(0)
    return transformers.BertModel(transformers.BertConfig(**_SIZES)).eval()


def tiny_llama():
    """A 3-layer Llama decoder with random weights (seed 0), one key-value head."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**_SIZES, num_key_value_heads=1)
    return transformers.LlamaModel(config).eval()
