"""Importing a fuser in the C2C reference implementation's released format (projector_config.json,
projector_{i}.json, projector_{i}.pt): parity with a PyTorch projector written with the reference's
parameter names and math, and clear errors for broken checkpoints or the wrong models."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from tiny_pair import RECEIVER, SHARER  # noqa: E402
from torch import nn  # noqa: E402

from lcf_jax.adapters.io import flat_params, load_adapter, save_adapter  # noqa: E402
from lcf_jax.export.c2c_import import import_c2c, is_c2c_checkpoint  # noqa: E402
from lcf_jax.kv import KVCache  # noqa: E402
from lcf_jax.loading.keymap import CheckpointError  # noqa: E402

HIDDEN = 32


class FFNLayer(nn.Module):
    """The reference's StandardFFNLayer: x + W2 GELU(W1 RMSNorm(x)), bias-free, eps 1e-6."""

    def __init__(self, width: int, inner: int):
        super().__init__()
        self.norm = nn.RMSNorm(width, eps=1e-6)
        self.w1 = nn.Linear(width, inner, bias=False)
        self.w2 = nn.Linear(inner, width, bias=False)

    def forward(self, x):
        return x + self.w2(nn.functional.gelu(self.w1(self.norm(x))))


class FFNStack(nn.Module):
    """The reference's RegularMLP: FFN layers under `blocks`."""

    def __init__(self, width: int, inner: int, n: int):
        super().__init__()
        self.blocks = nn.ModuleList([FFNLayer(width, inner) for _ in range(n)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class RefC2CProjector(nn.Module):
    """C2CProjector at inference (eval: hard gates) with the reference's names; caches (B, H, N, D)."""

    def __init__(self, init_args: dict, gates: tuple[float, float], seed: int):
        super().__init__()
        torch.manual_seed(seed)
        a = init_args
        in_dim, out_dim = a["source_dim"] * a["source_num_heads"], a["target_dim"] * a["target_num_heads"]
        hidden, inner = a["hidden_dim"], a["intermediate_dim"]
        self.target_shape = (a["target_num_heads"], a["target_dim"])
        for kind, logit in zip(("key", "value"), gates):
            setattr(self, f"{kind}_in", nn.Linear(in_dim + out_dim, hidden))
            setattr(self, f"{kind}_mlp1", FFNStack(hidden, inner, 1))
            setattr(self, f"{kind}_scalar_mlp2", FFNStack(hidden, hidden, 1))
            setattr(self, f"{kind}_scalar_head", nn.Linear(hidden, a["target_num_heads"]))
            setattr(self, f"{kind}_proj_mlp2", FFNStack(hidden, inner, a["num_layers"] - 2))
            setattr(self, f"{kind}_proj_out", nn.Linear(hidden, out_dim))
            setattr(self, f"{kind}_gate_logit", nn.Parameter(torch.tensor(float(logit))))
        self.register_buffer("gate_temperature", torch.tensor(1.0))
        with torch.no_grad():  # non-trivial norm weights, so a mis-mapped norm shows
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.uniform_(0.5, 1.5)

    def branch(self, kind: str, source, target):
        b, _, n, _ = source.shape
        heads, dim = self.target_shape
        flat = lambda x: x.transpose(1, 2).reshape(b, n, -1)  # per token: heads, then head dim
        h = getattr(self, f"{kind}_in")(torch.cat([flat(source), flat(target)], dim=-1))
        h = getattr(self, f"{kind}_mlp1")(h)
        projected = getattr(self, f"{kind}_proj_out")(getattr(self, f"{kind}_proj_mlp2")(h))
        projected = projected.view(b, n, heads, dim).transpose(1, 2)
        scalar = getattr(self, f"{kind}_scalar_head")(getattr(self, f"{kind}_scalar_mlp2")(h))
        scalar = torch.sigmoid(scalar.permute(0, 2, 1).unsqueeze(-1))
        gate = (getattr(self, f"{kind}_gate_logit").view(1, 1, 1, 1) > 0).float()
        return target + gate * scalar * projected

    def forward(self, source_kv, target_kv):
        return self.branch("key", source_kv[0], target_kv[0]), self.branch("value", source_kv[1], target_kv[1])


def init_args(**overrides) -> dict:
    """What the reference's training script passes to C2CProjector (and save_projector records)."""
    args = dict(
        source_dim=SHARER.head_dim,
        target_dim=RECEIVER.head_dim,
        source_num_heads=SHARER.num_kv_heads,
        target_num_heads=RECEIVER.num_kv_heads,
        hidden_dim=HIDDEN,
        intermediate_dim=HIDDEN,
        num_layers=3,
        dropout=0.1,
        initial_temperature=1.0,
        final_temperature=0.001,
        anneal_steps=1929,
        dtype=torch.float32,
    )
    return {**args, **overrides}


def write_checkpoint(directory, mapping: dict, gates: dict | None = None, **overrides) -> dict[int, RefC2CProjector]:
    """A checkpoint as the reference writes it; `mapping`: receiver layer -> [(sharer layer, projector)]."""
    directory.mkdir(parents=True, exist_ok=True)
    args = init_args(**overrides)
    used = sorted({p for pairs in mapping.values() for _, p in pairs})
    projectors = {}
    for p in used:
        proj = RefC2CProjector(args, (gates or {}).get(p, (0.5, 1.0)), seed=p)
        projectors[p] = proj
        torch.save(proj.state_dict(), directory / f"projector_{p}.pt")
        encoded = {
            k: ({"__type__": "torch.dtype", "value": str(v).split(".")[-1]} if k == "dtype" else v)
            for k, v in args.items()
        }
        (directory / f"projector_{p}.json").write_text(
            json.dumps({"class": "C2CProjector", "init_args": encoded}, indent=2)
        )
    # RosettaModel.projector_dict: {receiver model 0: {sharer model 1: {layer: [(sharer layer, projector)]}}}
    (directory / "projector_config.json").write_text(json.dumps({0: {1: mapping}}))
    return projectors


def random_caches(seed: int = 0, batch: int = 2, length: int = 5):
    rng = np.random.default_rng(seed)
    caches = []
    for config in (SHARER, RECEIVER):
        shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
        k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
        caches.append(KVCache(jnp.asarray(k), jnp.asarray(v), jnp.full((batch,), length, jnp.int32)))
    return caches


def check_parity(adapter, projectors, mapping):
    sharer, receiver = random_caches()
    dk, dv = adapter.fuse_residuals(sharer, receiver)
    fused = adapter.fuse(sharer, receiver)
    to_torch = lambda x: torch.from_numpy(np.array(x)).transpose(1, 2)  # [B, S, K, H] -> (B, H, N, D)
    for n, layer in enumerate(adapter.spec.layers):
        source, p = mapping[layer][0]
        with torch.no_grad():
            out = projectors[p](
                (to_torch(sharer.k[source]), to_torch(sharer.v[source])),
                (to_torch(receiver.k[layer]), to_torch(receiver.v[layer])),
            )
        want_k, want_v = (o.transpose(1, 2).numpy() for o in out)
        np.testing.assert_allclose(dk[n], want_k - np.asarray(receiver.k[layer]), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(dv[n], want_v - np.asarray(receiver.v[layer]), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(fused.k[layer], want_k, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(fused.v[layer], want_v, atol=1e-5, rtol=1e-5)
    for layer in set(range(RECEIVER.num_layers)) - set(adapter.spec.layers):
        np.testing.assert_array_equal(fused.k[layer], receiver.k[layer])
        np.testing.assert_array_equal(fused.v[layer], receiver.v[layer])
    return dk, dv


def test_all_layers_match_the_reference_projectors(tmp_path):
    # The training script's map: every receiver layer, last_aligned, projector index = receiver layer.
    offset = SHARER.num_layers - RECEIVER.num_layers
    mapping = {t: [(min(max(t + offset, 0), SHARER.num_layers - 1), t)] for t in range(RECEIVER.num_layers)}
    projectors = write_checkpoint(tmp_path / "final", mapping)  # the released layout: <pair>/final/
    assert is_c2c_checkpoint(tmp_path)
    adapter = import_c2c(tmp_path, SHARER, RECEIVER)
    spec = adapter.spec
    assert spec.kind == "c2c" and spec.layer_map == "last_aligned" and spec.hidden_width == HIDDEN
    assert spec.layers == tuple(range(RECEIVER.num_layers)) and spec.source_layers == (0, 0, 1, 2)
    np.testing.assert_allclose(adapter.gate_logits(), [[0.5, 1.0]] * RECEIVER.num_layers)
    check_parity(adapter, projectors, mapping)


def test_subset_map_shared_and_closed_gates(tmp_path):
    # Receiver layers 1 and 3 only, a map no named layer_map gives, projector 7's value gate closed.
    mapping = {1: [(2, 4), (0, 9)], 3: [(0, 7)]}
    projectors = write_checkpoint(tmp_path, mapping, gates={4: (2.0, 0.25), 7: (0.75, -0.5), 9: (1.0, 1.0)})
    (tmp_path / "projector_9.pt").unlink()  # listed second: never read (the reference uses the first pair)
    with pytest.warns(UserWarning, match="only uses the first"):
        adapter = import_c2c(tmp_path, SHARER, RECEIVER)
    assert adapter.spec.layers == (1, 3) and adapter.spec.source_layers == (2, 0)
    assert adapter.spec.layer_map == "custom"
    _, dv = check_parity(adapter, projectors, mapping)
    assert float(jnp.abs(dv[1]).max()) == 0.0  # closed gate: no value residual, as in the reference
    # The imported adapter saves and loads like any other.
    loaded = load_adapter(save_adapter(adapter, tmp_path / "lcf"), expect_kind="c2c")
    assert loaded.spec == adapter.spec
    for name, x in flat_params(adapter).items():
        np.testing.assert_array_equal(flat_params(loaded)[name], x)


def test_one_projector_shared_by_two_layers(tmp_path):
    mapping = {0: [(1, 0)], 2: [(1, 0)]}  # one projector read by two receiver layers
    projectors = write_checkpoint(tmp_path, mapping)
    adapter = import_c2c(tmp_path, SHARER, RECEIVER)
    check_parity(adapter, projectors, mapping)


@pytest.fixture
def checkpoint(tmp_path):
    mapping = {t: [(0, t)] for t in range(RECEIVER.num_layers)}
    write_checkpoint(tmp_path, mapping)
    return tmp_path


def edit_state(path, fn):
    state = torch.load(path, weights_only=True)
    fn(state)
    torch.save(state, path)


def test_missing_files_are_named(checkpoint, tmp_path_factory):
    (checkpoint / "projector_2.pt").unlink()
    with pytest.raises(CheckpointError, match=r"missing .*projector_2\.pt.*incomplete"):
        import_c2c(checkpoint, SHARER, RECEIVER)
    (checkpoint / "projector_1.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing .*projector_1\.json"):
        import_c2c(checkpoint, SHARER, RECEIVER)
    with pytest.raises(FileNotFoundError, match="projector_config.json"):
        import_c2c(tmp_path_factory.mktemp("empty"), SHARER, RECEIVER)


def test_missing_unexpected_and_misshapen_tensors_are_named(checkpoint):
    def drop(state):
        del state["value_scalar_head.bias"]
        state["key_mlp1.blocks.1.norm.weight"] = torch.ones(HIDDEN)

    edit_state(checkpoint / "projector_1.pt", drop)
    with pytest.raises(CheckpointError) as e:
        import_c2c(checkpoint, SHARER, RECEIVER)
    message = str(e.value)
    assert "projector_1.pt" in message
    assert f"missing tensor 'value_scalar_head.bias' (expected shape ({RECEIVER.num_kv_heads},))" in message
    assert "unexpected tensor 'key_mlp1.blocks.1.norm.weight'" in message

    edit_state(checkpoint / "projector_1.pt", lambda s: s.update({"value_scalar_head.bias": torch.zeros(2)}))
    edit_state(checkpoint / "projector_1.pt", lambda s: s.pop("key_mlp1.blocks.1.norm.weight"))
    edit_state(checkpoint / "projector_3.pt", lambda s: s.update({"key_proj_out.weight": torch.zeros(7, HIDDEN)}))
    out = RECEIVER.num_kv_heads * RECEIVER.head_dim
    with pytest.raises(
        CheckpointError,
        match=rf"projector_3\.pt.*'key_proj_out\.weight' has shape \(7, {HIDDEN}\), expected \({out}, {HIDDEN}\)",
    ):
        import_c2c(checkpoint, SHARER, RECEIVER)


def test_models_that_do_not_fit_the_fuser_are_refused(checkpoint):
    with pytest.raises(CheckpointError, match=r"receiver cache of 2 kv heads x 16 head dim.*receiver given has 2 x 8"):
        import_c2c(checkpoint, SHARER, dataclasses.replace(RECEIVER, head_dim=8))
    with pytest.raises(CheckpointError, match=r"sharer cache of 2 kv heads x 8 head dim.*sharer given has 1 x 8"):
        import_c2c(checkpoint, dataclasses.replace(SHARER, num_kv_heads=1, num_heads=2), RECEIVER)
    with pytest.raises(CheckpointError, match=r"fuses receiver layer 2 but the receiver given has 2 layers"):
        import_c2c(checkpoint, SHARER, dataclasses.replace(RECEIVER, num_layers=2))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(num_layers=4), "num_layers=3"),
        (dict(intermediate_dim=2 * HIDDEN), "intermediate_dim=64 differs from hidden_dim=32"),
    ],
)
def test_unsupported_projector_configs_are_refused(tmp_path, overrides, match):
    write_checkpoint(tmp_path, {0: [(0, 0)]}, **overrides)
    with pytest.raises(CheckpointError, match=match):
        import_c2c(tmp_path, SHARER, RECEIVER)


def test_other_projector_classes_and_several_sharers_are_refused(checkpoint):
    config = json.loads((checkpoint / "projector_config.json").read_text())
    config["0"]["2"] = config["0"]["1"]
    (checkpoint / "projector_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="exactly one sharer"):
        import_c2c(checkpoint, SHARER, RECEIVER)
    del config["0"]["2"]
    (checkpoint / "projector_config.json").write_text(json.dumps(config))
    payload = json.loads((checkpoint / "projector_0.json").read_text())
    (checkpoint / "projector_0.json").write_text(json.dumps({**payload, "class": "AllInOneProjector"}))
    with pytest.raises(CheckpointError, match="'AllInOneProjector' projector"):
        import_c2c(checkpoint, SHARER, RECEIVER)


def test_bfloat16_checkpoints_load_as_float32(tmp_path):
    # The reference trains and saves in the models' dtype (usually bfloat16).
    write_checkpoint(tmp_path, {2: [(1, 2)]}, dtype=torch.bfloat16)
    edit_state(tmp_path / "projector_2.pt", lambda s: s.update({k: v.to(torch.bfloat16) for k, v in s.items()}))
    state = torch.load(tmp_path / "projector_2.pt", weights_only=True)
    params = flat_params(import_c2c(tmp_path, SHARER, RECEIVER))
    assert all(x.dtype == jnp.float32 for x in params.values())
    np.testing.assert_array_equal(params["projectors.value_in.kernel"][0], state["value_in.weight"].float().numpy().T)
    np.testing.assert_array_equal(
        params["projectors.key_proj_mlp2.norm.weight"][0], state["key_proj_mlp2.blocks.0.norm.weight"].float().numpy()
    )
