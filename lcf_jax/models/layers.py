"""Building blocks of the decoder: RMSNorm, rotate-half RoPE (with Llama-3 / linear scaling), the
grouped-query attention core over an explicit cache, and the SwiGLU MLP.

Attribute names follow transformers (`q_proj`, `input_layernorm`, ...) so the checkpoint key table
in `loading/keymap.py` is nearly the identity. Numerically sensitive steps (norm statistics, RoPE
angles, softmax) run in float32 whatever the parameter dtype, as transformers does.
"""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcf_jax.kv import write_layer_rows, write_rows
from lcf_jax.models.config import ModelConfig
from lcf_jax.typing import Array, DType

# A large negative instead of -inf: a fully masked row (a padding query) then gives a uniform
# softmax instead of NaNs that would leak into the cache through later layers.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)

# Which kernel attends when a row brings more than one new token (prefill, extend, training), a
# static attribute of each `Attention` module (so part of the model's graphdef: choosing another
# retraces; `Model.with_attention`, `load_model(..., attention=)`):
#   "einsum"  the grouped matmuls of `attention` (tuned for CPU)
#   "fused"   `jax.nn.dot_product_attention`: cuDNN's fused attention on an NVIDIA GPU, XLA elsewhere
#   "auto"    fused on a GPU for bf16/fp16, einsum otherwise (the default)
# A decode step (one token per row) always takes the einsum kernel.
ATTENTION_CHOICES = ("auto", "einsum", "fused")
log = logging.getLogger(__name__)


class RMSNorm(nnx.Module):
    """y = x / rms(x) * weight, statistics in float32 (transformers' LlamaRMSNorm)."""

    def __init__(self, dim: int, *, eps: float, param_dtype: DType):
        self.weight = nnx.Param(jnp.ones((dim,), dtype=param_dtype))
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * x32.astype(dtype)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies `[H/2]` in float32, with the checkpoint's scaling applied (transformers'
    `_compute_default_rope_parameters` / `_compute_llama3_parameters`)."""
    dim = config.head_dim
    inv_freq = (1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))).astype(
        np.float32
    )
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return (inv_freq / scaling.factor).astype(np.float32)
    # llama3: long wavelengths are divided by `factor`, short ones kept, the band between interpolated.
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
    """Rotate-half RoPE. x: `[B, T, N, H]`, positions: `[B, T]` int.

    Angles are float32 products at highest precision: in bf16, position 257 rounds to 256."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, H]
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def check_attention(choice: str) -> str:
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"attention={choice!r}: choose one of {', '.join(ATTENTION_CHOICES)}")
    return choice


def attention_kernel(q: Array, choice: str = "auto") -> str:
    """ "einsum" or "fused" for these queries under the model's `choice` (see ATTENTION_CHOICES)."""
    check_attention(choice)
    if q.shape[1] == 1:
        return "einsum"
    if choice == "auto":
        half = q.dtype in (jnp.bfloat16, jnp.float16)
        return "fused" if half and jax.default_backend() == "gpu" else "einsum"
    return choice


def attention(q: Array, k: Array, v: Array, mask: Array, query_valid: Array | None = None, choice: str = "auto"):
    """Grouped-query attention through the kernel `attention_kernel` picks; arguments and result
    as `einsum_attention` (asked for the attention each entry receives, it is the einsum kernel:
    the fused one never forms the probabilities)."""
    if query_valid is not None:
        return einsum_attention(q, k, v, mask, query_valid)
    if attention_kernel(q, choice) == "fused":
        return fused_attention(q, k, v, mask)
    return einsum_attention(q, k, v, mask)


def fused_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """`jax.nn.dot_product_attention` with the mask as `[B, 1, T, S]`: cuDNN's fused kernel on a GPU
    (it never materialises the `[B, N, T, S]` scores); where cuDNN refuses the shapes or dtype, and
    off GPUs, XLA's implementation (same numbers as `einsum_attention`)."""
    if jax.default_backend() == "gpu":
        try:
            return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="cudnn")
        except (NotImplementedError, ValueError, RuntimeError) as e:  # shape/dtype/version limits
            log.warning("cuDNN attention unavailable here (%s); using XLA's", str(e).splitlines()[0][:200])
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="xla")


