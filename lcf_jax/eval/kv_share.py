"""The KV-message rows of an evaluation (`Condition(kind="kv")`) and their text reference.

Per batch: the sharer reads the opening and its paragraphs once (with the attention the chosen
policy ranks by) and each row's message is selected from that one read (`communicate.read_kv` /
`select_kv`); `full_context_sharer_first` continues that read with the rest of the prompt (one
model: the read is the prompt's first part); the receiver prefills the shared opening once, each
message is placed in it (a new cache each time), extended with the rest and answered from. The
mismatched rows get the next question's message in the batch (cyclically; its context, its
length), or question i+1's in a batch of one. Layers, where a row sends a fraction of them, are
ranked once per evaluation on the first `Setup.kv_calibration` questions. Between two models
(`Setup.kv_translator`) each message is translated as it is placed.

Cost (measured on the demo, 2-core CPU): a batch of 32 questions takes about 73 s for these six
rows, almost all of it the receiver reading the rest of its prompt after each message and
answering: each row is a prefill of ~95 tokens and a 16-token answer, as any condition is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lcf_jax import communicate
from lcf_jax.data.qa import Question
from lcf_jax.eval.answering import EXTEND_BUCKET, PROMPT_BUCKET, answers_from
from lcf_jax.eval.condition import Condition
from lcf_jax.eval.prompts import SharerFirst, sharer_first_segments
from lcf_jax.eval.setup import SHARER_FIRST, Setup
from lcf_jax.messages import kv as kv_messages
from lcf_jax.messages.kv import KVMessage


def question_tokens(setup: Setup, q: Question) -> list[int]:
    """What the sharer reads after its context for the `query` policy: the question, as the
    receiver's prompt words it."""
    return list(setup.sharer.tokenizer.encode(f"\n\nQuestion: {q.question}", add_special_tokens=False))


def layer_ranking(setup: Setup, questions: Sequence[Question]) -> np.ndarray | None:
    """KVComm layer scores `[L]` (`setup.kv_layer_scores`, computed on the first `kv_calibration`
    questions and kept there if not given; None when every KV row sends every layer)."""
    if all(c.layer_fraction == 1.0 for c in setup.kv_rows()):
        return None
    if setup.kv_layer_scores is None:
        calib = [sharer_first_segments(setup.receiver, q) for q in questions[: setup.kv_calibration]]
        setup.kv_layer_scores = communicate.rank_kv_layers(
            setup.receiver, [s.opening for s in calib], [s.context for s in calib], [s.rest for s in calib],
            chunk=setup.prefill_chunk,
        )  # fmt: skip
    return np.asarray(setup.kv_layer_scores)


def layers_for(condition: Condition, scores: np.ndarray | None) -> tuple[int, ...] | None:
    if condition.layer_fraction == 1.0:
        return None
    return kv_messages.pick_layers(scores, condition.layer_fraction)


def messages_for(
    setup: Setup,
    questions: Sequence[Question],
    segments: Sequence[SharerFirst],
    rows: Sequence[Condition],
    scores: np.ndarray | None,
) -> tuple[dict[str, KVMessage], communicate.KVRead]:
    """Each condition's message for these questions, from one read of the sharer (which is
    returned too)."""
    policies = {c.policy for c in rows}
    read = communicate.read_kv(
        setup.sharer,
        [s.context for s in segments],
        [s.opening for s in segments],
        attention="attention" in policies,
        questions=[question_tokens(setup, q) for q in questions] if "query" in policies else None,
        spans=[s.spans for s in segments],
        bucket=PROMPT_BUCKET,
        chunk=setup.prefill_chunk,
    )
    messages = {
        c.name: communicate.select_kv(
            read, c.entries, policy=c.policy, layers=layers_for(c, scores), clip=True, unit=c.unit
        )
        for c in rows
    }
    return messages, read


def kv_answers(
    setup: Setup, questions: Sequence[Question], index: Sequence[int], scores: np.ndarray | None
) -> tuple[dict[str, list[str]], dict[str, list[int]]]:
    """The answers of full_context_sharer_first and every KV row for questions `index`, and the
    bytes each row's message took."""
    r, chunk = setup.receiver, setup.prefill_chunk
    rows = setup.kv_rows()
    own_q = [questions[i] for i in index]
    other_q = [questions[(i + 1) % len(questions)] for i in index]
    own = [sharer_first_segments(r, q) for q in own_q]
    opening = communicate.prefill(r, [s.opening for s in own], bucket=EXTEND_BUCKET)
    lasts = [s.rest[-1:] for s in own]
    answers: dict[str, list[str]] = {}
    mismatched = [c for c in rows if c.mismatched]
    # In a batch of several questions the mismatched rows get the next question's message of the
    # batch (cyclically), selected from the same read; a batch of one reads question i+1.
    within = len(index) > 1
    messages, read = messages_for(setup, own_q, own, [c for c in rows if within or not c.mismatched], scores)
    # The text reference reads opening + context + rest. One model: the sharer's read of opening +
    # context is that prompt's first part (a chunked prefill, equal to one prefill), so it goes on
    # from there; two models: the receiver reads it all.
    if setup.sharer is r:
        full = communicate.extend(r, read.cache, [s.rest[:-1] for s in own], bucket=EXTEND_BUCKET, chunk=chunk)
    else:
        full = communicate.prefill(r, [s.prompt[:-1] for s in own], bucket=EXTEND_BUCKET, chunk=chunk)
    del read
    answers[SHARER_FIRST] = answers_from(setup, full, lasts)
    del full
    if mismatched and within:
        roll = [(k + 1) % len(index) for k in range(len(index))]
        messages |= {c.name: messages[c.name].take_rows(roll) for c in mismatched}
    elif mismatched:
        other = [sharer_first_segments(r, q) for q in other_q]
        messages |= messages_for(setup, other_q, other, mismatched, scores)[0]
    sizes = {name: m.row_nbytes().tolist() for name, m in messages.items()}
    for c in rows:
        placed = communicate.receive(setup.kv_translator, messages.pop(c.name), opening, receiver=r)
        cache = communicate.extend(r, placed, [s.rest[:-1] for s in own], bucket=EXTEND_BUCKET, chunk=chunk)
        del placed
        answers[c.name] = answers_from(setup, cache, lasts)
        del cache
    return answers, sizes


def describe(setup: Setup) -> dict[str, dict]:
    """What each KV row sends (results.json meta): policy, entries, layers (from the ranking)."""
    scores = None if setup.kv_layer_scores is None else np.asarray(setup.kv_layer_scores)
    out = {}
    for c in setup.kv_rows():
        layers = layers_for(c, scores) if scores is not None or c.layer_fraction == 1.0 else None
        out[c.name] = {
            "policy": c.policy,
            "entries": "all" if c.entries is None else c.entries,
            "unit": c.unit,
            "layers": "all" if layers is None and c.layer_fraction == 1.0 else list(layers or []),
            "mismatched": c.mismatched,
        }
    if scores is not None:
        out["layer_scores"] = [round(float(x), 4) for x in scores]
    return out
