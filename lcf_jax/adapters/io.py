"""Adapters on disk: `adapter.safetensors` (stacked parameters, `[N, ...]` per kept layer) plus
`adapter_config.json` (kind, widths, layer map, kept layers, hard gate values, both model
architectures, dtype, lcf_jax version). The same files are what `lcf export` writes for PyTorch.

Loading checks everything before any tensor is used, with the checks lcf_jax.torch runs too
(`lcf_jax.adapter_format`): the config's fields and their JSON types, the architecture it describes
against the file's tensors (any missing, unexpected or misshapen tensor is named), and what the
config says of the tensors (dtype, num_params, hard gates). Any problem is one CheckpointError line
naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from lcf_jax.adapter_format import (
    CONFIG_FILE,
    FORMAT_VERSION,
    REEXPORT,
    WEIGHTS_FILE,
    adapter_problems,
    check_config,
    check_weights,
    gate_tensors,
    read_json,
    refuse,
    tensor_problems,
)
from lcf_jax.adapters.adapter import Adapter, AdapterSpec, make_adapter
from lcf_jax.errors import CheckpointError
from lcf_jax.loading.safetensors import SafetensorsReader
from lcf_jax.models.config import ModelConfig, RopeScaling
from lcf_jax.trees import dotted, flat_arrays
from lcf_jax.version import __version__

_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def model_config_to_json(config: ModelConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    if isinstance(config.eos_token_id, tuple):
        out["eos_token_id"] = list(config.eos_token_id)
    return out


def model_config_from_json(data: dict[str, Any], where: str | os.PathLike, role: str) -> ModelConfig:
    """The `role` ("sharer", "receiver") architecture of a config whose JSON types were checked
    (`adapter_format.model_problems`); what ModelConfig refuses (an unknown family or RoPE type) is
    a CheckpointError naming the file `where`."""
    data = dict(data)
    try:
        if data.get("rope_scaling"):
            data["rope_scaling"] = RopeScaling(**data["rope_scaling"])
        if isinstance(data.get("eos_token_id"), list):
            data["eos_token_id"] = tuple(data["eos_token_id"])
        return ModelConfig(**data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: the {role} model is not one lcf_jax runs ({e})") from None


def spec_to_json(spec: AdapterSpec) -> dict[str, Any]:
    out = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    out["sharer"] = model_config_to_json(spec.sharer)
    out["receiver"] = model_config_to_json(spec.receiver)
    out["layers"], out["source_layers"] = list(spec.layers), list(spec.source_layers)
    return out


def spec_from_json(data: Any, where: str | os.PathLike = CONFIG_FILE) -> AdapterSpec:
    """The AdapterSpec of a config's `adapter` section; `where` names the file in errors."""
    refuse(adapter_problems(data), where, CheckpointError, REEXPORT)
    data = dict(data)
    data["sharer"] = model_config_from_json(data["sharer"], where, "sharer")
    data["receiver"] = model_config_from_json(data["receiver"], where, "receiver")
    data["layers"], data["source_layers"] = tuple(data["layers"]), tuple(data["source_layers"])
    return AdapterSpec(**data)


def flat_params(adapter: Adapter) -> dict[str, jax.Array]:
    return flat_arrays(nnx.state(adapter, nnx.Param))


def save_adapter(adapter: Adapter, directory: str | os.PathLike, *, dtype: str = "float32") -> Path:
    """Write the adapter's two files into `directory`; returns the directory."""

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = adapter.spec
    tensors = {name: np.asarray(jax.device_get(x)).astype(_DTYPES[dtype]) for name, x in flat_params(adapter).items()}
    gates = np.asarray(adapter.gate_logits() > 0)
    config = {
        "format_version": FORMAT_VERSION,
        "lcf_jax_version": __version__,
        "dtype": dtype,
        "num_params": int(sum(t.size for t in tensors.values())),
        "adapter": spec_to_json(spec),
        # Inference gates are hard (logit > 0): stored per kept layer for readers that only apply it.
        "hard_gates": {str(layer): {"key": bool(k), "value": bool(v)} for layer, (k, v) in zip(spec.layers, gates)},
    }
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "lcf_jax", "kind": spec.kind})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{directory} has no {CONFIG_FILE}: not a saved lcf_jax adapter")
    config = read_json(path, CheckpointError, REEXPORT)
    check_config(config, path, CheckpointError)
    config["spec"] = spec_from_json(config["adapter"], path)
    return config


def load_adapter(directory: str | os.PathLike, *, expect_kind: str | None = None) -> Adapter:
    """Read an adapter written by `save_adapter` / `lcf export` (parameters come back as float32)."""
    directory = Path(directory)
    config = read_adapter_config(directory)
    spec: AdapterSpec = config["spec"]
    if expect_kind is not None and spec.kind != expect_kind:
        raise CheckpointError(f"{directory} holds a {spec.kind!r} adapter, expected {expect_kind!r}")
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"{directory} has no {WEIGHTS_FILE}")
    reader = SafetensorsReader([weights])
    adapter = adapter_from_tensors(spec, reader.shapes(), reader.read, str(weights), against=CONFIG_FILE)
    sizes = {name: int(np.prod(shape)) for name, shape in reader.shapes().items()}
    gates = [np.asarray(reader.read(name), np.float32).tolist() for name in gate_tensors(spec.kind)]
    check_weights(config, weights, reader.dtypes(), sizes, gates, CheckpointError)
    return adapter


def adapter_from_tensors(
    spec: AdapterSpec,
    shapes: Mapping[str, tuple[int, ...]],
    read: Callable[[str], Any],
    source: str,
    *,
    against: str = "its config",
) -> Adapter:
    """An adapter of `spec` filled with the named tensors `read(name)` (names as `flat_params` gives
    them; parameters come back as float32), after checking `shapes` against the architecture `spec`
    describes. `source` says where the tensors came from in errors, `against` where `spec` did."""
    try:
        abstract = nnx.eval_shape(lambda: make_adapter(spec, rngs=nnx.Rngs(0)))
    except (TypeError, ValueError) as e:  # e.g. an odd latent_width: the config is at fault, not the code
        raise CheckpointError(f"{source}: {against} describes no {spec.kind} adapter lcf_jax can build ({e})") from None
    expected = {name: tuple(x.shape) for name, x in flat_params(abstract).items()}
    found = {name: tuple(shape) for name, shape in shapes.items()}
    problems = tensor_problems(expected, found, f" for this {spec.kind} adapter")
    if problems:
        raise CheckpointError(f"{source} does not match {against}: {'; '.join(problems[:8])}")
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    filled = nnx.from_flat_state(
        [
            (path, v.replace(jnp.asarray(read(dotted(path)), jnp.float32))) if isinstance(v, nnx.Param) else (path, v)
            for path, v in flat
        ]
    )
    return nnx.merge(graphdef, filled)
