"""KV-cache messages with transformers models: the sharer's selected cache entries placed in the
receiver's `DynamicCache`, as lcf_jax does (`lcf_jax/messages/kv.py`), for one model that is both
sharer and receiver.

`send_kv` reads `opening + context` with the sharer (one row at a time, no padding) and keeps the
context entries a policy picks: "all", "attention" (the attention the context's own tokens pay
them) or "query" (the attention of the question read after the context); the attention comes from
transformers' eager attention (`output_attentions`). `receive_kv` appends the entries to a cache
that holds the receiver's opening (left padding allowed); the tokens read after them take the
positions they have in the full prompt (`offsets`, passed as position ids). `generate_kv` does
the whole exchange and answers greedily: the same tokens as lcf_jax up to float32 near-ties
(tests/test_export_torch.py).

Every layer is sent: a layer subset needs a per-layer attention mask (lcf_jax's `entry_mask`),
which transformers' attention does not take.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lcf_jax.adapter_format import (
    RESAVE_TRANSLATOR,
    TRANSLATOR_CONFIG,
    TRANSLATOR_WEIGHTS,
    check_translator_arrays,
    check_translator_config,
    read_json,
)
from lcf_jax.errors import AdapterFormatError
from lcf_jax.torch.generate import Runner, greedy_continue, left_pad, stop_token_ids
from lcf_jax.torch.load import dtype_names, read_tensors

POLICIES = ("all", "attention", "query")


@dataclasses.dataclass
class KVMessage:
    """k, v `[L, B, M, K, H]` (post-RoPE, every layer); positions `[L, B, M]`; valid `[B, M]`;
    starts `[B]` (opening tokens); context_lengths `[B]`. The layout of lcf_jax's `KVMessage`."""

    k: torch.Tensor
    v: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    starts: torch.Tensor
    context_lengths: torch.Tensor

    @property
    def nbytes(self) -> int:
        n, _, _, kv_heads, head_dim = self.k.shape
        return int(self.valid.sum()) * n * (2 * kv_heads * head_dim * self.k.element_size() + 4)


def _counts(length: int, entries: int | float | None, clip: bool, row: int) -> int:
    if entries is None:
        return length
    if isinstance(entries, float):
        if not 0.0 < entries <= 1.0:
            raise ValueError(f"entries as a fraction of the context must lie in (0, 1], got {entries}")
        return max(1, math.ceil(entries * length))
    if entries > length and not clip:
        raise ValueError(f"entries={entries} is more than the context holds (row {row}: {length} tokens)")
    return min(entries, length)


def _pick(scores: torch.Tensor, start: int, spans: Sequence[int], count: int, unit: str, agree: bool) -> torch.Tensor:
    """`[L, count]` context slots per layer, in text order (lcf_jax's `kv.select` for one row)."""
    length = sum(spans)
    ranked = scores[:, start : start + length]  # [L, P]
    if agree:
        ranked = ranked.sum(0, keepdim=True).expand_as(ranked)
    if unit == "span":
        span_of = torch.repeat_interleave(torch.arange(len(spans)), torch.as_tensor(list(spans)))
        totals = torch.zeros(ranked.shape[0], len(spans), dtype=ranked.dtype).index_add_(1, span_of, ranked)
        per_token = totals[:, span_of]
        # Best span first, then the best entries within it (a stable two-key sort).
        order = torch.argsort(-ranked, dim=1, stable=True)
        order = torch.gather(order, 1, torch.argsort(-torch.gather(per_token, 1, order), dim=1, stable=True))
    else:
        order = torch.argsort(-ranked, dim=1, stable=True)
    return torch.sort(order[:, :count], dim=1).values + start


