"""One declarative, two-way table between transformers' parameter names and our module paths.

Every rule names the HF key (a regex with named groups), the module path it fills, and the
transform between the two layouts (`transpose`: HF `Linear.weight` is `[out, in]`, ours `[in, out]`).
Rules whose HF key has a layer index `i` fill one slice of a stacked `[L, ...]` parameter.
Conversion checks every tensor's shape, and fails on unmapped, duplicate and missing keys, listing
every problem at once.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping, Sequence
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


class StackedTensor:
    """A layer-stacked `[L, ...]` parameter as a lazy, read-only view of its per-layer HF tensors.

    Indexing reads only the layers in the leading-axis slice, and from each only the sub-slice of
    the other axes, so a host placing a sharded tensor shard by shard reads only what its devices
    hold. A safetensors `read` is a view of the file's memory map (and a transposed view of it is
    still one), so only the bytes of that sub-slice are touched. A GGUF `read` dequantises its
    tensor whole, so there each needed layer is materialised in full (once per slice asked for), but
    layers outside the slice are never read. `np.asarray(view)` materialises the whole tensor.
    """

    def __init__(
        self, read: Callable[[str], np.ndarray], keys: Sequence[str], transform: str, layer_shape: tuple[int, ...]
    ):
        self._read, self._keys, self._transform = read, tuple(keys), transform
        self.shape = (len(self._keys), *layer_shape)
        self.ndim = len(self.shape)

    def layer(self, i: int) -> np.ndarray:
        """Layer `i` in our layout (a view where the reader gives one)."""
        return _to_ours(self._read(self._keys[i]), self._transform)

    @functools.cached_property
    def dtype(self) -> np.dtype:
        # Layer 0's, read on first use only: placing with a target dtype never asks for it.
        return self.layer(0).dtype

    def __getitem__(self, index) -> np.ndarray:
        lead, rest = self._split(index)
        if isinstance(lead, int):  # a copy, like a slice's: a view would keep a whole GGUF layer alive
            return np.array(self.layer(lead)[rest])
        return self._gather(range(*lead.indices(self.shape[0])), rest)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy is False:
            raise ValueError(f"a StackedTensor of shape {self.shape} is read from its layers: it cannot be a view")
        return self._gather(range(self.shape[0]), (), dtype)

    def __repr__(self) -> str:
        return f"StackedTensor(shape={self.shape}, first key {self._keys[0]!r})"

    def _gather(self, layers: range, rest: tuple, dtype=None) -> np.ndarray:
        """`[layers, *rest]`, filled one layer at a time so that at most one layer read whole (a GGUF
        one) is alive beside the result; cast to `dtype`, else to the first layer's dtype."""
        if not layers:
            inner = np.broadcast_to(np.zeros((), np.int8), self.shape[1:])[rest].shape  # a shape, no data
            return np.empty((0, *inner), self.dtype if dtype is None else dtype)
        out = None
        for n, i in enumerate(layers):
            part = self.layer(i)[rest]
            if out is None:
                out = np.empty((len(layers), *part.shape), part.dtype if dtype is None else dtype)
            out[n] = part
        return out

    def _split(self, index) -> tuple[slice | int, tuple]:
        """A basic index (the tuple of slices `jax.make_array_from_callback` passes, or ints, slices
        and one Ellipsis) -> (the layer axis' slice or int, the index of the other axes)."""
        index = index if isinstance(index, tuple) else (index,)
        for part in index:
            if not (part is Ellipsis or isinstance(part, (slice, int, np.integer))) or isinstance(part, bool):
                raise TypeError(
                    f"a StackedTensor takes ints, slices and one Ellipsis as its index, got {type(part).__name__}"
                )
        if index.count(Ellipsis) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if Ellipsis in index:
            at = index.index(Ellipsis)
            fill = self.ndim - (len(index) - 1)
            index = index[:at] + (slice(None),) * fill + index[at + 1 :]
        if len(index) > self.ndim:
            raise IndexError(f"too many indices for a StackedTensor of shape {self.shape}: {len(index)}")
        if not index:
            return slice(None), ()
        lead, rest = index[0], index[1:]
        if isinstance(lead, slice):
            return lead, rest
        if not -self.shape[0] <= lead < self.shape[0]:
            raise IndexError(f"layer {lead} is out of range for a StackedTensor of {self.shape[0]} layers")
        return int(lead) % self.shape[0], rest


def hf_to_flat(
    hf_shapes: Mapping[str, tuple[int, ...]],
    read: Callable[[str], np.ndarray],
    config: ModelConfig,
    expected: Mapping[str, tuple[int, ...]],
    *,
    source: str = "",
    convert: Callable[[np.ndarray | StackedTensor], Any] = np.asarray,
) -> dict[str, Any]:
    """HF tensors -> `{module path: array}` for every path in `expected` (path -> shape, stacked
    parameters with their leading L axis). `read(key)` loads one tensor.

    `convert` turns each parameter into its final form (dtype, device, sharding), one call per path
    in `expected`'s order. It is given a numpy array (a memory-map view for safetensors) for an
    unstacked parameter, and a `StackedTensor` for a layer-stacked one: a lazy view with `shape`,
    `dtype`, `ndim`, basic indexing that reads only the layers (and sub-slices) indexed, and
    `np.asarray` for the whole tensor. Nothing is assembled beyond what `convert` asks for, so a
    host placing shard by shard reads only the slices its devices hold."""
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
            layer_keys = [keys[layer] for layer in range(config.num_layers)]
            flat[path] = convert(StackedTensor(read, layer_keys, rule.transform, expected[path][1:]))
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
