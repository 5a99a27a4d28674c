"""The paper's shared-context recipe: Qwen2.5-0.5B-Instruct (sharer) -> Qwen3-0.6B (receiver),
OpenHermes-2.5 (first 500k conversations, <= 2048 tokens after the receiver's chat template),
AdamW lr 1e-4, wd 0.01, linear schedule with 10% warmup, clip 1.0, bf16 models, seed 42, effective
batch 256, 300 steps, Gumbel temperature 1.0 -> 0.001 over 1929 steps. The argument is the latent
width d (64, 128, 256 or 512; default 128).

    lcf train --config configs/paper_lcf.py:128 --workdir gs://BUCKET/lcf128 \
        --config.data.path=/data/openhermes2_5.jsonl
    launch/tpu/run_pod.sh ... --config configs/paper_lcf.py:256 --config.data.path=...

OpenHermes-2.5 is not downloaded by lcf_jax: export it to JSONL (one {"conversations": [...]} per
line, its own format) where the job can read it.
"""

from __future__ import annotations

import ml_collections

from lcf_jax.train.defaults import base_config


def get_config(arg: str = "128") -> ml_collections.ConfigDict:
    config = base_config()
    config.sharer = "qwen2.5-0.5b-instruct"
    config.receiver = "qwen3-0.6b"
    config.model_dtype = "bfloat16"
    config.adapter.kind = "lcf"
    config.adapter.options = ml_collections.ConfigDict(dict(latent_width=int(arg or 128), dropout=0.1))
    config.data.kind = "jsonl"
    config.data.path = "openhermes2_5.jsonl"
    config.data.limit = 500_000
    config.data.max_length = 2048
    config.train.batch_size = 256
    config.train.micro_batches = 16
    config.train.steps = 300
    return config
