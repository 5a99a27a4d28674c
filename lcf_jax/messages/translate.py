"""KV translators: one model's cache entries turned into another model's (two different models).

For each receiver layer t a sharer layer G(t) is read (`layer_map`, "k_nearest" by default: both
stacks spread over [0, 1]). A key is un-rotated with the sharer's RoPE at its position, mapped to
the receiver's pre-RoPE key space, and rotated with the receiver's RoPE at the same position (the
two models must share a tokenizer: positions are token positions); values are mapped directly.

The map is linear per layer (with a bias), optionally plus the LCF projector's trunk without the
receiver input (`width` d > 0; its outputs start at zero, so it adds only what the linear map
misses). The linear map alone can be fitted self-supervised in closed form (`fit_translator`:
ridge least squares on the receiver's own pre-RoPE keys and values for texts both models read,
the exact MSE minimum); `lcf train` with configs/kv_translator.py trains either by gradient, from
that fit (lcf_jax/train/translator.py). Measured on a tiny heterogeneous pair
(experiments/kv_translator_map.py): the trunk predicts held-out entries better and leaves the
receiver less far from reading the text itself, so it is the config's default.
`KVTranslator.translate` turns a `KVMessage` of the sharer into one the receiver's cache takes
(`lcf_jax.messages.kv.place`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lcf_jax.adapter_format import (
    RESAVE_TRANSLATOR,
    TRANSLATOR_CONFIG,
    TRANSLATOR_WEIGHTS,
    check_translator_arrays,
    check_translator_config,
    read_json,
    translator_shapes,
)
from lcf_jax.adapters.blocks import layer_map as make_layer_map
from lcf_jax.adapters.io import model_config_from_json, model_config_to_json
from lcf_jax.errors import CheckpointError
from lcf_jax.messages.kv import KVMessage, model_signature
from lcf_jax.models.config import ModelConfig
from lcf_jax.models.layers import apply_rope, rope_inv_freq
from lcf_jax.sampling import prefill


def rotate(x, positions, config: ModelConfig):
    """RoPE of `config` at `positions` (negative positions undo it). x `[..., T, K, H]` with
    positions `[..., T]` (leading axes flattened for `apply_rope`)."""
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    out = apply_rope(flat, jnp.asarray(positions).reshape(-1, x.shape[-3]), rope_inv_freq(config))
    return out.reshape(*lead, *x.shape[-3:])


ARRAYS = ("key_map", "key_bias", "value_map", "value_bias")  # the linear map, in every translator
# The trunk (map "trunk"): the LCF projector's trunk without the receiver input, added to the linear
# map. z = down(concat(K, V)); two residual GELU FFN blocks of width 4d; K += k_up(z[:d/2]), V += v_up(z[d/2:]).
TRUNK = ("down", "down_bias", "ffn0_in", "ffn0_in_bias", "ffn0_out", "ffn1_in", "ffn1_in_bias", "ffn1_out",
         "k_up", "k_up_bias", "v_up", "v_up_bias")  # fmt: skip


def _per_layer(x, w, b=None):
    """x `[L, ..., I]` @ w `[L, I, O]` (+ b `[L, O]`), layer by layer."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    out = jnp.einsum("LNI,LIO->LNO", flat, w)
    if b is not None:
        out = out + b[:, None]
    return out.reshape(*x.shape[:-1], w.shape[-1])


