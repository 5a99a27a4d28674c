"""Paired 95% bootstrap intervals on the F1 difference between conditions of one evaluation, from its
answers.jsonl (same questions, so each resample keeps the pairs).

    python experiments/paired_intervals.py WORKDIR/answers.jsonl kv_share_32:text_150 \
        kv_share_32:kv_share_mismatched [--resamples 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lcf_jax.eval.metrics import score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("answers")
    parser.add_argument("pairs", nargs="+", help="A:B, the difference A - B")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [json.loads(line) for line in Path(args.answers).read_text().splitlines() if line.strip()]
    gold = [r["answers"] for r in rows]
    rng = np.random.default_rng(args.seed)
    index = rng.integers(0, len(rows), (args.resamples, len(rows)))
    print("| A - B | F1 A | F1 B | difference | 95% interval (paired bootstrap) |\n|---|---|---|---|---|")
    for pair in args.pairs:
        a, b = pair.split(":")
        fa = score([r[a] for r in rows], gold, clean=True)["f1"]
        fb = score([r[b] for r in rows], gold, clean=True)["f1"]
        diff = 100 * (fa - fb)
        low, high = np.percentile(diff[index].mean(axis=1), [2.5, 97.5])
        means = f"{100 * fa.mean():.1f} | {100 * fb.mean():.1f}"
        print(f"| {a} - {b} | {means} | {diff.mean():+.1f} | [{low:+.1f}, {high:+.1f}] |")


if __name__ == "__main__":
    main()
