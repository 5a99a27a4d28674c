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

import jax
import numpy as np

from lcf_jax import communicate
from lcf_jax.adapters import Adapter, Message
from lcf_jax.data.qa import Question, receiver_messages, sharer_spans
from lcf_jax.eval.batching import default_budget, token_batches
from lcf_jax.eval.record import RunRecord
from lcf_jax.kv import KVCache
from lcf_jax.models.model import Model
from lcf_jax.progress import DEFAULT_EVERY, Progress
from lcf_jax.runtime import release_free_memory
from lcf_jax.sampling import Generation, chat_prompt, generate, stop_token_ids

RECEIVER_ALONE = ("question_only", "half_context", "full_context")
LATENT = ("lcfx", "mismatched_message", "empty_message", "receiver_only")
TEXT_INSTRUCTION = (
    "A teammate must answer a question using these facts together with other facts they have. "
    "Write down the facts below for them, briefly."
)
MESSAGE_LABEL = "From a teammate:"


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
    batch_size: int = 32  # the most rows in a batch
    # The most cache entries in a batch (rows x its longest row); None: `batching.default_budget`.
    batch_tokens: int | None = None
    # Prompts longer than this are prefilled this many tokens at a time (bounds attention scores).
    prefill_chunk: int = 512
    receiver_alone: tuple[str, ...] = RECEIVER_ALONE  # which of them to run (half_context always runs)
    progress: str = "auto"  # "auto" (a bar on a terminal, log lines otherwise), "bar", "lines" or "off"
    progress_every: float = DEFAULT_EVERY  # seconds between progress lines

    def token_budget(self) -> int:
        return self.batch_tokens or default_budget(self.sharer, self.receiver)

    def progress_bar(
        self, stage: str, total: int, *, unit: str = "questions", done: int = 0, enabled: bool = True
    ) -> Progress:
        mode = self.progress if enabled else "off"
        return Progress(stage, total, unit=unit, mode=mode, every=self.progress_every, done=done)

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


def _generate(setup: Setup, model: Model, prompts: Sequence[Sequence[int]], max_tokens: int) -> Generation:
    """`generate` on whole prompts; prompts longer than `setup.prefill_chunk` are prefilled in chunks
    first (all but their last token), so no call holds the scores of a whole long prompt."""
    if max(len(p) for p in prompts) <= setup.prefill_chunk:
        return generate(model, [list(p) for p in prompts], max_tokens, bucket=PROMPT_BUCKET)
    cache = communicate.prefill(model, [p[:-1] for p in prompts], bucket=EXTEND_BUCKET, chunk=setup.prefill_chunk)
    return generate(model, [p[-1:] for p in prompts], max_tokens, cache=cache, bucket=1)


def _answers(
    setup: Setup, cache: KVCache | None, suffixes: Sequence[Sequence[int]], max_tokens: int | None = None
) -> list[str]:
    """The receiver's greedy answers continuing `cache` with each row's remaining prompt tokens (with
    no cache, the rows are whole prompts)."""
    model, max_tokens = setup.receiver, max_tokens or setup.max_answer_tokens
    if cache is None:
        out = _generate(setup, model, suffixes, max_tokens)
    else:
        out = generate(model, [list(s) for s in suffixes], max_tokens, cache=cache, bucket=EXTEND_BUCKET)
    answers = [decode(model, row) for row in out.token_lists(stop_tokens=stop_token_ids(model))]
    del out
    # Each condition's caches differ in size from the last one's: give their pages back before the
    # next, or the heap grows by the holes (lcf_jax/runtime.py; 6.3 -> see BENCHMARKS.md).
    release_free_memory()
    return answers


# The sharer's text messages are written in two passes: every row up to this many tokens, then only
# the rows still writing. A batch decodes until its longest row stops, and on the demo's questions
# messages run a median 74 tokens but a few run to the 200-token budget.
FIRST_PASS_TOKENS = 96


