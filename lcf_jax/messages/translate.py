"""KV translators: one model's cache entries turned into another model's (two different models).

For each receiver layer t a sharer layer G(t) is read (`layer_map`, "k_nearest" by default: both
stacks spread over [0, 1]). A key is un-rotated with the sharer's RoPE at its position, mapped to
the receiver's pre-RoPE key space, and rotated with the receiver's RoPE at the same position (the
two models must share a tokenizer: positions are token positions); values are mapped directly.

The map is linear per layer (with a bias), fitted self-supervised in closed form: both models read
the same texts and the target is the receiver's own pre-RoPE keys and values (ridge least squares,
the exact minimum of the MSE for a linear map; `fit_translator`). A linear map is the first choice
the issue asks us to measure; the LCF projector's trunk without the receiver input is the other
(not built yet: see the issue note). `KVTranslator.translate` turns a `KVMessage` of the sharer
into one the receiver's cache takes (`lcf_jax.messages.kv.place`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from lcf_jax.adapters.blocks import layer_map as make_layer_map
from lcf_jax.messages.kv import KVMessage, model_signature
from lcf_jax.models.config import ModelConfig
from lcf_jax.models.layers import apply_rope, rope_inv_freq


def rotate(x, positions, config: ModelConfig):
    """RoPE of `config` at `positions` (negative positions undo it). x `[..., T, K, H]` with
    positions `[..., T]` (leading axes flattened for `apply_rope`)."""
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    out = apply_rope(flat, jnp.asarray(positions).reshape(-1, x.shape[-3]), rope_inv_freq(config))
    return out.reshape(*lead, *x.shape[-3:])


@dataclasses.dataclass
class KVTranslator:
    """Per receiver layer: keys `pre_k @ key_map[t] + key_bias[t]`, values likewise, reading sharer
    layer `source_layers[t]`. Maps are `[Ks*Hs, Kr*Hr]` float32 arrays."""

    sharer: ModelConfig
    receiver: ModelConfig
    source_layers: tuple[int, ...]
    key_map: np.ndarray  # [Lr, Ks*Hs, Kr*Hr]
    key_bias: np.ndarray  # [Lr, Kr*Hr]
    value_map: np.ndarray
    value_bias: np.ndarray

    def translate(self, message: KVMessage) -> KVMessage:
        """The receiver's message for the sharer's `message` (which must hold every sharer layer
        the map reads)."""
        if message.model != model_signature(self.sharer):
            raise ValueError(
                f"this translator maps {model_signature(self.sharer)} to {model_signature(self.receiver)}; "
                f"the message holds entries of {message.model}"
            )
        index = {layer: n for n, layer in enumerate(message.layers)}
        missing = sorted({s for s in self.source_layers if s not in index})
        if missing:
            raise ValueError(f"the message lacks sharer layers {missing} the translator reads: send them")
        rows = np.asarray([index[s] for s in self.source_layers])
        k, v, positions = message.k[rows], message.v[rows], message.positions[rows]  # [Lr, B, M, Ks, Hs]
        lr, b, m = k.shape[:3]
        pre = rotate(k.astype(jnp.float32), -positions, self.sharer)
        kr, hr = self.receiver.num_kv_heads, self.receiver.head_dim
        new_k = jnp.einsum("LBMI,LIO->LBMO", pre.reshape(lr, b, m, -1), self.key_map) + self.key_bias[:, None, None]
        new_v = jnp.einsum("LBMI,LIO->LBMO", v.astype(jnp.float32).reshape(lr, b, m, -1), self.value_map)
        new_v = new_v + self.value_bias[:, None, None]
        new_k = rotate(new_k.reshape(lr, b, m, kr, hr), positions, self.receiver)
        valid = message.valid[None, :, :, None, None]
        return KVMessage(
            jnp.where(valid, new_k, 0).astype(message.k.dtype),
            jnp.where(valid, new_v.reshape(lr, b, m, kr, hr), 0).astype(message.v.dtype),
            positions,
            message.valid,
            message.starts,
            message.context_lengths,
            tuple(range(self.receiver.num_layers)),
            self.receiver.num_layers,
            model_signature(self.receiver),
        )


def _pre_rope(cache, config: ModelConfig, rows_lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Every real entry's pre-RoPE keys and its values, per layer: `[L, T, K*H]` each."""
    keys, values = [], []
    for b, n in enumerate(rows_lengths):
        k = cache.k[:, b, :n].astype(jnp.float32)  # [L, n, K, H]
        positions = jnp.broadcast_to(jnp.arange(n), (k.shape[0], n))
        keys.append(np.asarray(rotate(k, -positions, config)).reshape(k.shape[0], n, -1))
        values.append(np.asarray(cache.v[:, b, :n], np.float32).reshape(k.shape[0], n, -1))
    return np.concatenate(keys, axis=1), np.concatenate(values, axis=1)


def _ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) minimising |x W + b - y|^2 + ridge |W|^2 (the bias not penalised)."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = (x - mx).astype(np.float64), (y - my).astype(np.float64)
    w = np.linalg.solve(xc.T @ xc + ridge * len(x) * np.eye(x.shape[1]), xc.T @ yc)
    return w.astype(np.float32), (my - mx @ w).astype(np.float32)


