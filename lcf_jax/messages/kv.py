"""KV-cache messages: the sharer sends selected entries of its own cache (KVComm, arXiv 2510.03346).

When sharer and receiver are one model, the sharer's cache entries are valid receiver entries. The
sharer prefills the receiver's *opening* (its chat template up to the facts header, the same tokens
for every question) followed by its own paragraphs, and sends entries of the paragraph tokens only;
the receiver prefills the same opening, `place`s the entries right after it and reads the rest of its
prompt (its own paragraphs and the question) as if the sharer's paragraphs stood there. With every
entry and layer sent this is one computation with a single prefill of that prompt (the exactness
test in tests/test_kv_messages.py), because a cache holds post-RoPE keys: an entry carries its
position in its rotation, and nothing is re-rotated.

Sending fewer entries leaves a gap: the receiver's later tokens keep the positions they have in the
full prompt (`KVCache.position_shift` = entries sent - context tokens, negative), so relative
distances to the opening and between the sent entries stay those of the full prompt. Layers not
sent see nothing of the message (`KVCache.entry_mask`): their queries attend to the receiver's
opening, which holds the attention sink (token 0), and to the receiver's own tokens. (The sink is
therefore always "kept": it is the first token of the shared opening, which the receiver computes
itself.)

Selection policies (`select`):
  all        every context entry: the lossless reference.
  attention  per layer, the top-M entries by the attention the sharer's own context tokens pay
             them in its prefill (summed over heads and queries; H2O's accumulated score), from the
             same pass (`forward(..., attention_mass=True)`). Question-agnostic.
  query      per layer, the top-M by the attention of the question's tokens, read by the sharer
             after its context (`sharer_sees_question`: it costs the receiver a round trip).
Entries may be a count or a fraction of each row's context. Each layer picks its own entries (the
receiver does not care: an entry's position is in its key), kept in text order; with `agree`,
every layer keeps the same ones (scores summed over layers). Unit "token" ranks entries one by
one; unit "span" ranks the context's spans (its paragraphs) by their entries' total score and
keeps the best ones whole, then the best entries of the next to fill the count (ChunkKV's idea,
arXiv 2502.00299: a fact torn apart is no fact). The evaluation's default rows use "query" by
"span" (DEFAULT_POLICY, DEFAULT_UNIT; measured below).

Layers (`communicate.rank_kv_layers`, `layer_scores`, `pick_layers`): all, or a fraction picked
KVComm's way: on a few calibration prompts, the share of its attention the receiver's tokens pay
to the sharer's entries in each layer, mixed with a Gaussian prior centred on the middle layer.
The mixing weight and the prior's width are our choices (KVComm's exact values are not in our
spec): `prior_weight=0.5`, sigma = L/4.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lcf_jax.kv import KVCache
from lcf_jax.models.config import ModelConfig
from lcf_jax.typing import Array

POLICIES = ("all", "attention", "query")
# The evaluation's default for the kv_share_<M> rows, chosen by measurement (64 demo questions,
# README "KV-cache messages"): question-agnostic attention kept too little of the answer's
# paragraph (F1 9.7 at 32 entries), the question's attention entry by entry broke paragraphs
# apart (5.6); the question's attention by whole paragraph kept the answer (54.2).
DEFAULT_POLICY = "query"
DEFAULT_UNIT = "span"


def model_signature(config: ModelConfig) -> str:
    """What a cache entry depends on besides the weights: a message fits models with this signature."""
    c = config
    return (
        f"{c.family} L={c.num_layers} K={c.num_kv_heads} H={c.head_dim} hidden={c.hidden_size} "
        f"rope_theta={c.rope_theta:g} vocab={c.vocab_size}"
    )


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["k", "v", "positions", "valid", "starts", "context_lengths"],
    meta_fields=["layers", "num_layers", "model"],
)
@dataclasses.dataclass(frozen=True)
class KVMessage:
    """Selected cache entries of the sharer, ready to place in the receiver's cache.

    k, v `[N, B, M, K, H]`: post-RoPE keys and values of N layers (`layers`), M entries per row;
    positions `[N, B, M]` int32: each entry's text position in the prompt it stands in;
    valid `[B, M]`: a row's first entries are real, the rest padding (rows send different counts);
    starts `[B]`: where the context starts (the opening's length); context_lengths `[B]`: the
    context's tokens (the positions the receiver's later tokens skip). Static: `layers` (which of
    the model's `num_layers` layers the N slices are) and `model` (`model_signature` of the model
    whose cache the entries fit).
    """

    k: Array
    v: Array
    positions: Array
    valid: Array
    starts: Array
    context_lengths: Array
    layers: tuple[int, ...]
    num_layers: int
    model: str

    @property
    def entries(self) -> int:
        """M: entry slots per row (some may be padding, see `valid`)."""
        return self.k.shape[2]

    def row_nbytes(self) -> np.ndarray:
        """Bytes each row sends: its real entries' keys and values in every sent layer, and their
        positions (int32)."""
        n, _, _, kv_heads, head_dim = self.k.shape
        per_entry = n * (2 * kv_heads * head_dim * self.k.dtype.itemsize + 4)
        return np.asarray(self.valid).sum(axis=1) * per_entry

    @property
    def nbytes(self) -> int:
        """Bytes on the wire for the whole batch (real entries only)."""
        return int(self.row_nbytes().sum())

    def take_rows(self, rows: Sequence[int]) -> KVMessage:
        rows = np.asarray(rows)
        return dataclasses.replace(
            self,
            k=self.k[:, rows],
            v=self.v[:, rows],
            positions=self.positions[:, rows],
            valid=self.valid[rows],
            starts=self.starts[rows],
            context_lengths=self.context_lengths[rows],
        )


def entry_counts(context_lengths: Sequence[int], entries: int | float | None, *, clip: bool = False) -> np.ndarray:
    """Entries each row sends: all (None), a count, or a fraction (0 < f <= 1) of its context.
    A count larger than a row's context is an error unless `clip` (then that row sends it all)."""
    lengths = np.asarray(context_lengths, np.int64)
    if entries is None:
        return lengths
    if isinstance(entries, float):
        if not 0.0 < entries <= 1.0:
            raise ValueError(f"entries as a fraction of the context must lie in (0, 1], got {entries}")
        return np.maximum(1, np.ceil(entries * lengths)).astype(np.int64)
    if int(entries) < 1:
        raise ValueError(f"entries must be at least 1, got {entries}")
    short = np.flatnonzero(lengths < entries)
    if len(short) and not clip:
        rows = ", ".join(f"row {i}: {lengths[i]} tokens" for i in short[:5])
        raise ValueError(
            f"entries={entries} is more than the context holds ({rows}); send a fraction "
            f"(entries=0.25), policy='all', or clip=True to send such contexts whole"
        )
    return np.minimum(lengths, int(entries))


