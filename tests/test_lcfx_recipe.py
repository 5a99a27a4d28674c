"""LCF-X recipe options where the paper is silent (issue 16): zero-initialised up-projections, soft
gates at inference, a learning-rate multiplier for the span pool, the anti-bypass hinge, distinct
slot queries, message standardisation, distillation from the full-context receiver; and the proof
that the message path carries information on a task only the sharer can answer."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_pair import tiny_models, tiny_text_models

from lcf_jax import communicate
from lcf_jax.adapters import build
from lcf_jax.adapters.io import load_adapter
from lcf_jax.adapters.lcfx import spans_from_lengths
from lcf_jax.config import load_config
from lcf_jax.data.examples import make_batch
from lcf_jax.data.pipeline import BatchIterator
from lcf_jax.data.qa import question_example
from lcf_jax.data.split_qa import generate_questions
from lcf_jax.data.synthetic import sharer_only_task
from lcf_jax.train.loop import build_models, train
from lcf_jax.train.step import make_optimizer, token_losses

CONTEXTS = [[[5, 6, 7], [8, 9]], [[10, 11, 12, 13]]]


@pytest.fixture(scope="module")
def models():
    return tiny_models()


def received(adapter, models):
    sharer, receiver = models
    cache = communicate.prefill(receiver, [[3, 4, 5, 6], [7, 8, 9]])
    message = communicate.send(adapter, sharer, CONTEXTS)
    return cache, communicate.receive(adapter, message, cache)


def test_zero_up_init_leaves_the_receiver_intact(models):
    cache, same = received(build("lcfx", *[m.config for m in models], latent_width=16, up_init="zeros"), models)
    np.testing.assert_array_equal(np.asarray(same.k), np.asarray(cache.k))
    np.testing.assert_array_equal(np.asarray(same.v), np.asarray(cache.v))
    cache, moved = received(build("lcfx", *[m.config for m in models], latent_width=16), models)
    assert np.abs(np.asarray(moved.v) - np.asarray(cache.v)).max() > 0.05  # lecun-normal: not intact


def test_soft_gates_pass_each_gate_probability(models):
    configs = [m.config for m in models]
    hard = build("lcfx", *configs, latent_width=16, gate_init=0.5, seed=1)
    soft = build("lcfx", *configs, latent_width=16, gate_init=0.5, seed=1, gate_inference="soft")
    cache, with_hard = received(hard, models)
    _, with_soft = received(soft, models)
    valid = np.asarray(cache.valid_mask())  # [B, S]
    delta_hard = (np.asarray(with_hard.v) - np.asarray(cache.v))[:, valid]
    delta_soft = (np.asarray(with_soft.v) - np.asarray(cache.v))[:, valid]
    np.testing.assert_allclose(delta_soft, float(jax.nn.sigmoid(0.5)) * delta_hard, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="gate_inference"):
        build("lcfx", *configs, gate_inference="half")
    with pytest.raises(ValueError, match="options of the LCF projector"):
        build("c2c", *configs, up_init="zeros")


def test_the_pool_learning_rate_multiplier_moves_only_the_pool(models):
    adapter = build("lcfx", *[m.config for m in models], latent_width=16)
    params = nnx.state(adapter, nnx.Param)
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.01), params)

    def first_update(scale):
        optimizer = make_optimizer(learning_rate=1e-2, steps=10, warmup_fraction=0.0, pool_lr_scale=scale)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        return {".".join(map(str, path)): np.asarray(leaf) for path, leaf in flat_leaves(updates)}

    base, fast = first_update(1.0), first_update(10.0)
    for name, value in fast.items():
        np.testing.assert_allclose(value, (10.0 if "pool" in name else 1.0) * base[name], rtol=1e-5, err_msg=name)
    assert any("pool" in n for n in fast) and any("pool" not in n for n in fast)


def flat_leaves(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [([getattr(k, "key", getattr(k, "name", k)) for k in path], leaf) for path, leaf in leaves]


def test_the_anti_bypass_hinge(models):
    sharer, receiver = models
    adapter = build("lcfx", sharer.config, receiver.config, latent_width=16)
    frozen = (sharer.params, receiver.params)
    same = sharer_only_task(1, vocab=receiver.config.vocab_size, seed=3) * 4  # four identical rows
    batch = next(BatchIterator(same, 4, bucket=8))
    out = token_losses(adapter, sharer, receiver, frozen, batch, None, 1.0, 4, bypass_margin=0.5)
    # Every row's neighbour message is its own: the hinge is the margin on every token.
    np.testing.assert_allclose(float(out["bypass"]), 0.5 * float(out["count"]), rtol=1e-5)
    mixed = next(BatchIterator(sharer_only_task(4, vocab=receiver.config.vocab_size, seed=3), 4, bucket=8))
    out = token_losses(adapter, sharer, receiver, frozen, mixed, None, 1.0, 4, bypass_margin=0.5)
    assert float(out["bypass"]) >= 0.0 and float(out["nll"]) > 0
    with pytest.raises(ValueError, match="lcfx adapter"):
        token_losses(build("lcf", sharer.config, receiver.config, latent_width=16), sharer, receiver, frozen,
                     batch, None, 1.0, 4, bypass_margin=0.5)  # fmt: skip


def held_out_losses(workdir, config) -> dict[str, float]:
    """Token NLL on 64 held-out examples with the matched message, the next example's, and none."""
    sharer, receiver = build_models(config)
    adapter = load_adapter(workdir / "adapter")
    batch = next(BatchIterator(sharer_only_task(64, vocab=receiver.config.vocab_size, seed=99), 64, bucket=8))
    out, summarize = {}, type(adapter).summarize
    changes = {"matched": lambda m: m, "mismatched": lambda m: jax.tree.map(lambda x: jnp.roll(x, 1, 1), m),
               "empty": lambda m: adapter.empty_message(m.batch_size)}  # fmt: skip
    for name, change in changes.items():
        type(adapter).summarize = lambda self, *a, change=change, **k: change(summarize(self, *a, **k))
        try:
            losses = token_losses(adapter, sharer, receiver, (sharer.params, receiver.params), batch, None, 1.0, 4)
        finally:
            type(adapter).summarize = summarize
        out[name] = float(losses["nll"] / losses["count"])
    return out


