"""Loading: GGUF files (written here from tiny models), presets, registered names, and the errors a
user sees for bad input."""

from __future__ import annotations

import json
import shutil

import gguf
import jax
import numpy as np
import pytest
import torch
from hf_tiny import save_tiny, tiny_hf_model
from safetensors.numpy import load_file, save_file

import lcf_jax
from lcf_jax.errors import UserError
from lcf_jax.loading import load_model_config
from lcf_jax.loading.gguf import _unpermute
from lcf_jax.models import preset, preset_names

TOKENS = np.random.RandomState(1).randint(0, 97, (1, 9)).astype(np.int32)

_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to Llama q/k rows (written independently of our inverse)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def write_gguf(model: torch.nn.Module, path, family: str, quantize_embedding: bool = False) -> None:
    """Write a tiny model as llama.cpp would: GGUF names, permuted Llama q/k, metadata keys."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), family)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        array = tensor.numpy().astype(np.float32)
        if name.startswith("model.layers."):
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            out = f"blk.{layer}.{_GGUF_NAMES[rest]}"
            if family == "llama" and rest == "self_attn.q_proj.weight":
                array = llama_cpp_permute(array, cfg.num_attention_heads)
            if family == "llama" and rest == "self_attn.k_proj.weight":
                array = llama_cpp_permute(array, cfg.num_key_value_heads)
        else:
            out = _GGUF_NAMES[name]
        if out == "token_embd.weight" and quantize_embedding:
            writer.add_tensor(
                out,
                gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        else:
            writer.add_tensor(out, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize(
    "family,overrides",
    [
        ("llama", dict(num_attention_heads=6, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)),
        ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
        ("qwen3", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)),
    ],
)
def test_gguf_file_matches_transformers(tmp_path, family, overrides):
    model = tiny_hf_model(family, **overrides)
    path = tmp_path / f"{family}.gguf"
    write_gguf(model, path, family)
    loaded = lcf_jax.load_model(path)
    assert loaded.config.family == family
    assert loaded.config.tie_word_embeddings == model.config.tie_word_embeddings
    assert loaded.tokenizer is None  # these files carry no tokenizer
    logits, _ = loaded(TOKENS)
    assert np.abs(np.asarray(logits) - torch_logits(model, TOKENS)).max() <= 1e-4


def test_gguf_quantized_tensor_is_dequantized(tmp_path):
    model = tiny_hf_model("llama", hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    path = tmp_path / "q8.gguf"
    write_gguf(model, path, "llama", quantize_embedding=True)
    loaded = lcf_jax.load_model(path)
    embedding = np.asarray(loaded.params["embed_tokens"]["embedding"][...])
    reference = model.model.embed_tokens.weight.detach().numpy()
    # Q8_0: one scale per 32 values, 8-bit codes: error below 1% of each block's largest value.
    assert 0 < np.abs(embedding - reference).max() <= 0.01 * np.abs(reference).max()


def test_unpermute_inverts_llama_cpp_permute():
    weight = np.arange(6 * 8 * 5, dtype=np.float32).reshape(48, 5)
    np.testing.assert_array_equal(_unpermute(llama_cpp_permute(weight, 6), 6), weight)
    assert not np.array_equal(llama_cpp_permute(weight, 6), weight)


# Published parameter counts of the real checkpoints (tied embeddings counted once).
@pytest.mark.parametrize(
    "name,count",
    [
        ("qwen2.5-0.5b", 494_032_768),
        ("qwen3-0.6b", 596_049_920),
        ("llama-3.2-1b", 1_235_814_400),
        ("smollm2-135m", 134_515_008),
    ],
)
def test_presets_have_the_real_parameter_counts_without_weights(name, count):
    from lcf_jax.models.model import abstract_transformer

    _, abstract = abstract_transformer(preset(name))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract)) == count


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(KeyError, match="qwen3-0.6b") as err:
        preset("gpt-5")
    for name in ("qwen2.5-0.5b", "llama-3.2-1b", "smollm2-135m"):
        assert name in str(err.value) and name in preset_names()


@pytest.fixture
def tiny_dir(tmp_path):
    return save_tiny(tiny_hf_model("qwen3", num_attention_heads=4, num_key_value_heads=2, head_dim=16), tmp_path / "m")


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_model_config_reads_without_the_weights(tiny_dir, tmp_path, monkeypatch):
    hf_model = tiny_hf_model("llama", num_attention_heads=4, num_key_value_heads=2)
    write_gguf(hf_model, tmp_path / "llama.gguf", "llama")
    want = {source: lcf_jax.load_model(source).config for source in (tiny_dir, tmp_path / "llama.gguf")}

    def no_weights(*args, **kwargs):
        raise AssertionError("load_model_config read weights")

    monkeypatch.setattr(lcf_jax.loading, "read_hf_weights", no_weights)
    monkeypatch.setattr(lcf_jax.loading, "read_gguf", no_weights)
    for source, config in want.items():
        assert load_model_config(source) == config
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(UserError, match="neither a model directory nor a .gguf file"):
        load_model_config(tmp_path / "notes.txt")


def test_missing_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        lcf_jax.load_model(tmp_path / "nope")
    assert "nope" in one_line(err) and "smollm2-135m" in str(err.value)


def test_unsupported_architecture_is_named(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    config["model_type"] = "mistral"
    (tiny_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(lcf_jax.UnsupportedArchitectureError, match="mistral") as err:
        lcf_jax.load_model(tiny_dir)
    one_line(err)


def test_unsupported_setting_is_named(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (tiny_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(lcf_jax.UnsupportedArchitectureError, match="yarn"):
        lcf_jax.load_model(tiny_dir)


def test_missing_tensor_is_named(tiny_dir):
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    save_file(tensors, str(tiny_dir / "model.safetensors"))
    with pytest.raises(
        lcf_jax.CheckpointError, match=r"missing tensor 'model\.layers\.1\.self_attn\.k_norm\.weight'"
    ) as err:
        lcf_jax.load_model(tiny_dir)
    one_line(err)


def test_wrong_shape_is_named(tiny_dir):
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    tensors["model.layers.2.mlp.up_proj.weight"] = np.zeros((81, 48), np.float32)
    save_file(tensors, str(tiny_dir / "model.safetensors"))
    with pytest.raises(
        lcf_jax.CheckpointError,
        match=r"'model\.layers\.2\.mlp\.up_proj\.weight' has shape \(81, 48\), expected \(80, 48\)",
    ):
        lcf_jax.load_model(tiny_dir)


def test_unexpected_tensor_is_named(tiny_dir):
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    tensors["model.layers.0.self_attn.rotary.inv_freq"] = np.zeros((8,), np.float32)
    save_file(tensors, str(tiny_dir / "model.safetensors"))
    with pytest.raises(lcf_jax.CheckpointError, match="unexpected tensor 'model.layers.0.self_attn.rotary.inv_freq'"):
        lcf_jax.load_model(tiny_dir)


def test_truncated_safetensors_is_reported(tiny_dir):
    data = (tiny_dir / "model.safetensors").read_bytes()
    (tiny_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(lcf_jax.CheckpointError, match="truncated") as err:
        lcf_jax.load_model(tiny_dir)
    one_line(err)


def test_pickled_checkpoint_is_refused(tiny_dir):
    (tiny_dir / "model.safetensors").unlink()
    (tiny_dir / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(lcf_jax.CheckpointError, match="never loads"):
        lcf_jax.load_model(tiny_dir)


def test_corrupt_gguf_is_reported(tmp_path):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(lcf_jax.CheckpointError, match="bad.gguf"):
        lcf_jax.load_model(tmp_path / "bad.gguf")


def test_bad_dtype_and_bad_tokens_are_named(tiny_dir):
    with pytest.raises(ValueError, match="dtype"):
        lcf_jax.load_model(tiny_dir, dtype="int8")
    model = lcf_jax.load_model(tiny_dir)
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        model(np.zeros((5,), np.int32))
    with pytest.raises(ValueError, match=r"\[0, 97\)"):
        model(np.array([[3, 97]], np.int32))


def test_cache_of_another_model_is_refused(tiny_dir, tmp_path):
    model = lcf_jax.load_model(tiny_dir)
    other = lcf_jax.load_model(
        save_tiny(tiny_hf_model("qwen2", num_attention_heads=4, num_key_value_heads=1), tmp_path / "o")
    )
    _, cache = other(TOKENS)
    with pytest.raises(ValueError, match=r"\[L, B, S, K, H\]"):
        model(TOKENS, cache)


def test_sharded_checkpoint_loads(tiny_dir, tmp_path):
    from lcf_jax.loading.safetensors import write_hf_directory
    from lcf_jax.models.model import flat_from_state

    model = lcf_jax.load_model(tiny_dir)
    flat = {k: np.asarray(v) for k, v in flat_from_state(model.params).items()}
    out = write_hf_directory(tmp_path / "sharded", model.config, flat, max_shard_bytes=20_000)
    assert len(list(out.glob("model-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").exists()
    again = lcf_jax.load_model(out)
    np.testing.assert_array_equal(np.asarray(again(TOKENS)[0]), np.asarray(model(TOKENS)[0]))
    shutil.rmtree(out)
