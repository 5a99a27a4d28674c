"""The GPU half of the speed story in one run: hardware floors, model prefill/decode (against
transformers in the same process), the adapter training step and communication time to first
token, with a correctness check first. Random weights at the real shapes, no network, no
checkpoints. Run it through `bench/gpu.sh` (which sets the memory flags and keeps a log):

    bash bench/gpu.sh [--tiny] [--budget-s 420] [--only floors,train] [--train-micro 1]
    PYTHONPATH=. python bench/gpu.py --out DIR [...]

Writes `gpu_bench.json` (everything), `gpu_bench.md` (the table) and `progress.log` under `--out`
(default `$OUT`, else `./gpu_out`), rewritten after every section so a run cut short still reports.
`--tiny` (or `GPU_BENCH_TINY=1`) shrinks every shape (2-3 layer models, 64-wide, 512-token vocab,
tens of tokens) so the whole script runs on a CPU in about a minute: the code path, not the numbers.

Sections, in order (each one's exception is recorded and the run goes on; a section whose estimate
does not fit the remaining `--budget-s` is skipped, saying so; a watchdog writes what there is and
exits at `--hard-limit-s`):

floors        device copy bandwidth: y = -x over a 1 GiB bf16 buffer, (bytes read + written) / time
              (also `jnp.copy` and a read-only sum); bf16 matmul peak: 8192^3 `jnp.matmul`, 2 n^3 / time.
              Both: 10 calls dispatched back to back, best of 5 rounds.
parity        lcf_jax float32 forward logits vs transformers' PyTorch model holding the same random
              weights (2-layer Qwen3-0.6B and Qwen2.5-0.5B shapes, 64 tokens, JAX at "highest" matmul
              precision; PyTorch on CUDA with TF32 off, else on the CPU): max |diff| / max |logit|,
              goal <= 1e-4; and three `generate` calls with new prompts of the same shape must
              compile nothing after the first.
models_jax    Qwen3-0.6B and Qwen2.5-0.5B shapes, bf16, batch 1. Decode: `lcf_jax.generate`, 128
              greedy tokens after a 512-token prompt, (time(128) - time(1)) / 127 (both calls use
              one cache capacity, so their prefills are the same program); against the weight-read
              floor = parameter bytes read per token / copy bandwidth (tied embeddings: the whole
              table is the lm head), goal <= 1.5x. Prefill: 2,048 tokens, `last_only` logits;
              model FLOPs = 2 * (layer matmul params) * T + 4 * L * N * H * T(T+1)/2 (causal QK^T
              and PV) + 2 * D * V (one lm-head row), as % of the measured matmul peak, goal >= 40%.
              Also one decode forward (a single dispatch, no loop) and XLA's cost_analysis flops.
ttft          time to first token at batch 1, 512-token contexts of random ids, Qwen2.5-0.5B sharer ->
              Qwen3-0.6B receiver (and the paper's LCF-X pair, Qwen3-0.6B -> Qwen3-0.6B), stage by
              stage, each stage blocked on: sharer prefill; summary (lcfx) or fuse (lcf, c2c); transfer
              (message or sharer cache: device -> host -> device, bytes reported); receiver prefill;
              receiver apply; receiver first token (`generate(..., 1)` from the last prompt token).
              Text: the sharer's prefill + N greedy tokens (one `generate`), the receiver's prefill of
              context + message, first token. Every shape is run once first (compiles); the timed
              passes must compile nothing. Goal TTFT(text_200) / TTFT(lcfx) >= 20.
train         the jitted `make_train_step` for the paper's shared-context pair (Qwen2.5-0.5B ->
              Qwen3-0.6B, lcf, latent 128, all 28 layers, bf16 models, float32 adapter params with
              bf16 matmuls, AdamW), batch 16 x (1,000 prefix + 24 suffix) tokens; steps dispatched
              back to back. MFU = model FLOPs / step time / measured peak, model FLOPs =
                sharer forward over the prefix + receiver forward over the prefix (as prefill above,
                one lm-head row per sequence)
                + receiver suffix forward (24 tokens after 1,000 cached: linear + attention + lm head)
                + its backward to activations (= linear + lm head once more, attention twice: the
                  models are frozen, no weight gradients)
                + adapter forward and backward = 3 * 2 * (adapter matmul params) * B * prefix tokens.
              Goal >= 35%. XLA's `compiled.cost_analysis()` flops are reported beside it (XLA counts a
              while-loop body once, and the layers are a scan, so that number is not comparable).
models_torch  transformers' model of the same config (random init, bf16, `attn_implementation="sdpa"`)
              in the same process: prefill of the same 2,048 tokens (`logits_to_keep=1`) and decode
              ms/token of greedy `generate(min_new_tokens=N)`, (time(N) - time(1)) / (N - 1); ratios
              lcf_jax speed / PyTorch speed (> 1: lcf_jax faster). Skipped when torch has no CUDA while
              JAX runs on a GPU.

FLOP counts leave out norms, RoPE, softmax, biases and the embedding gather.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import importlib
import inspect
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PROCESS_START = time.monotonic()  # the budget counts from here (jax is imported; CUDA not yet started)
ROOT = Path(__file__).resolve().parent.parent
SHARER, RECEIVER = "qwen2.5-0.5b", "qwen3-0.6b"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
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


# ----------------------------------------------------------------------------- imports


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


def lcf(name: str) -> types.ModuleType:
    """A module of lcf_jax, imported when a section first needs it."""
    return importlib.import_module(f"lcf_jax.{name}")


def third_party_modules() -> list[str]:
    """Top-level third-party modules loaded so far (what this run needed)."""
    names = {n.split(".")[0] for n in list(sys.modules)}
    return sorted(
        n
        for n in names
        if n not in sys.stdlib_module_names and not n.startswith("_") and n not in ("lcf_jax", "harness")
    )


# ----------------------------------------------------------------------------- run state, timing


class Compiles:
    """Counts XLA backend compilations (jax.monitoring), to prove timed calls compile nothing."""

    count = 0

    @classmethod
    def listen(cls, event: str, duration: float, **_: Any) -> None:
        if event == COMPILE_EVENT:
            cls.count += 1


def block(x: Any) -> Any:
    return jax.block_until_ready(x)


def timed(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Wall seconds of `fn()` (blocked on) after `warmup` calls: median, min, samples, and how many
    compilations happened during the timed calls."""
    for _ in range(warmup):
        block(fn())
    before = Compiles.count
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        samples.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "samples_s": samples,
        "compiles": Compiles.count - before,
    }


