"""Adapters applied to transformers' own caches (`transformers.DynamicCache`, whose layer `i` holds
`cache.layers[i].keys` and `.values` `[B, K, S, H]`, post-RoPE, as lcf_jax's `KVCache` does).

Shared context (lcf, c2c): `fuse(adapter, sharer_cache, receiver_cache)` pairs entries slot by slot,
so both models must have prefilled the same token positions with the same padding.
Different contexts (lcfx): `summarize(adapter, sharer_cache, span_ids)` gives the `Message`,
`receive(adapter, message, receiver_cache)` adds its residuals to every receiver entry (broadcast
injection; prefix injection is not supported here).

Padding: any. `attention_mask` `[B, S]` (1 for a token, 0 for padding, left or right, as transformers
uses it) says which entries are tokens; only those are rewritten, and padding never enters a
summary. Without it every entry counts as a token (batch 1, or rows without padding).

Each function returns a new cache and leaves its input untouched: the layers the adapter rewrites
get new tensors, the others are shared with the input (transformers appends by concatenation, so
continuing either cache never changes the other).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicLayer

from lcf_jax.torch.adapter import Adapter, Message, ModelShape


def _check_cache(cache, want: ModelShape, role: str, adapter: Adapter) -> tuple[int, int]:
    """(batch, positions) of a cache after checking it is a full-attention dynamic cache of the
    shape the adapter was built for."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"the {role} cache must be a transformers Cache (DynamicCache), got {type(cache).__name__}")
    for i, layer in enumerate(layers):
        # Exactly DynamicLayer: sliding-window, quantized or static layers hold their entries otherwise.
        if type(layer) is not DynamicLayer:
            raise TypeError(
                f"{role} cache layer {i} is a {type(layer).__name__}: lcf_jax.torch rewrites full-attention "
                "DynamicCache layers only (the cache transformers builds by default)"
            )
        if layer.keys is None or layer.keys.dim() != 4:
            raise ValueError(f"{role} cache layer {i} is empty: prefill the {role} before applying the adapter")
    b, k, s, h = layers[0].keys.shape
    got = ModelShape(len(layers), k, h)
    if got != want:
        raise ValueError(
            f"the {role} cache has {got.describe()} (layer keys [B, K, S, H] = {tuple(layers[0].keys.shape)}), but "
            f"this {adapter.kind} adapter was built for a {role} with {want.describe()}: use an adapter exported "
            "for this model pair"
        )
    return b, s


def _mask(attention_mask, batch: int, positions: int, role: str, device) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones((batch, positions), dtype=torch.bool, device=device)
    mask = torch.as_tensor(attention_mask, device=device).bool()
    if tuple(mask.shape) != (batch, positions):
        raise ValueError(
            f"the {role} attention_mask has shape {tuple(mask.shape)}, but the {role} cache holds [B={batch}, "
            f"S={positions}] entries"
        )
    return mask


