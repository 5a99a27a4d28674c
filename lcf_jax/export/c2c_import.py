"""Import a fuser released by the C2C reference implementation (github.com/thu-nics/C2C) as a `c2c`
`Adapter`, so the published checkpoints can be evaluated in lcf_jax.

The reference's format (written by its `script/train/SFT_train.py`, read by `rosetta/utils/evaluate.py`),
one directory per sharer -> receiver pair (the released ones end in `.../final/`):

    projector_config.json  the layer map, `RosettaModel.projector_dict` dumped with `json.dump`:
                           {receiver model: {sharer model: {receiver layer: [[sharer layer, projector], ...]}}}
                           (keys are strings; the receiver is model "0", the sharer model "1")
    projector_{i}.json     {"class": "C2CProjector", "init_args": {"source_dim", "target_dim",
                           "source_num_heads", "target_num_heads", "hidden_dim", "intermediate_dim",
                           "num_layers", "dropout", "initial_temperature", "final_temperature",
                           "anneal_steps", "dtype", ...}} (the projector's constructor arguments)
    projector_{i}.pt       the projector's `state_dict()` (`torch.save`)

Reference names map to ours one to one except that each FFN stack (`RegularMLP`) nests its blocks
under `blocks.{j}` (our projector has exactly one block per stack: `num_layers=3`,
`intermediate_dim == hidden_dim`, the released configuration), and torch Linear weights are `[out, in]`
where our kernels are `[in, out]`. The `gate_temperature` buffer (the Gumbel annealing state) is not
needed: inference uses hard gates (`logit > 0`), as the reference does in eval mode.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcf_jax.adapter_format import tensor_problems
from lcf_jax.adapters.adapter import Adapter, make_adapter
from lcf_jax.adapters.blocks import layer_map as make_layer_map
from lcf_jax.adapters.build import make_spec, model_config
from lcf_jax.adapters.io import flat_params
from lcf_jax.errors import CheckpointError
from lcf_jax.models.config import ModelConfig
from lcf_jax.trees import dotted

MAP_FILE = "projector_config.json"
PROJECTOR_CLASS = "C2CProjector"
# C2CProjector's constructor arguments and their defaults in the reference.
REQUIRED_ARGS = ("source_dim", "target_dim")
INIT_DEFAULTS: dict[str, Any] = {
    "source_num_heads": 1,
    "target_num_heads": 1,
    "intermediate_dim": 1024,
    "hidden_dim": 1024,
    "num_layers": 3,
    "dropout": 0.1,
    "initial_temperature": 1.0,
    "final_temperature": 0.001,
    "anneal_steps": 1929,
    "dtype": None,
    "zero_init": False,
}
IGNORED_TENSORS = frozenset({"gate_temperature"})  # Gumbel annealing state: training only
_FFN_STACKS = ("mlp1", "proj_mlp2", "scalar_mlp2")


def _name_map(ours: dict[str, tuple[int, ...]]) -> dict[str, tuple[str, bool]]:
    """Our per-projector parameter name -> (the reference's state-dict name, transpose?)."""
    out = {}
    for name in ours:
        parts = name.split(".")
        if parts[0].split("_", 1)[1] in _FFN_STACKS:  # key_mlp1.w1.kernel -> key_mlp1.blocks.0.w1.weight
            parts.insert(1, "blocks.0")
        transpose = parts[-1] == "kernel"
        if transpose:
            parts[-1] = "weight"
        out[name] = (".".join(parts), transpose)
    return out


def resolve_directory(directory: str | os.PathLike) -> Path:
    """The folder holding `projector_config.json`: `directory` itself, or its `final/` (the layout of
    the released fusers, e.g. `qwen3_0.6b+qwen2.5_0.5b_Fuser/final`)."""
    directory = Path(directory)
    for candidate in (directory, directory / "final"):
        if (candidate / MAP_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"{directory} has no {MAP_FILE} (nor final/{MAP_FILE}): not a C2C fuser checkpoint; point at the folder "
        "holding projector_config.json and projector_{i}.pt / projector_{i}.json"
    )


def read_layer_map(directory: str | os.PathLike) -> dict[int, tuple[int, int]]:
    """Receiver layer -> (sharer layer, projector index) from `projector_config.json`.

    Where the reference lists several (sharer layer, projector) pairs for one receiver layer, its
    forward uses only the first one's result; so does this (with a warning)."""
    path = Path(directory) / MAP_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict) or len(raw) != 1:
        raise CheckpointError(
            f"{path} must map exactly one receiver model, found keys {list(raw) if isinstance(raw, dict) else raw!r}"
        )
    ((receiver_key, sources),) = raw.items()
    if not isinstance(sources, dict) or len(sources) != 1:
        found = list(sources) if isinstance(sources, dict) else sources
        raise CheckpointError(
            f"{path} maps sharer models {found!r} into receiver model {receiver_key!r}; an lcf_jax adapter reads "
            "exactly one sharer: import a single-sharer checkpoint (one C2C fuser directory per sharer)"
        )
    ((_, layers),) = sources.items()
    if not isinstance(layers, dict) or not layers:
        raise CheckpointError(f"{path} lists no receiver layers")
    out: dict[int, tuple[int, int]] = {}
    for key, pairs in layers.items():
        try:
            target = int(key)
            pairs = [(int(s), int(p)) for s, p in pairs]
        except (TypeError, ValueError):
            raise CheckpointError(
                f"{path}: receiver layer {key!r} maps to {pairs!r}, expected a list of [sharer layer, projector index]"
            ) from None
        if not pairs:
            raise CheckpointError(f"{path}: receiver layer {key!r} has no (sharer layer, projector) pair")
        if len(pairs) > 1:
            warnings.warn(
                f"{path}: receiver layer {target} lists {len(pairs)} (sharer layer, projector) pairs; the C2C "
                f"reference only uses the first one, {pairs[0]}, and so does this import",
                stacklevel=2,
            )
        out[target] = pairs[0]
    return dict(sorted(out.items()))


