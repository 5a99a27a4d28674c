"""What an evaluation has finished, on disk as it finishes, so a run that dies loses at most one batch
and the same command on the same work directory continues where it stopped.

    run.json         what is being evaluated: a fingerprint of the questions, the conditions and their
                     options, both models and the adapters; a rerun with anything different is refused
    messages.jsonl   {"id", "tokens"}: the sharer's text message of a question (token ids, longest budget)
    answers.jsonl    {"id", "answers", "message", <condition>: answer, ...}: every condition's answer to a
                     question, appended as each batch finishes (rewritten in question order at the end)
    latency.jsonl    {"id", <condition>: [sharer_s, receiver_first_s, receiver_answer_s], ...}

Every line is written whole and flushed to disk before the next batch starts; a last line cut off by
a kill is dropped when the file is read back. Answers are greedy and a padded batch computes what its
rows compute alone, so work finished by an earlier run is the work this run would have done.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lcf_jax.data.qa import Question
from lcf_jax.errors import RunMismatchError

RUN_FILE = "run.json"
MESSAGES_FILE = "messages.jsonl"
ANSWERS_FILE = "answers.jsonl"
LATENCY_FILE = "latency.jsonl"


def digest(values: Iterable[Any]) -> str:
    h = hashlib.sha256()
    for value in values:
        h.update(json.dumps(value, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def questions_digest(questions: Sequence[Question]) -> str:
    return digest(q.to_json() for q in questions)


def params_digest(tree: Any) -> str:
    """A fingerprint of a parameter pytree: every leaf's shape and a strided sample of its values
    (cheap for a large model, and different for any two checkpoints in practice)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        flat = np.asarray(leaf).reshape(-1)
        h.update(str(flat.shape).encode())
        h.update(np.ascontiguousarray(flat[:: max(1, flat.size // 4096)], np.float32).tobytes())
    return h.hexdigest()[:16]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a last line cut off mid-write (a killed run) is dropped and the file
    truncated to the rows that are whole."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    rows, whole = [], 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        whole += len(line)
    if whole < len(raw):
        with path.open("r+b") as f:
            f.truncate(whole)
    return rows


def _append(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    with path.open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


class RunRecord:
    """The finished parts of one evaluation in `workdir` (see the module docstring). `fingerprint`
    names what is evaluated; `restart=True` discards an earlier run's record instead of continuing.
    With `workdir=None` the record lives in memory only (a library call that keeps nothing)."""

    def __init__(self, workdir: str | os.PathLike | None, fingerprint: dict[str, Any], *, restart: bool = False):
        self.messages: dict[str, list[int]] = {}
        self.answers: dict[str, dict[str, Any]] = {}
        self.latency: dict[str, dict[str, Any]] = {}
        self.workdir = None if workdir is None else Path(workdir)
        if self.workdir is None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        run = self.workdir / RUN_FILE
        if restart:
            for name in (RUN_FILE, MESSAGES_FILE, ANSWERS_FILE, LATENCY_FILE):
                (self.workdir / name).unlink(missing_ok=True)
        if run.exists():
            check_fingerprint(self.workdir, fingerprint)
        else:
            for name in (MESSAGES_FILE, ANSWERS_FILE, LATENCY_FILE):  # from a run that predates run.json
                (self.workdir / name).unlink(missing_ok=True)
            run.write_text(json.dumps(fingerprint, indent=2) + "\n")
        self.messages = {r["id"]: list(r["tokens"]) for r in _read_jsonl(self.workdir / MESSAGES_FILE)}
        self.answers = {r["id"]: r for r in _read_jsonl(self.workdir / ANSWERS_FILE)}
        self.latency = {r["id"]: r for r in _read_jsonl(self.workdir / LATENCY_FILE)}

    @property
    def resumed(self) -> bool:
        return bool(self.messages or self.answers or self.latency)

    def _append(self, name: str, rows: Sequence[dict[str, Any]]) -> None:
        if self.workdir is not None:
            _append(self.workdir / name, rows)

    def add_messages(self, rows: dict[str, list[int]]) -> None:
        self._append(MESSAGES_FILE, [{"id": i, "tokens": t} for i, t in rows.items()])
        self.messages.update(rows)

    def add_answers(self, rows: Sequence[dict[str, Any]]) -> None:
        self._append(ANSWERS_FILE, rows)
        self.answers.update({r["id"]: r for r in rows})

    def add_latency(self, row: dict[str, Any]) -> None:
        self._append(LATENCY_FILE, [row])
        self.latency[row["id"]] = row

    def write_answers_in_order(self, ids: Sequence[str]) -> None:
        """Rewrite answers.jsonl in question order (atomically) once every question is answered."""
        if self.workdir is None:
            return
        path = self.workdir / ANSWERS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(self.answers[i]) + "\n" for i in ids))
        os.replace(tmp, path)


def check_fingerprint(workdir: str | os.PathLike, fingerprint: dict[str, Any]) -> None:
    """Raise `RunMismatchError` naming what differs if `workdir` holds a run of something else (only
    the keys of `fingerprint` are compared, so part of it can be checked before models load)."""
    path = Path(workdir) / RUN_FILE
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunMismatchError(
            f"{path} cannot be read ({type(e).__name__}: {e}); pass --restart to start this evaluation afresh"
        ) from None
    differ = sorted(k for k in fingerprint if saved.get(k) != fingerprint[k])
    if differ:
        raise RunMismatchError(
            f"{path.parent} holds an evaluation with other {', '.join(differ)}: use another --workdir, or pass "
            "--restart to discard it and start afresh"
        )
