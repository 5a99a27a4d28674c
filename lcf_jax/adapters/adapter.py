"""`Adapter`: one projector per kept receiver layer, stacked so all layers run as one batched
computation (`jax.vmap` over the layer axis), plus LCF-X's stacked span pool.

The adapter only ever produces *residuals* for the receiver's cache, `R' = R + residual`, so a
closed gate or a zero residual leaves the receiver's cache, and its logits, bit-identical; several
sharers' residuals against the same clean receiver cache can simply be summed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lcf_jax.adapter_format import KINDS
from lcf_jax.adapters.blocks import split_keys
from lcf_jax.adapters.c2c import C2CProjector
from lcf_jax.adapters.lcf import LCFProjector
from lcf_jax.adapters.lcfx import Message, SpanPool
from lcf_jax.kv import KVCache, write_rows
from lcf_jax.models.config import ModelConfig
from lcf_jax.typing import Array


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    """Everything that fixes an adapter's shapes and behaviour (hashable: a static jit argument)."""

    kind: str
    sharer: ModelConfig
    receiver: ModelConfig
    layers: tuple[int, ...]  # receiver layers with a projector, ascending
    source_layers: tuple[int, ...]  # the sharer layer each of them reads
    layer_map: str = "last_aligned"
    latent_width: int = 128  # d of lcf / lcfx
    hidden_width: int = 1024  # c2c's hidden width
    dropout: float = 0.1
    activation: str = "gelu"
    gate_init: float = 0.0
    message_slots: int = 1  # lcfx: summary slots per layer
    message_injection: str = "broadcast"  # lcfx: "broadcast" (the paper) or "prefix" (slots as extra entries)
    receiver_conditioned: bool = False  # lcfx: span queries conditioned on the receiver's cache
    compute_dtype: str = "float32"  # the projectors' matmul inputs ("bfloat16": faster, params stay float32)
    up_init: str = "lecun"  # lcf/lcfx: "zeros" starts the residuals at zero (the receiver intact)
    gate_inference: str = "hard"  # lcf/lcfx: "hard" (logit > 0, the paper) or "soft" (sigmoid(logit))
    slot_query_init: str = "zeros"  # lcfx: "zeros" (every slot starts as mean pooling) or "normal" (distinct)
    message_norm: str = "none"  # lcfx: "none" or "standardize" (per layer, slot, head and dim; set from data)

    @property
    def sharer_width(self) -> int:
        return self.sharer.kv_width

    def message_shape(self, batch: int) -> tuple[int, int, int, int, int]:
        """`[N, B, M, K_S, H_S]`: the shape of an LCF-X message's keys (and values) for `batch` rows."""
        return (len(self.layers), batch, self.message_slots, self.sharer.num_kv_heads, self.sharer.head_dim)

    def describe(self) -> str:
        return (
            f"{self.kind} adapter, {len(self.layers)} of {self.receiver.num_layers} receiver layers, "
            f"sharer cache [L={self.sharer.num_layers}, K={self.sharer.num_kv_heads}, H={self.sharer.head_dim}] -> "
            f"receiver cache [L={self.receiver.num_layers}, K={self.receiver.num_kv_heads}, H={self.receiver.head_dim}]"
        )


def _check_cache(cache: KVCache, config: ModelConfig, role: str, spec: AdapterSpec) -> None:
    got = (cache.k.shape[0], cache.k.shape[3], cache.k.shape[4])
    want = (config.num_layers, config.num_kv_heads, config.head_dim)
    if got != want:
        raise ValueError(
            f"{role} cache has shape {tuple(cache.k.shape)} [L, B, S, K, H] but this {spec.kind} adapter was built "
            f"for a {role} with L={want[0]}, K={want[1]}, H={want[2]}: use an adapter built for this model pair"
        )


def _vmap_layers(stacked: nnx.Module, fn: Callable, *per_layer):
    """Run `fn(module_of_one_layer, *inputs_of_that_layer)` for every layer as one vmapped call."""
    graphdef, state = nnx.split(stacked)
    return jax.vmap(lambda s, *xs: fn(nnx.merge(graphdef, s), *xs))(state, *per_layer)


def _select(cache: KVCache, layers: tuple[int, ...]) -> tuple[Array, Array]:
    """Keys and values of `layers` `[N, B, S, K, H]` (no gather when they are all the layers in order)."""
    if layers == tuple(range(cache.num_layers)):
        return cache.k, cache.v
    idx = jnp.asarray(layers)
    return cache.k[idx], cache.v[idx]


