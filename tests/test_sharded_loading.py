"""Frozen models loaded straight onto their shardings (per tensor, shard by shard), the sharding
rules covering every parameter of every model family and adapter kind (and the optimizer state
around them), and a training run whose models load sharded ending where placing them did."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file
from tiny_pair import tiny_text_models

from lcf_jax.adapters import build
from lcf_jax.config import load_config
from lcf_jax.errors import ShardingError
from lcf_jax.loading import load_model, place, save_hf
from lcf_jax.loading.keymap import StackedTensor
from lcf_jax.models import preset, preset_names
from lcf_jax.models.model import Model, abstract_transformer, flat_from_state
from lcf_jax.sharding import make_mesh, param_axes, param_sharding, tree_shardings
from lcf_jax.train.loop import put_global, train
from lcf_jax.train.step import init_state, make_optimizer

TINY = str(Path(__file__).resolve().parent.parent / "configs" / "tiny.py")


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 8
    return make_mesh(2, 2, 2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny pair (Qwen2 with qkv bias and a tied head; Qwen3 with q/k norms and its own head),
    written as HF directories."""
    root = tmp_path_factory.mktemp("models")
    return {name: save_hf(model, root / name) for name, model in zip(("sharer", "receiver"), tiny_text_models())}


def load_then_place(directory, mesh, dtype="float32"):
    """What train() did before: the whole model on the default device, then placed."""
    model = load_model(directory, dtype=dtype)
    return jax.tree.map(lambda x, s: put_global(np.asarray(x), s), model.params, tree_shardings(model.params, mesh))


def assert_same_arrays(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        name = jax.tree_util.keystr(path)
        assert a.sharding == b.sharding, name
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
        for shard in a.addressable_shards:  # each device holds its slice, and only that
            assert shard.data.shape == a.sharding.shard_shape(a.shape), name
            np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(b)[shard.index], err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("role", ["sharer", "receiver"])
def test_loading_onto_per_tensor_shardings_equals_loading_then_placing(saved, mesh, role, dtype):
    want = load_then_place(saved[role], mesh, dtype)
    shardings = tree_shardings(want, mesh)
    by_path = flat_from_state(shardings)
    for sharding in (
        lambda path, shape: param_sharding(path, shape, mesh),  # what train() passes
        shardings,  # the parameter tree's shardings
        by_path,  # {dotted path: sharding}
    ):
        model = load_model(saved[role], dtype=dtype, sharding=sharding)
        assert_same_arrays(model.params, want)
    specs = {path: s.spec for path, s in by_path.items()}
    assert specs["embed_tokens.embedding"] == P("tensor", "fsdp")
    assert specs["layers.self_attn.q_proj.kernel"] == P(None, "fsdp", "tensor")
    assert specs["layers.mlp.down_proj.kernel"] == P(None, "tensor", "fsdp")
    assert specs["layers.self_attn.k_proj.kernel"] == P(None, "fsdp", "tensor")
    if role == "receiver":
        assert specs["lm_head.kernel"] == P("fsdp", "tensor")
        assert specs["layers.self_attn.q_norm.weight"] == P(None, None)
    else:
        assert specs["layers.self_attn.q_proj.bias"] == P(None, "tensor")


def test_one_sharding_for_every_tensor_and_none_still_work(saved, mesh):
    plain = load_model(saved["receiver"])
    replicated = NamedSharding(mesh, P())
    model = load_model(saved["receiver"], sharding=replicated)
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(plain.params)):
        assert a.sharding == replicated and b.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ShardingError, match=r"no sharding for layers\..*layers\.mlp\.up_proj\.kernel"):
        load_model(saved["receiver"], sharding={"embed_tokens.embedding": replicated})
    with pytest.raises(TypeError, match="sharding must be"):
        load_model(saved["receiver"], sharding="fsdp")


