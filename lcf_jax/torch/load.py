"""`load_adapter`: read an `lcf export` directory (`adapter.safetensors` + `adapter_config.json`) into
a PyTorch `Adapter`, checking everything before any tensor is used.

Weights are read with `safetensors.torch` (never pickle). Every problem is named, in one line with
the file: a missing or corrupt file, a config field of the wrong type or an unknown value (checked
as lcf_jax checks it, `lcf_jax.adapter_format`), a missing, unexpected or misshapen tensor, tensors
that disagree with the config (dtype, num_params, hard gates), or (given the models) an adapter
built for another model pair.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lcf_jax.adapter_format import (
    CONFIG_FILE,
    REEXPORT,
    WEIGHTS_FILE,
    check_config,
    check_weights,
    gate_tensors,
    read_json,
    tensor_problems,
)
from lcf_jax.torch.adapter import Adapter, AdapterConfig, AdapterFormatError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed `adapter_config.json` of an export, with its `adapter` section as an
    `AdapterConfig` under `"config"`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no adapter directory at {directory}: export one with `lcf export --out DIR`")
    path = directory / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{directory} has no {CONFIG_FILE}: not an lcf_jax adapter export (make one with `lcf export`)"
        )
    data = read_json(path, AdapterFormatError, REEXPORT)
    check_config(data, path, AdapterFormatError)
    data["config"] = AdapterConfig.from_json(data["adapter"], where=str(path))
    return data


def read_tensors(path: Path, remedy: str = REEXPORT) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file `path`; one AdapterFormatError naming it when it is
    not one (the safetensors library checks the header and the byte ranges)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterFormatError(f"{path} is not a readable safetensors file ({e}): {remedy}") from None


def dtype_names(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Each tensor's dtype as lcf_jax names it ("float32", "bfloat16", ...)."""
    return {name: str(t.dtype).removeprefix("torch.") for name, t in tensors.items()}


def load_adapter(
    directory: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    *,
    expect_kind: str | None = None,
    sharer: Any = None,
    receiver: Any = None,
) -> Adapter:
    """The exported adapter in `directory`, ready for inference (`eval()`, no gradients).

    dtype: the parameters' dtype. None gives float32, what lcf_jax computes in whatever the stored
    dtype (a bfloat16 export is widened); `torch.bfloat16` keeps bf16 parameters and arithmetic.
    expect_kind: "lcf", "lcfx" or "c2c" to refuse any other kind. sharer, receiver: transformers
    models (or configs) to check the adapter against (layers, kv heads, head dim)."""
    directory = Path(directory)
    data = read_config(directory)
    config: AdapterConfig = data["config"]
    if expect_kind is not None and config.kind != expect_kind:
        raise AdapterFormatError(f"{directory} holds a {config.kind!r} adapter, expected {expect_kind!r}")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch dtype, got {dtype!r}")
        dtype = _DTYPES[dtype]
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise AdapterFormatError(f"{directory} has no {WEIGHTS_FILE}: the export is incomplete, run `lcf export` again")
    tensors = read_tensors(weights)
    with torch.device("meta"):  # the architecture the config describes, without memory
        adapter = Adapter(config)
    expected = {name: tuple(p.shape) for name, p in adapter.named_parameters()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    problems = tensor_problems(expected, found, f" for this {config.kind} adapter")
    if problems:
        raise AdapterFormatError(f"{weights} does not match {CONFIG_FILE}: {'; '.join(problems[:8])}")
    sizes = {name: t.numel() for name, t in tensors.items()}
    gates = [tensors[name].float().tolist() for name in gate_tensors(config.kind)]
    check_weights(data, weights, dtype_names(tensors), sizes, gates, AdapterFormatError)
    dtype = dtype or torch.float32
    adapter.load_state_dict({n: t.to(device=device, dtype=dtype) for n, t in tensors.items()}, assign=True)
    for p in adapter.parameters():
        p.requires_grad_(False)
    if sharer is not None or receiver is not None:
        if sharer is None or receiver is None:
            raise ValueError("pass both sharer= and receiver= to check the adapter against a model pair")
        adapter.check_models(sharer, receiver)
    return adapter.eval()