def _frozen(pair: tuple[Array, Array]) -> tuple[Array, Array]:
    """A model's keys and values as constants: both models are frozen, so no gradient flows from
    the adapter back into either model's cache."""
    return jax.lax.stop_gradient(pair[0]), jax.lax.stop_gradient(pair[1])


def fuse_mask(sharer: KVCache, receiver: KVCache) -> Array:
    """`[B, S]` True where both caches hold a token: where a position-matched residual applies."""
    return receiver.valid_mask() & (jnp.arange(receiver.capacity)[None] < sharer.lengths[:, None])


def _per_entry(mask: Array) -> Array:
    """A `[B, S]` mask broadcastable against residuals and caches `[N or L, B, S, K, H]`."""
    return mask[None, :, :, None, None]


def masked(residual: Array, mask: Array) -> Array:
    """A residual `[N, B, S, K, H]` zeroed outside `mask` `[B, S]`."""
    return jnp.where(_per_entry(mask), residual, 0.0)


def _layer_keys(rng: Array | None, n: int) -> Array | None:
    """`[N]` keys (or `[N, B]` per-row keys), one per adapter layer, for the vmap over layers."""
    return None if rng is None else jnp.stack(split_keys(rng, n))


def _projectors(spec: AdapterSpec, rngs: nnx.Rngs) -> nnx.Module:
    """One projector per adapter layer, stacked on a leading layer axis (C2C's fuser for "c2c", the
    LCF bottleneck for "lcf" and "lcfx")."""
    r = spec.receiver
    common = dict(
        dropout_rate=spec.dropout,
        activation=spec.activation,
        gate_init=spec.gate_init,
        compute_dtype=spec.compute_dtype,
    )

    @nnx.split_rngs(splits=len(spec.layers))
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs):
        if spec.kind == "c2c":
            return C2CProjector(
                spec.sharer_width, r.num_kv_heads, r.head_dim, hidden=spec.hidden_width, rngs=rngs, **common
            )
        return LCFProjector(
            spec.sharer_width, r.num_kv_heads, r.head_dim, latent_width=spec.latent_width, rngs=rngs,
            up_init=spec.up_init, soft_gates=spec.gate_inference == "soft", **common,
        )  # fmt: skip

    return make(rngs)


def _span_pools(spec: AdapterSpec, rngs: nnx.Rngs) -> SpanPool:
    """LCF-X's two-stage pool, one per adapter layer, stacked like the projectors."""
    s, r = spec.sharer, spec.receiver

    @nnx.split_rngs(splits=len(spec.layers))
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs):
        return SpanPool(
            s.num_kv_heads,
            s.head_dim,
            slots=spec.message_slots,
            slot_query_init=spec.slot_query_init,
            standardize=spec.message_norm == "standardize",
            receiver_width=r.kv_width if spec.receiver_conditioned else None,
            rngs=rngs,
        )

    return make(rngs)


