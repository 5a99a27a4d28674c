"""Qwen3 family: presets. Quirks: RMSNorm over head_dim on q and k before RoPE, and a head_dim
that is not hidden_size / num_heads (128 vs 1024 / 16 = 64 for Qwen3-0.6B)."""

from __future__ import annotations

from lcf_jax.models.config import ModelConfig

QWEN3_0_6B = ModelConfig(
    family="qwen3",
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_layers=28,
    num_heads=16,
    num_kv_heads=8,
    head_dim=128,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    tie_word_embeddings=True,
    qk_norm=True,
    max_position_embeddings=40960,
    bos_token_id=151643,
    eos_token_id=151645,
)

PRESETS = {"qwen3-0.6b": QWEN3_0_6B}
