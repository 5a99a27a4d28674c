"""The KV-message rows of an evaluation, on one tiny random model with a character tokenizer: the
pieces of the sharer-first prompt, kv_share against its text reference, message sizes, layer
fractions, latency, the written results, and the refusal of two different models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_pair import tiny_text_models

from lcf_jax.data.qa import Question, receiver_messages
from lcf_jax.eval import conditions as C
from lcf_jax.eval import latency as LAT
from lcf_jax.eval.condition import Condition, kv_condition, kv_conditions
from lcf_jax.eval.prompts import sharer_first_segments
from lcf_jax.eval.record import RunRecord
from lcf_jax.eval.run import evaluate
from lcf_jax.sampling import chat_prompt

QUESTIONS = [
    Question("q0", "Where is Bo?", ("Bo is in Rome.", "Al is red."), ("Cy likes tea.", "Di is 9."), ("Rome",)),
    Question("q1", "What is Al?", ("Al is a cook, he makes soup.",), ("Bo is tall.", "Ed runs."), ("cook",)),
    Question("q2", "Who is Ed?", ("Ed is Cy's son.", "Fo is 3.", "Gi sings."), ("Ha is old.",), ("Cy's son",)),
]
ROWS = (*kv_conditions(entries=(4, 8), mismatched=8), kv_condition(4, layer_fraction=0.5))


@pytest.fixture(scope="module")
def model():
    return tiny_text_models()[1]


@pytest.fixture(scope="module")
def setup(model):
    return C.Setup(model, model, budgets=(6,), max_answer_tokens=4, batch_size=2, kv=ROWS, kv_calibration=2)


@pytest.fixture(scope="module")
def run(setup):
    return C.run_answers(setup, QUESTIONS, progress=False)


def test_the_sharer_first_prompt_is_the_chat_prompt_in_three_pieces(model):
    q = QUESTIONS[2]
    seg = sharer_first_segments(model, q)
    assert seg.prompt == chat_prompt(model, receiver_messages(q, [*q.sharer_context, *q.receiver_context]))
    assert model.tokenizer.decode(seg.context) == "\n".join(q.sharer_context)
    assert seg.opening == sharer_first_segments(model, QUESTIONS[0]).opening  # the same for every question


def test_kv_rows_answer_every_question_and_kv_share_equals_its_text_reference(setup, run):
    names = setup.conditions()
    assert names.index("full_context_sharer_first") < names.index("text_6")
    assert names[-5:] == ["kv_share", "kv_share_4", "kv_share_8", "kv_share_mismatched", "kv_share_4_L50"]
    for name in names:
        assert len(run.by_condition[name]) == len(QUESTIONS)
    assert run.by_condition["kv_share"] == run.by_condition["full_context_sharer_first"]


def test_message_bytes_follow_entries_and_layers(setup, run):
    size = {c.name: run.message_bytes(setup, c.name) for c in ROWS}
    per_entry = setup.receiver.config.num_layers * (2 * 2 * 16 * 4 + 4)  # L x (k and v: K=2 x H=16 floats, a position)
    contexts = [len(sharer_first_segments(setup.receiver, q).context) for q in QUESTIONS]
    assert size["kv_share"] == round(np.mean(contexts) * per_entry)
    assert size["kv_share_4"] == 4 * per_entry and size["kv_share_8"] == 8 * per_entry
    assert size["kv_share_4_L50"] == 4 * 2 * (2 * 2 * 16 * 4 + 4)  # half of the 4 layers
    assert size["kv_share_mismatched"] == size["kv_share_8"]
    assert setup.kv_layer_scores is not None and len(setup.kv_layer_scores) == 4


def test_latency_and_results_have_the_kv_rows(setup, tmp_path):
    times = LAT.time_question(setup, QUESTIONS[0], QUESTIONS[1])
    for c in ROWS:
        assert times[c.name].sharer_s > 0 and times[c.name].receiver_first_s > 0, c.name
    assert times["full_context_sharer_first"].sharer_s == 0.0
    evaluate(setup, QUESTIONS, tmp_path, latency_questions=2, progress=False)
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["conditions"]
    assert rows["kv_share_8"]["message_bytes"] > rows["kv_share_4"]["message_bytes"] > 0
    for name, row in rows.items():  # every row has its F1 interval; the KV rows their paired control
        low, high = row["f1_ci95"]
        assert low <= row["f1"] <= high, name
        if name.startswith("kv_share") and name != "kv_share_mismatched":
            delta = row["delta_vs_mismatched"]
            assert delta["lo"] <= delta["mean"] <= delta["hi"], name
            assert delta["mean"] == pytest.approx(row["f1"] - rows["kv_share_mismatched"]["f1"]), name
        else:
            assert row["delta_vs_mismatched"] is None, name
    assert "F1 - mismatched [95% CI]" in (tmp_path / "results.md").read_text()
    kv = results["meta"]["kv"]
    assert len(kv["kv_share_4_L50"]["layers"]) == 2 and kv["kv_share_8"]["policy"] == "query"
    # The record reads back as a rerun reads it: every row holds each condition, the KV rows' sizes.
    record = RunRecord(tmp_path, {}, conditions=setup.conditions(), kv=[c.name for c in setup.kv_rows()])
    assert sorted(record.answers) == ["q0", "q1", "q2"] and sorted(record.latency) == ["q0", "q1"]


def test_kv_rows_need_one_model_and_valid_conditions():
    sharer, receiver = tiny_text_models()
    assert C.Setup(sharer, receiver).kv_rows() == ()
    with pytest.raises(ValueError, match="one model"):
        C.Setup(sharer, receiver, kv=kv_conditions()).conditions()
    with pytest.raises(ValueError, match="policy 'all' and only it"):
        Condition("x", "kv", entries=8, policy="all")
    with pytest.raises(ValueError, match="policy must be one of"):
        kv_condition(8, policy="random")


def test_kv_rows_between_two_models_go_through_a_translator(tmp_path):
    """A translator joins two different models: every standard KV row answers, latency times them,
    and a row that sends a fraction of the layers (which the translator reads) is refused."""
    from lcf_jax.messages.translate import fit_translator

    sharer, receiver = tiny_text_models(seed=2)
    texts = [sharer.tokenizer.encode(" ".join(q.sharer_context + q.receiver_context)) for q in QUESTIONS]
    translator, _ = fit_translator(sharer, receiver, texts)
    setup = C.Setup(sharer, receiver, budgets=(6,), max_answer_tokens=4, batch_size=2, kv_translator=translator)
    assert [c.name for c in setup.kv_rows()] == [c.name for c in kv_conditions()]
    setup.kv = (*kv_conditions(entries=(4,), mismatched=4),)
    answers = C.run_answers(setup, QUESTIONS, progress=False)
    for name in ("full_context_sharer_first", "kv_share", "kv_share_4", "kv_share_mismatched"):
        assert len(answers.by_condition[name]) == len(QUESTIONS)
    timings = LAT.time_question(setup, QUESTIONS[0], QUESTIONS[1])
    assert timings["kv_share_4"].sharer_s > 0
    setup.kv = (kv_condition(4, layer_fraction=0.5),)
    with pytest.raises(ValueError, match="through a translator every row sends them all"):
        setup.kv_rows()
