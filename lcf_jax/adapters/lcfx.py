"""LCF-X, different contexts: a position-free summary (the *message*) of what the sharer knows.

Per receiver layer l, reading sharer layer G(l):
 1. span pooling: a learned query `q_base[l]` `[K, H]` attends, per kv head, only to the tokens of
    each span (softmax of q.k / sqrt(H)) and pools keys and values into P summaries `[B, P, K, H]`;
 2. cross-span pooling: a learned query `q_layer[l]` attends over the P summaries, giving the
    message `K*, V*` `[B, 1, K, H]`;
 3. the receiver broadcasts `K*, V*` to each of its positions and feeds them to the LCF projector in
    place of the position-matched sharer cache (`adapter.py`).
Spans are given as `span_ids` `[B, S]` (span index per sharer token, -1 for padding), so P may be
anything from 1 (the whole context) to S (one span per token) without changing the message shape.
Pooling uses segment sums, so memory is O(S), not O(P * S).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcf_jax.typing import Array

_MASK = -1e30


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Message:
    """What the sharer sends: per adapter layer, M summary slots of sharer keys and values.

    k, v: `[N, B, M, K_S, H_S]` (N = layers with a projector, M = slots, 1 in the paper)."""

    k: Array
    v: Array

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: the message is all the receiver gets from the sharer."""
        return int(self.k.size * self.k.dtype.itemsize + self.v.size * self.v.dtype.itemsize)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]


def span_pool(q: Array, k: Array, v: Array, span_ids: Array, num_spans: int) -> tuple[Array, Array, Array]:
    """Attention pooling of each span. q `[B, K, H]`; k, v `[B, S, K, H]`; span_ids `[B, S]` int.

    Returns pooled keys and values `[B, P, K, H]` and `[B, P]` True where a span has tokens."""
    b, s, kv, h = k.shape
    p = num_spans
    scores = jnp.einsum("BKH,BSKH->BSK", q, k.astype(jnp.float32)) / math.sqrt(h)
    # Every (row, span) pair is a segment; padding and out-of-range ids go to a discarded segment P.
    span = jnp.where((span_ids >= 0) & (span_ids < p), span_ids, p)
    seg = (span + jnp.arange(b)[:, None] * (p + 1)).reshape(-1)
    n = b * (p + 1)
    scores = scores.reshape(b * s, kv)
    top = jax.ops.segment_max(scores, seg, n)
    e = jnp.exp(scores - top[seg])
    weights = e / jax.ops.segment_sum(e, seg, n)[seg]  # [B*S, K]

    def pool(x):
        pooled = jax.ops.segment_sum(weights[..., None] * x.reshape(b * s, kv, h).astype(jnp.float32), seg, n)
        return pooled.reshape(b, p + 1, kv, h)[:, :p]

    valid = jax.ops.segment_sum(jnp.ones((b * s,), jnp.int32), seg, n).reshape(b, p + 1)[:, :p] > 0
    return pool(k), pool(v), valid


def cross_span_pool(q: Array, k_spans: Array, v_spans: Array, valid: Array) -> tuple[Array, Array]:
    """Slot queries q `[M, K, H]` attend over span summaries `[B, P, K, H]` -> `[B, M, K, H]` each."""
    h = k_spans.shape[-1]
    scores = jnp.einsum("MKH,BPKH->BMPK", q, k_spans) / math.sqrt(h)
    scores = jnp.where(valid[:, None, :, None], scores, _MASK)
    weights = jax.nn.softmax(scores, axis=2) * valid[:, None, :, None]  # a row with no spans pools to 0
    return jnp.einsum("BMPK,BPKH->BMKH", weights, k_spans), jnp.einsum("BMPK,BPKH->BMKH", weights, v_spans)


# slot_query_init="normal": the slot queries' std. Span summaries of SmolLM2's keys have norm ~16 per
# head (H = 64), so q.k / sqrt(H) then starts with std ~1: distinct slots, none of them peaked.
SLOT_QUERY_STD = 0.5


