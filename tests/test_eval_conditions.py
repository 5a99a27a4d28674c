"""The evaluation conditions on a tiny random pair with a character tokenizer: every condition
answers every question, the shared-prefix bookkeeping gives exactly the answers of separate runs,
and the controls really change what the receiver gets."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_pair import tiny_text_models

from lcf_jax import communicate
from lcf_jax.adapters import build
from lcf_jax.data.qa import Question, sharer_spans
from lcf_jax.eval import conditions as C
from lcf_jax.eval import latency as LAT
from lcf_jax.eval import sharer as S
from lcf_jax.runtime import compile_count
from lcf_jax.sampling import generate, stop_token_ids

QUESTIONS = [
    Question("q0", "Where is Bo?", ("Bo is in Rome.", "Al is red."), ("Cy likes tea.", "Di is 9."), ("Rome",)),
    Question("q1", "What is Al?", ("Al is a cook.",), ("Bo is tall.", "Ed runs."), ("cook",)),
    Question("q2", "Who is Ed?", ("Ed is Cy's son.", "Fo is 3.", "Gi sings."), ("Ha is old.",), ("Cy's son",)),
]


@pytest.fixture(scope="module")
def setup():
    sharer, receiver = tiny_text_models()
    adapter = build("lcfx", sharer, receiver, latent_width=8, dropout=0.0)
    control = build("lcfx", sharer, receiver, latent_width=8, dropout=0.0, seed=1)
    return C.Setup(sharer, receiver, adapter, control, budgets=(5, 12), max_answer_tokens=4, batch_size=2)


@pytest.fixture(scope="module")
def answers(setup):
    return C.run_answers(setup, QUESTIONS, progress=False).by_condition


def direct(model, prompt, n):
    out = generate(model, [prompt], n)
    return C.decode(model, out.token_lists(stop_tokens=stop_token_ids(model))[0])


def test_every_condition_answers_every_question(setup, answers):
    assert set(setup.conditions()) == {
        "question_only", "half_context", "full_context", "text_5", "text_12",
        "lcfx", "mismatched_message", "empty_message", "receiver_only",
    }  # fmt: skip
    for name in setup.conditions():
        assert len(answers[name]) == len(QUESTIONS), name


def test_shared_prefixes_give_the_answers_of_separate_runs(setup, answers):
    s, r = setup.sharer, setup.receiver
    for i, q in enumerate(QUESTIONS):
        assert answers["half_context"][i] == direct(r, C.receiver_prompt(r, q, q.receiver_context), 4)
        assert answers["full_context"][i] == direct(r, C.receiver_prompt(r, q, C.full_paragraphs(q)), 4)
        message = generate(s, [C.sharer_text_prompt(s, q, False)], 12).token_lists(stop_tokens=stop_token_ids(s))[0]
        for b in (5, 12):
            prompt = C.receiver_prompt(r, q, q.receiver_context, C.decode(s, message[:b]))
            assert answers[f"text_{b}"][i] == direct(r, prompt, 4), (q.id, b)


def test_latent_conditions_match_the_pipeline_and_the_controls_differ(setup, answers):
    s, r, adapter = setup.sharer, setup.receiver, setup.adapter
    spans = [sharer_spans(q, s.tokenizer) for q in QUESTIONS]
    prompts = [C.receiver_prompt(r, q, q.receiver_context) for q in QUESTIONS]
    gen, message = communicate.answer_different_contexts(adapter, s, r, spans, prompts, 4)
    expected = [C.decode(r, t) for t in gen.token_lists(stop_tokens=stop_token_ids(r))]
    assert answers["lcfx"] == expected
    # The mismatched message of question i is question i+1's: the same messages, rotated.
    rotated = C.message_rows(C.latent_messages(setup, QUESTIONS, progress=False), [1, 2, 0])
    own = C.latent_messages(setup, QUESTIONS, progress=False)
    np.testing.assert_allclose(np.asarray(message.k), own.k, rtol=1e-5, atol=1e-6)
    assert not np.allclose(rotated.k, own.k)


def test_message_budgets_are_prefixes():
    assert C.message_budgets([1, 2, 3], [2, 5]) == {2: [1, 2], 5: [1, 2, 3]}


def test_latency_has_every_condition_and_positive_stage_times(setup):
    times = LAT.run_latency(setup, QUESTIONS[:2], progress=False)
    assert set(times) == set(setup.conditions())
    for name, rows in times.items():
        assert len(rows) == 2
        for t in rows:
            # The two receiver stages are separate timed runs, so on a busy machine either can be
            # the slower one; only their presence and the TTFT sum are structural.
            assert t.receiver_first_s > 0 and t.receiver_answer_s > 0, name
            assert t.ttft_s >= t.receiver_first_s
    assert all(t.sharer_s > 0 for t in times["text_12"] + times["lcfx"])
    assert all(t.sharer_s == 0 for t in times["half_context"] + times["empty_message"])


def test_receiver_conditioned_and_prefix_adapters_run_every_latent_condition(setup):
    s, r = setup.sharer, setup.receiver
    prompts = [C.receiver_prompt(r, q, q.receiver_context) for q in QUESTIONS]
    spans = [sharer_spans(q, s.tokenizer) for q in QUESTIONS]
    for options in (dict(receiver_conditioned=True), dict(message_injection="prefix", message_slots=2)):
        adapter = build("lcfx", s, r, latent_width=8, dropout=0.0, **options)
        only_latent = C.Setup(s, r, adapter, budgets=(), receiver_alone=(), max_answer_tokens=4, batch_size=2)
        assert only_latent.conditions() == ["half_context", "lcfx", "mismatched_message", "empty_message"]
        got = C.run_answers(only_latent, QUESTIONS, progress=False).by_condition
        gen, _ = communicate.answer_different_contexts(adapter, s, r, spans, prompts, 4)
        assert got["lcfx"] == [C.decode(r, t) for t in gen.token_lists(stop_tokens=stop_token_ids(r))], options


def test_budgets_a_batch_of_short_messages_fits_reuse_the_smaller_budgets_answers(setup, monkeypatch):
    """Messages of 3, 9 and 4 tokens with budgets 5, 12, 20: batches go by message length, so one
    batch (3 and 4 tokens) has the same prompts for every budget and is answered once; the other
    (9 tokens) differs between 5 and 12. Every answer must still be that of a separate run."""
    s, r = setup.sharer, setup.receiver
    written = [[7, 8, 9], [7, 8, 9, 10, 11, 12, 13, 14, 15], [10, 11, 12, 13]]
    monkeypatch.setattr(C, "sharer_messages", lambda *args, **kwargs: [list(m) for m in written])
    short = C.Setup(s, r, budgets=(5, 12, 20), receiver_alone=(), max_answer_tokens=4, batch_size=2)
    answers = C.run_answers(short, QUESTIONS, progress=False).by_condition
    for i, q in enumerate(QUESTIONS):
        for b in (5, 12, 20):
            prompt = C.receiver_prompt(r, q, q.receiver_context, C.decode(s, written[i][:b]))
            assert answers[f"text_{b}"][i] == direct(r, prompt, 4), (q.id, b)


def test_messages_written_in_two_passes_equal_one_generation(setup, monkeypatch):
    """The rows still writing after the first pass continue as a smaller batch from their cache rows:
    the messages must be those of one uninterrupted generation per question."""
    s = setup.sharer
    monkeypatch.setattr(S, "FIRST_PASS_TOKENS", 7)  # the budgets go to 12: every row takes both passes
    written = C.sharer_messages(setup, QUESTIONS, progress=False)
    for q, message in zip(QUESTIONS, written):
        alone = generate(s, [C.sharer_text_prompt(s, q, False)], 12).token_lists(stop_tokens=stop_token_ids(s))[0]
        assert message == alone, q.id
    assert max(len(m) for m in written) > 7  # the second pass ran


def test_rows_from_different_first_pass_batches_continue_together(setup, monkeypatch):
    """With an 11-token first pass q0's message has stopped (its 11th token is the stop token) and
    q1 (first batch) and q2 (second batch) are still writing: they continue as one batch of two,
    and every message is still that of one generation per question."""
    s = setup.sharer
    monkeypatch.setattr(S, "FIRST_PASS_TOKENS", 11)
    calls = []

    def recording_generate(model, tokens, n, **kwargs):
        calls.append((len(tokens), kwargs.get("cache") is not None))
        return generate(model, tokens, n, **kwargs)

    monkeypatch.setattr(S, "generate", recording_generate)  # the second pass
    monkeypatch.setattr("lcf_jax.eval.answering.generate", recording_generate)  # the first
    written = C.sharer_messages(setup, QUESTIONS, progress=False)
    for q, message in zip(QUESTIONS, written):
        alone = generate(s, [C.sharer_text_prompt(s, q, False)], 12).token_lists(stop_tokens=stop_token_ids(s))[0]
        assert message == alone, q.id
    assert len(written[0]) < 11 and len(written[1]) == len(written[2]) == 12  # the premise of this test
    assert calls == [(2, False), (1, False), (2, True)]
    # Fewer questions than a batch: the second pass is padded to the questions' number, not the batch's.
    calls.clear()
    monkeypatch.setattr(S, "FIRST_PASS_TOKENS", 7)
    C.sharer_messages(dataclasses.replace(setup, batch_size=8), QUESTIONS, progress=False)
    assert calls == [(3, False), (3, True)]


def test_latency_messages_written_in_parts_equal_one_generation_per_budget(setup):
    """Latency writes up to the smallest budget, then continues from the cache: each budget's message
    is what one generation of that many tokens writes, and the time of a larger budget includes the
    smaller one's."""
    s = setup.sharer
    for q in QUESTIONS:
        written = LAT._sharer_writes(dataclasses.replace(setup, budgets=(12, 3, 7)), q)
        assert list(written) == [3, 7, 12]
        for b, (tokens, _) in written.items():
            alone = generate(s, [C.sharer_text_prompt(s, q, False)], b).token_lists(stop_tokens=stop_token_ids(s))[0]
            assert tokens == alone, (q.id, b)
        seconds = [t for _, t in written.values()]
        assert 0 < seconds[0] <= seconds[1] <= seconds[2]


def test_a_timed_call_that_compiled_runs_again(monkeypatch):
    calls = []

    @jax.jit
    def double(x):
        return 2 * x

    def fn(width):
        calls.append(width)
        return double(jnp.ones((width,)))

    before = compile_count()
    out, seconds = LAT._timed(lambda: fn(17))  # a new shape: compiled in the first call, timed in the second
    assert calls == [17, 17] and compile_count() > before and seconds > 0
    assert float(out.sum()) == 34.0
    LAT._timed(lambda: fn(17))  # compiled already: one call
    assert calls == [17, 17, 17]
