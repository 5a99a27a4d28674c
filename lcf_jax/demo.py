"""`lcf demo`, the main job: LCF-X against text communication on the embedded default pair.

SmolLM2-135M-Instruct (installed offline from PyPI) is both sharer and receiver. On generated
split-context questions (`lcf_jax.data.split_qa`) the demo trains the LCF-X adapter and the
receiver-only control (the same adapter trained with zero messages, in the same steps) on this
machine's CPU, then evaluates every condition of `lcf_jax.eval.conditions` on held-out questions and
writes results.json, results.md, f1_vs_ttft.png and answers.jsonl into the work directory. A second run
with the same work directory reuses the trained adapters (and an interrupted training resumes).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import ml_collections

from lcf_jax.adapters.io import load_adapter
from lcf_jax.data.split_qa import generate_questions
from lcf_jax.eval.conditions import Setup
from lcf_jax.eval.report import ConditionResult
from lcf_jax.eval.run import evaluate
from lcf_jax.models.model import Model
from lcf_jax.train.defaults import demo_config
from lcf_jax.train.loop import train
from lcf_jax.train.workdir import ADAPTER_DIR, DEMO_CONTROL, DEMO_RUN, adapter_dirs


def train_runs(
    config: ml_collections.ConfigDict, workdir: Path, models: tuple[Model, Model], progress: bool
) -> tuple[Path, Path]:
    """Train (or reuse) the LCF-X adapter and its receiver-only control: their adapter directories."""
    run_dir = workdir / DEMO_RUN
    try:
        adapter, control = adapter_dirs(workdir)
    except FileNotFoundError:
        adapter = control = None
    if adapter is None:
        print(f"training the lcfx adapter and its receiver-only control in {run_dir}", file=sys.stderr, flush=True)
        train(config, run_dir, progress=progress, models=models)
        return adapter_dirs(workdir)
    print(f"reusing the lcfx adapter in {adapter}", file=sys.stderr, flush=True)
    if control is None:  # a run trained without its control: train the control on its own
        control_config = ml_collections.ConfigDict(config.to_dict())
        control_config.adapter.with_control, control_config.adapter.receiver_only = False, True
        print(f"training the receiver-only control in {workdir / DEMO_CONTROL}", file=sys.stderr, flush=True)
        train(control_config, workdir / DEMO_CONTROL, progress=progress, models=models)
        control = workdir / DEMO_CONTROL / ADAPTER_DIR
    else:
        print(f"reusing the receiver-only control in {control}", file=sys.stderr, flush=True)
    return adapter, control


def demo(
    workdir: str | Path,
    *,
    config: ml_collections.ConfigDict | None = None,
    models: tuple[Model, Model] | None = None,
    progress: bool = True,
) -> list[ConditionResult]:
    """Train (or reuse), evaluate, print the table. `models` (sharer, receiver) replaces loading the
    default pair (tests pass tiny ones)."""
    workdir = Path(workdir)
    config = config or demo_config()
    if models is None:
        from lcf_jax.loading import load_model  # noqa: PLC0415 - only the real run loads a checkpoint

        model = load_model(config.receiver, dtype=config.model_dtype)
        models = (model, model)
    start = time.perf_counter()
    adapter_dir, control_dir = train_runs(config, workdir, models, progress)
    training_s = time.perf_counter() - start  # ~0 when a previous run's adapters are reused
    e = config.eval
    questions = generate_questions("test", e.count, seed=e.seed, variant=config.data.variant)
    setup = Setup(
        *models,
        adapter=load_adapter(adapter_dir),
        control=load_adapter(control_dir),
        sharer_sees_question=config.data.sharer_sees_question,
        batch_size=e.batch_size,
        budgets=tuple(e.budgets),
        progress="auto" if progress else "off",
    )
    meta: dict[str, Any] = {
        "dataset": f"split_qa test ({config.data.variant}), seed {e.seed}",
        "train": {k: config.train[k] for k in ("steps", "batch_size", "learning_rate")}
        | {"examples": config.data.count, "latent_width": config.adapter.options.latent_width},
        "wall_s": {"training": training_s},
    }
    results = evaluate(setup, questions, workdir, latency_questions=e.latency_questions, meta=meta, progress=progress)
    print((workdir / "results.md").read_text(), flush=True)  # the table and the stage times
    print(f"wrote {workdir / 'results.json'}, results.md, f1_vs_ttft.png, answers.jsonl", flush=True)
    return results
