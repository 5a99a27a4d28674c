"""The on-disk adapter and KV translator formats, shared by lcf_jax (JAX) and lcf_jax.torch (PyTorch):
file names, what each JSON field holds, and the checks both readers run, so that both refuse the
same files with the same one-line message.

This module imports nothing beyond the standard library, so the PyTorch side can read exports on
machines without JAX. The checks take the reader's own exception class (`error`): CheckpointError
in lcf_jax, AdapterFormatError in lcf_jax.torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

KINDS = ("lcf", "lcfx", "c2c")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
FORMAT_VERSION = 1
TRANSLATOR_CONFIG = "kv_translator.json"
TRANSLATOR_WEIGHTS = "kv_translator.safetensors"
DTYPES = ("float32", "bfloat16")  # the tensor dtypes save_adapter writes

REEXPORT = "re-export the adapter with `lcf export` (or save it again with save_adapter)"
RESAVE_TRANSLATOR = "save the translator again with save_translator (or `lcf export`)"

# What each JSON field holds: kinds of `_IS`, "|"-joined. One table for both readers; the tests
# check that it lists exactly the fields of AdapterSpec, ModelConfig and RopeScaling.
CONFIG_FIELDS = {
    "format_version": "int", "lcf_jax_version": "str", "dtype": "str", "num_params": "int",
    "adapter": "object", "hard_gates": "object",
}  # fmt: skip
ADAPTER_FIELDS = {
    "kind": "str", "sharer": "object", "receiver": "object", "layers": "ints", "source_layers": "ints",
    "layer_map": "str", "latent_width": "count", "hidden_width": "count", "dropout": "number",
    "activation": "str", "gate_init": "number", "message_slots": "count", "message_injection": "str",
    "receiver_conditioned": "bool", "compute_dtype": "str", "up_init": "str", "gate_inference": "str",
    "slot_query_init": "str", "message_norm": "str",
}  # fmt: skip
# Fields an adapter cannot be built without; the others have defaults (files older than the field).
ADAPTER_REQUIRED = ("kind", "sharer", "receiver", "layers", "source_layers", "latent_width", "hidden_width",
                    "activation")  # fmt: skip
# The values a string field may take: the options `lcf_jax.adapters.build` accepts; layer_map also
# "custom", the label of a map given layer by layer (`source_layers`: C2C imports write it).
ADAPTER_CHOICES = {
    "kind": KINDS, "layer_map": ("last_aligned", "k_nearest", "custom"), "activation": ("gelu", "relu", "silu"),
    "message_injection": ("broadcast", "prefix"), "compute_dtype": ("float32", "bfloat16"),
    "up_init": ("lecun", "zeros"), "gate_inference": ("hard", "soft"), "slot_query_init": ("zeros", "normal"),
    "message_norm": ("none", "standardize"),
}  # fmt: skip
MODEL_FIELDS = {
    "family": "str", "vocab_size": "count", "hidden_size": "count", "intermediate_size": "count",
    "num_layers": "count", "num_heads": "count", "num_kv_heads": "count", "head_dim": "count",
    "rms_norm_eps": "number", "rope_theta": "number", "rope_scaling": "object|null",
    "tie_word_embeddings": "bool", "qkv_bias": "bool", "o_bias": "bool", "mlp_bias": "bool", "qk_norm": "bool",
    "max_position_embeddings": "count", "bos_token_id": "int|null", "eos_token_id": "int|ints|null",
    "pad_token_id": "int|null",
}  # fmt: skip
MODEL_REQUIRED = ("family", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "num_kv_heads", "head_dim")  # fmt: skip
ROPE_FIELDS = {
    "rope_type": "str", "factor": "number", "low_freq_factor": "number", "high_freq_factor": "number",
    "original_max_position_embeddings": "count",
}  # fmt: skip
TRANSLATOR_FIELDS = {
    "kind": "str", "sharer": "object", "receiver": "object", "source_layers": "ints", "map": "str", "width": "int",
}  # fmt: skip


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no number


_IS = {
    "int": is_int,
    "count": lambda v: is_int(v) and v >= 1,
    "number": lambda v: is_int(v) or (isinstance(v, float) and math.isfinite(v)),  # json reads NaN, Infinity
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "ints": lambda v: isinstance(v, list) and all(map(is_int, v)),
    "null": lambda v: v is None,
}
_NAMES = {
    "int": "an integer", "count": "a positive integer", "number": "a finite number", "bool": "true or false",
    "str": "a string", "object": "a JSON object", "ints": "a list of integers", "null": "null",
}  # fmt: skip


def show(value: Any, limit: int = 40) -> str:
    """A JSON value as the file spells it, cut short: error messages stay one line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def field_problems(data: dict, fields: dict[str, str], required: tuple[str, ...], what: str) -> list[str]:
    """Missing, unknown and wrong-typed fields of the JSON object `data` (`what`, e.g. "adapter"),
    against a table of `fields` (name -> kinds)."""
    problems = [f"{what} has no field {name!r}" for name in required if name not in data]
    problems += [f"{what} has an unknown field {show(name)}" for name in sorted(set(data) - set(fields))]
    for name, kinds in fields.items():
        if name in data and not any(_IS[kind](data[name]) for kind in kinds.split("|")):
            expected = " or ".join(_NAMES[kind] for kind in kinds.split("|"))
            problems.append(f"{what} field {name!r} is {show(data[name])}, expected {expected}")
    return problems


