"""`Model`: an architecture config, its parameters, its tokenizer, and a jitted pure forward.

The decoder is an NNX module, but a `Model` keeps it split (`graphdef` + `params`): the forward is a
pure function of (params, tokens, cache), jitted once per shape, and other code (adapters, training)
can pass `model.params` through `jax.jit` / `jax.grad` boundaries as an ordinary pytree.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcf_jax.kv import KVCache
from lcf_jax.models.config import ModelConfig
from lcf_jax.models.transformer import Transformer
from lcf_jax.trees import dotted, flat_arrays, num_params
from lcf_jax.typing import Array, DType


def resolve_dtype(dtype: DType | str) -> jnp.dtype:
    try:
        resolved = jnp.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'float16', got {dtype!r}")
    return resolved


def abstract_transformer(
    config: ModelConfig, dtype: DType = jnp.float32, attention: str = "auto"
) -> tuple[nnx.GraphDef, nnx.State]:
    """The decoder's graph and shape-only parameters, without allocating any weights."""
    abstract = nnx.eval_shape(lambda: Transformer(config, dtype=dtype, rngs=nnx.Rngs(0), attention=attention))
    return nnx.split(abstract)


def flat_shapes(state: nnx.State) -> dict[str, tuple[int, ...]]:
    """`{"layers.self_attn.q_proj.kernel": shape, ...}` for every parameter of a state."""
    return {dotted(path): tuple(v.get_value().shape) for path, v in nnx.to_flat_state(state)}


def state_from_flat(abstract: nnx.State, flat: dict[str, Any]) -> nnx.State:
    """Fill an abstract state with arrays keyed by dotted module path."""
    return nnx.from_flat_state([(path, v.replace(flat[dotted(path)])) for path, v in nnx.to_flat_state(abstract)])


def flat_from_state(state: nnx.State) -> dict[str, Array]:
    return flat_arrays(state)


@functools.partial(jax.jit, static_argnames=("graphdef", "last_only", "attention_mass"))
def forward(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tokens: Array,
    cache: KVCache,
    input_lengths: Array | None = None,
    last_only: bool = False,
    attention_mass: bool = False,
):
    """The pure, jitted forward: `(logits, cache)`, and with `attention_mass` the attention each
    cache entry receives `[L, B, S]`; see `Transformer.__call__`."""
    return nnx.merge(graphdef, params)(tokens, cache, input_lengths, last_only=last_only, attention_mass=attention_mass)


class Model:
    """A decoder ready to run: `logits, cache = model(tokens, cache)`.

    Attributes: `config` (`ModelConfig`), `params` (an `nnx.State` pytree), `graphdef`,
    `tokenizer` (a transformers tokenizer, or None for weight-only checkpoints), `dtype`,
    `attention` (the prefill kernel, part of the graphdef: `with_attention` picks another).
    """

    def __init__(
        self,
        config: ModelConfig,
        graphdef: nnx.GraphDef,
        params: nnx.State,
        *,
        tokenizer: Any = None,
        dtype=jnp.float32,
        attention: str = "auto",
    ):
        self.attention = attention
        self.config = config
        self.graphdef = graphdef
        self.params = params
        self.tokenizer = tokenizer
        self.dtype = jnp.dtype(dtype)

    @classmethod
    def random(
        cls,
        config: ModelConfig,
        *,
        dtype: DType | str = "float32",
        seed: int = 0,
        tokenizer: Any = None,
        attention: str = "auto",
    ) -> Model:
        """Random weights at the config's shapes (tests, benchmarks, shape checks)."""
        dtype = resolve_dtype(dtype)
        graphdef, params = nnx.split(Transformer(config, dtype=dtype, rngs=nnx.Rngs(seed), attention=attention))
        return cls(config, graphdef, params, tokenizer=tokenizer, dtype=dtype, attention=attention)

    def with_attention(self, attention: str) -> Model:
        """The same weights with another prefill kernel ("auto", "einsum", "fused"): a new graphdef,
        so jitted calls compile for it (nothing is left from the previous choice's traces)."""
        graphdef, _ = abstract_transformer(self.config, self.dtype, attention)
        return Model(
            self.config, graphdef, self.params, tokenizer=self.tokenizer, dtype=self.dtype, attention=attention
        )

    @property
    def module(self) -> Transformer:
        """The decoder as a stateful NNX module (shares arrays with `params`)."""
        return nnx.merge(self.graphdef, self.params)

    def num_params(self) -> int:
        return num_params(self.params)

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        return KVCache.init(self.config, batch, capacity, self.dtype)

    def __call__(
        self, tokens: Array, cache: KVCache | None = None, *, lengths: Array | None = None, last_only: bool = False
    ) -> tuple[Array, KVCache]:
        """Run int32 `tokens` `[B, T]` after `cache` (None: a fresh cache sized to the input).

        `lengths` `[B]`: real tokens per row when the batch is right-padded. A cache too small for
        the new tokens is grown. Returns float32 logits `[B, T, V]` and the updated cache.
        """
        tokens = self._check_tokens(tokens)
        b, t = tokens.shape
        if lengths is not None:
            lengths = jnp.asarray(lengths, jnp.int32)
            if lengths.shape != (b,):
                raise ValueError(f"lengths must have shape ({b},) for a batch of {b} rows, got {lengths.shape}")
        if cache is None:
            cache = self.new_cache(b, t)
        else:
            cache.check_compatible(self.config, b)
            needed = int(jnp.max(cache.lengths)) + t
            if needed > cache.capacity:
                cache = cache.with_room(needed)
        return forward(self.graphdef, self.params, tokens, cache, lengths, last_only=last_only)

    def _check_tokens(self, tokens) -> Array:
        array = np.asarray(tokens) if not isinstance(tokens, jax.Array) else tokens
        if array.ndim != 2:
            raise ValueError(f"tokens must be a [batch, length] array of token ids, got shape {tuple(array.shape)}")
        if not jnp.issubdtype(array.dtype, jnp.integer):
            raise ValueError(f"tokens must be integer token ids, got dtype {array.dtype}")
        if isinstance(array, np.ndarray) and array.size and (array.min() < 0 or array.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got [{array.min()}, {array.max()}]")
        return jnp.asarray(array, jnp.int32)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Model({c.family}, layers={c.num_layers}, hidden={c.hidden_size}, heads={c.num_heads}/{c.num_kv_heads}, "
            f"params={self.num_params():,}, dtype={self.dtype.name})"
        )
