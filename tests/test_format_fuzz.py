"""Fuzzing the on-disk formats lcf_jax reads: saved adapters (`adapter.safetensors` +
`adapter_config.json`, read by lcf_jax and by lcf_jax.torch) and KV translator exports
(`kv_translator.safetensors` + `kv_translator.json`, read by both too).

Every corrupted directory must either load with exactly the tensors that were saved, or be refused
with the project's own error (CheckpointError in JAX, AdapterFormatError in torch) in one line that
names the corrupted file: never a bare KeyError/TypeError from deep inside, never a silent load of
something else. The corruptions are deterministic (seeded), a few hundred in all: bytes flipped in
the safetensors header, truncations, wrong-typed and garbage JSON values, missing, empty and non-JSON
files.

A flipped byte inside tensor data cannot be detected without a checksum, which the format does not
carry: such cases ("body" flips below) only have to load or fail cleanly, not to be caught.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import struct
import typing
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from json_edits import DELETE, set_field
from tiny_pair import RECEIVER, SHARER

from lcf_jax import adapter_format
from lcf_jax.adapter_format import CONFIG_FILE, FORMAT_VERSION, TRANSLATOR_CONFIG, TRANSLATOR_WEIGHTS, WEIGHTS_FILE
from lcf_jax.adapters import build
from lcf_jax.adapters.adapter import AdapterSpec
from lcf_jax.adapters.io import flat_params, load_adapter, save_adapter
from lcf_jax.loading import CheckpointError
from lcf_jax.messages.translate import KVTranslator, array_shapes, load_translator, save_translator

lt = pytest.importorskip("lcf_jax.torch")

SEED = 17
# Wrong-typed and garbage JSON values, tried in every config field they are tried in.
GARBAGE = ("garbage", 3, -1, 2.5, True, None, [1])
# Gate logits per kept layer (key, value): mixed signs, so every hard gate value is exercised.
GATES = ((1.0, -1.0), (-0.5, 0.5), (2.0, 3.0), (-2.0, -3.0))


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    file: str  # the file the corruption touches: any error must name it
    corrupt: Callable[[Path], None]
    refuse: bool = True  # False: a load of the saved tensors is right too (a harmless or valid change)
    exact: bool = True  # False: tensor bytes changed, a load may give other values
    missing: bool = False  # the file is gone: FileNotFoundError is the documented answer too


# -- corruptions ----------------------------------------------------------------------------------


def rewrite(name: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def corrupt(directory: Path) -> None:
        path = directory / name
        path.write_bytes(change(path.read_bytes()))

    return corrupt


def edit_json(name: str, keys: tuple[str, ...], value) -> Callable[[Path], None]:
    """Set (or, with DELETE, remove) the field at `keys` of the JSON file `name`."""

    def change(raw: bytes) -> bytes:
        return json.dumps(set_field(json.loads(raw), keys, value)).encode()

    return rewrite(name, change)


def header_length(raw: bytes) -> int:
    return struct.unpack("<Q", raw[:8])[0]


def edit_header(change: Callable[[dict], object]) -> Callable[[bytes], bytes]:
    """A safetensors file whose header is `change(parsed header)` (the length field kept right)."""

    def apply(raw: bytes) -> bytes:
        n = header_length(raw)
        text = json.dumps(change(json.loads(raw[8 : 8 + n]))).encode()
        return struct.pack("<Q", len(text)) + text + raw[8 + n :]

    return apply


def first(header: dict) -> str:
    return min(name for name in header if name != "__metadata__")


def with_first(**fields) -> Callable[[dict], dict]:
    """The header with fields of its first tensor's entry replaced (DELETE: removed)."""

    def change(header: dict) -> dict:
        entry = {**header[first(header)], **fields}
        header[first(header)] = {k: v for k, v in entry.items() if v is not DELETE}
        return header

    return change


def flip(position: int, mask: int) -> Callable[[bytes], bytes]:
    return lambda raw: raw[:position] + bytes([raw[position] ^ mask]) + raw[position + 1 :]


