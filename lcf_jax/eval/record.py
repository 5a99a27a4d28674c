"""What an evaluation has finished, on disk as it finishes, so a run that dies loses at most one batch
and the same command on the same work directory continues where it stopped.

    run.json         what is being evaluated: a fingerprint of the questions, the conditions and their
                     options, both models and the adapters; a rerun with anything different is refused
    messages.jsonl   {"id", "tokens"}: the sharer's text message of a question (token ids, longest budget)
    answers.jsonl    {"id", "answers", "message", <condition>: answer, ...}: every condition's answer to a
                     question, appended as each batch finishes (rewritten in question order at the end)
    latency.jsonl    {"id", <condition>: [sharer_s, receiver_first_s, receiver_answer_s], ...}

Every line is written whole and flushed to disk before the next batch starts; a last line cut off by
a kill is dropped when the file is read back. Any other line that is not a whole record (a damaged
file) is refused (`DataError`), since dropping it would drop every row after it too. Answers are
greedy and a padded batch computes what its rows compute alone, so work finished by an earlier run is
the work this run would have done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lcf_jax.data.qa import Question
from lcf_jax.errors import DataError, RunMismatchError
from lcf_jax.json_values import excerpt, is_integer, is_number

log = logging.getLogger(__name__)

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


def _read_jsonl(path: Path, problem: Callable[[Any], str | None]) -> list[dict[str, Any]]:
    """Rows of a JSONL file the record wrote, each checked by `problem` (None, or what is wrong).

    Only the last line may be damaged: a run killed mid-write leaves it cut off (without its newline,
    or, whatever a crash leaves, undecodable). It is dropped and the file truncated to the whole rows
    before it, which the resumed run then redoes. A bad line anywhere else is damage a kill cannot
    cause, and skipping it would silently drop every whole row after it: that is a `DataError`."""
    if not path.exists():
        return []
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _damaged(path, None, f"unreadable: {e.strerror or e}") from None
    lines = raw.split(b"\n")
    cut = lines.pop() != b""  # bytes after the last newline: a line a kill cut off
    rows, whole = [], 0
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError: not UTF-8
            if number == len(lines) and not cut:  # the final line, whole but undecodable: a crash's too
                break
            reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
            raise _damaged(path, number, f"not JSON ({reason})") from None
        wrong = problem(row)
        if wrong:
            raise _damaged(path, number, wrong)
        rows.append(row)
        whole += len(line) + 1
    if whole < len(raw):
        log.warning("dropped the last line of %s, cut off mid-write (a killed run?): its work is done again", path)
        with path.open("r+b") as f:
            f.truncate(whole)
    return rows


def _damaged(path: Path, line: int | None, problem: str) -> DataError:
    where = path if line is None else f"{path}, line {line}"
    return DataError(
        f"{where}: {problem}. The work directory is damaged (more than a run cut off by a kill): pass --restart to "
        "start this evaluation afresh, or use another --workdir"
    )


def _fields_problem(row: Any, fields: dict[str, tuple[Callable[[Any], bool], str]]) -> str | None:
    """What is wrong with `row` given the fields it must hold ({name: (check, what it must be)})."""
    if not isinstance(row, dict):
        return f"{excerpt(row)} is not a JSON object"
    for name, (ok, what) in fields.items():
        if name not in row:
            return f"no {name!r}"
        if not ok(row[name]):
            return f"{name!r} is {excerpt(row[name])}, expected {what}"
    return None


_ID = {"id": (lambda v: isinstance(v, str), "a question id (a string)")}
_TOKENS = (lambda v: isinstance(v, list) and all(is_integer(t) and t >= 0 for t in v), "a list of token ids")
_TIMES = (lambda v: isinstance(v, list) and len(v) == 3 and all(map(is_number, v)), "3 stage times in seconds")


def _message_problem(row: Any) -> str | None:
    return _fields_problem(row, {**_ID, "tokens": _TOKENS})


def _answer_problem(row: Any, conditions: Sequence[str] | None, kv: Sequence[str]) -> str | None:
    """An answers row holds what `run_answers` reads back: with the conditions known, each one's
    answer, and each KV row's message size."""
    fields = dict(_ID)
    if conditions is not None:
        fields["answers"] = (lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v), "a list of strings")
        fields["message"] = (lambda v: isinstance(v, str), "a string")
        fields |= {name: (lambda v: isinstance(v, str), "an answer (a string)") for name in conditions}
        if kv:
            sizes = lambda v: isinstance(v, dict) and all(is_integer(v.get(n)) for n in kv)  # noqa: E731
            fields["kv_bytes"] = (sizes, f"the bytes of {', '.join(kv)} (integers)")
    return _fields_problem(row, fields)


def _latency_problem(row: Any, conditions: Sequence[str] | None) -> str | None:
    """A latency row: each timed condition's 3 stage times (`run_latency` reads every key but id)."""
    wrong = _fields_problem(row, _ID)
    if wrong:
        return wrong
    for name, times in row.items():
        if name == "id":
            continue
        if conditions is not None and name not in conditions:
            return f"{name!r} is not a condition of this evaluation"
        if not _TIMES[0](times):
            return f"{name!r} is {excerpt(times)}, expected {_TIMES[1]}"
    return None


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
    With `workdir=None` the record lives in memory only (a library call that keeps nothing).
    `conditions` (and `kv`, the KV-message rows among them), when given, are what each recorded
    answer must hold: a row read back without one is refused, not a KeyError later."""

    def __init__(
        self,
        workdir: str | os.PathLike | None,
        fingerprint: dict[str, Any],
        *,
        restart: bool = False,
        conditions: Sequence[str] | None = None,
        kv: Sequence[str] = (),
    ):
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
        messages = _read_jsonl(self.workdir / MESSAGES_FILE, _message_problem)
        answers = _read_jsonl(self.workdir / ANSWERS_FILE, lambda r: _answer_problem(r, conditions, kv))
        latency = _read_jsonl(self.workdir / LATENCY_FILE, lambda r: _latency_problem(r, conditions))
        self.messages = {r["id"]: list(r["tokens"]) for r in messages}
        self.answers = {r["id"]: r for r in answers}
        self.latency = {r["id"]: r for r in latency}

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
    except (OSError, ValueError) as e:  # ValueError: not JSON (JSONDecodeError), or not UTF-8 text
        raise RunMismatchError(
            f"{path} cannot be read ({type(e).__name__}: {e}); pass --restart to start this evaluation afresh"
        ) from None
    if not isinstance(saved, dict):  # valid JSON, but not the fingerprint object this module writes
        raise RunMismatchError(
            f"{path} holds {excerpt(saved)}, not a run fingerprint (a JSON object); pass --restart to start this "
            "evaluation afresh"
        )
    differ = sorted(k for k in fingerprint if saved.get(k) != fingerprint[k])
    if differ:
        raise RunMismatchError(
            f"{path} records an evaluation with other {', '.join(differ)}: use another --workdir, or pass "
            "--restart to discard it and start afresh"
        )
