"""Tiny random sharer/receiver pairs of different shapes, for adapter and pipeline tests."""

from __future__ import annotations

from lcf_jax.models.config import ModelConfig
from lcf_jax.models.model import Model

SHARER = ModelConfig(
    family="qwen2",
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    qkv_bias=True,
    tie_word_embeddings=True,
)
RECEIVER = ModelConfig(
    family="qwen3",
    vocab_size=97,
    hidden_size=48,
    intermediate_size=64,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    qk_norm=True,
)


def tiny_models(seed: int = 0) -> tuple[Model, Model]:
    return Model.random(SHARER, seed=seed), Model.random(RECEIVER, seed=seed + 1)
