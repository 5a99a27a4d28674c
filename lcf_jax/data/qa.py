"""Split-context questions from local JSONL, for LCF-X training and `lcf eval --data`.

One object a line:
    {"id": "...", "question": "...", "sharer_context": ["paragraph", ...],
     "receiver_context": ["paragraph", ...], "answers": ["accepted answer", ...]}
The sharer reads its paragraphs (one span each); the receiver reads its own paragraphs and the
question through its chat template and is trained to answer with the first accepted answer.
Whether the sharer also sees the question is an option (the method leaves it open; default: no).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lcf_jax.data.chat import token_ids
from lcf_jax.data.examples import Example
from lcf_jax.errors import DataError

FIELDS = ("id", "question", "sharer_context", "receiver_context", "answers")
INSTRUCTION = "Answer the question with a short phrase taken from the facts."
FACTS_HEADER = "Facts:\n"  # a KV message's entries land right after it (eval/prompts.py)


@dataclasses.dataclass(frozen=True)
class Question:
    id: str
    question: str
    sharer_context: tuple[str, ...]
    receiver_context: tuple[str, ...]
    answers: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def read_questions(path: str | os.PathLike) -> Iterator[Question]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no question file at {path}")
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                missing = [k for k in FIELDS if k not in row]
                if missing:
                    raise KeyError(f"missing {missing}")
                q = Question(
                    str(row["id"]),
                    str(row["question"]),
                    tuple(map(str, row["sharer_context"])),
                    tuple(map(str, row["receiver_context"])),
                    tuple(map(str, row["answers"])),
                )
                if not q.answers or not q.sharer_context:
                    raise ValueError("answers and sharer_context must be non-empty lists")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(
                    f"{path}:{number}: expected an object with {', '.join(FIELDS)} (contexts and answers are lists "
                    f"of strings) ({type(e).__name__}: {e})"
                ) from None
            yield q


def load_questions(path: str | os.PathLike, limit: int | None = None) -> list[Question]:
    """Every question of a JSONL file, all lines checked (then the first `limit`): a bad line or a
    repeated id is a `DataError` naming it, raised before anything else is done with the file."""
    questions = list(read_questions(path))
    if not questions:
        raise DataError(f"{path} holds no questions (one JSON object a line, format in lcf_jax/data/qa.py)")
    repeated = sorted(qid for qid, n in Counter(q.id for q in questions).items() if n > 1)
    if repeated:
        raise DataError(
            f"{path}: question ids must be unique (answers are recorded by id); repeated: {', '.join(repeated[:10])}"
        )
    return questions[:limit] if limit else questions


def write_questions(questions: Sequence[Question], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(q.to_json()) + "\n" for q in questions))
    return path


def receiver_messages(q: Question, paragraphs: Sequence[str] | None = None) -> list[dict[str, str]]:
    """The receiver's chat: its paragraphs (default: its own context), the question."""
    paragraphs = q.receiver_context if paragraphs is None else paragraphs
    facts = "\n".join(paragraphs)
    content = (
        f"{INSTRUCTION}\n\n{FACTS_HEADER}{facts}\n\nQuestion: {q.question}"
        if facts
        else (f"{INSTRUCTION}\n\nQuestion: {q.question}")
    )
    return [{"role": "user", "content": content}]


def sharer_spans(q: Question, tokenizer: Any, *, sees_question: bool = False) -> tuple[tuple[int, ...], ...]:
    """The sharer's context as token spans, one per paragraph (plus the question, if it may see it)."""
    texts = list(q.sharer_context) + ([f"Question: {q.question}"] if sees_question else [])
    return tuple(tuple(tokenizer.encode(t + "\n", add_special_tokens=False)) for t in texts)


def question_example(
    q: Question, receiver_tokenizer: Any, sharer_tokenizer: Any, *, sees_question: bool = False, teacher: bool = False
) -> Example:
    """One LCF-X training example. `teacher`: also the receiver's prompt with both halves of the
    context, the sharer's paragraphs first (the evaluation's full_context_sharer_first), for
    distillation from the receiver that reads everything."""

    def chat(paragraphs=None) -> tuple[int, ...]:
        return tuple(
            token_ids(
                receiver_tokenizer.apply_chat_template(
                    receiver_messages(q, paragraphs), add_generation_prompt=True, tokenize=True
                )
            )
        )

    prompt = chat()
    teacher_prompt = chat([*q.sharer_context, *q.receiver_context]) if teacher else None
    response = list(receiver_tokenizer.encode(q.answers[0], add_special_tokens=False))
    if receiver_tokenizer.eos_token_id is not None:
        response.append(receiver_tokenizer.eos_token_id)
    spans = sharer_spans(q, sharer_tokenizer or receiver_tokenizer, sees_question=sees_question)
    return Example(prompt, tuple(response), sharer_context=spans, teacher_prompt=teacher_prompt)


def load_question_examples(
    path: str | os.PathLike,
    receiver_tokenizer: Any,
    sharer_tokenizer: Any = None,
    *,
    sees_question: bool = False,
    max_length: int = 2048,
    limit: int | None = None,
    teacher: bool = False,
) -> list[Example]:
    examples = []
    for q in read_questions(path):
        example = question_example(
            q, receiver_tokenizer, sharer_tokenizer, sees_question=sees_question, teacher=teacher
        )
        if example.length <= max_length:
            examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DataError(f"{path} yielded no usable questions (<= {max_length} tokens)")
    return examples
