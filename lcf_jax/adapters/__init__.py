"""The adapters: LCF (joint K/V bottleneck), LCF-X (novelty summary for different contexts) and the
C2C fuser baseline, one projector per receiver layer, stacked."""

from __future__ import annotations

from lcf_jax.adapters.adapter import KINDS, Adapter, AdapterSpec, FusingAdapter, MessageAdapter, make_adapter
from lcf_jax.adapters.blocks import gumbel_temperature, layer_map
from lcf_jax.adapters.build import build, count_params, make_spec, size_mb
from lcf_jax.adapters.lcfx import Message, spans_from_lengths, window_spans

__all__ = [
    "KINDS",
    "Adapter",
    "AdapterSpec",
    "FusingAdapter",
    "Message",
    "MessageAdapter",
    "build",
    "count_params",
    "gumbel_temperature",
    "layer_map",
    "make_adapter",
    "make_spec",
    "size_mb",
    "spans_from_lengths",
    "window_spans",
]
