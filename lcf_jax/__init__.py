"""lcf_jax: Latent Cache Flow in JAX/Flax. LLM agents that communicate through a learned adapter
over their KV caches instead of through text."""

from __future__ import annotations

from lcf_jax.kv import KVCache
from lcf_jax.loading import CheckpointError, load_model, save_hf
from lcf_jax.models import ModelConfig, UnsupportedArchitectureError, preset
from lcf_jax.models.model import Model
from lcf_jax.sampling import Generation, generate

__version__ = "0.1.0"

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
