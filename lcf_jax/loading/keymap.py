"""One declarative, two-way table between transformers' parameter names and our module paths.

Every rule names the HF key (a regex with named groups), the module path it fills, and the
transform between the two layouts (`transpose`: HF `Linear.weight` is `[out, in]`, ours `[in, out]`).
Rules whose HF key has a layer index `i` fill one slice of a stacked `[L, ...]` parameter.
Conversion checks every tensor's shape, and fails on unmapped, duplicate and missing keys, listing
every problem at once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lcf_jax.errors import CheckpointError
from lcf_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str  # regex over HF keys; group `i` is the layer index of stacked parameters
    path: str  # module path template, dot-separated, filled from the regex's named groups
    transform: str = "none"  # "none" | "transpose"

    @property
    def stacked(self) -> bool:
        return "(?P<i>" in self.hf

    def path_regex(self) -> re.Pattern:
        """The module path as a regex: `{name}` placeholders become named groups."""
        return re.compile(re.sub(r"\\{(\w+)\\}", r"(?P<\1>\\w+)", re.escape(self.path)))

    def hf_template(self) -> str:
        """The HF key as a format string, e.g. `model.layers.{i}.{block}.{proj}.weight`."""
        return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", self.hf).replace("\\.", ".")


KEY_TABLE: tuple[Rule, ...] = (
    Rule(r"model\.embed_tokens\.weight", "embed_tokens.embedding"),
    Rule(r"model\.norm\.weight", "norm.weight"),
    Rule(r"lm_head\.weight", "lm_head.kernel", "transpose"),
    Rule(
        r"model\.layers\.(?P<i>\d+)\.(?P<norm>input_layernorm|post_attention_layernorm)\.weight", "layers.{norm}.weight"
    ),
    Rule(r"model\.layers\.(?P<i>\d+)\.self_attn\.(?P<norm>q_norm|k_norm)\.weight", "layers.self_attn.{norm}.weight"),
    Rule(
        r"model\.layers\.(?P<i>\d+)\.(?P<block>self_attn|mlp)\.(?P<proj>[qkvo]_proj|gate_proj|up_proj|down_proj)\.weight",
        "layers.{block}.{proj}.kernel",
        "transpose",
    ),
    Rule(
        r"model\.layers\.(?P<i>\d+)\.(?P<block>self_attn|mlp)\.(?P<proj>[qkvo]_proj|gate_proj|up_proj|down_proj)\.bias",
        "layers.{block}.{proj}.bias",
    ),
)

_COMPILED = [(re.compile(rule.hf + "$"), rule) for rule in KEY_TABLE]


def _to_ours(array: np.ndarray, transform: str) -> np.ndarray:
    return array.T if transform == "transpose" else array


def _match(hf_key: str) -> tuple[Rule, str, int | None] | None:
    for regex, rule in _COMPILED:
        m = regex.match(hf_key)
        if m:
            groups = {k: v for k, v in m.groupdict().items() if k != "i"}
            layer = int(m.group("i")) if rule.stacked else None
            return rule, rule.path.format(**groups), layer
    return None


def _summarize(problems: list[str], source: str) -> str:
    shown = "; ".join(problems[:8])
    more = f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
    return f"checkpoint {source} does not match the model architecture: {shown}{more}"


def hf_to_flat(
    hf_shapes: Mapping[str, tuple[int, ...]],
    read: Callable[[str], np.ndarray],
    config: ModelConfig,
    expected: Mapping[str, tuple[int, ...]],
    *,
    source: str = "",
    convert: Callable[[np.ndarray], Any] = np.asarray,
) -> dict[str, Any]:
    """HF tensors -> `{module path: array}` for every path in `expected` (path -> shape, stacked
    parameters with their leading L axis). `read(key)` loads one tensor; `convert` turns each finished
    numpy array into its final form (dtype, device, sharding) so at most one parameter is staged in
    host memory at a time beyond the reader's memory map."""
    problems: list[str] = []
    by_path: dict[str, dict[int | None, str]] = {}
    tied_head = None
    for key in sorted(hf_shapes):
        found = _match(key)
        if found is None:
            problems.append(f"unexpected tensor {key!r}")
            continue
        rule, path, layer = found
        if path == "lm_head.kernel" and config.tie_word_embeddings:
            tied_head = key  # some exports write the tied head out; it must equal the embedding
            continue
        if path not in expected:
            problems.append(f"tensor {key!r} has no place in a {config.family} model with this config")
            continue
        if layer is not None and not 0 <= layer < config.num_layers:
            problems.append(f"tensor {key!r}: layer {layer} but the config has {config.num_layers} layers")
            continue
        by_path.setdefault(path, {})[layer] = key

    for path, shape in expected.items():
        template = _rule_for_path(path)
        layers = list(range(config.num_layers)) if template.stacked else [None]
        keys = by_path.get(path, {})
        for layer in layers:
            if layer not in keys:
                problems.append(f"missing tensor {hf_key(path, layer)!r}")
                continue
            want = shape[1:] if template.stacked else shape
            want_hf = tuple(reversed(want)) if template.transform == "transpose" else tuple(want)
            got = tuple(hf_shapes[keys[layer]])
            if got != want_hf:
                problems.append(f"tensor {keys[layer]!r} has shape {got}, expected {want_hf}")
    if problems:
        raise CheckpointError(_summarize(problems, source))

    flat: dict[str, Any] = {}
    for path in tqdm(
        expected, desc=f"loading {Path(source).name or 'weights'}", unit="tensor", leave=False, disable=None
    ):
        rule = _rule_for_path(path)
        keys = by_path[path]
        if rule.stacked:
            first = _to_ours(read(keys[0]), rule.transform)
            stacked = np.empty((config.num_layers, *first.shape), first.dtype)
            stacked[0] = first
            for layer in range(1, config.num_layers):
                stacked[layer] = _to_ours(read(keys[layer]), rule.transform)
            flat[path] = convert(stacked)
        else:
            flat[path] = convert(np.ascontiguousarray(_to_ours(read(keys[None]), rule.transform)))
    if tied_head is not None and not np.array_equal(read(tied_head), read(by_path["embed_tokens.embedding"][None])):
        raise CheckpointError(
            f"checkpoint {source}: config says tie_word_embeddings=true but {tied_head!r} differs from the embedding"
        )
    return flat


def _rule_for_path(path: str) -> Rule:
    for rule in KEY_TABLE:
        if rule.path_regex().fullmatch(path):
            return rule
    raise KeyError(f"no HF name for module path {path!r}")


def hf_key(path: str, layer: int | None) -> str:
    """The HF key of a module path (and layer index for stacked parameters)."""
    rule = _rule_for_path(path)
    return rule.hf_template().format(i=layer, **rule.path_regex().fullmatch(path).groupdict())


def flat_to_hf(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`{module path: array}` -> HF tensors (unstacked, HF layout)."""
    out: dict[str, np.ndarray] = {}
    for path, array in flat.items():
        rule = _rule_for_path(path)
        if rule.stacked:
            for layer in range(array.shape[0]):
                out[hf_key(path, layer)] = np.ascontiguousarray(_to_ours(array[layer], rule.transform))
        else:
            out[hf_key(path, None)] = np.ascontiguousarray(_to_ours(array, rule.transform))
    return out
