"""Shared-context multiple choice, scored from logits as in the paper: the question and its lettered
options go through the receiver's chat template, "The correct answer is" is appended, and the
prediction is the option letter with the highest logit at the next position.

Conditions: `receiver` and `sharer` alone, and each adapter (lcf, c2c) fusing the sharer's cache of
the same prompt into the receiver's (every prompt token but the last; the receiver continues from
the last). `oracle` counts a question right if either model alone is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from lcf_jax import communicate
from lcf_jax.adapters import Adapter
from lcf_jax.align import align_batch
from lcf_jax.data.mcq import ANSWER_CUE, MCQ
from lcf_jax.data.mcq import mcq_prompt as mcq_text
from lcf_jax.eval.metrics import letter_token_ids
from lcf_jax.eval.significance import mcnemar_exact
from lcf_jax.models.model import Model, forward
from lcf_jax.progress import Progress
from lcf_jax.sampling import chat_prompt


def mcq_prompt(model: Model, item: MCQ) -> list[int]:
    """The question and its lettered options through the chat template, then the answer cue."""
    cue = model.tokenizer.encode(ANSWER_CUE, add_special_tokens=False)
    return chat_prompt(model, mcq_text(item)) + list(cue)


def _letter_logits(model: Model, cache, lasts: Sequence[int], letters: np.ndarray) -> np.ndarray:
    """Logits of each row's option letters `[B, n]` after its last prompt token."""
    cache = cache.with_capacity(int(np.max(np.asarray(cache.lengths))) + 1)
    tokens = jnp.asarray(np.asarray(lasts, np.int32)[:, None])
    logits, _ = forward(model.graphdef, model.params, tokens, cache, jnp.ones((len(lasts),), jnp.int32), last_only=True)
    return np.take_along_axis(np.asarray(logits[:, 0]), letters, axis=1)


def run_mcq(
    sharer: Model,
    receiver: Model,
    items: Sequence[MCQ],
    adapters: Mapping[str, Adapter],
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Per condition, whether each item was answered right (`[n]` bool)."""
    correct: dict[str, list[bool]] = {name: [] for name in ("receiver", "sharer", *adapters)}
    bar = Progress("multiple choice", len(items), mode="auto" if progress else "off")
    with bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            width = max(len(it.choices) for it in chunk)
            r_letters = letter_token_ids(receiver.tokenizer, width)
            s_letters = letter_token_ids(sharer.tokenizer, width)
            gold = np.array([it.answer for it in chunk])
            valid = np.array([[i < len(it.choices) for i in range(width)] for it in chunk])

            def pick(scores: np.ndarray, valid: np.ndarray = valid) -> np.ndarray:
                return np.argmax(np.where(valid, scores, -np.inf), axis=1)

            r_prompts = [mcq_prompt(receiver, it) for it in chunk]
            heads, lasts = communicate.split_last(r_prompts)
            r_cache = communicate.prefill(receiver, heads)
            letters = np.tile(np.asarray(r_letters)[None], (len(chunk), 1))
            correct["receiver"] += list(pick(_letter_logits(receiver, r_cache, [x[0] for x in lasts], letters)) == gold)
            s_prompts = [mcq_prompt(sharer, it) for it in chunk]
            s_heads, s_lasts = communicate.split_last(s_prompts)
            s_alone = communicate.prefill(sharer, s_heads)
            s_letter_ids = np.tile(np.asarray(s_letters)[None], (len(chunk), 1))
            correct["sharer"] += list(
                pick(_letter_logits(sharer, s_alone, [x[0] for x in s_lasts], s_letter_ids)) == gold
            )
            if adapters:
                # The sharer's cache of the receiver's tokens (re-encoded when the tokenizers differ).
                same_vocab = sharer.tokenizer.get_vocab() == receiver.tokenizer.get_vocab()
                if same_vocab:
                    s_cache, mask = communicate.prefill(sharer, heads), None
                else:
                    aligned, masks = align_batch(receiver.tokenizer, sharer.tokenizer, r_prompts)
                    s_cache = communicate.prefill(sharer, [a[:-1] for a in aligned])
                    mask = communicate.fuse_positions(masks, r_cache.capacity)
                for name, adapter in adapters.items():
                    fused = communicate.fuse(adapter, s_cache, r_cache, mask)
                    scores = _letter_logits(receiver, fused, [x[0] for x in lasts], letters)
                    correct[name] += list(pick(scores) == gold)
            bar.update(len(chunk))
    out = {name: np.asarray(v, bool) for name, v in correct.items()}
    out["oracle"] = out["receiver"] | out["sharer"]
    return out


def mcq_summary(correct: Mapping[str, np.ndarray], reference: str | None = None) -> dict[str, dict[str, Any]]:
    """Accuracy (0-100) per condition, with the one-sided exact McNemar p against `reference`
    (e.g. "c2c": is the condition better?)."""
    out = {}
    for name, right in correct.items():
        row: dict[str, Any] = {"accuracy": 100.0 * float(np.mean(right)), "n": len(right)}
        if reference in correct and name != reference:
            b, c, p = mcnemar_exact(right, correct[reference], alternative="greater")
            row.update(b=b, c=c, mcnemar_p_greater=p)
        out[name] = row
    return out
