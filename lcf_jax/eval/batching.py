"""Evaluation batches sized by a token budget, so memory does not depend on the user's data.

A batch of right-padded rows holds `rows x longest row` cache entries per copy of a KV cache, so a
fixed row count that suits 300-token prompts takes seven times the memory at 2,000 tokens. Batches
here are cut from the rows sorted by cost (the cache entries a row needs: its prompt plus what is
generated after it) so that `rows x largest cost <= budget` and `rows <= max_rows`. The default
budget is a memory figure, `CACHE_BYTES` per cache copy, turned into entries of the larger model's
cache (45 KiB per token for SmolLM2-135M in float32, so about 17k tokens; 224 KiB for Qwen3-0.6B,
so about 3.5k). An evaluation keeps a few such copies alive at once (the shared prefix, the condition
being answered, the copy `generate` decodes into): see `eval/conditions.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

from lcf_jax.models.model import Model

CACHE_BYTES = 768 * 2**20  # one batch's KV cache (one copy): 768 MiB


def cache_bytes_per_token(model: Model) -> int:
    """Bytes one token takes in `model`'s KV cache (keys and values of every layer)."""
    c = model.config
    return 2 * c.num_layers * c.num_kv_heads * c.head_dim * model.dtype.itemsize


def default_budget(*models: Model) -> int:
    """Cache entries per batch that fit `CACHE_BYTES` in the most expensive of `models`' caches."""
    return max(1, CACHE_BYTES // max(cache_bytes_per_token(m) for m in models))


def token_batches(costs: Sequence[int], budget: int, max_rows: int) -> list[list[int]]:
    """Indices into `costs` grouped into batches, cheapest first: within a batch the rows are
    consecutive in cost order and `len(batch) * max(cost) <= budget` (a row that alone costs more
    than the budget is a batch of its own) and `len(batch) <= max_rows`."""
    if budget < 1 or max_rows < 1:
        raise ValueError(f"need a token budget and a row limit of at least 1, got {budget} and {max_rows}")
    order = sorted(range(len(costs)), key=lambda i: (costs[i], i))
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        # Sorted ascending, so the row joining a batch is its largest.
        if current and len(current) < max_rows and (len(current) + 1) * costs[i] <= budget:
            current.append(i)
        else:
            batches.append([i])
    return batches
