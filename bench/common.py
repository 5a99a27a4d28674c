"""What every benchmark under bench/ shares: the environment record (device, date, versions, allocator,
command), timing (results blocked on, compilations counted), result rows, and one report format (JSON
+ a markdown table to append to BENCHMARKS.md). Every number carries its device, date, versions and
command.

Importing this module imports nothing of lcf_jax: bench/gpu.py imports lcf_jax its own way first
(`import_lcf_jax`), then every lcf_jax module comes through `lcf(name)`. A CPU benchmark calls
`tune_allocator()` first thing, so it runs with the `lcf` command's allocator settings.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
# Package versions every record lists (those installed), then Python's.
PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda12-plugin",
    "jax-cuda12-pjrt",
    "jax-cuda13-plugin",
    "jax-cuda13-pjrt",
    "flax",
    "optax",
    "numpy",
    "torch",
    "transformers",
)
ENV_VARS = (
    "XLA_FLAGS",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_ALLOCATOR",
    "JAX_PLATFORMS",
    "CUDA_VISIBLE_DEVICES",
)


# ----------------------------------------------------------------------------- lcf_jax, imported lazily


def lcf(name: str) -> types.ModuleType:
    """A module of lcf_jax, imported when a benchmark first needs it."""
    return importlib.import_module(f"lcf_jax.{name}")


def import_lcf_jax() -> dict[str, Any]:
    """Import lcf_jax from the working tree. If its `__init__` needs a third-party module this image
    lacks (it pulls in the checkpoint loaders: tqdm, safetensors), register the package without
    running `__init__`, so the submodules the benchmark uses (models, sampling, adapters,
    communicate, train.step) still import; a section needing a missing module then fails alone."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        importlib.import_module("lcf_jax")
        return {"mode": "package", "path": str(ROOT / "lcf_jax")}
    except ImportError as error:
        for name in [n for n in sys.modules if n == "lcf_jax" or n.startswith("lcf_jax.")]:
            del sys.modules[name]
        package = types.ModuleType("lcf_jax")
        package.__path__ = [str(ROOT / "lcf_jax")]
        package.__file__ = str(ROOT / "lcf_jax" / "__init__.py")
        sys.modules["lcf_jax"] = package
        return {"mode": "submodules only (lcf_jax/__init__ not run)", "reason": repr(error)}


def third_party_modules() -> list[str]:
    """Top-level third-party modules loaded so far (what this run needed): not the standard library,
    not lcf_jax, not bench/'s own modules."""
    names = {n.split(".")[0] for n in list(sys.modules)}
    ours = {"lcf_jax", *(p.stem for p in BENCH.glob("*.py"))}
    return sorted(n for n in names if n not in sys.stdlib_module_names and not n.startswith("_") and n not in ours)


_allocator_tuned = False


def tune_allocator() -> bool:
    """The `lcf` command's allocator settings (`lcf_jax.runtime.tune_cpu_allocator`; BENCHMARKS.md),
    for both sides of a comparison (they share the process). LCF_DEFAULT_MALLOC=1 measures without
    them. Call it before the benchmark allocates; `environment()` reports whether it is in effect."""
    global _allocator_tuned
    _allocator_tuned = lcf("runtime").tune_cpu_allocator()
    return _allocator_tuned


def compile_count() -> int:
    """XLA programs compiled by this process so far (`lcf_jax.runtime.compile_count`, which starts
    listening on its first call): a timed call that changed it paid for a compilation."""
    return lcf("runtime").compile_count()


# ----------------------------------------------------------------------------- environment


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """`model name` from /proc/cpuinfo, plus family/model numbers (a VM often says only "AMD EPYC")."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name", platform.machine())
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def _device_name(devices: list) -> str:
    if devices[0].platform != "cpu":
        return f"{len(devices)} x {devices[0].device_kind}"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU: {cpu_name()}, {os.cpu_count()} cores ({usable} usable)"


def _git() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return {"commit": commit or None, "modified_files": len(dirty.splitlines())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}


def _gpu_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(*, packages: Sequence[str] = (), command: str | None = None) -> dict[str, Any]:
    """Where a number was measured: device, date, package versions (`PACKAGES` and `packages`, those
    installed), allocator, command (`command`, else this process's command line), the XLA/JAX
    environment variables set, git commit and host. Starts the JAX backend; changes nothing."""
    devices = jax.devices()
    memory = None
    with contextlib.suppress(Exception):
        memory = (devices[0].memory_stats() or {}).get("bytes_limit")
    versions = {p: v for p in (*PACKAGES, *packages) if (v := _version(p))}
    versions["python"] = platform.python_version()
    return {
        "device": _device_name(devices),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions,
        "allocator": "glibc tuned (lcf_jax.runtime)" if _allocator_tuned else "default",
        "command": command or shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "platform": devices[0].platform,
        "device_memory_limit_bytes": memory,
        "nvidia_smi": _gpu_driver(),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "git": _git(),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
    }


# ----------------------------------------------------------------------------- timing


def block(x: Any) -> Any:
    return jax.block_until_ready(x)


def timed(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Wall seconds of `fn()` (blocked on, so asynchronous dispatch is timed to completion) after
    `warmup` calls: median, min, samples, and how many compilations happened during the timed calls."""
    for _ in range(warmup):
        block(fn())
    before = compile_count()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        samples.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "samples_s": samples,
        "compiles": compile_count() - before,
    }


def timeit(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` after `warmup` calls (see `timed`)."""
    return timed(fn, repeats=repeats, warmup=warmup)["median_s"]


def pipelined(fn: Callable[[], Any], *, calls: int, rounds: int) -> dict[str, Any]:
    """Seconds per call with `calls` calls dispatched back to back (launch overhead hidden), best and
    median over `rounds`. The device runs calls in order, so blocking on the last one waits for all."""
    block(fn())
    before = compile_count()
    per_call = []
    for _ in range(rounds):
        start = time.perf_counter()
        out = None
        for _ in range(calls):
            out = fn()
        block(out)
        per_call.append((time.perf_counter() - start) / calls)
    return {
        "best_s": min(per_call),
        "median_s": statistics.median(per_call),
        "samples_s": per_call,
        "compiles": compile_count() - before,
    }


# ----------------------------------------------------------------------------- rows and reports


def row(what: str, value: Any, unit: str = "", goal: str = "", ok: bool | None = None, **extra: Any) -> dict:
    """One result: a measurement, its value and unit, and against a goal a verdict (pass / MISS)."""
    verdict = "" if ok is None else ("pass" if ok else "MISS")
    return {"measurement": what, "value": value, "unit": unit, "goal": goal, "verdict": verdict, **extra}


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
