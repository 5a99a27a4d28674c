"""Model architectures: the shared decoder, its configs and named presets."""

from __future__ import annotations

from lcf_jax.models import llama, qwen2, qwen3
from lcf_jax.models.config import ModelConfig, RopeScaling, UnsupportedArchitectureError, from_hf_config, to_hf_config

_PRESETS: dict[str, ModelConfig] = {**llama.PRESETS, **qwen2.PRESETS, **qwen3.PRESETS}


def preset(name: str) -> ModelConfig:
    """The architecture config of a named model, without weights (use with `jax.eval_shape`)."""
    try:
        return _PRESETS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(_PRESETS))}") from None


def preset_names() -> list[str]:
    return sorted(_PRESETS)


__all__ = [
    "ModelConfig",
    "RopeScaling",
    "UnsupportedArchitectureError",
    "from_hf_config",
    "preset",
    "preset_names",
    "to_hf_config",
]
