"""The names of the on-disk adapter format, shared by lcf_jax (JAX) and lcf_jax.torch (PyTorch).

This module imports nothing, so the PyTorch side can read exports on machines without JAX.
"""

from __future__ import annotations

KINDS = ("lcf", "lcfx", "c2c")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
FORMAT_VERSION = 1


def tensor_problems(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], what: str = ""
) -> list[str]:
    """What is wrong with a file's tensors (name -> shape) against the architecture's: missing,
    unexpected and misshapen tensors, one phrase each (empty when they match). `what` ends the
    shape phrase, e.g. " for this lcfx adapter"."""
    problems = [f"missing tensor {n!r} (expected shape {expected[n]})" for n in sorted(set(expected) - set(found))]
    problems += [f"unexpected tensor {n!r} of shape {found[n]}" for n in sorted(set(found) - set(expected))]
    problems += [
        f"tensor {n!r} has shape {found[n]}, expected {expected[n]}{what}"
        for n in sorted(set(found) & set(expected))
        if tuple(found[n]) != tuple(expected[n])
    ]
    return problems
