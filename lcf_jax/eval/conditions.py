"""Every evaluation condition on the same split-context questions: answers (batched) and latency
(one question at a time, stage by stage).

Conditions
  question_only, half_context, full_context  the receiver alone, with none, its own or all paragraphs
  text_<N>                                   the sharer reads its paragraphs and writes a message
                                             (greedy); its first N tokens are appended to the
                                             receiver's facts. One message serves every budget.
  lcfx                                       the sharer's summary applied to the receiver's cache
  mismatched_message                         another question's summary (information must match)
  empty_message                              an all-zero message (the adapter alone, nothing sent)
  receiver_only                              an adapter trained with zero messages, given zeros:
                                             it can learn the task but receive nothing

Sharing work in the accuracy run: every receiver prompt of a question starts with the same tokens
(the instruction and the receiver's own facts; the full context lists them first), so that part
is prefilled once and each condition extends it; the text budgets extend one another in turn (a
budget's message is a prefix of the next's), and the latent conditions all start from the
half-context cache. Chunked prefill equals one prefill (tests/test_models_parity.py), so the
answers are those of separate runs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from lcf_jax import communicate
from lcf_jax.adapters import Adapter, Message
from lcf_jax.data.qa import Question, receiver_messages, sharer_spans
from lcf_jax.kv import KVCache
from lcf_jax.models.model import Model
from lcf_jax.runtime import compile_count
from lcf_jax.sampling import chat_prompt, generate, stop_token_ids

RECEIVER_ALONE = ("question_only", "half_context", "full_context")
LATENT = ("lcfx", "mismatched_message", "empty_message", "receiver_only")
TEXT_INSTRUCTION = (
    "A teammate must answer a question using these facts together with other facts they have. "
    "Write down the facts below for them, briefly."
)
MESSAGE_LABEL = "From a teammate:"
log = logging.getLogger(__name__)


def text_condition(budget: int) -> str:
    return f"text_{budget}"


@dataclasses.dataclass
class Setup:
    """What an evaluation runs: the two models, the trained LCF-X adapter (optional: without it the
    latent conditions are skipped) and the receiver-only control adapter (optional)."""

    sharer: Model
    receiver: Model
    adapter: Adapter | None = None
    control: Adapter | None = None
    budgets: tuple[int, ...] = (50, 100, 150, 200)
    max_answer_tokens: int = 16
    sharer_sees_question: bool = False  # the same for the text message and the latent one
    batch_size: int = 32
    receiver_alone: tuple[str, ...] = RECEIVER_ALONE  # which of them to run (half_context always runs)

    def conditions(self) -> list[str]:
        alone = [n for n in RECEIVER_ALONE if n in self.receiver_alone or n == "half_context"]
        names = [*alone, *(text_condition(b) for b in self.budgets)]
        if self.adapter is not None:
            names += ["lcfx", "mismatched_message", "empty_message"]
        if self.control is not None:
            names.append("receiver_only")
        return names


# -- prompts ---------------------------------------------------------------------------------------


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


# -- shared pieces -----------------------------------------------------------------------------------


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    first, n = rows[0], min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return n


# Batched prompts are right-padded to a multiple of these many tokens. A batch's longest row sets its
# width anyway; coarser buckets only add padding: with 64 (whole prompts) and 32 (cache extensions)
# the demo's 300 questions prefilled 199k tokens for 157k real ones, with these 175k, for a few more
# compiled shapes.
PROMPT_BUCKET = 16
EXTEND_BUCKET = 8


def _answers(model: Model, cache: KVCache | None, suffixes: Sequence[Sequence[int]], max_tokens: int) -> list[str]:
    """Greedy answers continuing `cache` with each row's remaining prompt tokens (with no cache, the
    rows are whole prompts)."""
    bucket = PROMPT_BUCKET if cache is None else EXTEND_BUCKET
    out = generate(model, [list(s) for s in suffixes], max_tokens, cache=cache, bucket=bucket)
    return [decode(model, row) for row in out.token_lists(stop_tokens=stop_token_ids(model))]


# The sharer's text messages are written in two passes: every row up to this many tokens, then only
# the rows still writing. A batch decodes until its longest row stops, and on the demo's questions
# messages run a median 74 tokens but a few run to the 200-token budget.
FIRST_PASS_TOKENS = 96


def sharer_messages(setup: Setup, questions: Sequence[Question], progress: bool = True) -> list[list[int]]:
    """The sharer's text message for each question: greedy, up to the largest budget.

    The rows still writing after the first pass wait, with their cache rows, until a full batch of
    them (from any first-pass batches) continues together; the last, smaller group is padded with
    copies of a row to the same size (a batch, or all the questions if fewer), so every second-pass
    call has one shape."""
    sharer, out = setup.sharer, []
    longest, stops = max(setup.budgets), stop_token_ids(setup.sharer)
    first = min(longest, FIRST_PASS_TOKENS)
    waiting: list[tuple[list[int], KVCache]] = []  # (question indices, their cache rows), oldest first

    def continue_waiting(count: int) -> None:  # the oldest `count` waiting rows write on
        index = [i for rows, _ in waiting for i in rows]
        cache = KVCache.concatenate([c for _, c in waiting])
        width = min(setup.batch_size, len(questions))  # a first-pass batch's size
        chosen = list(range(count)) + [0] * (width - count)  # padding rows: copies of row 0
        # The cache holds each row's prompt and all but its last token: continue from that token.
        rest = generate(
            sharer, [out[index[j]][-1:] for j in chosen], longest - first, cache=cache.take_rows(chosen), bucket=1
        )
        for i, more in zip(index[:count], rest.token_lists(strip_stop=False)):
            out[i] += more
        waiting[:] = [(index[count:], cache.take_rows(list(range(count, len(index)))))] if len(index) > count else []

    for start in tqdm(range(0, len(questions), setup.batch_size), desc="sharer writes", disable=not progress or None):
        chunk = questions[start : start + setup.batch_size]
        prompts = [sharer_text_prompt(sharer, q, setup.sharer_sees_question) for q in chunk]
        gen = generate(sharer, prompts, first, bucket=PROMPT_BUCKET)
        rows = gen.token_lists(strip_stop=False)
        out += rows
        going = [i for i, row in enumerate(rows) if len(row) == first and row[-1] not in stops]
        if going and longest > first:
            waiting.append(([start + i for i in going], gen.cache.take_rows(going)))
            while sum(len(rows) for rows, _ in waiting) >= setup.batch_size:
                continue_waiting(setup.batch_size)
    if waiting:
        continue_waiting(sum(len(rows) for rows, _ in waiting))
    return [row[:-1] if row and row[-1] in stops else row for row in out]


def latent_messages(setup: Setup, questions: Sequence[Question], progress: bool = True) -> Message:
    """The LCF-X message of every question, `[N, Q, M, K, H]` (batched along questions)."""
    parts = []
    for start in tqdm(
        range(0, len(questions), setup.batch_size), desc="sharer summarises", disable=not progress or None
    ):
        chunk = questions[start : start + setup.batch_size]
        spans = [sharer_spans(q, setup.sharer.tokenizer, sees_question=setup.sharer_sees_question) for q in chunk]
        m = communicate.send(setup.adapter, setup.sharer, spans, bucket=PROMPT_BUCKET)
        parts.append(jax.tree.map(np.asarray, m))
    return Message(np.concatenate([p.k for p in parts], axis=1), np.concatenate([p.v for p in parts], axis=1))


def _rows(message: Message, index: Sequence[int]) -> Message:
    index = np.asarray(index)
    return Message(message.k[:, index], message.v[:, index])


# -- accuracy ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Answers:
    """Each condition's answer to every question, the sharer's text messages (token ids, the longest
    budget; a budget of N sends the first N) and the size of one LCF-X message in bytes."""

    by_condition: dict[str, list[str]]
    messages: list[list[int]]
    latent_bytes: int | None
    wall_s: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds per part of the run

    def message_bytes(self, setup: Setup, name: str) -> int | None:
        """Mean bytes one question's message takes on the wire (UTF-8 text, or the latent arrays)."""
        if name.startswith("text_"):
            budget = int(name.split("_")[1])
            sizes = [len(decode(setup.sharer, m[:budget]).encode()) for m in self.messages]
            return int(round(float(np.mean(sizes))))
        if name in ("lcfx", "mismatched_message"):
            return self.latent_bytes
        return None