def einsum_attention(q: Array, k: Array, v: Array, mask: Array, query_valid: Array | None = None):
    """Grouped-query attention. q `[B, T, N, H]`, k/v `[B, S, K, H]`, mask `[B, T, S]` (True = attend).

    Scores and softmax in float32; returns `[B, T, N, H]` in q's dtype. Given `query_valid` `[B, T]`
    (the real queries), it returns `(out, mass)` with `mass` `[B, S]` float32: the attention each
    cache entry receives, summed over the real queries and every head (KV-message selection,
    `lcf_jax/messages/kv.py`).

    The queries of one kv head are laid out as a single `[T*G, H]` matrix, so both products are
    plain batched matmuls over (B, K) with S contiguous in the scores. With the scores as
    `[B, K, G, T, S]` instead, XLA on CPU transposed the score and probability tensors around the
    softmax: attention took 1.7x as long at T=256 (3.5x at T=512, 14 heads), about 6% of
    SmolLM2-135M's prefill. k/v are not transposed here: the dots read the cache in place.
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    g = n // kv_heads
    q = q.reshape(b, t, kv_heads, g, h).transpose(0, 2, 1, 3, 4).reshape(b, kv_heads, t * g, h)  # [B, K, T*G, H]
    scores = jnp.einsum("BKQH,BSKH->BKQS", q, k, preferred_element_type=jnp.float32) / math.sqrt(h)
    scores = scores.reshape(b, kv_heads, t, g, -1)  # [B, K, T, G, S]
    scores = jnp.where(mask[:, None, :, None, :], scores, _MASK_VALUE).reshape(b, kv_heads, t * g, -1)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("BKQS,BSKH->BKQH", probs, v)  # [B, K, T*G, H]
    out = out.reshape(b, kv_heads, t, g, h).transpose(0, 2, 1, 3, 4).reshape(b, t, n, h)
    if query_valid is None:
        return out
    weight = jnp.repeat(query_valid.astype(jnp.float32), g, axis=1)  # [B, T*G], queries laid out t-major
    mass = jnp.einsum("BKQS,BQ->BS", probs.astype(jnp.float32), weight)
    return out, mass


class Attention(nnx.Module):
    """Self-attention that writes its new keys/values (post-RoPE) into one layer's cache slice."""

    def __init__(
        self, config: ModelConfig, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs, attention: str = "auto"
    ):
        d, n, k, h = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        linear = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = nnx.Linear(d, n * h, use_bias=config.qkv_bias, **linear)
        self.k_proj = nnx.Linear(d, k * h, use_bias=config.qkv_bias, **linear)
        self.v_proj = nnx.Linear(d, k * h, use_bias=config.qkv_bias, **linear)
        self.o_proj = nnx.Linear(n * h, d, use_bias=config.o_bias, **linear)
        if config.qk_norm:
            self.q_norm = RMSNorm(h, eps=config.rms_norm_eps, param_dtype=param_dtype)
            self.k_norm = RMSNorm(h, eps=config.rms_norm_eps, param_dtype=param_dtype)
        self.config = config  # static: hashable, and RoPE frequencies are derived from it at trace time
        self.kernel = check_attention(attention)  # static too: another choice is another graphdef

    def __call__(
        self,
        x: Array,
        k_cache: Array,
        v_cache: Array,
        positions: Array,
        starts: Array,
        mask: Array,
        layer: Array | None = None,
        query_valid: Array | None = None,
    ):
        """x `[B, T, D]`; k/v_cache `[B, S, K, H]`, this layer's (or, given `layer`, every layer's
        `[L, B, S, K, H]`: this one writes its new entries into slice `layer` in place);
        positions `[B, T]`; starts `[B]`; mask `[B, T, S]`. Returns `(out, k_cache, v_cache)`, and
        given `query_valid` `[B, T]` also the attention each entry receives `[B, S]`
        (`einsum_attention`)."""
        b, t, _ = x.shape
        cfg = self.config
        n, kv, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = self.q_proj(x).reshape(b, t, n, h)
        k = self.k_proj(x).reshape(b, t, kv, h)
        v = self.v_proj(x).reshape(b, t, kv, h)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        inv_freq = rope_inv_freq(cfg)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        if layer is None:
            k_cache = k_l = write_rows(k_cache, k.astype(k_cache.dtype), starts)  # [B, S, K, H]
            v_cache = v_l = write_rows(v_cache, v.astype(v_cache.dtype), starts)
        else:
            k_cache = write_layer_rows(k_cache, layer, k, starts)
            v_cache = write_layer_rows(v_cache, layer, v, starts)
            k_l = jax.lax.dynamic_index_in_dim(k_cache, layer, keepdims=False)  # [B, S, K, H]
            v_l = jax.lax.dynamic_index_in_dim(v_cache, layer, keepdims=False)
        out = attention(q, k_l.astype(q.dtype), v_l.astype(q.dtype), mask, query_valid, self.kernel)
        if query_valid is not None:
            out, mass = out
            return self.o_proj(out.reshape(b, t, n * h)), k_cache, v_cache, mass
        return self.o_proj(out.reshape(b, t, n * h)), k_cache, v_cache


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, *, dtype: DType, param_dtype: DType, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        linear = dict(use_bias=config.mlp_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = nnx.Linear(d, f, **linear)
        self.up_proj = nnx.Linear(d, f, **linear)
        self.down_proj = nnx.Linear(f, d, **linear)

    def __call__(self, x: Array) -> Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))