def model_problems(model: dict, role: str) -> list[str]:
    """What is wrong with a model architecture (`role`: "sharer" or "receiver") as JSON."""
    what = f"the {role} model"
    problems = field_problems(model, MODEL_FIELDS, MODEL_REQUIRED, what)
    rope = model.get("rope_scaling")
    if isinstance(rope, dict):
        problems += field_problems(rope, ROPE_FIELDS, ("rope_type",), f"{what}'s rope_scaling")
    heads, kv_heads = model.get("num_heads"), model.get("num_kv_heads")
    if not problems and heads % kv_heads:
        problems.append(f"{what} has num_heads {heads}, not a multiple of num_kv_heads {kv_heads}")
    return problems


def _layer_problems(layers: list[int], sources: list[int], receiver_layers: int, sharer_layers: int) -> list[str]:
    problems = []
    if not layers or layers != sorted(set(layers)):
        problems.append(f"layers {layers} are not ascending and unique")
    if any(not 0 <= t < receiver_layers for t in layers):
        problems.append(f"layers {layers} are not all receiver layers 0..{receiver_layers - 1}")
    if len(sources) != len(layers):
        problems.append(f"{len(sources)} source_layers for {len(layers)} layers")
    if any(not 0 <= s < sharer_layers for s in sources):
        problems.append(f"source_layers {sources} are not all sharer layers 0..{sharer_layers - 1}")
    return problems


def adapter_problems(adapter: Any) -> list[str]:
    """What is wrong with the `adapter` section of adapter_config.json (empty: nothing): missing,
    unknown and wrong-typed fields, unknown options, layers outside the models."""
    if not isinstance(adapter, dict):
        return [f"the adapter section is {show(adapter)}, expected a JSON object"]
    problems = field_problems(adapter, ADAPTER_FIELDS, ADAPTER_REQUIRED, "adapter")
    for role in ("sharer", "receiver"):
        if isinstance(adapter.get(role), dict):
            problems += model_problems(adapter[role], role)
    if problems:  # values can be judged once every field has its type
        return problems
    for name, choices in ADAPTER_CHOICES.items():
        if name in adapter and adapter[name] not in choices:
            problems.append(f"unknown adapter {name} {adapter[name]!r}; known: {', '.join(choices)}")
    if not 0 <= adapter.get("dropout", 0) < 1:
        problems.append(f"adapter dropout {adapter['dropout']} is not in [0, 1)")
    return problems + _layer_problems(
        adapter["layers"], adapter["source_layers"], adapter["receiver"]["num_layers"], adapter["sharer"]["num_layers"]
    )


def read_json(path: Path, error: type[Exception], remedy: str) -> Any:
    """The parsed JSON file at `path`; one `error` naming it when it is not JSON (or not UTF-8)."""
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise error(f"{path} is not valid JSON ({type(e).__name__}: {e}): {remedy}") from None


