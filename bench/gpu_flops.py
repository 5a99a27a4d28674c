"""FLOP and byte counts of the GPU benchmark (bench/gpu.py): model FLOPs of a forward, the bytes one
decode step reads, and XLA's own estimate. They leave out norms, RoPE, softmax, biases and the
embedding gather."""

from __future__ import annotations

from common import lcf


def linear_params(config) -> int:
    """Matmul weights one token passes through in the layers (q, k, v, o, gate, up, down)."""
    d, n, k, h, f = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim, config.intermediate_size
    return config.num_layers * (d * n * h + 2 * d * k * h + n * h * d + 3 * d * f)


def forward_flops(config, new: int, *, past: int = 0, lm_rows: int | None = None, batch: int = 1) -> dict[str, int]:
    """Model FLOPs of one forward over `new` tokens after `past` cached ones: 2 per multiply-add of the
    layer matmuls, causal attention (QK^T and PV over the keys each query may see) and the lm head
    over `lm_rows` positions (default every new token)."""
    pairs = new * past + new * (new + 1) // 2
    out = {
        "linear": 2 * linear_params(config) * new,
        "attention": 4 * config.num_layers * config.num_heads * config.head_dim * pairs,
        "lm_head": 2 * config.hidden_size * config.vocab_size * (new if lm_rows is None else lm_rows),
    }
    out = {k: v * batch for k, v in out.items()}
    out["total"] = sum(out.values())
    return out


def weight_read_bytes(model) -> dict[str, int]:
    """Bytes of parameters one decode step reads: all of them, except that an untied embedding table
    is only gathered (one row); a tied one is read whole as the lm head."""
    flat = lcf("models.model").flat_from_state(model.params)
    total = sum(int(x.size) * x.dtype.itemsize for x in flat.values())
    embed = flat["embed_tokens.embedding"]
    if not model.config.tie_word_embeddings:
        total -= int(embed.size - embed.shape[1]) * embed.dtype.itemsize
    return {"bytes": total, "params": sum(int(x.size) for x in flat.values())}


def cost_flops(compiled) -> float | None:
    """XLA's own flop estimate of a compiled program (a dict, or a list of one dict in older jax)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])
