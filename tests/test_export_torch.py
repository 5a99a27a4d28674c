"""`lcf export` and `lcf_jax.torch`: exported adapters compute in PyTorch what they compute in JAX
(messages, rewritten caches, greedy answers with transformers models), exports round-trip back into
lcf_jax, broken exports give clear errors, and `lcf_jax.torch` runs without JAX."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_tiny import save_tiny, tiny_hf_model
from safetensors.numpy import load_file, save_file
from tiny_pair import RECEIVER, SHARER, tiny_tokenizer
from transformers import DynamicCache

import lcf_jax
import lcf_jax.torch as lt
from lcf_jax import communicate
from lcf_jax.adapters import build
from lcf_jax.adapters.io import adapter_from_tensors, flat_params, load_adapter, save_adapter
from lcf_jax.config import load_config
from lcf_jax.export import export_adapter, export_from_orbax
from lcf_jax.kv import KVCache
from lcf_jax.train.checkpoint import Checkpointer
from lcf_jax.train.loop import model_configs
from lcf_jax.train.step import init_state, make_optimizer
from lcf_jax.train.workdir import ADAPTER_DIR, CHECKPOINTS_DIR

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny matmuls on a busy 2-core machine: OpenMP's spin-waiting threads made transformers ~10x
    slower here than one thread. Same results either way; restored for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CASES = {
    "lcf": ("lcf", {}),
    "lcfx": ("lcfx", {}),
    "lcfx_conditioned": ("lcfx", dict(receiver_conditioned=True)),
    "c2c": ("c2c", dict(hidden_width=48)),
    "lcf_pruned": ("lcf", dict(keep_layers=[1, 3])),
    "lcfx_soft_gates": ("lcfx", dict(gate_inference="soft", up_init="zeros")),
    "lcfx_standardized": ("lcfx", dict(message_norm="standardize", slot_query_init="normal")),
}
LENGTHS = [12, 7]  # two rows, the second right-padded
SPAN_IDS = np.array([[0] * 5 + [1] * 6 + [2] * 5, [0] * 4 + [1] * 5 + [-1] * 7], np.int32)  # [B, S_S = 16]


def random_adapter(kind: str, sharer=SHARER, receiver=RECEIVER, seed: int = 0, **options):
    """An adapter whose every parameter is random (zero biases and pool queries, unit norms would
    hide a mistake), gates open except the value gate of the first kept layer (a closed gate).
    Filled from NumPy: initialising eagerly in JAX takes seconds per adapter."""
    abstract = build(kind, sharer, receiver, abstract=True, **options)
    shapes = {name: tuple(x.shape) for name, x in flat_params(abstract).items()}
    rng = np.random.RandomState(seed)

    def value(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name.endswith("gate_logit"):
            closed = name.endswith(("v_gate_logit", "value_gate_logit"))
            return np.where((np.arange(shape[0]) == 0) & closed, -1.0, 1.0).astype(np.float32)
        x = rng.randn(*shape).astype(np.float32)
        if name.endswith("kernel"):
            return x / np.sqrt(shape[-2])
        if name.endswith("norm.weight"):
            return 1.0 + 0.1 * x
        return (0.5 if name.startswith("pool") else 0.1) * x

    values = {name: value(name, shape) for name, shape in shapes.items()}
    return adapter_from_tensors(abstract.spec, shapes, values.__getitem__, "random test adapter")


def random_cache(config, capacity: int, seed: int) -> KVCache:
    rng = np.random.RandomState(seed)
    shape = (config.num_layers, len(LENGTHS), capacity, config.num_kv_heads, config.head_dim)
    k, v = (jnp.asarray(rng.randn(*shape).astype(np.float32)) for _ in range(2))
    return KVCache(k, v, jnp.asarray([min(n, capacity) for n in LENGTHS], jnp.int32))


def to_torch(cache: KVCache, roll: bool = False) -> tuple[DynamicCache, torch.Tensor]:
    """A DynamicCache `[B, K, S, H]` per layer and its attention mask. `roll`: left padding instead."""
    k = torch.from_numpy(np.array(cache.k)).transpose(2, 3)  # [L, B, K, S, H]
    v = torch.from_numpy(np.array(cache.v)).transpose(2, 3)
    mask = torch.from_numpy(np.array(cache.valid_mask()))
    if roll:
        shifts = [cache.capacity - int(n) for n in cache.lengths]
        k = torch.stack([torch.roll(k[:, b], shifts[b], dims=-2) for b in range(k.shape[1])], dim=1)
        v = torch.stack([torch.roll(v[:, b], shifts[b], dims=-2) for b in range(v.shape[1])], dim=1)
        mask = torch.stack([torch.roll(mask[b], shifts[b]) for b in range(mask.shape[0])])
    return DynamicCache([(k[i], v[i]) for i in range(k.shape[0])]), mask


def from_torch(cache: DynamicCache) -> tuple[np.ndarray, np.ndarray]:
    """Keys and values `[L, B, S, K, H]`."""
    k = np.stack([layer.keys.transpose(1, 2).numpy() for layer in cache.layers])
    v = np.stack([layer.values.transpose(1, 2).numpy() for layer in cache.layers])
    return k, v


def jax_output(adapter, sharer: KVCache, receiver: KVCache):
    """(rewritten receiver keys, values, message keys or None) in lcf_jax."""
    if adapter.spec.kind != "lcfx":
        out = communicate.fuse(adapter, sharer, receiver)
        return np.asarray(out.k), np.asarray(out.v), None
    message = adapter.summarize(sharer, SPAN_IDS, 3, receiver if adapter.spec.receiver_conditioned else None)
    out = communicate.receive(adapter, message, receiver)
    return np.asarray(out.k), np.asarray(out.v), np.asarray(message.k)


def torch_output(adapter, sharer: KVCache, receiver: KVCache, roll: bool = False):
    s_cache, s_mask = to_torch(sharer, roll)
    r_cache, r_mask = to_torch(receiver, roll)
    if adapter.kind != "lcfx":
        k, v = from_torch(lt.fuse(adapter, s_cache, r_cache, attention_mask=r_mask, sharer_attention_mask=s_mask))
        return k, v, None
    span_ids = torch.from_numpy(SPAN_IDS).long()
    if roll:  # the same tokens' spans, left-padded
        span_ids = torch.stack([torch.roll(row, sharer.capacity - int(n)) for row, n in zip(span_ids, sharer.lengths)])
    message = lt.summarize(
        adapter, s_cache, span_ids, 3, attention_mask=s_mask, receiver_cache=r_cache, receiver_attention_mask=r_mask
    )
    k, v = from_torch(lt.receive(adapter, message, r_cache, attention_mask=r_mask))
    return k, v, message.k.float().numpy()


def caches_for(kind: str) -> tuple[KVCache, KVCache]:
    # Shared context pairs positions (same capacity); LCF-X's sharer reads 16 tokens of its own.
    return random_cache(SHARER, 12 if kind != "lcfx" else 16, seed=1), random_cache(RECEIVER, 12, seed=2)


def unroll(x: np.ndarray, lengths, capacity: int) -> np.ndarray:
    """Undo `to_torch(roll=True)` on `[L, B, S, ...]`."""
    return np.stack([np.roll(x[:, b], -(capacity - int(n)), axis=1) for b, n in enumerate(lengths)], axis=1)


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    kind, options = CASES[request.param]
    adapter = random_adapter(kind, seed=3, latent_width=32, **options)
    root = tmp_path_factory.mktemp(request.param)
    source = save_adapter(adapter, root / "trained")
    return adapter, export_adapter(source, root / "f32"), export_adapter(source, root / "bf16", dtype="bfloat16")


def test_float32_export_matches_jax(exported):
    adapter, f32, _ = exported
    sharer, receiver = caches_for(adapter.spec.kind)
    want_k, want_v, want_message = jax_output(adapter, sharer, receiver)
    got_k, got_v, got_message = torch_output(lt.load_adapter(f32), sharer, receiver)
    changed = np.abs(want_k - np.asarray(receiver.k)).max()
    assert changed > 0.1, "the adapter should change the cache"
    diff = max(np.abs(got_k - want_k).max(), np.abs(got_v - want_v).max())
    print(f"{adapter.spec.describe()}: float32 max |diff| {diff:.2e} (residuals up to {changed:.2f})")
    assert diff <= 1e-5
    if want_message is not None:
        assert np.abs(got_message - want_message).max() <= 1e-5
    # Padding and closed gates: untouched entries and layers stay bit-identical.
    untouched = ~np.asarray(receiver.valid_mask())
    np.testing.assert_array_equal(got_k[:, untouched], np.asarray(receiver.k)[:, untouched])
    skipped = [t for t in range(RECEIVER.num_layers) if t not in adapter.spec.layers]
    np.testing.assert_array_equal(got_k[skipped], np.asarray(receiver.k)[skipped])
    if adapter.spec.gate_inference == "hard":  # a soft gate passes sigmoid(logit) even when "closed"
        np.testing.assert_array_equal(got_v[adapter.spec.layers[0]], np.asarray(receiver.v)[adapter.spec.layers[0]])
    # The gate audit reads each projector kind's own gate names, in both runtimes.
    np.testing.assert_array_equal(lt.load_adapter(f32).gates().numpy(), np.asarray(adapter.gate_logits()) > 0)


def test_left_padding_gives_the_same_entries(exported):
    adapter, f32, _ = exported
    sharer, receiver = caches_for(adapter.spec.kind)
    right_k, _, right_message = torch_output(lt.load_adapter(f32), sharer, receiver)
    left_k, _, left_message = torch_output(lt.load_adapter(f32), sharer, receiver, roll=True)
    np.testing.assert_allclose(unroll(left_k, LENGTHS, receiver.capacity), right_k, atol=1e-6)
    if right_message is not None:
        np.testing.assert_allclose(left_message, right_message, atol=1e-6)


def test_bfloat16_export_is_close(exported):
    adapter, _, bf16 = exported
    assert {t.dtype for t in load_file(str(bf16 / "adapter.safetensors")).values()} == {np.dtype("bfloat16")}
    sharer, receiver = caches_for(adapter.spec.kind)
    want_k, want_v, _ = jax_output(adapter, sharer, receiver)
    got_k, got_v, _ = torch_output(lt.load_adapter(bf16), sharer, receiver)
    scale = np.abs(want_k - np.asarray(receiver.k)).max()
    diff = max(np.abs(got_k - want_k).max(), np.abs(got_v - want_v).max())
    print(f"{adapter.spec.kind} bf16 export: max |diff| {diff:.2e} (residuals up to {scale:.2f})")
    assert diff <= 0.02 * scale
    # The same bf16 weights compute the same in lcf_jax and in PyTorch.
    same_k, same_v, _ = jax_output(load_adapter(bf16), sharer, receiver)
    same = max(np.abs(got_k - same_k).max(), np.abs(got_v - same_v).max())
    assert same <= 1e-5
    # bf16 arithmetic too (loaded with dtype=torch.bfloat16): bf16 tolerance.
    low_k, _, _ = torch_output(lt.load_adapter(bf16, dtype=torch.bfloat16), sharer, receiver)
    low = np.abs(low_k - want_k).max()
    print(f"  same bf16 weights in lcf_jax: {same:.2e}; bf16 arithmetic: {low:.2e}")
    assert low <= 0.05 * scale


def test_export_reimports_into_lcf_jax_identically(exported):
    adapter, f32, _ = exported
    again = load_adapter(f32)
    assert again.spec == adapter.spec
    for name, value in flat_params(adapter).items():
        np.testing.assert_array_equal(np.asarray(flat_params(again)[name]), np.asarray(value), err_msg=name)
    sharer, receiver = caches_for(adapter.spec.kind)
    for a, b in zip(jax_output(again, sharer, receiver), jax_output(adapter, sharer, receiver)):
        np.testing.assert_array_equal(a, b)


# -- from training runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """What `lcf train --config configs/tiny.py:lcfx` leaves in its work directory: Orbax checkpoints
    of steps 1 and 2 (written by the Checkpointer training uses, with optimizer state), config.json,
    and adapter/ + summary.json of step 1, as if a resumed run stopped early. The parameters are
    random instead of trained: compiling a training step would take most of this file's time budget
    (tests/test_train.py trains for real)."""
    workdir = tmp_path_factory.mktemp("train")
    config = load_config(TINY + ":lcfx")
    sharer, receiver = model_configs(config)
    options = dict(config.adapter.options)
    optimizer = make_optimizer(steps=2)
    checkpointer = Checkpointer(workdir / CHECKPOINTS_DIR, every=1, async_save=False)
    adapters = {}
    for step in (1, 2):
        adapters[step] = random_adapter("lcfx", sharer, receiver, seed=step, **options)
        state = init_state(nnx.state(adapters[step], nnx.Param), optimizer)
        checkpointer.save(step, dataclasses.replace(state, step=jnp.int32(step)), {"position": step})
    checkpointer.close()
    save_adapter(adapters[1], workdir / ADAPTER_DIR)
    (workdir / "summary.json").write_text(json.dumps({"steps": 1}))
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    return workdir, adapters


def same_params(directory, adapter) -> bool:
    got, want = flat_params(load_adapter(directory)), flat_params(adapter)
    return sorted(got) == sorted(want) and all(np.array_equal(got[n], want[n]) for n in want)


def test_export_from_a_train_workdir_and_its_orbax_checkpoints(trained, tmp_path, caplog):
    workdir, adapters = trained
    with caplog.at_level("WARNING"):
        assert same_params(export_adapter(workdir, tmp_path / "workdir"), adapters[1])  # its adapter/
    assert any("newer checkpoint (step 2)" in r.message for r in caplog.records)
    # The newest Orbax checkpoint, its architecture from the run's config.json.
    assert same_params(export_adapter(workdir / CHECKPOINTS_DIR, tmp_path / "orbax"), adapters[2])
    # A Python call from one checkpoint and the training config (a ConfigDict or its file).
    assert same_params(
        export_from_orbax(workdir / CHECKPOINTS_DIR, TINY + ":lcfx", tmp_path / "one", step=1), adapters[1]
    )
    # Without config.json (a run that never finished) the config must be given.
    (workdir / "config.json").rename(workdir / "config.moved")
    try:
        with pytest.raises(ValueError, match=r"no adapter/ and no config.json.*lcf export --config"):
            export_adapter(workdir / CHECKPOINTS_DIR / "2", tmp_path / "none")
        config = load_config(TINY + ":lcfx")
        assert same_params(
            export_adapter(workdir / CHECKPOINTS_DIR / "2", tmp_path / "two", config=config), adapters[2]
        )
    finally:
        (workdir / "config.moved").rename(workdir / "config.json")
    # PyTorch runs the export of the checkpoint as lcf_jax runs the adapter.
    sharer = random_cache(adapters[2].spec.sharer, 16, seed=5)
    receiver = random_cache(adapters[2].spec.receiver, 12, seed=6)
    want_k, _, _ = jax_output(adapters[2], sharer, receiver)
    got_k, _, _ = torch_output(lt.load_adapter(tmp_path / "orbax"), sharer, receiver)
    assert np.abs(got_k - want_k).max() <= 1e-5


def test_export_from_a_demo_workdir_takes_the_lcfx_adapter(tmp_path):
    lcfx = random_adapter("lcfx", seed=1, latent_width=16)
    save_adapter(lcfx, tmp_path / "demo" / "lcfx" / ADAPTER_DIR)
    save_adapter(random_adapter("lcfx", seed=2, latent_width=16), tmp_path / "demo" / "receiver_only" / ADAPTER_DIR)
    assert same_params(export_adapter(tmp_path / "demo", tmp_path / "out"), lcfx)


def test_bad_export_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing at"):
        export_adapter(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no adapter under .*lcf demo.*Orbax checkpoints"):
        export_adapter(tmp_path / "empty", tmp_path / "out")
    source = save_adapter(random_adapter("lcf", latent_width=16), tmp_path / "a")
    with pytest.raises(ValueError, match="is the adapter directory being exported"):
        export_adapter(source, source)
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_adapter(source, tmp_path / "out", dtype="float16")


# -- broken exports -------------------------------------------------------------------------------


@pytest.fixture
def export_dir(tmp_path):
    adapter = random_adapter("lcf", latent_width=16)
    return export_adapter(save_adapter(adapter, tmp_path / "a"), tmp_path / "export")


def test_wrong_kind_and_a_model_pair_it_was_not_built_for(export_dir):
    with pytest.raises(lt.AdapterFormatError, match="holds a 'lcf' adapter, expected 'lcfx'"):
        lt.load_adapter(export_dir, expect_kind="lcfx")
    sharer_hf = transformers.Qwen2Config(
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_size=32, head_dim=8
    )
    receiver_hf = transformers.Qwen3Config(
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, hidden_size=48, head_dim=16
    )
    adapter = lt.load_adapter(export_dir, sharer=sharer_hf, receiver=receiver_hf)  # the pair it was built for
    other = transformers.Qwen3Config(
        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, hidden_size=64, head_dim=16
    )
    with pytest.raises(
        lt.AdapterFormatError, match=r"receiver model has L=4 layers, K=4 kv heads.*built for a receiver"
    ):
        lt.load_adapter(export_dir, sharer=sharer_hf, receiver=other)
    with pytest.raises(lt.AdapterFormatError, match="sharer model has L=4 layers"):
        adapter.check_models(receiver_hf, receiver_hf)
    # A cache of another model is refused by name too.
    sharer, receiver = caches_for("lcf")
    wrong = KVCache(receiver.k[:3], receiver.v[:3], receiver.lengths)
    with pytest.raises(ValueError, match=r"receiver cache has L=3 layers.*built for a receiver with L=4"):
        lt.fuse(adapter, to_torch(sharer)[0], to_torch(wrong)[0])
    with pytest.raises(ValueError, match=r"summarize\(\) needs an lcfx adapter, this one is 'lcf'"):
        lt.summarize(adapter, to_torch(sharer)[0], SPAN_IDS[:, :12])


def test_the_input_cache_is_left_untouched_and_a_non_cache_refused(export_dir):
    adapter = lt.load_adapter(export_dir)
    sharer, receiver = caches_for("lcf")
    receiver_cache, _ = to_torch(receiver)
    before = from_torch(receiver_cache)
    fused = lt.fuse(adapter, to_torch(sharer)[0], receiver_cache)
    after = from_torch(receiver_cache)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert not np.array_equal(from_torch(fused)[0], before[0])
    with pytest.raises(TypeError, match="must be a transformers Cache"):
        lt.fuse(adapter, to_torch(sharer)[0], ((receiver_cache.layers[0].keys, receiver_cache.layers[0].values),))


def test_missing_and_misshapen_tensors_are_named(export_dir):
    tensors = load_file(str(export_dir / "adapter.safetensors"))
    tensors.pop("projectors.k_up.bias")
    tensors["projectors.down.kernel"] = np.zeros((4, 3, 16), np.float32)
    save_file(tensors, str(export_dir / "adapter.safetensors"))
    with pytest.raises(lt.AdapterFormatError) as err:
        lt.load_adapter(export_dir)
    assert "missing tensor 'projectors.k_up.bias'" in str(err.value)
    assert "'projectors.down.kernel' has shape (4, 3, 16), expected (4, 96, 16)" in str(err.value)
    (export_dir / "adapter.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(lt.AdapterFormatError, match="not a readable safetensors file"):
        lt.load_adapter(export_dir)
    (export_dir / "adapter.safetensors").unlink()
    with pytest.raises(lt.AdapterFormatError, match="has no adapter.safetensors"):
        lt.load_adapter(export_dir)


def test_corrupt_or_foreign_configs_are_named(export_dir, tmp_path):
    path = export_dir / "adapter_config.json"
    good = json.loads(path.read_text())
    path.write_text(path.read_text()[:50])
    with pytest.raises(lt.AdapterFormatError, match="is not valid JSON"):
        lt.load_adapter(export_dir)
    path.write_text(json.dumps({**good, "adapter": {**good["adapter"], "kind": "lora"}}))
    with pytest.raises(lt.AdapterFormatError, match="unknown adapter kind 'lora'"):
        lt.load_adapter(export_dir)
    path.write_text(json.dumps({**good, "adapter": {**good["adapter"], "layers": [0, 1, 7, 3]}}))
    with pytest.raises(lt.AdapterFormatError, match="not ascending.*not all receiver layers"):
        lt.load_adapter(export_dir)
    path.write_text(json.dumps({**good, "adapter": {**good["adapter"], "latent_width": "wide"}}))
    with pytest.raises(lt.AdapterFormatError, match="adapter field 'latent_width' is \"wide\""):
        lt.load_adapter(export_dir)
    path.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(lt.AdapterFormatError, match="format_version 99.*upgrade lcf_jax"):
        lt.load_adapter(export_dir)
    with pytest.raises(FileNotFoundError, match="has no adapter_config.json"):
        lt.load_adapter(tmp_path)
    with pytest.raises(FileNotFoundError, match="no adapter directory at"):
        lt.load_adapter(tmp_path / "missing")


def test_prefix_messages_are_refused_clearly(tmp_path):
    adapter = random_adapter("lcfx", latent_width=16, message_slots=2, message_injection="prefix")
    exported = lt.load_adapter(export_adapter(save_adapter(adapter, tmp_path / "a"), tmp_path / "e"))
    sharer, receiver = caches_for("lcfx")
    message = lt.summarize(exported, to_torch(sharer)[0], SPAN_IDS)
    assert tuple(message.k.shape) == (4, 2, 2, 2, 8)  # the message itself is computed
    with pytest.raises(NotImplementedError, match="prefix"):
        lt.receive(exported, message, to_torch(receiver)[0])


# -- without JAX ----------------------------------------------------------------------------------


def test_lcf_jax_torch_runs_where_jax_cannot_be_imported(tmp_path):
    adapter = random_adapter("lcfx", seed=4, latent_width=16)
    export_adapter(save_adapter(adapter, tmp_path / "a"), tmp_path / "export")
    sharer, receiver = caches_for("lcfx")
    want_k, _, _ = jax_output(adapter, sharer, receiver)
    np.save(tmp_path / "sharer_k.npy", np.asarray(sharer.k))
    np.save(tmp_path / "sharer_v.npy", np.asarray(sharer.v))
    np.save(tmp_path / "receiver_k.npy", np.asarray(receiver.k))
    np.save(tmp_path / "receiver_v.npy", np.asarray(receiver.v))
    script = textwrap.dedent(
        f"""
        import sys
        for name in ("jax", "jaxlib", "flax", "optax", "orbax"):
            sys.modules[name] = None  # any import of them now fails
        import numpy as np, torch
        from transformers import DynamicCache
        import lcf_jax.torch as lt

        d = {str(tmp_path)!r}
        def cache(name, lengths):
            k = torch.from_numpy(np.load(f"{{d}}/{{name}}_k.npy")).transpose(2, 3)
            v = torch.from_numpy(np.load(f"{{d}}/{{name}}_v.npy")).transpose(2, 3)
            mask = torch.arange(k.shape[3])[None] < torch.tensor(lengths)[:, None]
            return DynamicCache([(k[i], v[i]) for i in range(k.shape[0])]), mask
        adapter = lt.load_adapter(f"{{d}}/export")
        sharer, sharer_mask = cache("sharer", {LENGTHS})
        receiver, receiver_mask = cache("receiver", {LENGTHS})
        span_ids, num_spans = lt.span_ids_from_lengths([[5, 6, 5], [4, 5]], width=16)
        message = lt.summarize(adapter, sharer, span_ids, num_spans, attention_mask=sharer_mask)
        out = lt.receive(adapter, message, receiver, attention_mask=receiver_mask)
        np.save(f"{{d}}/out_k.npy", np.stack([layer.keys.transpose(1, 2).numpy() for layer in out.layers]))
        loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in ("jax", "flax"))
        print("jax modules:", loaded)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "jax modules: []" in result.stdout
    assert np.abs(np.load(tmp_path / "out_k.npy") - want_k).max() <= 1e-5


