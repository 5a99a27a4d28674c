"""GPU benchmark section `train` (bench/gpu.py): the jitted adapter train step (`make_train_step`) of the
paper's shared-context pair (lcf, Qwen2.5-0.5B -> Qwen3-0.6B, bf16 models, float32 adapter params),
steps dispatched back to back, as model-FLOPs utilisation of the measured bf16 matmul peak."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from common import block, compile_count, lcf, row
from flax import nnx
from gpu_flops import cost_flops, forward_flops
from gpu_run import RECEIVER, SHARER, Run

FLOP_DEFINITIONS = {
    "forward": "2 * layer matmul params * tokens + 4 * L * N * H * causal (query, key) pairs + 2 * D * V * lm rows",
    "receiver_backward_suffix_to_activations": "linear + lm head once more, attention twice (no weight grads)",
    "adapter_forward_backward": "3 * 2 * adapter matmul params * B * prefix tokens",
}


@dataclasses.dataclass
class Setup:
    """What one train step takes: the adapter, its optimizer state, the frozen models' params and the
    micro-batches, with the step compiled for them."""

    sharer: Any
    receiver: Any
    adapter: Any
    kernel_params: int  # the adapter's matmul weights
    state: Any
    frozen: tuple
    micro: Any
    micro_count: int
    compiled: Any = None
    compile_s: float = 0.0


def _random_batch(run: Run, sharer, receiver):
    """A batch of `train_batch` random sequences, `train_prefix` + `train_suffix` tokens, one span."""
    sz = run.sizes
    b, tp, tq = sz.train_batch, sz.train_prefix, sz.train_suffix
    rng = np.random.RandomState(2)
    vocab = min(sharer.config.vocab_size, receiver.config.vocab_size)
    prefix = rng.randint(0, vocab, (b, tp)).astype(np.int32)
    suffix = rng.randint(0, vocab, (b, tq)).astype(np.int32)
    full = lambda n: np.full((b,), n, np.int32)  # noqa: E731
    return lcf("data.batch").Batch(
        prefix=jnp.asarray(prefix),
        prefix_lengths=jnp.asarray(full(tp)),
        sharer=jnp.asarray(prefix),
        sharer_lengths=jnp.asarray(full(tp)),
        span_ids=jnp.zeros((b, tp), jnp.int32),
        suffix=jnp.asarray(suffix),
        suffix_lengths=jnp.asarray(full(tq)),
        row_ids=jnp.arange(b, dtype=jnp.int32),
    )


def _setup(run: Run) -> Setup:
    """The lcf adapter, AdamW state and a random batch, and the step compiled ahead of time."""
    sz = run.sizes
    adapters, step_mod = lcf("adapters"), lcf("train.step")
    sharer, receiver = run.model(SHARER), run.model(RECEIVER)
    micro_count = run.args.train_micro or sz.train_micro
    spec = adapters.make_spec(
        "lcf", sharer.config, receiver.config, latent_width=sz.latent_width, compute_dtype="bfloat16"
    )
    adapter = adapters.make_adapter(spec, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(adapter, nnx.Param)
    kernel_params = sum(int(v.get_value().size) for path, v in nnx.to_flat_state(params) if str(path[-1]) == "kernel")
    optimizer = step_mod.make_optimizer()
    setup = Setup(
        sharer=sharer,
        receiver=receiver,
        adapter=adapter,
        kernel_params=kernel_params,
        state=step_mod.init_state(params, optimizer),
        frozen=(sharer.params, receiver.params),
        micro=_random_batch(run, sharer, receiver).micro_batches(micro_count),
        micro_count=micro_count,
    )
    train_step = step_mod.make_train_step(graphdef, sharer, receiver, optimizer, step_mod.StepConfig())
    step = jax.jit(train_step, donate_argnums=0)
    start = time.perf_counter()
    setup.compiled = step.lower(setup.state, setup.frozen, setup.micro).compile()
    setup.compile_s = time.perf_counter() - start
    run.log(f"train: compiled in {setup.compile_s:.1f} s")
    return setup


def _time_steps(run: Run, setup: Setup) -> dict[str, Any]:
    """The first step, a few steps each blocked on, then `train_steps` dispatched back to back."""
    steps = run.sizes.train_steps
    compiled, state, frozen, micro = setup.compiled, setup.state, setup.frozen, setup.micro
    start = time.perf_counter()
    state, metrics = compiled(state, frozen, micro)
    first_loss = float(metrics["loss"])
    first_s = time.perf_counter() - start
    blocked = []
    before = compile_count()
    for _ in range(max(1, steps // 2)):
        start = time.perf_counter()
        state, metrics = compiled(state, frozen, micro)
        block(metrics["loss"])
        blocked.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, frozen, micro)
    loss = float(metrics["loss"])
    step_s = (time.perf_counter() - start) / steps
    recompiles = compile_count() - before
    setup.state = state
    return {
        "step_s": step_s,
        "blocked": blocked,
        "first_s": first_s,
        "first_loss": first_loss,
        "loss": loss,
        "recompiles": recompiles,
    }


def train_flops(run: Run, setup: Setup) -> dict[str, int]:
    """Model FLOPs of one step (bench/gpu.py's docstring): both forwards over the prefix, the
    receiver's suffix forward and its backward to activations, the adapter's forward and backward."""
    sz = run.sizes
    b, tp, tq = sz.train_batch, sz.train_prefix, sz.train_suffix
    s_fwd = forward_flops(setup.sharer.config, tp, lm_rows=1, batch=b)
    r_fwd = forward_flops(setup.receiver.config, tp, lm_rows=1, batch=b)
    q_fwd = forward_flops(setup.receiver.config, tq, past=tp, batch=b)
    flops = {
        "sharer_forward_prefix": s_fwd["total"],
        "receiver_forward_prefix": r_fwd["total"],
        "receiver_forward_suffix": q_fwd["total"],
        "receiver_backward_suffix_to_activations": q_fwd["linear"] + q_fwd["lm_head"] + 2 * q_fwd["attention"],
        "adapter_forward_backward": 3 * 2 * setup.kernel_params * b * tp,
    }
    flops["total"] = sum(flops.values())
    return flops


def _train_rows(run: Run, setup: Setup, t: dict[str, Any], flops: dict[str, int], xla_flops: float | None) -> list:
    sz = run.sizes
    b, tp, tq = sz.train_batch, sz.train_prefix, sz.train_suffix
    step_s, first_loss, loss, recompiles = t["step_s"], t["first_loss"], t["loss"], t["recompiles"]
    peak = run.ctx.get("peak_flops")
    mfu = flops["total"] / step_s / peak if peak else None
    return [
        row(
            f"train step, lcf {SHARER} -> {RECEIVER}, batch {b} x ({tp} + {tq}) tokens,"
            f" {setup.micro_count} micro-batch(es)",
            step_s * 1e3,
            "ms",
            note="steps dispatched back to back",
        ),
        row("  train step, each blocked on", statistics.median(t["blocked"]) * 1e3, "ms"),
        row("  tokens/s (both models' prefix + suffix)", b * (tp + tq) / step_s, "tok/s"),
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


def section_train(run: Run) -> tuple[list[dict], dict]:
    setup = _setup(run)
    xla_flops = cost_flops(setup.compiled)
    timing = _time_steps(run, setup)
    memory = None
    with contextlib.suppress(Exception):
        memory = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    flops = train_flops(run, setup)
    details = {
        "step_s": timing["step_s"],
        "blocked_step_s": timing["blocked"],
        "first_step_s": timing["first_s"],
        "compile_s": setup.compile_s,
        "model_flops": flops,
        "flop_definitions": FLOP_DEFINITIONS,
        "xla_cost_analysis_flops": xla_flops,
        "adapter_params": lcf("adapters").count_params(setup.adapter),
        "adapter_matmul_params": setup.kernel_params,
        "peak_bytes_in_use": memory,
        "micro_batches": setup.micro_count,
        "loss": [timing["first_loss"], timing["loss"]],
    }
    return _train_rows(run, setup, timing, flops, xla_flops), details
