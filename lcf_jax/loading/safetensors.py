"""HF model directories in and out: config.json, single or sharded safetensors, tokenizer files.

Tensors are read through a memory map with our own header parser because `safetensors`' numpy
reader cannot produce bfloat16 (numpy has no such dtype; we use ml_dtypes'). Pickled checkpoints
(`pytorch_model.bin`) are refused: loading them would run code from the file.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from lcf_jax.adapter_format import is_int
from lcf_jax.errors import CheckpointError
from lcf_jax.loading.keymap import flat_to_hf, hf_to_flat
from lcf_jax.models.config import ModelConfig, from_hf_config, to_hf_config

log = logging.getLogger(__name__)

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
MAX_SHARD_BYTES = 4 * 1024**3


class SafetensorsReader:
    """Tensors of one or more `.safetensors` files, read lazily through memory maps."""

    def __init__(self, files: list[Path]):
        self._entries: dict[str, tuple[mmap.mmap, int, Any, tuple[int, ...], Path]] = {}
        self._maps = []
        for file in files:
            self._open(file)

    def _open(self, file: Path) -> None:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            try:
                (header_len,) = struct.unpack("<Q", f.read(8))
                if header_len > size - 8:
                    raise ValueError("header length exceeds the file")
                header = json.loads(f.read(header_len))
            except (struct.error, ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
                raise CheckpointError(
                    f"{file} is not a valid safetensors file (truncated or corrupt header: {e})"
                ) from None
            entries = _header_entries(file, header, size - 8 - header_len)
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self._maps.append(mapped)
        for name, (start, dtype, shape) in entries.items():
            if name in self._entries:
                raise CheckpointError(f"tensor {name!r} appears in both {self._entries[name][4]} and {file}")
            self._entries[name] = (mapped, 8 + header_len + start, dtype, shape, file)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: entry[3] for name, entry in self._entries.items()}

    def dtypes(self) -> dict[str, str]:
        """Each tensor's dtype name ("float32", "bfloat16", ...)."""
        return {name: np.dtype(entry[2]).name for name, entry in self._entries.items()}

    def read(self, name: str) -> np.ndarray:
        mapped, offset, dtype, shape, _ = self._entries[name]
        count = int(np.prod(shape))
        return np.frombuffer(mapped, dtype=dtype, count=count, offset=offset).reshape(shape)


def _corrupt(file: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{file} is not a valid safetensors file ({problem}): it is damaged; write it again")


def _header_entries(file: Path, header: Any, data_size: int) -> dict[str, tuple[int, Any, tuple[int, ...]]]:
    """Each tensor's (start in the data, dtype, shape) from a parsed header, checked as the
    safetensors format promises: every entry names a known dtype, a shape and the byte range that
    shape fills, and the ranges tile the data exactly. The last check catches a header length a few
    bytes short: the header is padded with spaces, so it would still parse and shift every tensor."""
    if not isinstance(header, dict):
        raise _corrupt(file, f"its header is a JSON {type(header).__name__}, not an object")
    if not isinstance(header.get("__metadata__", {}), dict):
        raise _corrupt(file, "its __metadata__ is not a JSON object")
    entries, spans = {}, []
    for name, info in header.items():
        if name != "__metadata__":
            start, end, dtype, shape = _header_entry(file, name, info)
            entries[name] = (start, dtype, shape)
            spans.append((start, end, name))
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            raise _corrupt(file, f"tensor {name!r} starts at data byte {start}, expected {position}")
        position = end
    if position != data_size:
        raise _corrupt(file, f"its tensors fill {position} bytes, the file holds {data_size} (truncated?)")
    return entries


def _header_entry(file: Path, name: str, info: Any) -> tuple[int, int, Any, tuple[int, ...]]:
    """(start, end, dtype, shape) of one tensor's header entry."""
    if not isinstance(info, dict):
        raise _corrupt(file, f"the entry of tensor {name!r} is not a JSON object")
    dtype = info.get("dtype")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise CheckpointError(f"{file}: tensor {name!r} has unsupported dtype {dtype!r}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(is_int(n) and n >= 0 for n in shape):
        raise _corrupt(file, f"tensor {name!r} has shape {shape!r}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(is_int, offsets))):
        raise _corrupt(file, f"tensor {name!r} has data_offsets {offsets!r}, not two byte offsets")
    start, end = offsets
    if not 0 <= start <= end or end - start != math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize:
        raise _corrupt(file, f"tensor {name!r} of shape {shape} {dtype} lies at bytes {offsets}: the wrong size")
    return start, end, _DTYPES[dtype], tuple(shape)


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of an HF directory (sharded via `model.safetensors.index.json` or single)."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({directory / name for name in weight_map.values()})
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} names shard files that are missing: {', '.join(missing)}")
        return files
    single = directory / "model.safetensors"
    if single.exists():
        return [single]
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")) or any(directory.glob("*.pth")):
        raise CheckpointError(
            f"{directory} holds only pickled PyTorch weights, which lcf_jax never loads (unpickling runs code). "
            "Convert them to safetensors first, e.g. with transformers' `model.save_pretrained(dir)`."
        )
    raise CheckpointError(f"{directory} has no model.safetensors or model.safetensors.index.json")


def read_hf_config(directory: Path) -> ModelConfig:
    path = directory / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory} has no config.json: not a Hugging Face model directory")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    return from_hf_config(hf)


def load_tokenizer(directory: Path, **kwargs) -> Any:
    """The directory's transformers tokenizer, or None when it holds no tokenizer files."""
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not kwargs and not any((directory / n).exists() for n in names):
        return None
    from transformers import AutoTokenizer  # noqa: PLC0415 - heavy import, only when a tokenizer exists

    return AutoTokenizer.from_pretrained(str(directory), **kwargs)


def read_hf_weights(
    directory: Path, config: ModelConfig, expected: dict[str, tuple[int, ...]], convert: Callable[[np.ndarray], Any]
) -> dict[str, Any]:
    reader = SafetensorsReader(checkpoint_files(directory))
    return hf_to_flat(reader.shapes(), reader.read, config, expected, source=str(directory), convert=convert)


def write_hf_directory(
    directory: str | os.PathLike,
    config: ModelConfig,
    flat: dict[str, np.ndarray],
    *,
    tokenizer: Any = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write config.json, safetensors (sharded above `max_shard_bytes`) and the tokenizer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(to_hf_config(config), indent=2) + "\n")
    tensors = flat_to_hf(flat)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(directory / filename), metadata={"format": "pt"})
            weight_map.update({name: filename for name in shard})
        total = sum(t.nbytes for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory
