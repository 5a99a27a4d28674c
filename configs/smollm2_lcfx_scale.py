"""LCF-X at the paper's scale on the embedded pair (SmolLM2-135M-Instruct as sharer and receiver),
for one accelerator: 276 steps at batch 256 over 70,656 generated split_qa questions (the paper's
one epoch of 276 steps at batch 256, method.md), with the receiver-only control trained alongside.
On one H100/H200 the training and `lcf eval` of 300 questions are sized to take under 10 minutes
together; `bash scripts/lcfx_scale.sh` runs both.

    lcf train --config configs/smollm2_lcfx_scale.py:paper --workdir lcfx-paper
    lcf train --config configs/smollm2_lcfx_scale.py:fixed --workdir lcfx-fixed
    lcf train --config configs/smollm2_lcfx_scale.py:fixed,tiny --workdir /tmp/t   # CPU, seconds

Recipes: "paper" keeps the paper's recipe where it speaks (lr 1e-4, 10% warmup, one broadcast
slot, hard gates at inference, lecun-normal projector, plain answer NLL); "fixed" adds our choices
where the paper is silent (issue 16): zero-initialised up-projections (the receiver starts intact),
the span pool at 10x the learning rate, soft gates at inference, message standardisation, the
anti-bypass hinge and distillation from the full-context receiver (which adds a teacher prefill of
the whole context to every step: not yet timed on an accelerator).
",tiny" shrinks every size for a CPU test of the path (not a result).
"""

from __future__ import annotations

import ml_collections

from lcf_jax.train.defaults import demo_config


def get_config(arg: str = "paper") -> ml_collections.ConfigDict:
    recipe, *rest = (arg or "paper").split(",")
    if recipe not in ("paper", "fixed") or rest not in ([], ["tiny"]):
        raise ValueError(f"configs/smollm2_lcfx_scale.py takes 'paper' or 'fixed', optionally ',tiny'; got {arg!r}")
    config = demo_config()
    config.model_dtype = "bfloat16"  # accelerators; the adapter keeps float32 master weights
    config.adapter.options = ml_collections.ConfigDict(dict(latent_width=128, dropout=0.1))
    config.data.count = 276 * 256
    config.train.batch_size = 256
    config.train.micro_batches = 4
    config.train.steps = config.train.anneal_steps = 276
    config.train.learning_rate = 1e-4
    config.train.warmup_fraction = 0.1
    config.checkpoint.every = 100
    if recipe == "fixed":
        config.adapter.options.update(up_init="zeros", gate_inference="soft", message_norm="standardize")
        config.train.update(pool_lr_scale=10.0, bypass_weight=1.0, distill_weight=1.0)
    if rest == ["tiny"]:
        config.model_dtype = "float32"
        config.data.count = 16
        config.train.batch_size = 8  # splits over 8 devices too (the test mesh)
        config.train.micro_batches = 1
        config.train.steps = config.train.anneal_steps = 2
        config.checkpoint.every = 1
        config.log_every = 1
    return config
