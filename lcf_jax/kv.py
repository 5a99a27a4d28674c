"""The explicit KV cache: a plain pytree value passed into and returned from every forward.

Layout: `k`, `v` are `[L, B, S, K, H]` (layers, batch, cache capacity, kv heads, head dim) and hold
post-RoPE keys, exactly what transformers caches. `lengths` `[B]` counts the valid entries of each
row: row b's tokens sit at positions `0 .. lengths[b]-1` and new tokens are written at
`lengths[b]`, so rows of different lengths share one array (right padding) and a padded batch
computes what its rows compute alone. Entries at or beyond `lengths[b]` are never attended to.

The adapters read one model's cache and write another's, so any layer can be read and replaced.
An adapter may also inject entries that only some layers see (`entry_mask`) and that take no text
position (`position_shift`); both are None, and cost nothing, otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from lcf_jax.models.config import ModelConfig
from lcf_jax.sizes import round_up
from lcf_jax.typing import Array, DType

# Caches grow in blocks of this many entries (`KVCache.with_room`), so a token-by-token caller
# recompiles rarely.
CACHE_BLOCK = 64


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    k: Array  # [L, B, S, K, H]
    v: Array  # [L, B, S, K, H]
    lengths: Array  # [B] int32
    # Only after an adapter injected prefix entries (LCF-X `message_injection="prefix"`):
    entry_mask: Array | None = None  # [L, B, S] bool: which entries each layer may attend to
    position_shift: Array | None = None  # [B] int32: injected entries, which take no text position

    @classmethod
    def init(cls, config: ModelConfig, batch: int, capacity: int, dtype: DType = jnp.float32) -> KVCache:
        """An empty cache for `batch` rows of up to `capacity` tokens."""
        shape = (config.num_layers, batch, capacity, config.num_kv_heads, config.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))

    @property
    def num_layers(self) -> int:
        return self.k.shape[0]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        """S: the most tokens a row can hold."""
        return self.k.shape[2]

    def replace(self, **changes) -> KVCache:
        return dataclasses.replace(self, **changes)

    def layer(self, index: int) -> tuple[Array, Array]:
        """Keys and values of one layer, each `[B, S, K, H]`."""
        return self.k[index], self.v[index]

    def with_layer(self, index: int, k: Array, v: Array) -> KVCache:
        """A copy with one layer's keys and values replaced (shapes must match)."""
        if k.shape != self.k.shape[1:] or v.shape != self.v.shape[1:]:
            raise ValueError(
                f"layer {index}: expected k and v of shape {self.k.shape[1:]}, got {k.shape} and {v.shape}"
            )
        return self.replace(
            k=self.k.at[index].set(k.astype(self.k.dtype)), v=self.v.at[index].set(v.astype(self.v.dtype))
        )

    def valid_mask(self) -> Array:
        """`[B, S]` True where an entry holds a real token."""
        return jnp.arange(self.capacity)[None, :] < self.lengths[:, None]

    def with_room(self, needed: int) -> KVCache:
        """A copy with room for `needed` entries per row, its capacity a multiple of `CACHE_BLOCK` (so
        caches of similar sizes share compiled programs); itself when that capacity is no larger."""
        return self.with_capacity(round_up(needed, CACHE_BLOCK))

    def with_capacity(self, capacity: int) -> KVCache:
        """A copy whose S axis is grown (zero-padded) to at least `capacity`."""
        extra = capacity - self.capacity
        if extra <= 0:
            return self
        pad = ((0, 0), (0, 0), (0, extra), (0, 0), (0, 0))
        entry_mask = None if self.entry_mask is None else jnp.pad(self.entry_mask, pad[:3])
        return self.replace(k=jnp.pad(self.k, pad), v=jnp.pad(self.v, pad), entry_mask=entry_mask)

    def take_rows(self, rows) -> KVCache:
        """A cache of only these rows (indices into the batch axis), in this order."""
        rows = jnp.asarray(rows, jnp.int32)
        return self.replace(
            k=self.k[:, rows],
            v=self.v[:, rows],
            lengths=self.lengths[rows],
            entry_mask=None if self.entry_mask is None else self.entry_mask[:, rows],
            position_shift=None if self.position_shift is None else self.position_shift[rows],
        )

    @staticmethod
    def concatenate(caches: Sequence[KVCache]) -> KVCache:
        """One cache holding every row of `caches`, in order (the smaller capacities zero-padded to
        the largest)."""
        if not caches:
            raise ValueError("concatenate needs at least one cache")
        for field in ("entry_mask", "position_shift"):
            if len({getattr(c, field) is None for c in caches}) > 1:
                raise ValueError(f"concatenate: some caches have a {field} (injected entries) and some do not")
        capacity = max(c.capacity for c in caches)
        caches = [c.with_capacity(capacity) for c in caches]

        def joined(field: str, axis: int) -> Array | None:
            parts = [getattr(c, field) for c in caches]
            return None if parts[0] is None else jnp.concatenate(parts, axis=axis)

        return KVCache(
            joined("k", 1), joined("v", 1), joined("lengths", 0), joined("entry_mask", 1), joined("position_shift", 0)
        )

    def check_compatible(self, config: ModelConfig, batch: int) -> None:
        """Raise a clear error if this cache was not made for `config` and a batch of `batch` rows."""
        want = (config.num_layers, batch, config.num_kv_heads, config.head_dim)
        got = (self.k.shape[0], self.k.shape[1], self.k.shape[3], self.k.shape[4])
        if want != got:
            raise ValueError(
                f"KV cache shape {tuple(self.k.shape)} [L, B, S, K, H] does not fit this model and batch: "
                f"expected L={want[0]}, B={want[1]}, K={want[2]}, H={want[3]}"
            )


# -- row writes: the one place cache entries are written ------------------------------------------


def write_rows(cache: Array, new: Array, starts: Array) -> Array:
    """Write `new` `[B, T, K, H]` into `cache` `[B, S, K, H]` at a per-row offset `starts` `[B]`."""
    return jax.vmap(lambda c, n, s: jax.lax.dynamic_update_slice(c, n, (s, 0, 0)))(cache, new, starts)


def write_layer_rows(cache: Array, layer: Array, new: Array, starts: Array) -> Array:
    """`write_rows` into layer `layer` of a whole cache `[L, B, S, K, H]`, in place: only the new
    entries are written (the layer scan carries the whole cache, so nothing else is copied)."""
    b, t = new.shape[:2]
    rows = jnp.arange(b)[:, None]
    slots = starts[:, None] + jnp.arange(t)[None, :]  # [B, T]
    return cache.at[layer, rows, slots].set(new.astype(cache.dtype), mode="drop")