# -- end to end with transformers models -----------------------------------------------------------


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """Tiny random transformers models with a character tokenizer (the tiny pair's shapes, weights
    N(0, 0.15) so greedy choices are clear-cut), saved and loaded by lcf_jax too."""
    root = tmp_path_factory.mktemp("hf")
    tokenizer = tiny_tokenizer()
    text = dict(vocab_size=100, eos_token_id=3, pad_token_id=1, max_position_embeddings=256)
    shapes = {
        "sharer": ("qwen2", dict(hidden_size=32, num_hidden_layers=3, num_key_value_heads=2, head_dim=8)),
        "receiver": ("qwen3", dict(hidden_size=48, num_hidden_layers=4, num_key_value_heads=2, head_dim=16)),
    }
    pair = []
    for seed, (role, (family, shape)) in enumerate(shapes.items()):
        hf = tiny_hf_model(family, seed=seed, num_attention_heads=4, intermediate_size=64, **shape, **text)
        directory = save_tiny(hf, root / role)
        tokenizer.save_pretrained(directory)
        pair.append((lcf_jax.load_model(directory), hf))
    (sharer, hf_sharer), (receiver, hf_receiver) = pair
    return sharer, receiver, hf_sharer, hf_receiver


PROMPTS = ["What is 2+2? Think.", "Name a colour, please", "Hi"]
CONTEXTS = [["Alpha beta.\n", "Gamma delta epsilon.\n"], ["One two three.\n"], ["x\n", "", "yz\n", "Long tail here.\n"]]