def test_a_gguf_file_loads_onto_per_tensor_shardings(tmp_path, mesh):
    from hf_tiny import tiny_hf_model
    from test_loading import write_gguf

    path = tmp_path / "llama.gguf"
    write_gguf(tiny_hf_model("llama", num_attention_heads=4, num_key_value_heads=2, head_dim=12), path, "llama")
    model = load_model(path, sharding=lambda p, shape: param_sharding(p, shape, mesh))
    assert_same_arrays(model.params, load_then_place(path, mesh))


class Recording:
    """A host tensor that records which slices are read from it."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.dtype, self.reads = array, array.shape, array.dtype, []

    def __getitem__(self, index):
        self.reads.append(tuple((s.start, s.stop) for s in index))
        return self.array[index]


def test_placing_reads_each_held_slice_once_and_never_the_whole_tensor(mesh):
    array = np.arange(4 * 8 * 6, dtype=np.float32).reshape(4, 8, 6)
    source = Recording(array)
    sharding = NamedSharding(mesh, P(None, "fsdp", "tensor"))  # 4 distinct slices, each on 2 devices
    placed = place(source, sharding, np.dtype("bfloat16"))
    assert len(source.reads) == len(set(source.reads)) == 4
    assert ((None, None), (0, 8), (0, 6)) not in source.reads
    assert placed.dtype == np.dtype("bfloat16") and placed.sharding == sharding
    np.testing.assert_array_equal(np.asarray(placed, np.float32), array.astype("bfloat16").astype(np.float32))


@pytest.mark.parametrize("transform", ["none", "transpose"])
def test_a_stacked_tensor_reads_only_the_layers_and_slices_indexed(transform):
    hf_layers = {f"model.layers.{i}.w": np.arange(6 * 10, dtype=np.float32).reshape(6, 10) + 100 * i for i in range(5)}
    reads = []

    def read(key):
        reads.append(key)
        return hf_layers[key]

    ours = [a.T if transform == "transpose" else a for a in hf_layers.values()]
    whole = np.stack(ours)
    view = StackedTensor(read, list(hf_layers), transform, ours[0].shape)
    assert (view.shape, view.ndim) == (whole.shape, 3) and not reads
    index = (slice(2, 4), slice(1, 3), slice(None))  # as jax.make_array_from_callback passes it
    np.testing.assert_array_equal(view[index], whole[index])
    assert reads == ["model.layers.2.w", "model.layers.3.w"]
    for index in (3, -1, (slice(2, 4), ...), (..., 0), slice(None, None, 2), slice(0, 0)):
        np.testing.assert_array_equal(view[index], whole[index], err_msg=str(index))
    reads.clear()
    np.testing.assert_array_equal(np.asarray(view), whole)
    assert np.asarray(view, dtype=np.float16).dtype == np.float16 and len(reads) == 2 * len(hf_layers)
    with pytest.raises(TypeError, match="ints, slices and one Ellipsis"):
        view[np.array([0, 2])]
    with pytest.raises(IndexError, match="layer 5 is out of range"):
        view[5]


def record_stacked_reads(monkeypatch) -> list[tuple[StackedTensor, tuple, list[str]]]:
    """(view, index, the keys its reader was asked for) of every StackedTensor index taken while
    loading, and fails on a reader call outside one (a view read whole)."""
    log = []
    init, getitem = StackedTensor.__init__, StackedTensor.__getitem__

    def logging_init(self, read, keys, transform, layer_shape):
        def logged(key):
            assert self.indexing, f"{key} read outside an index of its StackedTensor"
            self.reads.append(key)
            return read(key)

        self.reads, self.indexing = [], False
        init(self, logged, keys, transform, layer_shape)

    def logging_getitem(self, index):
        start, self.indexing = len(self.reads), True
        try:
            return getitem(self, index)
        finally:
            self.indexing = False
            log.append((self, index, self.reads[start:]))

    monkeypatch.setattr(StackedTensor, "__init__", logging_init)
    monkeypatch.setattr(StackedTensor, "__getitem__", logging_getitem)
    return log


def split_layers(mesh):
    """Stacked tensors split 4 ways over their layers (and in 2 over their last axis where it is
    even), everything else as train() places it."""

    def sharding(path, shape):
        if not path.startswith("layers."):
            return param_sharding(path, shape, mesh)
        last = "tensor" if shape[-1] % 2 == 0 else None
        return NamedSharding(mesh, P(("data", "fsdp"), *[None] * (len(shape) - 2), last))

    return sharding


@pytest.mark.parametrize("kind", ["safetensors", "gguf"])
def test_a_host_reads_only_the_layers_of_the_shards_it_places(saved, mesh, kind, tmp_path, monkeypatch):
    if kind == "gguf":
        from hf_tiny import tiny_hf_model
        from test_loading import write_gguf

        source = tmp_path / "llama.gguf"
        hf = tiny_hf_model("llama", num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=12)
        write_gguf(hf, source, "llama")
    else:
        source = saved["receiver"]  # 4 layers
    want = load_model(source)
    log = record_stacked_reads(monkeypatch)
    sharding = split_layers(mesh)
    model = load_model(source, sharding=sharding)
    for (path, a), b in zip(flat_from_state(model.params).items(), jax.tree.leaves(want.params)):
        assert a.sharding == sharding(path, a.shape), path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)
    read_by_view: dict[int, set[int]] = {}
    for view, index, keys in log:  # each shard callback read its one layer, and only that
        layers = [int(re.match(r"model\.layers\.(\d+)\.", key).group(1)) for key in keys]
        assert index[0].stop - index[0].start == 1 and layers == [index[0].start], (keys, index)
        read_by_view.setdefault(id(view), set()).update(layers)
    assert len(read_by_view) == sum(path.startswith("layers.") for path in flat_from_state(model.params))
    assert all(layers == {0, 1, 2, 3} for layers in read_by_view.values())


def model_variants():
    """Every preset, plus the settings no preset has: an untied head, attention-output and MLP biases."""
    configs = {name: preset(name) for name in preset_names()}
    base = preset("llama-3.2-1b")
    configs["llama-untied-o-mlp-bias"] = dataclasses.replace(
        base, tie_word_embeddings=False, o_bias=True, mlp_bias=True
    )
    return configs


@pytest.mark.parametrize("name", sorted(model_variants()))
def test_every_model_parameter_has_a_sharding_rule(name, mesh):
    config = model_variants()[name]
    _, params = abstract_transformer(config, "float32")
    shardings = flat_from_state(tree_shardings(params, mesh))  # raises on a parameter no rule names
    for path, sharding in shardings.items():
        if path.endswith(("kernel", "embedding")):  # every matrix is split over the mesh somewhere
            assert any(axis is not None for axis in sharding.spec), path


ADAPTERS = {
    "lcf": ("lcf", {}),
    "c2c": ("c2c", {"hidden_width": 64}),
    "lcfx": ("lcfx", {}),
    "lcfx-standardize-conditioned": ("lcfx", {"message_norm": "standardize", "receiver_conditioned": True}),
    "lcfx-prefix-slots": ("lcfx", {"message_slots": 3, "message_injection": "prefix", "slot_query_init": "normal"}),
}


@pytest.mark.parametrize("pool_lr_scale", [1.0, 10.0])
@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_every_adapter_parameter_and_optimizer_leaf_has_a_sharding_rule(name, pool_lr_scale, mesh):
    kind, options = ADAPTERS[name]
    optimizer = make_optimizer(pool_lr_scale=pool_lr_scale)
    control = kind == "lcfx"

    def fresh():
        adapter = build(kind, "qwen2.5-0.5b", "qwen3-0.6b", latent_width=64, **options)
        return init_state(nnx.state(adapter, nnx.Param), optimizer, control=control)

    state = jax.eval_shape(fresh)
    shardings = tree_shardings(state, mesh)  # raises on a leaf no rule names
    assert shardings.step.spec == P()
    params = flat_from_state(shardings.params)
    moments = [s for s in jax.tree.leaves(shardings.opt_state) if s.spec != P()]
    assert len(moments) == 2 * len(params)  # Adam's mu and nu shard like their parameters
    if "standardize" in name:
        # [L, keys/values, slots, kv_heads, head_dim]: like the slot queries, kv heads over `tensor`.
        assert params["pool.norm_shift"].spec == params["pool.norm_scale"].spec == P(None, None, None, "tensor", None)
        assert params["pool.q_layer"].spec == P(None, None, "tensor", None)


def test_a_parameter_without_a_rule_is_an_error_naming_it(mesh):
    tree = {"projectors": {"k_up": {"kernel": jax.ShapeDtypeStruct((2, 8, 8), np.float32)}}, "mystery": {}}
    tree["mystery"]["weights"] = jax.ShapeDtypeStruct((4, 8), np.float32)
    with pytest.raises(ShardingError, match=r"'mystery\.weights'.*PARAM_AXES in lcf_jax/sharding\.py"):
        tree_shardings(tree, mesh)
    with pytest.raises(ShardingError, match=r"'pool\.q_base'.*\[3\] dimensions, it has 2"):
        param_axes("pool.q_base", 2)
    assert param_axes("opt_state.1.inner_states.pool.inner_state.0.mu.pool.q_base", 3) == (
        "layers",
        "kv_heads",
        "head_dim",
    )


def test_training_on_models_loaded_sharded_ends_where_placing_them_ended(saved, tmp_path):
    """train() loading the checkpoints onto their shardings against train() given the same models
    loaded whole (placed as before): the same losses, adapter and summary."""
    settings = ["train.steps=3", "checkpoint.async_save=false", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    settings += ["data.count=64"]

    def config():
        config = load_config(TINY, settings)
        with config.unlocked():
            config.sharer, config.receiver = str(saved["sharer"]), str(saved["receiver"])
        return config

    loaded = train(config(), tmp_path / "sharded", progress=False)
    models = tuple(load_model(saved[role]) for role in ("sharer", "receiver"))
    placed = train(config(), tmp_path / "placed", progress=False, models=models)
    assert loaded == placed
    lines = {
        name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("sharded", "placed")
    }
    losses = {name: [r["loss"] for r in records if "loss" in r] for name, records in lines.items()}
    assert len(losses["sharded"]) == 3 and losses["sharded"] == losses["placed"]
    adapters = {name: load_file(tmp_path / name / "adapter" / "adapter.safetensors") for name in lines}
    assert set(adapters["sharded"]) == set(adapters["placed"])
    for key, value in adapters["placed"].items():
        np.testing.assert_array_equal(adapters["sharded"][key], value, err_msg=key)


def test_standardized_lcfx_trains_the_same_on_one_device_and_a_2x2x2_mesh(tmp_path):
    """The message standardisation's shift and scale are split over `tensor` (their kv heads) now,
    not replicated: the calibration and the steps must not change."""
    tiny = TINY + ":lcfx"
    settings = ["train.steps=3", "checkpoint.async_save=false", "data.count=64", "adapter.num_spans=4"]

    def run(name, *mesh):
        config = load_config(tiny, [*settings, *mesh])
        with config.unlocked():
            config.adapter.options.message_norm = "standardize"
        train(config, tmp_path / name, progress=False)
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in records if "loss" in r], load_file(
            tmp_path / name / "adapter" / "adapter.safetensors"
        )

    one, one_adapter = run("one", "mesh.num_devices=1")
    cube, cube_adapter = run("cube", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    np.testing.assert_allclose(cube, one, rtol=1e-5)
    assert any("norm_scale" in key for key in one_adapter)
    for key, value in one_adapter.items():
        np.testing.assert_allclose(cube_adapter[key], value, rtol=1e-4, atol=1e-6, err_msg=key)


def test_random_models_are_placed_and_loaded_ones_kept():
    """`placed` keeps an array already on its sharding (no host round trip) and places the rest."""
    from lcf_jax.train.loop import placed

    mesh = make_mesh(8)
    model = Model.random(tiny_text_models()[0].config)
    shardings = tree_shardings(model.params, mesh)
    once = jax.tree.map(placed, model.params, shardings)
    twice = jax.tree.map(placed, once, shardings)
    for a, b, s in zip(jax.tree.leaves(once), jax.tree.leaves(twice), jax.tree.leaves(shardings)):
        assert a is b and a.sharding == s
