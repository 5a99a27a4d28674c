"""lcf_jax: Latent Cache Flow in JAX/Flax. LLM agents that communicate through a learned adapter
over their KV caches instead of through text.

The public names below are imported on first use (PEP 562), not with the package: `lcf_jax.torch`
runs exported adapters where JAX is not installed, and it lives inside this package.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from lcf_jax.version import __version__ as __version__

# public name -> the module that defines it
_PUBLIC = {
    "CheckpointError": "lcf_jax.loading",
    "Generation": "lcf_jax.sampling",
    "KVCache": "lcf_jax.kv",
    "Model": "lcf_jax.models.model",
    "ModelConfig": "lcf_jax.models",
    "UnsupportedArchitectureError": "lcf_jax.models",
    "generate": "lcf_jax.sampling",
    "load_model": "lcf_jax.loading",
    "preset": "lcf_jax.models",
    "save_hf": "lcf_jax.loading",
}

__all__ = [
    "CheckpointError",
    "Generation",
    "KVCache",
    "Model",
    "ModelConfig",
    "UnsupportedArchitectureError",
    "generate",
    "load_model",
    "preset",
    "save_hf",
]

if TYPE_CHECKING:
    from lcf_jax.kv import KVCache
    from lcf_jax.loading import CheckpointError, load_model, save_hf
    from lcf_jax.models import ModelConfig, UnsupportedArchitectureError, preset
    from lcf_jax.models.model import Model
    from lcf_jax.sampling import Generation, generate


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # `import lcf_jax` used to import some submodules eagerly; `lcf_jax.sampling.pad_batch` keeps working.
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
