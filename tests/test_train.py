"""Training: the same steps on 1 and 8 (fake CPU) devices, PartitionSpecs, loss that falls, frozen
models that stay bit-identical, resume after SIGKILL, a corrupt newest checkpoint, config errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file

from lcf_jax.adapters import make_adapter, make_spec
from lcf_jax.config import ConfigError, load_config
from lcf_jax.data.examples import make_batch
from lcf_jax.data.synthetic import copy_task
from lcf_jax.kv import KVCache
from lcf_jax.sharding import CACHE_AXES, logical_spec, make_mesh, tree_shardings
from lcf_jax.train.checkpoint import Checkpointer, abstract_like
from lcf_jax.train.loop import build_model, train
from lcf_jax.train.step import StepConfig, init_state, make_optimizer, make_train_step

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")


def losses(workdir: Path) -> list[float]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["loss"] for r in lines if "loss" in r}
    return [by_step[s] for s in sorted(by_step)]


def run_tiny(workdir: Path, *overrides: str) -> list[float]:
    config = load_config(TINY, ["train.steps=5", "checkpoint.async_save=false", *overrides])
    train(config, workdir, progress=False)
    return losses(workdir)


def test_same_losses_on_1_device_and_8_devices_in_two_mesh_shapes(tmp_path):
    assert jax.device_count() == 8
    one = run_tiny(tmp_path / "one", "mesh.num_devices=1")
    flat = run_tiny(tmp_path / "flat", "mesh.data=8")
    cube = run_tiny(tmp_path / "cube", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    assert len(one) == 5
    assert list((tmp_path / "one" / "tensorboard").glob("events.out.tfevents.*"))  # TensorBoard event files
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["steps"] == 5
    np.testing.assert_allclose(flat, one, rtol=1e-5)
    np.testing.assert_allclose(cube, one, rtol=1e-5)


def test_partition_specs_of_parameters_optimizer_cache_and_batch():
    mesh = make_mesh(2, 2, 2)
    config = load_config(TINY)
    receiver = build_model(config, "receiver")
    sharer = build_model(config, "sharer")
    spec = make_spec("lcf", sharer.config, receiver.config, latent_width=16)
    optimizer = make_optimizer()
    abstract = jax.eval_shape(lambda: init_state(nnx.state(make_adapter(spec, rngs=nnx.Rngs(0)), nnx.Param), optimizer))
    shardings = tree_shardings(abstract, mesh)
    down = shardings.params["projectors"]["down"]["kernel"]
    assert down.spec == P(None, "fsdp", None)  # [N, in=64, d=16]: adapter outputs replicated (see RULES)
    assert shardings.params["projectors"]["k_gate_logit"].spec == P(None)
    adam = shardings.opt_state[1][0]
    assert adam.mu["projectors"]["down"]["kernel"].spec == down.spec  # moments shard like their parameter
    assert adam.nu["projectors"]["k_up"]["kernel"].spec == P(None, "fsdp", None)
    model = tree_shardings(receiver.params, mesh)
    assert model["layers"]["self_attn"]["q_proj"]["kernel"].spec == P(None, "fsdp", "tensor")
    assert model["layers"]["mlp"]["down_proj"]["kernel"].spec == P(None, "tensor", "fsdp")
    assert model["embed_tokens"]["embedding"].spec == P("tensor", "fsdp")
    cache = KVCache.init(receiver.config, 4, 16)
    assert logical_spec(CACHE_AXES, cache.k.shape, mesh) == P(None, ("data", "fsdp"), None, "tensor", None)
    assert logical_spec(("batch", None, None)) == P(("data", "fsdp"), None, None)
    # A dimension the mesh does not divide is replicated, and two axes may not share a mesh axis.
    assert logical_spec(("embed", "mlp"), (3, 4), mesh) == P(None, "tensor")
    with pytest.raises(ValueError, match="both map to mesh axis"):
        logical_spec(("heads", "mlp"))


def test_loss_falls_and_frozen_models_stay_bit_identical():
    config = load_config(TINY)
    sharer, receiver = build_model(config, "sharer"), build_model(config, "receiver")
    before = jax.tree.map(np.array, (sharer.params, receiver.params))
    spec = make_spec("lcf", sharer.config, receiver.config, latent_width=16, dropout=0.0)
    graphdef, params = nnx.split(make_adapter(spec, rngs=nnx.Rngs(0)), nnx.Param)
    optimizer = make_optimizer(learning_rate=3e-3, steps=30)
    step = jax.jit(make_train_step(graphdef, sharer, receiver, optimizer, StepConfig()), donate_argnums=0)
    state = init_state(params, optimizer)
    examples = copy_task(64, vocab=64, fixed_response=True)
    history = []
    for i in range(30):
        batch = make_batch(examples[(i * 16) % 64 :][:16], bucket=8).micro_batches(2)
        state, metrics = step(state, (sharer.params, receiver.params), batch)
        history.append(float(metrics["loss"]))
    assert np.mean(history[-5:]) < 0.75 * np.mean(history[:3])
    after = jax.tree.map(np.array, (sharer.params, receiver.params))
    jax.tree.map(np.testing.assert_array_equal, after, before)


def lcf_train(workdir: Path, *arguments: str, devices: int = 2) -> subprocess.Popen:
    """`lcf train` on the tiny config in a subprocess with `devices` fake CPU devices."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "lcf_jax.cli", "train", "--config", TINY, "--workdir", str(workdir)]
    return subprocess.Popen(
        [*command, "--no-progress", *arguments], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def final_params(workdir: Path):
    config = load_config(TINY)
    sharer, receiver = build_model(config, "sharer"), build_model(config, "receiver")
    spec = make_spec("lcf", sharer.config, receiver.config, **dict(config.adapter.options))
    optimizer = make_optimizer(steps=config.train.steps)
    abstract = jax.eval_shape(lambda: init_state(nnx.state(make_adapter(spec, rngs=nnx.Rngs(0)), nnx.Param), optimizer))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state, data = Checkpointer(workdir / "checkpoints").restore(
        abstract_like(abstract, jax.tree.map(lambda _: device, abstract))
    )
    return state, data


def test_sigkill_and_restart_ends_where_an_uninterrupted_run_ends(tmp_path):
    settings = ("--config.train.steps=24", "--config.checkpoint.every=4")
    reference = lcf_train(tmp_path / "reference", *settings)
    assert reference.wait(timeout=600) == 0, reference.stdout.read()
    victim = lcf_train(tmp_path / "killed", *settings)
    log = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(losses(tmp_path / "killed")) < 14):
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    logged_before_kill = log.read_text()
    assert 14 <= len(losses(tmp_path / "killed")) < 24, "the kill should land mid-run"
    restarted = lcf_train(tmp_path / "killed", *settings)
    output = restarted.communicate(timeout=600)[0]
    assert restarted.returncode == 0, output
    assert "resumed from" in output and "resumed from 0" not in output
    assert log.read_text().startswith(logged_before_kill)  # nothing logged before the kill is lost
    done, data = final_params(tmp_path / "killed")
    ref, ref_data = final_params(tmp_path / "reference")
    assert int(done.step) == int(ref.step) == 24 and data == ref_data
    for a, b in zip(jax.tree.leaves(done.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)


def test_a_corrupt_newest_checkpoint_is_reported_and_the_previous_used(tmp_path, caplog):
    run_tiny(tmp_path, "train.steps=10", "checkpoint.every=5")
    newest = tmp_path / "checkpoints" / "10"
    for path in newest.rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "state" in str(path):
            path.write_bytes(b"\0" * 7)
    config = load_config(TINY, ["train.steps=12", "checkpoint.every=5", "checkpoint.async_save=false"])
    with caplog.at_level("WARNING"):
        summary = train(config, tmp_path, progress=False)
    assert summary["resumed_from"] == 5
    assert any("step 10" in r.message and "unreadable" in r.message for r in caplog.records)


def test_config_overrides_are_checked():
    config = load_config(TINY, ["train.steps=7", "adapter.kind=c2c", "train.learning_rate=0.5"])
    assert config.train.steps == 7 and config.adapter.kind == "c2c" and config.train.learning_rate == 0.5
    with pytest.raises(ConfigError, match="unknown config key 'train.stepz'.*train.steps"):
        load_config(TINY, ["train.stepz=7"])
    with pytest.raises(ConfigError, match="bad value for train.steps"):
        load_config(TINY, ["train.steps=many"])
    with pytest.raises(ConfigError, match="no config file"):
        load_config(ROOT / "configs" / "nope.py")
    shutil.rmtree(ROOT / "configs" / "__pycache__", ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_4_devices_match_one_process_of_8(tmp_path):
    settings = ["--config.train.steps=5", "--config.checkpoint.async_save=false"]
    port = free_port()
    workers = [
        lcf_train(
            tmp_path / "multi",
            "--coordinator",
            f"127.0.0.1:{port}",
            "--num-processes",
            "2",
            "--process-id",
            str(i),
            *settings,
            devices=4,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    assert "trained 5 steps" in outputs[0] and "trained 5 steps" not in outputs[1]  # only process 0 reports
    start = json.loads((tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["processes"] == 2 and start["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
    single = run_tiny(tmp_path / "single", "mesh.data=8")
    np.testing.assert_allclose(losses(tmp_path / "multi"), single, rtol=1e-5)
    # The two-process checkpoint restores in this single process.
    restored, data = final_params(tmp_path / "multi")
    reference, _ = final_params(tmp_path / "single")
    assert int(restored.step) == 5 and data["position"] == 5
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(reference.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_unknown_adapter_option_is_a_clear_error(tmp_path):
    config = load_config(TINY)
    with config.unlocked():
        config.adapter.options.latent_wdth = 8
    with pytest.raises(ValueError, match="bad adapter.options.*latent_wdth"):
        train(config, tmp_path, progress=False)


def test_control_trained_alongside_ends_where_separate_runs_end():
    """with_control trains the receiver-only control in the LCF-X step (sharing the receiver's
    prefix pass): each adapter must end where its own run ends (own clipping, own moments)."""
    config = load_config(TINY)
    sharer, receiver = build_model(config, "sharer"), build_model(config, "receiver")
    spec = make_spec("lcfx", sharer.config, receiver.config, latent_width=16, dropout=0.0)
    graphdef, params = nnx.split(make_adapter(spec, rngs=nnx.Rngs(0)), nnx.Param)
    optimizer = make_optimizer(learning_rate=3e-2, steps=4, clip=0.5)  # clipping active: it must be per adapter
    examples = copy_task(32, vocab=64, lcfx=True)
    frozen = (sharer.params, receiver.params)

    def run(step_config: StepConfig, control: bool):
        step = jax.jit(make_train_step(graphdef, sharer, receiver, optimizer, step_config))
        state, history = init_state(params, optimizer, control=control), []
        for i in range(4):
            batch = make_batch(examples[i * 8 :][:8], bucket=8).micro_batches(2)
            state, metrics = step(state, frozen, batch)
            history.append({k: float(v) for k, v in metrics.items()})
        return state, history

    joint, joint_history = run(StepConfig(num_spans=4, with_control=True), control=True)
    alone, alone_history = run(StepConfig(num_spans=4), control=False)
    control, control_history = run(StepConfig(num_spans=4, receiver_only=True), control=False)
    close = dict(rtol=1e-4, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **close), joint.params, alone.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **close), joint.control["params"], control.params)
    np.testing.assert_allclose([h["loss"] for h in joint_history], [h["loss"] for h in alone_history], rtol=1e-5)
    np.testing.assert_allclose(
        [h["control_loss"] for h in joint_history], [h["loss"] for h in control_history], rtol=1e-5
    )
    # The two adapters really did train apart (the comparison above is not of one thing with itself).
    assert any(
        not np.allclose(a, b) for a, b in zip(jax.tree.leaves(joint.params), jax.tree.leaves(joint.control["params"]))
    )
    assert max(h["grad_norm"] for h in alone_history) > 0.5  # clipping was active


def test_control_trained_alongside_is_checkpointed_resumed_and_saved(tmp_path):
    """adapter.with_control: the control's parameters and optimizer state are in the checkpoints, a
    run resumed from one ends where an uninterrupted run ends, and control_adapter/ is written."""
    settings = ["train.steps=6", "checkpoint.every=2", "checkpoint.async_save=false"]
    settings += ["adapter.with_control=true", "adapter.num_spans=4"]

    def run(workdir):
        train(load_config(TINY + ":lcfx", settings), workdir, progress=False)
        # The tensors, not the file bytes: safetensors writes its metadata keys in no fixed order.
        return {p.parent.name: load_file(p) for p in workdir.glob("*adapter/adapter.safetensors")}

    reference = run(tmp_path / "reference")
    assert set(reference) == {"adapter", "control_adapter"}
    assert any(not np.array_equal(reference["adapter"][k], v) for k, v in reference["control_adapter"].items())
    resumed_dir = tmp_path / "resumed"
    run(resumed_dir)
    for name in ("adapter", "control_adapter", "checkpoints/6"):  # back to the step-4 checkpoint
        shutil.rmtree(resumed_dir / name)
    (resumed_dir / "metrics.jsonl").unlink()
    resumed = run(resumed_dir)
    assert json.loads((resumed_dir / "metrics.jsonl").read_text().splitlines()[0])["from_step"] == 4
    for name, tensors in reference.items():
        assert set(resumed[name]) == set(tensors)
        for key, value in tensors.items():
            np.testing.assert_array_equal(resumed[name][key], value, err_msg=f"{name} {key}")
