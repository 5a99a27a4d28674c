"""The adapters against the spec: parameter counts, layer maps, gates, the stacked computation,
exact no-op behaviour, LCF-X message invariances, gradients, and clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_pair import RECEIVER, SHARER, tiny_models

from lcf_jax import communicate
from lcf_jax.adapters import (
    Adapter,
    FusingAdapter,
    MessageAdapter,
    build,
    count_params,
    gumbel_temperature,
    layer_map,
    make_adapter,
)
from lcf_jax.adapters.blocks import gate
from lcf_jax.adapters.lcfx import spans_from_lengths
from lcf_jax.models.model import forward

PAPER_PAIR = ("qwen2.5-0.5b", "qwen3-0.6b")


@pytest.mark.parametrize(
    "kind,options,total,per_layer",
    [
        ("lcf", dict(latent_width=128), 19_393_528, 692_626),
        ("lcf", dict(latent_width=64), 7_890_680, None),  # paper: 7.89M
        ("lcf", dict(latent_width=256), 53_409_272, None),  # paper: 53.41M
        ("lcf", dict(keep_layers=[6, 8, 9, 10, 15, 16, 17, 19, 21]), 6_233_634, 692_626),
        ("c2c", dict(), 477_848_056, 17_066_002),
    ],
)
def test_parameter_counts_equal_the_papers(kind, options, total, per_layer):
    adapter = build(kind, *PAPER_PAIR, abstract=True, **options)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(adapter)))
    assert count_params(adapter) == total
    if per_layer:
        assert total == per_layer * len(adapter.spec.layers)


def test_lcfx_parameter_count_includes_the_pool():
    adapter = build("lcfx", "qwen3-0.6b", "qwen3-0.6b", abstract=True)
    pool = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(adapter.pool, nnx.Param)))
    assert pool == 57_344
    assert count_params(adapter) == 25_873_400
    assert (count_params(adapter) - pool) // 28 == 922_002
    assert adapter.projectors.k_gate_logit.shape == (28,)  # one logit per layer


def test_layer_maps():
    # The spec's example: Qwen3-0.6B (28 layers) reading Qwen2.5-0.5B (24): t <= 4 -> 0, else t - 4.
    assert layer_map("last_aligned", 24, 28) == tuple(0 if t <= 4 else t - 4 for t in range(28))
    assert layer_map("last_aligned", 28, 24) == tuple(t + 4 for t in range(24))
    nearest = layer_map("k_nearest", 24, 28)
    assert nearest[0] == 0 and nearest[-1] == 23 and all(b >= a for a, b in zip(nearest, nearest[1:]))
    assert layer_map("k_nearest", 5, 3) == (0, 2, 4)
    with pytest.raises(ValueError, match="k_nearest"):
        layer_map("diagonal", 3, 3)


def test_gate_is_deterministic_given_the_key_and_hard_at_inference():
    key = jax.random.key(0)
    a, b = gate(jnp.float32(0.3), (2, 5, 3, 1), key, 1.0), gate(jnp.float32(0.3), (2, 5, 3, 1), key, 1.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, gate(jnp.float32(0.3), (2, 5, 3, 1), jax.random.key(1), 1.0))
    assert 0 < float(a.min()) < float(a.max()) < 1  # soft during training, noise per element
    np.testing.assert_array_equal(gate(jnp.float32(0.3), (2, 1), None, 1.0), np.ones((2, 1)))
    np.testing.assert_array_equal(gate(jnp.float32(-0.3), (2, 1), None, 1.0), np.zeros((2, 1)))
    # At the final temperature the training gate is almost always hard.
    cold = gate(jnp.float32(2.0), (1000,), key, 0.001)
    assert float(jnp.mean((cold > 0.999) | (cold < 0.001))) > 0.99


def test_gumbel_temperature_anneals_exponentially():
    assert float(gumbel_temperature(0)) == pytest.approx(1.0)
    assert float(gumbel_temperature(1929 // 2)) == pytest.approx(0.001 ** (964 / 1929), rel=1e-5)
    assert float(gumbel_temperature(1929)) == pytest.approx(0.001)
    assert float(gumbel_temperature(5000)) == pytest.approx(0.001)
    assert float(gumbel_temperature(50, initial=2.0, final=0.5, anneal_steps=100)) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def models():
    return tiny_models()


def caches(models, rows=((5, 9, 13, 2, 77, 3), (41, 3, 8))):
    sharer, receiver = models
    return communicate.prefill(sharer, rows, bucket=8), communicate.prefill(receiver, rows, bucket=8)


@pytest.mark.parametrize("kind", ["lcf", "c2c"])
def test_stacked_layers_equal_each_layer_run_alone(models, kind):
    adapter = build(kind, SHARER, RECEIVER, keep_layers=[0, 2, 3], hidden_width=32)
    s_cache, r_cache = caches(models)
    src, idx = np.array(adapter.spec.source_layers), np.array(adapter.spec.layers)
    key = jax.random.key(3)
    dk, dv = adapter.residuals(s_cache.k[src], s_cache.v[src], r_cache.k[idx], r_cache.v[idx], rng=key)
    graphdef, state = nnx.split(adapter.projectors)
    keys = jax.random.split(key, 3)
    for n in range(3):
        one = nnx.merge(graphdef, jax.tree.map(lambda x, n=n: x[n], state))
        k, v = one(s_cache.k[src[n]], s_cache.v[src[n]], r_cache.k[idx[n]], r_cache.v[idx[n]], keys[n], 1.0)
        np.testing.assert_allclose(dk[n], k, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dv[n], v, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(dk).max()) > 0


def close_gates(adapter):
    p = adapter.projectors
    for name in ("k_gate_logit", "v_gate_logit", "key_gate_logit", "value_gate_logit"):
        if hasattr(p, name):
            getattr(p, name)[...] = jnp.full_like(getattr(p, name)[...], -1.0)


def zero_residuals(adapter):
    p = adapter.projectors
    for name in ("k_up", "v_up", "key_proj_out", "value_proj_out"):
        if hasattr(p, name):
            layer = getattr(p, name)
            layer.kernel[...] = jnp.zeros_like(layer.kernel[...])
            layer.bias[...] = jnp.zeros_like(layer.bias[...])


def continue_logits(receiver, cache):
    tokens = jnp.array([[11], [12]], jnp.int32)
    logits, _ = forward(receiver.graphdef, receiver.params, tokens, cache.with_capacity(cache.capacity + 8))
    return np.asarray(logits)


@pytest.mark.parametrize("kind", ["lcf", "c2c", "lcfx"])
@pytest.mark.parametrize("silence", [close_gates, zero_residuals])
def test_closed_gates_or_zero_residuals_leave_the_receiver_bit_identical(models, kind, silence):
    sharer, receiver = models
    s_cache, r_cache = caches(models)
    adapter = build(kind, SHARER, RECEIVER, hidden_width=32, gate_init=1.0)

    def fused(a):
        if kind == "lcfx":
            message = communicate.send(a, sharer, [[[5, 9, 13], [2, 77]], [[41, 3, 8]]], bucket=8)
            return communicate.receive(a, message, r_cache)
        return communicate.fuse(a, s_cache, r_cache)

    baseline = continue_logits(receiver, r_cache)
    assert not np.array_equal(continue_logits(receiver, fused(adapter)), baseline)  # open gates do change it
    silence(adapter)
    out = fused(adapter)
    np.testing.assert_array_equal(np.asarray(out.k), np.asarray(r_cache.k))
    np.testing.assert_array_equal(np.asarray(out.v), np.asarray(r_cache.v))
    np.testing.assert_array_equal(continue_logits(receiver, out), baseline)


def test_message_shape_is_fixed_for_any_length_and_span_count(models):
    sharer, _ = models
    adapter = build("lcfx", SHARER, RECEIVER)
    contexts = [
        [[5, 9, 13, 2, 77, 3, 8, 8, 1]],  # one span, whole context
        [[t] for t in [5, 9, 13, 2, 77, 3, 8, 8, 1]],  # one span per token
        [[4, 4], [6]],  # short
        [[7] * 40, [3] * 50, [9] * 30],  # long
    ]
    shapes = set()
    for context in contexts:
        message = communicate.send(adapter, sharer, [context], bucket=8)
        shapes.add((message.k.shape, message.v.shape, message.nbytes))
    windowed = communicate.send(adapter, sharer, [contexts[3]], window=7, bucket=8)  # fixed windows, not paragraphs
    shapes.add((windowed.k.shape, windowed.v.shape, windowed.nbytes))
    assert shapes == {((4, 1, 1, 2, 8), (4, 1, 1, 2, 8), 2 * 4 * 2 * 8 * 4)}


def test_untrained_pool_is_the_mean_and_padding_never_reaches_the_message(models):
    sharer, _ = models
    adapter = build("lcfx", SHARER, RECEIVER)  # zero queries: uniform attention, i.e. mean pooling
    short = [[5, 9, 13], [2, 77]]
    alone = communicate.send(adapter, sharer, [short], bucket=8)
    cache = communicate.prefill(sharer, [[5, 9, 13, 2, 77]], bucket=8)
    src = np.array(adapter.spec.source_layers)
    span_means = [np.asarray(cache.k[src][:, 0, a:b]).mean(axis=1) for a, b in ((0, 3), (3, 5))]
    np.testing.assert_allclose(alone.k[:, 0, 0], (span_means[0] + span_means[1]) / 2, rtol=1e-5, atol=1e-6)
    # The same row next to a longer one (so it is padded), and with junk written into its padding.
    batched = communicate.send(adapter, sharer, [short, [[7] * 30, [3] * 20]], bucket=8)
    np.testing.assert_allclose(batched.k[:, :1], alone.k, rtol=1e-5, atol=1e-6)
    junk = cache.replace(k=cache.k.at[:, :, 5:].set(1e3), v=cache.v.at[:, :, 5:].set(-1e3))
    span_ids, _ = spans_from_lengths([[3, 2]], cache.capacity)
    span_ids[:, 5:] = 0  # even span ids pointing padding into a span are ignored past the length
    again = adapter.summarize(junk, span_ids, 8)
    np.testing.assert_allclose(again.k, alone.k, rtol=1e-5, atol=1e-6)


def test_gradients_reach_only_the_adapter(models):
    sharer, receiver = models
    adapter = build("lcf", SHARER, RECEIVER, gate_init=0.5)
    graphdef, params = nnx.split(adapter)
    tokens = jnp.array([[5, 9, 13, 2, 77, 3]], jnp.int32)

    def loss(adapter_params, sharer_params, receiver_params):
        s_cache = sharer.new_cache(1, 5)
        r_cache = receiver.new_cache(1, 5)
        _, s_cache = forward(sharer.graphdef, sharer_params, tokens[:, :5], s_cache)
        _, r_cache = forward(receiver.graphdef, receiver_params, tokens[:, :5], r_cache)
        fused = nnx.merge(graphdef, adapter_params).fuse(s_cache, r_cache, rng=jax.random.key(0))
        logits, _ = forward(receiver.graphdef, receiver.params, tokens[:, 5:], fused.with_capacity(8))
        return -jax.nn.log_softmax(logits[0, -1])[7]

    g_adapter, g_sharer, g_receiver = jax.grad(loss, argnums=(0, 1, 2))(params, sharer.params, receiver.params)
    adapter_norms = [float(jnp.abs(x).max()) for x in jax.tree.leaves(g_adapter)]
    assert all(n > 0 for n in adapter_norms), "every adapter parameter, gates included, gets a gradient"
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(g_sharer))
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(g_receiver))


@pytest.mark.parametrize(
    "options", [{}, {"receiver_conditioned": True}, {"message_injection": "prefix", "message_slots": 2}]
)
def test_lcfx_gradients_reach_the_span_pool(models, options):
    """The message is the adapter's own output: the pool's queries (and the receiver-conditioning
    projection) must learn through it; only the models' caches are constants."""
    sharer, receiver = models
    adapter = build("lcfx", SHARER, RECEIVER, dropout=0.0, **options)
    graphdef, params = nnx.split(adapter)
    tokens = jnp.array([[5, 9, 13, 2, 77, 3]], jnp.int32)
    span_ids = jnp.array([[0, 0, 1, 1, 1, 2]], jnp.int32)

    def loss(adapter_params, sharer_params):
        s_cache = sharer.new_cache(1, 6)
        r_cache = receiver.new_cache(1, 5)
        _, s_cache = forward(sharer.graphdef, sharer_params, jnp.array([[8, 4, 21, 6, 30, 2]]), s_cache)
        _, r_cache = forward(receiver.graphdef, receiver.params, tokens[:, :5], r_cache)
        a = nnx.merge(graphdef, adapter_params)
        message = a.summarize(s_cache, span_ids, 3, r_cache if a.spec.receiver_conditioned else None)
        fused = a.receive(message, r_cache, rng=jax.random.key(0))
        logits, _ = forward(receiver.graphdef, receiver.params, tokens[:, 5:], fused.with_capacity(fused.capacity + 3))
        return -jax.nn.log_softmax(logits[0, -1])[7]

    g_adapter, g_sharer = jax.grad(loss, argnums=(0, 1))(params, sharer.params)
    for path, g in nnx.to_flat_state(g_adapter):
        assert float(jnp.abs(g.get_value()).max()) > 0, ".".join(map(str, path))
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(g_sharer))


