"""Tiny random transformers models, built and saved locally: the references for parity tests."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

_FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
}

BASE = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, max_position_embeddings=128)


def tiny_hf_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random model whose weights are large enough that a wrong bias, norm or rotation shows up
    in the logits (transformers' own init, std 0.02, would hide them): N(0, 0.15), norms near 1."""
    config_cls, model_cls = _FAMILIES[family]
    config = config_cls(**{**BASE, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 0.15)
            if "norm" in name:
                param.add_(1.0)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def save_tiny(model: torch.nn.Module, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


# Cases covering what the issue asks: GQA ratios 1, 2, 3 and 4, tied and untied embeddings,
# Llama-3 and linear RoPE scaling, qkv bias (Qwen2), attention/MLP biases (Llama), q/k norm (Qwen3).
CASES = {
    "llama-gqa3-untied-llama3rope-bias": (
        "llama",
        dict(
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=8,
            tie_word_embeddings=False,
            attention_bias=True,
            mlp_bias=True,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 4.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
    "llama-mha-tied": ("llama", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)),
    "qwen2-gqa4-qkvbias-tied": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True)),
    "qwen3-gqa2-qknorm-untied": (
        "qwen3",
        dict(num_attention_heads=6, num_key_value_heads=3, head_dim=16, tie_word_embeddings=False),
    ),
    "qwen3-linearrope-tied": (
        "qwen3",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        ),
    ),
}
