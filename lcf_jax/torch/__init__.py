"""Exported lcf_jax adapters in PyTorch, with transformers models: no JAX needed.

    from lcf_jax.torch import load_adapter, generate
    adapter = load_adapter("exported/")            # written by `lcf export`
    answers = generate(sharer, receiver, tokenizer, prompts, adapter=adapter, sharer_contexts=spans)

Lower level: `fuse` (lcf, c2c), `summarize` and `receive` (lcfx) rewrite `transformers.DynamicCache`
objects. KV-cache messages (one model as sharer and receiver): `send_kv`, `receive_kv`,
`generate_kv` (`lcf_jax/torch/kv.py`). This package imports torch, transformers and safetensors only, never JAX.
"""

from __future__ import annotations

from lcf_jax.torch.adapter import Adapter, AdapterConfig, AdapterFormatError, Message, ModelShape
from lcf_jax.torch.cache import fuse, layer_tensors, receive, span_ids_from_lengths, summarize
from lcf_jax.torch.generate import generate, stop_token_ids
from lcf_jax.torch.kv import KVMessage, KVTranslator, generate_kv, load_kv_translator, receive_kv, send_kv, translate_kv
from lcf_jax.torch.load import load_adapter, read_config

__all__ = [
    "Adapter",
    "AdapterConfig",
    "AdapterFormatError",
    "KVMessage",
    "KVTranslator",
    "Message",
    "ModelShape",
    "fuse",
    "generate",
    "generate_kv",
    "layer_tensors",
    "load_kv_translator",
    "load_adapter",
    "read_config",
    "send_kv",
    "receive",
    "receive_kv",
    "span_ids_from_lengths",
    "stop_token_ids",
    "summarize",
    "translate_kv",
]
