"""The accuracy run: every evaluation condition's answers on the same split-context questions,
batched. (Latency, one question at a time: `eval/latency.py`; prompts: `eval/prompts.py`; what the
sharer sends: `eval/sharer.py`; the KV-message rows: `eval/kv_share.py`; the conditions:
`eval/condition.py`, `eval/setup.py`.)

Conditions
  question_only, half_context, full_context  the receiver alone, with none, its own or all paragraphs
  full_context_sharer_first                  all paragraphs, the sharer's first (where a KV message
                                             lands): the text reference of the KV rows
  text_<N>                                   the sharer reads its paragraphs and writes a message
                                             (greedy); its first N tokens are appended to the
                                             receiver's facts. One message serves every budget.
  lcfx                                       the sharer's summary applied to the receiver's cache
  mismatched_message                         another question's summary (information must match)
  empty_message                              an all-zero message (the adapter alone, nothing sent)
  receiver_only                              an adapter trained with zero messages, given zeros:
                                             it can learn the task but receive nothing
  kv_share, kv_share_<M>                     selected entries of the sharer's own cache (every one,
                                             or M per row and layer by the default policy), when
                                             sharer and receiver are one model
  kv_share_mismatched                        another question's kv_share_32 message

Sharing work in the accuracy run: every receiver prompt of a question starts with the same tokens
(the instruction and the receiver's own facts; the full context lists them first), so that part
is prefilled once and each condition extends it; the text budgets extend one another in turn (a
budget's message is a prefix of the next's), and the latent conditions all start from the
half-context cache. Chunked prefill equals one prefill (tests/test_models_parity.py), so the
answers are those of separate runs.

Memory: batches are cut by a token budget (`eval/batching.py`), not a row count, and prompts longer
than `Setup.prefill_chunk` tokens are read in chunks, so a batch holds a bounded number of cache
entries and attention scores whatever the data. Within a batch each condition's cache is dropped as
soon as it has answered; at most the shared prefix, the cache being answered from and the copy
`generate` decodes into are alive at once. Measured in BENCHMARKS.md (bench/eval_memory.py).

Nothing is lost when a run dies: each finished message and each batch of answers goes to a
`RunRecord` (`eval/record.py`), and work it already holds is not done again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from lcf_jax import communicate
from lcf_jax.adapters import Message
from lcf_jax.data.qa import Question
from lcf_jax.errors import ConfigError
from lcf_jax.eval import kv_share
from lcf_jax.eval.answering import EXTEND_BUCKET, answers_from, common_prefix
from lcf_jax.eval.batching import token_batches
from lcf_jax.eval.prompts import (  # noqa: F401 - also importable from here, as before the split
    MESSAGE_LABEL,
    TEXT_INSTRUCTION,
    decode,
    full_paragraphs,
    message_budgets,
    receiver_prompt,
    sharer_first_prompt,
    sharer_text_prompt,
)
from lcf_jax.eval.record import RunRecord
from lcf_jax.eval.setup import LATENT, RECEIVER_ALONE, Setup, text_condition  # noqa: F401
from lcf_jax.eval.sharer import latent_messages, message_bytes, message_rows, send_conditioned, sharer_messages
from lcf_jax.runtime import release_free_memory

# -- accuracy ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Answers:
    """Each condition's answer to every question, the sharer's text messages (token ids, the longest
    budget; a budget of N sends the first N) and the size of one LCF-X message in bytes."""

    by_condition: dict[str, list[str]]
    messages: list[list[int]]
    latent_bytes: int | None
    wall_s: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds per part of the run
    kv_bytes: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # each question's KV message

    def message_bytes(self, setup: Setup, name: str) -> int | None:
        """Mean bytes one question's message takes on the wire (UTF-8 text, the latent arrays, or
        the KV entries with their positions)."""
        budgets = {text_condition(b): b for b in setup.budgets}
        if name in budgets:
            sizes = [len(decode(setup.sharer, m[: budgets[name]]).encode()) for m in self.messages]
            return int(round(float(np.mean(sizes))))
        if name in ("lcfx", "mismatched_message"):
            return self.latent_bytes
        if name in self.kv_bytes:
            return int(round(float(np.mean(self.kv_bytes[name]))))
        return None


def receiver_cost(setup: Setup, q: Question, text: Sequence[int]) -> int:
    """Cache entries a question takes in the receiver batch: its longest prompt (full context, or
    its facts with the longest text message) plus the answer."""
    r = setup.receiver
    prompts = [receiver_prompt(r, q, q.receiver_context, decode(setup.sharer, text) if setup.budgets else None)]
    if "full_context" in setup.conditions():
        prompts.append(receiver_prompt(r, q, full_paragraphs(q)))
    if setup.kv_rows():
        prompts.append(sharer_first_prompt(r, q))
    return max(map(len, prompts)) + setup.max_answer_tokens


def run_answers(
    setup: Setup, questions: Sequence[Question], *, progress: bool = True, record: RunRecord | None = None
) -> Answers:
    """Each condition's answer to every question (batched; greedy). With `record`, what it holds is
    reused and each finished message and batch of answers is added to it as it finishes."""
    if len(questions) < 2 and setup.adapter is not None:
        raise ConfigError("the mismatched-message control needs at least 2 questions")
    record = record or RunRecord(None, {})
    ids = [q.id for q in questions]
    pending = [i for i, qid in enumerate(ids) if qid not in record.answers]
    wall, start_time = {}, time.perf_counter()
    # Only the unanswered questions need their messages; answered ones have theirs in the record.
    known = {i: record.messages[ids[i]] for i in range(len(questions)) if ids[i] in record.messages}
    if setup.budgets:
        need = [i for i in pending if i not in known]
        written = (
            sharer_messages(
                setup,
                [questions[i] for i in need],
                progress,
                on_done=lambda rows: record.add_messages({ids[need[j]]: t for j, t in rows.items()}),
            )
            if need
            else []
        )
        known.update(zip(need, written))
    texts = {i: known.get(i, []) for i in range(len(questions))}
    wall["sharer_writes"], start_time = time.perf_counter() - start_time, time.perf_counter()
    # A receiver-conditioned pool reads the receiver's cache too: its messages are made per batch.
    conditioned = setup.adapter is not None and setup.adapter.spec.receiver_conditioned
    messages, message_row = None, {}
    if setup.adapter is not None and not conditioned and pending:
        # Each pending question's own message and the one it gets as the mismatched control.
        needed = sorted({j for i in pending for j in (i, (i + 1) % len(questions))})
        messages = latent_messages(setup, questions, progress, index=needed)
        message_row = {j: k for k, j in enumerate(needed)}
    wall["sharer_summarises"], start_time = time.perf_counter() - start_time, time.perf_counter()
    layer_scores = kv_share.layer_ranking(setup, questions) if setup.kv_rows() else None
    costs = [receiver_cost(setup, questions[i], texts[i]) for i in pending]
    bar = setup.progress_bar("receiver answers", len(questions), done=len(questions) - len(pending), enabled=progress)
    with bar:
        names = setup.conditions()
        for batch in token_batches(costs, setup.token_budget(), setup.batch_size):
            index = [pending[j] for j in batch]
            got = _answer_batch(setup, questions, index, [texts[i] for i in index], messages, message_row)
            kv_sizes = {}
            if setup.kv_rows():
                kv_got, kv_sizes = kv_share.kv_answers(setup, questions, index, layer_scores)
                got |= kv_got
            release_free_memory()
            record.add_answers(
                [
                    {"id": ids[i], "answers": list(questions[i].answers), "message": decode(setup.sharer, texts[i])}
                    | {name: got[name][k] for name in names}
                    | ({"kv_bytes": {name: sizes[k] for name, sizes in kv_sizes.items()}} if kv_sizes else {})
                    for k, i in enumerate(index)
                ]
            )
            bar.update(len(index), f"{len(names)} conditions each")
    wall["receiver_answers"] = time.perf_counter() - start_time
    by_condition = {name: [record.answers[qid][name] for qid in ids] for name in names}
    latent_bytes = None if setup.adapter is None else message_bytes(setup.adapter)
    kv_bytes = {c.name: [record.answers[qid]["kv_bytes"][c.name] for qid in ids] for c in setup.kv_rows()}
    return Answers(by_condition, [texts[i] for i in range(len(questions))], latent_bytes, wall, kv_bytes)


def _answer_batch(
    setup: Setup,
    questions: Sequence[Question],
    index: Sequence[int],
    texts: Sequence[Sequence[int]],
    messages: Message | None,
    message_row: dict[int, int],
) -> dict[str, list[str]]:
    """Every condition's answers for the questions `index` (their text messages `texts`). Caches are
    dropped as soon as their condition has answered."""
    r, budgets, chunk = setup.receiver, tuple(sorted(setup.budgets)), setup.prefill_chunk
    answers: dict[str, list[str]] = {}
    chunk_q = [questions[i] for i in index]
    if "question_only" in setup.conditions():  # the receiver alone, with nothing but the question
        answers["question_only"] = answers_from(setup, None, [receiver_prompt(r, q, []) for q in chunk_q])
    half = [receiver_prompt(r, q, q.receiver_context) for q in chunk_q]
    # The full context lists the receiver's paragraphs first, so it shares their prefill too.
    full = (
        [receiver_prompt(r, q, full_paragraphs(q)) for q in chunk_q] if "full_context" in setup.conditions() else None
    )
    text = {
        b: [receiver_prompt(r, q, q.receiver_context, decode(setup.sharer, t[:b])) for q, t in zip(chunk_q, texts)]
        for b in budgets
    }
    chain = [half, *(text[b] for b in budgets), *([full] if full else [])]
    # Every prompt of a row starts with the same tokens (instruction, the receiver's facts):
    # prefill them once. Each prompt keeps at least its last token to continue from.
    base_len = [
        max(1, min(common_prefix([c[row] for c in chain]), *(len(c[row]) - 1 for c in chain)))
        for row in range(len(chunk_q))
    ]
    base = communicate.prefill(r, [p[:n] for p, n in zip(half, base_len)], bucket=EXTEND_BUCKET, chunk=chunk)
    # half_context and the latent conditions: the cache of the half prompt minus its last token.
    half_cache = communicate.extend(
        r, base, [p[n:-1] for p, n in zip(half, base_len)], bucket=EXTEND_BUCKET, chunk=chunk
    )
    lasts = [p[-1:] for p in half]
    answers["half_context"] = answers_from(setup, half_cache, lasts)
    if setup.adapter is not None:
        n = len(questions)
        others = [(i + 1) % n for i in index]
        if setup.adapter.spec.receiver_conditioned:
            own, other = (send_conditioned(setup, [questions[i] for i in rows], half_cache) for rows in (index, others))
        else:
            own, other = (message_rows(messages, [message_row[i] for i in rows]) for rows in (index, others))
        empty = setup.adapter.empty_message(len(index))
        for name, msg in (("lcfx", own), ("mismatched_message", other), ("empty_message", empty)):
            answers[name] = answers_from(setup, communicate.receive(setup.adapter, msg, half_cache), lasts)
    if setup.control is not None:
        zeros = setup.control.empty_message(len(index))
        answers["receiver_only"] = answers_from(setup, communicate.receive(setup.control, zeros, half_cache), lasts)
    del half_cache
    if full:
        full_cache = communicate.extend(
            r, base, [p[n:-1] for p, n in zip(full, base_len)], bucket=EXTEND_BUCKET, chunk=chunk
        )
        answers["full_context"] = answers_from(setup, full_cache, [p[-1:] for p in full])
        del full_cache
    # The text budgets in turn: each extends the cache as far as it agrees with every larger budget.
    cache, done = base, base_len
    del base
    for k, b in enumerate(budgets, start=1):
        if k > 1 and text[b] == text[budgets[k - 2]]:
            # Every message of this batch fits the smaller budget: the same prompts, so the same
            # (greedy) answers, and so for every larger budget. Batches go by length, so this is
            # most batches for the larger budgets.
            for larger in budgets[k - 1 :]:
                answers[text_condition(larger)] = answers[text_condition(budgets[k - 2])]
            break
        later = chain[k : 1 + len(budgets)]  # this budget and the larger ones (not full_context)
        stem = [
            max(done[row], min(common_prefix([c[row] for c in later]), len(text[b][row]) - 1))
            for row in range(len(chunk_q))
        ]
        cache = communicate.extend(
            r, cache, [p[d:e] for p, d, e in zip(text[b], done, stem)], bucket=EXTEND_BUCKET, chunk=chunk
        )
        answers[text_condition(b)] = answers_from(setup, cache, [p[e:] for p, e in zip(text[b], stem)])
        done = stem
    return answers
