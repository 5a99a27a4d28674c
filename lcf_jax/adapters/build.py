"""`build(kind, sharer, receiver, ...)`: the one way to make an adapter; `count_params`."""

from __future__ import annotations

from collections.abc import Iterable

from flax import nnx

from lcf_jax.adapters.adapter import KINDS, Adapter, AdapterSpec, make_adapter
from lcf_jax.adapters.blocks import ACTIVATIONS, COMPUTE_DTYPES
from lcf_jax.adapters.blocks import layer_map as make_layer_map
from lcf_jax.errors import ConfigError
from lcf_jax.models import preset
from lcf_jax.models.config import ModelConfig
from lcf_jax.trees import num_params


def model_config(model) -> ModelConfig:
    """Accept a ModelConfig, a loaded Model, or a preset name."""
    if isinstance(model, ModelConfig):
        return model
    if isinstance(model, str):
        return preset(model)
    if hasattr(model, "config") and isinstance(model.config, ModelConfig):
        return model.config
    raise TypeError(f"expected a ModelConfig, a Model or a preset name, got {type(model).__name__}")


def make_spec(
    kind: str,
    sharer,
    receiver,
    *,
    latent_width: int = 128,
    layer_map: str = "last_aligned",
    keep_layers: Iterable[int] | None = None,
    gate_init: float | None = None,
    dropout: float = 0.1,
    activation: str = "gelu",
    hidden_width: int = 1024,
    message_slots: int = 1,
    message_injection: str = "broadcast",
    receiver_conditioned: bool = False,
    compute_dtype: str = "float32",
    up_init: str = "lecun",
    gate_inference: str = "hard",
    slot_query_init: str = "zeros",
    message_norm: str = "none",
) -> AdapterSpec:
    if kind not in KINDS:
        raise ConfigError(f"unknown adapter kind {kind!r}; choose one of {KINDS}")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    if kind != "lcfx" and (message_slots != 1 or receiver_conditioned or message_injection != "broadcast"):
        raise ConfigError("message_slots, message_injection and receiver_conditioned are LCF-X options (kind='lcfx')")
    if up_init not in ("lecun", "zeros"):
        raise ConfigError(f"up_init must be 'lecun' or 'zeros', got {up_init!r}")
    if gate_inference not in ("hard", "soft"):
        raise ConfigError(f"gate_inference must be 'hard' or 'soft', got {gate_inference!r}")
    if kind == "c2c" and (up_init != "lecun" or gate_inference != "hard"):
        raise ConfigError("up_init and gate_inference are options of the LCF projector (kind 'lcf' or 'lcfx')")
    if slot_query_init not in ("zeros", "normal"):
        raise ConfigError(f"slot_query_init must be 'zeros' or 'normal', got {slot_query_init!r}")
    if message_norm not in ("none", "standardize"):
        raise ConfigError(f"message_norm must be 'none' or 'standardize', got {message_norm!r}")
    if kind != "lcfx" and (slot_query_init != "zeros" or message_norm != "none"):
        raise ConfigError("slot_query_init and message_norm are LCF-X options (kind='lcfx')")
    if message_injection not in ("broadcast", "prefix"):
        raise ConfigError(f"message_injection must be 'broadcast' or 'prefix', got {message_injection!r}")
    if message_injection == "broadcast" and message_slots != 1:
        raise ConfigError("several message slots need message_injection='prefix' (broadcast mode sends one summary)")
    sharer_config, receiver_config = model_config(sharer), model_config(receiver)
    mapping = make_layer_map(layer_map, sharer_config.num_layers, receiver_config.num_layers)
    layers = tuple(range(receiver_config.num_layers)) if keep_layers is None else tuple(sorted(set(keep_layers)))
    bad = [t for t in layers if not 0 <= t < receiver_config.num_layers]
    if bad or not layers:
        raise ConfigError(
            f"keep_layers must be a non-empty subset of the receiver's layers 0..{receiver_config.num_layers - 1}, "
            f"got {sorted(set(keep_layers or []))}"
        )
    if gate_init is None:
        # LCF-X starts its gates open (sigmoid(1) = 0.73): at 0 they did not move early in training.
        gate_init = 1.0 if kind == "lcfx" else 0.0
    return AdapterSpec(
        kind=kind,
        sharer=sharer_config,
        receiver=receiver_config,
        layers=layers,
        source_layers=tuple(mapping[t] for t in layers),
        layer_map=layer_map,
        latent_width=latent_width,
        hidden_width=hidden_width,
        dropout=dropout,
        activation=activation,
        gate_init=float(gate_init),
        message_slots=message_slots,
        message_injection=message_injection,
        receiver_conditioned=receiver_conditioned,
        compute_dtype=compute_dtype,
        up_init=up_init,
        gate_inference=gate_inference,
        slot_query_init=slot_query_init,
        message_norm=message_norm,
    )


def build(kind: str, sharer, receiver, *, seed: int = 0, abstract: bool = False, **options) -> Adapter:
    """An adapter of `kind` ("lcf", "lcfx" or "c2c") between a sharer and a receiver (ModelConfigs,
    loaded Models or preset names). Options: latent_width=128, layer_map="last_aligned" | "k_nearest",
    keep_layers=None (all receiver layers), gate_init (0, or +1 for lcfx), dropout=0.1,
    activation="gelu", hidden_width=1024 (c2c), compute_dtype="float32" (or "bfloat16": matmul inputs
    in bf16; parameters and everything else stay float32); lcfx only: message_slots=1,
    message_injection="broadcast" (or "prefix": the slots become extra receiver cache entries),
    receiver_conditioned=False, slot_query_init="zeros" (or "normal": distinct slots),
    message_norm="none" (or "standardize": see `MessageAdapter.calibrate_message_norm`). `abstract=True`
    gives shape-only parameters (no memory), e.g. to count them."""
    spec = make_spec(kind, sharer, receiver, **options)
    if abstract:
        return nnx.eval_shape(lambda: make_adapter(spec, rngs=nnx.Rngs(seed)))
    return make_adapter(spec, rngs=nnx.Rngs(seed))


def count_params(adapter: nnx.Module) -> int:
    """Trainable parameters of an adapter, real or abstract."""
    return num_params(nnx.state(adapter, nnx.Param))


def size_mb(adapter: nnx.Module, bytes_per_param: int = 2) -> float:
    """Size in MB (10^6 bytes) when stored at `bytes_per_param` (2: bf16, as the paper reports)."""
    return count_params(adapter) * bytes_per_param / 1e6