@pytest.mark.parametrize("case", ["lcf", "lcfx_conditioned"])
def test_generate_with_transformers_gives_lcf_jax_greedy_tokens(hf_pair, tmp_path, case):
    sharer, receiver, hf_sharer, hf_receiver = hf_pair
    kind, options = CASES[case]
    adapter = random_adapter(kind, sharer, receiver, seed=7, latent_width=32, **options)
    torch_adapter = lt.load_adapter(export_adapter(save_adapter(adapter, tmp_path / "a"), tmp_path / "e"))
    tokenizer = receiver.tokenizer
    prompts = [lcf_jax.sampling.chat_prompt(receiver, p) for p in PROMPTS]
    stop = lcf_jax.sampling.stop_token_ids(receiver)
    assert lt.stop_token_ids(hf_receiver, tokenizer) == stop
    contexts = None
    if kind == "lcfx":
        contexts = [[tokenizer.encode(p, add_special_tokens=False) for p in row] for row in CONTEXTS]
        out, _ = communicate.answer_different_contexts(adapter, sharer, receiver, contexts, prompts, 16)
        got = lt.generate(hf_sharer, hf_receiver, tokenizer, prompts, adapter=torch_adapter, sharer_contexts=contexts)
    else:
        out = communicate.answer_shared_context(adapter, sharer, receiver, prompts, 16)
        got = lt.generate(hf_sharer, hf_receiver, tokenizer, prompts, adapter=torch_adapter)
    want = out.token_lists(stop_tokens=stop)
    assert got == want
    one_by_one = dict(adapter=torch_adapter, sharer_contexts=contexts if kind == "lcfx" else None, batch_size=1)
    assert lt.generate(hf_sharer, hf_receiver, tokenizer, prompts, **one_by_one) == want  # no padding at all
    assert got != lt.generate(hf_sharer, hf_receiver, tokenizer, prompts), "the adapter should change some answers"


