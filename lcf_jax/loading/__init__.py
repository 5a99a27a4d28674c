"""Checkpoints in and out: `load_model` (HF directory, GGUF file, registered name) and `save_hf`."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np

from lcf_jax.loading.gguf import load_gguf_tokenizer, read_gguf
from lcf_jax.loading.keymap import CheckpointError
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


def load_model(
    source: str | os.PathLike,
    *,
    dtype: str = "float32",
    sharding: jax.sharding.Sharding | None = None,
    attention: str = "auto",
) -> Model:
    """Load a model from an HF directory (config.json + safetensors), a `.gguf` file, or a registered
    name such as `"smollm2-135m"`. Weights are cast to `dtype` and placed on `sharding` (default:
    the default device) one tensor at a time. `attention`: the prefill kernel ("auto", "einsum",
    "fused"; `lcf_jax.models.layers`)."""
    dtype = resolve_dtype(dtype)
    path = resolve_source(source)

    def convert(array: np.ndarray) -> jax.Array:
        return jax.device_put(np.asarray(array, dtype=dtype), sharding)

    def expected_for(config: ModelConfig) -> dict[str, tuple[int, ...]]:
        return flat_shapes(abstract_transformer(config, dtype)[1])

    if path.is_dir():
        config = read_hf_config(path)
        flat = read_hf_weights(path, config, expected_for(config), convert)
        tokenizer = load_tokenizer(path)
    elif path.suffix.lower() == ".gguf":
        config, flat = read_gguf(path, expected_for, convert)
        tokenizer = load_gguf_tokenizer(path)
    else:
        raise ValueError(f"{path} is neither a model directory nor a .gguf file")
    graphdef, abstract = abstract_transformer(config, dtype, attention)
    return Model(
        config, graphdef, state_from_flat(abstract, flat), tokenizer=tokenizer, dtype=dtype, attention=attention
    )


def save_hf(model: Model, directory: str | os.PathLike) -> Path:
    """Write `model` as an HF directory (config.json, safetensors, tokenizer) that transformers and
    `load_model` read back."""
    flat = {path: np.asarray(jax.device_get(array)) for path, array in flat_from_state(model.params).items()}
    return write_hf_directory(directory, model.config, flat, tokenizer=model.tokenizer)


__all__ = ["CheckpointError", "ModelNotAvailableError", "load_model", "resolve_source", "save_hf"]
