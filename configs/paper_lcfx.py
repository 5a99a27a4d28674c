"""The paper's LCF-X recipe (different contexts): Qwen3-0.6B as sharer and receiver, HotpotQA
bridge questions with the 10 paragraphs split 5/5 (one gold paragraph each side), one epoch of 276
steps at batch 256, latent width 128, gate logits starting at +1.

    lcf train --config configs/paper_lcfx.py --workdir gs://BUCKET/lcfx \
        --config.data.path=/data/hotpot_bridge_train.jsonl

The data is a split-context question JSONL (see lcf_jax/data/qa.py for the format).

Where the paper speaks this config follows it (and every option below stays at the paper's value
here). Where it is silent, the choices are ours, each an option (issue 16):
  adapter.options.up_init       "lecun" (flax's default, close to the paper's code) | "zeros": the
                                receiver starts intact
  adapter.options.gate_inference "hard" (logit > 0, as the paper) | "soft": sigmoid(logit), the
                                training mean
  train.pool_lr_scale           1.0 | k: the span pool learns k times faster
  train.bypass_weight/_margin   0 | w: the anti-bypass hinge (own message must beat another's)
  train.distill_weight          0 | w: KL to the receiver that reads the full context
  adapter.options.message_norm  "none" | "standardize": the message at mean 0, std 1 per dim (set
                                from the first batch)
  adapter.options.message_injection / message_slots: "broadcast", 1 (the paper) | "prefix", M
  adapter.options.slot_query_init "zeros" | "normal": distinct prefix slots
  adapter.options.receiver_conditioned: False (the paper) | True
  data.variant (split_qa)       "single_hop_types": answers of five kinds instead of dates
configs/smollm2_lcfx_scale.py:fixed turns ours on; experiments/lcfx_remedies.py measures each.
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
