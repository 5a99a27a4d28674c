"""Where `lcf eval`'s memory goes: resident memory, bytes of live JAX arrays and XLA programs compiled,
after every call the evaluation makes (prefill, extend, generate, receive), stage by stage.

    python bench/eval_memory_profile.py [--context 1000] [--count 24] [--batch-size 8] [--json OUT]

Runs `lcf_jax.eval.conditions.run_answers` in this process on the long split-context questions of
bench/eval_memory.py (SmolLM2-135M-Instruct, untrained demo-shaped LCF-X adapters), wrapping the
library calls it makes so each one reports after it returns. Resident memory that grows while live
arrays do not is memory held outside the arrays (the allocator, compiled programs). Works on older
code too (`PYTHONPATH=OLD_TREE python bench/eval_memory_profile.py`): it wraps names, not internals.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import jax
from common import report, tune_allocator
from eval_memory import MODEL, long_questions

from lcf_jax import communicate, sampling
from lcf_jax.adapters import build
from lcf_jax.eval import answering, conditions, sharer
from lcf_jax.loading import load_model
from lcf_jax.runtime import compile_count
from lcf_jax.train.defaults import demo_config

ROWS: list[dict] = []
START = time.perf_counter()


def rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def traced(module, name: str, stage: list[str]):
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        jax.block_until_ready(jax.tree.leaves(out) if not isinstance(out, sampling.Generation) else out.cache)
        live = sum(x.nbytes for x in jax.live_arrays())
        ROWS.append(
            {
                "s": round(time.perf_counter() - START, 1),
                "stage": stage[0],
                "call": name,
                "rss_gb": round(rss_gb(), 2),
                "live_arrays_gb": round(live / 2**30, 2),
                "compiled": compile_count(),
            }
        )
        return out

    setattr(module, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=1000)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    tune_allocator()  # as `lcf` does
    compile_count()
    model = load_model(MODEL)
    options = dict(demo_config().adapter.options)
    adapter, control = (build("lcfx", model, model, seed=s, **options) for s in (0, 1))
    questions = long_questions(args.count, args.context, model.tokenizer)
    setup = conditions.Setup(model, model, adapter, control, batch_size=args.batch_size)
    stage = ["start"]
    for name in ("prefill", "extend", "receive", "send"):
        traced(communicate, name, stage)
    for module in (answering, sharer):  # every generate: the sharer's messages and every answer
        traced(module, "generate", stage)
    for name in ("sharer_messages", "latent_messages"):
        original = getattr(conditions, name)

        def staged(*a, _original=original, _name=name, **k):
            stage[0] = _name
            out = _original(*a, **k)
            stage[0] = "receiver answers"
            return out

        setattr(conditions, name, staged)
    ROWS.append({"s": 0.0, "stage": "models loaded", "call": "", "rss_gb": round(rss_gb(), 2)})
    conditions.run_answers(setup, questions, progress=False)
    peaks = {}
    for row in ROWS:
        peaks[row["stage"]] = max(peaks.get(row["stage"], 0.0), row["rss_gb"])
    summary = [{"stage": k, "peak RSS GB": v} for k, v in peaks.items()]
    # The kernel's high-water mark, including peaks inside a call that no sample above saw.
    summary.append(
        {"stage": "whole run (getrusage)", "peak RSS GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    )
    report(
        f"lcf eval memory by stage ({args.count} questions, {args.context}-token contexts, batch {args.batch_size})",
        summary,
        ["stage", "peak RSS GB"],
    )
    print(json.dumps(ROWS[-12:], indent=None))
    if args.json:
        Path(args.json).write_text(json.dumps({"peaks": peaks, "calls": ROWS}, indent=1) + "\n")


if __name__ == "__main__":
    main()