@torch.inference_mode()
def send_kv(
    sharer: Any,
    opening: Sequence[int],
    contexts: Sequence[Sequence[Sequence[int]]],
    *,
    entries: int | float | None = None,
    policy: str = "all",
    questions: Sequence[Sequence[int]] | None = None,
    unit: str = "token",
    agree: bool = False,
    clip: bool = False,
) -> KVMessage:
    """The KV message of each row's context (a list of token spans, its paragraphs) read after
    `opening` (token ids). Options as `lcf_jax.communicate.send(kind="kv")`."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if (policy == "all") != (entries is None):
        raise ValueError("policy 'all' and only it sends every entry (entries=None)")
    if policy == "query" and (questions is None or len(questions) != len(contexts)):
        raise ValueError("policy 'query' ranks entries by the question's attention: pass questions= (tokens per row)")
    runner = Runner(sharer)
    rows = []
    for b, spans in enumerate(contexts):
        spans = [list(s) for s in spans if len(s)]
        context = [t for s in spans for t in s]
        if not context:
            raise ValueError(f"sharer context {b} is empty: the sharer needs at least one token")
        ids = list(opening) + context + (list(questions[b]) if policy == "query" else [])
        out = _forward(sharer, runner, ids, attentions=policy != "all")
        start, count = len(opening), _counts(len(context), entries, clip, b)
        if policy == "all":
            slots = torch.arange(start, start + count)[None].expand(len(out.cache.layers), -1)
        else:
            queries = slice(start + len(context), None) if policy == "query" else slice(0, start + len(context))
            scores = torch.stack([a[0, :, queries].float().sum(dim=(0, 1)) for a in out.attentions])  # [L, S]
            slots = _pick(scores, start, [len(s) for s in spans], count, unit, agree)
        k = torch.stack([layer.keys[0].transpose(0, 1)[slots[i]] for i, layer in enumerate(out.cache.layers)])
        v = torch.stack([layer.values[0].transpose(0, 1)[slots[i]] for i, layer in enumerate(out.cache.layers)])
        rows.append((k, v, slots, start, len(context)))
    width = max(r[0].shape[1] for r in rows)
    pad = lambda x: torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, width - x.shape[1]))  # noqa: E731
    return KVMessage(
        torch.stack([pad(r[0]) for r in rows], dim=1),
        torch.stack([pad(r[1]) for r in rows], dim=1),
        torch.stack([pad(r[2]) for r in rows], dim=1),
        torch.stack([torch.arange(width) < r[0].shape[1] for r in rows]),
        torch.as_tensor([r[3] for r in rows]),
        torch.as_tensor([r[4] for r in rows]),
    )


@dataclasses.dataclass
class _Read:
    cache: Any
    attentions: tuple[torch.Tensor, ...] | None


def _forward(model: Any, runner: Runner, ids: Sequence[int], *, attentions: bool) -> _Read:
    """One unpadded row through the model, with the attention probabilities when asked (eager
    attention for that call: the fused kernels do not return them)."""
    before = getattr(model.config, "_attn_implementation", None)
    if attentions and before != "eager":
        model.set_attn_implementation("eager")
    try:
        out = model(
            input_ids=torch.as_tensor([list(ids)], device=runner.device),
            use_cache=True,
            output_attentions=attentions,
        )
    finally:
        if attentions and before != "eager":
            model.set_attn_implementation(before)
    cache = getattr(out, "cache", None) or out.past_key_values
    return _Read(cache, out.attentions if attentions else None)


def receive_kv(message: KVMessage, cache: Any, attention_mask: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """(cache, attention mask, position offsets) with the message's entries appended to `cache`,
    which holds each row's opening (`attention_mask` `[B, S]`, left padding allowed). Feed later
    tokens with positions `cumsum(mask) - 1 + offsets` (`generate_kv` does)."""
    layers = cache.layers
    if len(layers) != message.k.shape[0] or tuple(layers[0].keys.shape[1::2]) != tuple(message.k.shape[3:]):
        raise ValueError(
            f"this KV message holds entries of another model (L={message.k.shape[0]}, K={message.k.shape[3]}, "
            f"H={message.k.shape[4]}); the receiver's cache has L={len(layers)}, keys {tuple(layers[0].keys.shape)}"
        )
    held = attention_mask.sum(dim=1).cpu()
    if not torch.equal(held, message.starts.cpu()):
        raise ValueError(
            f"the receiver's cache must hold exactly the opening the sharer read ({message.starts.tolist()} tokens "
            f"per row), it holds {held.tolist()}"
        )
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in layers]
    for i, layer in enumerate(out.layers):
        device, dtype = layer.keys.device, layer.keys.dtype
        layer.keys = torch.cat([layer.keys, message.k[i].transpose(1, 2).to(device, dtype)], dim=2)
        layer.values = torch.cat([layer.values, message.v[i].transpose(1, 2).to(device, dtype)], dim=2)
    mask = torch.cat([attention_mask, message.valid.to(attention_mask.dtype)], dim=1)
    offsets = message.context_lengths - message.valid.sum(dim=1)
    return out, mask, offsets


@torch.inference_mode()
def generate_kv(
    model: Any,
    tokenizer: Any,
    opening: Sequence[int],
    contexts: Sequence[Sequence[Sequence[int]]],
    rests: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 16,
    stop_tokens: Sequence[int] | None = None,
    sharer: Any = None,
    translator: KVTranslator | None = None,
    **send_options,
) -> tuple[list[list[int]], KVMessage]:
    """Greedy answers of `model` (the receiver, and the sharer unless `sharer` is given with a
    `translator`) to `opening + context + rest` prompts where the context reaches the receiver as
    a KV message (`send_kv` options). Returns the answers (ids, without stop tokens) and the
    message the receiver got."""
    if (sharer is None) != (translator is None):
        raise ValueError("a second model needs its KV translator, and a translator its sharer: pass both or neither")
    message = send_kv(sharer or model, opening, contexts, **send_options)
    if translator is not None:
        message = translate_kv(translator, message, sharer, model)
    runner = Runner(model)
    cache, mask = runner.prefill([list(opening)] * len(contexts))
    cache, mask, runner.offset = receive_kv(message, cache, mask)
    ids, rest_mask = left_pad([r[:-1] for r in rests], runner.pad)
    if ids.shape[1]:
        # Left padding inside the sequence is fine: masked entries are never attended to.
        mask = torch.cat([mask, rest_mask], dim=1)
        _, cache = runner(ids, mask, cache)
    stop = stop_token_ids(model, tokenizer) if stop_tokens is None else tuple(stop_tokens)
    return greedy_continue(runner, cache, mask, [r[-1] for r in rests], max_new_tokens, stop), message


@dataclasses.dataclass
class KVTranslator:
    """A translator `lcf_jax.messages.translate.save_translator` wrote, as torch tensors: per
    receiver layer t, sharer layer `source_layers[t]`'s pre-RoPE keys and values mapped by the
    linear maps (`key_map` `[Lr, Ks*Hs, Kr*Hr]`, ...) plus the trunk when there is one."""

    source_layers: tuple[int, ...]
    arrays: dict[str, torch.Tensor]
    receiver_kv_heads: int
    receiver_head_dim: int

    def map(self, t: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Receiver layer t's pre-RoPE keys and values `[..., Kr*Hr]` from the sharer's `[..., Ks*Hs]`
        (lcf_jax's `map_entries`)."""
        a = {name: x[t] for name, x in self.arrays.items()}
        k = keys @ a["key_map"] + a["key_bias"]
        v = values @ a["value_map"] + a["value_bias"]
        if "down" not in a:
            return k, v
        z = torch.cat([keys, values], -1) @ a["down"] + a["down_bias"]
        for block in ("ffn0", "ffn1"):
            hidden = torch.nn.functional.gelu(z @ a[f"{block}_in"] + a[f"{block}_in_bias"], approximate="tanh")
            z = z + hidden @ a[f"{block}_out"]
        half = z.shape[-1] // 2
        return k + z[..., :half] @ a["k_up"] + a["k_up_bias"], v + z[..., half:] @ a["v_up"] + a["v_up_bias"]


