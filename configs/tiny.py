"""Tiny random models on a synthetic copy task: the config the tests train (seconds on a CPU).

lcf train --config configs/tiny.py --workdir /tmp/lcf-tiny
lcf train --config configs/tiny.py:lcfx --workdir /tmp/lcf-tiny-x --config.train.steps=20
"""

from __future__ import annotations

import ml_collections

from lcf_jax.train.defaults import base_config


def get_config(arg: str = "lcf") -> ml_collections.ConfigDict:
    config = base_config()
    config.sharer = "random"
    config.receiver = "random"
    config.sharer_arch = dict(
        family="qwen2",
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        qkv_bias=True,
        tie_word_embeddings=True,
    )
    config.receiver_arch = dict(
        family="qwen3",
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        qk_norm=True,
    )
    config.adapter.kind = arg or "lcf"
    config.adapter.options = (
        dict(latent_width=16, dropout=0.0, hidden_width=32) if arg == "c2c" else dict(latent_width=16, dropout=0.0)
    )
    config.data.kind = "synthetic"
    config.data.count = 256
    config.data.fixed_response = True
    config.data.bucket = 8
    config.train.steps = 30
    config.train.batch_size = 16
    config.train.micro_batches = 2
    config.train.learning_rate = 3e-3
    config.checkpoint.every = 10
    config.log_every = 1
    return config