def pipelined(fn: Callable[[], Any], *, calls: int, rounds: int) -> dict[str, Any]:
    """Seconds per call with `calls` calls dispatched back to back (launch overhead hidden), best and
    median over `rounds`. The device runs calls in order, so blocking on the last one waits for all."""
    block(fn())
    before = Compiles.count
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
        "compiles": Compiles.count - before,
    }


def row(what: str, value: Any, unit: str = "", goal: str = "", ok: bool | None = None, **extra: Any) -> dict:
    verdict = "" if ok is None else ("pass" if ok else "MISS")
    return {"measurement": what, "value": value, "unit": unit, "goal": goal, "verdict": verdict, **extra}


class SectionSkipped(Exception):
    """Raised inside a section to skip the rest of it with a reason."""


class Run:
    def __init__(self, args: argparse.Namespace, sizes: Sizes, imports: dict[str, Any]):
        self.args = args
        self.sizes = sizes
        self.start = PROCESS_START
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
        self.env = environment()
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
        started, compiles = time.monotonic(), Compiles.count
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
            record["compiles"] = Compiles.count - compiles
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


# ----------------------------------------------------------------------------- environment


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


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


def environment() -> dict[str, Any]:
    """bench/harness.py's record (device, date, versions, allocator, command), extended for GPUs."""
    base: dict[str, Any] = {}
    with contextlib.suppress(Exception):  # harness imports lcf_jax.runtime; never fail the run over it
        base = importlib.import_module("harness").environment()
    devices = jax.devices()
    device = devices[0]
    if device.platform == "cpu":
        cpu = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        name = f"CPU: {cpu}, {os.cpu_count()} cores"
    else:
        name = f"{len(devices)} x {device.device_kind}"
    memory = None
    with contextlib.suppress(Exception):
        stats = device.memory_stats() or {}
        memory = stats.get("bytes_limit")
    packages = (
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
    versions = {p: v for p in packages if (v := _version(p))}
    versions["python"] = platform.python_version()
    return {
        **base,
        "device": name,
        "platform": device.platform,
        "device_memory_limit_bytes": memory,
        "nvidia_smi": _gpu_driver(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions,
        "command": os.environ.get("GPU_BENCH_COMMAND")
        or shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "env": {
            k: os.environ[k]
            for k in (
                "XLA_FLAGS",
                "XLA_PYTHON_CLIENT_PREALLOCATE",
                "XLA_PYTHON_CLIENT_MEM_FRACTION",
                "XLA_PYTHON_CLIENT_ALLOCATOR",
                "JAX_PLATFORMS",
                "CUDA_VISIBLE_DEVICES",
            )
            if k in os.environ
        },
        "git": _git(),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
    }


# ----------------------------------------------------------------------------- FLOP counts


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


def linear_params(config) -> int:
    """Matmul weights one token passes through in the layers (q, k, v, o, gate, up, down)."""
    d, n, k, h, f = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim, config.intermediate_size
    return config.num_layers * (d * n * h + 2 * d * k * h + n * h * d + 3 * d * f)


def forward_flops(config, new: int, *, past: int = 0, lm_rows: int | None = None, batch: int = 1) -> dict[str, int]:
    """Model FLOPs of one forward over `new` tokens after `past` cached ones: 2 per multiply-add of the
    layer matmuls, causal attention (QK^T and PV over the keys each query may see) and the lm head
    over `lm_rows` positions (default every new token)."""
    pairs = new * past + new * (new + 1) // 2
    out = {
        "linear": 2 * linear_params(config) * new,
        "attention": 4 * config.num_layers * config.num_heads * config.head_dim * pairs,
        "lm_head": 2 * config.hidden_size * config.vocab_size * (new if lm_rows is None else lm_rows),
    }
    out = {k: v * batch for k, v in out.items()}
    out["total"] = sum(out.values())
    return out


def weight_read_bytes(model) -> dict[str, int]:
    """Bytes of parameters one decode step reads: all of them, except that an untied embedding table
    is only gathered (one row); a tied one is read whole as the lm head."""
    flat = lcf("models.model").flat_from_state(model.params)
    total = sum(int(x.size) * x.dtype.itemsize for x in flat.values())
    embed = flat["embed_tokens.embedding"]
    if not model.config.tie_word_embeddings:
        total -= int(embed.size - embed.shape[1]) * embed.dtype.itemsize
    return {"bytes": total, "params": sum(int(x.size) for x in flat.values())}


def cost_flops(compiled) -> float | None:
    """XLA's own flop estimate of a compiled program (a dict, or a list of one dict in older jax)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


# ----------------------------------------------------------------------------- sections


def section_floors(run: Run) -> tuple[list[dict], dict]:
    sz = run.sizes
    n = sz.copy_mib * (1 << 20) // 2
    x = block(jnp.arange(n, dtype=jnp.int32).astype(jnp.bfloat16))
    nbytes = n * 2
    negate = jax.jit(lambda a: -a)
    copy = jax.jit(jnp.copy)
    read = jax.jit(lambda a: jnp.sum(a, dtype=jnp.float32))
    t_neg = pipelined(lambda: negate(x), calls=sz.floor_calls, rounds=sz.floor_rounds)
    t_copy = pipelined(lambda: copy(x), calls=sz.floor_calls, rounds=sz.floor_rounds)
    t_read = pipelined(lambda: read(x), calls=sz.floor_calls, rounds=sz.floor_rounds)
    bw_neg = 2 * nbytes / t_neg["best_s"]
    bw_copy = 2 * nbytes / t_copy["best_s"]
    bw_read = nbytes / t_read["best_s"]
    # jnp.copy may be forwarded without a kernel (the output is the input buffer): then it is not used.
    copy_ok = True
    with contextlib.suppress(Exception):
        copy_ok = copy(x).unsafe_buffer_pointer() != x.unsafe_buffer_pointer()
    copy_bw = max(bw_neg, bw_copy) if copy_ok else bw_neg

    m = sz.matmul_n
    ka, kb = jax.random.split(jax.random.key(0))
    a = block(jax.random.normal(ka, (m, m), jnp.bfloat16))
    b = block(jax.random.normal(kb, (m, m), jnp.bfloat16))
    matmul = jax.jit(jnp.matmul)
    t_mm = pipelined(lambda: matmul(a, b), calls=sz.floor_calls, rounds=sz.floor_rounds)
    peak = 2 * m**3 / t_mm["best_s"]
    run.ctx.update(copy_bw=copy_bw, read_bw=bw_read, peak_flops=peak)
    rows = [
        row(f"device copy bandwidth (y = -x, {sz.copy_mib} MiB bf16; read + written)", bw_neg / 1e9, "GB/s"),
        row(
            f"device copy bandwidth (jnp.copy, {sz.copy_mib} MiB)",
            bw_copy / 1e9,
            "GB/s",
            note="" if copy_ok else "the copy returned its input buffer (no kernel ran): not used",
        ),
        row("copy bandwidth used for the floors", copy_bw / 1e9, "GB/s"),
        row(f"device read bandwidth (sum of {sz.copy_mib} MiB bf16)", bw_read / 1e9, "GB/s"),
        row(f"bf16 matmul peak ({m}^3, best of {sz.floor_rounds} x {sz.floor_calls} calls)", peak / 1e12, "TFLOP/s"),
    ]
    details = {"negate": t_neg, "copy": t_copy, "read": t_read, "matmul": t_mm, "bytes": nbytes, "matmul_n": m}
    return rows, details


def _torch_device(run: Run) -> tuple[Any, str | None, str | None]:
    """(torch, device, reason): PyTorch and where it runs (CUDA; the CPU when JAX runs on the CPU)."""
    try:
        torch = importlib.import_module("torch")
        importlib.import_module("transformers")
    except Exception as error:  # noqa: BLE001 - ImportError, or a CUDA library clash: skip PyTorch alone
        return None, None, f"torch/transformers not importable: {error!r}"
    if torch.cuda.is_available():
        return torch, "cuda", None
    if run.env["platform"] == "cpu":
        return torch, "cpu", None
    return torch, None, f"torch {torch.__version__} has no CUDA"


def torch_model(config, dtype, device: str):
    """transformers' model of the same architecture, random init, on `device`."""
    transformers = importlib.import_module("transformers")
    torch = importlib.import_module("torch")
    transformers.logging.set_verbosity_error()
    hf = lcf("models").to_hf_config(config)
    hf.setdefault("rope_theta", config.rope_theta)  # transformers 4.x reads this, 5.x rope_parameters
    config_cls = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config"}[config.family]
    hf_config = getattr(transformers, config_cls)(**hf)
    with torch.device(device):
        try:
            model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation="sdpa")
        except TypeError:  # transformers before `dtype`
            model = transformers.AutoModelForCausalLM.from_config(
                hf_config, torch_dtype=dtype, attn_implementation="sdpa"
            )
    return model.eval()


def section_parity(run: Run) -> tuple[list[dict], dict]:
    sz = run.sizes
    torch, device, reason = _torch_device(run)
    if torch is None:
        raise SectionSkipped(reason)
    if device is None:
        device = "cpu"  # a float32 reference works anywhere
    model_mod, sampling = lcf("models.model"), lcf("sampling")
    keymap = lcf("loading.keymap")
    torch.set_float32_matmul_precision("highest")
    rows, details = [], {"torch_device": device}
    for name in sz.model_names:
        config = run.config(name)
        if not sz.tiny:
            config = config.replace(num_layers=sz.parity_layers)
        model = model_mod.Model.random(config, dtype="float32", seed=7)
        # Biases start at 0 and norms at 1: perturb them so a mistake there would show in the logits.
        flat = model_mod.flat_from_state(model.params)
        key = jax.random.key(1)
        for i, path in enumerate(sorted(flat)):
            if path.endswith("bias") or "norm" in path:
                flat[path] = flat[path] + 0.1 * jax.random.normal(jax.random.fold_in(key, i), flat[path].shape)
        model = model_mod.Model(
            config, model.graphdef, model_mod.state_from_flat(model.params, flat), dtype=jnp.float32
        )
        tokens = np.random.RandomState(3).randint(0, config.vocab_size, (1, sz.parity_tokens)).astype(np.int32)
        with jax.default_matmul_precision("highest"):
            ours = np.asarray(model(tokens)[0])
        ours_default = np.asarray(model(tokens)[0])

        hf = torch_model(config, torch.float32, device)
        state = {
            k: torch.from_numpy(np.array(v, np.float32))
            for k, v in keymap.flat_to_hf({p: np.asarray(a) for p, a in flat.items()}).items()
        }
        result = hf.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"weight transfer: missing {missing}, unexpected {result.unexpected_keys}")
        with torch.inference_mode():
            ids = torch.tensor(tokens, dtype=torch.long, device=device)
            ref = hf(ids).logits.float().cpu().numpy()
        scale = float(np.abs(ref).max())
        diff = float(np.abs(ours - ref).max())
        diff_default = float(np.abs(ours_default - ref).max())
        argmax = float((ours.argmax(-1) == ref.argmax(-1)).mean())

        # generate: the same shape with new prompts compiles nothing after the first call.
        gen_tokens = []
        with jax.default_matmul_precision("highest"):
            before = None
            for seed in range(3):
                prompt = np.random.RandomState(10 + seed).randint(0, config.vocab_size, (1, sz.parity_tokens))
                if seed == 1:
                    before = Compiles.count
                gen_tokens.append(
                    sampling.generate(model, prompt.astype(np.int32), sz.parity_new_tokens, stop_tokens=[]).tokens
                )
            recompiles = Compiles.count - before
        prompt = np.random.RandomState(12).randint(0, config.vocab_size, (1, sz.parity_tokens))
        with torch.inference_mode():
            torch_gen = hf.generate(
                torch.tensor(prompt, dtype=torch.long, device=device),
                attention_mask=torch.ones((1, sz.parity_tokens), dtype=torch.long, device=device),
                max_new_tokens=sz.parity_new_tokens,
                min_new_tokens=sz.parity_new_tokens,
                do_sample=False,
                pad_token_id=0,
            )[0, sz.parity_tokens :].tolist()
        agree = sum(int(a == b) for a, b in zip(gen_tokens[-1][0].tolist(), torch_gen))
        del hf
        label = f"{name} shape, {config.num_layers} layers, float32, {sz.parity_tokens} tokens"
        rows += [
            row(
                f"logits max |diff| / max |logit| vs PyTorch ({label}; JAX highest precision)",
                diff / scale,
                "",
                "<= 1e-4",
                diff / scale <= 1e-4,
                abs_diff=diff,
                max_logit=scale,
            ),
            row(f"  same, JAX default matmul precision ({name})", diff_default / scale, ""),
            row(f"  argmax agreement, all positions ({name})", argmax, "fraction"),
            row(
                f"  greedy tokens equal to PyTorch generate ({name})",
                f"{agree}/{sz.parity_new_tokens}",
                "",
                note="random weights: near-ties may differ",
            ),
            row(f"generate: compilations on calls 2-3 with new prompts ({name})", recompiles, "", "0", recompiles == 0),
        ]
        details[name] = {"abs_diff": diff, "abs_diff_default_precision": diff_default, "max_logit": scale}
    return rows, details