def sharer_messages(
    setup: Setup,
    questions: Sequence[Question],
    progress: bool = True,
    *,
    on_done=None,
) -> list[list[int]]:
    """The sharer's text message for each question: greedy, up to the largest budget.

    `on_done({index: tokens})` is called as messages finish (a run record keeps them). Batches go
    by prompt length under the token budget. The rows still writing after the first pass wait, with
    their cache rows, until a full batch of them (from any first-pass batches) continues together;
    the last, smaller group is padded with copies of a row to the same size (a batch, or all the
    questions if fewer), so every second-pass call has one shape."""
    sharer, budget = setup.sharer, setup.token_budget()
    longest, stops = max(setup.budgets), stop_token_ids(setup.sharer)
    first = min(longest, FIRST_PASS_TOKENS)
    out: list[list[int] | None] = [None] * len(questions)
    prompts = [sharer_text_prompt(sharer, q, setup.sharer_sees_question) for q in questions]
    cost = [len(p) + longest for p in prompts]
    waiting: list[tuple[list[int], KVCache]] = []  # (question indices, their cache rows), oldest first
    bar = setup.progress_bar("sharer writes", len(questions), unit="messages", enabled=progress)

    def finish(rows: dict[int, list[int]]) -> None:
        rows = {i: row[:-1] if row and row[-1] in stops else row for i, row in rows.items()}
        for i, row in rows.items():
            out[i] = row
        if on_done is not None:
            on_done(rows)
        bar.update(len(rows))

    def second_pass_rows() -> int:  # how many waiting rows continue together
        largest = max(cost[i] for rows, _ in waiting for i in rows)
        return max(1, min(setup.batch_size, budget // largest, len(questions)))

    def continue_waiting(count: int, width: int) -> None:  # the oldest `count` waiting rows write on
        index = [i for rows, _ in waiting for i in rows]
        cache = KVCache.concatenate([c for _, c in waiting])
        chosen = list(range(count)) + [0] * (width - count)  # padding rows: copies of row 0
        # The cache holds each row's prompt and all but its last token: continue from that token.
        partial = {i: written[i] for i in index[:count]}
        rest = generate(
            sharer,
            [partial[index[j]][-1:] for j in chosen],
            longest - first,
            cache=cache.take_rows(chosen),
            bucket=1,
        )
        finish({i: partial[i] + more for i, more in zip(index[:count], rest.token_lists(strip_stop=False))})
        waiting[:] = [(index[count:], cache.take_rows(list(range(count, len(index)))))] if len(index) > count else []
        del cache, rest
        release_free_memory()

    written: dict[int, list[int]] = {}  # first-pass tokens of the rows still writing
    with bar:
        for index in token_batches(cost, budget, setup.batch_size):
            gen = _generate(setup, sharer, [prompts[i] for i in index], first)
            rows = gen.token_lists(strip_stop=False)
            going = [j for j, row in enumerate(rows) if len(row) == first and row[-1] not in stops and longest > first]
            finish({index[j]: row for j, row in enumerate(rows) if j not in going})
            if going:
                written.update({index[j]: rows[j] for j in going})
                waiting.append(([index[j] for j in going], gen.cache.take_rows(going)))
            del gen
            release_free_memory()  # the heap's holes between batches of other sizes (lcf_jax/runtime.py)
            while waiting and sum(len(rows) for rows, _ in waiting) >= second_pass_rows():
                size = second_pass_rows()
                continue_waiting(size, size)
        if waiting:
            continue_waiting(sum(len(rows) for rows, _ in waiting), second_pass_rows())
    return out


def latent_messages(
    setup: Setup, questions: Sequence[Question], progress: bool = True, *, index: Sequence[int] | None = None
) -> Message:
    """The LCF-X message of every question (or of `questions[i]` for i in `index`), `[N, Q, M, K, H]`
    (batched along questions, in the order asked)."""
    index = list(range(len(questions)) if index is None else index)
    spans = {
        i: sharer_spans(questions[i], setup.sharer.tokenizer, sees_question=setup.sharer_sees_question) for i in index
    }
    cost = [sum(map(len, spans[i])) for i in index]
    parts, order = [], []
    bar = setup.progress_bar("sharer summarises", len(index), enabled=progress)
    with bar:
        for batch in token_batches(cost, setup.token_budget(), setup.batch_size):
            rows = [index[j] for j in batch]
            m = communicate.send(setup.adapter, setup.sharer, [spans[i] for i in rows], bucket=PROMPT_BUCKET)
            parts.append(jax.tree.map(np.asarray, m))
            del m
            release_free_memory()
            order += batch
            bar.update(len(rows))
    back = np.argsort(order)  # batches go by length: put the messages back in the order asked
    return Message(
        np.concatenate([p.k for p in parts], axis=1)[:, back], np.concatenate([p.v for p in parts], axis=1)[:, back]
    )


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


def receiver_cost(setup: Setup, q: Question, text: Sequence[int]) -> int:
    """Cache entries a question takes in the receiver batch: its longest prompt (full context, or
    its facts with the longest text message) plus the answer."""
    r = setup.receiver
    prompts = [receiver_prompt(r, q, q.receiver_context, decode(setup.sharer, text) if setup.budgets else None)]
    if "full_context" in setup.conditions():
        prompts.append(receiver_prompt(r, q, full_paragraphs(q)))
    return max(map(len, prompts)) + setup.max_answer_tokens


def run_answers(
    setup: Setup, questions: Sequence[Question], *, progress: bool = True, record: RunRecord | None = None
) -> Answers:
    """Each condition's answer to every question (batched; greedy). With `record`, what it holds is
    reused and each finished message and batch of answers is added to it as it finishes."""
    if len(questions) < 2 and setup.adapter is not None:
        raise ValueError("the mismatched-message control needs at least 2 questions")
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
    costs = [receiver_cost(setup, questions[i], texts[i]) for i in pending]
    bar = setup.progress_bar("receiver answers", len(questions), done=len(questions) - len(pending), enabled=progress)
    with bar:
        names = setup.conditions()
        for batch in token_batches(costs, setup.token_budget(), setup.batch_size):
            index = [pending[j] for j in batch]
            got = _answer_batch(setup, questions, index, [texts[i] for i in index], messages, message_row)
            release_free_memory()
            record.add_answers(
                [
                    {"id": ids[i], "answers": list(questions[i].answers), "message": decode(setup.sharer, texts[i])}
                    | {name: got[name][k] for name in names}
                    for k, i in enumerate(index)
                ]
            )
            bar.update(len(index), f"{len(names)} conditions each")
    wall["receiver_answers"] = time.perf_counter() - start_time
    by_condition = {name: [record.answers[qid][name] for qid in ids] for name in names}
    latent_bytes = None if setup.adapter is None else _message_bytes(setup.adapter)
    return Answers(by_condition, [texts[i] for i in range(len(questions))], latent_bytes, wall)


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
        answers["question_only"] = _answers(setup, None, [receiver_prompt(r, q, []) for q in chunk_q])
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
        max(1, min(_common_prefix([c[row] for c in chain]), *(len(c[row]) - 1 for c in chain)))
        for row in range(len(chunk_q))
    ]
    base = communicate.prefill(r, [p[:n] for p, n in zip(half, base_len)], bucket=EXTEND_BUCKET, chunk=chunk)
    # half_context and the latent conditions: the cache of the half prompt minus its last token.
    half_cache = communicate.extend(
        r, base, [p[n:-1] for p, n in zip(half, base_len)], bucket=EXTEND_BUCKET, chunk=chunk
    )
    lasts = [p[-1:] for p in half]
    answers["half_context"] = _answers(setup, half_cache, lasts)
    if setup.adapter is not None:
        n = len(questions)
        others = [(i + 1) % n for i in index]
        if setup.adapter.spec.receiver_conditioned:
            own, other = (
                _send_conditioned(setup, [questions[i] for i in rows], half_cache) for rows in (index, others)
            )
        else:
            own, other = (_rows(messages, [message_row[i] for i in rows]) for rows in (index, others))
        for name, msg in (("lcfx", own), ("mismatched_message", other), ("empty_message", own.zeros_like())):
            answers[name] = _answers(setup, communicate.receive(setup.adapter, msg, half_cache), lasts)
    if setup.control is not None:
        zeros = setup.control.empty_message(len(index))
        answers["receiver_only"] = _answers(setup, communicate.receive(setup.control, zeros, half_cache), lasts)
    del half_cache
    if full:
        full_cache = communicate.extend(
            r, base, [p[n:-1] for p, n in zip(full, base_len)], bucket=EXTEND_BUCKET, chunk=chunk
        )
        answers["full_context"] = _answers(setup, full_cache, [p[-1:] for p in full])
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
            max(done[row], min(_common_prefix([c[row] for c in later]), len(text[b][row]) - 1))
            for row in range(len(chunk_q))
        ]
        cache = communicate.extend(
            r, cache, [p[d:e] for p, d, e in zip(text[b], done, stem)], bucket=EXTEND_BUCKET, chunk=chunk
        )
        answers[text_condition(b)] = _answers(setup, cache, [p[e:] for p, e in zip(text[b], stem)])
        done = stem
    return answers


def _send_conditioned(setup: Setup, questions: Sequence[Question], receiver_cache: KVCache) -> Message:
    spans = [sharer_spans(q, setup.sharer.tokenizer, sees_question=setup.sharer_sees_question) for q in questions]
    return communicate.send(setup.adapter, setup.sharer, spans, receiver_cache=receiver_cache, bucket=PROMPT_BUCKET)


def _message_bytes(adapter: Adapter) -> int:
    """Bytes of one question's message (float32 keys and values of every slot and layer)."""
    return adapter.empty_message(1).nbytes