def fit_translator(
    sharer,
    receiver,
    texts: Sequence[Sequence[int]],
    *,
    layer_map: str = "k_nearest",
    ridge: float = 1e-3,
) -> tuple[KVTranslator, dict[str, float]]:
    """Fit a translator on `texts` (token ids both models read; they must share a tokenizer):
    the receiver's own pre-RoPE keys and values are the targets. Returns the translator and the
    fit's relative MSE (residual / target variance) for keys and values, averaged over layers."""
    from lcf_jax import communicate  # noqa: PLC0415 - communicate imports this package

    if sharer.config.vocab_size != receiver.config.vocab_size:
        raise ValueError("a KV translator needs models that share a tokenizer (positions are token positions)")
    texts = [list(t) for t in texts if len(t)]
    if not texts:
        raise ValueError("fit_translator needs at least one non-empty text")
    lengths = [len(t) for t in texts]
    xk, xv = _pre_rope(communicate.prefill(sharer, texts), sharer.config, lengths)
    yk, yv = _pre_rope(communicate.prefill(receiver, texts), receiver.config, lengths)
    source = make_layer_map(layer_map, sharer.config.num_layers, receiver.config.num_layers)
    maps = {"key_map": [], "key_bias": [], "value_map": [], "value_bias": []}
    errors = {"key": [], "value": []}
    for t, s in enumerate(source):
        for name, x, y in (("key", xk[s], yk[t]), ("value", xv[s], yv[t])):
            w, bias = _ridge(x, y, ridge)
            maps[f"{name}_map"].append(w)
            maps[f"{name}_bias"].append(bias)
            errors[name].append(float(((x @ w + bias - y) ** 2).mean() / max(y.var(0).mean(), 1e-12)))
    translator = KVTranslator(
        sharer.config, receiver.config, tuple(source), **{k: np.stack(v) for k, v in maps.items()}
    )
    return translator, {f"{k}_relative_mse": float(np.mean(v)) for k, v in errors.items()}


def relative_mse(translator: KVTranslator, sharer, receiver, texts: Sequence[Sequence[int]]) -> dict[str, float]:
    """The translator's relative MSE on other texts (held out)."""
    from lcf_jax import communicate  # noqa: PLC0415

    lengths = [len(t) for t in texts]
    xk, xv = _pre_rope(communicate.prefill(sharer, texts), sharer.config, lengths)
    yk, yv = _pre_rope(communicate.prefill(receiver, texts), receiver.config, lengths)
    out = {}
    for name, xs, ys, w, b in (
        ("key", xk, yk, translator.key_map, translator.key_bias),
        ("value", xv, yv, translator.value_map, translator.value_bias),
    ):
        errs = [((xs[s] @ w[t] + b[t] - ys[t]) ** 2).mean() / max(ys[t].var(0).mean(), 1e-12)
                for t, s in enumerate(translator.source_layers)]  # fmt: skip
        out[f"{name}_relative_mse"] = float(np.mean(errs))
    return out


TRANSLATOR_CONFIG = "kv_translator.json"
TRANSLATOR_WEIGHTS = "kv_translator.safetensors"
_ARRAYS = ("key_map", "key_bias", "value_map", "value_bias")


def save_translator(translator: KVTranslator, directory) -> Path:
    """`directory/kv_translator.safetensors` (the maps) and `kv_translator.json` (the two models'
    architectures and the layer map): no pickle."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    from lcf_jax.adapters.io import _model_config_to_json  # noqa: PLC0415

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: np.ascontiguousarray(getattr(translator, name)) for name in _ARRAYS}, directory / TRANSLATOR_WEIGHTS
    )
    config = {
        "kind": "kv_translator",
        "sharer": _model_config_to_json(translator.sharer),
        "receiver": _model_config_to_json(translator.receiver),
        "source_layers": list(translator.source_layers),
    }
    (directory / TRANSLATOR_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load_translator(directory) -> KVTranslator:
    """A translator `save_translator` wrote; a missing file or misshapen map is one clear error."""
    from safetensors.numpy import load_file  # noqa: PLC0415

    from lcf_jax.adapters.io import _model_config_from_json  # noqa: PLC0415

    directory = Path(directory)
    for name in (TRANSLATOR_CONFIG, TRANSLATOR_WEIGHTS):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory} holds no {name}: save a translator there with save_translator")
    config = json.loads((directory / TRANSLATOR_CONFIG).read_text())
    if config.get("kind") != "kv_translator":
        raise ValueError(
            f"{directory / TRANSLATOR_CONFIG} is not a KV translator's config (kind {config.get('kind')!r})"
        )
    sharer, receiver = _model_config_from_json(config["sharer"]), _model_config_from_json(config["receiver"])
    try:
        arrays = load_file(str(directory / TRANSLATOR_WEIGHTS))
    except Exception as e:  # safetensors raises its own error types for a cut or foreign file
        raise ValueError(
            f"{directory / TRANSLATOR_WEIGHTS} is not a readable safetensors file ({type(e).__name__}: {e})"
        ) from None
    lr = receiver.num_layers
    ins, outs = sharer.num_kv_heads * sharer.head_dim, receiver.num_kv_heads * receiver.head_dim
    want = {"key_map": (lr, ins, outs), "value_map": (lr, ins, outs), "key_bias": (lr, outs), "value_bias": (lr, outs)}
    for name, shape in want.items():
        got = tuple(arrays[name].shape) if name in arrays else None
        if got != shape:
            raise ValueError(f"{directory / TRANSLATOR_WEIGHTS}: {name} has shape {got}, expected {shape}")
    return KVTranslator(sharer, receiver, tuple(config["source_layers"]), **{n: arrays[n] for n in _ARRAYS})
