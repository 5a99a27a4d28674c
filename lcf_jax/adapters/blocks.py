"""Pieces every adapter shares: the residual FFN block, the Gumbel-sigmoid gate and its temperature
schedule, dropout with explicit keys, and the receiver-to-sharer layer maps.

Randomness is explicit: a call with `rng=None` is inference (no dropout, hard gates `logit > 0`);
a call with a key is training, and the same key gives the same result. `rng` is either one key or
one key per batch row (`[B]`): per-row keys make the noise of an example independent of which
micro-batch, device or host it lands on, so a step computes the same on any topology.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcf_jax.models.layers import RMSNorm
from lcf_jax.typing import Array

ACTIVATIONS = {
    # C2C uses torch's nn.GELU(), the exact erf form; the tanh approximation would break parity.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}
LAYER_MAPS = ("last_aligned", "k_nearest")
COMPUTE_DTYPES = ("float32", "bfloat16")


def linear(
    in_features: int,
    out_features: int,
    *,
    compute_dtype: str,
    rngs: nnx.Rngs,
    use_bias: bool = True,
    kernel_init=None,
):
    """An `nnx.Linear` with float32 parameters that multiplies in `compute_dtype` and accumulates
    and returns float32 (bfloat16 inputs double matmul throughput on accelerators and on CPUs with
    AVX512-BF16; everything outside the matmuls stays float32)."""
    low = compute_dtype != "float32"
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=jnp.dtype(compute_dtype) if low else None,
        preferred_element_type=jnp.float32 if low else None,
        kernel_init=kernel_init or nnx.initializers.lecun_normal(),
        rngs=rngs,
    )


def split_keys(rng: Array | None, n: int) -> list[Array | None]:
    """n independent keys (or per-row key arrays) from one key (or per-row keys)."""
    if rng is None:
        return [None] * n
    keys = jax.random.split(rng, n) if rng.ndim == 0 else jax.vmap(lambda key: jax.random.split(key, n))(rng)
    return [keys[..., i] for i in range(n)]  # each: one key, or [B] per-row keys


def _random(sample, rng: Array, shape: tuple[int, ...]) -> Array:
    """`sample(key, shape)`, or per batch row when `rng` holds one key per row (`shape[0]` rows)."""
    if rng.ndim == 0:
        return sample(rng, shape)
    return jax.vmap(lambda key: sample(key, shape[1:]))(rng)


def dropout(x: Array, rate: float, rng: Array | None) -> Array:
    """Inverted dropout; identity when `rng` is None or `rate` is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = _random(lambda key, shape: jax.random.bernoulli(key, 1.0 - rate, shape), rng, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class FFNBlock(nnx.Module):
    """x + dropout(W2 act(W1 rmsnorm(x))): pre-RMSNorm (eps 1e-6, weight only), bias-free linears.

    Attribute names (`norm`, `w1`, `w2`) follow C2C's `StandardFFNLayer` so its released weights map
    one to one."""

    def __init__(
        self,
        width: int,
        hidden: int,
        *,
        dropout_rate: float,
        activation: str,
        compute_dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.norm = RMSNorm(width, eps=1e-6, param_dtype=jnp.float32)
        self.w1 = linear(width, hidden, use_bias=False, compute_dtype=compute_dtype, rngs=rngs)
        self.w2 = linear(hidden, width, use_bias=False, compute_dtype=compute_dtype, rngs=rngs)
        self.dropout_rate = dropout_rate
        self.activation = activation

    def __call__(self, x: Array, rng: Array | None = None) -> Array:
        h = self.w2(ACTIVATIONS[self.activation](self.w1(self.norm(x))))
        return x + dropout(h, self.dropout_rate, rng)


def gate(
    logit: Array, noise_shape: tuple[int, ...], rng: Array | None, temperature: Array | float, soft: bool = False
) -> Array:
    """Gumbel-sigmoid gate of one scalar logit, shaped `noise_shape`.

    Training (`rng` given): sigmoid((logit + g) / tau) with standard Gumbel noise g drawn per element
    (per batch row, token and head, as C2C does). Inference: the hard gate `logit > 0` (the paper),
    or with `soft` its probability sigmoid(logit), the gate's mean in training at tau = 1 (an open
    hard gate passes 1/sigmoid(logit) times what training passed on average)."""
    if rng is None:
        value = jax.nn.sigmoid(logit) if soft else (logit > 0).astype(jnp.float32)
        return jnp.broadcast_to(value, noise_shape)
    u = _random(lambda key, shape: jax.random.uniform(key, shape, jnp.float32), rng, noise_shape)
    g = -jnp.log(-jnp.log(u + 1e-20) + 1e-20)
    return jax.nn.sigmoid((logit + g) / temperature)


def gumbel_temperature(step: Array | int, *, initial: float = 1.0, final: float = 0.001, anneal_steps: int = 1929):
    """Exponential annealing: tau = initial * (final / initial) ** min(step / anneal_steps, 1)."""
    ratio = jnp.minimum(jnp.asarray(step, jnp.float32) / anneal_steps, 1.0)
    return initial * (final / initial) ** ratio


def layer_map(name: str, sharer_layers: int, receiver_layers: int) -> tuple[int, ...]:
    """For each receiver layer t, the sharer layer G(t) whose cache it reads.

    `last_aligned` (C2C's default): G(t) = clamp(t + L_S - L_R, 0, L_S - 1), last layers aligned and a
    shallower sharer's first layer repeated. `k_nearest`: both stacks placed on [0, 1], the nearest
    sharer layer (ties to the lower one)."""
    if name == "last_aligned":
        offset = sharer_layers - receiver_layers
        return tuple(int(min(max(t + offset, 0), sharer_layers - 1)) for t in range(receiver_layers))
    if name == "k_nearest":
        if receiver_layers == 1:
            return (sharer_layers - 1,)
        where = np.arange(receiver_layers) / (receiver_layers - 1) * (sharer_layers - 1)
        return tuple(int(np.ceil(w - 0.5)) for w in where)
    raise ValueError(f"unknown layer_map {name!r}; choose one of {LAYER_MAPS}")
