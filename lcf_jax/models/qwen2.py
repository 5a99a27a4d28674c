"""Qwen2 / Qwen2.5 family: presets. Quirk: bias on the q/k/v projections (never on o_proj)."""

from __future__ import annotations

from lcf_jax.models.config import ModelConfig

QWEN2_5_0_5B = ModelConfig(
    family="qwen2",
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_layers=24,
    num_heads=14,
    num_kv_heads=2,
    head_dim=64,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    tie_word_embeddings=True,
    qkv_bias=True,
    max_position_embeddings=32768,
    bos_token_id=151643,
    eos_token_id=151645,
)

# The Instruct checkpoint has the same architecture; only the weights and chat template differ.
PRESETS = {"qwen2.5-0.5b": QWEN2_5_0_5B, "qwen2.5-0.5b-instruct": QWEN2_5_0_5B}
