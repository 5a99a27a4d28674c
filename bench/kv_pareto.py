"""KV-cache messages on the demo's questions: F1, time to first token and bytes against the entries
sent per row and layer (M) and the fraction of layers sent, with the text and receiver references.

    python bench/kv_pareto.py [--count 100] [--entries 8 16 32 64] [--layers 0.25 0.5 1.0]
                              [--policy query] [--unit span] [--workdir DIR] [--json OUT] [--plot OUT]

The embedded default model (SmolLM2-135M-Instruct) is sharer and receiver; the questions are the
first `--count` of `lcf demo`'s test questions (split_qa single_hop, seed 1). Every row runs through
`lcf_jax.eval.run.evaluate` (accuracy batched; latency one question at a time on `--latency`
questions), so the numbers are those `lcf eval` reports. No trained adapter is needed. A row is
marked Pareto-optimal when no other KV row has at least its F1 with at most its bytes and TTFT.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import ROOT, environment, markdown_table, tune_allocator

from lcf_jax.data.split_qa import generate_questions
from lcf_jax.eval.condition import kv_condition, kv_conditions
from lcf_jax.eval.conditions import Setup
from lcf_jax.eval.run import evaluate
from lcf_jax.loading import load_model
from lcf_jax.train.defaults import MODEL, demo_config


def pareto(rows: list[dict]) -> None:
    """Mark each row not beaten by another on every axis (F1 up, bytes and TTFT down; a missing
    TTFT counts as equal)."""
    for r in rows:
        r.setdefault("ttft_ms", None)
    key = {id(r): (r["f1"], r["bytes"], r["ttft_ms"] or 0.0) for r in rows}
    for r in rows:
        f1, size, ttft = key[id(r)]
        r["pareto"] = not any(
            o is not r
            and key[id(o)][0] >= f1
            and key[id(o)][1] <= size
            and key[id(o)][2] <= ttft
            and key[id(o)] != key[id(r)]
            for o in rows
        )


def plot(rows: list[dict], references: dict[str, float], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    fractions = sorted({r["layer_fraction"] for r in rows})
    for fraction in fractions:
        points = sorted((r for r in rows if r["layer_fraction"] == fraction), key=lambda r: r["bytes"])
        ax.plot([p["bytes"] for p in points], [p["f1"] for p in points], "o-", label=f"{fraction:.0%} of layers")
        for p in points:
            ax.annotate(
                str(p["entries"]), (p["bytes"], p["f1"]), textcoords="offset points", xytext=(4, -10), fontsize=7
            )
    styles = iter(["--", ":", "-."])
    for name, f1 in references.items():
        ax.axhline(f1, color="grey", linestyle=next(styles, "--"), linewidth=1, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("message bytes per question (log)")
    ax.set_ylabel("F1")
    ax.set_title("KV messages: F1 vs bytes (labels: entries per row and layer)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--entries", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--layers", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--policy", default="query", choices=["attention", "query"])
    parser.add_argument("--unit", default="span", choices=["span", "token"])
    parser.add_argument("--latency", type=int, default=3, help="questions timed one at a time")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "kv_pareto.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "kv_pareto.png")
    args = parser.parse_args()
    tune_allocator()  # the `lcf` command's allocator settings, before anything allocates (bench/common.py)

    config = demo_config()
    model = load_model(MODEL, dtype=config.model_dtype)
    questions = generate_questions("test", args.count, seed=config.eval.seed, variant=config.data.variant)
    grid = [
        kv_condition(m, policy=args.policy, unit=args.unit, layer_fraction=f) for f in args.layers for m in args.entries
    ]
    rows_kv = (*kv_conditions(args.policy, entries=(), unit=args.unit), *grid)
    setup = Setup(model, model, budgets=(200,), receiver_alone=("half_context", "full_context"), kv=rows_kv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kv_pareto-"))
    results = {r.name: r for r in evaluate(setup, questions, workdir, latency_questions=args.latency, progress=False)}
    meta = json.loads((workdir / "results.json").read_text())["meta"]
    rows = []
    for c in grid:
        r = results[c.name]
        rows.append(
            {"condition": c.name, "entries": c.entries, "layer_fraction": c.layer_fraction, "f1": r.f1,
             "ttft_ms": r.ttft_ms, "bytes": r.message_bytes, "layers": meta["kv"][c.name]["layers"]}
        )  # fmt: skip
    pareto(rows)
    references = {
        name: results[name].f1
        for name in ("full_context", "full_context_sharer_first", "kv_share", "text_200", "half_context")
    }
    reference_rows = [
        {"condition": n, "f1": results[n].f1, "ttft_ms": results[n].ttft_ms, "bytes": results[n].message_bytes or "-"}
        for n in (*references, "kv_share_mismatched")
    ]
    table = markdown_table(rows, ["condition", "entries", "layer_fraction", "f1", "ttft_ms", "bytes", "pareto"])
    table_refs = markdown_table(reference_rows, ["condition", "f1", "ttft_ms", "bytes"])
    print(table, "\n\n", table_refs, sep="")
    plot(
        rows,
        {k: v for k, v in references.items() if k in ("full_context_sharer_first", "text_200", "half_context")},
        args.plot,
    )
    args.json.write_text(
        json.dumps({"environment": environment(), "policy": args.policy, "unit": args.unit, "count": args.count,
                    "rows": rows,
                    "references": reference_rows, "layer_scores": meta["kv"].get("layer_scores"),
                    "workdir": str(workdir)}, indent=2) + "\n"
    )  # fmt: skip
    print(f"wrote {args.json}, {args.plot} (evaluation in {workdir})")


if __name__ == "__main__":
    main()