def run_answers(setup: Setup, questions: Sequence[Question], *, progress: bool = True) -> Answers:
    """Each condition's answer to every question (batched; greedy)."""
    if len(questions) < 2 and setup.adapter is not None:
        raise ValueError("the mismatched-message control needs at least 2 questions")
    r, budgets, n_tok = setup.receiver, tuple(sorted(setup.budgets)), setup.max_answer_tokens
    wall, start_time = {}, time.perf_counter()
    texts = sharer_messages(setup, questions, progress) if budgets else [[] for _ in questions]
    wall["sharer_writes"], start_time = time.perf_counter() - start_time, time.perf_counter()
    # A receiver-conditioned pool reads the receiver's cache too: its messages are made per batch.
    conditioned = setup.adapter is not None and setup.adapter.spec.receiver_conditioned
    messages = latent_messages(setup, questions, progress) if setup.adapter is not None and not conditioned else None
    wall["sharer_summarises"], start_time = time.perf_counter() - start_time, time.perf_counter()
    answers: dict[str, list[str]] = {name: [""] * len(questions) for name in setup.conditions()}

    def put(name: str, values: Sequence[str]) -> None:  # the current batch's answers, by question
        for i, value in zip(index, values):
            answers[name][i] = value

    # Batches of questions whose text messages are about as long: a batch's text prompts pad to its
    # longest message, so mixing 20- and 200-token messages would prefill mostly padding.
    order = sorted(range(len(questions)), key=lambda i: len(texts[i]))
    bar = tqdm(total=len(questions), desc="receiver answers", disable=not progress or None)
    for start in range(0, len(questions), setup.batch_size):
        index = order[start : start + setup.batch_size]
        chunk = [questions[i] for i in index]
        if "question_only" in answers:  # the receiver alone, with nothing but the question
            put("question_only", _answers(r, None, [receiver_prompt(r, q, []) for q in chunk], n_tok))
        half = [receiver_prompt(r, q, q.receiver_context) for q in chunk]
        # The full context lists the receiver's paragraphs first, so it shares their prefill too.
        full = [receiver_prompt(r, q, full_paragraphs(q)) for q in chunk] if "full_context" in answers else None
        text = {
            b: [
                receiver_prompt(r, q, q.receiver_context, decode(setup.sharer, texts[i][:b]))
                for q, i in zip(chunk, index)
            ]
            for b in budgets
        }
        chain = [half, *(text[b] for b in budgets), *([full] if full else [])]
        # Every prompt of a row starts with the same tokens (instruction, the receiver's facts):
        # prefill them once. Each prompt keeps at least its last token to continue from.
        base_len = [
            max(1, min(_common_prefix([c[row] for c in chain]), *(len(c[row]) - 1 for c in chain)))
            for row in range(len(chunk))
        ]
        base = communicate.prefill(r, [p[:n] for p, n in zip(half, base_len)], bucket=EXTEND_BUCKET)
        # half_context and the latent conditions: the cache of the half prompt minus its last token.
        half_cache = communicate.extend(r, base, [p[n:-1] for p, n in zip(half, base_len)], bucket=EXTEND_BUCKET)
        lasts = [p[-1:] for p in half]
        put("half_context", _answers(r, half_cache, lasts, n_tok))
        if full:
            full_cache = communicate.extend(r, base, [p[n:-1] for p, n in zip(full, base_len)], bucket=EXTEND_BUCKET)
            put("full_context", _answers(r, full_cache, [p[-1:] for p in full], n_tok))
        if setup.adapter is not None:
            others = [(i + 1) % len(questions) for i in index]
            if conditioned:
                own, other = (
                    _send_conditioned(setup, [questions[i] for i in rows], half_cache) for rows in (index, others)
                )
            else:
                own, other = _rows(messages, index), _rows(messages, others)
            for name, msg in (("lcfx", own), ("mismatched_message", other), ("empty_message", own.zeros_like())):
                fused = communicate.receive(setup.adapter, msg, half_cache)
                put(name, _answers(r, fused, lasts, n_tok))
        if setup.control is not None:
            zeros = setup.control.empty_message(len(chunk))
            put("receiver_only", _answers(r, communicate.receive(setup.control, zeros, half_cache), lasts, n_tok))
        # The text budgets in turn: each extends the cache as far as it agrees with every larger budget.
        cache, done = base, base_len
        for k, b in enumerate(budgets, start=1):
            if k > 1 and text[b] == text[budgets[k - 2]]:
                # Every message of this batch fits the smaller budget: the same prompts, so the same
                # (greedy) answers, and so for every larger budget. Batches go by message length,
                # so this is most batches for the larger budgets.
                for larger in budgets[k - 1 :]:
                    put(text_condition(larger), [answers[text_condition(budgets[k - 2])][i] for i in index])
                break
            later = chain[k : 1 + len(budgets)]  # this budget and the larger ones (not full_context)
            stem = [
                max(done[row], min(_common_prefix([c[row] for c in later]), len(text[b][row]) - 1))
                for row in range(len(chunk))
            ]
            cache = communicate.extend(r, cache, [p[d:e] for p, d, e in zip(text[b], done, stem)], bucket=EXTEND_BUCKET)
            put(text_condition(b), _answers(r, cache, [p[e:] for p, e in zip(text[b], stem)], n_tok))
            done = stem
        bar.update(len(chunk))
    bar.close()
    wall["receiver_answers"] = time.perf_counter() - start_time
    latent_bytes = None if setup.adapter is None else _message_bytes(setup.adapter)
    return Answers(answers, texts, latent_bytes, wall)


