"""KV-cache messages (`lcf_jax/messages/kv.py`): selection policies, placement and positions, layers,
bad input. The reference for every placement is a computation by another path: one prefill of the
whole prompt, with the entries a message leaves out hidden by `entry_mask` instead of removed."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from tiny_pair import RECEIVER, SHARER

from lcf_jax import communicate
from lcf_jax.messages import kv as kvm
from lcf_jax.models.model import Model, forward

CONFIG = dataclasses.replace(RECEIVER, num_layers=5)
OPENING = [5, 9, 2, 7, 1, 8]


@pytest.fixture(scope="module")
def model():
    return Model.random(CONFIG, seed=3)


def rows(seed=0, lengths=(11, 7, 16)):
    rng = np.random.default_rng(seed)
    contexts = [[list(rng.integers(10, 97, n))] for n in lengths]  # one span each
    rests = [list(rng.integers(10, 97, n)) for n in (9, 5, 12)]
    return contexts, rests


def last_logits(model, cache, rests):
    """Extend `cache` with all but the last token of each rest, then the logits of that last token."""
    cache = communicate.extend(model, cache, [r[:-1] for r in rests], bucket=8)
    logits, _ = forward(model.graphdef, model.params, jnp.asarray([[r[-1]] for r in rests]), cache, None, True)
    return np.asarray(logits[:, 0])


def through_message(model, contexts, rests, **options):
    message = communicate.send(None, model, contexts, kind="kv", opening=OPENING, **options)
    cache = communicate.prefill(model, [OPENING] * len(contexts), bucket=8)
    return message, last_logits(model, communicate.receive(None, message, cache, receiver=model), rests)


def reference(model, contexts, rests, message=None):
    """One prefill of opening + context; the entries the message leaves out (per layer) hidden."""
    flat = [[t for s in c for t in s] for c in contexts]
    cache = communicate.prefill(model, [OPENING + f for f in flat], bucket=8)
    if message is not None:
        keep = np.ones((cache.num_layers, cache.batch_size, cache.capacity), bool)
        for b, f in enumerate(flat):
            keep[:, b, len(OPENING) : len(OPENING) + len(f)] = False
            for n, layer in enumerate(message.layers):
                chosen = np.asarray(message.positions[n, b])[np.asarray(message.valid[b])]
                keep[layer, b, chosen] = True
        cache = cache.replace(entry_mask=jnp.asarray(keep))
    return last_logits(model, cache, rests)


def test_all_entries_equal_one_prefill_of_the_whole_prompt_padded_batch(model):
    contexts, rests = rows()
    message, got = through_message(model, contexts, rests, policy="all")
    np.testing.assert_allclose(got, reference(model, contexts, rests), atol=1e-4, rtol=0)
    # Alone, each row gives what it gives in the batch.
    _, alone = through_message(model, contexts[1:2], rests[1:2], policy="all")
    np.testing.assert_allclose(alone[0], got[1], atol=1e-4, rtol=0)
    assert np.asarray(message.valid).sum(1).tolist() == [11, 7, 16]
    assert message.nbytes == sum([11, 7, 16]) * CONFIG.num_layers * (2 * 2 * 16 * 4 + 4)


@pytest.mark.parametrize("policy", ["attention", "query"])
def test_selected_entries_equal_the_whole_prompt_with_the_others_hidden(model, policy):
    contexts, rests = rows(1)
    questions = [r[-4:] for r in rests] if policy == "query" else None
    message, got = through_message(model, contexts, rests, policy=policy, entries=5, questions=questions)
    assert np.asarray(message.valid).sum(1).tolist() == [5, 5, 5]
    # The later tokens keep their positions in the full prompt: shifted back by the entries left out.
    np.testing.assert_allclose(got, reference(model, contexts, rests, message), atol=1e-4, rtol=0)
    # And the message does change the answer's logits (it is not the whole context).
    assert np.abs(got - reference(model, contexts, rests)).max() > 1e-3


def test_attention_policy_picks_the_most_attended_entries_per_layer(model):
    contexts, _ = rows(2)
    message = communicate.send(None, model, contexts, kind="kv", opening=OPENING, entries=4, policy="attention")
    flat = [[t for s in c for t in s] for c in contexts]
    _, mass = communicate.prefill(model, [OPENING + f for f in flat], bucket=8, attention_mass=True)
    mass = np.asarray(mass)
    for n, layer in enumerate(message.layers):
        for b, f in enumerate(flat):
            span = mass[layer, b, len(OPENING) : len(OPENING) + len(f)]
            best = sorted(len(OPENING) + np.argsort(-span)[:4])
            assert np.asarray(message.positions[n, b]).tolist()[:4] == best
    # Different layers may keep different entries.
    assert len({tuple(np.asarray(message.positions[n, 0]).tolist()) for n in range(len(message.layers))}) > 1


def test_attention_mass_sums_to_heads_per_real_query_and_chunks_add_up(model):
    prompts = [OPENING + list(range(10, 30)), OPENING + list(range(40, 51))]
    cache, mass = communicate.prefill(model, prompts, bucket=8, attention_mass=True)
    totals = np.asarray(mass).sum(-1)  # [L, B]: every real query spreads 1 per head
    np.testing.assert_allclose(totals, np.broadcast_to([26 * 4, 17 * 4], totals.shape), rtol=1e-5)
    _, chunked = communicate.prefill(model, prompts, bucket=8, chunk=8, attention_mass=True)
    np.testing.assert_allclose(np.asarray(chunked)[..., : mass.shape[2]], np.asarray(mass), atol=1e-4)


def test_query_policy_follows_the_question(model):
    contexts, rests = rows(4)
    a = communicate.send(None, model, contexts, kind="kv", opening=OPENING, entries=3, policy="query",
                         questions=[r[:4] for r in rests])  # fmt: skip
    b = communicate.send(None, model, contexts, kind="kv", opening=OPENING, entries=3, policy="query",
                         questions=[r[4:8] for r in rests])  # fmt: skip
    assert not np.array_equal(np.asarray(a.positions), np.asarray(b.positions))


def test_a_layer_fraction_hides_the_message_from_unsent_layers(model):
    contexts, rests = rows(5)
    message, got = through_message(model, contexts, rests, policy="attention", entries=0.5, layers=(1, 2))
    assert message.layers == (1, 2) and message.k.shape[0] == 2
    assert np.asarray(message.valid).sum(1).tolist() == [6, 4, 8]  # ceil(half of 11, 7, 16)
    np.testing.assert_allclose(got, reference(model, contexts, rests, message), atol=1e-4, rtol=0)


def test_layer_ranking_mixes_attention_share_and_a_middle_prior(model):
    prior = kvm.layer_prior(9)
    assert prior.argmax() == 4 and prior[0] == prior[8] < prior[2]
    contexts, rests = rows(6)
    scores = communicate.rank_kv_layers(model, OPENING, [c[0] for c in contexts], rests)
    assert scores.shape == (CONFIG.num_layers,) and np.all(scores > 0)
    assert kvm.pick_layers(scores, 0.4) == tuple(sorted(np.argsort(-scores)[:2].tolist()))
    assert kvm.pick_layers(np.array([0.1, 0.9, 0.5]), 0.01) == (1,)


def test_bad_input_is_one_clear_error(model):
    contexts, _ = rows(7)
    with pytest.raises(ValueError, match="more than the context holds.*row 1: 7 tokens"):
        communicate.send(None, model, contexts, kind="kv", opening=OPENING, entries=10, policy="attention")
    clipped = communicate.send(
        None, model, contexts, kind="kv", opening=OPENING, entries=10, policy="attention", clip=True
    )
    assert np.asarray(clipped.valid).sum(1).tolist() == [10, 7, 10]
    with pytest.raises(ValueError, match="at least one token"):
        communicate.send(None, model, [[[1, 2]], [[]]], kind="kv", opening=OPENING)
    with pytest.raises(ValueError, match="needs the opening"):
        communicate.send(None, model, contexts, kind="kv")
    with pytest.raises(ValueError, match="policy 'query'.*questions="):
        communicate.send(None, model, contexts, kind="kv", opening=OPENING, entries=1, policy="query")
    with pytest.raises(ValueError, match="policy must be one of"):
        communicate.send(None, model, contexts, kind="kv", opening=OPENING, entries=1, policy="random")
    message = communicate.send(None, model, contexts, kind="kv", opening=OPENING, entries=2, policy="attention")
    other = Model.random(dataclasses.replace(SHARER, num_layers=5), seed=0)
    with pytest.raises(ValueError, match="another model.*translate them"):
        communicate.receive(None, message, communicate.prefill(other, [OPENING] * 3, bucket=8), receiver=other)
    with pytest.raises(ValueError, match="exactly the opening"):
        communicate.receive(None, message, communicate.prefill(model, [OPENING + [3]] * 3, bucket=8))
