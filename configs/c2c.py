"""The C2C baseline on the paper's shared-context pair and recipe (the fuser LCF is compared with:
477,848,056 parameters, 956 MB in bf16).

    lcf train --config configs/c2c.py --workdir gs://BUCKET/c2c --config.data.path=/data/openhermes2_5.jsonl
"""

from __future__ import annotations

import ml_collections

from lcf_jax.train.defaults import base_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    config = base_config()
    config.sharer = "qwen2.5-0.5b-instruct"
    config.receiver = "qwen3-0.6b"
    config.model_dtype = "bfloat16"
    config.adapter.kind = "c2c"
    config.adapter.options = ml_collections.ConfigDict(dict(hidden_width=1024, dropout=0.1))
    config.data.kind = "jsonl"
    config.data.path = "openhermes2_5.jsonl"
    config.data.limit = 500_000
    config.train.batch_size = 256
    config.train.micro_batches = 32
    config.train.steps = 300
    # C2C is large: split its inputs over an fsdp axis when several devices hold it.
    config.mesh.fsdp = 1
    return config
