"""Training defaults every experiment config starts from: the paper's recipe (method.md, Training)."""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42
    config.sharer = "qwen2.5-0.5b-instruct"  # load_model source, or "random" with sharer_arch
    config.receiver = "qwen3-0.6b"
    config.sharer_arch = ml_collections.ConfigDict()
    config.receiver_arch = ml_collections.ConfigDict()
    config.model_dtype = "float32"  # frozen base models; the adapter keeps float32 master weights

    config.adapter = ml_collections.ConfigDict()
    config.adapter.kind = "lcf"
    config.adapter.options = ml_collections.ConfigDict(dict(latent_width=128, dropout=0.1))
    config.adapter.num_spans = 16  # lcfx: span slots per row
    config.adapter.receiver_only = False  # lcfx control: train with zero messages (the sharer never runs)
    # lcfx: also train that control in the same steps (it reuses the receiver's passes); saved to
    # control_adapter/ beside adapter/, where `lcf eval --checkpoint` finds it.
    config.adapter.with_control = False

    config.data = ml_collections.ConfigDict()
    config.data.kind = "jsonl"  # "jsonl" (chat), "qa_jsonl" / "split_qa" (split-context questions), "synthetic"
    config.data.path = ""
    config.data.max_length = 2048
    config.data.limit = 0  # 0: no limit
    config.data.count = 0  # synthetic, split_qa: examples to generate
    config.data.fixed_response = False  # synthetic only: one response for every prompt
    config.data.sharer_sees_question = False  # qa_jsonl: the sharer reads the question too (method: open)
    config.data.seed = 0
    config.data.variant = "single_hop"  # split_qa: "single_hop" (calibrated), "bridge", "mixed", "single_hop_types"
    config.data.sharer_gold_only = False  # split_qa: the sharer reads its gold paragraph alone (a diagnostic)
    config.data.bucket = 64

    config.train = ml_collections.ConfigDict()
    config.train.steps = 300
    config.train.batch_size = 256  # effective (global) batch
    config.train.micro_batches = 32  # gradient accumulation: batch_size / micro_batches rows at a time
    config.train.learning_rate = 1e-4
    config.train.weight_decay = 0.01
    config.train.warmup_fraction = 0.1
    config.train.clip = 1.0
    config.train.tau_initial = 1.0
    config.train.tau_final = 0.001
    config.train.anneal_steps = 1929
    # LCF-X recipe options where the paper is silent (ours; 0 / 1.0 leave the paper's recipe):
    config.train.bypass_weight = 0.0  # anti-bypass hinge weight (train/step.py token_losses)
    config.train.bypass_margin = 0.5  # its margin, nats per token
    config.train.distill_weight = 0.0  # KL to the receiver reading the full context (train/step.py token_losses)
    config.train.pool_lr_scale = 1.0  # learning-rate multiplier of the span pool's parameters

    # data=-1 takes the devices fsdp x tensor leave; num_devices=0 uses them all (N: the first N).
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_devices=0))
    config.checkpoint = ml_collections.ConfigDict(dict(every=50, keep=3, async_save=True))
    config.log_every = 10
    return config


MODEL = "smollm2-135m"


def demo_config() -> ml_collections.ConfigDict:
    """`lcf demo`'s training recipe, sized for a 2-core CPU (the paper's recipe is in
    lcf_jax/train/defaults.py; this one trains far less: see README for what that costs)."""
    config = base_config()
    config.sharer = config.receiver = MODEL
    config.model_dtype = "float32"  # bf16 is slower on most CPUs
    config.adapter.kind = "lcfx"
    config.adapter.options = ml_collections.ConfigDict(dict(latent_width=64, dropout=0.0))
    config.adapter.num_spans = 8  # 5 paragraphs per sharer
    # The receiver-only control trains in the same steps (one receiver prefix pass serves both).
    config.adapter.with_control = True
    config.data.kind = "split_qa"
    config.data.count = 960
    config.data.variant = "single_hop"  # calibrated: see lcf_jax/data/split_qa.py
    # Every batch then pads to (144, 80 or 96, 16) tokens (prefix, sharer, suffix): two compiled steps,
    # and the suffix (last prompt token and a ~9-token answer), which runs forward and backward, is not
    # padded to 32.
    config.data.bucket = 16
    config.data.max_length = 512
    config.train.batch_size = 8
    config.train.micro_batches = 1
    config.train.steps = 120
    config.train.learning_rate = 1e-3
    config.train.warmup_fraction = 0.05
    config.train.anneal_steps = 120
    config.checkpoint.every = 50
    config.log_every = 10
    config.eval = ml_collections.ConfigDict(
        dict(count=300, latency_questions=4, batch_size=32, seed=1, budgets=(50, 100, 150, 200))
    )
    return config
