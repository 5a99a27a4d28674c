"""The communication pipeline: how a message travels from a sharer's cache to a receiver's answer.

Shared context (lcf, c2c): both models prefill the same prompt except its last token, the adapter
rewrites the receiver's cache from the sharer's, and the receiver continues from its last prompt
token.

Different contexts (lcfx): the sharer prefills its own context and `send` summarises its cache over
spans into a `Message` (a fixed-size pytree, `message.nbytes` on the wire); the receiver prefills
its own context and question, `receive` applies the message to that cache, and it answers.

Several sharers into one receiver: `parallel` sums each sharer's residual against the same clean
receiver cache; `sequential` applies them one after another.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcf_jax.adapters import Adapter, Message
from lcf_jax.adapters.lcfx import spans_from_lengths, window_spans
from lcf_jax.kv import KVCache
from lcf_jax.models.model import CACHE_BLOCK, Model, forward
from lcf_jax.sampling import Generation, generate, pad_batch

BUCKET = 64


def prefill(
    model: Model, prompts: Sequence[Sequence[int]], *, bucket: int = BUCKET, chunk: int | None = None
) -> KVCache:
    """The cache of each prompt (rows right-padded to a multiple of `bucket` tokens). With `chunk`,
    prompts longer than that many tokens are read `chunk` tokens at a time (`extend`), which bounds
    the attention scores a call holds to `rows x heads x chunk x cache length`."""
    if chunk is not None and max(len(p) for p in prompts) > chunk:
        return extend(model, model.new_cache(len(prompts), 0), prompts, bucket=bucket, chunk=chunk)
    tokens, lengths = pad_batch(prompts, pad_id=model.config.pad_token_id or 0, multiple=bucket)
    cache = model.new_cache(len(prompts), tokens.shape[1])
    _, cache = forward(model.graphdef, model.params, jnp.asarray(tokens), cache, jnp.asarray(lengths), last_only=True)
    return cache


def extend(
    model: Model, cache: KVCache, rows: Sequence[Sequence[int]], *, bucket: int = 32, chunk: int | None = None
) -> KVCache:
    """The cache with each row's tokens appended after what it holds (rows may be empty; the cache
    grows as needed). Chunked prefill: equal to prefilling the concatenated prompts at once. With
    `chunk`, rows are appended at most `chunk` tokens per call (the cache grows once, up front)."""
    if not any(rows):
        return cache
    longest = max(len(r) for r in rows)
    step = longest if chunk is None else chunk
    pieces = [[list(r[i : i + step]) for r in rows] for i in range(0, longest, step)]
    widths = [-(-max(len(r) for r in piece) // bucket) * bucket for piece in pieces]
    needed = int(np.max(np.asarray(cache.lengths))) + sum(widths)
    cache = cache.with_capacity(-(-needed // CACHE_BLOCK) * CACHE_BLOCK)
    pad_id = model.config.pad_token_id or 0
    for piece, width in zip(pieces, widths):
        tokens = np.full((len(piece), width), pad_id, np.int32)
        for out, row in zip(tokens, piece):
            out[: len(row)] = row
        lengths = jnp.asarray([len(r) for r in piece], jnp.int32)
        _, cache = forward(model.graphdef, model.params, jnp.asarray(tokens), cache, lengths, last_only=True)
    return cache


def split_last(prompts: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """Each prompt as (all but its last token, [its last token])."""
    if any(len(p) < 2 for p in prompts):
        raise ValueError("each prompt needs at least 2 tokens: all but the last are fused, the last starts the answer")
    return [list(p[:-1]) for p in prompts], [[p[-1]] for p in prompts]


# -- jitted adapter calls (the adapter is split once per call; the graph is a static argument) ------


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _fuse(graphdef, params, sharer: KVCache, receiver: KVCache, mask):
    return nnx.merge(graphdef, params).fuse(sharer, receiver, mask=mask)


@functools.partial(jax.jit, static_argnames=("graphdef", "num_spans"))
def _summarize(graphdef, params, sharer: KVCache, span_ids, num_spans: int, receiver: KVCache | None):
    return nnx.merge(graphdef, params).summarize(sharer, span_ids, num_spans, receiver)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _receive(graphdef, params, message: Message, receiver: KVCache):
    return nnx.merge(graphdef, params).receive(message, receiver)


@functools.partial(jax.jit, static_argnames=("graphdef", "kind"))
def _residuals(graphdef, params, kind: str, source, receiver: KVCache):
    adapter = nnx.merge(graphdef, params)
    if kind == "message":
        return adapter.receive_residuals(source, receiver)
    return adapter.fuse_residuals(source, receiver)


def fuse(adapter: Adapter, sharer_cache: KVCache, receiver_cache: KVCache, mask=None) -> KVCache:
    """Shared context: the receiver's cache rewritten from the sharer's cache of the same tokens."""
    graphdef, params = nnx.split(adapter)
    return _fuse(graphdef, params, sharer_cache, receiver_cache, None if mask is None else jnp.asarray(mask))


def send(
    adapter: Adapter,
    sharer: Model,
    contexts: Sequence[Sequence[Sequence[int]]],
    *,
    window: int | None = None,
    receiver_cache: KVCache | None = None,
    bucket: int = BUCKET,
) -> Message:
    """Different contexts: each row's context, given as a list of spans (paragraphs) of token ids, is
    read by the sharer and summarised into a message. With `window`, the concatenated context is cut
    into fixed windows of that many tokens instead of its paragraphs."""
    rows = [[t for span in row for t in span] for row in contexts]
    if any(not r for r in rows):
        raise ValueError("every sharer context needs at least one token")
    cache = prefill(sharer, rows, bucket=bucket)
    if window is None:
        span_ids, num_spans = spans_from_lengths([[len(s) for s in row if len(s)] for row in contexts], cache.capacity)
    else:
        span_ids, num_spans = window_spans([len(r) for r in rows], window, cache.capacity)
    # Round the span count up so different batches share compiled programs.
    num_spans = -(-num_spans // 8) * 8
    graphdef, params = nnx.split(adapter)
    return _summarize(graphdef, params, cache, jnp.asarray(span_ids), num_spans, receiver_cache)


def receive(adapter: Adapter, message: Message, receiver_cache: KVCache) -> KVCache:
    """Apply a message to the receiver's own cache (its length does not change)."""
    graphdef, params = nnx.split(adapter)
    return _receive(graphdef, params, message, receiver_cache)