def _jax_model(run: Run, name: str) -> tuple[list[dict], dict]:
    """Decode and prefill of one model shape (lcf_jax, bf16, batch 1)."""
    sz = run.sizes
    sampling, model_mod, kv = lcf("sampling"), lcf("models.model"), lcf("kv")
    peak, bw = run.ctx.get("peak_flops"), run.ctx.get("copy_bw")
    model = run.model(name)
    c = model.config
    rng = np.random.RandomState(0)
    prompt = rng.randint(0, c.vocab_size, (1, sz.prompt)).astype(np.int32)
    n = sz.new_tokens
    capacity = lcf("sizes").round_up(sz.prompt, 64) + n  # generate pads the prompt to a multiple of 64

    def gen(count: int) -> np.ndarray:
        # One cache capacity for every count: time(n) - time(1) then holds n - 1 decode steps only.
        return sampling.generate(model, prompt, count, stop_tokens=[], cache=model.new_cache(1, capacity)).tokens

    start = time.perf_counter()
    gen(1)
    gen(n)
    compile_s = time.perf_counter() - start
    before = Compiles.count
    per_token = []
    for _ in range(sz.decode_repeats):
        t_n = timed(lambda: gen(n), repeats=1, warmup=0)["median_s"]
        t_1 = timed(lambda: gen(1), repeats=1, warmup=0)["median_s"]
        per_token.append((t_n - t_1) / (n - 1))
    decode_compiles = Compiles.count - before
    decode_s = statistics.median(per_token)

    # One decode step as a single dispatch of the forward (no on-device loop), cache at the prompt.
    cache = model.new_cache(1, capacity).replace(lengths=jnp.full((1,), sz.prompt, jnp.int32))
    token = jnp.zeros((1, 1), jnp.int32)
    forward = model_mod.forward
    step = pipelined(
        lambda: forward(model.graphdef, model.params, token, cache, last_only=True),
        calls=2 if sz.tiny else 20,
        rounds=sz.repeats,
    )

    weights = weight_read_bytes(model)
    kv_bytes = 2 * c.num_layers * capacity * c.num_kv_heads * c.head_dim * jnp.dtype(model.dtype).itemsize
    floor = weights["bytes"] / bw if bw else None
    floor_kv = (weights["bytes"] + kv_bytes) / bw if bw else None

    # Prefill, compiled ahead of time so the same executable gives XLA's cost analysis.
    t = sz.prefill_tokens
    tokens = jnp.asarray(rng.randint(0, c.vocab_size, (1, t)), jnp.int32)
    prefill_cache = kv.KVCache.init(c, 1, t, model.dtype)
    start = time.perf_counter()
    compiled = prefill_of(model).lower(model.params, tokens, prefill_cache).compile()
    prefill_compile_s = time.perf_counter() - start
    t_prefill = timed(lambda: compiled(model.params, tokens, prefill_cache), repeats=sz.repeats)
    kernels = prefill_kernels(run, lambda: compiled(model.params, tokens, prefill_cache)[0], model, tokens, t)
    flops = forward_flops(c, t, lm_rows=1)
    achieved = flops["total"] / t_prefill["median_s"]
    xla_flops = cost_flops(compiled)
    fraction = achieved / peak if peak else None
    ratio = decode_s / floor if floor else None

    label = f"{name}, bf16, batch 1"
    rows = [
        row(f"decode ms/token ({label}; {n} tokens after {sz.prompt})", decode_s * 1e3, "ms"),
        row(
            f"  weight-read floor ({weights['bytes'] / 1e9:.3f} GB / copy bandwidth)",
            floor * 1e3 if floor else None,
            "ms",
        ),
        row("  decode / floor", ratio, "x", "<= 1.5", None if ratio is None else ratio <= 1.5),
        row(
            f"  floor incl. reading the KV cache ({kv_bytes / 1e6:.1f} MB)",
            floor_kv * 1e3 if floor_kv else None,
            "ms",
        ),
        row("  one decode forward, single dispatch, pipelined", step["best_s"] * 1e3, "ms"),
        row(f"  generate: compilations during timed calls ({name})", decode_compiles, "", "0", decode_compiles == 0),
        row(f"prefill {t} tokens ({label})", t_prefill["median_s"] * 1e3, "ms"),
        row(f"  prefill tokens/s ({name})", t / t_prefill["median_s"], "tok/s"),
        row(f"  prefill model TFLOP/s ({flops['total'] / 1e12:.4g} TFLOP per prefill)", achieved / 1e12, "TFLOP/s"),
        row(
            "  prefill % of measured matmul peak",
            100 * fraction if fraction else None,
            "%",
            ">= 40",
            None if fraction is None else fraction >= 0.40,
        ),
        row(
            "  XLA cost_analysis flops of the prefill (a scan body counted once)",
            xla_flops / 1e12 if xla_flops else None,
            "TFLOP",
        ),
        *kernels["rows"],
    ]
    details = {
        "decode_s_per_token": decode_s,
        "decode_samples_s": per_token,
        "decode_compile_and_warmup_s": compile_s,
        "decode_compiles_during_timing": decode_compiles,
        "decode_single_dispatch": step,
        "weights": weights,
        "kv_bytes_per_step": kv_bytes,
        "floor_s": floor,
        "floor_with_kv_s": floor_kv,
        "prefill": t_prefill,
        "prefill_compile_s": prefill_compile_s,
        "prefill_model_flops": flops,
        "prefill_xla_cost_analysis_flops": xla_flops,
        "prefill_tokens": t,
        "prefill_kernels": {k: v for k, v in kernels.items() if k != "rows"},
        "prompt": sz.prompt,
        "new_tokens": n,
    }
    run.ctx.setdefault("jax", {})[name] = {"decode_s": decode_s, "prefill_s": t_prefill["median_s"]}
    return rows, details


