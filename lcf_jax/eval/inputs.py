"""Questions checked against what the models can read, before any evaluation work starts.

A question needs, at most: the sharer's prompt plus its longest text message; the receiver's full
context (both halves) plus its answer; its own facts plus the longest message plus its answer.
Longer than the models' positions (or a cap the user sets) is one error naming every such question,
or, when asked (`truncate=True`), each of its paragraphs is cut by the same fraction until it fits,
with a warning naming them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from lcf_jax.data.qa import Question
from lcf_jax.errors import ConfigError, ContextTooLongError
from lcf_jax.eval.conditions import (
    MESSAGE_LABEL,
    Setup,
    full_paragraphs,
    receiver_prompt,
    sharer_first_prompt,
    sharer_text_prompt,
)

log = logging.getLogger("lcf_jax.eval")


def position_limit(setup: Setup, cap: int | None = None) -> int:
    """The most tokens a sequence may hold: the smaller model's positions, or `cap` if smaller."""
    limits = [setup.sharer.config.max_position_embeddings, setup.receiver.config.max_position_embeddings]
    return min(limits + ([cap] if cap else []))


def tokens_needed(setup: Setup, q: Question) -> int:
    """The longest sequence question `q` puts in either model's cache."""
    s, r, answer = setup.sharer, setup.receiver, setup.max_answer_tokens
    longest_message = max(setup.budgets, default=0)
    needed = [len(receiver_prompt(r, q, full_paragraphs(q))) + answer]
    if setup.kv_rows():  # the sharer-first prompt, and the sharer's read of its opening and paragraphs
        needed.append(len(sharer_first_prompt(r, q)) + answer)
    if longest_message:
        needed.append(len(sharer_text_prompt(s, q, setup.sharer_sees_question)) + longest_message)
        label = len(r.tokenizer.encode(f"\n{MESSAGE_LABEL} ", add_special_tokens=False))
        needed.append(len(receiver_prompt(r, q, q.receiver_context)) + label + longest_message + answer)
    return max(needed)


def _cut(text: str, fraction: float) -> str:
    """The first `fraction` of `text`, ending at a word boundary."""
    keep = text[: max(1, int(len(text) * fraction))]
    return keep.rsplit(" ", 1)[0] if " " in keep and len(keep) < len(text) else keep


def _truncated(setup: Setup, q: Question, limit: int) -> Question:
    fraction, need = 1.0, tokens_needed(setup, q)
    while need > limit:
        context = sum(len(p) for p in (*q.sharer_context, *q.receiver_context))
        fraction *= max(0.05, min(0.97, 1 - (need - limit) / max(1, need)))
        shorter = dataclasses.replace(
            q,
            sharer_context=tuple(_cut(p, fraction) for p in q.sharer_context),
            receiver_context=tuple(_cut(p, fraction) for p in q.receiver_context),
        )
        need = tokens_needed(setup, shorter)
        if sum(len(p) for p in (*shorter.sharer_context, *shorter.receiver_context)) >= context and need > limit:
            raise ContextTooLongError(f"question {q.id} does not fit {limit} tokens even with its context cut")
    return shorter if fraction < 1.0 else q


def fit_questions(
    setup: Setup, questions: Sequence[Question], *, cap: int | None = None, truncate: bool = False
) -> list[Question]:
    """`questions` if each fits `position_limit(setup, cap)`; otherwise a `ContextTooLongError`
    naming the ones that do not, or (with `truncate`) those questions with their paragraphs cut."""
    limit = position_limit(setup, cap)
    needs = [tokens_needed(setup, q) for q in questions]
    over = [(q.id, n) for q, n in zip(questions, needs) if n > limit]
    if not over:
        return list(questions)
    named = ", ".join(f"{qid} ({n} tokens)" for qid, n in over[:10]) + (
        f" and {len(over) - 10} more" if len(over) > 10 else ""
    )
    where = f"the cap of {cap} tokens" if cap and cap == limit else f"the models' {limit} positions"
    if not truncate:
        raise ContextTooLongError(
            f"{len(over)} question(s) need more than {where} (prompt, longest message and answer): {named}; shorten "
            "their paragraphs, or pass --truncate to cut them to fit"
        )
    log.warning("cutting the paragraphs of %d question(s) to fit %s: %s", len(over), where, named)
    too_long = {qid for qid, _ in over}
    return [_truncated(setup, q, limit) if q.id in too_long else q for q in questions]


def check_adapter_fits(adapter, sharer, receiver, name: str = "the adapter") -> None:
    """A clear error when an adapter was trained for other models than the ones loaded."""
    problems = []
    for role, model, config in (("sharer", sharer, adapter.spec.sharer), ("receiver", receiver, adapter.spec.receiver)):
        want = (config.num_layers, config.num_kv_heads, config.head_dim)
        got = (model.config.num_layers, model.config.num_kv_heads, model.config.head_dim)
        if want != got:
            problems.append(f"its {role} has layers/kv heads/head dim {want}, the loaded {role} {got}")
    if problems:
        raise ConfigError(
            f"{name} was trained for other models: {'; '.join(problems)}. Pass the --config it was trained with"
        )
