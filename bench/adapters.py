"""Adapter cost against the receiver's own prefill, on the paper's model shapes (random weights).

    python bench/adapters.py [--tokens 512] [--repeats 5] [--json OUT]

For a Qwen3-0.6B receiver (28 layers) and a Qwen2.5-0.5B sharer (lcf, c2c) or a Qwen3-0.6B sharer
(lcfx), times one jitted fusion over all 28 layers (lcf, c2c: the receiver cache rewritten from a
position-matched sharer cache; lcfx: summarize the sharer's cache over 10 spans, then apply the
message) and the receiver's float32 prefill of the same number of tokens, and reports their ratio,
for adapters multiplying in float32 and in bfloat16 (`compute_dtype`; parameters stay float32).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
from common import report, timeit, tune_allocator
from flax import nnx

from lcf_jax.adapters import build, count_params
from lcf_jax.kv import KVCache
from lcf_jax.models import preset
from lcf_jax.models.model import Model, forward


def random_cache(config, tokens: int, seed: int) -> KVCache:
    shape = (config.num_layers, 1, tokens, config.num_kv_heads, config.head_dim)
    k, v = jax.random.normal(jax.random.key(seed), (2, *shape))
    return KVCache(k, v, jnp.full((1,), tokens, jnp.int32))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def fuse(graphdef, params, sharer, receiver):
    return nnx.merge(graphdef, params).fuse(sharer, receiver)


@functools.partial(jax.jit, static_argnames=("graphdef", "num_spans"))
def summarize_and_receive(graphdef, params, sharer, span_ids, num_spans, receiver):
    adapter = nnx.merge(graphdef, params)
    return adapter.receive(adapter.summarize(sharer, span_ids, num_spans), receiver)


def time_adapter(
    kind: str, sharer_name: str, receiver_cache: KVCache, t: int, repeats: int, compute_dtype: str
) -> tuple[float, str, int]:
    """Seconds of one jitted fusion (lcf, c2c) or summary + receive (lcfx) over all 28 layers."""
    adapter = build(kind, sharer_name, "qwen3-0.6b", compute_dtype=compute_dtype)
    graphdef, params = nnx.split(adapter)
    sharer_cache = random_cache(preset(sharer_name), t, 2)
    if kind == "lcfx":
        span_ids = (jnp.arange(t)[None] * 10 // t).astype(jnp.int32)  # 10 paragraphs
        seconds = timeit(
            lambda: summarize_and_receive(graphdef, params, sharer_cache, span_ids, 10, receiver_cache), repeats=repeats
        )
        return seconds, "summarize 10 spans + receive", count_params(adapter)
    seconds = timeit(lambda: fuse(graphdef, params, sharer_cache, receiver_cache), repeats=repeats)
    return seconds, "fuse", count_params(adapter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    parser.add_argument("--compute-dtypes", nargs="+", default=["float32", "bfloat16"], help="adapter matmul dtypes")
    args = parser.parse_args()
    tune_allocator()  # the `lcf` command's allocator settings, before anything allocates (bench/common.py)
    t = args.tokens

    receiver = Model.random(preset("qwen3-0.6b"))
    tokens = jax.random.randint(jax.random.key(0), (1, t), 0, receiver.config.vocab_size, jnp.int32)
    prefill_s = timeit(
        lambda: forward(receiver.graphdef, receiver.params, tokens, receiver.new_cache(1, t), last_only=True),
        repeats=args.repeats,
    )
    rows = [{"computation": f"receiver prefill, {t} tokens (Qwen3-0.6B)", "ms": prefill_s * 1e3, "vs prefill": "1"}]
    receiver_cache = random_cache(receiver.config, t, 1)
    pairs = (("lcf", "qwen2.5-0.5b"), ("c2c", "qwen2.5-0.5b"), ("lcfx", "qwen3-0.6b"))
    for compute_dtype in args.compute_dtypes:
        for kind, sharer_name in pairs:
            seconds, what, count = time_adapter(kind, sharer_name, receiver_cache, t, args.repeats, compute_dtype)
            rows.append(
                {
                    "computation": f"{kind} {what}, 28 layers, {count:,} params, {compute_dtype} matmuls",
                    "ms": seconds * 1e3,
                    "vs prefill": f"{100 * seconds / prefill_s:.2f}%",
                }
            )
    report(
        f"Adapter cost vs receiver prefill ({t} tokens, float32, batch 1, random weights)",
        rows,
        ["computation", "ms", "vs prefill"],
        json_path=args.json,
    )


if __name__ == "__main__":
    main()
