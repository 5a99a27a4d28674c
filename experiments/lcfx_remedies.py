"""Remedies for the demo's LCF-X adapter (issue 5): each variant of the demo recipe is trained on
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
from lcf_jax.demo import demo_config
from lcf_jax.eval.conditions import Setup, run_answers
from lcf_jax.eval.metrics import score
from lcf_jax.loading import load_model
from lcf_jax.runtime import tune_cpu_allocator
from lcf_jax.train.loop import ADAPTER_DIR, train


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
        questions = generate_questions("test", args.count, seed=config.eval.seed, variant=config.data.variant)
        setup = Setup(
            model,
            model,
            adapter=load_adapter(run_dir / ADAPTER_DIR),
            budgets=(),
            receiver_alone=("half_context",),
            sharer_sees_question=config.data.sharer_sees_question,
        )
        answers = run_answers(setup, questions, progress=False)
        gold = [q.answers for q in questions]
        rows[name] = {
            "train_s": round(train_s),
            "steps": config.train.steps,
            **{
                c: {
                    k: round(float(v), 2)
                    for k, v in score(answers.by_condition[c], gold, clean=True).items()
                    if k.endswith("mean")
                }
                for c in setup.conditions()
            },
        }
        (workdir / "remedies.json").write_text(json.dumps(rows, indent=2) + "\n")
        print(name, json.dumps(rows[name]), flush=True)


if __name__ == "__main__":
    main()