class Adapter(nnx.Module):
    """What every adapter kind shares: the stacked projectors and the residual core (compute
    residuals, add them to a receiver cache, read the gates). Two types build on it, one per way of
    communicating: `FusingAdapter` (lcf, c2c: position-matched caches of a shared context) and
    `MessageAdapter` (lcfx: a message summarising a context the receiver does not have). Build
    either with `make_adapter(spec, rngs=...)`, which picks the type from `spec.kind`."""

    KINDS: tuple[str, ...] = ()  # the spec kinds a type serves; the base serves none

    def __init__(self, spec: AdapterSpec, *, rngs: nnx.Rngs):
        if spec.kind not in type(self).KINDS:
            raise ValueError(
                f"{type(self).__name__} cannot hold a {spec.kind!r} adapter: build one with "
                "lcf_jax.adapters.make_adapter(spec, rngs=...), which picks the type for its kind"
            )
        self.spec = spec
        self.projectors = _projectors(spec, rngs)

    # -- the residual core ------------------------------------------------------------------------

    def residuals(self, sk, sv, rk, rv, *, rng: Array | None = None, temperature=1.0) -> tuple[Array, Array]:
        """Per-layer residuals `[N, B, S, K_R, H_R]` from sharer entries `sk, sv` `[N, B, S, K_S, H_S]`
        (one per receiver position, or `S = 1`: one summary for all positions) and receiver entries
        `rk, rv` `[N, B, S, K_R, H_R]`."""
        keys = _layer_keys(rng, len(self.spec.layers))

        def one(projector, sk, sv, rk, rv, key=None):
            # No stop_gradient here: for LCF-X `sk, sv` is the message, and the span pool that made
            # it learns through this gradient. The models' caches are cut off by the callers.
            sk, sv, rk, rv = (x.astype(jnp.float32) for x in (sk, sv, rk, rv))
            return projector(sk, sv, rk, rv, key, temperature)

        args = (sk, sv, rk, rv) if keys is None else (sk, sv, rk, rv, keys)
        return _vmap_layers(self.projectors, one, *args)

    def apply_residuals(self, receiver: KVCache, dk: Array, dv: Array, mask: Array | None = None) -> KVCache:
        """`R' = R + residual` on the adapter's layers, only where `mask` `[B, S]` (default: the
        receiver's valid entries) is True. Other layers and entries are untouched."""
        m = _per_entry(receiver.valid_mask() if mask is None else mask)

        def add(cache, residual):
            # Entries outside the mask are kept as they are, bit for bit (not x + 0).
            return jnp.where(m, (cache.astype(jnp.float32) + residual).astype(cache.dtype), cache)

        if self.spec.layers == tuple(range(receiver.num_layers)):  # every layer: no gather, no scatter
            k, v = jax.lax.stop_gradient(receiver.k), jax.lax.stop_gradient(receiver.v)
            return receiver.replace(k=add(k, dk), v=add(v, dv))
        idx = jnp.asarray(self.spec.layers)
        k_sel, v_sel = jax.lax.stop_gradient(receiver.k[idx]), jax.lax.stop_gradient(receiver.v[idx])
        return receiver.replace(k=receiver.k.at[idx].set(add(k_sel, dk)), v=receiver.v.at[idx].set(add(v_sel, dv)))

    # -- inspection --------------------------------------------------------------------------------

    def gate_logits(self) -> Array:
        """`[N, 2]`: each kept layer's key and value gate logits (each projector kind names its own)."""
        return self.projectors.gate_logits()


class FusingAdapter(Adapter):
    """LCF and C2C: the sharer and the receiver read the same context, and each receiver entry is
    rewritten from the sharer's entry at its position."""

    KINDS = ("lcf", "c2c")

    def fuse_residuals(self, sharer: KVCache, receiver: KVCache, *, rng=None, temperature=1.0) -> tuple[Array, Array]:
        """Residuals for a receiver cache from a sharer cache over the same tokens."""
        spec = self.spec
        _check_cache(sharer, spec.sharer, "sharer", spec)
        _check_cache(receiver, spec.receiver, "receiver", spec)
        if sharer.batch_size != receiver.batch_size:
            raise ValueError(f"sharer batch {sharer.batch_size} != receiver batch {receiver.batch_size}")
        s = receiver.capacity
        sk, sv = _frozen(_select(sharer.with_capacity(s), spec.source_layers))
        rk, rv = _frozen(_select(receiver, spec.layers))
        return self.residuals(sk[:, :, :s], sv[:, :, :s], rk, rv, rng=rng, temperature=temperature)

    def fuse(self, sharer: KVCache, receiver: KVCache, *, rng=None, temperature=1.0, mask=None) -> KVCache:
        """Rewrite the receiver's cache from the sharer's cache of the same prompt. Entries are
        fused where both caches hold a token (and `mask` `[B, S]`, if given, is True)."""
        dk, dv = self.fuse_residuals(sharer, receiver, rng=rng, temperature=temperature)
        both = fuse_mask(sharer, receiver)
        return self.apply_residuals(receiver, dk, dv, both if mask is None else both & mask)


