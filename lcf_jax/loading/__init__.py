"""Checkpoints in and out: `load_model` (HF directory, GGUF file, registered name) and `save_hf`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from lcf_jax.errors import ShardingError, UserError
from lcf_jax.loading.gguf import gguf_config, load_gguf_tokenizer, read_gguf
from lcf_jax.loading.keymap import CheckpointError, StackedTensor
from lcf_jax.loading.registry import REGISTRY, ModelNotAvailableError, registered_names
from lcf_jax.loading.safetensors import load_tokenizer, read_hf_config, read_hf_weights, write_hf_directory
from lcf_jax.models.config import ModelConfig
from lcf_jax.models.model import (
    Model,
    abstract_transformer,
    flat_from_state,
    flat_shapes,
    resolve_dtype,
    state_from_flat,
)


def resolve_source(source: str | os.PathLike) -> Path:
    """A path as given if it exists, else the path a registered name resolves to."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if str(source).lower() in REGISTRY:
        return REGISTRY[str(source).lower()].resolve()
    raise FileNotFoundError(
        f"no model at {str(source)!r}: not an existing directory or .gguf file, and not a registered name "
        f"({', '.join(registered_names())})"
    )


Placement = (
    jax.sharding.Sharding
    | Callable[[str, tuple[int, ...]], jax.sharding.Sharding]
    | Mapping[str, jax.sharding.Sharding]
    | nnx.State
    | None
)


def load_model(
    source: str | os.PathLike,
    *,
    dtype: str = "float32",
    sharding: Placement = None,
    attention: str = "auto",
) -> Model:
    """Load a model from an HF directory (config.json + safetensors), a `.gguf` file, or a registered
    name such as `"smollm2-135m"`. Weights are cast to `dtype` and placed one tensor at a time.
    `attention`: the prefill kernel ("auto", "einsum", "fused"; `lcf_jax.models.layers`).

    `sharding` says where each tensor goes: None (the default device), one `Sharding` for every
    tensor, or one per tensor: a callable `(dotted path, shape) -> Sharding`, e.g.
    `lambda path, shape: lcf_jax.sharding.param_sharding(path, shape, mesh)`, or the shardings of
    the parameter tree (`tree_shardings(params, mesh)`, or a mapping from dotted path such as
    `"layers.self_attn.q_proj.kernel"`). Onto a `Sharding`, a tensor goes shard by shard
    (`jax.make_array_from_callback`): a host casts and sends only the slices its own devices hold,
    each once, so no host builds a second full copy of a tensor. Reading follows the slices too: a
    layer-stacked tensor comes as a lazy view of its per-layer tensors (`keymap.StackedTensor`), so a
    host reads only the layers its devices hold and, for safetensors, only their slices from the
    file's memory map (a GGUF layer is dequantised whole); a safetensors tensor stored in our layout
    (the embedding, the final norm) is sliced straight from the memory map. Without a sharding, each
    tensor is read whole."""
    dtype = resolve_dtype(dtype)
    path = resolve_source(source)
    placer = _Placer(sharding, dtype)

    def expected_for(config: ModelConfig) -> dict[str, tuple[int, ...]]:
        return placer.expect(flat_shapes(abstract_transformer(config, dtype)[1]))

    if _format(path) == "hf":
        config = read_hf_config(path)
        flat = read_hf_weights(path, config, expected_for(config), placer)
        tokenizer = load_tokenizer(path)
    else:
        config, flat = read_gguf(path, expected_for, placer)
        tokenizer = load_gguf_tokenizer(path)
    placer.check(flat)
    graphdef, abstract = abstract_transformer(config, dtype, attention)
    return Model(
        config, graphdef, state_from_flat(abstract, flat), tokenizer=tokenizer, dtype=dtype, attention=attention
    )


def load_model_config(source: str | os.PathLike) -> ModelConfig:
    """A model's architecture from the sources `load_model` takes, without reading its weights."""
    path = resolve_source(source)
    return read_hf_config(path) if _format(path) == "hf" else gguf_config(path)


