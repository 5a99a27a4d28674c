"""The one decoder shared by Llama, Qwen2 and Qwen3: tokens + cache in, logits + cache out.

Layers are stacked (`nnx.vmap` at construction: every parameter has a leading L axis) and applied
with `jax.lax.scan`, which compiles one layer instead of L and lines up with the cache's leading L
axis: layer l reads and writes `cache.k[l]`, `cache.v[l]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lcf_jax.kv import KVCache
from lcf_jax.models.config import ModelConfig
from lcf_jax.models.layers import MLP, Attention, RMSNorm
from lcf_jax.typing import Array, DType


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs, attention: str):
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, param_dtype=param_dtype)
        self.self_attn = Attention(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs, attention=attention)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, k_cache, v_cache, positions, starts, mask, layer=None, query_valid=None):
        with jax.named_scope("attention"):
            h, k_cache, v_cache, *mass = self.self_attn(
                self.input_layernorm(x), k_cache, v_cache, positions, starts, mask, layer, query_valid
            )
        x = x + h
        with jax.named_scope("mlp"):
            x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k_cache, v_cache, *mass


class Transformer(nnx.Module):
    """Decoder-only language model with an explicit `KVCache`. `attention`: the prefill kernel,
    "auto", "einsum" or "fused" (`lcf_jax.models.layers.ATTENTION_CHOICES`)."""

    def __init__(self, config: ModelConfig, *, dtype: DType = jnp.float32, rngs: nnx.Rngs, attention: str = "auto"):
        self.config = config
        d, v = config.hidden_size, config.vocab_size
        self.embed_tokens = nnx.Embed(v, d, dtype=dtype, param_dtype=dtype, rngs=rngs)

        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_layers(rngs: nnx.Rngs) -> DecoderLayer:
            return DecoderLayer(config, dtype=dtype, param_dtype=dtype, rngs=rngs, attention=attention)

        self.layers = make_layers(rngs)
        self.norm = RMSNorm(d, eps=config.rms_norm_eps, param_dtype=dtype)
        if not config.tie_word_embeddings:
            self.lm_head = nnx.Linear(d, v, use_bias=False, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(
        self,
        tokens: Array,
        cache: KVCache,
        input_lengths: Array | None = None,
        *,
        last_only: bool = False,
        attention_mass: bool = False,
    ):
        """Run `tokens` `[B, T]` after what `cache` holds.

        input_lengths `[B]`: how many of each row's T tokens are real (right padding); default all.
        Returns float32 logits `[B, T, V]` (or `[B, 1, V]` at each row's last real token when
        `last_only`) and the cache with the new tokens appended. With `attention_mass`, also the
        attention each cache entry receives from the new (real) tokens, per layer, summed over
        heads: `[L, B, S]` float32, from the same pass (KV-message selection).
        """
        b, t = tokens.shape
        if input_lengths is None:
            input_lengths = jnp.full((b,), t, jnp.int32)
        starts = cache.lengths
        new_lengths = starts + input_lengths
        slots = starts[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]  # [B, T] cache index of each token
        key_slots = jnp.arange(cache.capacity, dtype=jnp.int32)[None, None, :]
        # Causal within the new tokens, everything valid before them, nothing past a row's length.
        mask = (key_slots <= slots[:, :, None]) & (key_slots < new_lengths[:, None, None])  # [B, T, S]
        # Injected entries (an adapter's prefix message) occupy cache slots but no text positions.
        positions = slots if cache.position_shift is None else slots - cache.position_shift[:, None]
        entry_mask = cache.entry_mask
        if entry_mask is not None:  # the new tokens' own entries are visible in every layer
            fresh = (key_slots[:, 0] >= starts[:, None]) & (key_slots[:, 0] < starts[:, None] + t)  # [B, S]
            entry_mask = entry_mask | fresh[None]

        x = self.embed_tokens(tokens)  # [B, T, D]
        graphdef, layer_state = nnx.split(self.layers)

        def layer_mask(visible_l):
            return mask if visible_l is None else mask & visible_l[:, None, :]

        query_valid = jnp.arange(t)[None, :] < input_lengths[:, None] if attention_mass else None

        def one_layer(x, layer_inputs):  # the layer's cache slices in, the updated slices out
            params, k_l, v_l, visible_l = layer_inputs
            layer = nnx.merge(graphdef, params)
            x, k_l, v_l, *mass = layer(x, k_l, v_l, positions, starts, layer_mask(visible_l), None, query_valid)
            return x, (k_l, v_l, *mass)

        def one_decode_layer(carry, layer_inputs):  # the whole cache in the carry, written in place
            x, k, v = carry
            params, index, visible_l = layer_inputs
            x, k, v = nnx.merge(graphdef, params)(x, k, v, positions, starts, layer_mask(visible_l), index)
            return (x, k, v), None

        with jax.named_scope("layers"):
            if t == 1 and not attention_mass:
                # A decode step carries the whole cache and writes one entry per row and layer. Scanning
                # over the cache as input and output instead rewrites all of it on every call: a
                # batch-32 decode step took 1.6x as long on CPU (BENCHMARKS.md). Longer inputs keep that
                # form: it is as fast for prefill and much cheaper to differentiate (training).
                layer_index = jnp.arange(cache.num_layers, dtype=jnp.int32)
                (x, k, v), _ = jax.lax.scan(
                    one_decode_layer, (x, cache.k, cache.v), (layer_state, layer_index, entry_mask)
                )
            else:
                x, (k, v, *mass) = jax.lax.scan(one_layer, x, (layer_state, cache.k, cache.v, entry_mask))

        if last_only:
            last = jnp.maximum(input_lengths - 1, 0)
            x = jnp.take_along_axis(x, last[:, None, None], axis=1)  # [B, 1, D]
        x = self.norm(x)
        with jax.named_scope("lm_head"):
            logits = self.embed_tokens.attend(x) if self.config.tie_word_embeddings else self.lm_head(x)
        cache = cache.replace(k=k, v=v, lengths=new_lengths, entry_mask=entry_mask)
        if attention_mass:
            return logits.astype(jnp.float32), cache, mass[0]
        return logits.astype(jnp.float32), cache
