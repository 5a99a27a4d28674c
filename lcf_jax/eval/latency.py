"""Latency of every condition, one question at a time (batch 1), stage by stage: what the sharer does
before anything is sent, then the receiver up to its first answer token and to the end of its answer.

A timed call that compiled a program (a padded length met for the first time) runs again, so no
compilation is counted (`_timed`). Each question's times go to the run's `RunRecord` as soon as
they are measured; a resumed run times only the questions it lacks.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import jax

from lcf_jax import communicate
from lcf_jax.data.qa import Question, sharer_spans
from lcf_jax.errors import ConfigError
from lcf_jax.eval import kv_share
from lcf_jax.eval.condition import text_condition
from lcf_jax.eval.prompts import (
    decode,
    full_paragraphs,
    receiver_prompt,
    sharer_first_segments,
    sharer_text_prompt,
)
from lcf_jax.eval.record import RunRecord
from lcf_jax.eval.setup import SHARER_FIRST, Setup
from lcf_jax.kv import KVCache
from lcf_jax.models.model import Model
from lcf_jax.runtime import compile_count
from lcf_jax.sampling import generate, stop_token_ids

log = logging.getLogger(__name__)


# A timed call that compiled something (a shape met for the first time) runs again, up to this often.
TIMING_RUNS = 3


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    """(fn()'s result, its wall seconds) from a call that compiled nothing: a call that compiled a
    program is repeated (so `fn` must not consume its inputs)."""
    for _ in range(TIMING_RUNS):
        before = compile_count()
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        seconds = time.perf_counter() - start
        if compile_count() == before:
            return out, seconds
    log.warning("a timed call still compiled after %d runs; its time includes compilation", TIMING_RUNS)
    return out, seconds


@dataclasses.dataclass
class Timing:
    """Seconds per stage for one question: what the sharer does before anything is sent, then the
    receiver up to its first answer token, and up to the end of its answer."""

    sharer_s: float
    receiver_first_s: float
    receiver_answer_s: float

    @property
    def ttft_s(self) -> float:
        return self.sharer_s + self.receiver_first_s

    @property
    def answer_s(self) -> float:
        return self.sharer_s + self.receiver_answer_s


# Prompts are padded to a multiple of this many tokens: fine enough that padding adds little to a
# batch-1 prefill (128 nearly doubled a 140-token one), coarse enough to need few compiled shapes.
LATENCY_BUCKET = 32


def _receiver_stage(
    model: Model, prompt: Sequence[int], max_tokens: int, apply=None, at: int | None = None
) -> tuple[float, float]:
    """(seconds to the first token, seconds to the end of the answer) of the receiver reading
    `prompt`, optionally rewriting its cache with `apply(cache)` before the last token (or, given
    `at`, after its first `at` tokens: a KV message is placed after the opening and the rest of
    the prompt read after it). The answer continues from the first token's cache, as a streaming
    receiver would."""
    at = len(prompt) - 1 if at is None else at

    def first():
        cache = communicate.prefill(model, [list(prompt[:at])], bucket=LATENCY_BUCKET)
        if apply is not None:
            cache = apply(cache)
        if at < len(prompt) - 1:
            cache = communicate.extend(model, cache, [list(prompt[at:-1])], bucket=LATENCY_BUCKET)
        gen = generate(model, [list(prompt[-1:])], 1, cache=cache, bucket=1)
        return gen.tokens, gen.cache

    (token, cache), first_s = _timed(first)
    if max_tokens == 1 or int(token[0, 0]) in stop_token_ids(model):
        return first_s, first_s
    rest = lambda: generate(model, token[:, :1].tolist(), max_tokens - 1, cache=cache, bucket=1).tokens  # noqa: E731
    return first_s, first_s + _timed(rest)[1]


def _sharer_writes(setup: Setup, q: Question) -> dict[int, tuple[list[int], float]]:
    """Each budget's message (token ids, without the stop token) and the sharer's seconds to write
    it, at batch 1. One greedy message serves every budget: the sharer writes up to the smallest
    budget, then continues from its cache up to the next (the time of a budget is the sum of its
    parts), and a message that stopped is every larger budget's too."""
    s, stops = setup.sharer, stop_token_ids(setup.sharer)
    prompt = sharer_text_prompt(s, q, setup.sharer_sees_question)

    def write(budget: int, written: list[int], cache: KVCache | None):
        if cache is None:
            gen = generate(s, [prompt], budget, bucket=LATENCY_BUCKET)
        else:  # the cache holds all but the last token written: continue from that token
            gen = generate(s, [written[-1:]], budget - len(written), cache=cache, bucket=1)
        return gen.tokens, gen.lengths, gen.cache

    out, tokens, seconds, cache = {}, [], 0.0, None
    for b in sorted(setup.budgets):
        if len(tokens) < b and not (tokens and tokens[-1] in stops):
            (more, count, cache), part_s = _timed(lambda b=b, t=tokens, c=cache: write(b, t, c))
            tokens, seconds = tokens + more[0, : count[0]].tolist(), seconds + part_s
        out[b] = ([t for t in tokens[:b] if t not in stops], seconds)
    return out


def time_question(setup: Setup, q: Question, other: Question) -> dict[str, Timing]:
    """Every condition's stage times for one question at batch 1, from text to first token."""
    r, s, n_tok = setup.receiver, setup.sharer, setup.max_answer_tokens
    out = {}
    for name, paragraphs in (
        ("question_only", []),
        ("half_context", q.receiver_context),
        ("full_context", full_paragraphs(q)),
    ):
        if name in setup.conditions():
            out[name] = Timing(0.0, *_receiver_stage(r, receiver_prompt(r, q, paragraphs), n_tok))
    if setup.kv_rows():
        out.update(_kv_times(setup, q, other))
    for b, (tokens, sharer_s) in _sharer_writes(setup, q).items():
        start = time.perf_counter()
        text_prompt = receiver_prompt(r, q, q.receiver_context, decode(s, tokens))
        sharer_s += time.perf_counter() - start  # detokenising and tokenising are part of the text path
        out[text_condition(b)] = Timing(sharer_s, *_receiver_stage(r, text_prompt, n_tok))
    if setup.adapter is None and setup.control is None:
        return out
    half = receiver_prompt(r, q, q.receiver_context)
    if setup.adapter is not None:
        for name, source in (("lcfx", q), ("mismatched_message", other)):
            spans = [sharer_spans(source, s.tokenizer, sees_question=setup.sharer_sees_question)]
            if setup.adapter.spec.receiver_conditioned:  # the summary needs the receiver's cache first
                sharer_s = 0.0
                apply = lambda c, spans=spans: communicate.receive(  # noqa: E731
                    setup.adapter,
                    communicate.send(setup.adapter, s, spans, receiver_cache=c, bucket=LATENCY_BUCKET),
                    c,
                )
            else:
                message, sharer_s = _timed(
                    lambda spans=spans: communicate.send(setup.adapter, s, spans, bucket=LATENCY_BUCKET)
                )
                apply = lambda cache, m=message: communicate.receive(setup.adapter, m, cache)  # noqa: E731
            out[name] = Timing(sharer_s, *_receiver_stage(r, half, n_tok, apply))
        zeros = setup.adapter.empty_message(1)
        out["empty_message"] = Timing(
            0.0, *_receiver_stage(r, half, n_tok, lambda c: communicate.receive(setup.adapter, zeros, c))
        )
    if setup.control is not None:
        zeros = setup.control.empty_message(1)
        out["receiver_only"] = Timing(
            0.0, *_receiver_stage(r, half, n_tok, lambda c: communicate.receive(setup.control, zeros, c))
        )
    return out


def _kv_times(setup: Setup, q: Question, other: Question) -> dict[str, Timing]:
    """full_context_sharer_first and the KV rows at batch 1. The sharer's stage is one read of the
    opening and its paragraphs and the selection; the receiver prefills the opening, places the
    entries and reads the rest of its prompt (not the sharer's paragraphs)."""
    r, s, n_tok = setup.receiver, setup.sharer, setup.max_answer_tokens
    own = sharer_first_segments(r, q)
    out = {SHARER_FIRST: Timing(0.0, *_receiver_stage(r, own.prompt, n_tok))}
    for c in setup.kv_rows():
        source = other if c.mismatched else q
        seg = sharer_first_segments(r, source)
        layers = kv_share.layers_for(c, kv_share.layer_ranking(setup, [q]))
        questions = [kv_share.question_tokens(setup, source)] if c.policy == "query" else None

        def send(seg=seg, c=c, layers=layers, questions=questions):
            read = communicate.read_kv(
                s, [seg.context], seg.opening, attention=c.policy == "attention", questions=questions,
                spans=[seg.spans], bucket=LATENCY_BUCKET,
            )  # fmt: skip
            return communicate.select_kv(read, c.entries, policy=c.policy, layers=layers, clip=True, unit=c.unit)

        message, sharer_s = _timed(send)
        place = lambda cache, m=message: communicate.receive(setup.kv_translator, m, cache, receiver=r)  # noqa: E731
        out[c.name] = Timing(sharer_s, *_receiver_stage(r, own.opening + own.rest, n_tok, place, len(own.opening)))
    return out


def run_latency(
    setup: Setup, questions: Sequence[Question], *, progress: bool = True, record: RunRecord | None = None
) -> dict[str, list[Timing]]:
    """Stage times of every condition on each question, one question at a time (question i's
    mismatched message is question i+1's). With `record`, questions it has times for are not timed
    again and each new question's times are added to it."""
    if len(questions) < 2:
        raise ConfigError("latency needs at least 2 questions (one is another's mismatched source)")
    record = record or RunRecord(None, {})
    todo = [i for i, q in enumerate(questions) if q.id not in record.latency]
    bar = setup.progress_bar("latency", len(questions), done=len(questions) - len(todo), enabled=progress)
    with bar:
        for i in todo:
            q, other = questions[i], questions[(i + 1) % len(questions)]
            row = {name: dataclasses.astuple(t) for name, t in time_question(setup, q, other).items()}
            record.add_latency({"id": q.id, **row})
            bar.update(1)
    times: dict[str, list[Timing]] = {}
    for q in questions:
        for name, stages in record.latency[q.id].items():
            if name != "id":
                times.setdefault(name, []).append(Timing(*stages))
    return times
