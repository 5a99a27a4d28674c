"""What every `lcf` command shares: the help layout, examples, quiet logs, the default model."""

from __future__ import annotations

import argparse
import logging
import textwrap

DEFAULT_MODEL = "smollm2-135m"


class HelpFormatter(argparse.HelpFormatter):
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


def examples(*lines: str) -> str:
    """An epilog: example invocations, one a line, kept as written."""
    return "examples:\n" + "\n".join("  " + line.replace("\n", "\n  ") for line in lines)


def quiet_logs() -> None:

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        from absl import logging as absl_logging  # noqa: PLC0415 - orbax logs every save at INFO

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass
