"""Answer metrics: SQuAD v1.1 exact match and token F1 for free-form answers (HotpotQA), and
multiple choice scored from the logits of the option letters (MMLU-Redux, ARC, OpenBookQA, MMLU-Pro).

The normalisation and F1 follow the official SQuAD v1.1 evaluation script line for line (HotpotQA's
script copies it), so our numbers are comparable with the paper's. One consequence worth knowing: when
prediction and gold both normalise to the empty string, EM is 1 but F1 is 0 (v1.1 returns 0 whenever no
token is shared; only the SQuAD v2.0 script special-cases empty answers).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Prefixes instruction-tuned models put before the answer although the prompt asks for the answer only.
_ANSWER_PREFIX = re.compile(r"^(?:answer\s*:|the\s+answer\s+is\s*:?)\s*", re.IGNORECASE)
# Opening quote -> the closing quotes that pair with it (typographic quotes often come back mismatched).
_QUOTES = {'"': '"“”', "'": "'‘’", "“": '”"', "‘": "’'", "`": "`"}


# ----------------------------------------------------------------------------------------- free form


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation, drop the articles a/an/the as whole words,
    collapse whitespace. Order matters and is the official one (punctuation goes before articles, so
    "the-end" becomes "theend" and keeps its letters)."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_answers(answers: str | Sequence[str]) -> list[str]:
    """Accept one gold string or several; a bare string is one answer, not a sequence of characters."""
    out = [answers] if isinstance(answers, str) else list(answers)
    if not out:
        raise ValueError("no gold answers given: every question needs at least one accepted answer")
    return out


def _f1_single(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:  # also covers empty prediction and/or empty gold, as in the v1.1 script
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, answers: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised accepted answer, else 0.0."""
    norm = normalize_answer(prediction)
    return float(any(norm == normalize_answer(gold) for gold in _as_answers(answers)))


def token_f1(prediction: str, answers: str | Sequence[str]) -> float:
    """SQuAD token F1 (bag-of-tokens overlap after normalisation), the max over accepted answers.
    0.0 when no token is shared, including an empty prediction or an empty gold (v1.1 behaviour)."""
    return max(_f1_single(prediction, gold) for gold in _as_answers(answers))


def clean_prediction(text: str) -> str:
    """The part of a generation that is scored: the first non-empty line, without an "Answer:" or
    "The answer is" prefix, surrounding quotes or a trailing period.

    Why: the receiver is prompted to answer briefly, but chat models still wrap the answer
    ('Answer: "Paris".') or keep talking on the next lines; scoring that text would measure verbosity,
    not knowledge. The steps repeat until nothing changes, so the order of the wrappers does not matter.
    """
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    previous = None
    while line != previous:
        previous = line
        line = _ANSWER_PREFIX.sub("", line.strip())
        if line.endswith(".") and not line.endswith(".."):
            line = line[:-1].rstrip()
        if len(line) >= 2 and line[0] in _QUOTES and line[-1] in _QUOTES[line[0]]:
            line = line[1:-1].strip()
    return line


def score(
    predictions: Sequence[str], answers_list: Sequence[str | Sequence[str]], *, clean: bool = False
) -> dict[str, Any]:
    """Per-example and mean EM/F1 of `predictions` against `answers_list` (one gold string or a list of
    accepted answers per question).

    Returns {"em": float array of 0/1, "f1": float array in [0, 1], "em_mean": 0-100, "f1_mean": 0-100,
    "n": int}. The per-example arrays are kept because the paired significance tests
    (`lcf_jax.eval.significance.compare_to`) need them. `clean=True` applies `clean_prediction` first;
    it is off by default so that what is scored is exactly what the caller passes.
    """
    if len(predictions) != len(answers_list):
        raise ValueError(f"{len(predictions)} predictions but {len(answers_list)} answer lists: they must pair up")
    if not predictions:
        raise ValueError("nothing to score: predictions is empty")
    preds = [clean_prediction(p) for p in predictions] if clean else list(predictions)
    em = np.array([exact_match(p, a) for p, a in zip(preds, answers_list)], dtype=np.float64)
    f1 = np.array([token_f1(p, a) for p, a in zip(preds, answers_list)], dtype=np.float64)
    return {"em": em, "f1": f1, "em_mean": 100.0 * em.mean(), "f1_mean": 100.0 * f1.mean(), "n": len(preds)}


# ----------------------------------------------------------------------------------- multiple choice


def choice_letters(n: int) -> list[str]:
    """["A", "B", ...] for `n` options (MMLU-Pro has up to 10)."""
    if not 1 <= n <= 26:
        raise ValueError(f"multiple choice needs 1 to 26 options, got {n}")
    return list(string.ascii_uppercase[:n])


def mcq_predictions(letter_logits: np.ndarray) -> np.ndarray:
    """The chosen option per question: argmax over the next-token logits of the option letters.

    `letter_logits` is [B, n_options], column j holding the logit of `letter_token_ids(...)[j]` at the
    position after "The correct answer is". Restricting the argmax to the letters makes the score
    independent of how likely the model finds any other continuation.
    """
    logits = np.asarray(letter_logits)
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"letter_logits must be [B, n_options] with n_options >= 1, got shape {logits.shape}")
    return np.argmax(logits, axis=-1)


def mcq_accuracy(pred: np.ndarray, gold: Sequence[int | str] | np.ndarray) -> float:
    """Accuracy in 0-100 (the scale the paper reports). `gold` holds option indices or letters."""
    pred = np.asarray(pred)
    gold_list = list(gold)
    if len(gold_list) != pred.shape[0]:
        raise ValueError(f"{pred.shape[0]} predictions but {len(gold_list)} gold labels")
    if not gold_list:
        raise ValueError("nothing to score: no predictions")
    gold_idx = np.array(
        [string.ascii_uppercase.index(g.strip().upper()) if isinstance(g, str) else int(g) for g in gold_list]
    )
    return 100.0 * float(np.mean(pred == gold_idx))


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without BOS/EOS, for a transformers tokenizer or a bare `tokenizers.Tokenizer`."""
    encoded = tokenizer.encode(text, add_special_tokens=False)
    return list(getattr(encoded, "ids", encoded))


def letter_token_ids(tokenizer: Any, n: int) -> list[int]:
    """For each option letter, the id of the token the model emits right after "The correct answer is".

    That is the single token " A" (leading space) in byte-level BPE vocabularies such as SmolLM2's or
    Qwen's; SentencePiece vocabularies fold the space into the token itself, so there the bare "A"
    encodes to the right single token. A candidate is only accepted if it decodes back to the letter, so
    an unknown-token id is never mistaken for a letter.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = []
    for letter in choice_letters(n):
        for text in (" " + letter, letter):
            tokens = _encode(tokenizer, text)
            if len(tokens) == 1 and tokens[0] != unk and tokenizer.decode(tokens).strip() == letter:
                ids.append(tokens[0])
                break
        else:
            raise ValueError(
                f"neither {' ' + letter!r} nor {letter!r} is a single token for this tokenizer, so the option "
                "letters cannot be scored from one next-token distribution"
            )
    if len(set(ids)) != len(ids):
        raise ValueError(f"option letters map to repeated token ids {ids}")
    return ids
