"""LCF-X options beyond the paper, both off by default: a receiver-conditioned pool and a message of
several summary slots injected as extra receiver cache entries."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_pair import RECEIVER, SHARER, tiny_models

from lcf_jax import communicate
from lcf_jax.adapters import build, count_params

CONTEXTS = [[[5, 9, 13], [2, 77, 3, 8]], [[41, 3], [8, 8, 1]]]


@pytest.fixture(scope="module")
def models():
    return tiny_models()


def test_receiver_conditioned_pool_starts_as_the_plain_pool_and_then_depends_on_the_receiver(models):
    sharer, receiver = models
    plain = build("lcfx", SHARER, RECEIVER)
    conditioned = build("lcfx", SHARER, RECEIVER, receiver_conditioned=True)
    extra = RECEIVER.num_layers * RECEIVER.kv_width * SHARER.kv_width  # one cond projection per layer
    assert count_params(conditioned) == count_params(plain) + extra
    r_a = communicate.prefill(receiver, [[5, 9, 13, 2], [1, 2, 3]], bucket=8)
    r_b = communicate.prefill(receiver, [[60, 61, 62, 63], [70, 71, 72]], bucket=8)
    with pytest.raises(ValueError, match="receiver-conditioned"):
        communicate.send(conditioned, sharer, CONTEXTS, bucket=8)
    base = communicate.send(plain, sharer, CONTEXTS, bucket=8)
    np.testing.assert_allclose(
        communicate.send(conditioned, sharer, CONTEXTS, receiver_cache=r_a, bucket=8).k, base.k, rtol=1e-6, atol=1e-7
    )  # cond starts at zero
    pool = conditioned.pool
    pool.cond.kernel[...] = jax.random.normal(jax.random.key(0), pool.cond.kernel.shape) * 0.5
    m_a = communicate.send(conditioned, sharer, CONTEXTS, receiver_cache=r_a, bucket=8)
    m_b = communicate.send(conditioned, sharer, CONTEXTS, receiver_cache=r_b, bucket=8)
    assert m_a.k.shape == base.k.shape
    assert not np.allclose(m_a.k, base.k) and not np.allclose(m_a.k, m_b.k)


def test_conditioned_end_to_end(models):
    sharer, receiver = models
    adapter = build("lcfx", SHARER, RECEIVER, receiver_conditioned=True)
    out, message = communicate.answer_different_contexts(
        adapter, sharer, receiver, CONTEXTS, [[5, 9, 13, 2], [1, 2, 3]], 3, stop_tokens=[]
    )
    assert out.tokens.shape == (2, 3) and message.k.shape == (4, 2, 1, 2, 8)
    assert jnp.isfinite(message.k).all()


def continuation_logits(receiver, cache):
    from lcf_jax.models.model import forward

    tokens = jnp.array([[11, 12], [13, 14]], jnp.int32)
    return np.asarray(forward(receiver.graphdef, receiver.params, tokens, cache.with_capacity(cache.capacity + 8))[0])


def test_prefix_slots_become_extra_entries_seen_only_by_open_layers(models):
    sharer, receiver = models
    adapter = build("lcfx", SHARER, RECEIVER, message_slots=3, message_injection="prefix", keep_layers=[1, 2, 3])
    adapter.projectors.k_gate_logit[...] = jnp.asarray([1.0, -1.0, 1.0])
    adapter.projectors.v_gate_logit[...] = jnp.asarray([1.0, -1.0, -1.0])
    message = communicate.send(adapter, sharer, CONTEXTS, bucket=8)
    assert message.k.shape == (3, 2, 3, 2, 8)  # [N layers, B, M slots, K, H], for any context length
    assert communicate.send(adapter, sharer, [[[1] * 50], [[2]]], bucket=8).k.shape == message.k.shape
    r_cache = communicate.prefill(receiver, [[5, 9, 13, 2], [1, 2, 3]], bucket=8)
    fused = communicate.receive(adapter, message, r_cache)
    np.testing.assert_array_equal(np.asarray(fused.lengths), np.asarray(r_cache.lengths) + 3)
    np.testing.assert_array_equal(np.asarray(fused.position_shift), [3, 3])
    row0 = np.asarray(fused.entry_mask)[:, 0, 4:7]  # row 0's injected slots, per layer
    np.testing.assert_array_equal(row0.all(axis=1), [False, True, False, True])  # no projector / closed / open
    assert np.asarray(fused.entry_mask)[:, 0, :4].all()  # the receiver's own entries stay visible
    assert not np.allclose(continuation_logits(receiver, fused), continuation_logits(receiver, r_cache))


def test_prefix_with_closed_gates_changes_nothing(models):
    sharer, receiver = models
    adapter = build("lcfx", SHARER, RECEIVER, message_slots=2, message_injection="prefix")
    adapter.projectors.k_gate_logit[...] = jnp.full((4,), -1.0)
    adapter.projectors.v_gate_logit[...] = jnp.full((4,), -1.0)
    r_cache = communicate.prefill(receiver, [[5, 9, 13, 2], [1, 2, 3]], bucket=8)
    fused = communicate.receive(adapter, communicate.send(adapter, sharer, CONTEXTS, bucket=8), r_cache)
    # Invisible entries with no text position: the same numbers (up to summation order).
    np.testing.assert_allclose(
        continuation_logits(receiver, fused), continuation_logits(receiver, r_cache), rtol=1e-6, atol=1e-6
    )
    out, _ = communicate.answer_different_contexts(
        adapter, sharer, receiver, CONTEXTS, [[5, 9, 13, 2, 8], [1, 2, 3, 4]], 5, stop_tokens=[]
    )
    alone = __import__("lcf_jax").generate(receiver, [[5, 9, 13, 2, 8], [1, 2, 3, 4]], 5, stop_tokens=[])
    np.testing.assert_array_equal(out.tokens, alone.tokens)


def test_prefix_options_are_validated():
    with pytest.raises(ValueError, match="prefix"):
        build("lcfx", SHARER, RECEIVER, message_slots=4)
    with pytest.raises(ValueError, match="LCF-X options"):
        build("lcf", SHARER, RECEIVER, message_injection="prefix")