def map_entries(arrays, keys, values):
    """Pre-RoPE sharer keys and values `[Lr, ..., Ks*Hs]` (layer t holding sharer layer
    `source_layers[t]`) -> the receiver's `[Lr, ..., Kr*Hr]`: the per-layer affine maps in
    `arrays` (`KVTranslator.arrays`, or the parameters training differentiates), plus the trunk
    when `arrays` holds one."""
    k = _per_layer(keys, arrays["key_map"], arrays["key_bias"])
    v = _per_layer(values, arrays["value_map"], arrays["value_bias"])
    if "down" not in arrays:
        return k, v
    z = _per_layer(jnp.concatenate([keys, values], -1), arrays["down"], arrays["down_bias"])
    for block in ("ffn0", "ffn1"):
        hidden = jax.nn.gelu(_per_layer(z, arrays[f"{block}_in"], arrays[f"{block}_in_bias"]), approximate=True)
        z = z + _per_layer(hidden, arrays[f"{block}_out"])
    half = z.shape[-1] // 2
    k = k + _per_layer(z[..., :half], arrays["k_up"], arrays["k_up_bias"])
    return k, v + _per_layer(z[..., half:], arrays["v_up"], arrays["v_up_bias"])


def array_shapes(sharer: ModelConfig, receiver: ModelConfig, width: int = 0) -> dict[str, tuple[int, ...]]:
    """Every array of a translator between the two models; `width` 0: linear, d > 0: with a trunk of width d."""
    return translator_shapes(sharer.kv_width, receiver.num_layers, receiver.kv_width, width)