def replace_once(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def apply(raw: bytes) -> bytes:
        assert old in raw, old
        return raw.replace(old, new, 1)

    return apply


def set_length(change: Callable[[int], int]) -> Callable[[bytes], bytes]:
    """The header length field changed; safetensors pads the header with spaces, so a length a
    few bytes short still parses and would shift every tensor."""
    return lambda raw: struct.pack("<Q", change(header_length(raw))) + raw[8:]


def flip_cases(weights: str, raw: bytes, rng: np.random.Generator, flips: int) -> list[Case]:
    """Random byte flips in the length field, in the JSON header (`flips` of them) and in tensor data."""
    end = 8 + header_length(raw)
    positions = list(range(8)) + sorted(rng.choice(np.arange(8, end), size=flips, replace=False).tolist())
    # A flip inside a metadata string can be harmless: those may load.
    cases = [
        Case(f"flip byte {p}", weights, rewrite(weights, flip(p, int(rng.integers(1, 256)))), refuse=False)
        for p in positions
    ]
    body = rng.choice(np.arange(end, len(raw)), size=4, replace=False)
    # Undetectable without a checksum (see the module docstring), unless a gate logit changes sign.
    return cases + [
        Case(f"body flip {p}", weights, rewrite(weights, flip(int(p), 0x40)), refuse=False, exact=False) for p in body
    ]


def header_edit_cases(weights: str) -> list[Case]:
    """Targeted edits of the safetensors header: malformed entries, another dtype, a wrong length."""
    edits = {
        "header a JSON list": lambda h: list(h),
        "entry a string": lambda h: {**h, first(h): "garbage"},
        "entry a list": lambda h: {**h, first(h): [1, 2]},
        "entry lacks shape": with_first(shape=DELETE),
        "entry lacks dtype": with_first(dtype=DELETE),
        "entry lacks data_offsets": with_first(data_offsets=DELETE),
        "shape a string": with_first(shape="garbage"),
        "shape holds a float": with_first(shape=[1.5]),
        "shape holds true": with_first(shape=[True]),
        "shape negative": with_first(shape=[-1]),
        "dtype a number": with_first(dtype=5),
        "dtype unknown": with_first(dtype="Q7"),
        "offsets of one int": with_first(data_offsets=[0]),
        "offsets strings": with_first(data_offsets=["a", "b"]),
        "offsets reversed": lambda h: with_first(data_offsets=h[first(h)]["data_offsets"][::-1])(h),
        "metadata a list": lambda h: {**h, "__metadata__": [1]},
    }
    cases = [Case(name, weights, rewrite(weights, edit_header(change))) for name, change in edits.items()]
    cases += [
        Case("rename shape", weights, rewrite(weights, replace_once(b'"shape"', b'"shapf"'))),
        Case("F32 read as I32", weights, rewrite(weights, replace_once(b'"F32"', b'"I32"'))),
        Case("F32 read as F16", weights, rewrite(weights, replace_once(b'"F32"', b'"F16"'))),
        Case("header length + 1", weights, rewrite(weights, set_length(lambda n: n + 1))),
        Case("header length 2**40", weights, rewrite(weights, set_length(lambda n: 2**40))),
    ]
    return cases + [
        Case(f"header length - {k}", weights, rewrite(weights, set_length(lambda n, k=k: n - k))) for k in range(1, 8)
    ]


def truncation_cases(name: str, lengths) -> list[Case]:
    """The file cut to each of `lengths` (negative: that many bytes short), and 8 bytes too long."""
    cases = [
        Case(f"{name} cut at byte {n}", name, rewrite(name, lambda raw, n=n: raw[:n])) for n in sorted(set(lengths))
    ]
    return [*cases, Case(f"{name} with 8 bytes appended", name, rewrite(name, lambda raw: raw + bytes(8)))]


def safetensors_cuts(raw: bytes) -> list[int]:
    """Lengths inside the length field, the header and the tensor data."""
    end = 8 + header_length(raw)
    return [0, 4, 8, 9, end // 2, end - 1, end, end + 1, len(raw) // 2, len(raw) - 1]


def file_cases(name: str) -> list[Case]:
    """The file missing, empty, or holding something else than its format."""

    def remove(directory: Path) -> None:
        (directory / name).unlink()

    contents = {
        "empty": b"",
        "text": b"not json, not safetensors\n",
        "binary": bytes(range(256)),
        "invalid UTF-8": b'{"a": "\xff\xfe"}',
        "a JSON list": b"[1, 2, 3]",
        "a JSON string": b'"garbage"',
        "JSON null": b"null",
    }
    cases = [Case(f"{name} is {what}", name, rewrite(name, lambda raw, c=c: c)) for what, c in contents.items()]
    return [*cases, Case(f"{name} missing", name, remove, missing=True)]


def json_cases(name: str, keys: tuple[str, ...], values=GARBAGE, valid=lambda value: False) -> list[Case]:
    """The field at `keys` set to each of `values` (refused unless `valid(value)`), and deleted."""
    where = ".".join(keys)
    cases = [Case(f"{where} = {v!r}", name, edit_json(name, keys, v), refuse=not valid(v)) for v in values]
    return [*cases, Case(f"{where} deleted", name, edit_json(name, keys, DELETE), refuse=not valid(DELETE))]


def fits(value, hint) -> bool:
    """Whether a JSON value can stand for a field annotated `hint` (an oracle independent of the
    readers' own tables)."""
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, hint if hint is int else (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint == tuple[int, ...]:
        return isinstance(value, list) and all(fits(v, int) for v in value)
    return isinstance(value, dict)  # a ModelConfig


SPEC_HINTS = typing.get_type_hints(AdapterSpec)
SPEC_DEFAULTS = {f.name for f in dataclasses.fields(AdapterSpec) if f.default is not dataclasses.MISSING}
CHOICE_FIELDS = {"kind", "layer_map", "activation", "message_injection", "compute_dtype", "up_init",
                 "gate_inference", "slot_query_init", "message_norm"}  # fmt: skip


def spec_value_valid(field: str) -> Callable[[object], bool]:
    """Wrong JSON types must be refused, and so must "garbage" where only named options go; a field
    with a default may be deleted. Anything else may load (e.g. gate_init 3) or be refused."""

    def valid(value) -> bool:
        if value is DELETE:
            return field in SPEC_DEFAULTS
        return fits(value, SPEC_HINTS[field]) and not (field in CHOICE_FIELDS and value == "garbage")

    return valid


# Adapter spec fields tried with every garbage value (all of AdapterSpec's but the two model
# architectures, which get their own selection below).
SPEC_FIELDS = (
    "kind", "layers", "source_layers", "layer_map", "latent_width", "hidden_width", "dropout", "activation",
    "gate_init", "message_slots", "message_injection", "receiver_conditioned", "compute_dtype", "up_init",
    "gate_inference", "slot_query_init", "message_norm",
)  # fmt: skip
MODEL_EDITS = (
    ("family", "garbage"), ("num_layers", "garbage"), ("num_layers", 0), ("num_kv_heads", 0), ("head_dim", 2.5),
    ("hidden_size", "garbage"), ("num_heads", 3), ("rope_theta", "garbage"), ("rope_scaling", "garbage"),
    ("rope_scaling", {"rope_type": "yarn"}), ("rope_scaling", {"rope_type": "linear", "factor": "x"}),
    ("eos_token_id", "garbage"), ("eos_token_id", [1, "x"]), ("qk_norm", "garbage"), ("unknown_field", 1),
)  # fmt: skip


# Per kind, the adapter fields tried: every one on lcf; on lcfx and c2c (read by the same code)
# only the fields their architecture depends on.
KIND_FIELDS = {
    "lcf": SPEC_FIELDS,
    "lcfx": ("latent_width", "message_slots", "message_injection", "receiver_conditioned", "message_norm"),
    "c2c": ("hidden_width", "activation"),
}


def adapter_config_cases(kind: str) -> list[Case]:
    c = CONFIG_FILE
    values = GARBAGE if kind == "lcf" else ("garbage", True)
    cases = [case for f in KIND_FIELDS[kind] for case in json_cases(c, ("adapter", f), values, spec_value_valid(f))]
    cases += [
        Case("dtype bfloat16 over float32 tensors", c, edit_json(c, ("dtype",), "bfloat16")),
        Case("num_params off by one", c, rewrite(c, lambda raw: _bump_num_params(raw))),
        Case("a hard gate flipped", c, edit_json(c, ("hard_gates", "0", "key"), GATES[0][0] <= 0)),
        Case("a hard gate 'garbage'", c, edit_json(c, ("hard_gates", "0", "value"), "garbage")),
        Case("a hard gate 1", c, edit_json(c, ("hard_gates", "0", "value"), 1)),
        Case("a hard gate entry a list", c, edit_json(c, ("hard_gates", "0"), [True, False])),
        Case("a hard gate layer missing", c, edit_json(c, ("hard_gates", "0"), DELETE)),
        Case("a hard gate layer extra", c, edit_json(c, ("hard_gates", "9"), {"key": True, "value": True})),
        Case("a hard gate entry key missing", c, edit_json(c, ("hard_gates", "0", "key"), DELETE)),
    ]
    return cases + (config_cases() if kind == "lcf" else [])


def config_cases() -> list[Case]:
    """The top-level fields, the models and the file itself: the same for every kind."""
    c = CONFIG_FILE
    cases = [Case("future format_version", c, edit_json(c, ("format_version",), FORMAT_VERSION + 1))]
    cases += [Case("format_version 0", c, edit_json(c, ("format_version",), 0))]
    for field in ("format_version", "dtype", "num_params", "adapter", "hard_gates"):
        cases += json_cases(c, (field,))
    cases += json_cases(c, ("lcf_jax_version",), valid=lambda v: isinstance(v, str))  # informational
    cases += [
        Case("unknown top-level field", c, edit_json(c, ("extra",), 1)),
        Case("unknown adapter field", c, edit_json(c, ("adapter", "extra"), 1)),
        Case("layers out of range", c, edit_json(c, ("adapter", "layers"), [0, 1, 7, 3])),
    ]
    for role, edits in (("sharer", MODEL_EDITS[:5]), ("receiver", MODEL_EDITS)):
        cases += json_cases(c, ("adapter", role), ("garbage", []))
        cases += [model_case(c, ("adapter", role), k, v) for k, v in edits]
    return cases + file_cases(c) + truncation_cases(c, [1, 40, 400, -2])


def model_case(name: str, keys: tuple[str, ...], field: str, value) -> Case:
    """A model architecture field edited. The torch reader needs no family or RoPE settings (the
    adapter's shapes do not depend on them), so those may load there; lcf_jax refuses them."""
    lenient = field == "family" or (field == "rope_scaling" and isinstance(value, dict))
    where = f"{'.'.join(keys)}.{field} = {value!r}"
    return Case(where, name, edit_json(name, (*keys, field), value), refuse=not lenient)


def _bump_num_params(raw: bytes) -> bytes:
    data = json.loads(raw)
    data["num_params"] += 1
    return json.dumps(data).encode()


def translator_config_cases() -> list[Case]:
    c = TRANSLATOR_CONFIG
    cases = []
    for field in ("kind", "sharer", "receiver", "source_layers"):
        cases += json_cases(c, (field,))
    for field in ("map", "width"):  # missing in files older than the trunk: the linear map then
        cases += json_cases(c, (field,), valid=lambda v: v is DELETE)
    cases += [
        Case("width 7", c, edit_json(c, ("width",), 7)),
        Case("width of another trunk", c, edit_json(c, ("width",), 16)),
        Case("map linear with a trunk", c, edit_json(c, ("map",), "linear")),
        Case("source layer out of range", c, edit_json(c, ("source_layers",), [0, 1, 2, 9])),
        Case("too few source layers", c, edit_json(c, ("source_layers",), [0, 1])),
        Case("unknown field", c, edit_json(c, ("extra",), 1)),
    ]
    cases += [model_case(c, ("receiver",), k, v) for k, v in MODEL_EDITS[:4]]
    return cases


# -- what was saved, and the readers -----------------------------------------------------------------


def set_gate_logits(adapter) -> None:
    p = adapter.projectors
    key, value = (
        ("key_gate_logit", "value_gate_logit") if adapter.spec.kind == "c2c" else ("k_gate_logit", "v_gate_logit")
    )
    n = len(adapter.spec.layers)
    getattr(p, key)[...] = jnp.asarray([k for k, _ in GATES[:n]], jnp.float32)
    getattr(p, value)[...] = jnp.asarray([v for _, v in GATES[:n]], jnp.float32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """One small saved directory per format: lcf (3 of 4 layers), lcfx (two slots), c2c, translator."""
    root = tmp_path_factory.mktemp("saved")
    options = {
        "lcf": dict(latent_width=16, keep_layers=[0, 2, 3]),
        "lcfx": dict(latent_width=16, message_slots=2, message_injection="prefix", receiver_conditioned=True),
        "c2c": dict(hidden_width=16),
    }
    out = {}
    for kind, kwargs in options.items():
        adapter = build(kind, SHARER, RECEIVER, **kwargs)
        set_gate_logits(adapter)
        out[kind] = save_adapter(adapter, root / kind)
    rng = np.random.default_rng(SEED)
    arrays = {n: rng.standard_normal(s).astype(np.float32) for n, s in array_shapes(SHARER, RECEIVER, 8).items()}
    out["translator"] = save_translator(KVTranslator(SHARER, RECEIVER, (0, 1, 1, 2), arrays), root / "translator")
    return out


def jax_adapter(directory: Path) -> dict[str, np.ndarray]:
    return {n: np.asarray(x) for n, x in flat_params(load_adapter(directory)).items()}


def torch_adapter(directory: Path) -> dict[str, np.ndarray]:
    return {n: p.numpy() for n, p in lt.load_adapter(directory).named_parameters()}


def jax_translator(directory: Path) -> dict[str, np.ndarray]:
    return {n: np.asarray(a) for n, a in load_translator(directory).arrays.items()}


def torch_translator(directory: Path) -> dict[str, np.ndarray]:
    return {n: t.numpy() for n, t in lt.load_kv_translator(directory).arrays.items()}


READERS = {
    "jax": (jax_adapter, jax_translator, CheckpointError),
    "torch": (torch_adapter, torch_translator, lt.AdapterFormatError),
}


def verdict(load, error, directory: Path, case: Case, want: dict[str, np.ndarray]) -> str | None:
    """None when `load` handles the corrupted `directory` well, else what went wrong."""
    try:
        got = load(directory)
    except error as e:
        return badly_worded(str(e), directory, case)
    except FileNotFoundError as e:
        return badly_worded(str(e), directory, case) if case.missing else f"FileNotFoundError: {e}"
    except Exception as e:  # noqa: BLE001 - anything else is what this test exists to catch
        return f"bare {type(e).__name__}: {str(e)[:300]}"
    if case.refuse:
        return "loaded; it must be refused"
    if case.exact and (got.keys() != want.keys() or any(not np.array_equal(got[n], want[n]) for n in want)):
        return "loaded, with other tensors than were saved"
    return None


def badly_worded(message: str, directory: Path, case: Case) -> str | None:
    if "\n" in message:
        return f"a message of several lines: {message[:300]!r}"
    if case.file not in message or str(directory) not in message:
        return f"the message does not name {directory / case.file}: {message[:300]!r}"
    return None


def run_cases(cases: list[Case], source: Path, load, error, tmp_path: Path) -> None:
    want = load(source)  # the pristine directory loads, and gives what the cases are compared with
    assert want
    failures = []
    for i, case in enumerate(cases):
        directory = shutil.copytree(source, tmp_path / f"case{i}")
        case.corrupt(directory)
        problem = verdict(load, error, directory, case, want)
        if problem:
            failures.append(f"{case.name}: {problem}")
    assert not failures, f"{len(failures)} of {len(cases)} corruptions handled badly:\n" + "\n".join(failures)


@pytest.mark.parametrize("reader", ["jax", "torch"])
@pytest.mark.parametrize("kind", ["lcf", "lcfx", "c2c"])
def test_corrupted_adapters_are_refused_in_one_line(saved, tmp_path, kind, reader):
    load, _, error = READERS[reader]
    source = saved[kind]
    rng = np.random.default_rng([SEED, adapter_format.KINDS.index(kind)])
    raw = (source / WEIGHTS_FILE).read_bytes()
    cases = flip_cases(WEIGHTS_FILE, raw, rng, flips=24 if kind == "lcf" else 16)
    cases += truncation_cases(WEIGHTS_FILE, safetensors_cuts(raw)) + adapter_config_cases(kind)
    if kind == "lcf":  # the same code reads every kind's file: the rest once
        cases += header_edit_cases(WEIGHTS_FILE) + file_cases(WEIGHTS_FILE)
    run_cases(cases, source, load, error, tmp_path)


@pytest.mark.parametrize("reader", ["jax", "torch"])
def test_corrupted_translators_are_refused_in_one_line(saved, tmp_path, reader):
    _, load, error = READERS[reader]
    source = saved["translator"]
    raw = (source / TRANSLATOR_WEIGHTS).read_bytes()
    cases = flip_cases(TRANSLATOR_WEIGHTS, raw, np.random.default_rng([SEED, 9]), flips=8)
    cases += header_edit_cases(TRANSLATOR_WEIGHTS)
    cases += truncation_cases(TRANSLATOR_WEIGHTS, safetensors_cuts(raw)) + file_cases(TRANSLATOR_WEIGHTS)
    cases += truncation_cases(TRANSLATOR_CONFIG, [1, 40, 400, -2])
    cases += file_cases(TRANSLATOR_CONFIG) + translator_config_cases()
    run_cases(cases, source, load, error, tmp_path)


# What the brief of issue 17 asked for by name: each refused, with the field and the way out.
NAMED = [
    (("format_version",), FORMAT_VERSION + 1, "upgrade lcf_jax"),
    (("format_version",), "garbage", "'format_version' is \"garbage\", expected an integer; re-export"),
    (("hard_gates", "2", "key"), "garbage", 'hard_gates["2"] is {"key": "garbage"'),
    (("hard_gates", "2", "key"), True, "layer 2's hard gates are"),  # its key logit is -0.5
    (("dtype",), "garbage", 'dtype "garbage" is not one of float32, bfloat16'),
    (("num_params",), "garbage", "'num_params' is \"garbage\", expected an integer"),
    (("num_params",), 7, "the tensors hold"),
    (("adapter", "latent_width"), "garbage", "'latent_width' is \"garbage\", expected a positive integer"),
    (("adapter", "layers"), 3, "'layers' is 3, expected a list of integers"),
    (("adapter", "activation"), True, "'activation' is true, expected a string"),
]


@pytest.mark.parametrize("reader", ["jax", "torch"])
@pytest.mark.parametrize(("keys", "value", "message"), NAMED, ids=[".".join(k) + f"={v!r}" for k, v, _ in NAMED])
def test_named_corruptions_say_what_and_what_to_do(saved, tmp_path, reader, keys, value, message):
    load, _, error = READERS[reader]
    directory = shutil.copytree(saved["lcf"], tmp_path / "a")
    edit_json(CONFIG_FILE, keys, value)(directory)
    with pytest.raises(error, match=re.escape(message)) as err:
        load(directory)
    assert CONFIG_FILE in str(err.value) and "\n" not in str(err.value)


def test_the_format_tables_list_exactly_the_fields_of_the_code():
    """adapter_format describes the JSON without importing JAX: its tables must follow the
    dataclasses and option lists they mirror."""
    from lcf_jax.adapters.blocks import ACTIVATIONS, COMPUTE_DTYPES, LAYER_MAPS
    from lcf_jax.models.config import ModelConfig, RopeScaling
    from lcf_jax.torch.modules import ACTIVATIONS as TORCH_ACTIVATIONS

    def names(cls):
        return {f.name for f in dataclasses.fields(cls)}

    assert set(adapter_format.ADAPTER_FIELDS) == names(AdapterSpec)
    assert set(adapter_format.MODEL_FIELDS) == names(ModelConfig)
    assert set(adapter_format.ROPE_FIELDS) == names(RopeScaling)
    assert set(adapter_format.ADAPTER_REQUIRED) >= names(AdapterSpec) - SPEC_DEFAULTS
    choices = adapter_format.ADAPTER_CHOICES
    assert set(choices["activation"]) == set(ACTIVATIONS) == set(TORCH_ACTIVATIONS)
    assert choices["layer_map"] == (*LAYER_MAPS, "custom") and choices["compute_dtype"] == COMPUTE_DTYPES
    assert choices["kind"] == adapter_format.KINDS and set(CHOICE_FIELDS) == set(choices)
