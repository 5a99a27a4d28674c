"""The C2C fuser (Fu et al., 2026), one per receiver layer: the baseline LCF is measured against.

Separate, identical key and value branches. Key branch, per token:
    h = key_in(concat(S_K, R_K))                        # [in_S + in_R] -> hidden (1024)
    h = key_mlp1(h)                                     # one FFN block
    delta = key_proj_out(key_proj_mlp2(h))              # FFN block, -> K_R*H_R
    alpha = sigmoid(key_scalar_head(key_scalar_mlp2(h)))  # FFN block, -> K_R (per head)
    R_K' = R_K + gate(key_gate_logit) * alpha * delta
Attribute names follow the reference implementation, so its released weights import by name
(`lcf_jax/export/c2c_import.py`; the reference nests each FFN block under `blocks.0`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lcf_jax.adapters.blocks import FFNBlock, gate, linear, split_keys
from lcf_jax.typing import Array


class C2CProjector(nnx.Module):
    def __init__(
        self,
        sharer_width: int,
        receiver_heads: int,
        receiver_head_dim: int,
        *,
        hidden: int = 1024,
        dropout_rate: float = 0.1,
        activation: str = "gelu",
        gate_init: float = 0.0,
        compute_dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        out = receiver_heads * receiver_head_dim
        ffn = dict(dropout_rate=dropout_rate, activation=activation, compute_dtype=compute_dtype, rngs=rngs)
        lin = dict(compute_dtype=compute_dtype, rngs=rngs)
        for kind in ("key", "value"):
            setattr(self, f"{kind}_in", linear(sharer_width + out, hidden, **lin))
            setattr(self, f"{kind}_mlp1", FFNBlock(hidden, hidden, **ffn))
            setattr(self, f"{kind}_proj_mlp2", FFNBlock(hidden, hidden, **ffn))
            setattr(self, f"{kind}_proj_out", linear(hidden, out, **lin))
            setattr(self, f"{kind}_scalar_mlp2", FFNBlock(hidden, hidden, **ffn))
            setattr(self, f"{kind}_scalar_head", linear(hidden, receiver_heads, **lin))
            setattr(self, f"{kind}_gate_logit", nnx.Param(jnp.full((), gate_init, jnp.float32)))
        self.receiver_shape = (receiver_heads, receiver_head_dim)

    def _branch(self, kind: str, source: Array, target: Array, rng: Array | None, temperature) -> Array:
        b, s = target.shape[:2]
        heads, head_dim = self.receiver_shape
        r_in, r_mlp1, r_proj, r_scalar, r_gate = split_keys(rng, 5)
        x = jnp.concatenate([source.reshape(b, s, -1), target.reshape(b, s, -1)], axis=-1)
        h = getattr(self, f"{kind}_mlp1")(getattr(self, f"{kind}_in")(x), r_mlp1)
        delta = getattr(self, f"{kind}_proj_out")(getattr(self, f"{kind}_proj_mlp2")(h, r_proj))
        alpha = jax.nn.sigmoid(getattr(self, f"{kind}_scalar_head")(getattr(self, f"{kind}_scalar_mlp2")(h, r_scalar)))
        g = gate(getattr(self, f"{kind}_gate_logit")[...], (b, s, heads, 1), r_gate, temperature)
        return g * alpha[..., None] * delta.reshape(b, s, heads, head_dim)

    def gate_logits(self) -> Array:
        """`[..., 2]`: the key and value gate logits (a leading layer axis when stacked)."""
        return jnp.stack([self.key_gate_logit[...], self.value_gate_logit[...]], axis=-1)

    def __call__(self, sk, sv, rk, rv, rng: Array | None = None, temperature=1.0) -> tuple[Array, Array]:
        """Residuals `[B, S, K_R, H_R]` for the receiver's keys and values from position-matched
        sharer `sk, sv` `[B, S, K_S, H_S]` and receiver `rk, rv`."""
        r_key, r_value = split_keys(rng, 2)
        return self._branch("key", sk, rk, r_key, temperature), self._branch("value", sv, rv, r_value, temperature)
