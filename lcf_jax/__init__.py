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

# The public API: name -> "module" (the attribute of that name) or "module:attribute". Everything
# else is internal and may move; `communicate` (the message pipeline) and `torch` (exported
# adapters in PyTorch) are public modules.
_PUBLIC = {
    # models and their caches
    "Model": "lcf_jax.models.model",
    "ModelConfig": "lcf_jax.models",
    "preset": "lcf_jax.models",
    "load_model": "lcf_jax.loading",
    "load_model_config": "lcf_jax.loading",
    "save_hf": "lcf_jax.loading",
    "KVCache": "lcf_jax.kv",
    "generate": "lcf_jax.sampling",
    "Generation": "lcf_jax.sampling",
    "stop_token_ids": "lcf_jax.sampling",
    # adapters
    "Adapter": "lcf_jax.adapters",
    "FusingAdapter": "lcf_jax.adapters",
    "MessageAdapter": "lcf_jax.adapters",
    "Message": "lcf_jax.adapters",
    "build_adapter": "lcf_jax.adapters.build:build",
    "load_adapter": "lcf_jax.adapters.io",
    "save_adapter": "lcf_jax.adapters.io",
    "export_adapter": "lcf_jax.export",
    # training
    # `train` would be shadowed by the subpackage lcf_jax.train once that is imported
    "run_training": "lcf_jax.train.loop:train",
    "load_config": "lcf_jax.config",
    "base_config": "lcf_jax.train.defaults",
    "demo_config": "lcf_jax.train.defaults",
    # data
    "Question": "lcf_jax.data.qa",
    "receiver_messages": "lcf_jax.data.qa",
    "sharer_spans": "lcf_jax.data.qa",
    "generate_questions": "lcf_jax.data.split_qa",
    # evaluation
    "Setup": "lcf_jax.eval.conditions",
    "evaluate": "lcf_jax.eval.run",
    "receiver_prompt": "lcf_jax.eval.conditions",
    "sharer_text_prompt": "lcf_jax.eval.conditions",
    "decode": "lcf_jax.eval.conditions",
    "time_question": "lcf_jax.eval.latency",
    "token_f1": "lcf_jax.eval.metrics",
    # errors
    "UserError": "lcf_jax.errors",
    "ConfigError": "lcf_jax.errors",
    "DataError": "lcf_jax.errors",
    "CheckpointError": "lcf_jax.errors",
    "UnsupportedArchitectureError": "lcf_jax.errors",
}

__all__ = [
    "Adapter",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FusingAdapter",
    "Generation",
    "KVCache",
    "Message",
    "MessageAdapter",
    "Model",
    "ModelConfig",
    "Question",
    "Setup",
    "UnsupportedArchitectureError",
    "UserError",
    "base_config",
    "build_adapter",
    "decode",
    "demo_config",
    "evaluate",
    "export_adapter",
    "generate",
    "generate_questions",
    "load_adapter",
    "load_config",
    "load_model",
    "load_model_config",
    "preset",
    "receiver_messages",
    "receiver_prompt",
    "run_training",
    "save_adapter",
    "save_hf",
    "sharer_spans",
    "sharer_text_prompt",
    "stop_token_ids",
    "time_question",
    "token_f1",
]

if TYPE_CHECKING:
    from lcf_jax.adapters import Adapter, FusingAdapter, Message, MessageAdapter
    from lcf_jax.adapters.build import build as build_adapter
    from lcf_jax.adapters.io import load_adapter, save_adapter
    from lcf_jax.config import load_config
    from lcf_jax.data.qa import Question, receiver_messages, sharer_spans
    from lcf_jax.data.split_qa import generate_questions
    from lcf_jax.errors import CheckpointError, ConfigError, DataError, UnsupportedArchitectureError, UserError
    from lcf_jax.eval.conditions import Setup, decode, receiver_prompt, sharer_text_prompt
    from lcf_jax.eval.latency import time_question
    from lcf_jax.eval.metrics import token_f1
    from lcf_jax.eval.run import evaluate
    from lcf_jax.export import export_adapter
    from lcf_jax.kv import KVCache
    from lcf_jax.loading import load_model, load_model_config, save_hf
    from lcf_jax.models import ModelConfig, preset
    from lcf_jax.models.model import Model
    from lcf_jax.sampling import Generation, generate, stop_token_ids
    from lcf_jax.train.defaults import base_config, demo_config
    from lcf_jax.train.loop import train as run_training


def __getattr__(name: str):
    if name in _PUBLIC:
        module, _, attribute = _PUBLIC[name].partition(":")
        value = getattr(importlib.import_module(module), attribute or name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # `import lcf_jax` used to import some submodules eagerly; `lcf_jax.sampling.pad_batch` keeps working.
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