def _format(path: Path) -> str:
    """ "hf" for a model directory, "gguf" for a .gguf file; anything else is refused."""
    if path.is_dir():
        return "hf"
    if path.suffix.lower() == ".gguf":
        return "gguf"
    raise UserError(
        f"{path} is neither a model directory nor a .gguf file: pass an HF model directory, a .gguf file "
        "or a registered name"
    )


class _Placer:
    """The `convert` of `hf_to_flat`: one host tensor (a numpy array or memory-map view, or a lazy
    `StackedTensor`) -> its array on its sharding, reading only the slices it places. The
    reader converts the tensors of `expected` in its order, one call each, without naming them, so
    the placer keeps that order to know each tensor's path, and `check` proves it afterwards (the
    dict the reader returns lists the paths in the order it converted them)."""

    def __init__(self, sharding: Placement, dtype):
        if isinstance(sharding, nnx.State):
            sharding = flat_from_state(sharding)
        if not (sharding is None or isinstance(sharding, (jax.sharding.Sharding, Mapping)) or callable(sharding)):
            raise TypeError(
                "sharding must be None, a jax Sharding, a callable (path, shape) -> Sharding, or the parameter "
                f"tree's shardings, got {type(sharding).__name__}"
            )
        self.sharding, self.dtype = sharding, dtype
        self.order: list[str] = []
        self.done = 0

    def expect(self, expected: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Note the tensors the reader will convert, in order; shardings by path must name them all."""
        if isinstance(self.sharding, Mapping):
            missing = [path for path in expected if path not in self.sharding]
            if missing:
                raise ShardingError(f"the shardings given to load_model name no sharding for {', '.join(missing)}")
        self.order = list(expected)
        return expected

    def __call__(self, array: np.ndarray | StackedTensor) -> jax.Array:
        if self.sharding is None:
            self.done += 1
            return jax.device_put(np.asarray(array, dtype=self.dtype))
        if self.done >= len(self.order):
            raise RuntimeError("the checkpoint reader converted more tensors than the model has")
        path = self.order[self.done]
        self.done += 1
        return place(array, self.sharding_of(path, array.shape), self.dtype)

    def sharding_of(self, path: str, shape: tuple[int, ...]) -> jax.sharding.Sharding:
        if isinstance(self.sharding, jax.sharding.Sharding):
            return self.sharding
        if isinstance(self.sharding, Mapping):
            return self.sharding[path]
        return self.sharding(path, tuple(shape))

    def check(self, flat: dict[str, jax.Array]) -> None:
        if self.sharding is not None and (list(flat) != self.order or self.done != len(self.order)):
            raise RuntimeError(
                "the checkpoint reader did not convert the tensors in the model's order: their shardings may be "
                "wrong (lcf_jax.loading.load_model relies on hf_to_flat's order)"
            )


def place(array: np.ndarray | StackedTensor, sharding: jax.sharding.Sharding, dtype=None) -> jax.Array:
    """A host array (every process holding it in full, a memory map of it, or a lazy view such as a
    `StackedTensor`) onto a possibly multi-host `sharding`, cast to `dtype` shard by shard: a host
    materialises only the slices its own devices hold, each distinct slice once."""
    dtype = array.dtype if dtype is None else dtype
    slices: dict[tuple, np.ndarray] = {}

    def shard(index: tuple[slice, ...]) -> np.ndarray:
        key = tuple((s.start, s.stop, s.step) for s in index)  # slices are hashable only from Python 3.12
        if key not in slices:
            slices[key] = np.asarray(array[index], dtype=dtype)
        return slices[key]

    return jax.make_array_from_callback(array.shape, sharding, shard)


def save_hf(model: Model, directory: str | os.PathLike) -> Path:
    """Write `model` as an HF directory (config.json, safetensors, tokenizer) that transformers and
    `load_model` read back."""
    flat = {path: np.asarray(jax.device_get(array)) for path, array in flat_from_state(model.params).items()}
    return write_hf_directory(directory, model.config, flat, tokenizer=model.tokenizer)


__all__ = [
    "CheckpointError",
    "ModelNotAvailableError",
    "Placement",
    "load_model",
    "load_model_config",
    "place",
    "resolve_source",
    "save_hf",
]
