"""The receiver's greedy answers in a batch: from whole prompts, or continuing a cache."""

from __future__ import annotations

from collections.abc import Sequence

from lcf_jax import communicate
from lcf_jax.eval.prompts import decode
from lcf_jax.eval.setup import Setup
from lcf_jax.kv import KVCache
from lcf_jax.models.model import Model
from lcf_jax.runtime import release_free_memory
from lcf_jax.sampling import Generation, generate, stop_token_ids


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    first, n = rows[0], min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return n


# Batched prompts are right-padded to a multiple of these many tokens. A batch's longest row sets its
# width anyway; coarser buckets only add padding: with 64 (whole prompts) and 32 (cache extensions)
# the demo's 300 questions prefilled 199k tokens for 157k real ones, with these 175k, for a few more
# compiled shapes.
PROMPT_BUCKET = 16
EXTEND_BUCKET = 8


def generate_answers(setup: Setup, model: Model, prompts: Sequence[Sequence[int]], max_tokens: int) -> Generation:
    """`generate` on whole prompts; prompts longer than `setup.prefill_chunk` are prefilled in chunks
    first (all but their last token), so no call holds the scores of a whole long prompt."""
    if max(len(p) for p in prompts) <= setup.prefill_chunk:
        return generate(model, [list(p) for p in prompts], max_tokens, bucket=PROMPT_BUCKET)
    cache = communicate.prefill(model, [p[:-1] for p in prompts], bucket=EXTEND_BUCKET, chunk=setup.prefill_chunk)
    return generate(model, [p[-1:] for p in prompts], max_tokens, cache=cache, bucket=1)


def answers_from(
    setup: Setup, cache: KVCache | None, suffixes: Sequence[Sequence[int]], max_tokens: int | None = None
) -> list[str]:
    """The receiver's greedy answers continuing `cache` with each row's remaining prompt tokens (with
    no cache, the rows are whole prompts)."""
    model, max_tokens = setup.receiver, max_tokens or setup.max_answer_tokens
    if cache is None:
        out = generate_answers(setup, model, suffixes, max_tokens)
    else:
        out = generate(model, [list(s) for s in suffixes], max_tokens, cache=cache, bucket=EXTEND_BUCKET)
    answers = [decode(model, row) for row in out.token_lists(stop_tokens=stop_token_ids(model))]
    del out
    # Each condition's caches differ in size from the last one's: give their pages back before the
    # next, or the heap grows by the holes (lcf_jax/runtime.py; 6.3 -> see BENCHMARKS.md).
    release_free_memory()
    return answers
