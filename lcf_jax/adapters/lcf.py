"""The LCF projector (shared context), one per receiver layer: a joint K/V bottleneck of width d.

    x = concat(S_K, S_V, R_K, R_V)                         # per token, flattened heads
    z = ffn_1(ffn_0(down(x)))                              # d, two FFN blocks of width 4d
    z_K, z_V = z[:d/2], z[d/2:]
    alpha_K = sigmoid(k_weight(z)), alpha_V = sigmoid(v_weight(z))   # per head, from the FULL z
    delta_K = k_up(z_K), delta_V = v_up(z_V)               # -> K_R*H_R
    R_K' = R_K + gate(k_gate_logit) * alpha_K * delta_K    # same for V
At d=128 for Qwen2.5-0.5B -> Qwen3-0.6B this is 692,626 parameters per layer (the paper's count).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lcf_jax.adapters.blocks import FFNBlock, gate, linear, split_keys
from lcf_jax.typing import Array


class LCFProjector(nnx.Module):
    def __init__(
        self,
        sharer_width: int,
        receiver_heads: int,
        receiver_head_dim: int,
        *,
        latent_width: int = 128,
        dropout_rate: float = 0.1,
        activation: str = "gelu",
        gate_init: float = 0.0,
        compute_dtype: str = "float32",
        up_init: str = "lecun",
        soft_gates: bool = False,
        rngs: nnx.Rngs,
    ):
        if latent_width % 2:
            raise ValueError(f"latent_width must be even (it splits into K and V halves), got {latent_width}")
        d, out = latent_width, receiver_heads * receiver_head_dim
        ffn = dict(dropout_rate=dropout_rate, activation=activation, compute_dtype=compute_dtype, rngs=rngs)
        lin = dict(compute_dtype=compute_dtype, rngs=rngs)
        self.down = linear(2 * sharer_width + 2 * out, d, **lin)
        self.ffn_0 = FFNBlock(d, 4 * d, **ffn)
        self.ffn_1 = FFNBlock(d, 4 * d, **ffn)
        self.k_weight = linear(d, receiver_heads, **lin)
        self.v_weight = linear(d, receiver_heads, **lin)
        # "zeros": the residuals start at zero, so the untrained adapter leaves the receiver intact
        # (with lecun-normal they are RMS ~0.4-1.1 per element against receiver values of 0.05-0.7).
        up = dict(kernel_init=nnx.initializers.zeros) if up_init == "zeros" else {}
        self.k_up = linear(d // 2, out, **lin, **up)
        self.v_up = linear(d // 2, out, **lin, **up)
        self.soft_gates = soft_gates
        self.compute_dtype = jnp.dtype(compute_dtype)
        self.k_gate_logit = nnx.Param(jnp.full((), gate_init, jnp.float32))
        self.v_gate_logit = nnx.Param(jnp.full((), gate_init, jnp.float32))
        self.receiver_shape = (receiver_heads, receiver_head_dim)

    def gate_logits(self) -> Array:
        """`[..., 2]`: the key and value gate logits (a leading layer axis when stacked)."""
        return jnp.stack([self.k_gate_logit[...], self.v_gate_logit[...]], axis=-1)

    def __call__(self, sk, sv, rk, rv, rng: Array | None = None, temperature=1.0) -> tuple[Array, Array]:
        """Residuals `[B, S, K_R, H_R]` for the receiver's keys and values. `sk, sv` `[B, S, K_S, H_S]`
        are the sharer's entries for each receiver position (position-matched, or LCF-X's summary
        broadcast to every position: then S may be 1 and the sharer's share of the down-projection is
        computed once per row); `rk, rv` `[B, S, K_R, H_R]` the receiver's own."""
        b, s = rk.shape[:2]
        heads, head_dim = self.receiver_shape
        r0, r1, rk_gate, rv_gate = split_keys(rng, 4)
        # down(concat(S_K, S_V, R_K, R_V)) as four matmuls against row blocks of the one kernel:
        # the same numbers without materialising the [B, S, 2*K_S*H_S + 2*K_R*H_R] concatenation.
        kernel, start, z = self.down.kernel[...].astype(self.compute_dtype), 0, self.down.bias[...]
        for part in (sk, sv, rk, rv):
            flat = part.reshape(*part.shape[:2], -1).astype(self.compute_dtype)
            z = z + jnp.matmul(flat, kernel[start : start + flat.shape[-1]], preferred_element_type=jnp.float32)
            start += flat.shape[-1]
        z = self.ffn_1(self.ffn_0(z, r0), r1)  # [B, S, R]
        half = z.shape[-1] // 2
        alpha_k, alpha_v = jax.nn.sigmoid(self.k_weight(z)), jax.nn.sigmoid(self.v_weight(z))  # [B, S, K_R]
        delta_k = self.k_up(z[..., :half]).reshape(b, s, heads, head_dim)
        delta_v = self.v_up(z[..., half:]).reshape(b, s, heads, head_dim)
        g_k = gate(self.k_gate_logit[...], (b, s, heads, 1), rk_gate, temperature, self.soft_gates)
        g_v = gate(self.v_gate_logit[...], (b, s, heads, 1), rv_gate, temperature, self.soft_gates)
        return g_k * alpha_k[..., None] * delta_k, g_v * alpha_v[..., None] * delta_v