def layer_tensors(cache, layers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of `layers`, stacked in lcf_jax's layout `[N, B, S, K, H]`."""
    k = torch.stack([cache.layers[i].keys.transpose(1, 2) for i in layers])
    v = torch.stack([cache.layers[i].values.transpose(1, 2) for i in layers])
    return k, v


def _with_residuals(cache, layers: Sequence[int], dk: torch.Tensor, dv: torch.Tensor, mask: torch.Tensor):
    """A copy of `cache` with `R' = R + residual` on `layers` where `mask` `[B, S]` is True (in
    float32, then back to the cache's dtype, as lcf_jax does)."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    m = mask[:, None, :, None]  # [B, 1, S, 1] against [B, K, S, H]

    def add(entries: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        residual = residual.transpose(1, 2).to(entries.device)  # [B, S, K, H] -> [B, K, S, H]
        return torch.where(m, (entries.float() + residual.float()).to(entries.dtype), entries)

    for n, t in enumerate(layers):
        out.layers[t].keys = add(cache.layers[t].keys, dk[n])
        out.layers[t].values = add(cache.layers[t].values, dv[n])
    return out


@torch.no_grad()
def fuse(adapter: Adapter, sharer_cache, receiver_cache, attention_mask=None, sharer_attention_mask=None):
    """Shared context (lcf, c2c): the receiver's cache rewritten from the sharer's cache of the same
    tokens. Entries are fused where both masks hold a token (`sharer_attention_mask` defaults to
    `attention_mask`: the same padding)."""
    config = adapter.config
    if config.kind == "lcfx":
        raise ValueError("an lcfx adapter does not fuse position-matched caches: use summarize() and receive()")
    b, s = _check_cache(receiver_cache, config.receiver, "receiver", adapter)
    sb, ss = _check_cache(sharer_cache, config.sharer, "sharer", adapter)
    if (sb, ss) != (b, s):
        raise ValueError(
            f"the sharer cache holds [B={sb}, S={ss}] entries and the receiver's [B={b}, S={s}]: shared-context "
            "fusion pairs entries position by position, so prefill both models on the same tokens with the same padding"
        )
    device = receiver_cache.layers[0].keys.device
    mask = _mask(attention_mask, b, s, "receiver", device)
    sharer_mask = mask if sharer_attention_mask is None else _mask(sharer_attention_mask, b, s, "sharer", device)
    sk, sv = layer_tensors(sharer_cache, config.source_layers)
    rk, rv = layer_tensors(receiver_cache, config.layers)
    dk, dv = adapter.residuals(sk, sv, rk, rv)
    return _with_residuals(receiver_cache, config.layers, dk, dv, mask & sharer_mask)


def span_ids_from_lengths(span_lengths: Sequence[Sequence[int]], width: int | None = None) -> tuple[torch.Tensor, int]:
    """`span_ids` `[B, S]` from each row's span lengths in tokens (e.g. its paragraphs), right-padded
    with -1, and the number of spans P (the most in any row). Empty spans are skipped."""
    rows = [torch.repeat_interleave(torch.arange(len(n)), torch.as_tensor(n, dtype=torch.long)) for n in span_lengths]
    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), -1, dtype=torch.long)
    for out, row in zip(ids, rows):
        out[: min(len(row), width)] = row[:width]
    return ids, max(1, max(len(n) for n in span_lengths))


@torch.no_grad()
def summarize(
    adapter: Adapter,
    sharer_cache,
    span_ids,
    num_spans: int | None = None,
    *,
    attention_mask=None,
    receiver_cache=None,
    receiver_attention_mask=None,
) -> Message:
    """Different contexts (lcfx): the message summarising the sharer's cache. `span_ids` `[B, S']`
    (S' <= the cache's S) gives each sharer token's span, -1 for padding; `num_spans` defaults to
    the largest id + 1. A receiver-conditioned adapter also reads the receiver's cache."""
    config = adapter.config
    if config.kind != "lcfx":
        raise ValueError(f"summarize() needs an lcfx adapter, this one is {config.kind!r}")
    b, s = _check_cache(sharer_cache, config.sharer, "sharer", adapter)
    device = sharer_cache.layers[0].keys.device
    span_ids = torch.as_tensor(span_ids, dtype=torch.long, device=device)
    if span_ids.dim() != 2 or span_ids.shape[0] != b or span_ids.shape[1] > s:
        raise ValueError(
            f"span_ids of shape {tuple(span_ids.shape)} do not fit the sharer cache [B={b}, S={s}]: give one id per "
            "sharer token, -1 for padding"
        )
    width = span_ids.shape[1]
    span_ids = torch.where(_mask(attention_mask, b, s, "sharer", device)[:, :width], span_ids, -1)
    if num_spans is None:
        num_spans = max(1, int(span_ids.max()) + 1)
    sk, sv = layer_tensors(sharer_cache, config.source_layers)
    receiver_k = receiver_mask = None
    if config.receiver_conditioned:
        if receiver_cache is None:
            raise ValueError("this adapter's pool is receiver-conditioned: pass receiver_cache= to summarize()")
        rb, rs = _check_cache(receiver_cache, config.receiver, "receiver", adapter)
        if rb != b:
            raise ValueError(f"sharer batch {b} != receiver batch {rb}")
        receiver_k = layer_tensors(receiver_cache, config.layers)[0]
        receiver_mask = _mask(receiver_attention_mask, rb, rs, "receiver", device)
    return adapter.pool_message(sk[:, :, :width], sv[:, :, :width], span_ids, num_spans, receiver_k, receiver_mask)


@torch.no_grad()
def receive(adapter: Adapter, message: Message, receiver_cache, attention_mask=None):
    """Apply a message to the receiver's own cache: its summary, broadcast to every receiver
    position, goes through the LCF projector and the residuals are added (the length does not
    change)."""
    config = adapter.config
    if config.kind != "lcfx":
        raise ValueError(f"receive() needs an lcfx adapter, this one is {config.kind!r}")
    if config.message_injection != "broadcast":
        raise NotImplementedError(
            f"message_injection={config.message_injection!r}: prefix messages add cache entries that only some "
            "layers see and that take no text position, which transformers' caches cannot express; lcf_jax.torch "
            "runs broadcast adapters (use lcf_jax for prefix ones)"
        )
    b, s = _check_cache(receiver_cache, config.receiver, "receiver", adapter)
    want = (len(config.layers), b, config.message_slots, config.sharer.num_kv_heads, config.sharer.head_dim)
    if tuple(message.k.shape) != want or tuple(message.v.shape) != want:
        raise ValueError(
            f"message of shape {tuple(message.k.shape)} [N, B, M, K, H] does not fit this adapter and receiver "
            f"cache, which expect {want}: was it made by another adapter, or for another batch?"
        )
    mask = _mask(attention_mask, b, s, "receiver", receiver_cache.layers[0].keys.device)
    rk, rv = layer_tensors(receiver_cache, config.layers)
    # One summary per layer for every position: passed with a position axis of 1, as lcf_jax does.
    dk, dv = adapter.residuals(message.k[:, :, :1], message.v[:, :, :1], rk, rv)
    return _with_residuals(receiver_cache, config.layers, dk, dv, mask)