@functools.partial(jax.jit, static_argnames=("layers", "width", "policy", "unit", "agree"))
def select(
    cache: KVCache,
    scores: Array | None,
    starts: Array,
    context_lengths: Array,
    counts: Array,
    span_ids: Array | None = None,
    *,
    layers: tuple[int, ...],
    width: int,
    policy: str,
    unit: str = "token",
    agree: bool = False,
) -> tuple[Array, Array, Array, Array]:
    """Pick each row's context entries from the sharer's `cache` (context slots are `starts ..
    starts + context_lengths`): `counts[b]` of them per layer, the highest `scores` `[L, B, S]` (or
    the first ones for policy `all`), in text order, padded to `width`. Returns `(k, v, positions,
    valid)` as `KVMessage` holds them.

    unit "span": whole spans first (`span_ids` `[B, S]`, -1 outside the context), by the total
    score of their entries, then the best entries of the next span to fill the count. agree: every
    layer keeps the same entries (scores summed over the sent layers) instead of its own."""
    s = cache.capacity
    slots = jnp.arange(s)[None, :]
    candidate = (slots >= starts[:, None]) & (slots < (starts + context_lengths)[:, None])  # [B, S]
    layer_index = jnp.asarray(layers)
    rank_ok = jnp.arange(width)[None, :] < counts[:, None]  # [B, M]
    if policy == "all":
        index = starts[:, None] + jnp.arange(width)[None, :]  # [B, M]
        index = jnp.broadcast_to(index, (len(layers), *index.shape))
        valid = rank_ok
    else:
        ranked = jnp.where(candidate[None], scores[layer_index], 0.0)  # [N, B, S]
        if agree:
            ranked = jnp.broadcast_to(ranked.sum(0, keepdims=True), ranked.shape)
        if unit == "span":
            spans = jnp.where(candidate, span_ids, -1)
            one_hot = (spans[..., None] == jnp.arange(s)[None, None, :]).astype(jnp.float32)  # [B, S, spans]
            span_total = jnp.einsum("NBS,BSP->NBP", ranked, one_hot)
            token_span = jnp.take_along_axis(span_total, jnp.maximum(spans, 0)[None].repeat(len(layers), 0), axis=2)
            # Best span first, then the best entries within it; entries outside the context last.
            order = jnp.lexsort((-ranked, -token_span, ~candidate[None].repeat(len(layers), 0)), axis=-1)
            top = order[..., :width]
        else:
            _, top = jax.lax.top_k(jnp.where(candidate[None], ranked, -jnp.inf), width)  # best first
        keep = rank_ok[None] & jnp.take_along_axis(jnp.broadcast_to(candidate[None], ranked.shape), top, axis=2)
        # Text order, the padding after the real entries: sort on the slot, pushed past S if unused.
        key = jnp.sort(jnp.where(keep, top, s + top), axis=2)
        valid = (key < s)[0]
        index = jnp.where(key < s, key, key - s)
    index = jnp.minimum(index, s - 1)
    gather = index[..., None, None]  # [N, B, M, 1, 1]
    k = jnp.take_along_axis(cache.k[layer_index], gather, axis=2)
    v = jnp.take_along_axis(cache.v[layer_index], gather, axis=2)
    valid_n = valid[None]
    k = jnp.where(valid_n[..., None, None], k, 0)
    v = jnp.where(valid_n[..., None, None], v, 0)
    return k, v, jnp.where(valid_n, index, 0).astype(jnp.int32), valid