def _check_map(mapping: dict[int, tuple[int, int]], sharer: ModelConfig, receiver: ModelConfig, path: Path) -> None:
    for target, (source, _) in mapping.items():
        if not 0 <= target < receiver.num_layers:
            raise CheckpointError(
                f"{path} fuses receiver layer {target} but the receiver given has {receiver.num_layers} layers: "
                "pass the receiver model the fuser was trained for"
            )
        if not 0 <= source < sharer.num_layers:
            raise CheckpointError(
                f"{path} reads sharer layer {source} (for receiver layer {target}) but the sharer given has "
                f"{sharer.num_layers} layers: pass the sharer model the fuser was trained with"
            )


def read_projector_config(path: Path, sharer: ModelConfig, receiver: ModelConfig) -> dict[str, Any]:
    """A `projector_{i}.json`'s constructor arguments (defaults filled in), checked against the model
    pair and against what our `C2CProjector` implements."""
    if not path.is_file():
        raise CheckpointError(f"missing {path}: the layer map uses this projector; the checkpoint is incomplete")
    try:
        payload = json.loads(path.read_text())
        cls, args = payload["class"], dict(payload.get("init_args", {}))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a C2C projector config ({type(e).__name__}: {e})") from None
    if str(cls).lower() != PROJECTOR_CLASS.lower():
        raise CheckpointError(
            f"{path} describes a {cls!r} projector; lcf_jax's c2c adapter implements the reference's {PROJECTOR_CLASS}"
        )
    unknown = sorted(set(args) - set(INIT_DEFAULTS) - set(REQUIRED_ARGS))
    if unknown:
        raise CheckpointError(f"{path} has init_args {unknown} that {PROJECTOR_CLASS} does not take")
    missing = [k for k in REQUIRED_ARGS if k not in args]
    if missing:
        raise CheckpointError(f"{path} lacks the required init_args {missing}")
    config = {**INIT_DEFAULTS, **args}
    for role, model, heads, dim in (
        ("sharer", sharer, "source_num_heads", "source_dim"),
        ("receiver", receiver, "target_num_heads", "target_dim"),
    ):
        want = (int(config[heads]), int(config[dim]))
        have = (model.num_kv_heads, model.head_dim)
        if want != have:
            raise CheckpointError(
                f"{path}: this fuser was trained for a {role} cache of {want[0]} kv heads x {want[1]} head dim "
                f"({heads}, {dim}), but the {role} given has {have[0]} x {have[1]}: pass the {role} model the "
                "fuser was trained with"
            )
    if int(config["num_layers"]) != 3:
        raise CheckpointError(
            f"{path}: num_layers={config['num_layers']} gives {int(config['num_layers']) - 2} FFN blocks in the "
            "projection stack; lcf_jax's c2c adapter implements num_layers=3 (the released configuration) only"
        )
    if int(config["intermediate_dim"]) != int(config["hidden_dim"]):
        raise CheckpointError(
            f"{path}: intermediate_dim={config['intermediate_dim']} differs from hidden_dim={config['hidden_dim']}; "
            "lcf_jax's c2c adapter implements FFN blocks of intermediate width = hidden width (the released "
            "configuration, 1024 / 1024) only"
        )
    if not 0.0 <= float(config["dropout"]) < 1.0:
        raise CheckpointError(f"{path}: dropout={config['dropout']} is not in [0, 1)")
    return config