def test_the_message_carries_what_only_the_sharer_knows(tmp_path):
    """150 steps of the tiny LCF-X config on `sharer_only_task` (the answer token is the sharer's;
    the receiver's prompt is the same for every example): with its own message the receiver's loss
    is at least 1 nat below the next example's message and below no message (measured 1.6 against
    4.8 and 4.6; a uniform guess is ln 61 = 4.1)."""
    config = load_config("configs/tiny.py:lcfx")
    config.data.kind = "sharer_only"
    config.data.count = 512
    config.train.steps = config.train.anneal_steps = 150
    config.checkpoint.every = 1000
    config.log_every = 50
    train(config, tmp_path, progress=False)
    losses = held_out_losses(tmp_path, config)
    print("held-out token NLL", losses)
    assert losses["matched"] < losses["mismatched"] - 1.0 and losses["matched"] < losses["empty"] - 1.0


def test_distinct_slot_queries(models):
    """Zero slot queries make M copies of one summary; "normal" ones start M distinct summaries."""
    sharer, receiver = models
    configs = [m.config for m in models]
    prefix = dict(latent_width=16, message_injection="prefix", message_slots=3)
    same = communicate.send(build("lcfx", *configs, **prefix), sharer, CONTEXTS)
    np.testing.assert_allclose(np.asarray(same.k[:, :, 0]), np.asarray(same.k[:, :, 2]), rtol=1e-6)
    distinct = communicate.send(build("lcfx", *configs, **prefix, slot_query_init="normal"), sharer, CONTEXTS)
    assert np.abs(np.asarray(distinct.k[:, :, 0]) - np.asarray(distinct.k[:, :, 2])).max() > 1e-2
    with pytest.raises(ValueError, match="slot_query_init"):
        build("lcfx", *configs, slot_query_init="uniform")
    with pytest.raises(ValueError, match="LCF-X options"):
        build("lcf", *configs, slot_query_init="normal")


CALIBRATION = [[[5, 6, 7], [8, 9]], [[10, 11, 12, 13]], [[20, 21], [22, 23, 24], [30]], [[40, 41, 42, 50]]]