class SpanPool(nnx.Module):
    """The two-stage pool of one receiver layer: 2*K*H parameters (plus M-1 slot queries, plus the
    receiver-conditioning projection when enabled, plus 4*M*K*H for message standardisation).

    Queries start at zero, so an untrained pool is mean pooling, and M slots are M copies of one
    summary; `slot_query_init="normal"` draws the slot queries instead, so the slots start distinct
    (ours: the paper has one slot). With `receiver_width` set, the span query becomes
    `q_base + cond(mean of the receiver's keys)` so the summary can favour what the receiver does
    not already hold; `cond` starts at zero, i.e. at the unconditioned pool.

    `standardize`: the message leaves as `(x - shift) * scale` per slot, head and dim (keys and
    values apart). Why: a summary's variation between questions is a few percent of its size (std
    ~0.1 against receiver keys of RMS ~2.2 on the demo), so in the projector's input the message is
    nearly a constant. Shift and scale start at the identity and are set from a batch of real
    messages (`MessageAdapter.calibrate_message_norm`: mean 0, std 1 over its rows), then train (ours)."""

    def __init__(
        self,
        kv_heads: int,
        head_dim: int,
        *,
        slots: int = 1,
        receiver_width: int | None = None,
        slot_query_init: str = "zeros",
        standardize: bool = False,
        rngs: nnx.Rngs,
    ):
        self.q_base = nnx.Param(jnp.zeros((kv_heads, head_dim), jnp.float32))
        shape = (slots, kv_heads, head_dim)
        if slot_query_init == "normal":
            self.q_layer = nnx.Param(SLOT_QUERY_STD * jax.random.normal(rngs.params(), shape, jnp.float32))
        else:
            self.q_layer = nnx.Param(jnp.zeros(shape, jnp.float32))
        if standardize:
            self.norm_shift = nnx.Param(jnp.zeros((2, *shape), jnp.float32))  # keys, values
            self.norm_scale = nnx.Param(jnp.ones((2, *shape), jnp.float32))
        self.standardize = standardize
        if receiver_width is not None:
            self.cond = nnx.Linear(
                receiver_width, kv_heads * head_dim, use_bias=False, kernel_init=nnx.initializers.zeros, rngs=rngs
            )
        self.conditioned = receiver_width is not None

    def __call__(self, sk, sv, span_ids, num_spans: int, receiver_k=None, receiver_valid=None) -> tuple[Array, Array]:
        """sk, sv `[B, S, K, H]` of the sharer layer this receiver layer reads -> `[B, M, K, H]` each."""
        b = sk.shape[0]
        q = jnp.broadcast_to(self.q_base[...], (b, *self.q_base.shape))
        if self.conditioned:
            if receiver_k is None:
                raise ValueError("this LCF-X pool is receiver-conditioned: pass the receiver's cache to summarize()")
            mask = receiver_valid[:, :, None].astype(jnp.float32)  # [B, S_R, 1]
            flat = receiver_k.reshape(*receiver_k.shape[:2], -1).astype(jnp.float32)
            mean = (flat * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)  # [B, K_R*H_R]
            q = q + self.cond(mean).reshape(q.shape)
        k_spans, v_spans, valid = span_pool(q, sk, sv, span_ids, num_spans)
        k, v = cross_span_pool(self.q_layer[...], k_spans, v_spans, valid)
        if self.standardize:
            shift, scale = self.norm_shift[...], self.norm_scale[...]
            k, v = (k - shift[0]) * scale[0], (v - shift[1]) * scale[1]
        return k, v


def spans_from_lengths(span_lengths: Sequence[Sequence[int]], width: int | None = None) -> tuple[np.ndarray, int]:
    """`span_ids` `[B, S]` from each row's span lengths in tokens (e.g. its paragraphs), right-padded
    with -1, and the number of span slots P (the most spans in any row)."""
    rows = [np.repeat(np.arange(len(lengths)), lengths) for lengths in span_lengths]
    width = width or max(len(r) for r in rows)
    ids = np.full((len(rows), width), -1, np.int32)
    for out, row in zip(ids, rows):
        out[: len(row)] = row[:width]
    return ids, max(1, max(len(lengths) for lengths in span_lengths))


def window_spans(lengths: Sequence[int], window: int, width: int | None = None) -> tuple[np.ndarray, int]:
    """Fixed windows of `window` tokens over each row's first `lengths[b]` tokens."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return spans_from_lengths([[window] * (n // window) + ([n % window] if n % window else []) for n in lengths], width)
