"""The GPU benchmark's run (bench/gpu.py): its sizes (full and `--tiny`), the state its sections share
(budget, log, random-weight models built once, results), and its report: `gpu_bench.json` and the
`gpu_bench.md` table, rewritten after every section so a run cut short still reports."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import block, compile_count, environment, lcf, third_party_modules

SHARER, RECEIVER = "qwen2.5-0.5b", "qwen3-0.6b"
SECTIONS = ("floors", "parity", "models_jax", "ttft", "train", "models_torch")


# ----------------------------------------------------------------------------- sizes


@dataclasses.dataclass(frozen=True)
class Sizes:
    tiny: bool = False
    copy_mib: int = 1024
    matmul_n: int = 8192
    floor_calls: int = 10
    floor_rounds: int = 5
    prompt: int = 512
    new_tokens: int = 128
    prefill_tokens: int = 2048
    repeats: int = 5
    decode_repeats: int = 5
    torch_new_tokens: int = 64
    parity_layers: int = 2
    parity_tokens: int = 64
    parity_new_tokens: int = 8
    train_batch: int = 16
    train_prefix: int = 1000
    train_suffix: int = 24
    train_micro: int = 1
    train_steps: int = 5
    latent_width: int = 128
    context: int = 512
    budgets: tuple[int, ...] = (50, 200)
    spans: int = 10
    ttft_repeats: int = 5
    ttft_paper_pair: bool = True  # also LCF-X Qwen3-0.6B -> Qwen3-0.6B
    c2c_hidden: int = 1024
    model_names: tuple[str, ...] = (RECEIVER, SHARER)  # parity, models_jax, models_torch
    # rough seconds each part needs at these sizes, compiles included (a part is skipped if less is left)
    estimates: tuple[tuple[str, float], ...] = (
        ("floors", 10),
        ("parity", 25),
        ("models_jax", 35),  # per model
        ("ttft", 60),
        ("train", 50),
        ("models_torch", 20),  # per model
    )

    def estimate(self, what: str) -> float:
        return dict(self.estimates)[what]


FULL = Sizes()
TINY = Sizes(
    tiny=True,
    copy_mib=16,
    matmul_n=256,
    floor_calls=3,
    floor_rounds=2,
    prompt=40,
    new_tokens=6,
    prefill_tokens=64,
    repeats=2,
    decode_repeats=2,
    torch_new_tokens=4,
    parity_tokens=16,
    parity_new_tokens=4,
    train_batch=2,
    train_prefix=56,
    train_suffix=8,
    train_steps=2,
    latent_width=16,
    context=40,
    budgets=(5, 20),
    spans=4,
    ttft_repeats=2,
    ttft_paper_pair=False,
    c2c_hidden=64,
    model_names=(RECEIVER,),
    estimates=tuple((k, 1.0) for k in SECTIONS),
)


def tiny_config(config):
    """A 2-3 layer, 64-wide, 512-token-vocabulary model of the same family (`--tiny`)."""
    common = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        max_position_embeddings=4096,
    )
    if config.family == "qwen3":  # head_dim != hidden / heads, like the real one; more layers than the sharer
        return config.replace(**common, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=32)
    return config.replace(**common, num_layers=2, num_heads=4, num_kv_heads=1, head_dim=16)


# ----------------------------------------------------------------------------- run state


class SectionSkipped(Exception):
    """Raised inside a section to skip the rest of it with a reason."""


class Run:
    def __init__(self, args: argparse.Namespace, sizes: Sizes, imports: dict[str, Any], start: float):
        self.args = args
        self.sizes = sizes
        self.start = start  # the budget counts from here
        self.deadline = self.start + args.budget_s
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = self.out / "progress.log"
        self.progress.write_text("")
        self.sections: dict[str, dict[str, Any]] = {}
        self.current: str | None = None
        self.ctx: dict[str, Any] = {}  # results and objects shared between sections
        self._models: dict[tuple[str, str], Any] = {}
        self.imports = imports
        self.env = environment(command=os.environ.get("GPU_BENCH_COMMAND"))
        self.finished = False
        self.lock = threading.Lock()

    # -- time
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def fits(self, seconds: float, what: str, notes: list[str]) -> bool:
        if self.remaining() >= seconds:
            return True
        notes.append(f"skipped {what}: needs ~{seconds:.0f} s, {self.remaining():.0f} s of the budget left")
        self.log(notes[-1])
        return False

    def log(self, message: str) -> None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S")
        line = f"[{stamp} +{self.elapsed():6.1f}s] {message}"
        print(line, flush=True)
        with contextlib.suppress(OSError), self.progress.open("a") as f:
            f.write(line + "\n")

    # -- models (random weights, built once, shared by sections)
    def config(self, name: str):
        config = lcf("models").preset(name)
        return tiny_config(config) if self.sizes.tiny else config

    def model(self, name: str, dtype: str = "bfloat16"):
        key = (name, dtype)
        if key not in self._models:
            start = time.perf_counter()
            self._models[key] = lcf("models.model").Model.random(self.config(name), dtype=dtype, seed=len(self._models))
            block(self._models[key].params)
            self.log(f"built {name} ({dtype}, random weights) in {time.perf_counter() - start:.1f} s")
        return self._models[key]

    # -- sections
    def section(self, name: str, fn: Callable[[Run], tuple[list[dict], dict]]) -> None:
        """Run one section, recording its rows and details, or why it was skipped, or its error."""
        if name in self.args.skip or (self.args.only and name not in self.args.only):
            self.sections[name] = {"status": "skipped", "reason": "not selected (--only/--skip)"}
            self.write()
            return
        estimate = self.sizes.estimate(name)
        if self.remaining() < estimate:
            reason = f"would not fit: needs ~{estimate:.0f} s, {self.remaining():.0f} s of the budget left"
            self.sections[name] = {"status": "skipped", "reason": reason}
            self.log(f"== {name}: skipped, {reason}")
            self.write()
            return
        self.log(f"== {name} (budget left {self.remaining():.0f} s)")
        self.current = name
        started, compiles = time.monotonic(), compile_count()
        record: dict[str, Any] = {"status": "running"}
        self.sections[name] = record
        try:
            rows, details = fn(self)
            record.update(status="ok", rows=rows, details=details)
        except SectionSkipped as skip:
            record.update(status="skipped", reason=str(skip))
            self.log(f"{name}: skipped, {skip}")
        except Exception as error:  # noqa: BLE001 - every failure is recorded and the run goes on
            record.update(status="error", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
            self.log(f"{name}: ERROR {type(error).__name__}: {error}")
            print(traceback.format_exc(), flush=True)
        finally:
            record["seconds"] = round(time.monotonic() - started, 2)
            record["compiles"] = compile_count() - compiles
            self.current = None
            self.log(f"{name}: {record['status']} in {record['seconds']:.1f} s ({record['compiles']} compilations)")
            gc.collect()
            self.write()

    # -- output
    def result(self) -> dict[str, Any]:
        return {
            "benchmark": "gpu",
            "title": "lcf_jax GPU benchmark"
            + (" (--tiny: shapes shrunk, numbers meaningless)" if self.sizes.tiny else ""),
            "environment": self.env,
            "imports": {**self.imports, "third_party_modules_at_end": third_party_modules()},
            "settings": {**dataclasses.asdict(self.sizes), "budget_s": self.args.budget_s},
            "sections": self.sections,
            "summary": summary(self.sections),
            "finished": self.finished,
            "total_s": round(self.elapsed(), 1),
        }

    def write(self) -> None:
        with self.lock:
            result = self.result()
            (self.out / "gpu_bench.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
            (self.out / "gpu_bench.md").write_text(markdown(result) + "\n")


# ----------------------------------------------------------------------------- report


def summary(sections: dict[str, dict]) -> dict[str, Any]:
    goals = [
        {"section": name, **{k: r[k] for k in ("measurement", "value", "goal", "verdict")}}
        for name, s in sections.items()
        for r in s.get("rows", [])
        if r.get("verdict")
    ]
    return {
        "statuses": {name: s["status"] for name, s in sections.items()},
        "goals_met": sum(g["verdict"] == "pass" for g in goals),
        "goals_missed": [g for g in goals if g["verdict"] == "MISS"],
        "errors": {name: s["error"] for name, s in sections.items() if s["status"] == "error"},
    }


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def _section_lines(name: str, section: dict[str, Any], notes: list[str]) -> list[str]:
    """One section's table rows (or its status), adding its notes to `notes`."""
    if section["status"] != "ok":
        detail = section.get("reason") or section.get("error") or ""
        return [f"| {name} | **{section['status']}**: {detail.replace('|', '/')} | | | | |"]
    lines = []
    for r in section["rows"]:
        cells = (name, r["measurement"].strip(), _cell(r["value"]), r["unit"], r["goal"], r["verdict"])
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if r.get("note"):
            notes.append(f"- {name}, {r['measurement'].strip()}: {r['note']}")
    notes += [f"- {name}: {n}" for n in section.get("details", {}).get("notes", [])]
    return lines


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [
        f"### {result['title']}",
        "",
        f"{env['device']}; {env['date']}; {versions}",
        f"Command: `{env['command']}`; git {(env['git'].get('commit') or 'unknown')[:12]}",
        f"Environment: {json.dumps(env['env'])}; lcf_jax imported as: {result['imports']['mode']}",
        f"Total {result['total_s']:.0f} s{'' if result['finished'] else ' (not finished)'}.",
        "",
        "| section | measurement | value | unit | goal | verdict |",
        "|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for name, section in result["sections"].items():
        lines += _section_lines(name, section, notes)
    if notes:
        lines += ["", "Notes (TTFT stages in ms):", *notes]
    lines += [
        "",
        "FLOPs: forward = 2 * layer matmul params * tokens + 4 * L * N * H * (causal query-key pairs) + 2 * D * V * "
        "(lm-head rows); train step = sharer + receiver forward over the prefix + receiver suffix forward + its "
        "backward to activations (linear and lm head once, attention twice) + adapter 3 * 2 * params * tokens. "
        "Floors: decode weight-read floor = parameter bytes read per token / measured copy bandwidth.",
    ]
    return "\n".join(lines)