KV_CASES = {
    "all": dict(policy="all"),
    "attention": dict(policy="attention", entries=4),
    "query-span": dict(policy="query", entries=6, unit="span"),
    "attention-agree": dict(policy="attention", entries=0.5, agree=True),
}


@pytest.mark.parametrize("case", list(KV_CASES))
def test_kv_messages_in_transformers_give_lcf_jax_greedy_tokens(hf_pair, case):
    """One model as sharer and receiver: the entries transformers picks, and the answers it gives
    with them, are lcf_jax's (padded rows of different context lengths)."""
    _, model, _, hf = hf_pair
    tokenizer, options = model.tokenizer, dict(KV_CASES[case])
    opening = lcf_jax.sampling.chat_prompt(model, "Facts:")[:-4]
    contexts = [[tokenizer.encode(p, add_special_tokens=False) for p in row if p] for row in CONTEXTS]
    rests = [tokenizer.encode(f" Q: {p}\nA:", add_special_tokens=False) for p in PROMPTS]
    if options["policy"] == "query":
        options["questions"] = [r[:6] for r in rests]
    if options.get("entries") and not isinstance(options["entries"], float):
        options["clip"] = True
    out, message = communicate.answer_with_kv(model, opening, contexts, rests, 12, **options)
    want = out.token_lists(stop_tokens=lcf_jax.sampling.stop_token_ids(model))
    got, sent = lt.generate_kv(hf, tokenizer, opening, contexts, rests, max_new_tokens=12, **options)
    valid = np.asarray(message.valid)
    assert sent.valid.sum(1).tolist() == valid.sum(1).tolist()
    for b in range(len(rests)):
        assert np.array_equal(
            sent.positions[:, b][:, sent.valid[b]].numpy(), np.asarray(message.positions)[:, b][:, valid[b]]
        )
    assert got == want and any(want)
    assert sent.nbytes == message.nbytes
    if options["policy"] != "all":
        assert valid.sum() < sum(len(t) for row in contexts for t in row)  # some entries were left out