def check_config(config: Any, path: Path, error: type[Exception]) -> None:
    """Raise `error`, one line naming `path`, unless `config` (a parsed adapter_config.json) is one
    this version reads. The `adapter` section is checked by `adapter_problems` when it is parsed."""
    if not isinstance(config, dict):
        raise error(f"{path} holds {show(config)}, not an adapter config (a JSON object): {REEXPORT}")
    version = config.get("format_version")
    if is_int(version) and version > FORMAT_VERSION:
        raise error(
            f"{path} has format_version {version}, newer than this lcf_jax reads (up to {FORMAT_VERSION}): "
            "upgrade lcf_jax, or re-export the adapter with this version"
        )
    problems = field_problems(config, CONFIG_FIELDS, tuple(CONFIG_FIELDS), "the config")
    if is_int(version) and version < 1:
        problems.append(f"format_version {version} is not a version (1..{FORMAT_VERSION})")
    if isinstance(config.get("dtype"), str) and config["dtype"] not in DTYPES:
        problems.append(f"dtype {show(config['dtype'])} is not one of {', '.join(DTYPES)}")
    if isinstance(config.get("hard_gates"), dict):
        problems += _gate_entry_problems(config["hard_gates"])
    refuse(problems, path, error, REEXPORT)


def _gate_entry_problems(hard_gates: dict) -> list[str]:
    """hard_gates maps each kept layer to {"key": bool, "value": bool}: the gate is open or shut,
    nothing else (a string or number there must not quietly read as open)."""
    return [
        f'hard_gates[{show(layer)}] is {show(entry)}, expected {{"key": true|false, "value": true|false}}'
        for layer, entry in hard_gates.items()
        if not (isinstance(entry, dict) and set(entry) == {"key", "value"} and all(map(_IS["bool"], entry.values())))
    ]


def refuse(problems: list[str], path: Path | str, error: type[Exception], remedy: str) -> None:
    """Raise `error` listing `problems` (the first six) of the file `path` in one line; nothing when none."""
    if problems:
        raise error(f"{path}: {'; '.join(problems[:6])}; {remedy}")


def gate_tensors(kind: str) -> tuple[str, str]:
    """The names of an adapter's stacked key and value gate logits `[N]`."""
    return ("projectors.key_gate_logit", "projectors.value_gate_logit") if kind == "c2c" else (
        "projectors.k_gate_logit", "projectors.v_gate_logit")  # fmt: skip


def check_weights(
    config: dict,
    weights: Path,
    dtypes: dict[str, str],
    sizes: dict[str, int],
    gates: list[list[float]],
    error: type[Exception],
) -> None:
    """Raise `error` unless the tensors of `weights` agree with what `config` (adapter_config.json)
    says of them: their dtype (names such as "float32"), their total size (num_params), and the hard
    gates (open where the stored logit is > 0; `gates`: the key and the value logits, per kept layer)."""
    problems = [
        f"tensor {name!r} is {dtype}, but {CONFIG_FILE} says dtype {config['dtype']!r}"
        for name, dtype in sorted(dtypes.items())
        if dtype != config["dtype"]
    ][:2]
    if sum(sizes.values()) != config["num_params"]:
        problems.append(f"the tensors hold {sum(sizes.values())} parameters, {CONFIG_FILE} says {config['num_params']}")
    layers = [str(t) for t in config["adapter"]["layers"]]
    stored = config["hard_gates"]
    if sorted(stored) != sorted(layers):
        problems.append(f"{CONFIG_FILE} has hard_gates for layers {sorted(stored)}, expected {layers}")
    else:
        for layer, key, value in zip(layers, *gates):
            if stored[layer] != {"key": key > 0, "value": value > 0}:
                problems.append(
                    f"{CONFIG_FILE} says layer {layer}'s hard gates are {show(stored[layer])}, but its gate logits "
                    f"are {key:.3g} (key) and {value:.3g} (value), open where > 0"
                )
    refuse(problems, weights, error, REEXPORT)


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


# -- KV translators ---------------------------------------------------------------------------------


