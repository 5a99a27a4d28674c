"""`lcf export` (a trained adapter or translator, for PyTorch) and `lcf import-c2c` (the C2C
reference fuser as an lcf_jax adapter)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lcf_jax.cli.common import HelpFormatter, examples, quiet_logs
from lcf_jax.errors import ConfigError


def run(args: argparse.Namespace) -> int:
    quiet_logs()
    from lcf_jax.export import export_adapter  # noqa: PLC0415

    out = export_adapter(args.checkpoint, args.out, dtype=args.dtype, config=args.config)
    loader = "load_kv_translator" if (Path(out) / "kv_translator.json").exists() else "load_adapter"
    print(f"exported {args.checkpoint} to {out} ({args.dtype}); load it with lcf_jax.torch.{loader}({str(out)!r})")
    return 0


def add_parser(sub) -> None:
    """`lcf export`: its flags, help and examples."""
    export = sub.add_parser(
        "export",
        formatter_class=HelpFormatter,
        help="export a trained adapter for PyTorch (lcf_jax.torch, transformers)",
        description="Write a trained adapter into --out as adapter.safetensors + adapter_config.json, which "
        "lcf_jax.torch.load_adapter runs with transformers models and no JAX. --checkpoint is an adapter "
        "directory, a `lcf train` work directory (its adapter/, or else its newest Orbax checkpoint), a `lcf "
        "demo` work directory (its LCF-X adapter) or an Orbax `checkpoints` folder (or one step in it). A KV "
        "translator (`lcf train --config configs/kv_translator.py`) exports from its work directory the same way, "
        "as kv_translator.json + kv_translator.safetensors for lcf_jax.torch.load_kv_translator.",
        epilog=examples(
            "lcf export --checkpoint lcf-demo --out smollm2-lcfx",
            "lcf export --checkpoint RUN --out exported --dtype bfloat16",
            "lcf export --checkpoint RUN/checkpoints --config configs/NAME.py --out exported",
        ),
    )
    export.add_argument(
        "--checkpoint",
        required=True,
        help="adapter directory, `lcf train` or `lcf demo` work directory, or Orbax checkpoints folder (required)",
    )
    export.add_argument("--out", required=True, help="the directory to write (required; created if missing)")
    export.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="stored weight dtype; bfloat16 halves the size (default: float32)",
    )
    export.add_argument(
        "--config",
        default=None,
        help="the experiment config the run trained with (configs/NAME.py[:ARG]); only needed for the Orbax "
        "checkpoint of a run that did not finish (default: none, the run's config.json)",
    )
    export.set_defaults(run=run)


def architecture(source: str, flag: str):
    """What `adapters.build` accepts for a model: a preset name as given, or an HF directory's config."""
    from pathlib import Path  # noqa: PLC0415

    from lcf_jax.models import preset_names  # noqa: PLC0415

    if Path(source).is_dir():
        from lcf_jax.loading.safetensors import read_hf_config  # noqa: PLC0415

        return read_hf_config(Path(source))
    if source.lower() not in preset_names():
        raise ConfigError(f"{flag} {source!r} is neither an HF directory nor a preset ({', '.join(preset_names())})")
    return source


def run_import_c2c(args: argparse.Namespace) -> int:
    quiet_logs()
    from lcf_jax.adapters.io import save_adapter  # noqa: PLC0415
    from lcf_jax.export.c2c_import import import_c2c  # noqa: PLC0415

    adapter = import_c2c(args.c2c, architecture(args.sharer, "--sharer"), architecture(args.receiver, "--receiver"))
    out = save_adapter(adapter, args.out)
    print(f"imported the C2C fuser in {args.c2c} as {adapter.spec.describe()}; wrote {out}")
    return 0


def add_c2c_parser(sub) -> None:
    """`lcf import-c2c`: its flags, help and examples."""
    c2c = sub.add_parser(
        "import-c2c",
        formatter_class=HelpFormatter,
        help="import a released C2C fuser checkpoint as an lcf_jax c2c adapter",
        description="Read a fuser checkpoint of the C2C (Cache-to-Cache) reference implementation "
        "(projector_config.json, projector_{i}.json and projector_{i}.pt, in the directory or its final/; "
        "needs torch to read the .pt files, tensors only) and write it into --out as an lcf_jax c2c adapter "
        "directory, adapter.safetensors + adapter_config.json: what `lcf eval --mcq` and `lcf export` read. "
        "--sharer and --receiver give the two models' architectures, which the checkpoint is checked against.",
        epilog=examples(
            "lcf import-c2c --c2c C2C_DIR --sharer qwen2.5-0.5b --receiver qwen3-0.6b --out c2c-adapter",
            "lcf import-c2c --c2c C2C_DIR --sharer /models/Qwen2.5-0.5B --receiver /models/Qwen3-0.6B \\\n"
            "    --out c2c-adapter",
        ),
    )
    c2c.add_argument(
        "--c2c", required=True, help="the C2C checkpoint directory, or the folder holding its final/ (required)"
    )
    c2c.add_argument(
        "--sharer", required=True, help="the sharer model: a preset name or an HF model directory (required)"
    )
    c2c.add_argument(
        "--receiver", required=True, help="the receiver model: a preset name or an HF model directory (required)"
    )
    c2c.add_argument("--out", required=True, help="the adapter directory to write (required)")
    c2c.set_defaults(run=run_import_c2c)
