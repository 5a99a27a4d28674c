"""`evaluate`: every condition on the same questions, scored, timed, tested against the best text
condition, and written out (results.json, results.md, f1_vs_ttft.png, answers.jsonl).

The work directory records each finished batch (`eval/record.py`): rerunning the same evaluation on
it continues where a killed run stopped and writes the results an uninterrupted run writes.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from lcf_jax.data.qa import Question
from lcf_jax.eval import kv_share
from lcf_jax.eval.conditions import Answers, Setup, run_answers
from lcf_jax.eval.latency import Timing, run_latency
from lcf_jax.eval.metrics import score
from lcf_jax.eval.record import RunRecord, digest, params_digest, questions_digest
from lcf_jax.eval.report import (
    ConditionResult,
    markdown_table,
    plot_f1_vs_ttft,
    reference_condition,
    with_significance,
    write_results,
)
from lcf_jax.eval.significance import bootstrap_ci, compare_to, paired_difference

log = logging.getLogger("lcf_jax.eval")


def _median_ms(values: Sequence[float]) -> float | None:
    return 1e3 * statistics.median(values) if values else None


def stage_table(times: dict[str, list[Timing]]) -> str:
    """Median milliseconds per stage: where each condition's time to first token goes."""
    lines = [
        "| condition | sharer (prefill + write/summarise) ms | receiver to first token ms | time to first token ms |",
        "|---|---|---|---|",
    ]
    for name, rows in times.items():
        cells = [_median_ms([getattr(t, f) for t in rows]) for f in ("sharer_s", "receiver_first_s", "ttft_s")]
        lines.append(f"| {name} | " + " | ".join(f"{c:,.1f}" for c in cells) + " |")
    return "\n".join(lines)


def input_fingerprint(questions: Sequence[Question], latency_questions: int) -> dict[str, Any]:
    """The part of a run's fingerprint known before any model loads (checked first by `lcf eval`)."""
    return {
        "questions": f"{len(questions)} questions, {questions_digest(questions)}",
        "latency_questions": latency_questions,
    }


def mismatched_controls(setup: Setup) -> dict[str, str]:
    """Each message-carrying row and the control that sends another question's message instead:
    lcfx (and its empty-message and receiver-only controls) against mismatched_message, the KV rows
    against kv_share_mismatched."""
    names = setup.conditions()
    out = {n: "mismatched_message" for n in ("lcfx", "empty_message", "receiver_only") if n in names}
    kv = [c.name for c in setup.kv_rows()]
    if "kv_share_mismatched" in kv:
        out |= {n: "kv_share_mismatched" for n in kv if n != "kv_share_mismatched"}
    return {n: c for n, c in out.items() if c in names}


def with_intervals(
    results: Sequence[ConditionResult], scores: dict[str, Any], controls: dict[str, str]
) -> list[ConditionResult]:
    """Each row with its F1's 95% bootstrap interval and, where it has a mismatched control, the
    paired interval of the difference (F1 in points, 0-100)."""
    out = []
    for r in results:
        f1 = 100 * np.asarray(scores[r.name]["f1"], np.float64)
        delta = None
        if r.name in controls:
            delta = paired_difference(f1, 100 * np.asarray(scores[controls[r.name]]["f1"], np.float64))
        out.append(dataclasses.replace(r, f1_ci95=bootstrap_ci(f1), delta_vs_mismatched=delta))
    return out


def fingerprint(setup: Setup, questions: Sequence[Question], latency_questions: int) -> dict[str, Any]:
    """What a run evaluates: a rerun on the same work directory must match it to continue."""
    adapters = {name: a for name, a in (("adapter", setup.adapter), ("control", setup.control)) if a is not None}
    options = {
        "conditions": setup.conditions(),
        "budgets": list(setup.budgets),
        "max_answer_tokens": setup.max_answer_tokens,
        "sharer_sees_question": setup.sharer_sees_question,
        "kv": [dataclasses.asdict(c) for c in setup.kv_rows()],
    }
    return {
        **input_fingerprint(questions, latency_questions),
        "conditions and options": digest([options]),
        "models": digest([repr(m.config), params_digest(m.params)] for m in (setup.sharer, setup.receiver)),
        "adapters": digest([name, params_digest(nnx.state(a, nnx.Param))] for name, a in adapters.items()),
        "kv_translator": None if setup.kv_translator is None else params_digest(setup.kv_translator.arrays),
    }


