"""GPU benchmark section `models_jax` (bench/gpu.py): lcf_jax's decode and prefill of each model shape
(bf16, batch 1), against the floors of the `floors` section: decode against the weight-read floor,
prefill against the matmul peak; and the prefill with the other attention kernel."""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from common import block, compile_count, lcf, pipelined, row, timed
from gpu_flops import cost_flops, forward_flops, weight_read_bytes
from gpu_run import Run, SectionSkipped


def _decode(run: Run, model, prompt: np.ndarray, capacity: int) -> dict[str, Any]:
    """Decode seconds per token: (time(n tokens) - time(1 token)) / (n - 1), median over repeats."""
    sz = run.sizes
    sampling = lcf("sampling")
    n = sz.new_tokens

    def gen(count: int) -> np.ndarray:
        # One cache capacity for every count: time(n) - time(1) then holds n - 1 decode steps only.
        return sampling.generate(model, prompt, count, stop_tokens=[], cache=model.new_cache(1, capacity)).tokens

    start = time.perf_counter()
    gen(1)
    gen(n)
    compile_s = time.perf_counter() - start
    before = compile_count()
    per_token = []
    for _ in range(sz.decode_repeats):
        t_n = timed(lambda: gen(n), repeats=1, warmup=0)["median_s"]
        t_1 = timed(lambda: gen(1), repeats=1, warmup=0)["median_s"]
        per_token.append((t_n - t_1) / (n - 1))
    return {
        "decode_s": statistics.median(per_token),
        "per_token": per_token,
        "compile_s": compile_s,
        "compiles": compile_count() - before,
    }


def _decode_step(run: Run, model, capacity: int) -> dict[str, Any]:
    """One decode step as a single dispatch of the forward (no on-device loop), cache at the prompt."""
    sz = run.sizes
    cache = model.new_cache(1, capacity).replace(lengths=jnp.full((1,), sz.prompt, jnp.int32))
    token = jnp.zeros((1, 1), jnp.int32)
    forward = lcf("models.model").forward
    return pipelined(
        lambda: forward(model.graphdef, model.params, token, cache, last_only=True),
        calls=2 if sz.tiny else 20,
        rounds=sz.repeats,
    )


def _floors(run: Run, model, capacity: int) -> dict[str, Any]:
    """Bytes one decode step reads (weights; and the KV cache) and their time at the copy bandwidth."""
    c, bw = model.config, run.ctx.get("copy_bw")
    weights = weight_read_bytes(model)
    kv_bytes = 2 * c.num_layers * capacity * c.num_kv_heads * c.head_dim * jnp.dtype(model.dtype).itemsize
    return {
        "weights": weights,
        "kv_bytes": kv_bytes,
        "floor": weights["bytes"] / bw if bw else None,
        "floor_kv": (weights["bytes"] + kv_bytes) / bw if bw else None,
    }


def prefill_of(model):
    """The model's jitted prefill (its graphdef, and so its attention kernel, baked in)."""
    graphdef, forward = model.graphdef, lcf("models.model").forward
    return jax.jit(lambda params, tokens, cache: forward(graphdef, params, tokens, cache, last_only=True))


def _prefill(run: Run, model, rng: np.random.RandomState) -> dict[str, Any]:
    """Prefill of `prefill_tokens` random tokens, compiled ahead of time so the same executable gives
    XLA's cost analysis; model FLOP/s; and the other attention kernel's prefill."""
    sz, c = run.sizes, model.config
    t = sz.prefill_tokens
    tokens = jnp.asarray(rng.randint(0, c.vocab_size, (1, t)), jnp.int32)
    prefill_cache = lcf("kv").KVCache.init(c, 1, t, model.dtype)
    start = time.perf_counter()
    compiled = prefill_of(model).lower(model.params, tokens, prefill_cache).compile()
    compile_s = time.perf_counter() - start
    timing = timed(lambda: compiled(model.params, tokens, prefill_cache), repeats=sz.repeats)
    kernels = prefill_kernels(run, lambda: compiled(model.params, tokens, prefill_cache)[0], model, tokens, t)
    flops = forward_flops(c, t, lm_rows=1)
    return {
        "tokens": t,
        "timing": timing,
        "compile_s": compile_s,
        "kernels": kernels,
        "flops": flops,
        "achieved": flops["total"] / timing["median_s"],
        "xla_flops": cost_flops(compiled),
    }


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


