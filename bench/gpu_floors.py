"""GPU benchmark section `floors` (bench/gpu.py): the device's copy and read bandwidth and its bf16
matmul peak, measured first so the other sections can report against them (`run.ctx`: copy_bw,
read_bw, peak_flops)."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from common import block, pipelined, row
from gpu_run import Run


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