def _load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A `projector_{i}.pt` as float32 arrays, unpickled with `weights_only=True` (tensors only)."""
    try:
        import torch  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise ImportError(
            "importing a C2C checkpoint reads its projector_{i}.pt files with PyTorch: pip install 'lcf_jax[torch]'"
        ) from None
    if not path.is_file():
        raise CheckpointError(f"missing {path}: the layer map uses this projector; the checkpoint is incomplete")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for corrupt files and for non-tensor pickles
        raise CheckpointError(
            f"{path} is not a plain PyTorch state dict ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {str(k): v.detach().to(torch.float32).cpu().numpy() for k, v in state.items()}


def _projector_arrays(
    path: Path, expected: dict[str, tuple[int, ...]], names: dict[str, tuple[str, bool]], pair: str
) -> dict[str, np.ndarray]:
    """Our per-projector arrays from one reference state dict, after checking every tensor."""
    state = _load_state_dict(path)
    wanted = {ref: (tuple(reversed(expected[ours])) if t else expected[ours]) for ours, (ref, t) in names.items()}
    found = {k: tuple(v.shape) for k, v in state.items() if k not in IGNORED_TENSORS}
    problems = tensor_problems(wanted, found)
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise CheckpointError(
            f"{path} does not match a {PROJECTOR_CLASS} for {pair}: {'; '.join(problems[:8])}{more}. Check that the "
            "file is a C2CProjector state dict and that its projector_{i}.json and the models passed are the ones "
            "it was trained with"
        )
    return {ours: (state[ref].T if t else state[ref]) for ours, (ref, t) in names.items()}


def import_c2c(directory: str | os.PathLike, sharer, receiver, *, compute_dtype: str = "float32") -> Adapter:
    """A `c2c` Adapter holding a C2C reference fuser (`projector_config.json`, `projector_{i}.json`,
    `projector_{i}.pt`; `directory` or its `final/`).

    `sharer` / `receiver`: ModelConfigs, loaded Models or preset names — the models the fuser was
    trained for (the reference's teacher / source and base / target). The receiver layers in the map
    become the adapter's `layers`, each one's sharer layer its `source_layers` (`layer_map` is
    "last_aligned" or "k_nearest" where the map is one of those, else "custom"). Every tensor is
    checked; parameters come back as float32 (the reference runs its fusers in the models' dtype,
    usually bfloat16: `compute_dtype="bfloat16"` multiplies in bfloat16 too)."""
    sharer_config, receiver_config = model_config(sharer), model_config(receiver)
    directory = resolve_directory(directory)
    mapping = read_layer_map(directory)
    _check_map(mapping, sharer_config, receiver_config, directory / MAP_FILE)
    used = sorted({p for _, p in mapping.values()})
    configs = {
        p: read_projector_config(directory / f"projector_{p}.json", sharer_config, receiver_config) for p in used
    }
    for key in ("hidden_dim", "dropout"):
        values = {p: c[key] for p, c in configs.items()}
        if len(set(values.values())) > 1:
            raise CheckpointError(
                f"{directory}: the projectors differ in {key} ({values}); lcf_jax stacks one projector per layer "
                "and needs them all alike"
            )
    first = configs[used[0]]
    layers = tuple(mapping)
    source_layers = tuple(mapping[t][0] for t in layers)
    spec = make_spec(
        "c2c",
        sharer_config,
        receiver_config,
        keep_layers=layers,
        hidden_width=int(first["hidden_dim"]),
        dropout=float(first["dropout"]),
        activation="gelu",  # the reference's RegularMLP always builds GELU (exact erf) blocks
        compute_dtype=compute_dtype,
    )
    name = "custom"
    for candidate in ("last_aligned", "k_nearest"):
        full = make_layer_map(candidate, sharer_config.num_layers, receiver_config.num_layers)
        if tuple(full[t] for t in layers) == source_layers:
            name = candidate
            break
    spec = dataclasses.replace(spec, source_layers=source_layers, layer_map=name)

    abstract = nnx.eval_shape(lambda: make_adapter(spec, rngs=nnx.Rngs(0)))
    prefix = "projectors."
    expected = {n[len(prefix) :]: tuple(x.shape[1:]) for n, x in flat_params(abstract).items()}
    names = _name_map(expected)
    pair = (
        f"sharer [K={sharer_config.num_kv_heads}, H={sharer_config.head_dim}] -> receiver "
        f"[K={receiver_config.num_kv_heads}, H={receiver_config.head_dim}], hidden_dim={spec.hidden_width}"
    )
    arrays = {p: _projector_arrays(directory / f"projector_{p}.pt", expected, names, pair) for p in used}
    order = [mapping[t][1] for t in layers]

    graphdef, state = nnx.split(abstract)
    filled = []
    for path, v in nnx.to_flat_state(state):
        if isinstance(v, nnx.Param):
            key = dotted(path)[len(prefix) :]
            v = v.replace(jnp.asarray(np.stack([arrays[p][key] for p in order]), jnp.float32))
        filled.append((path, v))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def is_c2c_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether `directory` (or its `final/`) looks like a C2C reference fuser checkpoint."""
    try:
        found = resolve_directory(directory)
    except FileNotFoundError:
        return False
    return any(re.fullmatch(r"projector_\d+\.pt", p.name) for p in found.iterdir())