def prefill_of(model):
    """The model's jitted prefill (its graphdef, and so its attention kernel, baked in)."""
    graphdef, forward = model.graphdef, lcf("models.model").forward
    return jax.jit(lambda params, tokens, cache: forward(graphdef, params, tokens, cache, last_only=True))


def prefill_kernels(run: Run, default_logits, model, tokens, t: int) -> dict[str, Any]:
    """The prefill again with the other attention kernel (`Model.with_attention`,
    lcf_jax/models/layers.py): which one "auto" chose, its speed over the einsum kernel's, and how
    far their logits differ."""
    chosen = lcf("models.layers").attention_kernel(jnp.zeros((1, 2, 1, 1), model.dtype), model.attention)
    other = "einsum" if chosen == "fused" else "fused"
    reference = np.asarray(block(default_logits()), np.float32)
    model = model.with_attention(other)
    cache = lcf("kv").KVCache.init(model.config, 1, t, model.dtype)
    compiled = prefill_of(model).lower(model.params, tokens, cache).compile()
    timing = timed(lambda: compiled(model.params, tokens, cache), repeats=run.sizes.repeats)
    logits = np.asarray(block(compiled(model.params, tokens, cache)[0]), np.float32)
    diff = float(np.abs(logits - reference).max())
    rows = [
        row(f"  attention kernel chosen for prefill (auto on {jax.default_backend()})", chosen),
        row(f"  prefill with the {other} kernel instead", timing["median_s"] * 1e3, "ms"),
        row(f"  max |logit difference| {chosen} vs {other} (bf16)", diff, ""),
    ]
    return {"rows": rows, "chosen": chosen, "other": other, "other_prefill": timing, "max_logit_diff": diff}


