"""The prompts of every condition: the receiver's (alone, with a text message, with the sharer's
paragraphs where a KV message lands) and the sharer's text-writing prompt."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from lcf_jax.data.qa import FACTS_HEADER, Question, receiver_messages
from lcf_jax.errors import ConfigError
from lcf_jax.models.model import Model
from lcf_jax.sampling import chat_prompt

TEXT_INSTRUCTION = (
    "A teammate must answer a question using these facts together with other facts they have. "
    "Write down the facts below for them, briefly."
)
MESSAGE_LABEL = "From a teammate:"


def full_paragraphs(q: Question) -> list[str]:
    """All ten paragraphs: the receiver's, then the sharer's."""
    return [*q.receiver_context, *q.sharer_context]


def sharer_text_prompt(model: Model, q: Question, sees_question: bool) -> list[int]:
    facts = "\n".join(q.sharer_context)
    question = f"\n\nTheir question: {q.question}" if sees_question else ""
    return chat_prompt(model, f"{TEXT_INSTRUCTION}\n\nFacts:\n{facts}{question}")


def receiver_prompt(model: Model, q: Question, paragraphs: Sequence[str], message: str | None = None) -> list[int]:
    paragraphs = list(paragraphs) + ([f"{MESSAGE_LABEL} {message}"] if message is not None else [])
    return chat_prompt(model, receiver_messages(q, paragraphs))


def decode(model: Model, ids: Sequence[int]) -> str:
    return model.tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def message_budgets(tokens: Sequence[int], budgets: Sequence[int]) -> dict[int, list[int]]:
    """The message each budget sends: its first N tokens (the whole message if it is shorter)."""
    return {b: list(tokens[:b]) for b in budgets}


@dataclasses.dataclass(frozen=True)
class SharerFirst:
    """The receiver's prompt with the sharer's paragraphs first in its facts, in three pieces: the
    `opening` (chat template, instruction, facts header: the same for every question), the sharer's
    `context` (where a KV message lands) and the `rest` (the receiver's paragraphs, the question,
    the assistant's turn). Each piece is tokenized on its own, so the sharer computes exactly the
    entries of `context` behind `opening`; the reference condition reads the three concatenated."""

    opening: list[int]
    context: list[int]
    rest: list[int]
    spans: list[int]  # the context's paragraphs: token counts, each ending with its newline

    @property
    def prompt(self) -> list[int]:
        return self.opening + self.context + self.rest


def sharer_first_segments(model: Model, q: Question) -> SharerFirst:
    if model.tokenizer is None:
        raise ConfigError("this model has no tokenizer; load it from a directory with tokenizer files or a GGUF file")
    messages = receiver_messages(q, [*q.sharer_context, *q.receiver_context])
    text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    start = text.index(FACTS_HEADER) + len(FACTS_HEADER)
    end = start + len("\n".join(q.sharer_context))

    def encode(piece: str) -> list[int]:
        return list(model.tokenizer.encode(piece, add_special_tokens=False))

    context = encode(text[start:end])
    # Paragraph boundaries: after each token whose text holds a newline (the paragraphs are joined by one).
    ends = [i + 1 for i, t in enumerate(context) if "\n" in model.tokenizer.decode([t])]
    bounds = [0, *[e for e in ends if e < len(context)], len(context)]
    spans = [b - a for a, b in zip(bounds, bounds[1:])]
    return SharerFirst(encode(text[:start]), context, encode(text[end:]), spans)


def sharer_first_prompt(model: Model, q: Question) -> list[int]:
    """full_context_sharer_first: the receiver's prompt with the sharer's paragraphs where a KV
    message lands (before its own)."""
    return sharer_first_segments(model, q).prompt
