"""A KV translator between two models that share a tokenizer: per receiver layer, a linear map of
the sharer's pre-RoPE keys and values to the receiver's, trained self-supervised on text both read
(lcf_jax/train/translator.py). It lets a KV-cache message (`communicate.send(kind="kv")`) cross
between two different models; `lcf eval --kv-translator WORKDIR/kv_translator` uses it.

lcf train --config configs/kv_translator.py --workdir /tmp/kvt               # Qwen2.5-0.5B -> Qwen3-0.6B
lcf train --config configs/kv_translator.py:tiny --workdir /tmp/kvt-tiny     # tiny random pair (seconds)
lcf train --config configs/kv_translator.py --workdir /tmp/kvt-kl --config.train.kl_weight=1.0

The paper gives no recipe for this (it is KVComm's comparator carried across two models); every
choice here is ours: a linear map plus the LCF projector's trunk (measured against the linear map
alone: experiments/kv_translator_map.py), k-nearest layer pairing, ridge init, relative MSE per layer.
"""

from __future__ import annotations

import ml_collections

from lcf_jax.train.defaults import base_config


def get_config(arg: str = "qwen") -> ml_collections.ConfigDict:
    config = base_config()
    config.adapter.kind = "kv_translator"
    config.adapter.options = ml_collections.ConfigDict()
    config.translator = ml_collections.ConfigDict()
    config.translator.layer_map = "k_nearest"  # receiver layer t reads sharer layer round(t (Ls-1)/(Lr-1))
    config.translator.init = "ridge"  # "ridge": closed-form fit on the first ridge_texts texts; "zeros"
    config.translator.ridge_texts = 64
    config.translator.ridge = 1e-3
    # The trunk's width d (the LCF projector's, without the receiver input) added to the linear map;
    # 0: linear only. Chosen by measurement (experiments/kv_translator_map.py).
    config.translator.width = 128
    config.train.kl_weight = 0.0  # > 0: add the receiver's next-token KL with translated entries
    config.train.batch_size = 8
    config.train.micro_batches = 1
    config.train.steps = 500
    config.train.learning_rate = 1e-4
    config.train.weight_decay = 0.0
    config.data.kind = "split_qa"  # or "text_jsonl" (data.path: {"text": ...} lines) or "synthetic"
    config.data.count = 2000
    config.data.max_length = 512
    config.data.bucket = 32
    config.checkpoint.every = 100
    if arg == "qwen":
        config.sharer = "qwen2.5-0.5b-instruct"
        config.receiver = "qwen3-0.6b"
    elif arg == "tiny":  # two tiny random models that differ in every way a translator must bridge
        config.sharer = config.receiver = "random"
        config.sharer_arch = dict(
            family="qwen2", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=8, qkv_bias=True, tie_word_embeddings=True,
        )  # fmt: skip
        config.receiver_arch = dict(
            family="qwen3", vocab_size=64, hidden_size=48, intermediate_size=64, num_layers=3, num_heads=4,
            num_kv_heads=1, head_dim=16, qk_norm=True, rope_theta=500_000.0,
        )  # fmt: skip
        config.data.kind = "synthetic"
        config.data.count = 256
        config.data.max_length = 48
        config.data.bucket = 16
        config.translator.ridge_texts = 16
        config.translator.width = 16
        config.train.steps = 30
        config.train.learning_rate = 3e-3
        config.checkpoint.every = 10
        config.log_every = 5
    else:
        raise ValueError(f"configs/kv_translator.py takes 'qwen' (default) or 'tiny', not {arg!r}")
    return config
