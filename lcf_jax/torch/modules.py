"""PyTorch twins of lcf_jax's adapters, for inference: the LCF projector, the C2C projector and
LCF-X's span pool, each stacked over the kept receiver layers.

Every parameter keeps the export's leading layer axis `[N, ...]` and its name (`projectors.down.kernel`,
kernels `[N, in, out]` as in JAX), so a state dict loads one to one and all layers run as one batched
matmul, like the JAX code's vmap over layers. Inference only: no dropout, hard gates `logit > 0`.
The arithmetic follows lcf_jax step by step (exact erf GELU, RMSNorm eps 1e-6 with float32
statistics, sigmoid alphas, the down projection as four row blocks, segment-softmax span pooling),
so float32 outputs agree with JAX to float32 rounding.

Shapes: caches are `[N, B, S, K, H]` (adapter layers, batch, positions, kv heads, head dim).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x, approximate="none"),  # the exact erf form, as lcf_jax and C2C use
    "silu": F.silu,
    "relu": F.relu,
}
_MASK = -1e30  # lcf_jax.adapters.lcfx's mask value for spans that hold no token


def _per_layer(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-layer tensor `[N, *rest]` viewed to broadcast against `[N, ..., *rest]` of `ndim` dims."""
    return t.view(t.shape[0], *([1] * (ndim - t.dim())), *t.shape[1:])