def combine(
    sources: Sequence[tuple[Adapter, Message | KVCache]], receiver_cache: KVCache, *, mode: str = "parallel"
) -> KVCache:
    """Several sharers into one receiver. Each source is (adapter, message) for lcfx or (adapter,
    sharer cache) for lcf/c2c. `parallel`: every residual is computed against the same clean receiver
    cache and their sum is applied once; `sequential`: each source sees the previous one's result."""
    if mode not in ("parallel", "sequential"):
        raise ValueError(f"mode must be 'parallel' or 'sequential', got {mode!r}")
    if mode == "sequential":
        for adapter, source in sources:
            if isinstance(source, Message):
                receiver_cache = receive(adapter, source, receiver_cache)
            else:
                receiver_cache = fuse(adapter, source, receiver_cache)
        return receiver_cache
    total_k = jnp.zeros(receiver_cache.k.shape, jnp.float32)
    total_v = jnp.zeros(receiver_cache.v.shape, jnp.float32)
    for adapter, source in sources:
        graphdef, params = nnx.split(adapter)
        kind = "message" if isinstance(source, Message) else "cache"
        dk, dv = _residuals(graphdef, params, kind, source, receiver_cache)
        mask = receiver_cache.valid_mask()
        if kind == "cache":
            mask = mask & (jnp.arange(receiver_cache.capacity)[None] < source.lengths[:, None])
        m = mask[None, :, :, None, None]
        idx = jnp.asarray(adapter.spec.layers)
        total_k = total_k.at[idx].add(jnp.where(m, dk, 0.0))
        total_v = total_v.at[idx].add(jnp.where(m, dv, 0.0))
    return receiver_cache.replace(
        k=(receiver_cache.k.astype(jnp.float32) + total_k).astype(receiver_cache.k.dtype),
        v=(receiver_cache.v.astype(jnp.float32) + total_v).astype(receiver_cache.v.dtype),
    )


# -- end to end ----------------------------------------------------------------------------------


def answer_shared_context(
    adapter: Adapter,
    sharer: Model,
    receiver: Model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    sharer_prompts: Sequence[Sequence[int]] | None = None,
    fuse_mask: Sequence[Sequence[bool]] | None = None,
    **generate_options,
) -> Generation:
    """Shared context end to end. `prompts` are receiver token ids; `sharer_prompts` the sharer's
    tokens aligned one to one with them (default: the same ids, for models sharing a tokenizer; see
    `lcf_jax.align` otherwise); `fuse_mask` marks the positions to fuse (default: all)."""
    heads, lasts = split_last(prompts)
    sharer_heads = heads if sharer_prompts is None else split_last(sharer_prompts)[0]
    if [len(h) for h in sharer_heads] != [len(h) for h in heads]:
        raise ValueError("sharer_prompts must align one to one with prompts (same length per row)")
    receiver_cache = prefill(receiver, heads)
    sharer_cache = prefill(sharer, sharer_heads)
    mask = None
    if fuse_mask is not None:
        mask = np.zeros((len(heads), receiver_cache.capacity), bool)
        for row, m in zip(mask, fuse_mask):
            row[: len(m) - 1] = np.asarray(m[:-1], bool)
    fused = fuse(adapter, sharer_cache, receiver_cache, mask)
    return generate(receiver, lasts, max_new_tokens, cache=fused, bucket=1, **generate_options)


def answer_different_contexts(
    adapter: Adapter,
    sharer: Model,
    receiver: Model,
    sharer_contexts: Sequence[Sequence[Sequence[int]]],
    receiver_prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    message: Message | None = None,
    window: int | None = None,
    **generate_options,
) -> tuple[Generation, Message]:
    """LCF-X end to end: the sharer summarises its contexts (or `message` is given, e.g. a control),
    the receiver reads its own prompt, applies the message and answers. Returns the answers and the
    message that was sent."""
    heads, lasts = split_last(receiver_prompts)
    receiver_cache = prefill(receiver, heads)
    if message is None:
        conditioned = adapter.spec.receiver_conditioned
        message = send(
            adapter, sharer, sharer_contexts, window=window, receiver_cache=receiver_cache if conditioned else None
        )
    fused = receive(adapter, message, receiver_cache)
    return generate(receiver, lasts, max_new_tokens, cache=fused, bucket=1, **generate_options), message
