"""The paper's split-context partition of HotpotQA distractor (bridge questions), from the official
JSON files; pure Python, so it is tested without TFDS.

Each question's 10 paragraphs become two disjoint sets of 5 holding one gold paragraph each (gold =
the titles in `supporting_facts`): a seeded draw per question id decides which gold paragraph and
which 4 of the 8 distractors go to the sharer; the rest go to the receiver, with the question. Both
halves keep the paragraphs' original order. Comparison questions and malformed ones (not 10
paragraphs, not exactly 2 gold paragraphs) are skipped and counted.
"""

from __future__ import annotations

import collections
import json
import os
import random
from pathlib import Path
from typing import Any

from lcf_jax.data.qa import Question
from lcf_jax.errors import DataError

FILES = {"train": "hotpot_train_v1.1.json", "validation": "hotpot_dev_distractor_v1.json"}
PARAGRAPHS = 10
MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the official HotpotQA files (https://hotpotqa.github.io, CC BY-SA 4.0) and place them, under
these exact names, in the TFDS manual directory (`manual_dir` of the loader, by default
<data_dir>/downloads/manual/):
  {FILES["train"]}         (train split, http://curtis.ml.cmu.edu/datasets/hotpot/{FILES["train"]})
  {FILES["validation"]}  (validation split, http://curtis.ml.cmu.edu/datasets/hotpot/{FILES["validation"]})
The `validation` config needs only the second file.
"""


def paragraph_text(title: str, sentences: list[str]) -> str:
    """ "Title: sentence sentence ..." (HotpotQA sentences carry their own leading spaces)."""
    return f"{title}: {' '.join(s.strip() for s in sentences if s.strip())}"


def partition(row: dict[str, Any], *, seed: int = 0) -> tuple[dict[str, Any] | None, str]:
    """(example, "") for a bridge question; (None, reason) for one that is skipped: "comparison" or
    "malformed". The example: {question: Question, sharer_gold, receiver_gold, level, positions}."""
    try:
        if row.get("type") != "bridge":
            return None, "comparison" if row.get("type") == "comparison" else "malformed"
        context = [(str(title), list(sentences)) for title, sentences in row["context"]]
        gold_titles = {str(title) for title, _ in row["supporting_facts"]}
        qid, question, answer = str(row["_id"]), str(row["question"]), str(row["answer"])
    except (KeyError, TypeError, ValueError):
        return None, "malformed"
    gold = [i for i, (title, _) in enumerate(context) if title in gold_titles]
    if len(context) != PARAGRAPHS or len(gold_titles) != 2 or len(gold) != 2 or not answer.strip():
        return None, "malformed"
    rng = random.Random(f"hotpot-split:{seed}:{qid}")
    distractors = [i for i in range(PARAGRAPHS) if i not in gold]
    rng.shuffle(distractors)
    mine = rng.randrange(2)
    sharer = sorted([gold[mine], *distractors[:4]])
    receiver = sorted([gold[1 - mine], *distractors[4:]])
    texts = [paragraph_text(title, sentences) for title, sentences in context]
    q = Question(
        id=qid,
        question=question.strip(),
        sharer_context=tuple(texts[i] for i in sharer),
        receiver_context=tuple(texts[i] for i in receiver),
        answers=(answer.strip(),),
    )
    return {
        "question": q,
        "sharer_gold": sharer.index(gold[mine]),
        "receiver_gold": receiver.index(gold[1 - mine]),
        "level": str(row.get("level", "")),
        "sharer_positions": tuple(sharer),
        "receiver_positions": tuple(receiver),
    }, ""


def read_hotpot(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no HotpotQA file at {path}. Fix: download it and place it there:\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); expected the official HotpotQA file, a JSON list") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of questions (the official HotpotQA format)")
    return rows


def split_questions(path: str | os.PathLike, *, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The partitioned bridge questions of one file and the counts of what was skipped, by reason."""
    examples, skipped = [], collections.Counter()
    for row in read_hotpot(path):
        example, reason = partition(row, seed=seed)
        if example is None:
            skipped[reason] += 1
        else:
            examples.append(example)
    return examples, dict(skipped)
