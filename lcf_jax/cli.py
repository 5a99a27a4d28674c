"""The `lcf` command line. Thin: each subcommand parses its flags and calls the library."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"


def _chat(args: argparse.Namespace) -> int:
    import lcf_jax  # noqa: PLC0415 - keep `lcf --help` instant
    from lcf_jax.sampling import chat_prompt, stop_token_ids  # noqa: PLC0415

    print(f"loading {args.model} ({args.dtype}) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    model = lcf_jax.load_model(args.model, dtype=args.dtype)
    print(f"loaded {model} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    if model.tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer files, so it cannot chat")
    stop = stop_token_ids(model)
    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []

    def answer(text: str) -> str:
        history.append({"role": "user", "content": text})
        start = time.perf_counter()
        result = lcf_jax.generate(
            model,
            [chat_prompt(model, history)],
            args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
        seconds = time.perf_counter() - start
        tokens = result.token_lists(stop_tokens=stop)[0]
        reply = model.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        history.append({"role": "assistant", "content": reply})
        print(f"[{len(tokens)} tokens in {seconds:.2f} s]", file=sys.stderr, flush=True)
        return reply

    if args.prompt:
        for prompt in args.prompt:
            print(f"> {prompt}\n{answer(prompt)}", flush=True)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type a message (empty line or Ctrl-D to quit).", file=sys.stderr)
    while True:
        try:
            text = input("> " if interactive else "")
        except EOFError:
            return 0
        if not text.strip():
            return 0
        print(answer(text), flush=True)


def _quiet_logs() -> None:
    import logging  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        from absl import logging as absl_logging  # noqa: PLC0415 - orbax logs every save at INFO

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass


def init_distributed(args: argparse.Namespace) -> None:
    """Multi-host: `jax.distributed.initialize()` when asked by flag or by the usual environment
    (TPU pods and SLURM are auto-detected; JAX_COORDINATOR_ADDRESS etc. otherwise)."""
    import os  # noqa: PLC0415

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


def _train(args: argparse.Namespace) -> int:
    init_distributed(args)
    _quiet_logs()
    from lcf_jax.config import load_config  # noqa: PLC0415
    from lcf_jax.train.loop import train  # noqa: PLC0415

    config = load_config(args.config, args.overrides)
    summary = train(config, args.workdir, progress=not args.no_progress)
    import jax  # noqa: PLC0415

    if jax.process_index() == 0:
        final = summary["final"]
        print(
            f"trained {summary['steps']} steps (resumed from {summary['resumed_from']}): "
            f"final loss {final.get('loss', float('nan')):.4f}; adapter {summary['parameters']['adapter']:,} "
            f"parameters; work directory {args.workdir}"
        )
    return 0


def _eval(args: argparse.Namespace) -> int:
    _quiet_logs()
    from lcf_jax.adapters.io import load_adapter  # noqa: PLC0415
    from lcf_jax.config import load_config  # noqa: PLC0415
    from lcf_jax.data.qa import read_questions  # noqa: PLC0415
    from lcf_jax.data.split_qa import generate_questions  # noqa: PLC0415
    from lcf_jax.eval.conditions import Setup  # noqa: PLC0415
    from lcf_jax.eval.run import evaluate  # noqa: PLC0415
    from lcf_jax.train.loop import build_models  # noqa: PLC0415
    from lcf_jax.train.workdir import adapter_dirs  # noqa: PLC0415

    config = load_config(args.config)
    adapter = control = None
    if args.mcq:
        return _eval_mcq(args, config)
    if args.checkpoint:
        main, control_dir = adapter_dirs(args.checkpoint)
        adapter = load_adapter(main)
        if adapter.spec.kind != "lcfx":
            raise ValueError(
                f"{main} holds a {adapter.spec.kind!r} (shared-context) adapter: evaluate it on multiple choice with "
                "--mcq FILE.jsonl|DIR; split-context questions need an lcfx adapter"
            )
        control = (
            load_adapter(control_dir or args.control, expect_kind="lcfx") if (control_dir or args.control) else None
        )
    sharer, receiver = build_models(config)
    if args.data:
        questions = list(read_questions(args.data))[: args.count or None]
        dataset = str(args.data)
    else:
        questions = generate_questions(
            "test", args.count or 300, seed=args.seed, variant=config.data.get("variant", "single_hop")
        )
        dataset = f"split_qa test, seed {args.seed}"
    setup = Setup(
        sharer,
        receiver,
        adapter=adapter,
        control=control,
        sharer_sees_question=config.data.sharer_sees_question,
        batch_size=args.batch_size,
    )
    meta = {"dataset": dataset, "config": args.config, "checkpoint": args.checkpoint}
    evaluate(
        setup,
        questions,
        args.workdir,
        latency_questions=args.latency_questions,
        meta=meta,
        progress=not args.no_progress,
    )
    print((Path(args.workdir) / "results.md").read_text())  # the table and the stage times
    print(f"wrote {args.workdir}/results.json, results.md, f1_vs_ttft.png, answers.jsonl")
    return 0


def _eval_mcq(args: argparse.Namespace, config) -> int:
    """Shared-context multiple choice: receiver, sharer, oracle and the checkpoint's adapter."""
    import json  # noqa: PLC0415

    from lcf_jax.adapters.io import load_adapter  # noqa: PLC0415
    from lcf_jax.data.mcq import read_mcq  # noqa: PLC0415
    from lcf_jax.data.tfds_builders import load_mcq  # noqa: PLC0415
    from lcf_jax.eval.mcq import mcq_summary, run_mcq  # noqa: PLC0415
    from lcf_jax.train.loop import build_models  # noqa: PLC0415
    from lcf_jax.train.workdir import adapter_dirs  # noqa: PLC0415

    source = Path(args.mcq)
    items = list(read_mcq(source)) if source.is_file() else load_mcq(source)
    items = items[: args.count or None]
    adapters = {}
    if args.checkpoint:
        adapter = load_adapter(adapter_dirs(args.checkpoint)[0])
        if adapter.spec.kind == "lcfx":
            raise ValueError("multiple choice is shared-context: use an lcf or c2c checkpoint (lcfx needs --data)")
        adapters[adapter.spec.kind] = adapter
    sharer, receiver = build_models(config)
    correct = run_mcq(sharer, receiver, items, adapters, progress=not args.no_progress)
    summary = mcq_summary(correct, reference="c2c" if "c2c" in correct else "receiver")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "mcq.json").write_text(json.dumps({"source": str(source), "conditions": summary}, indent=2) + "\n")
    print("| condition | accuracy | n | p (one-sided McNemar, better than reference) |\n|---|---|---|---|")
    for name, row in summary.items():
        p = row.get("mcnemar_p_greater")
        print(f"| {name} | {row['accuracy']:.1f} | {row['n']} | {'' if p is None else f'{p:.3g}'} |")
    print(f"\nwrote {workdir / 'mcq.json'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    _quiet_logs()
    from lcf_jax.demo import demo, demo_config  # noqa: PLC0415

    config = demo_config()
    if args.steps is not None:
        config.train.steps = args.steps
        config.train.anneal_steps = args.steps
    if args.count is not None:
        config.eval.count = args.count
    demo(args.workdir, config=config, progress=not args.no_progress)
    return 0


def _export(args: argparse.Namespace) -> int:
    _quiet_logs()
    from lcf_jax.export import export_adapter  # noqa: PLC0415

    out = export_adapter(args.checkpoint, args.out, dtype=args.dtype, config=args.config)
    print(f"exported {args.checkpoint} to {out} ({args.dtype}); load it with lcf_jax.torch.load_adapter({str(out)!r})")
    return 0


def _architecture(source: str, flag: str):
    """What `adapters.build` accepts for a model: a preset name as given, or an HF directory's config."""
    from pathlib import Path  # noqa: PLC0415

    from lcf_jax.models import preset_names  # noqa: PLC0415

    if Path(source).is_dir():
        from lcf_jax.loading.safetensors import read_hf_config  # noqa: PLC0415

        return read_hf_config(Path(source))
    if source.lower() not in preset_names():
        raise ValueError(f"{flag} {source!r} is neither an HF directory nor a preset ({', '.join(preset_names())})")
    return source


def _import_c2c(args: argparse.Namespace) -> int:
    _quiet_logs()
    from lcf_jax.adapters.io import save_adapter  # noqa: PLC0415
    from lcf_jax.export.c2c_import import import_c2c  # noqa: PLC0415

    adapter = import_c2c(args.c2c, _architecture(args.sharer, "--sharer"), _architecture(args.receiver, "--receiver"))
    out = save_adapter(adapter, args.out)
    print(f"imported the C2C fuser in {args.c2c} as {adapter.spec.describe()}; wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcf",
        description="Latent Cache Flow in JAX: LLM agents that communicate through their KV caches.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    chat = sub.add_parser(
        "chat",
        help="chat with a model (default: the embedded SmolLM2-135M-Instruct)",
        description="Chat with a model through its chat template. With --prompt, answer and exit; "
        "otherwise read messages from the terminal (or stdin) until an empty line.",
    )
    chat.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"HF directory, .gguf file or registered name (default: {DEFAULT_MODEL})"
    )
    chat.add_argument("--prompt", action="append", help="a message to answer (repeat for a multi-turn script)")
    chat.add_argument("--system", default=None, help="a system message to start the chat with")
    chat.add_argument("--max-new-tokens", type=int, default=128, help="most tokens per answer (default: 128)")
    chat.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding (default: 0)")
    chat.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0)")
    chat.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    chat.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weight dtype")
    chat.set_defaults(run=_chat)

    train = sub.add_parser(
        "train",
        help="train an adapter from an experiment config",
        description="Train an adapter. A second run with the same --workdir resumes from its last checkpoint. "
        "Override any config value with --config.KEY=VALUE (e.g. --config.train.steps=10); an unknown key is "
        "an error that lists the valid ones.",
    )
    train.add_argument("--config", required=True, help="configs/NAME.py or configs/NAME.py:ARG")
    train.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard events, summary")
    train.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")
    train.add_argument("--coordinator", default=None, help="host:port of process 0, for explicit multi-process runs")
    train.add_argument("--num-processes", type=int, default=None, help="with --coordinator")
    train.add_argument("--process-id", type=int, default=None, help="with --coordinator")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    evaluate = sub.add_parser(
        "eval",
        help="evaluate latent against text communication on split-context questions",
        description="Run every condition on the same questions: the receiver with the question only, half or full "
        "context; text messages of 50-200 tokens written by the sharer; and, with --checkpoint, LCF-X with its "
        "controls (another question's message, an empty message, and the receiver-only adapter when the "
        "checkpoint has one). Writes results.json, results.md, f1_vs_ttft.png and answers.jsonl to --workdir.",
    )
    evaluate.add_argument(
        "--config", required=True, help="the experiment config the models come from (configs/NAME.py)"
    )
    evaluate.add_argument(
        "--checkpoint", default=None, help="an adapter directory, or the work directory of `lcf train` or `lcf demo`"
    )
    evaluate.add_argument(
        "--control", default=None, help="a receiver-only adapter directory (if --checkpoint has none)"
    )
    evaluate.add_argument(
        "--data", default=None, help="split-context questions JSONL (default: generated split_qa test questions)"
    )
    evaluate.add_argument(
        "--mcq",
        default=None,
        help="multiple choice instead: a JSONL file (MMLU-Redux, ARC or OpenBookQA layout) or a directory of them; "
        "with an lcf or c2c --checkpoint",
    )
    evaluate.add_argument("--count", type=int, default=0, help="questions to evaluate (default: all, or 300 generated)")
    evaluate.add_argument("--seed", type=int, default=1, help="seed of the generated questions (default: 1)")
    evaluate.add_argument("--latency-questions", type=int, default=5, help="questions timed one at a time (default: 5)")
    evaluate.add_argument("--batch-size", type=int, default=32, help="questions per batch (default: 32)")
    evaluate.add_argument("--workdir", required=True, help="where the results go")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate.set_defaults(run=_eval)

    demo = sub.add_parser(
        "demo",
        help="the main job: train LCF-X on SmolLM2-135M and compare it with text communication",
        description="Train the LCF-X adapter and its receiver-only control on generated split-context questions "
        "(SmolLM2-135M-Instruct as sharer and receiver, this CPU), then evaluate every condition on 300 held-out "
        "questions and print the table. A second run with the same --workdir reuses the trained adapters.",
    )
    demo.add_argument("--workdir", default="lcf-demo", help="where adapters and results go (default: ./lcf-demo)")
    demo.add_argument("--steps", type=int, default=None, help="training steps per adapter (default: the demo config's)")
    demo.add_argument("--count", type=int, default=None, help="held-out questions (default: 300)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)

    export = sub.add_parser(
        "export",
        help="export a trained adapter for PyTorch (lcf_jax.torch, transformers)",
        description="Write a trained adapter as adapter.safetensors + adapter_config.json, which "
        "lcf_jax.torch.load_adapter runs with transformers models and no JAX. --checkpoint is an adapter directory, "
        "a `lcf train` work directory (its adapter/, or its newest Orbax checkpoint), a `lcf demo` work directory "
        "(the LCF-X adapter) or an Orbax `checkpoints` folder.",
    )
    export.add_argument("--checkpoint", required=True, help="adapter directory, work directory or checkpoints folder")
    export.add_argument("--out", required=True, help="the directory to write")
    export.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="stored weight dtype (default: float32)"
    )
    export.add_argument(
        "--config",
        default=None,
        help="the experiment config the run trained with (configs/NAME.py[:ARG]); only needed for the Orbax "
        "checkpoint of a run that did not finish",
    )
    export.set_defaults(run=_export)

    c2c = sub.add_parser(
        "import-c2c",
        help="import a released C2C fuser checkpoint as an lcf_jax c2c adapter",
        description="Read a C2C (Cache-to-Cache) fuser checkpoint directory and save it as an lcf_jax adapter "
        "directory (what `lcf eval --mcq` and `lcf export` read).",
    )
    c2c.add_argument("--c2c", required=True, help="the C2C checkpoint directory")
    c2c.add_argument("--sharer", required=True, help="the sharer model: a preset name or an HF directory")
    c2c.add_argument("--receiver", required=True, help="the receiver model: a preset name or an HF directory")
    c2c.add_argument("--out", required=True, help="the adapter directory to write")
    c2c.set_defaults(run=_import_c2c)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    args.overrides = [a for a in rest if a.startswith("--config.")]
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.overrides and args.command != "train":
        parser.error("--config.KEY=VALUE overrides go with `lcf train`")
    from lcf_jax.loading import CheckpointError  # noqa: PLC0415
    from lcf_jax.runtime import tune_cpu_allocator  # noqa: PLC0415

    tune_cpu_allocator()
    from lcf_jax.models import UnsupportedArchitectureError  # noqa: PLC0415

    try:
        return args.run(args)
    except (FileNotFoundError, CheckpointError, UnsupportedArchitectureError, ValueError) as e:
        print(f"lcf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