def evaluate(
    setup: Setup,
    questions: Sequence[Question],
    workdir: str | Path,
    *,
    latency_questions: int = 5,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    restart: bool = False,
) -> list[ConditionResult]:
    """Run, score and report every condition of `setup` on `questions`; timings come from the
    first `latency_questions` questions run one at a time. Returns the results (also written to
    `workdir`: results.json, results.md with the table and the stage times, f1_vs_ttft.png,
    answers.jsonl). Work a killed run on `workdir` finished is reused (`restart=True` discards it)."""
    workdir = Path(workdir)
    kv = [c.name for c in setup.kv_rows()]
    record = RunRecord(
        workdir, fingerprint(setup, questions, latency_questions), restart=restart, conditions=setup.conditions(), kv=kv
    )
    if record.resumed:
        log.info(
            "continuing the evaluation in %s: %d of %d questions answered, %d timed",
            workdir, len(record.answers), len(questions), len(record.latency),
        )  # fmt: skip
    answers: Answers = run_answers(setup, questions, progress=progress, record=record)
    record.write_answers_in_order([q.id for q in questions])
    gold = [q.answers for q in questions]
    scores = {name: score(answers.by_condition[name], gold, clean=True) for name in setup.conditions()}
    start = time.perf_counter()
    timed = questions[: max(latency_questions, 2)]
    times = run_latency(setup, timed, progress=progress, record=record) if latency_questions else {}
    wall_s = {**answers.wall_s, "latency": time.perf_counter() - start}
    reference = reference_condition({name: s["f1_mean"] for name, s in scores.items()})
    results = [
        ConditionResult(
            name=name,
            f1=float(scores[name]["f1_mean"]),
            em=float(scores[name]["em_mean"]),
            ttft_ms=_median_ms([t.ttft_s for t in times.get(name, [])]),
            answer_ms=_median_ms([t.answer_s for t in times.get(name, [])]),
            n=len(questions),
            message_bytes=answers.message_bytes(setup, name),
        )
        for name in setup.conditions()
    ]
    results = with_significance(results, compare_to(reference, scores))
    results = with_intervals(results, scores, mismatched_controls(setup))
    meta = {
        "reference": reference,
        "sharer": repr(setup.sharer),
        "receiver": repr(setup.receiver),
        "budgets": list(setup.budgets),
        "sharer_sees_question": setup.sharer_sees_question,
        "latency_questions": min(len(questions), max(latency_questions, 2)) if latency_questions else 0,
        "stages_ms": {
            name: {f: _median_ms([getattr(t, f) for t in rows]) for f in ("sharer_s", "receiver_first_s", "ttft_s")}
            for name, rows in times.items()
        },
        **(meta or {}),
    }
    if setup.kv_rows():
        meta["kv"] = kv_share.describe(setup)
    meta["wall_s"] = {**meta.get("wall_s", {}), **{k: round(v, 1) for k, v in wall_s.items()}}
    write_results(workdir, results, meta=meta)
    table = markdown_table(results, reference=reference)
    stages = stage_table(times) if times else ""
    walls = "Wall time: " + ", ".join(f"{k.replace('_', ' ')} {v:,.0f} s" for k, v in meta["wall_s"].items())
    (workdir / "results.md").write_text(f"{table}\n\n{stages}\n\n{walls}\n")
    if times:
        plot_f1_vs_ttft(results, workdir / "f1_vs_ttft.png", title=f"F1 vs time to first token (n={len(questions)})")
    return results
