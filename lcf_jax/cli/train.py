"""`lcf train`: run the training an experiment config describes, on one host or many."""

from __future__ import annotations

import argparse
import os

from lcf_jax.cli.common import HelpFormatter, examples, quiet_logs


def init_distributed(args: argparse.Namespace) -> None:
    """Multi-host: `jax.distributed.initialize()` when asked by flag or by the usual environment
    (TPU pods and SLURM are auto-detected; JAX_COORDINATOR_ADDRESS etc. otherwise)."""

    import jax  # noqa: PLC0415

    wanted = args.distributed or args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not wanted:
        return
    if jax.config.jax_platforms in (None, "", "cpu") and os.environ.get("JAX_PLATFORMS", "cpu") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes need a collectives backend
    kwargs = {}
    if args.coordinator:
        kwargs = dict(
            coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
        )
    jax.distributed.initialize(**kwargs)


def run(args: argparse.Namespace) -> int:
    init_distributed(args)
    quiet_logs()
    from lcf_jax.config import load_config  # noqa: PLC0415
    from lcf_jax.train.defaults import base_config  # noqa: PLC0415
    from lcf_jax.train.loop import train  # noqa: PLC0415

    config = load_config(args.config, args.overrides, defaults=base_config())
    summary = train(config, args.workdir, progress=not args.no_progress)
    import jax  # noqa: PLC0415

    if jax.process_index() == 0:
        final = summary["final"]
        if summary.get("kind") == "kv_translator":
            held = summary["held_out"]
            print(
                f"trained {summary['steps']} steps (resumed from {summary['resumed_from']}): final loss "
                f"{final.get('loss', float('nan')):.4f}; held-out relative MSE keys {held['key_relative_mse']:.4f}, "
                f"values {held['value_relative_mse']:.4f}; translator in {args.workdir}/kv_translator"
            )
            return 0
        print(
            f"trained {summary['steps']} steps (resumed from {summary['resumed_from']}): "
            f"final loss {final.get('loss', float('nan')):.4f}; adapter {summary['parameters']['adapter']:,} "
            f"parameters; work directory {args.workdir}"
        )
    return 0


def add_parser(sub) -> None:
    """`lcf train`: its flags, help and examples."""
    train = sub.add_parser(
        "train",
        formatter_class=HelpFormatter,
        help="train an adapter from an experiment config",
        description="Train the adapter an experiment config describes (sharer and receiver models, adapter "
        "kind and options, data, optimizer, device mesh); both models stay frozen. Into --workdir it writes "
        "checkpoints/<step>/ (Orbax: adapter, optimizer, step and data-iterator state; every config.checkpoint.every "
        "steps, the last config.checkpoint.keep kept), "
        "metrics.jsonl, tensorboard/ (when tensorboardX is installed) and, when training ends, adapter/ "
        "(adapter.safetensors + adapter_config.json: what `lcf eval` and `lcf export` read), summary.json and "
        "config.json. A second run with the same --workdir resumes from the newest readable checkpoint.\n\n"
        "Override any config value with --config.KEY=VALUE (e.g. --config.train.steps=10); an unknown key is "
        "an error that lists the valid ones. For multi-host runs pass --distributed on every host (TPU pods and "
        "SLURM are detected), or --coordinator with --num-processes and --process-id.",
        epilog=examples(
            "lcf train --config configs/tiny.py --workdir /tmp/lcf-tiny",
            "lcf train --config configs/tiny.py:lcfx --workdir /tmp/lcf-tiny-x --config.train.steps=20",
            "lcf train --config configs/paper_lcf.py:128 --workdir gs://BUCKET/lcf128 \\\n"
            "    --config.data.path=/data/openhermes2_5.jsonl --config.mesh.fsdp=4",
        ),
    )
    train.add_argument(
        "--config",
        required=True,
        help="the experiment config: configs/NAME.py, or configs/NAME.py:ARG to pass ARG to its get_config (required)",
    )
    train.add_argument(
        "--workdir",
        required=True,
        help="the run's directory: checkpoints, metrics.jsonl, TensorBoard events, adapter/, summary.json "
        "(required; reuse it to resume)",
    )
    train.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() for a multi-host run (default: off; implied by --coordinator "
        "or the JAX_COORDINATOR_ADDRESS environment variable)",
    )
    train.add_argument(
        "--coordinator",
        default=None,
        help="host:port of process 0, for explicit multi-process runs (default: none)",
    )
    train.add_argument(
        "--num-processes",
        type=int,
        default=None,
        help="number of processes, with --coordinator (default: none, left to jax.distributed.initialize)",
    )
    train.add_argument(
        "--process-id",
        type=int,
        default=None,
        help="this process's index, with --coordinator (default: none, left to jax.distributed.initialize)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    train.set_defaults(run=run)