def init_trunk(sharer: ModelConfig, receiver: ModelConfig, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A trunk that adds nothing yet: lecun-normal inputs, zero output projections (a translator
    starts where its linear map is and learns what that map misses)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in array_shapes(sharer, receiver, width).items():
        if name in ARRAYS:
            continue
        if name in ("down", "ffn0_in", "ffn1_in", "ffn0_out", "ffn1_out"):
            scale = (0.1 if name.endswith("out") else 1.0) / np.sqrt(shape[1])
            out[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
        else:
            out[name] = np.zeros(shape, np.float32)
    return out


@dataclasses.dataclass
class KVTranslator:
    """Per receiver layer t, sharer layer `source_layers[t]`'s entries mapped by `arrays`: the
    linear maps `[Lr, Ks*Hs, Kr*Hr]` and biases (`ARRAYS`), and the trunk's when it has one."""

    sharer: ModelConfig
    receiver: ModelConfig
    source_layers: tuple[int, ...]
    arrays: dict[str, np.ndarray]

    @property
    def width(self) -> int:
        """The trunk's width d (0: linear only)."""
        return int(self.arrays["down"].shape[-1]) if "down" in self.arrays else 0

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
        new_k, new_v = map_entries(self.arrays, pre.reshape(lr, b, m, -1), v.astype(jnp.float32).reshape(lr, b, m, -1))
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


def pre_rope(cache, config: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """Every entry's pre-RoPE key and its value, heads flattened: `[L, B, S, K*H]` each, float32,
    for a cache whose rows start at position 0 (a plain prefill): what translators map between."""
    positions = jnp.broadcast_to(jnp.arange(cache.k.shape[2]), cache.k.shape[:3])
    keys = rotate(cache.k.astype(jnp.float32), -positions, config)
    flat = lambda x: x.reshape(*x.shape[:3], -1)  # noqa: E731
    return flat(keys), flat(cache.v.astype(jnp.float32))


def _real_entries(cache, config: ModelConfig, rows_lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The pre-RoPE keys and values of every row's real entries, rows after each other: `[L, T, K*H]`."""
    keys, values = (np.asarray(x) for x in pre_rope(cache, config))
    take = lambda x: np.concatenate([x[:, b, :n] for b, n in enumerate(rows_lengths)], axis=1)  # noqa: E731
    return take(keys), take(values)


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

    if sharer.config.vocab_size != receiver.config.vocab_size:
        raise ValueError("a KV translator needs models that share a tokenizer (positions are token positions)")
    texts = [list(t) for t in texts if len(t)]
    if not texts:
        raise ValueError("fit_translator needs at least one non-empty text")
    lengths = [len(t) for t in texts]
    xk, xv = _real_entries(prefill(sharer, texts), sharer.config, lengths)
    yk, yv = _real_entries(prefill(receiver, texts), receiver.config, lengths)
    source = make_layer_map(layer_map, sharer.config.num_layers, receiver.config.num_layers)
    maps = {"key_map": [], "key_bias": [], "value_map": [], "value_bias": []}
    errors = {"key": [], "value": []}
    for t, s in enumerate(source):
        for name, x, y in (("key", xk[s], yk[t]), ("value", xv[s], yv[t])):
            w, bias = _ridge(x, y, ridge)
            maps[f"{name}_map"].append(w)
            maps[f"{name}_bias"].append(bias)
            errors[name].append(float(((x @ w + bias - y) ** 2).mean() / max(y.var(0).mean(), 1e-12)))
    translator = KVTranslator(sharer.config, receiver.config, tuple(source), {k: np.stack(v) for k, v in maps.items()})
    return translator, {f"{k}_relative_mse": float(np.mean(v)) for k, v in errors.items()}


def relative_mse(translator: KVTranslator, sharer, receiver, texts: Sequence[Sequence[int]]) -> dict[str, float]:
    """The translator's relative MSE (residual / target variance, per layer, averaged) on texts
    (held out)."""

    lengths = [len(t) for t in texts]
    xk, xv = _real_entries(prefill(sharer, texts), sharer.config, lengths)
    yk, yv = _real_entries(prefill(receiver, texts), receiver.config, lengths)
    rows = np.asarray(translator.source_layers)
    pk, pv = map_entries(translator.arrays, jnp.asarray(xk[rows]), jnp.asarray(xv[rows]))
    out = {}
    for name, p, y in (("key", np.asarray(pk), yk), ("value", np.asarray(pv), yv)):
        errors = ((p - y) ** 2).mean((1, 2)) / np.maximum(y.var(1).mean(-1), 1e-12)
        out[f"{name}_relative_mse"] = float(errors.mean())
    return out


def save_translator(translator: KVTranslator, directory) -> Path:
    """`directory/kv_translator.safetensors` (the maps) and `kv_translator.json` (the two models'
    architectures and the layer map): no pickle."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({name: np.ascontiguousarray(a, np.float32) for name, a in translator.arrays.items()},
              str(directory / TRANSLATOR_WEIGHTS))  # fmt: skip
    config = {
        "kind": "kv_translator",
        "sharer": model_config_to_json(translator.sharer),
        "receiver": model_config_to_json(translator.receiver),
        "source_layers": list(translator.source_layers),
        "map": "trunk" if translator.width else "linear",
        "width": translator.width,
    }
    (directory / TRANSLATOR_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load_translator(directory) -> KVTranslator:
    """A translator `save_translator` wrote. A missing file is a FileNotFoundError; anything wrong
    in the files (checked as lcf_jax.torch.load_kv_translator checks them) one CheckpointError line
    naming the file."""
    from safetensors.numpy import load_file  # noqa: PLC0415

    directory = Path(directory)
    for name in (TRANSLATOR_CONFIG, TRANSLATOR_WEIGHTS):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory} holds no {name}: save a translator there with save_translator")
    path, weights = directory / TRANSLATOR_CONFIG, directory / TRANSLATOR_WEIGHTS
    config = read_json(path, CheckpointError, RESAVE_TRANSLATOR)
    check_translator_config(config, path, CheckpointError)
    sharer = model_config_from_json(config["sharer"], path, "sharer")
    receiver = model_config_from_json(config["receiver"], path, "receiver")
    try:
        arrays = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for a cut or foreign file
        raise CheckpointError(
            f"{weights} is not a readable safetensors file ({type(e).__name__}: {e}): {RESAVE_TRANSLATOR}"
        ) from None
    shapes, dtypes = {n: a.shape for n, a in arrays.items()}, {n: a.dtype.name for n, a in arrays.items()}
    check_translator_arrays(config, weights, shapes, dtypes, CheckpointError)
    want = array_shapes(sharer, receiver, config.get("width", 0))
    return KVTranslator(sharer, receiver, tuple(config["source_layers"]), {n: arrays[n] for n in want})
