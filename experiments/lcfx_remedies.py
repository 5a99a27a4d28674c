"""Remedies for the demo's LCF-X adapter (issues 5 and 16): each variant of the demo recipe is trained on
the same split_qa training questions and evaluated on the demo's 300 held-out questions for the
conditions that decide the targets (half_context, lcfx, mismatched_message, empty_message), all
from the same half-context caches.

    python experiments/lcfx_remedies.py --workdir /tmp/remedies [--only NAME ...]

Writes WORKDIR/NAME/ (training) and WORKDIR/remedies.json; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ml_collections

from lcf_jax.adapters.io import load_adapter
from lcf_jax.data.split_qa import generate_questions
from lcf_jax.eval.conditions import Setup, run_answers
from lcf_jax.eval.metrics import score
from lcf_jax.eval.significance import paired_difference
from lcf_jax.loading import load_model
from lcf_jax.runtime import tune_cpu_allocator
from lcf_jax.train.defaults import demo_config
from lcf_jax.train.loop import ADAPTER_DIR, train
from lcf_jax.train.workdir import CONTROL_DIR

DEMO_VARIANT = demo_config().data.variant


def variants() -> dict[str, ml_collections.ConfigDict]:
    out = {}
    base = demo_config()
    base.adapter.with_control = False  # the remedies compare LCF-X adapters only
    out["demo"] = base
    longer = ml_collections.ConfigDict(base.to_dict())
    longer.train.steps = longer.train.anneal_steps = 3 * base.train.steps
    longer.data.count = 3 * base.data.count
    out["train_3x"] = longer
    prefix = ml_collections.ConfigDict(base.to_dict())
    prefix.adapter.options.message_injection = "prefix"
    prefix.adapter.options.message_slots = 4
    out["prefix_4_slots"] = prefix
    conditioned = ml_collections.ConfigDict(base.to_dict())
    conditioned.adapter.options.receiver_conditioned = True
    out["receiver_conditioned"] = conditioned
    wide = ml_collections.ConfigDict(base.to_dict())
    wide.adapter.options.latent_width = 128
    out["latent_128"] = wide
    sees = ml_collections.ConfigDict(base.to_dict())
    sees.data.sharer_sees_question = True
    out["sharer_sees_question"] = sees
    # Issue 16: the recipe's open choices, each alone, then together (with the receiver-only control).
    for name, change in {
        "up_zero": lambda c: c.adapter.options.update(up_init="zeros"),
        "pool_lr_10": lambda c: c.train.update(pool_lr_scale=10.0),
        "bypass": lambda c: c.train.update(bypass_weight=1.0),
        "soft_gates": lambda c: c.adapter.options.update(gate_inference="soft"),
        "standardize": lambda c: c.adapter.options.update(message_norm="standardize"),
        "answer_types": lambda c: c.data.update(variant="single_hop_types"),
        "distill": lambda c: c.train.update(distill_weight=1.0),
        "gold_only": lambda c: c.data.update(sharer_gold_only=True),
        "prefix_4_distinct": lambda c: c.adapter.options.update(
            message_injection="prefix", message_slots=4, slot_query_init="normal"
        ),
    }.items():
        variant = ml_collections.ConfigDict(base.to_dict())
        change(variant)
        out[name] = variant
    combined = ml_collections.ConfigDict(base.to_dict())
    combined.adapter.options.update(up_init="zeros", gate_inference="soft")
    combined.train.update(pool_lr_scale=10.0, bypass_weight=1.0)
    combined.adapter.with_control = True
    out["combined"] = combined
    # configs/smollm2_lcfx_scale.py:fixed at the demo's size: combined plus standardisation and distillation.
    fixed = ml_collections.ConfigDict(combined.to_dict())
    fixed.adapter.options.update(message_norm="standardize")
    fixed.train.update(distill_weight=1.0)
    out["fixed_all"] = fixed
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    tune_cpu_allocator()
    workdir = Path(args.workdir)
    model = load_model("smollm2-135m")
    rows = json.loads((workdir / "remedies.json").read_text()) if (workdir / "remedies.json").exists() else {}
    chosen = variants()
    for name in args.only or list(chosen):  # in the order given
        config = chosen[name]
        run_dir = workdir / name
        start = time.perf_counter()
        if not (run_dir / ADAPTER_DIR / "adapter_config.json").exists():
            train(config, run_dir, progress=False, models=(model, model))
        train_s = time.perf_counter() - start
        # The demo's questions whatever the variant trained on (answer_types trains on other kinds too).
        questions = generate_questions(
            "test",
            args.count,
            seed=config.eval.seed,
            variant=DEMO_VARIANT,
            sharer_gold_only=config.data.sharer_gold_only,
        )
        control = run_dir / CONTROL_DIR
        setup = Setup(
            model,
            model,
            adapter=load_adapter(run_dir / ADAPTER_DIR),
            control=load_adapter(control) if (control / "adapter_config.json").exists() else None,
            budgets=(),
            receiver_alone=("half_context",),
            sharer_sees_question=config.data.sharer_sees_question,
            kv=(),
        )
        answers = run_answers(setup, questions, progress=False)
        gold = [q.answers for q in questions]
        scores = {c: score(answers.by_condition[c], gold, clean=True) for c in setup.conditions()}
        delta = paired_difference(100 * scores["lcfx"]["f1"], 100 * scores["mismatched_message"]["f1"])
        rows[name] = {
            "train_s": round(train_s),
            "steps": config.train.steps,
            **{c: {k: round(float(v), 2) for k, v in s.items() if k.endswith("mean")} for c, s in scores.items()},
            "lcfx_minus_mismatched_f1": {k: round(v, 2) for k, v in delta.items()},
        }
        (workdir / "remedies.json").write_text(json.dumps(rows, indent=2) + "\n")
        print(name, json.dumps(rows[name]), flush=True)


if __name__ == "__main__":
    main()
