"""`lcf demo`: the main job on the embedded default pair."""

from __future__ import annotations

import argparse

from lcf_jax.cli.common import HelpFormatter, examples, quiet_logs


def run(args: argparse.Namespace) -> int:
    quiet_logs()
    from lcf_jax.demo import demo  # noqa: PLC0415
    from lcf_jax.train.defaults import demo_config  # noqa: PLC0415

    config = demo_config()
    if args.steps is not None:
        config.train.steps = args.steps
        config.train.anneal_steps = args.steps
    if args.count is not None:
        config.eval.count = args.count
    demo(args.workdir, config=config, progress=not args.no_progress)
    return 0


def add_parser(sub) -> None:
    """`lcf demo`: its flags, help and examples."""
    demo = sub.add_parser(
        "demo",
        formatter_class=HelpFormatter,
        help="the main job: train LCF-X on SmolLM2-135M and compare it with text communication",
        description="The main job. Train the LCF-X adapter and its receiver-only control (the same adapter "
        "trained with empty messages, in the same steps) on generated split-context questions, with "
        "SmolLM2-135M-Instruct as sharer and receiver on this machine, then evaluate every condition of `lcf eval` "
        "on held-out questions and print the table. Into --workdir it writes lcfx/ (a `lcf train` work directory: "
        "adapter/, control_adapter/, checkpoints/) and results.json, results.md, f1_vs_ttft.png and answers.jsonl. "
        "A second run with the same --workdir reuses the trained adapters (an interrupted training resumes).",
        epilog=examples(
            "lcf demo",
            "lcf demo --workdir /tmp/demo --no-progress",
            "lcf demo --workdir /tmp/quick-demo --steps 20 --count 50",
        ),
    )
    demo.add_argument("--workdir", default="lcf-demo", help="where the adapters and results go (default: ./lcf-demo)")
    demo.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps per adapter, also the Gumbel annealing length (default: the demo config's, 120)",
    )
    demo.add_argument("--count", type=int, default=None, help="held-out questions to evaluate (default: 300)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars (default: shown)")
    demo.set_defaults(run=run)
