"""The embedded default pair: SmolLM2-135M-Instruct as sharer and receiver (installs offline from
PyPI), LCF-X on split-context questions, sized for a laptop-class CPU.

    lcf train --config configs/smollm2_qa.py --workdir /tmp/lcf-smollm2 --config.data.path=questions.jsonl

`data.path` is a split-context question JSONL (format: lcf_jax/data/qa.py). The argument sets the
latent width (default 64).
"""

from __future__ import annotations

import ml_collections

from lcf_jax.train.defaults import base_config


def get_config(arg: str = "64") -> ml_collections.ConfigDict:
    config = base_config()
    config.sharer = "smollm2-135m"
    config.receiver = "smollm2-135m"
    config.model_dtype = "float32"  # bf16 is no faster on most CPUs
    config.adapter.kind = "lcfx"
    config.adapter.options = ml_collections.ConfigDict(dict(latent_width=int(arg or 64), dropout=0.0))
    config.adapter.num_spans = 8
    config.data.kind = "qa_jsonl"
    config.data.path = "questions.jsonl"
    config.data.max_length = 512
    config.data.bucket = 32
    config.train.batch_size = 16
    config.train.micro_batches = 2
    config.train.steps = 200
    config.train.learning_rate = 1e-3
    config.train.anneal_steps = 200
    config.checkpoint.every = 50
    config.log_every = 5
    return config