@functools.partial(jax.jit, static_argnames=("layers",))
def _place(cache: KVCache, k, v, valid, starts, context_lengths, *, layers: tuple[int, ...]) -> KVCache:
    n, b, m = k.shape[:3]
    s = cache.capacity
    counts = valid.sum(axis=1).astype(jnp.int32)
    slots = starts[:, None] + jnp.arange(m)[None, :]  # [B, M]
    slots = jnp.where(valid, slots, s)  # padding entries are dropped
    layer_index = jnp.asarray(layers)[:, None, None]
    rows = jnp.arange(b)[None, :, None]
    new_k = cache.k.at[layer_index, rows, slots[None]].set(k.astype(cache.k.dtype), mode="drop")
    new_v = cache.v.at[layer_index, rows, slots[None]].set(v.astype(cache.v.dtype), mode="drop")
    shift = counts - context_lengths
    if cache.position_shift is not None:
        shift = shift + cache.position_shift
    entry_mask = cache.entry_mask
    if n < cache.num_layers:  # unsent layers must not see the slots the message fills in the others
        in_message = (jnp.arange(s)[None, :] >= starts[:, None]) & (jnp.arange(s)[None, :] < (starts + counts)[:, None])
        sent = jnp.zeros((cache.num_layers,), bool).at[jnp.asarray(layers)].set(True)
        hidden = in_message[None] & ~sent[:, None, None]  # [L, B, S]
        base = jnp.ones(hidden.shape, bool) if entry_mask is None else entry_mask
        entry_mask = base & ~hidden
    return cache.replace(
        k=new_k, v=new_v, lengths=starts + counts, position_shift=shift.astype(jnp.int32), entry_mask=entry_mask
    )


