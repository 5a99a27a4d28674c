"""The device mesh `("data", "fsdp", "tensor")` and the one table that maps logical axis names to it.

Code names axes logically (`batch`, `embed`, `mlp`, ...); `RULES` says which mesh axes each one is
split over. A parameter's logical axes come from its path (`param_axes`, by the `PARAM_AXES` table),
so the same jitted step runs unchanged from one CPU to a pod: only the mesh shape changes. A
dimension that its mesh axes do not divide is replicated instead, never padded. A parameter that
no rule names is an error (`ShardingError`), not silently replicated: on a pod a forgotten rule
would put a full copy of a large tensor on every device.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lcf_jax.errors import ShardingError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes it is split over (None: replicated)
RULES: dict[str, tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "layers": None,
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "heads": ("tensor",),
    "kv": ("tensor",),
    "mlp": ("tensor",),
    "norm": None,
    "cache_seq": None,
    "kv_heads": ("tensor",),
    "head_dim": None,
    "seq": None,
    "adapter_in": ("fsdp",),
    # Adapter output dims stay replicated: with the latent axis (which the LCF projector splits into
    # K and V halves) split over `tensor`, XLA's CPU SPMD partitioner produced wrong gradients for the
    # trunk (forward exact) on a 2x2x2 mesh. Adapters are small; fsdp over their inputs suffices.
    "adapter_out": None,
    "scalar": None,
}

# parameter path regex -> logical axes, one per dimension, for decoders, adapters and the training
# state around them (see `param_axes`; None replicates a dimension)
PARAM_AXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"embed_tokens\.embedding", ("vocab", "embed")),
    (r"lm_head\.kernel", ("embed", "vocab")),
    (r"norm\.weight", ("norm",)),
    (r"layers\.self_attn\.q_proj\.kernel", ("layers", "embed", "heads")),
    (r"layers\.self_attn\.[kv]_proj\.kernel", ("layers", "embed", "kv")),
    (r"layers\.self_attn\.o_proj\.kernel", ("layers", "heads", "embed")),
    (r"layers\.self_attn\.q_proj\.bias", ("layers", "heads")),
    (r"layers\.self_attn\.[kv]_proj\.bias", ("layers", "kv")),
    (r"layers\.self_attn\.o_proj\.bias", ("layers", "embed")),
    (r"layers\.mlp\.(gate|up)_proj\.kernel", ("layers", "embed", "mlp")),
    (r"layers\.mlp\.down_proj\.kernel", ("layers", "mlp", "embed")),
    (r"layers\.mlp\.(gate|up)_proj\.bias", ("layers", "mlp")),
    (r"layers\.mlp\.down_proj\.bias", ("layers", "embed")),
    (r"layers\..*\.weight", ("layers", "norm")),  # the stacked RMSNorms
    # Adapters: every parameter is stacked over its kept layers.
    (r"(projectors|pool)\..*\.kernel", ("layers", "adapter_in", "adapter_out")),
    (r"(projectors|pool)\..*\.(bias|weight)", ("layers", "adapter_out")),
    (r"(projectors|pool)\..*gate_logit", ("layers",)),
    (r"pool\.q_base", ("layers", "kv_heads", "head_dim")),
    (r"pool\.q_layer", ("layers", None, "kv_heads", "head_dim")),
    # LCF-X message_norm="standardize": [L, keys/values, slots, kv_heads, head_dim], like q_layer.
    (r"pool\.norm_(shift|scale)", ("layers", None, None, "kv_heads", "head_dim")),
    # Scalars of the training state (TrainState.step, optax's step counts): nothing to split.
    (r"(step|count)", ()),
)
CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")
_COMPILED = [(re.compile(p), axes) for p, axes in PARAM_AXES]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `("data", "fsdp", "tensor")` mesh over all (or the given) devices; `-1` for `data` takes
    whatever the other two leave."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp < 1 or tensor < 1 or n % (fsdp * tensor):
        raise ShardingError(f"mesh fsdp={fsdp} x tensor={tensor} does not divide the {n} devices")
    if data == -1:
        data = n // (fsdp * tensor)
    if data * fsdp * tensor != n:
        raise ShardingError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} != {n} devices")
    return Mesh(np.asarray(devices).reshape(data, fsdp, tensor), MESH_AXES)


def logical_spec(
    axes: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: Mapping[str, tuple[str, ...] | None] = RULES,
) -> PartitionSpec:
    """The PartitionSpec of logical `axes`. Raises if two dimensions claim the same mesh axis; with
    `shape` and `mesh`, a dimension its mesh axes do not divide is replicated."""
    used: dict[str, str] = {}
    out: list[Any] = []
    for i, name in enumerate(axes):
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise ShardingError(f"unknown logical axis {name!r}; the rules name {sorted(rules)}")
        mesh_axes = rules[name]
        if not mesh_axes:
            out.append(None)
            continue
        for axis in mesh_axes:
            if axis in used:
                raise ShardingError(f"logical axes {used[axis]!r} and {name!r} both map to mesh axis {axis!r}")
            used[axis] = name
        if shape is not None and mesh is not None:
            size = int(np.prod([mesh.shape[a] for a in mesh_axes]))
            if shape[i] % size:
                out.append(None)
                continue
        out.append(mesh_axes[0] if len(mesh_axes) == 1 else tuple(mesh_axes))
    return PartitionSpec(*out)


def param_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    """Logical axes of a parameter (or of a training-state leaf) from its dotted path: the
    `PARAM_AXES` rules that match the whole path or, failing that, its longest dotted suffix that a
    rule matches (optimizer states nest a parameter's own path under theirs:
    `opt_state.1.0.mu.projectors.down.kernel`); the first of them of rank `ndim`. No rule, or none of
    that rank: a `ShardingError` naming the path."""
    names = path.split(".")
    for start in range(len(names)):
        suffix = ".".join(names[start:])
        ranks = [axes for regex, axes in _COMPILED if regex.fullmatch(suffix)]
        for axes in ranks:
            if len(axes) == ndim:
                return axes
        if ranks:
            raise ShardingError(
                f"the sharding rules for {path!r} give {sorted({len(a) for a in ranks})} dimensions, it has {ndim}: "
                "correct its entry in PARAM_AXES (lcf_jax/sharding.py) to one logical axis per dimension"
            )
    raise ShardingError(
        f"no sharding rule for {path!r} ({ndim} dimensions): add a (path regex, logical axes) entry to "
        "PARAM_AXES in lcf_jax/sharding.py, with one logical axis per dimension (a name from RULES splits "
        'that dimension over the mesh, None keeps it whole), e.g. (r"pool\\.my_param", ("layers", None))'
    )


def _dotted(path) -> str:
    """`DictKey('projectors'), ..., GetAttrKey('value')` -> "projectors...": nnx Variables add `.value`."""
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return ".".join(names[:-1] if names and names[-1] == "value" else names)


def param_sharding(path: str, shape: Sequence[int], mesh: Mesh) -> NamedSharding:
    """The NamedSharding of the parameter at dotted `path` ("layers.mlp.up_proj.kernel") of `shape`:
    what `tree_shardings` gives it, and what `load_model(sharding=...)` takes per tensor."""
    shape = tuple(shape)
    return NamedSharding(mesh, logical_spec(param_axes(path, len(shape)), shape, mesh))


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for every array leaf of a parameter (or training state) pytree, by path.
    Optimizer moments have their parameter's path inside them, so they shard like it. Raises a
    `ShardingError` naming a leaf that no rule covers."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: param_sharding(_dotted(path), getattr(leaf, "shape", ()), mesh), tree
    )


def describe(mesh: Mesh) -> str:
    return f"mesh {dict(mesh.shape)} over {mesh.devices.size} {mesh.devices.flat[0].platform} devices"
