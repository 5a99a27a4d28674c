"""Memory bounded by design: evaluation batches respect the token budget (checked on the caches the
models really fill) and give the same answers whatever the budget; long prompts prefilled in chunks
give the answers of one prefill; questions too long for the models are refused before any work (or
cut, when asked); bad inputs fail before any model loads."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from tiny_pair import tiny_text_models

from lcf_jax import cli, sampling
from lcf_jax.adapters import build
from lcf_jax.cli.evaluate import eval_config
from lcf_jax.data.qa import Question
from lcf_jax.eval import conditions as C
from lcf_jax.eval.batching import cache_bytes_per_token, default_budget, token_batches
from lcf_jax.eval.inputs import ContextTooLongError, fit_questions, tokens_needed

QUESTIONS = [
    Question(f"q{i}", f"Where is {who}?", (f"{who} is in {town}." + " Al is red." * i,), ("Cy likes tea.",), (town,))
    for i, (who, town) in enumerate([("Bo", "Rome"), ("Di", "Oslo"), ("Ed", "Lima"), ("Fo", "Kyiv"), ("Gi", "Riga")])
]


@pytest.fixture(scope="module")
def setup():
    sharer, receiver = tiny_text_models()
    adapter = build("lcfx", sharer, receiver, latent_width=8, dropout=0.0)
    return C.Setup(sharer, receiver, adapter, budgets=(6, 20), max_answer_tokens=4, batch_size=8, progress="off")


def test_token_batches_fill_up_to_the_budget_in_cost_order():
    costs = [50, 10, 30, 10, 200, 20]
    batches = token_batches(costs, budget=60, max_rows=3)
    assert batches == [[1, 3, 5], [2], [0], [4]]  # 3 x 20 = 60; 30 + 50 > 60 / 2 each; 200 alone
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(costs[i] for i in batch) <= 60
    assert token_batches(costs, budget=10_000, max_rows=2) == [[1, 3], [5, 2], [0, 4]]
    with pytest.raises(ValueError, match="at least 1"):
        token_batches(costs, budget=0, max_rows=2)


def test_default_budget_is_a_memory_figure(setup):
    per_token = cache_bytes_per_token(setup.receiver)
    c = setup.receiver.config
    assert per_token == 2 * c.num_layers * c.num_kv_heads * c.head_dim * 4
    assert default_budget(setup.sharer, setup.receiver) == 768 * 2**20 // max(
        per_token, cache_bytes_per_token(setup.sharer)
    )


def test_batches_respect_the_token_budget_and_answers_do_not_depend_on_it(setup, monkeypatch):
    """Every cache a batch fills (the sharer's messages, every condition's answers) holds at most
    `budget` real entries over its rows; a budget of one question per batch and one of every
    question in one batch give the same answers."""
    seen = []

    def recording(model, tokens, n, **kwargs):
        out = sampling.generate(model, tokens, n, **kwargs)
        seen.append((int(out.cache.lengths.shape[0]), int(out.cache.lengths.max())))
        return out

    for module in ("sharer", "answering"):  # every generate of the run: the sharer's and the receiver's
        monkeypatch.setattr(f"lcf_jax.eval.{module}.generate", recording)
    # The text budgets and the full context make the longest rows; the latent conditions add nothing here.
    setup = dataclasses.replace(setup, adapter=None, receiver_alone=("full_context",))
    big = C.run_answers(dataclasses.replace(setup, batch_tokens=100_000), QUESTIONS, progress=False)
    budget = 500  # questions here take 200-300 entries (a character tokenizer): 1 or 2 per batch
    assert max(rows * longest for rows, longest in seen) > budget  # premise: unbounded batches hold more
    seen.clear()
    small = C.run_answers(dataclasses.replace(setup, batch_tokens=budget), QUESTIONS, progress=False)
    assert seen and all(rows * longest <= budget for rows, longest in seen), seen
    assert max(rows for rows, _ in seen) == 2
    assert small.by_condition == big.by_condition
    assert small.messages == big.messages


def test_long_prompts_read_in_chunks_give_the_answers_of_one_prefill(setup):
    whole = C.run_answers(setup, QUESTIONS, progress=False)
    chunked = C.run_answers(dataclasses.replace(setup, prefill_chunk=16), QUESTIONS, progress=False)
    assert chunked.by_condition == whole.by_condition and chunked.messages == whole.messages


def test_too_long_questions_are_named_or_cut_to_fit(setup):
    needs = {q.id: tokens_needed(setup, q) for q in QUESTIONS}
    cap = sorted(needs.values())[2]  # the two longest do not fit
    with pytest.raises(
        ContextTooLongError, match=rf"2 question.*q3 \({needs['q3']} tokens\), q4 .*--truncate"
    ) as error:
        fit_questions(setup, QUESTIONS, cap=cap)
    assert "q0" not in str(error.value)
    cut = fit_questions(setup, QUESTIONS, cap=cap, truncate=True)
    assert [q.id for q in cut] == [q.id for q in QUESTIONS]
    assert all(tokens_needed(setup, q) <= cap for q in cut)
    assert cut[:3] == QUESTIONS[:3] and cut[4].sharer_context[0] != QUESTIONS[4].sharer_context[0]
    assert fit_questions(setup, QUESTIONS) == QUESTIONS  # within the models' positions


def _no_models(monkeypatch):
    """Loading a model is an error: what fails must fail before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr("lcf_jax.train.loop.build_models", refuse)


def test_a_bad_data_file_fails_before_any_model_loads(tmp_path, monkeypatch, capsys):
    _no_models(monkeypatch)
    data = tmp_path / "q.jsonl"
    good = {"id": "a", "question": "Q?", "sharer_context": ["x"], "receiver_context": [], "answers": ["y"]}
    data.write_text(json.dumps(good) + "\n" + json.dumps(good | {"id": "b"}) + "\n" + '{"id": "c", "question"\n')
    start = time.perf_counter()
    code = cli.main(["eval", "--config", "configs/smollm2_qa.py", "--data", str(data), "--workdir", str(tmp_path)])
    assert code == 2 and time.perf_counter() - start < 30
    assert f"{data}:3:" in capsys.readouterr().err  # the bad line, found before any model loads
    data.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    assert cli.main(["eval", "--config", "configs/smollm2_qa.py", "--data", str(data), "--workdir", str(tmp_path)]) == 2
    assert "repeated: a" in capsys.readouterr().err


def test_a_bad_checkpoint_or_config_fails_before_any_model_loads(tmp_path, monkeypatch, capsys):
    _no_models(monkeypatch)
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "none"), "--workdir", str(tmp_path)]) == 2
    assert "no adapter under" in capsys.readouterr().err
    assert cli.main(["eval", "--workdir", str(tmp_path)]) == 2  # no --config and no checkpoint to take it from
    assert "--config is needed" in capsys.readouterr().err
    assert cli.main(["eval", "--config", str(tmp_path / "x.py"), "--workdir", str(tmp_path)]) == 2
    assert "no config file" in capsys.readouterr().err


def test_the_config_comes_from_the_checkpoints_run(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"sharer": "random", "data": {"sharer_sees_question": True}}))
    args = cli.build_parser().parse_args(["eval", "--checkpoint", str(tmp_path), "--workdir", str(tmp_path)])
    args.config = None
    config = eval_config(args, tmp_path / "adapter")
    assert config.sharer == "random" and config.data.sharer_sees_question is True