def test_mismatched_pairs_get_clear_errors(models):
    sharer, receiver = models
    s_cache, r_cache = caches(models)
    adapter = build("lcf", SHARER, RECEIVER)
    with pytest.raises(ValueError, match=r"sharer cache has shape \(4, 2, 8, 2, 16\).*L=3, K=2, H=8"):
        adapter.fuse(r_cache, r_cache)  # a receiver cache where the sharer's belongs
    lcfx = build("lcfx", SHARER, RECEIVER)
    other = build("lcfx", RECEIVER, RECEIVER)
    message = communicate.send(other, receiver, [[[5, 9, 13]]], bucket=8)
    _, r_one = caches(models, rows=((5, 9, 13),))
    with pytest.raises(ValueError, match=r"message of shape \(4, 1, 1, 2, 16\).*K=2, H=8"):
        communicate.receive(lcfx, message, r_one)
    # Each adapter type has only its own methods, and the communication paths name the type they need.
    assert not hasattr(adapter, "summarize") and not hasattr(lcfx, "fuse")
    with pytest.raises(ValueError, match=r"sending a message .* needs a MessageAdapter \(lcfx\), got a 'lcf'"):
        communicate.send(adapter, sharer, [[[5, 9, 13]]], bucket=8)
    with pytest.raises(ValueError, match=r"fusing a shared context needs a FusingAdapter \(lcf or c2c\), got a 'lcfx'"):
        communicate.fuse(lcfx, s_cache, r_cache)
    with pytest.raises(ValueError, match="receiving a message needs a MessageAdapter"):
        communicate.receive(adapter, message, r_one)
    with pytest.raises(ValueError, match="keep_layers"):
        build("lcf", SHARER, RECEIVER, keep_layers=[7])
    with pytest.raises(ValueError, match="adapter kind"):
        build("lora", SHARER, RECEIVER)
    with pytest.raises(ValueError, match=r"Adapter cannot hold a 'lcf' adapter: build one with .*make_adapter"):
        Adapter(adapter.spec, rngs=nnx.Rngs(0))  # the base type holds no kind
    with pytest.raises(ValueError, match=r"MessageAdapter cannot hold a 'lcf' adapter"):
        MessageAdapter(adapter.spec, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kind", ["lcf", "c2c", "lcfx"])
def test_make_adapter_picks_the_type_and_a_split_adapter_merges_back_into_it(kind):
    adapter = build(kind, SHARER, RECEIVER)
    want = MessageAdapter if kind == "lcfx" else FusingAdapter
    assert type(adapter) is want and isinstance(adapter, Adapter)
    graphdef, params = nnx.split(adapter)
    assert type(nnx.merge(graphdef, params)) is want  # what every jitted call rebuilds
    again = make_adapter(adapter.spec, rngs=nnx.Rngs(0))  # build's default seed: the same draws
    jax.tree.map(np.testing.assert_array_equal, nnx.state(again, nnx.Param), nnx.state(adapter, nnx.Param))


def test_parallel_sharers_sum_residuals_and_sequential_chains(models):
    sharer, receiver = models
    s_cache, r_cache = caches(models)
    a = build("lcf", SHARER, RECEIVER, seed=1, gate_init=1.0)
    b = build("lcf", SHARER, RECEIVER, seed=2, gate_init=1.0, keep_layers=[1, 3])
    dk_a, dv_a = a.fuse_residuals(s_cache, r_cache)
    dk_b, dv_b = b.fuse_residuals(s_cache, r_cache)
    both = communicate.combine([(a, s_cache), (b, s_cache)], r_cache, mode="parallel")
    valid = np.asarray(r_cache.valid_mask())[None, :, :, None, None]
    expected = np.asarray(r_cache.k).copy()
    expected += np.where(valid, np.asarray(dk_a), 0)
    expected[[1, 3]] += np.where(valid, np.asarray(dk_b), 0)
    np.testing.assert_allclose(np.asarray(both.k), expected, rtol=1e-5, atol=1e-5)
    chained = communicate.combine([(a, s_cache), (b, s_cache)], r_cache, mode="sequential")
    manual = communicate.fuse(b, s_cache, communicate.fuse(a, s_cache, r_cache))
    np.testing.assert_array_equal(np.asarray(chained.k), np.asarray(manual.k))
    assert not np.allclose(np.asarray(chained.k), np.asarray(both.k))  # b sees a's result when chained


def test_end_to_end_with_closed_gates_answers_like_the_receiver_alone(models):
    sharer, receiver = models
    prompts = [[5, 9, 13, 2, 77, 3], [41, 3, 8]]
    alone = __import__("lcf_jax").generate(receiver, prompts, 6, stop_tokens=[])
    for kind in ("lcf", "lcfx"):
        adapter = build(kind, SHARER, RECEIVER)
        close_gates(adapter)
        if kind == "lcf":
            out = communicate.answer_shared_context(adapter, sharer, receiver, prompts, 6, stop_tokens=[])
        else:
            out, message = communicate.answer_different_contexts(
                adapter, sharer, receiver, [[[1, 2, 3]], [[4, 5]]], prompts, 6, stop_tokens=[]
            )
            assert message.nbytes == 2 * 4 * 2 * 1 * 2 * 8 * 4
        np.testing.assert_array_equal(out.tokens, alone.tokens)


def test_per_row_keys_give_a_row_the_same_noise_whatever_its_neighbours(models):
    s_cache, r_cache = caches(models)
    adapter = build("lcf", SHARER, RECEIVER, gate_init=0.5, dropout=0.2)
    keys = jax.vmap(lambda row: jax.random.fold_in(jax.random.key(7), row))(jnp.arange(2))
    dk, dv = adapter.fuse_residuals(s_cache, r_cache, rng=keys)

    def row(cache, i):
        return cache.replace(k=cache.k[:, i : i + 1], v=cache.v[:, i : i + 1], lengths=cache.lengths[i : i + 1])

    alone_k, alone_v = adapter.fuse_residuals(row(s_cache, 1), row(r_cache, 1), rng=keys[1:])
    np.testing.assert_allclose(dk[:, 1:], alone_k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dv[:, 1:], alone_v, rtol=1e-5, atol=1e-6)
    other, _ = adapter.fuse_residuals(s_cache, r_cache, rng=keys[::-1])
    assert not np.allclose(other[:, 1], dk[:, 1])  # the noise really is keyed by the row's key


@pytest.mark.parametrize("kind", ["lcf", "c2c"])
def test_bfloat16_matmuls_stay_close_to_float32(models, kind):
    exact = build(kind, SHARER, RECEIVER, hidden_width=32, gate_init=1.0)  # open gates
    fast = build(kind, SHARER, RECEIVER, hidden_width=32, gate_init=1.0, compute_dtype="bfloat16")
    nnx.update(fast, nnx.state(exact))  # same float32 parameters
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(fast, nnx.Param)))
    s_cache, r_cache = caches(models)
    dk, dv = exact.fuse_residuals(s_cache, r_cache)
    fk, fv = fast.fuse_residuals(s_cache, r_cache)
    assert fk.dtype == jnp.float32 and not np.array_equal(dk, fk)  # really computed differently
    for a, b in ((dk, fk), (dv, fv)):
        assert float(jnp.abs(a - b).max()) <= 0.03 * float(jnp.abs(a).max())
    with pytest.raises(ValueError, match="compute_dtype"):
        build(kind, SHARER, RECEIVER, compute_dtype="float16")


def test_broadcast_message_equals_the_summary_repeated_at_every_position(models):
    """receive() multiplies the one summary once per row; that must equal feeding it at every position."""
    adapter = build("lcfx", SHARER, RECEIVER)
    sharer, receiver = models
    s_cache = communicate.prefill(sharer, [[5, 9, 13, 2], [41, 3, 8]], bucket=8)
    r_cache = communicate.prefill(receiver, [[7, 1, 2, 3, 4], [9, 9]], bucket=8)
    message = adapter.summarize(s_cache, spans_from_lengths([[2, 2], [3]], s_cache.capacity)[0], 2)
    dk, dv = adapter.receive_residuals(message, r_cache)
    shape = (*r_cache.k.shape[:3], *message.k.shape[3:])
    ek, ev = adapter.residuals(
        jnp.broadcast_to(message.k, shape), jnp.broadcast_to(message.v, shape), r_cache.k, r_cache.v
    )
    np.testing.assert_allclose(dk, ek, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dv, ev, rtol=1e-6, atol=1e-7)
    assert float(jnp.abs(dk).max()) > 0