@pytest.mark.parametrize("width", [0, 16], ids=["linear", "trunk"])
def test_translated_kv_messages_in_transformers_give_lcf_jax_greedy_tokens(hf_pair, tmp_path, width):
    """Two models (qwen2 3 layers K2 H8 -> qwen3 4 layers K2 H16, one tokenizer): a translator
    fitted and saved by lcf_jax (linear, or with a trunk whose outputs are not zero), loaded by
    lcf_jax.torch, gives the same answers."""
    from lcf_jax.data.split_qa import generate_questions
    from lcf_jax.messages.translate import fit_translator, init_trunk, save_translator

    sharer, receiver, hf_sharer, hf_receiver = hf_pair
    tokenizer = receiver.tokenizer
    texts = [
        tokenizer.encode(p, add_special_tokens=False)
        for q in generate_questions("train", 6, seed=2)
        for p in q.sharer_context
    ]
    translator, _ = fit_translator(sharer, receiver, texts)
    if width:
        trunk = init_trunk(sharer.config, receiver.config, width, seed=1)
        rng = np.random.default_rng(0)
        trunk |= {n: (rng.standard_normal(trunk[n].shape) * 0.05).astype(np.float32) for n in ("k_up", "v_up")}
        translator = dataclasses.replace(translator, arrays=translator.arrays | trunk)
    torch_translator = lt.load_kv_translator(save_translator(translator, tmp_path / "t"))
    opening = lcf_jax.sampling.chat_prompt(receiver, "Facts:")[:-4]
    contexts = [[tokenizer.encode(p, add_special_tokens=False) for p in row if p] for row in CONTEXTS]
    rests = [tokenizer.encode(f" Q: {p}\nA:", add_special_tokens=False) for p in PROMPTS]
    out, _ = communicate.answer_with_kv(receiver, opening, contexts, rests, 12, sharer=sharer, translator=translator)
    want = out.token_lists(stop_tokens=lcf_jax.sampling.stop_token_ids(receiver))
    got, _ = lt.generate_kv(hf_receiver, tokenizer, opening, contexts, rests, max_new_tokens=12, sharer=hf_sharer,
                            translator=torch_translator)  # fmt: skip
    assert got == want and any(want)
    with pytest.raises(ValueError, match="pass both or neither"):
        lt.generate_kv(hf_receiver, tokenizer, opening, contexts, rests, translator=torch_translator)