def place(message: KVMessage, cache: KVCache, *, model: str | None = None) -> KVCache:
    """The receiver's cache, which holds exactly the opening the sharer read (`message.starts`
    tokens per row), with the message's entries after it. Its later tokens take the positions they
    have in the full prompt. `model`: the receiver's `model_signature`, checked when given."""
    want = (message.num_layers, message.k.shape[3], message.k.shape[4])
    got = (cache.num_layers, cache.k.shape[3], cache.k.shape[4])
    if (model is not None and model != message.model) or want != got:
        raise ValueError(
            f"this KV message holds cache entries of another model ({message.model}); the receiver is "
            f"{model or 'a model with L={}, K={}, H={}'.format(*got)}. One model's entries fit only that "
            f"model: translate them with a KV translator trained for this pair (configs/kv_translator.py)"
        )
    if cache.batch_size != message.k.shape[1]:
        raise ValueError(f"the message has {message.k.shape[1]} rows, the receiver's cache {cache.batch_size}")
    have, starts = np.asarray(cache.lengths), np.asarray(message.starts)
    if not np.array_equal(have, starts):
        raise ValueError(
            f"the receiver's cache must hold exactly the opening the sharer read before its context "
            f"({starts.tolist()} tokens per row), it holds {have.tolist()}: prefill the opening only, "
            f"place the message, then extend with the rest of the prompt"
        )
    cache = cache.with_room(int(starts.max()) + message.entries)
    return _place(
        cache, message.k, message.v, message.valid, message.starts, message.context_lengths, layers=message.layers
    )


# -- layers -------------------------------------------------------------------------------------------


def layer_prior(num_layers: int, sigma: float | None = None) -> np.ndarray:
    """A Gaussian over layer index centred on the middle layer (peak 1), sigma = L/4 by default."""
    sigma = sigma or num_layers / 4
    index = np.arange(num_layers)
    return np.exp(-0.5 * ((index - (num_layers - 1) / 2) / sigma) ** 2)


def layer_scores(context_share: np.ndarray, *, prior_weight: float = 0.5) -> np.ndarray:
    """KVComm-style layer scores: the share of attention the receiver pays the sharer's entries in
    each layer (`[L]`, scaled to peak 1), mixed with the middle-layer prior."""
    share = np.asarray(context_share, np.float64)
    share = share / max(share.max(), 1e-12)
    return (1 - prior_weight) * share + prior_weight * layer_prior(len(share))


def pick_layers(scores: np.ndarray, fraction: float) -> tuple[int, ...]:
    """The best `fraction` of the layers by score (at least one), in layer order."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the layer fraction must lie in (0, 1], got {fraction}")
    count = max(1, math.ceil(fraction * len(scores)))
    return tuple(sorted(int(i) for i in np.argsort(-np.asarray(scores), kind="stable")[:count]))


def context_share(mass: Array, starts: Array, context_lengths: Array) -> np.ndarray:
    """`[L]`: of all the attention in `mass` `[L, B, S]`, the share that lands on each row's context
    slots, averaged over rows."""
    mass = np.asarray(mass, np.float64)
    slots = np.arange(mass.shape[2])[None, :]
    starts, lengths = np.asarray(starts)[:, None], np.asarray(context_lengths)[:, None]
    on_context = ((slots >= starts) & (slots < starts + lengths))[None]
    share = (mass * on_context).sum(-1) / np.maximum(mass.sum(-1), 1e-12)  # [L, B]
    return share.mean(axis=1)
