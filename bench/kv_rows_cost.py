"""What one KV row costs in the demo's evaluation, and whether stacking the rows helps: a batch of
32 demo questions, the receiver extending its opening + paragraphs cache with the rest of each
prompt and answering, at 32 rows and at 5 x 32 rows stacked (README, "KV-cache messages on the demo").

    python bench/kv_rows_cost.py
"""

from __future__ import annotations

import time

import jax

from lcf_jax import communicate as comm
from lcf_jax.data.split_qa import generate_questions
from lcf_jax.eval.prompts import sharer_first_segments
from lcf_jax.kv import KVCache
from lcf_jax.loading import load_model
from lcf_jax.sampling import generate
from lcf_jax.train.defaults import MODEL, demo_config


def seconds(fn, repeats: int = 2) -> float:
    """Mean wall time of `fn` after one untimed call (which compiles)."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(jax.tree.leaves(fn()))
    return (time.perf_counter() - start) / repeats


def main() -> None:
    model = load_model(MODEL, dtype="float32")
    questions = generate_questions("test", 32, seed=1, variant=demo_config().data.variant)
    segments = [sharer_first_segments(model, q) for q in questions]
    rests, lasts = [s.rest[:-1] for s in segments], [s.rest[-1:] for s in segments]
    base = comm.prefill(model, [s.opening + s.context for s in segments], bucket=8)
    openings = [s.opening for s in segments]
    print(f"opening prefill, 32 rows: {seconds(lambda: comm.prefill(model, openings, bucket=8)):.2f} s")
    print(f"opening prefill, 1 row:   {seconds(lambda: comm.prefill(model, [segments[0].opening], bucket=8)):.2f} s")
    print(f"extend the rests, 32 rows:  {seconds(lambda: comm.extend(model, base, rests, bucket=8)):.2f} s")
    stacked = KVCache.concatenate([base] * 5)
    print(f"extend the rests, 160 rows: {seconds(lambda: comm.extend(model, stacked, rests * 5, bucket=8), 1):.2f} s")
    full = comm.extend(model, base, rests, bucket=8)
    print(f"answer, 32 rows:  {seconds(lambda: generate(model, lasts, 16, cache=full, bucket=8).tokens):.2f} s")
    full5 = KVCache.concatenate([full] * 5)
    print(f"answer, 160 rows: {seconds(lambda: generate(model, lasts * 5, 16, cache=full5, bucket=8).tokens, 1):.2f} s")


if __name__ == "__main__":
    main()
