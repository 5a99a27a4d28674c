"""Converters between lcf_jax adapters and other formats (PyTorch export, C2C reference import)."""

from __future__ import annotations

from lcf_jax.export.to_torch import adapter_from_orbax, export_adapter, export_from_orbax, spec_from_config

__all__ = ["adapter_from_orbax", "export_adapter", "export_from_orbax", "spec_from_config"]
