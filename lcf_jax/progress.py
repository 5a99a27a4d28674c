"""Progress that shows wherever the output goes: a tqdm bar on a terminal, and log lines otherwise
(a line when a stage starts, one every `every` seconds with the counts, one when it ends), so a run
piped to a file says where it is. The periodic line comes from a timer thread, so a stage whose
units take minutes each still reports on time (with the counts so far)."""

from __future__ import annotations

import logging
import sys
import threading
import time

from tqdm.auto import tqdm

log = logging.getLogger("lcf_jax.progress")

DEFAULT_EVERY = 30.0  # seconds between progress lines when the output is not a terminal


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


class Progress:
    """Counts of `unit` done out of `total` in one stage. `mode`: "auto" (a bar on a terminal,
    lines otherwise), "bar", "lines" or "off". `done` counts work a previous run already did."""

    def __init__(
        self,
        stage: str,
        total: int,
        *,
        unit: str = "questions",
        mode: str = "auto",
        every: float = DEFAULT_EVERY,
        done: int = 0,
    ):
        if mode not in ("auto", "bar", "lines", "off"):
            raise ValueError(f"progress mode must be auto, bar, lines or off, got {mode!r}")
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.stage, self.total, self.unit, self.mode, self.every = stage, total, unit, mode, every
        self.count, self.resumed = done, done
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, initial=done, desc=stage, unit=unit[:1]) if mode == "bar" else None
        self.detail, self.closed = "", threading.Event()
        if mode == "lines":
            note = f" ({done} done by an earlier run)" if done else ""
            log.info("%s: started, %d %s%s", stage, total, unit, note)
            if every > 0:
                threading.Thread(target=self._every, daemon=True).start()

    def _every(self) -> None:
        while not self.closed.wait(self.every):
            self._line()

    def _line(self) -> None:
        log.info("%s: %s%s", self.stage, self._counts(), f"; {self.detail}" if self.detail else "")

    def update(self, n: int, detail: str = "") -> None:
        """`n` more done; `detail` (e.g. the loss) is shown beside the bar or at the end of a line."""
        self.count += n
        self.detail = detail or self.detail
        if self.bar is not None:
            if detail:
                self.bar.set_postfix_str(detail, refresh=False)
            self.bar.update(n)
        elif self.mode == "lines" and self.every <= 0:  # a line after every update
            self._line()

    def _counts(self) -> str:
        elapsed = time.perf_counter() - self.start
        text = f"{self.count}/{self.total} {self.unit}, {_minutes(elapsed)}"
        new = self.count - self.resumed
        if new > 0 and self.count < self.total:
            text += f", about {_minutes(elapsed / new * (self.total - self.count))} left"
        return text

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines":
            log.info("%s: finished, %s", self.stage, self._counts())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
