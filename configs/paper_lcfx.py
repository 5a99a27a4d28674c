"""The paper's LCF-X recipe (different contexts): Qwen3-0.6B as sharer and receiver, HotpotQA
bridge questions with the 10 paragraphs split 5/5 (one gold paragraph each side), one epoch of 276
steps at batch 256, latent width 128, gate logits starting at +1.

    lcf train --config configs/paper_lcfx.py --workdir gs://BUCKET/lcfx \
        --config.data.path=/data/hotpot_bridge_train.jsonl

The data is a split-context question JSONL (see lcf_jax/data/qa.py for the format).
"""

from __future__ import annotations

import ml_collections

from lcf_jax.train.defaults import base_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    config = base_config()
    config.sharer = "qwen3-0.6b"
    config.receiver = "qwen3-0.6b"
    config.model_dtype = "bfloat16"
    config.adapter.kind = "lcfx"
    config.adapter.options = ml_collections.ConfigDict(dict(latent_width=128, dropout=0.1))
    config.adapter.num_spans = 8  # 5 paragraphs on the sharer's side, rounded up
    config.data.kind = "qa_jsonl"
    config.data.path = "hotpot_bridge_train.jsonl"
    config.train.batch_size = 256
    config.train.micro_batches = 16
    config.train.steps = 276
    config.train.anneal_steps = 276
    return config
