"""Multiple-choice questions (the paper's shared-context evaluation) from local JSONL files, and the
prompt they are scored with.

Three layouts, detected per line, all normalised to `MCQ` (id, question, choices, answer index,
source = the file's stem, so each benchmark averages on its own):
    MMLU-Redux:  {"question": str, "choices": [str, ...], "answer": int, "subject"?: str}
    ARC:         {"id": str, "question": str, "choices": {"text": [...], "label": ["A", ...]}, "answerKey": "A"|"1"}
    OpenBookQA:  {"id": str, "question_stem": str, "choices": {"text": [...], "label": [...]}, "answerKey": "A"}
The AI2 originals of ARC and OpenBookQA ({"question": {"stem": ..., "choices": [{"text", "label"}]}})
are read too. Scoring, done elsewhere: the prompt below, then `ANSWER_CUE`, then the argmax of the
next-token logits over the option letters.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lcf_jax.errors import DataError

LETTERS = tuple("ABCDEFGHIJ")  # MMLU-Pro has up to 10 options
ANSWER_CUE = "The correct answer is"
LAYOUTS = (
    'MMLU-Redux {"question": str, "choices": [str, ...], "answer": int}',
    'ARC {"id", "question": str, "choices": {"text": [...], "label": [...]}, "answerKey"}',
    'OpenBookQA {"id", "question_stem": str, "choices": {"text": [...], "label": [...]}, "answerKey"}',
)


@dataclasses.dataclass(frozen=True)
class MCQ:
    id: str
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    source: str

    def __post_init__(self):
        if not 2 <= len(self.choices) <= len(LETTERS):
            raise ValueError(f"{len(self.choices)} choices: need 2 to {len(LETTERS)}")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"answer index {self.answer} is outside the {len(self.choices)} choices")


def _keyed(question: str, texts: Sequence[Any], labels: Sequence[Any], key: Any) -> tuple[str, list[str], int]:
    labels = [str(label).strip() for label in labels]
    if len(labels) != len(texts):
        raise ValueError(f"{len(texts)} choice texts but {len(labels)} labels")
    key = str(key).strip()
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the labels {labels}")
    return question, [str(t) for t in texts], labels.index(key)


def parse_mcq(row: dict[str, Any], *, source: str, fallback_id: str) -> MCQ:
    """One line in any of the three layouts (KeyError/TypeError/ValueError when it is none of them)."""
    if not isinstance(row, dict):
        raise TypeError(f"a line must hold a JSON object, got {type(row).__name__}")
    question = row.get("question")
    if "question_stem" in row:  # OpenBookQA (Hugging Face layout)
        c = row["choices"]
        stem, choices, answer = _keyed(row["question_stem"], c["text"], c["label"], row["answerKey"])
    elif isinstance(question, dict):  # the AI2 originals of ARC and OpenBookQA
        c = question["choices"]
        stem, choices, answer = _keyed(
            question["stem"], [x["text"] for x in c], [x["label"] for x in c], row["answerKey"]
        )
    elif isinstance(row.get("choices"), dict):  # ARC (Hugging Face layout)
        c = row["choices"]
        stem, choices, answer = _keyed(question, c["text"], c["label"], row["answerKey"])
    elif isinstance(row.get("choices"), list) and "answer" in row:  # MMLU-Redux
        answer = row["answer"]
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise TypeError(f"answer must be an int index, got {answer!r}")
        stem, choices = question, [str(x) for x in row["choices"]]
    else:
        raise KeyError(f"fields {sorted(row)} match no layout")
    if not isinstance(stem, str) or not stem.strip():
        raise ValueError("the question must be a non-empty string")
    return MCQ(str(row.get("id", fallback_id)), stem.strip(), tuple(choices), int(answer), source)


def read_mcq(path: str | os.PathLike) -> Iterator[MCQ]:
    """The questions of one JSONL file; a line in no known layout raises DataError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no multiple-choice file at {path}")
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield parse_mcq(json.loads(line), source=path.stem, fallback_id=f"{path.stem}-{number}")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(
                    f"{path}:{number}: expected one of the layouts {'; '.join(LAYOUTS)} ({type(e).__name__}: {e})"
                ) from None


def mcq_prompt(q: MCQ) -> str:
    """The question, then one option a line ("A. ..."), as the paper prompts (the scorer appends
    `ANSWER_CUE` and reads the logits of `option_letters(q)`)."""
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices))
    return f"{q.question}\n{options}"


def option_letters(q: MCQ) -> tuple[str, ...]:
    return LETTERS[: len(q.choices)]
