"""The embedded default pair on your own split-context questions: the `lcf demo` recipe
(SmolLM2-135M-Instruct as sharer and receiver, LCF-X, sized for a laptop-class CPU) reading a JSONL
file instead of the generated split_qa questions.

    lcf train --config configs/smollm2_qa.py --workdir /tmp/lcf-smollm2 --config.data.path=questions.jsonl

`data.path` is a split-context question JSONL (format: lcf_jax/data/qa.py). The argument sets the
latent width (default 64).
"""

from __future__ import annotations

import ml_collections

from lcf_jax.train.defaults import demo_config


def get_config(arg: str = "64") -> ml_collections.ConfigDict:
    config = demo_config()
    config.adapter.options.latent_width = int(arg or 64)
    config.data.kind = "qa_jsonl"
    config.data.path = "questions.jsonl"
    # A user's own data is usually larger than the demo's 960 questions: more steps, bigger batches.
    config.train.batch_size = 16
    config.train.micro_batches = 2
    config.train.steps = config.train.anneal_steps = 200
    config.log_every = 5
    return config
