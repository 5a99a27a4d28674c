"""GGUF files in: architecture from the metadata, tensors dequantised with llama.cpp's `gguf`
package, renamed to transformers' names, then converted by the same key table as safetensors.

llama.cpp's converter permutes the rows of Llama `attn_q` / `attn_k` weights for its interleaved
RoPE; our decoder uses HF's rotate-half RoPE, so those rows are permuted back (as transformers does
when it loads a GGUF file). Qwen2/Qwen3 files are written unpermuted.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lcf_jax.errors import CheckpointError, UnsupportedArchitectureError
from lcf_jax.loading.keymap import hf_to_flat
from lcf_jax.models.config import FAMILIES, ModelConfig, RopeScaling

# GGUF tensor name -> transformers name; `{i}` is the layer index.
_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
    **{
        f"blk.{{i}}.attn_{g}.{kind}": f"model.layers.{{i}}.self_attn.{h}_proj.{kind}"
        for g, h in (("q", "q"), ("k", "k"), ("v", "v"), ("output", "o"))
        for kind in ("weight", "bias")
    },
}
_PATTERNS = [(re.compile(re.escape(g).replace(r"\{i\}", r"(\d+)") + "$"), hf) for g, hf in _NAMES.items()]


def _hf_name(gguf_name: str) -> str | None:
    for pattern, hf in _PATTERNS:
        m = pattern.match(gguf_name)
        if m:
            return hf.format(i=m.group(1)) if m.groups() else hf
    return None


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's `permute(w, n_head)`: per head, its interleaved row pairs back to two halves."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _f32(value) -> float:
    """GGUF stores floats as float32: take the shortest decimal that float32 prints (1e-05, not
    9.999999747378752e-06), which is what the original config said."""
    return float(str(np.float32(value)))


def _open(path: Path):
    import gguf  # noqa: PLC0415 - optional heavy import

    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises assorted errors on bad files
        raise CheckpointError(f"{path} is not a readable GGUF file: {e}") from None


def read_gguf_config(reader, path: Path) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in FAMILIES:
        raise UnsupportedArchitectureError(
            f"{path}: GGUF architecture {arch!r} is not supported; lcf_jax supports {', '.join(FAMILIES)}"
        )
    tensors = {t.name: t for t in reader.tensors}
    if "rope_freqs.weight" in tensors:
        raise UnsupportedArchitectureError(
            f"{path}: per-frequency RoPE factors (rope_freqs.weight, Llama-3.1+ GGUF) are not supported; "
            "load the Hugging Face safetensors directory instead"
        )

    def meta(name, default=None):
        return _field(reader, f"{arch}.{name}", default)

    heads = int(meta("attention.head_count"))
    hidden = int(meta("embedding_length"))
    scaling = None
    if meta("rope.scaling.type") not in (None, "none"):
        kind = meta("rope.scaling.type")
        if kind != "linear":
            raise UnsupportedArchitectureError(f"{path}: GGUF rope scaling {kind!r} is not supported")
        scaling = RopeScaling("linear", factor=_f32(meta("rope.scaling.factor")))
    qkv_bias = "blk.0.attn_q.bias" in tensors
    o_bias = "blk.0.attn_output.bias" in tensors
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        family=arch,
        vocab_size=int(tensors["token_embd.weight"].shape[-1]),
        hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length")),
        num_layers=int(meta("block_count")),
        num_heads=heads,
        num_kv_heads=int(meta("attention.head_count_kv", heads)),
        head_dim=int(meta("attention.key_length", hidden // heads)),
        rms_norm_eps=_f32(meta("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=_f32(meta("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        tie_word_embeddings="output.weight" not in tensors,
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias="blk.0.ffn_up.bias" in tensors,
        qk_norm="blk.0.attn_q_norm.weight" in tensors,
        max_position_embeddings=int(meta("context_length", 32768)),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=int(eos) if eos is not None else None,
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
    )


def gguf_config(path: Path) -> ModelConfig:
    """The architecture a GGUF file holds, without reading its tensors."""
    return read_gguf_config(_open(path), path)


def read_gguf(path: Path, expected_for: Callable[[ModelConfig], dict], convert: Callable[[np.ndarray], Any]):
    """Read a GGUF file: returns `(config, {module path: array})`. `expected_for(config)` gives the
    module shapes to fill."""
    from gguf.quants import dequantize  # noqa: PLC0415

    reader = _open(path)
    config = read_gguf_config(reader, path)
    by_hf: dict[str, Any] = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        by_hf[name if name is not None else f"<gguf> {tensor.name}"] = tensor

    def shape(tensor) -> tuple[int, ...]:
        return tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dims fastest-first

    def read(hf_name: str) -> np.ndarray:
        tensor = by_hf[hf_name]
        array = dequantize(tensor.data, tensor.tensor_type).reshape(shape(tensor)).astype(np.float32)
        if config.family == "llama" and hf_name.endswith("self_attn.q_proj.weight"):
            array = _unpermute(array, config.num_heads)
        elif config.family == "llama" and hf_name.endswith("self_attn.k_proj.weight"):
            array = _unpermute(array, config.num_kv_heads)
        return array

    shapes = {name: shape(tensor) for name, tensor in by_hf.items()}
    flat = hf_to_flat(shapes, read, config, expected_for(config), source=str(path), convert=convert)
    return config, flat


def tokenizer_cache_dir() -> Path:
    return Path(os.environ.get("LCF_CACHE", Path.home() / ".cache" / "lcf_jax")) / "tokenizers"


def load_gguf_tokenizer(path: Path) -> Any:
    """The transformers tokenizer embedded in a GGUF file, or None if the file carries none.

    Converting GGUF vocab and merges takes transformers several seconds, so the converted tokenizer
    is cached (under $LCF_CACHE, default ~/.cache/lcf_jax) keyed by the file's name, size and mtime."""
    reader = _open(path)
    if "tokenizer.ggml.model" not in reader.fields:
        return None
    from transformers import AutoTokenizer  # noqa: PLC0415

    stat = path.stat()
    cached = tokenizer_cache_dir() / f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if (cached / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(cached))
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    with contextlib.suppress(OSError):  # a read-only home: carry on uncached
        tokenizer.save_pretrained(str(cached))
    return tokenizer
