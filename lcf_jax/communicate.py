"""The communication pipeline: how a message travels from a sharer's cache to a receiver's answer.

Shared context (lcf, c2c): both models prefill the same prompt except its last token, the adapter
rewrites the receiver's cache from the sharer's, and the receiver continues from its last prompt
token.

Different contexts (lcfx): the sharer prefills its own context and `send` summarises its cache over
spans into a `Message` (a fixed-size pytree, `message.nbytes` on the wire); the receiver prefills
its own context and question, `receive` applies the message to that cache, and it answers.

KV-cache messages (kind "kv", `lcf_jax/messages/kv.py`): the sharer prefills the receiver's
opening and its own context and sends selected entries of its cache (`KVMessage`); the receiver
prefills the same opening, `receive` places the entries after it, and the receiver reads the rest
of its prompt (`extend`) and answers. Training-free when the two are one model.

Several sharers into one receiver: `parallel` sums each sharer's residual against the same clean
receiver cache; `sequential` applies them one after another.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcf_jax.adapters import Adapter, FusingAdapter, Message, MessageAdapter
from lcf_jax.adapters.adapter import fuse_mask, masked
from lcf_jax.adapters.lcfx import spans_from_lengths, window_spans
from lcf_jax.kv import KVCache
from lcf_jax.messages import kv as kv_messages
from lcf_jax.messages.kv import KVMessage
from lcf_jax.messages.translate import KVTranslator
from lcf_jax.models.model import Model
from lcf_jax.sampling import BUCKET, Generation, extend, generate, prefill
from lcf_jax.sizes import round_up


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


def _expect(adapter, wanted: type[Adapter], use: str) -> None:
    """A clear error when an adapter of the other type reaches a path (each type has only its own
    methods: an lcf adapter has no `summarize`)."""
    if not isinstance(adapter, wanted):
        got = adapter.spec.kind if isinstance(adapter, Adapter) else type(adapter).__name__
        raise ValueError(f"{use} needs a {wanted.__name__} ({' or '.join(wanted.KINDS)}), got a {got!r} adapter")


def fuse(adapter: FusingAdapter, sharer_cache: KVCache, receiver_cache: KVCache, mask=None) -> KVCache:
    """Shared context: the receiver's cache rewritten from the sharer's cache of the same tokens."""
    _expect(adapter, FusingAdapter, "fusing a shared context")
    graphdef, params = nnx.split(adapter)
    return _fuse(graphdef, params, sharer_cache, receiver_cache, None if mask is None else jnp.asarray(mask))


def send(
    adapter: Adapter | None,
    sharer: Model,
    contexts: Sequence[Sequence[Sequence[int]]],
    *,
    window: int | None = None,
    receiver_cache: KVCache | None = None,
    bucket: int = BUCKET,
    kind: str = "lcfx",
    opening: Sequence[int] | Sequence[Sequence[int]] | None = None,
    entries: int | float | None = None,
    policy: str = "all",
    layers: Sequence[int] | None = None,
    questions: Sequence[Sequence[int]] | None = None,
    clip: bool = False,
    chunk: int | None = None,
    unit: str = "token",
    agree: bool = False,
) -> Message | KVMessage:
    """Different contexts: each row's context, given as a list of spans (paragraphs) of token ids, is
    read by the sharer and turned into a message.

    kind "lcfx" (default): the adapter summarises the sharer's cache over the spans (with `window`,
    over fixed windows of that many tokens instead of its paragraphs) into a `Message`.

    kind "kv": selected entries of the sharer's own cache, a `KVMessage` (`lcf_jax/messages/kv.py`;
    `adapter` is None when the receiver is the same model). The sharer reads `opening` (the
    receiver's prompt up to where the context stands: one token list for every row, or one per
    row) and then the context; it sends `entries` context entries per row and layer (None: all; a
    count, or a fraction of each context), chosen by `policy` ("all", "attention", or "query", which
    reads each row's `questions` tokens after the context), from `layers` (None: all). A count
    larger than a context is an error unless `clip`. `unit="span"` keeps the best spans (the
    context's paragraphs) whole first; `agree` keeps the same entries in every layer. `chunk`:
    prefill long rows in pieces."""
    rows = [[t for span in row for t in span] for row in contexts]
    if any(not r for r in rows):
        raise ValueError("every sharer context needs at least one token")
    if kind == "kv":
        if adapter is not None:
            raise ValueError("a KV message from the same model needs no adapter: pass adapter=None")
        if policy not in kv_messages.POLICIES:
            raise ValueError(f"policy must be one of {', '.join(kv_messages.POLICIES)}, got {policy!r}")
        read = read_kv(
            sharer, rows, opening, attention=policy == "attention", questions=questions if policy == "query" else None,
            spans=[[len(span) for span in row] for row in contexts], bucket=bucket, chunk=chunk,
        )  # fmt: skip
        return select_kv(read, entries, policy=policy, layers=layers, clip=clip, unit=unit, agree=agree)
    if kind != "lcfx":
        raise ValueError(f"kind must be 'lcfx' or 'kv', got {kind!r}")
    _expect(adapter, MessageAdapter, "sending a message (the sharer's summary)")
    cache = prefill(sharer, rows, bucket=bucket)
    if window is None:
        span_ids, num_spans = spans_from_lengths([[len(s) for s in row if len(s)] for row in contexts], cache.capacity)
    else:
        span_ids, num_spans = window_spans([len(r) for r in rows], window, cache.capacity)
    # Round the span count up so different batches share compiled programs.
    num_spans = round_up(num_spans, 8)
    graphdef, params = nnx.split(adapter)
    return _summarize(graphdef, params, cache, jnp.asarray(span_ids), num_spans, receiver_cache)


def _openings(opening, batch: int) -> list[list[int]]:
    if opening is None:
        raise ValueError(
            "a KV message needs the opening the receiver reads before the context (opening=token ids, "
            "e.g. its chat template up to the facts header): the entries are computed behind it"
        )
    if len(opening) and isinstance(opening[0], (int, np.integer)):
        return [list(opening)] * batch
    if len(opening) != batch:
        raise ValueError(f"opening: one token list for every row, or one per row ({batch}), got {len(opening)}")
    return [list(o) for o in opening]


@dataclasses.dataclass
class KVRead:
    """The sharer's cache of opening + context for a batch of rows (`cache`), with the attention its context
    entries received (from the context's own tokens, `attention_scores`, and from the question
    read after it, `question_scores`) where asked: every KV message of those rows is selected from
    one read (`select_kv`)."""

    sharer: Model
    cache: KVCache
    starts: np.ndarray  # [B] opening tokens
    lengths: np.ndarray  # [B] context tokens
    attention_scores: jax.Array | None = None  # [L, B, S]
    question_scores: jax.Array | None = None  # [L, B, S]
    span_ids: np.ndarray | None = None  # [B, S] each context entry's span (paragraph), -1 elsewhere


def read_kv(
    sharer: Model,
    rows: Sequence[Sequence[int]],
    opening,
    *,
    attention: bool = False,
    questions: Sequence[Sequence[int]] | None = None,
    spans: Sequence[Sequence[int]] | None = None,
    bucket: int = BUCKET,
    chunk: int | None = None,
) -> KVRead:
    """The sharer reads `opening` + each row's context (token ids), with the attention scores the
    `attention` policy needs (from the same pass), and then `questions` for the `query` policy.
    `spans`: each row's span (paragraph) lengths, for selection by span (default: one span)."""
    if any(not r for r in rows):
        raise ValueError("every sharer context needs at least one token")
    if questions is not None and (len(questions) != len(rows) or not all(questions)):
        raise ValueError("policy 'query' ranks entries by the question's attention: pass questions=, tokens per row")
    openings = _openings(opening, len(rows))
    prompts = [o + list(r) for o, r in zip(openings, rows)]
    scores = question_scores = None
    if attention:
        cache, scores = prefill(sharer, prompts, bucket=bucket, chunk=chunk, attention_mass=True)
    else:
        cache = prefill(sharer, prompts, bucket=bucket, chunk=chunk)
    if questions is not None:  # the question's entries are not kept: `cache` holds opening + context
        _, question_scores = extend(sharer, cache, questions, chunk=chunk, attention_mass=True)
        question_scores = question_scores[..., : cache.capacity]  # the context's slots are all there
    starts = np.asarray([len(o) for o in openings], np.int32)
    lengths = np.asarray([len(r) for r in rows], np.int32)
    span_ids = np.full((len(rows), cache.capacity), -1, np.int32)
    for b, row in enumerate(rows):
        row_spans = [len(row)] if spans is None else [n for n in spans[b] if n]
        if sum(row_spans) != len(row):
            raise ValueError(f"row {b}: its span lengths add up to {sum(row_spans)}, its context has {len(row)} tokens")
        span_ids[b, starts[b] : starts[b] + len(row)] = np.repeat(np.arange(len(row_spans)), row_spans)
    return KVRead(sharer, cache, starts, lengths, scores, question_scores, span_ids)


# Entry slots per row are rounded up to a multiple of this, so batches share compiled programs.
ENTRY_BUCKET = 8


def select_kv(
    read: KVRead,
    entries: int | float | None = None,
    *,
    policy: str = "all",
    layers: Sequence[int] | None = None,
    clip: bool = False,
    unit: str = "token",
    agree: bool = False,
) -> KVMessage:
    """One KV message from a read: `entries` per row and layer (None: all; a count; a fraction of
    each context) by `policy`, from `layers` (None: all); `unit` "span" keeps whole spans first,
    `agree` the same entries in every layer (`kv_messages.select`). See `send(kind="kv")`."""
    if unit not in ("token", "span"):
        raise ValueError(f"unit must be 'token' or 'span', got {unit!r}")
    if policy not in kv_messages.POLICIES:
        raise ValueError(f"policy must be one of {', '.join(kv_messages.POLICIES)}, got {policy!r}")
    if policy == "all" and entries is not None:
        raise ValueError("policy 'all' sends every context entry: leave entries=None")
    scores = {"all": None, "attention": read.attention_scores, "query": read.question_scores}[policy]
    if policy != "all" and scores is None:
        what = "attention=True" if policy == "attention" else "questions="
        raise ValueError(f"policy {policy!r} needs a read with its scores: read_kv(..., {what})")
    num_layers = read.sharer.config.num_layers
    layers = tuple(range(num_layers)) if layers is None else tuple(sorted({int(i) for i in layers}))
    if not layers or layers[0] < 0 or layers[-1] >= num_layers:
        raise ValueError(f"layers must be indices in [0, {num_layers}), got {layers}")
    counts = kv_messages.entry_counts(read.lengths, entries, clip=clip)
    width = round_up(int(counts.max()), ENTRY_BUCKET)
    starts, lengths = jnp.asarray(read.starts), jnp.asarray(read.lengths)
    k, v, positions, valid = kv_messages.select(
        read.cache, scores, starts, lengths, jnp.asarray(counts, jnp.int32), jnp.asarray(read.span_ids),
        layers=layers, width=width, policy=policy, unit=unit, agree=agree,
    )  # fmt: skip
    signature = kv_messages.model_signature(read.sharer.config)
    return KVMessage(k, v, positions, valid, starts, lengths, layers, num_layers, signature)


def receive(
    adapter: Adapter | None, message: Message | KVMessage, receiver_cache: KVCache, *, receiver: Model | None = None
) -> KVCache:
    """Apply a message to the receiver's cache. An LCF-X `Message` rewrites the receiver's own cache
    (its length does not change). A `KVMessage` (adapter None for one model, a `KVTranslator` for
    two) is placed after the opening the receiver's cache holds; extend the result with the rest
    of the prompt. `receiver`: checked
    against the model the KV message was made for."""
    if isinstance(message, KVMessage):
        if isinstance(adapter, KVTranslator):  # two models: the sharer's entries in the receiver's terms
            message = adapter.translate(message)
        elif adapter is not None:
            raise ValueError(
                "a KV message needs no adapter from the same model, and a KVTranslator "
                "(lcf_jax.messages.translate) between two models"
            )
        model = None if receiver is None else kv_messages.model_signature(receiver.config)
        return kv_messages.place(message, receiver_cache, model=model)
    _expect(adapter, MessageAdapter, "receiving a message")
    graphdef, params = nnx.split(adapter)
    return _receive(graphdef, params, message, receiver_cache)


def rank_kv_layers(
    model: Model,
    opening: Sequence[int] | Sequence[Sequence[int]],
    contexts: Sequence[Sequence[int]],
    rests: Sequence[Sequence[int]],
    *,
    prior_weight: float = 0.5,
    chunk: int | None = None,
) -> np.ndarray:
    """KVComm-style layer scores `[L]` (higher: send first) from calibration prompts `opening +
    context + rest`: the share of attention the rest's tokens pay the context in each layer, mixed
    with a prior favouring middle layers (`kv_messages.layer_scores`). Pick with
    `kv_messages.pick_layers(scores, fraction)`."""
    openings = _openings(opening, len(contexts))
    cache = prefill(model, [o + list(c) for o, c in zip(openings, contexts)], chunk=chunk)
    cache, mass = extend(model, cache, rests, chunk=chunk, attention_mass=True)
    share = kv_messages.context_share(mass, [len(o) for o in openings], [len(c) for c in contexts])
    return kv_messages.layer_scores(share, prior_weight=prior_weight)


def fuse_positions(prompt_masks: Sequence[Sequence[bool]], capacity: int) -> np.ndarray:
    """`[B, capacity]` bool: which cache entries to fuse, from each prompt's per-token mask (e.g.
    `lcf_jax.align`'s: where the two tokenizers agree). The last prompt token is not in the cache
    (it starts the answer), so its flag is dropped."""
    mask = np.zeros((len(prompt_masks), capacity), bool)
    for row, m in zip(mask, prompt_masks):
        row[: len(m) - 1] = np.asarray(m[:-1], bool)
    return mask


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
        kind = "message" if isinstance(source, Message) else "cache"
        _expect(adapter, MessageAdapter if kind == "message" else FusingAdapter, f"combining a {kind}")
        graphdef, params = nnx.split(adapter)
        dk, dv = _residuals(graphdef, params, kind, source, receiver_cache)
        # Where each residual applies is the adapter's rule (`receive` / `fuse`), summed here.
        mask = receiver_cache.valid_mask() if kind == "message" else fuse_mask(source, receiver_cache)
        idx = jnp.asarray(adapter.spec.layers)
        total_k = total_k.at[idx].add(masked(dk, mask))
        total_v = total_v.at[idx].add(masked(dv, mask))
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
    mask = None if fuse_mask is None else fuse_positions(fuse_mask, receiver_cache.capacity)
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


def answer_with_kv(
    model: Model,
    opening: Sequence[int],
    contexts: Sequence[Sequence[Sequence[int]]],
    rests: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    generate_options: dict | None = None,
    sharer: Model | None = None,
    translator: KVTranslator | None = None,
    **send_options,
) -> tuple[Generation, KVMessage]:
    """KV message end to end, `model` as sharer and receiver (or `sharer` with its `translator`
    to `model`): the sharer reads `opening` and each row's context (spans of token ids) and sends
    a `KVMessage` (`send_options`: entries, policy, layers, questions, unit, agree, clip); the
    receiver prefills `opening`, places the entries, reads each row's `rest` (the prompt after the
    context) and answers greedily. Returns the answers and the message sent."""
    if (sharer is None) != (translator is None):
        raise ValueError("a second model needs its KV translator, and a translator its sharer: pass both or neither")
    message = send(None, sharer or model, contexts, kind="kv", opening=opening, **send_options)
    cache = prefill(model, [list(opening)] * len(contexts), bucket=8)
    cache = receive(translator, message, cache, receiver=model)
    cache = extend(model, cache, [list(r[:-1]) for r in rests], bucket=8)
    out = generate(
        model, [list(r[-1:]) for r in rests], max_new_tokens, cache=cache, bucket=1, **(generate_options or {})
    )
    return out, message