def section_models_jax(run: Run) -> tuple[list[dict], dict]:
    rows, details, notes = [], {}, []
    for name in run.sizes.model_names:
        if run.fits(run.sizes.estimate("models_jax"), f"{name} (lcf_jax)", notes):
            more, details[name] = _jax_model(run, name)
            rows += more
    if not rows:
        raise SectionSkipped("; ".join(notes) or "nothing ran")
    details["notes"] = notes
    return rows, details


@functools.partial(jax.jit, static_argnames=("graphdef", "num_spans"))
def _summarize(graphdef, params, sharer_cache, span_ids, num_spans):
    """The LCF-X summary alone (what `communicate.send` runs after the sharer's prefill)."""
    return nnx.merge(graphdef, params).summarize(sharer_cache, span_ids, num_spans)


def section_ttft(run: Run) -> tuple[list[dict], dict]:
    sz = run.sizes
    communicate, sampling, adapters = lcf("communicate"), lcf("sampling"), lcf("adapters")
    sharer, receiver = run.model(SHARER), run.model(RECEIVER)
    ctx_len = sz.context
    rng = np.random.RandomState(1)
    shared = rng.randint(0, min(sharer.config.vocab_size, receiver.config.vocab_size), ctx_len).tolist()
    sharer_ctx = rng.randint(0, sharer.config.vocab_size, ctx_len).tolist()
    receiver_prompt = rng.randint(0, receiver.config.vocab_size, ctx_len).tolist()
    per_span = ctx_len // sz.spans
    span_lengths = [per_span] * (sz.spans - 1) + [ctx_len - per_span * (sz.spans - 1)]

    options = dict(latent_width=sz.latent_width, compute_dtype="bfloat16")
    built = {
        "lcf": adapters.build("lcf", sharer.config, receiver.config, **options),
        "c2c": adapters.build(
            "c2c", sharer.config, receiver.config, hidden_width=sz.c2c_hidden, compute_dtype="bfloat16"
        ),
        "lcfx": adapters.build("lcfx", sharer.config, receiver.config, **options),
    }
    if sz.ttft_paper_pair:
        built["lcfx_qwen3_pair"] = adapters.build("lcfx", receiver.config, receiver.config, **options)
    run.log("adapters built: " + ", ".join(f"{k} {adapters.count_params(a):,} params" for k, a in built.items()))

    def stage(times: dict, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = block(fn())
        times[name] = time.perf_counter() - start
        return out

    def transfer(times: dict, x: Any) -> Any:
        """Device -> host -> device, as a message between two machines would travel."""
        start = time.perf_counter()
        host = jax.device_get(x)
        back = block(jax.device_put(host))
        times["transfer"] = time.perf_counter() - start
        return back

    def receiver_stage(times: dict, prompt: list[int], apply=None) -> None:
        cache = stage(times, "receiver_prefill", lambda: communicate.prefill(receiver, [prompt[:-1]], bucket=128))
        if apply is not None:
            cache = stage(times, "receiver_apply", lambda: apply(cache))
        stage(
            times,
            "first_token",
            lambda: sampling.generate(receiver, [prompt[-1:]], 1, cache=cache, bucket=1, stop_tokens=[]).tokens,
        )

    sizes_bytes: dict[str, int] = {}

    def latent(kind: str, sharer_model) -> dict:
        adapter = built[kind]
        graphdef, params = nnx.split(adapter)
        times: dict[str, float] = {}
        cache = stage(times, "sharer_prefill", lambda: communicate.prefill(sharer_model, [sharer_ctx]))
        span_ids, num_spans = adapters.spans_from_lengths([span_lengths], cache.capacity)
        num_spans = lcf("sizes").round_up(num_spans, 8)  # as communicate.send rounds it
        message = stage(times, "summary", lambda: _summarize(graphdef, params, cache, jnp.asarray(span_ids), num_spans))
        sizes_bytes[kind] = message.nbytes
        message = transfer(times, message)
        receiver_stage(times, receiver_prompt, lambda c: communicate.receive(adapter, message, c))
        return times

    def shared_context(kind: str) -> dict:
        adapter = built[kind]
        times: dict[str, float] = {}
        heads = shared[:-1]
        s_cache = stage(times, "sharer_prefill", lambda: communicate.prefill(sharer, [heads]))
        sizes_bytes[kind] = int(s_cache.k.nbytes + s_cache.v.nbytes)
        s_cache = transfer(times, s_cache)
        r_cache = stage(times, "receiver_prefill", lambda: communicate.prefill(receiver, [heads]))
        fused = stage(times, "fuse", lambda: communicate.fuse(adapter, s_cache, r_cache))
        stage(
            times,
            "first_token",
            lambda: sampling.generate(receiver, [shared[-1:]], 1, cache=fused, bucket=1, stop_tokens=[]).tokens,
        )
        return times

    def text(budget: int) -> dict:
        times: dict[str, float] = {}
        tokens = stage(
            times,
            "sharer_generate",
            lambda: sampling.generate(sharer, [sharer_ctx], budget, stop_tokens=[], bucket=128).tokens,
        )
        message = [int(t) for t in tokens[0]]
        sizes_bytes[f"text_{budget}"] = 4 * len(message)  # token ids; the text itself is ~4 bytes a token too
        receiver_stage(times, receiver_prompt[:-1] + message + receiver_prompt[-1:])
        return times

    def alone() -> dict:
        times: dict[str, float] = {}
        receiver_stage(times, receiver_prompt)
        return times

    conditions: dict[str, Callable[[], dict]] = {
        "receiver_alone": alone,
        "lcfx": lambda: latent("lcfx", sharer),
        **({"lcfx_qwen3_pair": lambda: latent("lcfx_qwen3_pair", receiver)} if sz.ttft_paper_pair else {}),
        "lcf": lambda: shared_context("lcf"),
        "c2c": lambda: shared_context("c2c"),
        **{f"text_{b}": (lambda b=b: text(b)) for b in sz.budgets},
    }
    start = time.perf_counter()
    for fn in conditions.values():  # compile every shape
        fn()
    warmup_s = time.perf_counter() - start
    run.log(f"ttft: warm-up (compilation) {warmup_s:.1f} s")
    before = Compiles.count
    samples: dict[str, list[dict]] = {k: [] for k in conditions}
    for i in range(sz.ttft_repeats):
        if i and not run.fits(5.0, f"ttft repeat {i + 1}", []):
            break
        for name, fn in conditions.items():
            samples[name].append(fn())
    recompiles = Compiles.count - before

    results = {}
    for name, runs in samples.items():
        stages = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        results[name] = {
            "ttft_s": statistics.median(sum(r.values()) for r in runs),
            "stages_s": stages,
            "samples": runs,
            "bytes_sent": sizes_bytes.get(name),
        }
    longest = f"text_{max(sz.budgets)}"
    ratio = results[longest]["ttft_s"] / results["lcfx"]["ttft_s"]
    pair = f"{SHARER} -> {RECEIVER}"
    rows = []
    for name, r in results.items():
        stages = ", ".join(f"{k} {1e3 * v:.2f}" for k, v in r["stages_s"].items())
        what = {
            "receiver_alone": f"receiver alone ({RECEIVER}, own {ctx_len}-token context)",
            "lcfx": f"LCF-X ({pair})",
            "lcfx_qwen3_pair": f"LCF-X ({RECEIVER} -> {RECEIVER}, the paper's pair)",
            "lcf": f"LCF, shared context ({pair})",
            "c2c": f"C2C, shared context ({pair})",
        }.get(name) or f"text, {name.removeprefix('text_')}-token message ({pair})"
        rows.append(row(f"TTFT {what}", 1e3 * r["ttft_s"], "ms", bytes_sent=r["bytes_sent"], note=stages))
    rows += [
        row(f"TTFT({longest}) / TTFT(lcfx)", ratio, "x", ">= 20", ratio >= 20),
        row(
            f"TTFT(text_{min(sz.budgets)}) / TTFT(lcfx)",
            results[f"text_{min(sz.budgets)}"]["ttft_s"] / results["lcfx"]["ttft_s"],
            "x",
        ),
        row("ttft: compilations during timed passes", recompiles, "", "0", recompiles == 0),
    ]
    details = {
        "conditions": results,
        "context_tokens": ctx_len,
        "spans": span_lengths,
        "warmup_s": warmup_s,
        "repeats": len(samples["lcfx"]),
        "compiles_during_timing": recompiles,
        "adapter_params": {k: adapters.count_params(a) for k, a in built.items()},
    }
    return rows, details


def section_train(run: Run) -> tuple[list[dict], dict]:
    sz = run.sizes
    adapters, step_mod, batch_mod = lcf("adapters"), lcf("train.step"), lcf("data.batch")
    sharer, receiver = run.model(SHARER), run.model(RECEIVER)
    b, tp, tq = sz.train_batch, sz.train_prefix, sz.train_suffix
    micro_count = run.args.train_micro or sz.train_micro
    spec = adapters.make_spec(
        "lcf", sharer.config, receiver.config, latent_width=sz.latent_width, compute_dtype="bfloat16"
    )
    adapter = adapters.Adapter(spec, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(adapter, nnx.Param)
    kernel_params = sum(int(v.get_value().size) for path, v in nnx.to_flat_state(params) if str(path[-1]) == "kernel")
    optimizer = step_mod.make_optimizer()
    state = step_mod.init_state(params, optimizer)
    rng = np.random.RandomState(2)
    vocab = min(sharer.config.vocab_size, receiver.config.vocab_size)
    prefix = rng.randint(0, vocab, (b, tp)).astype(np.int32)
    suffix = rng.randint(0, vocab, (b, tq)).astype(np.int32)
    full = lambda n: np.full((b,), n, np.int32)  # noqa: E731
    batch = batch_mod.Batch(
        prefix=jnp.asarray(prefix),
        prefix_lengths=jnp.asarray(full(tp)),
        sharer=jnp.asarray(prefix),
        sharer_lengths=jnp.asarray(full(tp)),
        span_ids=jnp.zeros((b, tp), jnp.int32),
        suffix=jnp.asarray(suffix),
        suffix_lengths=jnp.asarray(full(tq)),
        row_ids=jnp.arange(b, dtype=jnp.int32),
    )
    micro = batch.micro_batches(micro_count)
    frozen = (sharer.params, receiver.params)
    train_step = step_mod.make_train_step(graphdef, sharer, receiver, optimizer, step_mod.StepConfig())
    step = jax.jit(train_step, donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, frozen, micro).compile()
    compile_s = time.perf_counter() - start
    run.log(f"train: compiled in {compile_s:.1f} s")
    xla_flops = cost_flops(compiled)

    start = time.perf_counter()
    state, metrics = compiled(state, frozen, micro)
    first_loss = float(metrics["loss"])
    first_s = time.perf_counter() - start
    blocked = []
    before = Compiles.count
    for _ in range(max(1, sz.train_steps // 2)):
        start = time.perf_counter()
        state, metrics = compiled(state, frozen, micro)
        block(metrics["loss"])
        blocked.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(sz.train_steps):
        state, metrics = compiled(state, frozen, micro)
    loss = float(metrics["loss"])
    step_s = (time.perf_counter() - start) / sz.train_steps
    recompiles = Compiles.count - before
    memory = None
    with contextlib.suppress(Exception):
        memory = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")

    s_fwd = forward_flops(sharer.config, tp, lm_rows=1, batch=b)
    r_fwd = forward_flops(receiver.config, tp, lm_rows=1, batch=b)
    q_fwd = forward_flops(receiver.config, tq, past=tp, batch=b)
    q_bwd = q_fwd["linear"] + q_fwd["lm_head"] + 2 * q_fwd["attention"]
    adapter_fb = 3 * 2 * kernel_params * b * tp
    flops = {
        "sharer_forward_prefix": s_fwd["total"],
        "receiver_forward_prefix": r_fwd["total"],
        "receiver_forward_suffix": q_fwd["total"],
        "receiver_backward_suffix_to_activations": q_bwd,
        "adapter_forward_backward": adapter_fb,
    }
    flops["total"] = sum(flops.values())
    peak = run.ctx.get("peak_flops")
    mfu = flops["total"] / step_s / peak if peak else None
    tokens = b * (tp + tq)
    rows = [
        row(
            f"train step, lcf {SHARER} -> {RECEIVER}, batch {b} x ({tp} + {tq}) tokens, {micro_count} micro-batch(es)",
            step_s * 1e3,
            "ms",
            note="steps dispatched back to back",
        ),
        row("  train step, each blocked on", statistics.median(blocked) * 1e3, "ms"),
        row("  tokens/s (both models' prefix + suffix)", tokens / step_s, "tok/s"),
        row(f"  model FLOPs per step ({flops['total'] / 1e12:.4g} TFLOP)", flops["total"] / step_s / 1e12, "TFLOP/s"),
        row(
            "  MFU (model FLOPs / step time / measured bf16 peak)",
            100 * mfu if mfu else None,
            "%",
            ">= 35",
            None if mfu is None else mfu >= 0.35,
        ),
        row(
            "  XLA cost_analysis flops per step (a scan body counted once)",
            xla_flops / 1e12 if xla_flops else None,
            "TFLOP",
        ),
        row(
            "  loss finite (first step, last step)",
            f"{first_loss:.3f}, {loss:.3f}",
            "",
            "finite",
            bool(np.isfinite([first_loss, loss]).all()),
        ),
        row("  train: compilations during timed steps", recompiles, "", "0", recompiles == 0),
    ]
    details = {
        "step_s": step_s,
        "blocked_step_s": blocked,
        "first_step_s": first_s,
        "compile_s": compile_s,
        "model_flops": flops,
        "flop_definitions": {
            "forward": "2 * layer matmul params * tokens + 4 * L * N * H * causal (query, key) pairs"
            " + 2 * D * V * lm rows",
            "receiver_backward_suffix_to_activations": "linear + lm head once more, attention twice (no weight grads)",
            "adapter_forward_backward": "3 * 2 * adapter matmul params * B * prefix tokens",
        },
        "xla_cost_analysis_flops": xla_flops,
        "adapter_params": adapters.count_params(adapter),
        "adapter_matmul_params": kernel_params,
        "peak_bytes_in_use": memory,
        "micro_batches": micro_count,
        "loss": [first_loss, loss],
    }
    return rows, details


def _torch_model_bench(run: Run, torch: Any, device: str, name: str) -> tuple[list[dict], dict]:
    """transformers' model of one shape: prefill and decode, against the lcf_jax numbers of this run."""
    sz = run.sizes
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    config = run.config(name)
    model = torch_model(config, torch.bfloat16, device)
    rng = np.random.RandomState(0)
    prompt = torch.tensor(rng.randint(0, config.vocab_size, (1, sz.prompt)), dtype=torch.long, device=device)
    tokens = torch.tensor(rng.randint(0, config.vocab_size, (1, sz.prefill_tokens)), dtype=torch.long, device=device)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    def prefill():
        with torch.inference_mode():
            out = model(tokens, use_cache=True, **keep)
        sync()
        return out.logits

    def gen(count: int):
        with torch.inference_mode():
            out = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=count,
                min_new_tokens=count,
                do_sample=False,
                pad_token_id=0,
            )
        sync()
        return out

    t_prefill = timed(prefill, repeats=sz.repeats)
    n = sz.torch_new_tokens
    gen(1)
    gen(n)
    per_token = []
    for _ in range(max(1, sz.decode_repeats - 2)):  # PyTorch's generate is slow: fewer repeats
        t_n = timed(lambda: gen(n), repeats=1, warmup=0)["median_s"]
        t_1 = timed(lambda: gen(1), repeats=1, warmup=0)["median_s"]
        per_token.append((t_n - t_1) / (n - 1))
    decode_s = statistics.median(per_token)
    ours = run.ctx.get("jax", {}).get(name)
    label = f"{name}, bf16, sdpa, {device}"
    rows = [
        row(f"PyTorch prefill {sz.prefill_tokens} tokens ({label})", t_prefill["median_s"] * 1e3, "ms"),
        row(f"PyTorch decode ms/token ({label}; generate, {n} tokens)", decode_s * 1e3, "ms"),
    ]
    if ours:
        rows += [
            row(f"  prefill speed lcf_jax / PyTorch ({name})", t_prefill["median_s"] / ours["prefill_s"], "x", "> 1"),
            row(f"  decode speed lcf_jax / PyTorch ({name})", decode_s / ours["decode_s"], "x", "> 1"),
        ]
    details = {"prefill": t_prefill, "decode_s_per_token": decode_s, "decode_samples_s": per_token, "new_tokens": n}
    return rows, details


def section_models_torch(run: Run) -> tuple[list[dict], dict]:
    torch, device, reason = _torch_device(run)
    if device is None:
        raise SectionSkipped(reason)
    rows, notes = [], []
    details: dict[str, Any] = {"device": device, "torch_cuda": getattr(torch.version, "cuda", None)}
    for name in run.sizes.model_names:
        if run.fits(run.sizes.estimate("models_torch"), f"{name} (PyTorch)", notes):
            more, details[name] = _torch_model_bench(run, torch, device, name)
            rows += more
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    if not rows:
        raise SectionSkipped("; ".join(notes) or "nothing ran")
    details["notes"] = notes
    return rows, details


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
    notes = []
    for name, s in result["sections"].items():
        if s["status"] != "ok":
            detail = s.get("reason") or s.get("error") or ""
            lines.append(f"| {name} | **{s['status']}**: {detail.replace('|', '/')} | | | | |")
            continue
        for r in s["rows"]:
            cells = (name, r["measurement"].strip(), _cell(r["value"]), r["unit"], r["goal"], r["verdict"])
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            if r.get("note"):
                notes.append(f"- {name}, {r['measurement'].strip()}: {r['note']}")
        notes += [f"- {name}: {n}" for n in s.get("details", {}).get("notes", [])]
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


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (also GPU_BENCH_TINY=1): runs on a CPU")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what would not fit in this many seconds")
    parser.add_argument("--hard-limit-s", type=float, default=None, help="write results and exit (default budget + 30)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_out", help="output directory (default $OUT)")
    parser.add_argument("--only", default="", help=f"comma-separated sections to run ({','.join(SECTIONS)})")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")
    parser.add_argument("--train-micro", type=int, default=0, help="micro-batches for the train step (default 1)")
    args = parser.parse_args(argv)
    args.tiny = args.tiny or os.environ.get("GPU_BENCH_TINY", "") not in ("", "0")
    args.only = [s for s in args.only.split(",") if s]
    args.skip = [s for s in args.skip.split(",") if s]
    unknown = [s for s in args.only + args.skip if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    if args.hard_limit_s is None:
        args.hard_limit_s = args.budget_s + 30
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    jax.devices()  # start the backend before anything else loads CUDA libraries (torch)
    jax.monitoring.register_event_duration_secs_listener(Compiles.listen)
    imports = import_lcf_jax()
    imports["third_party_modules_after_import"] = third_party_modules()
    run = Run(args, TINY if args.tiny else FULL, imports)
    run.log(f"{run.env['device']}; {run.env['date']}; " + ", ".join(f"{k} {v}" for k, v in run.env["versions"].items()))
    run.log(f"lcf_jax imported as: {imports['mode']}; output in {run.out.resolve()}; budget {args.budget_s:.0f} s")

    def watchdog() -> None:
        if run.current:
            error = f"killed by the watchdog at {args.hard_limit_s:.0f} s"
            run.sections[run.current].update(status="error", error=error)
        run.log(f"watchdog: {args.hard_limit_s:.0f} s reached, writing results and exiting")
        run.write()
        os._exit(3)

    timer = threading.Timer(max(1.0, args.hard_limit_s - run.elapsed()), watchdog)
    timer.daemon = True
    timer.start()
    for name, fn in (
        ("floors", section_floors),
        ("parity", section_parity),
        ("models_jax", section_models_jax),
        ("ttft", section_ttft),
        ("train", section_train),
        ("models_torch", section_models_torch),
    ):
        run.section(name, fn)
    timer.cancel()
    run.finished = True
    run.write()
    print("\n" + markdown(run.result()), flush=True)
    run.log(f"done in {run.elapsed():.0f} s; results in {run.out.resolve()}")
    return 1 if any(s["status"] == "error" for s in run.sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