def _decode_rows(run: Run, name: str, decode: dict, step: dict, floors: dict) -> list[dict]:
    sz = run.sizes
    decode_s, compiles, floor, floor_kv = decode["decode_s"], decode["compiles"], floors["floor"], floors["floor_kv"]
    ratio = decode_s / floor if floor else None
    return [
        row(f"decode ms/token ({name}, bf16, batch 1; {sz.new_tokens} tokens after {sz.prompt})", decode_s * 1e3, "ms"),
        row(
            f"  weight-read floor ({floors['weights']['bytes'] / 1e9:.3f} GB / copy bandwidth)",
            floor * 1e3 if floor else None,
            "ms",
        ),
        row("  decode / floor", ratio, "x", "<= 1.5", None if ratio is None else ratio <= 1.5),
        row(
            f"  floor incl. reading the KV cache ({floors['kv_bytes'] / 1e6:.1f} MB)",
            floor_kv * 1e3 if floor_kv else None,
            "ms",
        ),
        row("  one decode forward, single dispatch, pipelined", step["best_s"] * 1e3, "ms"),
        row(f"  generate: compilations during timed calls ({name})", compiles, "", "0", compiles == 0),
    ]


def _prefill_rows(run: Run, name: str, prefill: dict) -> list[dict]:
    t, flops, xla_flops = prefill["tokens"], prefill["flops"], prefill["xla_flops"]
    median_s, achieved = prefill["timing"]["median_s"], prefill["achieved"]
    peak = run.ctx.get("peak_flops")
    fraction = achieved / peak if peak else None
    return [
        row(f"prefill {t} tokens ({name}, bf16, batch 1)", median_s * 1e3, "ms"),
        row(f"  prefill tokens/s ({name})", t / median_s, "tok/s"),
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
        *prefill["kernels"]["rows"],
    ]


def _jax_model(run: Run, name: str) -> tuple[list[dict], dict]:
    """Decode and prefill of one model shape (lcf_jax, bf16, batch 1)."""
    sz = run.sizes
    model = run.model(name)
    rng = np.random.RandomState(0)
    prompt = rng.randint(0, model.config.vocab_size, (1, sz.prompt)).astype(np.int32)
    capacity = lcf("sizes").round_up(sz.prompt, 64) + sz.new_tokens  # generate pads the prompt to a multiple of 64
    decode = _decode(run, model, prompt, capacity)
    step = _decode_step(run, model, capacity)
    floors = _floors(run, model, capacity)
    prefill = _prefill(run, model, rng)
    rows = _decode_rows(run, name, decode, step, floors) + _prefill_rows(run, name, prefill)
    details = {
        "decode_s_per_token": decode["decode_s"],
        "decode_samples_s": decode["per_token"],
        "decode_compile_and_warmup_s": decode["compile_s"],
        "decode_compiles_during_timing": decode["compiles"],
        "decode_single_dispatch": step,
        "weights": floors["weights"],
        "kv_bytes_per_step": floors["kv_bytes"],
        "floor_s": floors["floor"],
        "floor_with_kv_s": floors["floor_kv"],
        "prefill": prefill["timing"],
        "prefill_compile_s": prefill["compile_s"],
        "prefill_model_flops": prefill["flops"],
        "prefill_xla_cost_analysis_flops": prefill["xla_flops"],
        "prefill_tokens": prefill["tokens"],
        "prefill_kernels": {k: v for k, v in prefill["kernels"].items() if k != "rows"},
        "prompt": sz.prompt,
        "new_tokens": sz.new_tokens,
    }
    run.ctx.setdefault("jax", {})[name] = {"decode_s": decode["decode_s"], "prefill_s": prefill["timing"]["median_s"]}
    return rows, details


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
