"""Saving and loading adapters, and pruning: gate audit, ablation, top-K, the pruned adapter's life."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from tiny_pair import RECEIVER, SHARER, tiny_models

from lcf_jax import communicate
from lcf_jax.adapters import build, count_params, size_mb
from lcf_jax.adapters.io import load_adapter, save_adapter
from lcf_jax.loading import CheckpointError
from lcf_jax.prune import drop_layers, gate_audit, keep_layers, prune

ROWS = ((5, 9, 13, 2, 77, 3), (41, 3, 8))


@pytest.fixture(scope="module")
def setup():
    sharer, receiver = tiny_models()
    return sharer, receiver, communicate.prefill(sharer, ROWS, bucket=8), communicate.prefill(receiver, ROWS, bucket=8)


def fused_k(adapter, setup, kind=None):
    sharer, _, s_cache, r_cache = setup
    if (kind or adapter.spec.kind) == "lcfx":
        message = communicate.send(adapter, sharer, [[[5, 9], [13, 2, 77]], [[41, 3]]], bucket=8)
        return np.asarray(communicate.receive(adapter, message, r_cache).k)
    return np.asarray(communicate.fuse(adapter, s_cache, r_cache).k)


@pytest.mark.parametrize("kind", ["lcf", "lcfx", "c2c"])
def test_save_load_round_trip_gives_identical_outputs(setup, tmp_path, kind):
    adapter = build(kind, SHARER, RECEIVER, hidden_width=32, gate_init=0.5, keep_layers=[0, 2, 3])
    save_adapter(adapter, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["adapter"]["kind"] == kind and config["adapter"]["layers"] == [0, 2, 3]
    assert config["hard_gates"]["2"] == {"key": True, "value": True}
    assert config["num_params"] == count_params(adapter) and config["lcf_jax_version"]
    again = load_adapter(tmp_path / "a")
    np.testing.assert_array_equal(fused_k(again, setup), fused_k(adapter, setup))


def test_bfloat16_save_is_close(setup, tmp_path):
    adapter = build("lcf", SHARER, RECEIVER, gate_init=0.5)
    save_adapter(adapter, tmp_path / "bf16", dtype="bfloat16")
    assert all(
        t.dtype == np.dtype("bfloat16") for t in load_file(str(tmp_path / "bf16" / "adapter.safetensors")).values()
    )
    np.testing.assert_allclose(fused_k(load_adapter(tmp_path / "bf16"), setup), fused_k(adapter, setup), atol=0.05)


def test_bad_adapter_files_are_named(tmp_path):
    adapter = build("lcf", SHARER, RECEIVER)
    path = save_adapter(adapter, tmp_path / "a")
    with pytest.raises(CheckpointError, match="holds a 'lcf' adapter, expected 'c2c'"):
        load_adapter(path, expect_kind="c2c")
    tensors = load_file(str(path / "adapter.safetensors"))
    tensors.pop("projectors.k_up.bias")
    tensors["projectors.down.kernel"] = np.zeros((4, 3, 128), np.float32)
    save_file(tensors, str(path / "adapter.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_adapter(path)
    message = str(err.value)
    assert "missing tensor 'projectors.k_up.bias'" in message
    assert "'projectors.down.kernel' has shape (4, 3, 128), expected (4, 96, 128)" in message
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tmp_path)


def set_gates(adapter, logits):
    adapter.projectors.k_gate_logit[...] = jnp.asarray([k for k, _ in logits], jnp.float32)
    adapter.projectors.v_gate_logit[...] = jnp.asarray([v for _, v in logits], jnp.float32)


def test_gate_audit_and_dropping_a_layer_equals_closing_its_gates(setup):
    adapter = build("lcf", SHARER, RECEIVER)
    set_gates(adapter, [(1.0, 1.0), (-0.5, -0.1), (-1.0, 0.2), (0.3, -2.0)])
    assert gate_audit(adapter) == [1]  # both closed; layer 2 and 3 keep one open gate
    reference = build("lcf", SHARER, RECEIVER)
    set_gates(reference, [(1.0, 1.0), (-1.0, -1.0), (-1.0, 0.2), (-1.0, -1.0)])
    pruned = drop_layers(adapter, [1, 3])
    assert pruned.spec.layers == (0, 2) and pruned.spec.source_layers == (0, 1)
    # A dropped layer computes exactly what a closed gate does.
    shared = build("lcf", SHARER, RECEIVER)
    set_gates(shared, [(1.0, 1.0), (1.0, 1.0), (-1.0, 0.2), (1.0, 1.0)])
    full = keep_layers(shared, [0, 1, 2, 3])
    closed = build("lcf", SHARER, RECEIVER)
    closed.projectors.k_gate_logit[...] = jnp.asarray([1.0, -1.0, -1.0, -1.0])
    closed.projectors.v_gate_logit[...] = jnp.asarray([1.0, -1.0, 0.2, -1.0])
    np.testing.assert_array_equal(fused_k(keep_layers(shared, [0, 2]), setup), fused_k(closed, setup))
    assert count_params(full) == count_params(shared)


def test_prune_runs_the_three_steps_with_a_dev_metric(setup, tmp_path, capsys):
    adapter = build("lcf", SHARER, RECEIVER, keep_layers=[0, 1, 2, 3])
    set_gates(adapter, [(1.0, 1.0), (1.0, 1.0), (-1.0, -1.0), (1.0, 1.0)])
    # A dev metric where layer 0 helps most, layer 3 a little, and layer 1 hurts.
    value = {0: 5.0, 1: -2.0, 2: 0.0, 3: 1.0}
    calls = []

    def metric(a):
        calls.append(a.spec.layers)
        return 10.0 + sum(value[t] for t in a.spec.layers if t not in gate_audit(a))

    report = prune(adapter, metric, top_k=1, progress=False)
    assert report.dead == [2] and report.harmful == [1]
    assert report.importance == {0: 5.0, 3: 1.0}
    assert report.kept == [0] and report.adapter.spec.layers == (0,)
    assert report.baseline == 14.0 and report.final == 15.0
    print(report.summary())
    assert "MB in bf16" in capsys.readouterr().out
    # The pruned adapter saves, loads and runs.
    again = load_adapter(save_adapter(report.adapter, tmp_path / "pruned"))
    np.testing.assert_array_equal(fused_k(again, setup), fused_k(report.adapter, setup))


def test_paper_adapter_sizes_in_bf16():
    full = build("lcf", "qwen2.5-0.5b", "qwen3-0.6b", abstract=True)
    small = build("lcf", "qwen2.5-0.5b", "qwen3-0.6b", abstract=True, keep_layers=[6, 8, 9, 10, 15, 16, 17, 19, 21])
    assert size_mb(full) == pytest.approx(38.79, abs=0.01)  # the paper's "39 MB bf16"
    assert size_mb(small) == pytest.approx(12.47, abs=0.01)  # the paper's "13 MB" (6,233,634 parameters)