def load_kv_translator(directory) -> KVTranslator:
    """Read `kv_translator.json` and `kv_translator.safetensors` (no pickle, no JAX), checked as
    lcf_jax's `load_translator` checks them: a missing file is a FileNotFoundError, anything wrong
    in them one AdapterFormatError line naming the file."""
    directory = Path(directory)
    for name in (TRANSLATOR_CONFIG, TRANSLATOR_WEIGHTS):
        if not (directory / name).exists():
            raise FileNotFoundError(
                f"{directory} holds no {name}: write one with lcf_jax.messages.translate.save_translator"
            )
    path, weights = directory / TRANSLATOR_CONFIG, directory / TRANSLATOR_WEIGHTS
    config = read_json(path, AdapterFormatError, RESAVE_TRANSLATOR)
    check_translator_config(config, path, AdapterFormatError)
    arrays = read_tensors(weights, RESAVE_TRANSLATOR)
    shapes = {name: tuple(t.shape) for name, t in arrays.items()}
    check_translator_arrays(config, weights, shapes, dtype_names(arrays), AdapterFormatError)
    receiver = config["receiver"]
    return KVTranslator(tuple(config["source_layers"]), arrays, receiver["num_kv_heads"], receiver["head_dim"])


def _rope(x: torch.Tensor, positions: torch.Tensor, model: Any, inverse: bool = False) -> torch.Tensor:
    """Rotate-half RoPE of `model` (its rotary embedding's frequencies) on x `[B, M, K, H]` at
    `positions` `[B, M]`; `inverse` undoes it."""
    inv_freq = model.model.rotary_emb.inv_freq.float().to(x.device)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    sin = -angles.sin() if inverse else angles.sin()
    return x.float() * angles.cos() + rotated.float() * sin


def translate_kv(translator: KVTranslator, message: KVMessage, sharer: Any, receiver: Any) -> KVMessage:
    """The sharer's message in the receiver's terms (lcf_jax's `KVTranslator.translate`)."""
    if message.k.shape[0] <= max(translator.source_layers):
        raise ValueError("the message lacks sharer layers the translator reads: send every layer")
    ks, vs = [], []
    for t, s in enumerate(translator.source_layers):
        k, v, pos = message.k[s], message.v[s], message.positions[s]  # [B, M, Ks, Hs]
        b, m = k.shape[:2]
        pre = _rope(k, pos, sharer, inverse=True).reshape(b, m, -1)
        new_k, new_v = translator.map(t, pre, v.float().reshape(b, m, -1))
        new_k = new_k.reshape(b, m, translator.receiver_kv_heads, translator.receiver_head_dim)
        ks.append(_rope(new_k, pos, receiver))
        vs.append(new_v.reshape(b, m, translator.receiver_kv_heads, translator.receiver_head_dim))
    valid = message.valid[None, :, :, None, None]
    positions = message.positions[list(translator.source_layers)]
    return KVMessage(
        torch.where(valid, torch.stack(ks), 0.0), torch.where(valid, torch.stack(vs), 0.0), positions,
        message.valid, message.starts, message.context_lengths,
    )  # fmt: skip
