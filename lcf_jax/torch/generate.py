"""`generate`: a transformers sharer/receiver pair end to end with an exported adapter, greedy.

The same steps as lcf_jax (`communicate.answer_shared_context`, `answer_different_contexts`):
the receiver prefills its prompt minus the last token; the sharer prefills the same tokens (lcf,
c2c) or its own paragraphs (lcfx, one span per paragraph); the adapter rewrites the receiver's cache;
the receiver decodes greedily from its last prompt token. So with the same models and adapter the
answers are lcf_jax's, token for token (up to float32 near-ties).

Prompts run in batches of `batch_size`, left-padded (transformers' convention) with an attention
mask and explicit position ids, so a padded row computes what it computes alone; the adapter only
rewrites and pools real tokens (`lcf_jax.torch.cache`). `batch_size=1` runs without any padding.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from lcf_jax.torch.adapter import Adapter
from lcf_jax.torch.cache import fuse, receive, summarize


def stop_token_ids(model: Any, tokenizer: Any = None) -> tuple[int, ...]:
    """End-of-sequence ids from the model's config and the tokenizer (lcf_jax.sampling.stop_token_ids)."""
    found: set[int] = set()
    for source in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        ids = getattr(source, "eos_token_id", None)
        found.update([] if ids is None else [ids] if isinstance(ids, int) else ids)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        found.add(int(tokenizer.eos_token_id))
    return tuple(sorted(found))


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, S]` ids with each row right-aligned after `pad`s, and its attention mask (1: a token)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        if len(row):
            ids[b, width - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
            mask[b, width - len(row) :] = 1
    return ids, mask


class Runner:
    """Forward calls of one transformers model on a growing left-padded batch."""

    def __init__(self, model: Any):
        self.model = model
        self.device = next(model.parameters()).device
        # transformers 5.x renamed `past_key_values` to `cache` (the old name warns): use what it has.
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.pad = getattr(model.config, "pad_token_id", None) or 0
        # `[B]` positions each row's tokens skip (a KV message that sent fewer entries than its
        # context had: later tokens keep their positions in the full prompt), or None.
        self.offset: torch.Tensor | None = None

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, cache=None):
        """(last-position logits `[B, V]`, cache) after feeding `ids` `[B, T]`; `mask` `[B, S + T]`
        covers what the cache holds and the new tokens. Positions count real tokens only (plus
        `offset`)."""
        positions = (torch.cumsum(mask, dim=1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        if self.offset is not None:
            positions = positions + self.offset[:, None]
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=True,
            logits_to_keep=1,
            **({} if cache is None else {self.cache_arg: cache}),
        )
        returned = getattr(out, "cache", None)
        return out.logits[:, -1], returned if returned is not None else out.past_key_values

    def prefill(self, rows: Sequence[Sequence[int]]):
        """(cache, attention mask) of the left-padded rows."""
        ids, mask = left_pad(rows, self.pad)
        return self(ids, mask)[1], mask


def greedy_continue(runner: Runner, cache, mask, lasts: Sequence[int], max_new_tokens: int, stop) -> list[list[int]]:
    """Greedy continuations of each row from its last prompt token, without the stop token that
    ended them (at most `max_new_tokens` tokens, the stop token included, as lcf_jax counts)."""
    out: list[list[int]] = [[] for _ in lasts]
    done = [False] * len(lasts)
    tokens = torch.as_tensor(list(lasts), dtype=torch.long)[:, None]
    for _ in range(max_new_tokens):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, cache = runner(tokens, mask, cache)
        tokens = torch.argmax(logits, dim=-1, keepdim=True).cpu()
        # A finished row keeps decoding (its tokens are dropped): rows never affect each other.
        for b, token in enumerate(tokens[:, 0].tolist()):
            if not done[b]:
                done[b] = token in stop
                if not done[b]:
                    out[b].append(token)
        if all(done):
            break
    return out


def _span_rows(contexts: Sequence[Sequence[Sequence[int]]]) -> tuple[list[list[int]], list[list[int]], int]:
    """Each row's tokens (its spans concatenated), each token's span id, and the most spans in a row."""
    tokens, ids, most = [], [], 1
    for i, row in enumerate(contexts):
        spans = [list(span) for span in row if len(span)]  # empty paragraphs are no span (as lcf_jax)
        if not spans:
            raise ValueError(f"sharer context {i} is empty: the sharer needs at least one token")
        tokens.append([t for span in spans for t in span])
        ids.append([s for s, span in enumerate(spans) for _ in span])
        most = max(most, len(spans))
    return tokens, ids, most


@torch.inference_mode()
def generate(
    sharer: Any,
    receiver: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    adapter: Adapter | None = None,
    sharer_prompts: Sequence[Sequence[int]] | None = None,
    sharer_contexts: Sequence[Sequence[Sequence[int]]] | None = None,
    max_new_tokens: int = 16,
    stop_tokens: Sequence[int] | None = None,
    batch_size: int = 8,
) -> list[list[int]]:
    """Greedy answers of `receiver` (a transformers causal LM) to each of `prompts` (token ids, e.g.
    from `tokenizer.apply_chat_template`), with the sharer's knowledge passed through `adapter`.

    lcf, c2c (shared context): the sharer reads `sharer_prompts` (default: the same ids, for models
    sharing a tokenizer; otherwise ids aligned one to one with the receiver's). lcfx: the sharer
    reads `sharer_contexts`, per prompt a list of token-id spans (its paragraphs), and sends one
    message. `adapter=None`: the receiver alone, the baseline. `stop_tokens` default to the
    receiver's end-of-sequence ids and the tokenizer's. Returns the answer ids without stop tokens."""
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
    if any(len(p) < 2 for p in prompts):
        raise ValueError("each prompt needs at least 2 tokens: all but the last are read, the last starts the answer")
    kind = None if adapter is None else adapter.kind
    if adapter is not None:
        adapter.check_models(sharer, receiver)
    if kind == "lcfx" and (sharer_contexts is None or len(sharer_contexts) != len(prompts)):
        raise ValueError("an lcfx adapter needs sharer_contexts: per prompt, the sharer's paragraphs as token spans")
    sharer_prompts = prompts if sharer_prompts is None else sharer_prompts
    if [len(p) for p in sharer_prompts] != [len(p) for p in prompts] and kind in ("lcf", "c2c"):
        raise ValueError("sharer_prompts must align one to one with prompts (same length per row)")
    stop = stop_token_ids(receiver, tokenizer) if stop_tokens is None else tuple(stop_tokens)
    read, write = Runner(sharer), Runner(receiver)
    answers = []
    for start in range(0, len(prompts), batch_size):
        rows = range(start, min(start + batch_size, len(prompts)))
        cache, mask = write.prefill([prompts[i][:-1] for i in rows])
        if kind in ("lcf", "c2c"):
            # Same lengths, same padding: the two caches pair up entry by entry.
            sharer_cache, _ = read.prefill([sharer_prompts[i][:-1] for i in rows])
            cache = fuse(adapter, sharer_cache, cache, attention_mask=mask)
        elif kind == "lcfx":
            tokens, span_ids, num_spans = _span_rows([sharer_contexts[i] for i in rows])
            sharer_cache, sharer_mask = read.prefill(tokens)
            span_ids, _ = left_pad(span_ids, -1)
            conditioned = adapter.config.receiver_conditioned
            message = summarize(
                adapter,
                sharer_cache,
                span_ids,
                num_spans,
                attention_mask=sharer_mask,
                receiver_cache=cache if conditioned else None,
                receiver_attention_mask=mask if conditioned else None,
            )
            cache = receive(adapter, message, cache, attention_mask=mask)
        answers += greedy_continue(write, cache, mask, [prompts[i][-1] for i in rows], max_new_tokens, stop)
    return answers