class StackedLinear(nn.Module):
    """N linears `x @ kernel[n] + bias[n]`, one per layer (JAX kernel layout `[N, in, out]`).

    `round_to` ("bfloat16") mirrors lcf_jax's `compute_dtype="bfloat16"`: inputs and kernel are
    rounded to bf16 and multiplied with float32 accumulation (a product of two bf16 values is exact
    in float32, so float32 matmuls of the rounded values are what XLA computes)."""

    def __init__(self, n: int, in_features: int, out_features: int, *, bias: bool = True, round_to: str = "float32"):
        super().__init__()
        self.kernel = nn.Parameter(torch.empty(n, in_features, out_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(n, out_features), requires_grad=False) if bias else None
        self.round_to = round_to

    def extra_repr(self) -> str:
        n, i, o = self.kernel.shape
        return f"{n} layers, {i} -> {o}, bias={self.bias is not None}"

    def _rounded(self, t: torch.Tensor) -> torch.Tensor:
        if self.round_to == "float32":
            return t
        return t.to(getattr(torch, self.round_to)).to(t.dtype)

    def matmul(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """`x` `[N, ..., in]` times a kernel `[N, in, out]` (or a row block of it)."""
        flat = self._rounded(x.to(kernel.dtype)).flatten(1, -2)  # [N, rows, in]
        return torch.matmul(flat, self._rounded(kernel)).view(*x.shape[:-1], kernel.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matmul(x, self.kernel)
        if self.bias is None:
            return y
        # nnx.Linear casts its bias to the compute dtype too.
        return y + _per_layer(self._rounded(self.bias), y.dim())


class StackedRMSNorm(nn.Module):
    """y = weight * x / rms(x), eps 1e-6, statistics in float32 (lcf_jax.models.layers.RMSNorm)."""

    def __init__(self, n: int, width: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, width), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
        return _per_layer(self.weight, x.dim()) * x32.to(x.dtype)


class StackedFFN(nn.Module):
    """x + W2 act(W1 rmsnorm(x)), bias-free (lcf_jax.adapters.blocks.FFNBlock, no dropout)."""

    def __init__(self, n: int, width: int, hidden: int, *, activation: str, round_to: str):
        super().__init__()
        self.norm = StackedRMSNorm(n, width)
        self.w1 = StackedLinear(n, width, hidden, bias=False, round_to=round_to)
        self.w2 = StackedLinear(n, hidden, width, bias=False, round_to=round_to)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w2(ACTIVATIONS[self.activation](self.w1(self.norm(x))))


def hard_gate(logit: torch.Tensor, ndim: int) -> torch.Tensor:
    """The inference gate `logit > 0` of each layer `[N]`, shaped to broadcast over `ndim` dims."""
    return _per_layer((logit > 0).to(logit.dtype), ndim)


def _flat_heads(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(-2)  # [..., K, H] -> [..., K*H]


class LCFProjector(nn.Module):
    """The LCF joint K/V bottleneck (lcf_jax.adapters.lcf.LCFProjector), N layers stacked."""

    def __init__(
        self,
        n: int,
        sharer_width: int,
        receiver_heads: int,
        receiver_head_dim: int,
        *,
        latent_width: int,
        activation: str = "gelu",
        round_to: str = "float32",
        soft_gates: bool = False,
    ):
        super().__init__()
        d, out = latent_width, receiver_heads * receiver_head_dim
        self.soft_gates = soft_gates  # gate_inference="soft": sigmoid(logit) instead of logit > 0
        lin = dict(round_to=round_to)
        self.down = StackedLinear(n, 2 * sharer_width + 2 * out, d, **lin)
        self.ffn_0 = StackedFFN(n, d, 4 * d, activation=activation, **lin)
        self.ffn_1 = StackedFFN(n, d, 4 * d, activation=activation, **lin)
        self.k_weight = StackedLinear(n, d, receiver_heads, **lin)
        self.v_weight = StackedLinear(n, d, receiver_heads, **lin)
        self.k_up = StackedLinear(n, d // 2, out, **lin)
        self.v_up = StackedLinear(n, d // 2, out, **lin)
        self.k_gate_logit = nn.Parameter(torch.empty(n), requires_grad=False)
        self.v_gate_logit = nn.Parameter(torch.empty(n), requires_grad=False)
        self.receiver_shape = (receiver_heads, receiver_head_dim)

    def gate_logits(self) -> torch.Tensor:
        """`[N, 2]`: each layer's key and value gate logits."""
        return torch.stack([self.k_gate_logit, self.v_gate_logit], dim=-1)

    def forward(self, sk, sv, rk, rv) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals `[N, B, S, K_R, H_R]` from sharer entries `sk, sv` `[N, B, S, K_S, H_S]` (S may be
        1: LCF-X's summary, broadcast to every position) and the receiver's `rk, rv`."""
        n, b, s = rk.shape[:3]
        # down(concat(S_K, S_V, R_K, R_V)) as four matmuls against row blocks of the one kernel, in
        # lcf_jax's order, so a one-position summary is multiplied once and broadcast.
        z, start = _per_layer(self.down.bias, 4), 0  # this bias stays float32 in lcf_jax too
        for part in (sk, sv, rk, rv):
            flat = _flat_heads(part)
            z = z + self.down.matmul(flat, self.down.kernel[:, start : start + flat.shape[-1]])
            start += flat.shape[-1]
        z = self.ffn_1(self.ffn_0(z))  # [N, B, S, R]
        half = z.shape[-1] // 2
        alpha_k, alpha_v = torch.sigmoid(self.k_weight(z)), torch.sigmoid(self.v_weight(z))  # [N, B, S, K_R]
        delta_k = self.k_up(z[..., :half]).view(n, b, s, *self.receiver_shape)
        delta_v = self.v_up(z[..., half:]).view(n, b, s, *self.receiver_shape)
        if self.soft_gates:
            g_k, g_v = (_per_layer(torch.sigmoid(x), 5) for x in (self.k_gate_logit, self.v_gate_logit))
        else:
            g_k, g_v = hard_gate(self.k_gate_logit, 5), hard_gate(self.v_gate_logit, 5)
        return g_k * alpha_k[..., None] * delta_k, g_v * alpha_v[..., None] * delta_v


class C2CProjector(nn.Module):
    """The C2C fuser (lcf_jax.adapters.c2c.C2CProjector), N layers stacked: separate key and value
    branches, each in -> FFN -> (FFN -> out) * sigmoid(FFN -> per-head scalar) * gate."""

    def __init__(
        self,
        n: int,
        sharer_width: int,
        receiver_heads: int,
        receiver_head_dim: int,
        *,
        hidden: int,
        activation: str = "gelu",
        round_to: str = "float32",
    ):
        super().__init__()
        out = receiver_heads * receiver_head_dim
        ffn = dict(activation=activation, round_to=round_to)
        for branch in ("key", "value"):
            setattr(self, f"{branch}_in", StackedLinear(n, sharer_width + out, hidden, round_to=round_to))
            setattr(self, f"{branch}_mlp1", StackedFFN(n, hidden, hidden, **ffn))
            setattr(self, f"{branch}_proj_mlp2", StackedFFN(n, hidden, hidden, **ffn))
            setattr(self, f"{branch}_proj_out", StackedLinear(n, hidden, out, round_to=round_to))
            setattr(self, f"{branch}_scalar_mlp2", StackedFFN(n, hidden, hidden, **ffn))
            setattr(self, f"{branch}_scalar_head", StackedLinear(n, hidden, receiver_heads, round_to=round_to))
            setattr(self, f"{branch}_gate_logit", nn.Parameter(torch.empty(n), requires_grad=False))
        self.receiver_shape = (receiver_heads, receiver_head_dim)

    def _branch(self, branch: str, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, b, s = target.shape[:3]
        part = lambda name: getattr(self, f"{branch}_{name}")  # noqa: E731
        x = torch.cat([_flat_heads(source), _flat_heads(target)], dim=-1)
        h = part("mlp1")(part("in")(x))
        delta = part("proj_out")(part("proj_mlp2")(h))
        alpha = torch.sigmoid(part("scalar_head")(part("scalar_mlp2")(h)))
        return hard_gate(part("gate_logit"), 5) * alpha[..., None] * delta.view(n, b, s, *self.receiver_shape)

    def gate_logits(self) -> torch.Tensor:
        """`[N, 2]`: each layer's key and value gate logits (C2C names them per branch)."""
        return torch.stack([self.key_gate_logit, self.value_gate_logit], dim=-1)

    def forward(self, sk, sv, rk, rv) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals `[N, B, S, K_R, H_R]` from position-matched sharer and receiver entries."""
        return self._branch("key", sk, rk), self._branch("value", sv, rv)


def span_pool(q, k, v, span_ids, num_spans: int):
    """Attention pooling of each span (lcf_jax.adapters.lcfx.span_pool), per layer and kv head.

    q `[N, B, K, H]`; k, v `[N, B, S, K, H]`; span_ids `[B, S]` (-1 or >= num_spans: not pooled).
    Returns span keys and values `[N, B, P, K, H]` and `[B, P]` True where a span has tokens. Tokens
    of each span are a segment: softmax within the segment, then a segment sum (memory O(S))."""
    n, b, s, kv, h = k.shape
    p = num_spans
    scores = torch.einsum("NBKH,NBSKH->NBSK", q, k.to(q.dtype)) / math.sqrt(h)
    span = torch.where((span_ids >= 0) & (span_ids < p), span_ids, p).long()  # padding -> discarded segment P
    index = span.view(1, b, s, 1).expand(n, b, s, kv)
    top = scores.new_full((n, b, p + 1, kv), -math.inf).scatter_reduce(2, index, scores, "amax")
    e = torch.exp(scores - top.gather(2, index))
    total = scores.new_zeros((n, b, p + 1, kv)).scatter_add(2, index, e)
    weights = e / total.gather(2, index)  # [N, B, S, K]

    entry_index = index[..., None].expand(n, b, s, kv, h)

    def pool(x):
        weighted = weights[..., None] * x.to(weights.dtype)
        return weighted.new_zeros((n, b, p + 1, kv, h)).scatter_add(2, entry_index, weighted)[:, :, :p]

    counts = torch.zeros((b, p + 1), dtype=torch.long, device=k.device).scatter_add(1, span, torch.ones_like(span))
    return pool(k), pool(v), counts[:, :p] > 0


def cross_span_pool(q, k_spans, v_spans, valid):
    """Slot queries q `[N, M, K, H]` attend over span summaries `[N, B, P, K, H]` -> `[N, B, M, K, H]`."""
    h = k_spans.shape[-1]
    scores = torch.einsum("NMKH,NBPKH->NBMPK", q, k_spans) / math.sqrt(h)
    mask = valid[None, :, None, :, None]
    scores = torch.where(mask, scores, torch.full_like(scores, _MASK))
    weights = torch.softmax(scores, dim=3) * mask  # a row with no spans pools to 0
    return torch.einsum("NBMPK,NBPKH->NBMKH", weights, k_spans), torch.einsum("NBMPK,NBPKH->NBMKH", weights, v_spans)


class SpanPool(nn.Module):
    """LCF-X's two-stage pool (lcf_jax.adapters.lcfx.SpanPool), N layers stacked: a learned query per
    kv head pools each span, then slot queries pool the spans into the message. Receiver-conditioned
    pools add `cond(mean of the receiver's valid keys)` to the span query; standardised ones send
    `(x - shift) * scale`."""

    def __init__(
        self, n: int, kv_heads: int, head_dim: int, *, slots: int, receiver_width: int | None, standardize: bool = False
    ):
        super().__init__()
        self.q_base = nn.Parameter(torch.empty(n, kv_heads, head_dim), requires_grad=False)
        self.q_layer = nn.Parameter(torch.empty(n, slots, kv_heads, head_dim), requires_grad=False)
        if receiver_width is not None:
            self.cond = StackedLinear(n, receiver_width, kv_heads * head_dim, bias=False)
        self.conditioned = receiver_width is not None
        if standardize:
            self.norm_shift = nn.Parameter(torch.empty(n, 2, slots, kv_heads, head_dim), requires_grad=False)
            self.norm_scale = nn.Parameter(torch.empty(n, 2, slots, kv_heads, head_dim), requires_grad=False)
        self.standardize = standardize

    def forward(self, sk, sv, span_ids, num_spans: int, receiver_k=None, receiver_mask=None):
        """sk, sv `[N, B, S, K, H]`, span_ids `[B, S]` -> message keys and values `[N, B, M, K, H]`.
        Conditioned pools also take the receiver's keys `[N, B, S_R, K_R, H_R]` and mask `[B, S_R]`."""
        n, b = sk.shape[:2]
        q = self.q_base[:, None].expand(n, b, *self.q_base.shape[1:])
        if self.conditioned:
            if receiver_k is None or receiver_mask is None:
                raise ValueError("this LCF-X pool is receiver-conditioned: pass the receiver's cache to summarize()")
            mask = receiver_mask[None, :, :, None].to(q.dtype)  # [1, B, S_R, 1]
            flat = _flat_heads(receiver_k).to(q.dtype)
            mean = (flat * mask).sum(2) / torch.clamp(mask.sum(2), min=1.0)  # [N, B, K_R*H_R]
            q = q + self.cond(mean).view(q.shape)
        k_spans, v_spans, valid = span_pool(q, sk, sv, span_ids, num_spans)
        k, v = cross_span_pool(self.q_layer, k_spans, v_spans, valid)
        if self.standardize:  # [N, 2, M, K, H] against messages [N, B, M, K, H]
            shift, scale = self.norm_shift[:, :, None], self.norm_scale[:, :, None]
            k, v = (k - shift[:, 0]) * scale[:, 0], (v - shift[:, 1]) * scale[:, 1]
        return k, v
