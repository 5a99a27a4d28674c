"""The names of the on-disk adapter format, shared by lcf_jax (JAX) and lcf_jax.torch (PyTorch).

This module imports nothing, so the PyTorch side can read exports on machines without JAX.
"""

from __future__ import annotations

KINDS = ("lcf", "lcfx", "c2c")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
FORMAT_VERSION = 1