def test_message_standardisation_is_set_from_data(models):
    """Calibrated on a batch, that batch's messages have mean 0 and std 1 per layer, slot, head and
    dim; a second calibration changes nothing; the empty message stays zeros."""
    sharer, _ = models
    adapter = build("lcfx", *[m.config for m in models], latent_width=16, message_norm="standardize")
    raw = communicate.send(adapter, sharer, CALIBRATION)  # identity before calibration
    assert float(jnp.abs(raw.k.mean(axis=1)).max()) > 0.05  # a shared component the norm removes
    rows = [[t for span in row for t in span] for row in CALIBRATION]
    cache = communicate.prefill(sharer, rows)
    span_ids, num_spans = spans_from_lengths([[len(s) for s in row] for row in CALIBRATION], cache.capacity)
    adapter.calibrate_message_norm(cache, span_ids, num_spans)
    first = {k: np.asarray(v[...]) for k, v in (("shift", adapter.pool.norm_shift), ("scale", adapter.pool.norm_scale))}
    message = adapter.summarize(cache, span_ids, num_spans)
    for x in (message.k, message.v):
        np.testing.assert_allclose(np.asarray(x.mean(axis=1)), 0.0, atol=1e-4)
        np.testing.assert_allclose(np.asarray(x.std(axis=1)), 1.0, rtol=1e-3)
    adapter.calibrate_message_norm(cache, span_ids, num_spans)
    np.testing.assert_allclose(np.asarray(adapter.pool.norm_shift[...]), first["shift"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(adapter.pool.norm_scale[...]), first["scale"], rtol=1e-6)
    assert not np.asarray(adapter.empty_message(2).k).any()
    with pytest.raises(ValueError, match="message_norm='standardize'"):
        build("lcfx", *[m.config for m in models], latent_width=16).calibrate_message_norm(cache, span_ids, num_spans)


def test_training_calibrates_the_message_norm_on_its_first_batch(tmp_path):
    config = load_config("configs/tiny.py:lcfx")
    with config.unlocked():
        config.adapter.options.message_norm = "standardize"
    config.train.steps = config.train.anneal_steps = 2
    train(config, tmp_path, progress=False)
    pool = load_adapter(tmp_path / "adapter").pool
    scale = np.asarray(pool.norm_scale[...])
    assert np.abs(np.asarray(pool.norm_shift[...])).max() > 1e-3 and np.abs(scale - 1.0).max() > 0.1


def test_distillation_from_the_full_context_receiver(tmp_path):
    """The KL term is exactly 0 when the teacher reads what the student reads (an intact receiver,
    the same prompt), positive when the teacher reads the whole context; training logs it; data
    without both halves of the context is refused."""
    sharer, receiver = tiny_text_models()
    tok = receiver.tokenizer
    questions = generate_questions("train", 4)
    examples = [question_example(q, tok, tok, teacher=True) for q in questions]
    assert all(len(e.teacher_prompt) > len(e.prompt) for e in examples)
    adapter = build("lcfx", sharer.config, receiver.config, latent_width=16, up_init="zeros")
    frozen = (sharer.params, receiver.params)

    def distill(examples):
        out = token_losses(
            adapter, sharer, receiver, frozen, make_batch(examples, bucket=16), None, 1.0, 8, distill=True
        )
        return float(out["distill"] / out["count"])

    assert distill(examples) > 1e-3
    assert abs(distill([dataclasses.replace(e, teacher_prompt=e.prompt) for e in examples])) < 1e-5
    without_teacher = make_batch([dataclasses.replace(e, teacher_prompt=None) for e in examples])
    with pytest.raises(ValueError, match="teacher_prefix"):
        token_losses(adapter, sharer, receiver, frozen, without_teacher, None, 1.0, 8, distill=True)

    config = load_config("configs/tiny.py:lcfx")
    config.data.kind = "split_qa"
    config.data.count = 16
    config.train.distill_weight = 1.0
    config.train.steps = config.train.anneal_steps = 2
    config.log_every = 1
    train(config, tmp_path, progress=False, models=(sharer, receiver))
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["distill"] > 0 for r in logged if "step" in r)
    config.data.kind = "synthetic"
    with pytest.raises(ValueError, match="distill_weight needs question data"):
        train(config, tmp_path / "synthetic", progress=False, models=(sharer, receiver))
