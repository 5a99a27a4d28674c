"""The benchmark harness: timing, the environment record, and one report format (JSON + a markdown
table to append to BENCHMARKS.md). Every number carries its device, date, versions and command."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

from lcf_jax.runtime import tune_cpu_allocator

# Every benchmark runs with the allocator settings the `lcf` command uses (lcf_jax/runtime.py), for
# both sides of a comparison (they share the process). LCF_DEFAULT_MALLOC=1 measures without them.
ALLOCATOR_TUNED = tune_cpu_allocator()

ROOT = Path(__file__).resolve().parent.parent


def timeit(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` after `warmup` calls (results are blocked on, so asynchronous
    dispatch is timed to completion)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    devices = jax.devices()
    versions = {}
    for name in ("jax", "jaxlib", "flax", "torch", "transformers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    if devices[0].platform == "cpu":
        device = f"CPU: {_cpu_name()}, {os.cpu_count()} cores"
    else:
        device = f"{len(devices)} x {devices[0].device_kind}"
    return {
        "device": device,
        "date": datetime.date.today().isoformat(),
        "versions": versions,
        "allocator": "glibc tuned (lcf_jax.runtime)" if ALLOCATOR_TUNED else "default",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) >= 1 else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def report(
    title: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    *,
    json_path: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """Print (and return) a markdown section with the environment; optionally write JSON."""
    env = environment()
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    text = "\n".join(
        [
            f"### {title}",
            "",
            f"{env['device']}; {env['date']}; {versions}; allocator {env['allocator']}",
            f"Command: `{env['command']}`",
            "",
            markdown_table(rows, columns),
            *(["", *notes] if notes else []),
        ]
    )
    print(text, flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps({"title": title, **env, "rows": list(rows)}, indent=2) + "\n")
    return text
