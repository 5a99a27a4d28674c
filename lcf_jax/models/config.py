"""The frozen architecture config shared by every decoder family, and its HF translation.

One `ModelConfig` describes Llama, Qwen2/2.5 and Qwen3 alike; the family files (`llama.py`,
`qwen2.py`, `qwen3.py`) hold the presets and the few fields where the families differ.
`from_hf_config` refuses HF settings the decoder does not implement instead of silently
computing something else (sliding windows, other RoPE types, other activations).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lcf_jax.errors import UnsupportedArchitectureError

FAMILIES = ("llama", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. `rope_type` 'linear' divides positions by `factor`; 'llama3' is
    Llama-3.1's wavelength-dependent scaling."""

    rope_type: str
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one decoder-only model. Hashable, so it can be a static jit argument."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # bias on q/k/v projections (Qwen2 always, Llama/Qwen3 when attention_bias)
    o_bias: bool = False  # bias on the output projection (Llama/Qwen3 attention_bias)
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise UnsupportedArchitectureError(f"unknown family {self.family!r}; lcf_jax supports {FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedArchitectureError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.rope_scaling is not None and self.rope_scaling.rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedArchitectureError(
                f"rope_type {self.rope_scaling.rope_type!r} is not supported; use one of {SUPPORTED_ROPE_TYPES}"
            )

    @property
    def num_groups(self) -> int:
        """G: query heads per kv head."""
        return self.num_heads // self.num_kv_heads

    @property
    def kv_width(self) -> int:
        """K*H: the flattened width of one token's keys (or values) in one layer."""
        return self.num_kv_heads * self.head_dim

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """transformers 5 keeps RoPE settings in `rope_parameters`; 4.x used `rope_theta` + `rope_scaling`."""
    params = dict(hf.get("rope_parameters") or {})
    if not params:
        params = dict(hf.get("rope_scaling") or {})
        params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedArchitectureError(
            f"config.json asks for rope_type {rope_type!r}; lcf_jax implements {SUPPORTED_ROPE_TYPES}"
        )
    if rope_type == "default":
        return theta, None
    scaling = RopeScaling(
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )
    return theta, scaling


def _rope_to_hf(config: ModelConfig) -> dict[str, Any]:
    params: dict[str, Any] = {"rope_theta": config.rope_theta, "rope_type": "default"}
    if config.rope_scaling is not None:
        params.update(dataclasses.asdict(config.rope_scaling))
        if config.rope_scaling.rope_type == "linear":
            params = {"rope_theta": config.rope_theta, "rope_type": "linear", "factor": config.rope_scaling.factor}
    return {"rope_parameters": params}


def _check_supported(hf: dict[str, Any]) -> None:
    """Raise on HF settings that would make our decoder compute something else."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r} (config.json model_type); lcf_jax supports {', '.join(FAMILIES)}"
        )
    problems = []
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r} (only 'silu')")
    if hf.get("use_sliding_window"):
        problems.append("use_sliding_window=true (sliding-window attention)")
    layer_types = hf.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        problems.append(f"layer_types {sorted(set(layer_types))} (only full_attention)")
    if hf.get("pretraining_tp", 1) not in (1, None):
        problems.append(f"pretraining_tp={hf['pretraining_tp']}")
    if hf.get("quantization_config"):
        problems.append("quantization_config (load a non-quantized checkpoint or a GGUF file)")
    if problems:
        raise UnsupportedArchitectureError(
            f"{model_type} config has settings lcf_jax does not implement: {'; '.join(problems)}"
        )


def from_hf_config(hf: dict[str, Any]) -> ModelConfig:
    """Translate a transformers `config.json` dict (4.x or 5.x layout) to a `ModelConfig`."""
    _check_supported(hf)
    family = hf["model_type"]
    heads = int(hf["num_attention_heads"])
    theta, scaling = _rope_from_hf(hf)
    attention_bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        family=family,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=True if family == "qwen2" else attention_bias,
        o_bias=False if family == "qwen2" else attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=family == "qwen3",
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=tuple(hf["eos_token_id"]) if isinstance(hf.get("eos_token_id"), list) else hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
    )


_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
    """The transformers `config.json` dict that rebuilds this architecture."""
    if config.family == "qwen2" and (config.o_bias or not config.qkv_bias):
        raise UnsupportedArchitectureError("a qwen2 config must have qkv_bias=True and o_bias=False")
    if config.family != "qwen2" and config.qkv_bias != config.o_bias:
        raise UnsupportedArchitectureError(f"{config.family}: HF's attention_bias covers q/k/v/o together")
    if config.qk_norm != (config.family == "qwen3"):
        raise UnsupportedArchitectureError("qk_norm is a Qwen3 feature and always on there")
    hf: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[config.family]],
        "model_type": config.family,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": list(config.eos_token_id) if isinstance(config.eos_token_id, tuple) else config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        **_rope_to_hf(config),
    }
    if config.family == "llama":
        hf.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    elif config.family == "qwen3":
        hf.update(attention_bias=config.qkv_bias)
    if config.family != "llama" and config.mlp_bias:
        raise UnsupportedArchitectureError(f"{config.family} has no mlp_bias option in transformers")
    return hf