class MessageAdapter(Adapter):
    """LCF-X: the sharer's context is summarised (`summarize`) into a position-free message that
    any receiver context can take in (`receive`)."""

    KINDS = ("lcfx",)

    def __init__(self, spec: AdapterSpec, *, rngs: nnx.Rngs):
        super().__init__(spec, rngs=rngs)
        self.pool = _span_pools(spec, rngs)

    def summarize(self, sharer: KVCache, span_ids: Array, num_spans: int, receiver: KVCache | None = None) -> Message:
        """The message: per adapter layer, the two-stage pool over the sharer layer it reads.
        `span_ids` `[B, S_S]` gives each sharer token's span (-1: padding, never pooled)."""
        spec = self.spec
        _check_cache(sharer, spec.sharer, "sharer", spec)
        span_ids = jnp.asarray(span_ids, jnp.int32)
        if span_ids.shape[0] != sharer.batch_size or span_ids.shape[1] > sharer.capacity:
            raise ValueError(
                f"span_ids shape {tuple(span_ids.shape)} does not fit the sharer cache [B={sharer.batch_size}, "
                f"S={sharer.capacity}]"
            )
        # Tokens past a row's length are padding whatever span_ids says.
        width = span_ids.shape[1]
        span_ids = jnp.where(jnp.arange(width)[None] < sharer.lengths[:, None], span_ids, -1)
        src = jnp.asarray(spec.source_layers)
        sk = jax.lax.stop_gradient(sharer.k[src][:, :, :width])
        sv = jax.lax.stop_gradient(sharer.v[src][:, :, :width])
        if spec.receiver_conditioned:
            if receiver is None:
                raise ValueError("this adapter's pool is receiver-conditioned: pass receiver= to summarize()")
            _check_cache(receiver, spec.receiver, "receiver", spec)
            idx = jnp.asarray(spec.layers)
            valid = receiver.valid_mask()
            k, v = _vmap_layers(
                self.pool,
                lambda pool, a, b, rk: pool(a, b, span_ids, num_spans, rk, valid),
                sk,
                sv,
                jax.lax.stop_gradient(receiver.k[idx]),
            )
        else:
            k, v = _vmap_layers(self.pool, lambda pool, a, b: pool(a, b, span_ids, num_spans), sk, sv)
        return Message(k, v)

    def calibrate_message_norm(
        self, sharer: KVCache, span_ids: Array, num_spans: int, receiver: KVCache | None = None
    ) -> None:
        """Message standardisation's data-dependent init (`message_norm="standardize"`): set each
        pool's shift and scale so that these rows' messages have mean 0 and std 1 per layer, slot,
        head and dim. Starts from the identity, so calibrating twice on a batch gives the same result."""
        if self.spec.message_norm != "standardize":
            raise ValueError("calibrate_message_norm() needs an lcfx adapter with message_norm='standardize'")
        if sharer.batch_size < 2:
            raise ValueError("standardising the message needs statistics over 2 or more rows")
        self.pool.norm_shift[...] = jnp.zeros_like(self.pool.norm_shift[...])
        self.pool.norm_scale[...] = jnp.ones_like(self.pool.norm_scale[...])
        message = self.summarize(sharer, span_ids, num_spans, receiver)
        both = jnp.stack([message.k, message.v], axis=1)  # [N, 2, B, M, K, H]
        # The floor keeps a dim that no row varies in from being blown up (it then stays ~centred).
        rms = jnp.sqrt(jnp.mean(both**2, axis=(2, 3, 4, 5)))[:, :, None, None, None]  # per layer, keys/values
        std = jnp.maximum(both.std(axis=2), 1e-3 * rms)
        self.pool.norm_shift[...] = both.mean(axis=2)
        self.pool.norm_scale[...] = 1.0 / std

    def check_message(self, message: Message) -> None:
        spec = self.spec
        want = (len(spec.layers), spec.message_slots, spec.sharer.num_kv_heads, spec.sharer.head_dim)
        got = (message.k.shape[0], message.k.shape[2], message.k.shape[3], message.k.shape[4])
        if got != want:
            raise ValueError(
                f"message of shape {tuple(message.k.shape)} [N, B, M, K, H] does not fit this adapter, which expects "
                f"N={want[0]} layers, M={want[1]} slots, K={want[2]}, H={want[3]}: the message came from an adapter "
                "built for other models"
            )

    def empty_message(self, batch: int) -> Message:
        """An all-zero float32 message for `batch` rows: the empty-message control, and what the
        receiver-only control is trained and evaluated with (nothing is received)."""
        shape = self.spec.message_shape(batch)
        return Message(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))

    def receive_residuals(self, message: Message, receiver: KVCache, *, rng=None, temperature=1.0):
        if self.spec.message_injection == "prefix":
            raise ValueError("a prefix-mode message adds entries instead of residuals: apply it with receive()")
        self.check_message(message)
        _check_cache(receiver, self.spec.receiver, "receiver", self.spec)
        if message.batch_size != receiver.batch_size:
            raise ValueError(f"message batch {message.batch_size} != receiver batch {receiver.batch_size}")
        rk, rv = _frozen(_select(receiver, self.spec.layers))
        # One summary per layer for every receiver position: passed with a position axis of 1, so the
        # projector multiplies it once per row and broadcasts (slots beyond the first are the prefix
        # option's; in broadcast mode M is 1).
        return self.residuals(message.k[:, :, :1], message.v[:, :, :1], rk, rv, rng=rng, temperature=temperature)

    def receive(self, message: Message, receiver: KVCache, *, rng=None, temperature=1.0) -> KVCache:
        """Apply a message to the receiver's own cache. Broadcast mode edits the receiver's entries
        (its length does not change); prefix mode appends the message's slots as M new entries."""
        if self.spec.message_injection == "prefix":
            return self.inject_prefix(message, receiver, rng=rng, temperature=temperature)
        dk, dv = self.receive_residuals(message, receiver, rng=rng, temperature=temperature)
        return self.apply_residuals(receiver, dk, dv)

    def inject_prefix(self, message: Message, receiver: KVCache, *, rng=None, temperature=1.0) -> KVCache:
        """Prefix mode: each slot m becomes one extra receiver entry per adapter layer, the LCF
        projector's gated output for (K*_m, V*_m) with empty receiver inputs. The entries take cache
        slots after each row's tokens but no text position, and a layer sees them only if it has a
        projector whose gate is open (at inference) — so closed gates still change nothing."""
        self.check_message(message)
        _check_cache(receiver, self.spec.receiver, "receiver", self.spec)
        spec, m = self.spec, self.spec.message_slots
        n, b = len(spec.layers), message.batch_size
        r = spec.receiver
        empty = jnp.zeros((n, b, m, r.num_kv_heads, r.head_dim), jnp.float32)
        ek, ev = self.residuals(message.k, message.v, empty, empty, rng=rng, temperature=temperature)
        idx = jnp.asarray(spec.layers)
        full_k = jnp.zeros((r.num_layers, *ek.shape[1:]), receiver.k.dtype).at[idx].set(ek.astype(receiver.k.dtype))
        full_v = jnp.zeros((r.num_layers, *ev.shape[1:]), receiver.v.dtype).at[idx].set(ev.astype(receiver.v.dtype))
        cache = receiver.with_capacity(receiver.capacity + m)
        write = jax.vmap(write_rows, in_axes=(0, 0, None))  # over layers
        starts = cache.lengths
        # Inference: a layer sees the entries if a gate is open. Training: soft gates scale the
        # entries, which stay visible.
        hard = rng is None and spec.gate_inference == "hard"
        open_gate = jnp.any(self.gate_logits() > 0, axis=-1) if hard else jnp.ones((n,), bool)  # [N]
        layer_sees = jnp.zeros((r.num_layers,), bool).at[idx].set(open_gate)  # [L]
        visible = jnp.ones(cache.k.shape[:3], bool) if cache.entry_mask is None else cache.entry_mask
        slot = jnp.arange(cache.capacity)[None, :]
        injected = (slot >= starts[:, None]) & (slot < starts[:, None] + m)  # [B, S]
        visible = jnp.where(injected[None], layer_sees[:, None, None], visible)
        shift = jnp.zeros_like(starts) if cache.position_shift is None else cache.position_shift
        return cache.replace(
            k=write(cache.k, full_k, starts),
            v=write(cache.v, full_v, starts),
            lengths=starts + m,
            entry_mask=visible,
            position_shift=shift + m,
        )


ADAPTER_TYPES: dict[str, type[Adapter]] = {kind: t for t in (FusingAdapter, MessageAdapter) for kind in t.KINDS}


def make_adapter(spec: AdapterSpec, *, rngs: nnx.Rngs) -> FusingAdapter | MessageAdapter:
    """A new adapter of the type `spec.kind` asks for, its parameters drawn from `rngs`."""
    if spec.kind not in ADAPTER_TYPES:
        raise ValueError(f"unknown adapter kind {spec.kind!r}; choose one of {KINDS}")
    return ADAPTER_TYPES[spec.kind](spec, rngs=rngs)