def _send_conditioned(setup: Setup, questions: Sequence[Question], receiver_cache: KVCache) -> Message:
    spans = [sharer_spans(q, setup.sharer.tokenizer, sees_question=setup.sharer_sees_question) for q in questions]
    return communicate.send(setup.adapter, setup.sharer, spans, receiver_cache=receiver_cache, bucket=PROMPT_BUCKET)


def _message_bytes(adapter: Adapter) -> int:
    """Bytes of one question's message (float32 keys and values of every slot and layer)."""
    return adapter.empty_message(1).nbytes


# -- latency -----------------------------------------------------------------------------------------


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


def _receiver_stage(model: Model, prompt: Sequence[int], max_tokens: int, apply=None) -> tuple[float, float]:
    """(seconds to the first token, seconds to the end of the answer) of the receiver reading
    `prompt`, optionally rewriting its cache with `apply(cache)` before the last token. The answer
    continues from the first token's cache, as a streaming receiver would."""

    def first():
        cache = communicate.prefill(model, [list(prompt[:-1])], bucket=LATENCY_BUCKET)
        if apply is not None:
            cache = apply(cache)
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


def run_latency(setup: Setup, questions: Sequence[Question], *, progress: bool = True) -> dict[str, list[Timing]]:
    """Stage times of every condition on each question, one question at a time. A timed call that
    compiled a program (a padded length met for the first time) is run again, so no compilation is
    counted (`_timed`)."""
    if len(questions) < 2:
        raise ValueError("latency needs at least 2 questions (one is another's mismatched source)")
    times: dict[str, list[Timing]] = {}
    pairs = [(q, questions[(i + 1) % len(questions)]) for i, q in enumerate(questions)]
    for q, other in tqdm(pairs, desc="latency", disable=not progress or None):
        for name, t in time_question(setup, q, other).items():
            times.setdefault(name, []).append(t)
    return times
