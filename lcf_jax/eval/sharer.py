"""What the sharer sends in the accuracy run: its text messages (greedy, batched in two passes) and
its LCF-X summaries."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from lcf_jax import communicate
from lcf_jax.adapters import Adapter, Message
from lcf_jax.data.qa import Question, sharer_spans
from lcf_jax.eval.answering import PROMPT_BUCKET, generate_answers
from lcf_jax.eval.batching import token_batches
from lcf_jax.eval.prompts import sharer_text_prompt
from lcf_jax.eval.setup import Setup
from lcf_jax.kv import KVCache
from lcf_jax.runtime import release_free_memory
from lcf_jax.sampling import generate, stop_token_ids

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
            gen = generate_answers(setup, sharer, [prompts[i] for i in index], first)
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


def message_rows(message: Message, index: Sequence[int]) -> Message:
    index = np.asarray(index)
    return Message(message.k[:, index], message.v[:, index])


def send_conditioned(setup: Setup, questions: Sequence[Question], receiver_cache: KVCache) -> Message:
    spans = [sharer_spans(q, setup.sharer.tokenizer, sees_question=setup.sharer_sees_question) for q in questions]
    return communicate.send(setup.adapter, setup.sharer, spans, receiver_cache=receiver_cache, bucket=PROMPT_BUCKET)


def message_bytes(adapter: Adapter) -> int:
    """Bytes of one question's message (float32 keys and values of every slot and layer)."""
    return adapter.empty_message(1).nbytes