def translator_shapes(sharer_width: int, receiver_layers: int, receiver_width: int, width: int = 0) -> dict:
    """Every array of a KV translator: the linear maps `[Lr, Ks*Hs, Kr*Hr]` and biases, and with a
    trunk of width d > 0 the trunk's (`lcf_jax.messages.translate.TRUNK`)."""
    lr, ins, outs = receiver_layers, sharer_width, receiver_width
    shapes = {
        "key_map": (lr, ins, outs),
        "key_bias": (lr, outs),
        "value_map": (lr, ins, outs),
        "value_bias": (lr, outs),
    }
    if width:
        if width % 2:
            raise ValueError(f"the trunk's width must be even (it splits into K and V halves), got {width}")
        d, half = width, width // 2
        shapes |= {
            "down": (lr, 2 * ins, d), "down_bias": (lr, d),
            "ffn0_in": (lr, d, 4 * d), "ffn0_in_bias": (lr, 4 * d), "ffn0_out": (lr, 4 * d, d),
            "ffn1_in": (lr, d, 4 * d), "ffn1_in_bias": (lr, 4 * d), "ffn1_out": (lr, 4 * d, d),
            "k_up": (lr, half, outs), "k_up_bias": (lr, outs), "v_up": (lr, half, outs), "v_up_bias": (lr, outs),
        }  # fmt: skip
    return shapes


def check_translator_config(config: Any, path: Path, error: type[Exception]) -> None:
    """Raise `error`, one line naming `path`, unless `config` is a KV translator's config."""
    if not isinstance(config, dict):
        raise error(f"{path} holds {show(config)}, not a KV translator's config (a JSON object): {RESAVE_TRANSLATOR}")
    if config.get("kind") != "kv_translator":
        raise error(f"{path} is not a KV translator's config (kind {show(config.get('kind'))}): {RESAVE_TRANSLATOR}")
    problems = field_problems(config, TRANSLATOR_FIELDS, ("kind", "sharer", "receiver", "source_layers"), "the config")
    for role in ("sharer", "receiver"):
        if isinstance(config.get(role), dict):
            problems += model_problems(config[role], role)
    if not problems:
        problems = _translator_value_problems(config)
    refuse(problems, path, error, RESAVE_TRANSLATOR)


def _translator_value_problems(config: dict) -> list[str]:
    # Files older than the trunk have neither field: a linear map.
    width, kind = config.get("width", 0), config.get("map", "trunk" if config.get("width") else "linear")
    problems = [] if width >= 0 and width % 2 == 0 else [f"width {width} is not an even size >= 0"]
    if kind not in ("linear", "trunk") or (kind == "trunk") != (width > 0):
        problems.append(f"map {show(kind)} does not go with width {width} (linear: 0, trunk: > 0)")
    sharer_layers, receiver_layers = config["sharer"]["num_layers"], config["receiver"]["num_layers"]
    sources = config["source_layers"]
    if len(sources) != receiver_layers or any(not 0 <= s < sharer_layers for s in sources):
        problems.append(
            f"source_layers {show(sources)} is not one sharer layer (0..{sharer_layers - 1}) for each of the "
            f"receiver's {receiver_layers} layers"
        )
    return problems


def translator_arrays(config: dict) -> dict[str, tuple[int, ...]]:
    """The arrays (name -> shape) a checked translator config describes."""
    s, r = config["sharer"], config["receiver"]
    return translator_shapes(
        s["num_kv_heads"] * s["head_dim"], r["num_layers"], r["num_kv_heads"] * r["head_dim"], config.get("width", 0)
    )


def check_translator_arrays(config: dict, path: Path, shapes: dict, dtypes: dict[str, str], error) -> None:
    """Raise `error` unless the arrays of `path` (name -> shape, dtype names) are the float32 arrays
    of the translator `config` describes."""
    problems = tensor_problems(translator_arrays(config), shapes)
    problems += [f"array {n!r} is {d}, expected float32" for n, d in sorted(dtypes.items()) if d != "float32"][:2]
    if problems:
        raise error(f"{path} does not match {TRANSLATOR_CONFIG}: {'; '.join(problems[:8])}; {RESAVE_TRANSLATOR}")