def test_kv_messages_in_transformers_refuse_a_cache_without_the_opening(hf_pair):
    _, model, _, hf = hf_pair
    message = lt.send_kv(hf, [2, 5, 6], [[[10, 11, 12]]])
    from lcf_jax.torch.generate import Runner

    cache, mask = Runner(hf).prefill([[2, 5, 6, 7]])
    with pytest.raises(ValueError, match="exactly the opening"):
        lt.receive_kv(message, cache, mask)
    with pytest.raises(ValueError, match="more than the context holds"):
        lt.send_kv(hf, [2, 5], [[[10, 11]]], entries=3, policy="attention")


# -- the real model --------------------------------------------------------------------------------


@pytest.mark.real_model
def test_smollm2_lcfx_answers_agree_between_lcf_jax_and_transformers(tmp_path):
    from lcf_jax.data.qa import sharer_spans
    from lcf_jax.data.split_qa import generate_questions
    from lcf_jax.eval.conditions import receiver_prompt
    from lcf_jax.loading.registry import _smollm2_gguf

    model = lcf_jax.load_model("smollm2-135m")
    path = _smollm2_gguf()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    adapter = random_adapter("lcfx", model.config, model.config, seed=0, latent_width=64)
    torch_adapter = lt.load_adapter(export_adapter(save_adapter(adapter, tmp_path / "a"), tmp_path / "e"))
    questions = generate_questions("test", 20, seed=1)
    prompts = [receiver_prompt(model, q, q.receiver_context) for q in questions]
    contexts = [sharer_spans(q, model.tokenizer) for q in questions]
    stop = lcf_jax.sampling.stop_token_ids(model)
    assert lt.stop_token_ids(hf, model.tokenizer) == stop
    # lcf_jax: communicate.answer_different_contexts step by step, so that the answers without the
    # adapter continue the same prefilled receiver cache.
    heads, lasts = communicate.split_last(prompts)
    receiver_cache = communicate.prefill(model, heads)
    message = communicate.send(adapter, model, contexts)
    fused = communicate.receive(adapter, message, receiver_cache)
    want = lcf_jax.generate(model, lasts, 16, cache=fused, bucket=1).token_lists(stop_tokens=stop)
    alone = lcf_jax.generate(model, lasts, 16, cache=receiver_cache, bucket=1).token_lists(stop_tokens=stop)
    got = lt.generate(hf, hf, model.tokenizer, prompts, adapter=torch_adapter, sharer_contexts=contexts)
    agree, changed = sum(g == w for g, w in zip(got, want)), sum(w != a for w, a in zip(want, alone))
    print(f"SmolLM2 LCF-X: {agree}/20 answers token-identical in transformers; the adapter changed {changed}/20")
    assert got == want and all(want), "every answer should agree, and none be empty"
    assert changed > 0, "the adapter should change some answers, or this test could not fail"
