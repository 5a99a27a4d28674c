"""Fuzzing the work-directory files lcf_jax reads back: an evaluation's record (run.json,
messages.jsonl, answers.jsonl, latency.jsonl: `eval/record.py`), its results.json (`eval/report.py`),
and a training run's summary.json and config.json (`train/workdir.py`, `config.load_config`).

Each file is written by its real writer from small made-up contents (no model runs), then damaged
in seeded, deterministic ways: bytes flipped, the file cut at many points, each field given values of
the wrong type or removed, a bad line in the middle of a JSONL file, a last line cut off, empty,
non-JSON and missing files. Every case must either read back what was written, or be refused with the
project's own error (a `UserError`) in one line that names the damaged file: never a bare
KeyError/TypeError/AttributeError from inside, never rows silently lost.

The one damage a reader repairs is the one a killed run leaves: a JSONL file's last line cut off
mid-write. It is dropped, every whole row before it is read back and the file is truncated to them
(the resumed run redoes that row). A bad line anywhere else is refused and the file left as it is.

A flipped byte inside a string or a number cannot be detected without a checksum, which these plain
JSON files do not carry: flips only have to read back as many rows (or the whole file) or fail
cleanly, not to be caught.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from json_edits import DELETE, set_field

from lcf_jax.config import load_config
from lcf_jax.errors import ConfigError, DataError, RunMismatchError
from lcf_jax.eval import record as R
from lcf_jax.eval.report import ConditionResult, conditions_of, read_results, write_results
from lcf_jax.train.defaults import base_config
from lcf_jax.train.workdir import RUN_CONFIG, SUMMARY_FILE, trained_steps, write_run_files

SEED = 23
GARBAGE = ("garbage", 3, -1, 2.5, True, None, [1], {"a": 1})

# -- corruptions (each a function of the file's bytes) --------------------------------------------


def flip(position: int, mask: int) -> Callable[[bytes], bytes]:
    return lambda raw: raw[:position] + bytes([raw[position] ^ mask]) + raw[position + 1 :]


def cut(length: int) -> Callable[[bytes], bytes]:
    return lambda raw: raw[:length]


def becomes(content: bytes) -> Callable[[bytes], bytes]:
    return lambda raw: content


def edit(keys: tuple, value) -> Callable[[Any], Any]:
    """Set (DELETE: remove) the field at `keys` of parsed JSON."""
    return lambda data: set_field(data, keys, value)


def edit_json(keys: tuple, value, indent: int | None = 2) -> Callable[[bytes], bytes]:
    return lambda raw: (json.dumps(edit(keys, value)(json.loads(raw)), indent=indent) + "\n").encode()


def edit_line(index: int, change: Callable[[Any], Any] | bytes) -> Callable[[bytes], bytes]:
    """A JSONL file with line `index` replaced: by `change(row)`'s JSON, or by raw bytes."""

    def apply(raw: bytes) -> bytes:
        lines = raw.split(b"\n")
        lines[index] = change if isinstance(change, bytes) else json.dumps(change(json.loads(lines[index]))).encode()
        return b"\n".join(lines)

    return apply


FILE_CONTENTS = {
    "empty": b"",
    "text": b"not json at all\n",
    "binary": bytes(range(256)),
    "invalid UTF-8": b'{"a": "\xff\xfe"}\n',
    "a JSON list": b"[1, 2, 3]\n",
    "a JSON string": b'"garbage"\n',
    "JSON null": b"null\n",
}

# -- what is valid where (an oracle written apart from the readers) --------------------------------


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def is_str(v) -> bool:
    return isinstance(v, str)


def maybe(check) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    file: str  # the file damaged: an error must name it
    corrupt: Callable[[bytes], bytes] | None  # None: the file is removed
    # What must happen: "refuse"; "load" (what was saved); "either" (refuse, or load what was saved);
    # "changed" (a valid edit: load, maybe with other values); "flip" (refuse, or load something of
    # the saved shape: as many rows, or without a JSONL file's last line when the flip is in it);
    # an int k (a JSONL file: load its first k rows, the file truncated to them).
    outcome: str | int = "refuse"
    position: int | None = None  # where a flip is


def damage(directory: Path, case: Case) -> None:
    path = directory / case.file
    if case.corrupt is None:
        path.unlink()
    else:
        path.write_bytes(case.corrupt(path.read_bytes()))


def one_line_naming(error: BaseException, path: Path) -> str | None:
    message = str(error)
    if "\n" in message:
        return f"a message of several lines: {message[:300]!r}"
    if str(path) not in message:
        return f"the message does not name {path}: {message[:300]!r}"
    return None


def run_cases(cases: list[Case], source: Path, tmp_path: Path, check: Callable[[Path, Case], str | None]) -> None:
    failures = []
    for i, case in enumerate(cases):
        directory = shutil.copytree(source, tmp_path / f"case{i}")
        damage(directory, case)
        problem = check(directory, case)
        if problem:
            failures.append(f"{case.file}: {case.name}: {problem}")
        shutil.rmtree(directory)
    assert not failures, f"{len(failures)} of {len(cases)} corruptions handled badly:\n" + "\n".join(failures)


def simple_verdict(read, errors, directory: Path, case: Case, want, shape=lambda got: None) -> str | None:
    """For a file read whole: refused in one line naming it, or read back as `case.outcome` says
    (a flip: something of the saved `shape`)."""
    before = (directory / case.file).read_bytes() if (directory / case.file).is_file() else None
    try:
        got = read(directory)
    except errors as e:
        if case.outcome in ("load", "changed"):
            return f"refused ({e}); it must load"
        if before is not None and (directory / case.file).read_bytes() != before:
            return "refused, but the file was changed"
        return one_line_naming(e, directory / case.file)
    except Exception as e:  # noqa: BLE001 - anything else is what this test exists to catch
        return f"bare {type(e).__name__}: {str(e)[:300]}"
    if case.outcome == "refuse":
        return f"loaded ({str(got)[:200]}); it must be refused"
    if case.outcome in ("load", "either") and got != want:
        return f"loaded something else than was saved: {str(got)[:300]}"
    if case.outcome == "flip" and shape(got) != shape(want):
        return f"loaded something of another shape: {str(got)[:300]}"
    return None


def file_cases(name: str, missing: str = "refuse") -> list[Case]:
    cases = [Case(f"{name} is {what}", name, becomes(content)) for what, content in FILE_CONTENTS.items()]
    return [*cases, Case(f"{name} missing", name, None, missing)]


def truncations(name: str, raw: bytes, rng: np.random.Generator, count: int) -> list[Case]:
    """Cut at `count` seeded points and next to the ends; a cut of the final newline only still loads."""
    points = {0, 1, 2, len(raw) // 2, len(raw) - 2, *rng.choice(len(raw), size=count, replace=False).tolist()}
    cases = [Case(f"cut at byte {n}", name, cut(n)) for n in sorted(points)]
    return [*cases, Case("final newline cut", name, cut(len(raw) - 1), "load")]


def flips(name: str, raw: bytes, rng: np.random.Generator, count: int, outcome: str) -> list[Case]:
    positions = sorted(rng.choice(len(raw), size=min(count, len(raw)), replace=False).tolist())
    return [Case(f"flip byte {p}", name, flip(p, int(rng.integers(1, 256))), outcome, p) for p in positions]


def field_cases(name: str, keys: tuple, valid: Callable[[Any], bool], values=GARBAGE, indent=2) -> list[Case]:
    """Field `keys` set to each of `values` and removed; refused unless `valid(value)`."""
    where = ".".join(map(str, keys))
    out = [
        Case(f"{where} = {v!r}", name, edit_json(keys, v, indent), "changed" if valid(v) else "refuse") for v in values
    ]
    return out + [
        Case(f"{where} removed", name, edit_json(keys, DELETE, indent), "changed" if valid(DELETE) else "refuse")
    ]


# -- the evaluation record --------------------------------------------------------------------------

KV = ("kv_share", "kv_share_mismatched")
CONDITIONS = ("question_only", "half_context", "text_5", "lcfx", "mismatched_message", *KV)
IDS = ("q0", "q1", "q2", "q3")
FINGERPRINT = {
    "questions": f"4 questions, {R.digest(IDS)}",
    "latency_questions": 3,
    "conditions and options": R.digest([CONDITIONS]),
    "models": R.digest(["sharer", "receiver"]),
    "adapters": R.digest(["adapter"]),
    "kv_translator": None,
}
JSONL = (R.MESSAGES_FILE, R.ANSWERS_FILE, R.LATENCY_FILE)


def answer_row(i: int, qid: str) -> dict[str, Any]:
    return {
        "id": qid,
        "answers": [f"Town {i}", f"town{i}"],
        "message": f"{qid}'s message é",
        **{name: f"{name} says {i}" for name in CONDITIONS},
        "kv_bytes": {name: 1000 + 10 * i + k for k, name in enumerate(KV)},
    }


def latency_row(i: int, qid: str) -> dict[str, Any]:
    return {"id": qid, **{name: (0.01 * k, 0.5 + i, 1.25 + k) for k, name in enumerate(CONDITIONS)}}


def read_record(directory: Path) -> dict[str, list]:
    """The record's rows, in file order, as the rows that were written."""
    record = R.RunRecord(directory, FINGERPRINT, conditions=CONDITIONS, kv=KV)
    return {
        R.MESSAGES_FILE: [{"id": i, "tokens": t} for i, t in record.messages.items()],
        R.ANSWERS_FILE: list(record.answers.values()),
        R.LATENCY_FILE: list(record.latency.values()),
    }


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory) -> Path:
    """An evaluation work directory as `RunRecord` writes it: 4 questions' messages and answers
    (two batches) and 3 questions' times."""
    directory = tmp_path_factory.mktemp("evaluation")
    record = R.RunRecord(directory, FINGERPRINT, conditions=CONDITIONS, kv=KV)
    record.add_messages({qid: [3 + i, 10 * i, 7, 0][: i + 1] for i, qid in enumerate(IDS)})
    record.add_answers([answer_row(i, qid) for i, qid in enumerate(IDS[:2])])
    record.add_answers([answer_row(i + 2, qid) for i, qid in enumerate(IDS[2:])])
    for i, qid in enumerate(IDS[:3]):
        record.add_latency({"id": qid, **{k: list(v) for k, v in latency_row(i, qid).items() if k != "id"}})
    return directory


def record_verdict(directory: Path, case: Case, want: dict[str, list], raw: dict[str, bytes]) -> str | None:
    path = directory / case.file
    before = path.read_bytes() if path.is_file() else None
    try:
        got = read_record(directory)
    except (DataError, RunMismatchError) as e:
        if not isinstance(case.outcome, str) or case.outcome in ("load", "changed"):
            return f"refused ({e}); it must load"
        if before is not None and path.read_bytes() != before:
            return "refused, but the file was changed (truncated?)"
        return one_line_naming(e, path)
    except Exception as e:  # noqa: BLE001 - anything else is what this test exists to catch
        return f"bare {type(e).__name__}: {str(e)[:300]}"
    if case.outcome == "refuse":
        return "loaded; it must be refused"
    others = [name for name in JSONL if name != case.file]
    if any(got[name] != want[name] for name in others):
        return "the other files read back other rows"
    if case.file not in JSONL:  # run.json: the rows are what was saved
        return None if got == want else "loaded other rows than were saved"
    rows, lines = got[case.file], raw[case.file].split(b"\n")[:-1]
    keep = case.outcome if isinstance(case.outcome, int) else len(want[case.file])
    if case.outcome == "flip" and case.position >= len(raw[case.file]) - len(lines[-1]) - 1:
        keep -= len(rows) == keep - 1  # a flip in the last line may read as a cut
    if case.outcome in ("flip", "changed"):  # other values are fine, fewer rows are not
        if len(rows) != keep:
            return f"read back {len(rows)} rows of {len(want[case.file])}"
    elif rows != want[case.file][:keep]:
        return f"read back other rows than the first {keep} saved: {str(rows)[:300]}"
    if (
        keep < len(want[case.file]) and case.corrupt is not None
    ):  # a cut line dropped: the file holds exactly the whole rows
        if path.read_bytes() != b"".join(line + b"\n" for line in lines[:keep]):
            return f"the file is not truncated to its {keep} whole rows"
        if read_record(directory)[case.file] != rows:
            return "a second read gives other rows"
    return None


def jsonl_cases(name: str, raw: bytes, rng: np.random.Generator) -> list[Case]:
    lines = raw.split(b"\n")[:-1]
    n = len(lines)
    starts = np.cumsum([0] + [len(line) + 1 for line in lines]).tolist()  # where each line begins
    # Cut anywhere: the whole lines before the cut are kept (a cut right after a newline loses nothing).
    points = sorted({*rng.choice(len(raw), size=40, replace=False).tolist(), *starts[1:], *(s - 1 for s in starts[1:])})
    cases = [Case(f"cut at byte {p}", name, cut(p), sum(s <= p for s in starts[1:])) for p in points]
    cases += flips(name, raw, rng, 30, "flip")
    last = n - 1
    cases += [
        Case("last line whole but for its newline", name, cut(len(raw) - 1), n - 1),
        Case("last line undecodable, with its newline", name, edit_line(last, b'{"id": "q9", "tok'), n - 1),
        Case("last line not UTF-8, with its newline", name, edit_line(last, b"\xff\xfe\xfd"), n - 1),
        Case("last line empty", name, edit_line(last, b""), n - 1),
        Case("a blank line appended", name, lambda raw: raw + b"\n", n),
        Case("last line a JSON list", name, edit_line(last, b"[1, 2]"), "refuse"),  # whole, so not a cut
        Case("last line lacks its id", name, edit_line(last, edit(("id",), DELETE)), "refuse"),
        Case("a cut line then a whole one", name, lambda raw: raw[:-5] + b"\n" + lines[0] + b"\n", "refuse"),
        Case("two lines run together", name, lambda raw: raw.replace(b"\n", b" ", 1), "refuse"),
        Case(
            "the last two lines run together", name, lambda raw: raw[: starts[-2] - 1] + b" " + raw[starts[-2] :], n - 2
        ),
        Case("a line split by a CR", name, lambda raw: raw.replace(b", ", b",\r", 1), "changed"),  # JSON whitespace
    ]
    for what, line in {
        "empty": b"",
        "text": b"garbage",
        "cut off": lines[1][:-5],
        "not UTF-8": b'{"id": "\xff"}',
        "a JSON list": b"[1, 2]",
        "a JSON string": b'"q1"',
        "null": b"null",
        "NUL bytes": bytes(len(lines[1])),
    }.items():
        cases.append(Case(f"middle line {what}", name, edit_line(1, line), "refuse"))
    # A file of one undecodable line: that line is its last, so it reads as cut off.
    cases += [Case(f"the file is {what}", name, becomes(c), 0 if what in ("text", "invalid UTF-8") else "refuse")
              for what, c in FILE_CONTENTS.items() if what != "empty"]  # fmt: skip
    return cases + [Case("the file is empty", name, becomes(b""), 0), Case("the file is missing", name, None, 0)]


def row_field_cases(name: str, row: dict[str, Any]) -> list[Case]:
    """Each field of the second row (and the id of the last) given wrong-typed values or removed."""
    strings = (is_str, lambda v: isinstance(v, list) and all(map(is_str, v)))
    valid: dict[str, Callable[[Any], bool]] = {"id": is_str}
    extra: dict[str, tuple] = {}
    if name == R.MESSAGES_FILE:
        valid["tokens"] = lambda v: isinstance(v, list) and all(is_int(t) and t >= 0 for t in v)
        extra["tokens"] = (["a"], [-1], [1.5], [True], [])
    elif name == R.ANSWERS_FILE:
        valid |= {"answers": strings[1], "message": is_str, **dict.fromkeys(CONDITIONS, is_str)}
        valid["kv_bytes"] = lambda v: isinstance(v, dict) and all(is_int(v.get(k)) for k in KV)
        extra["answers"] = (["a", 1], [])
        extra["kv_bytes"] = ({"kv_share": 1}, {"kv_share": 1, "kv_share_mismatched": "x"}, {**row["kv_bytes"], "x": 1})
    else:
        times = lambda v: isinstance(v, list) and len(v) == 3 and all(map(is_number, v))  # noqa: E731
        valid |= dict.fromkeys(CONDITIONS, times)
        for c in CONDITIONS[:2]:
            extra[c] = ([1, 2], ["a", 1, 2], [1, 2, 3, 4], [1, None, 2])
    cases = []
    for field, check in valid.items():
        optional = name == R.LATENCY_FILE and field != "id"  # a condition not timed: a row may lack it
        for value in (*GARBAGE, *extra.get(field, ()), DELETE):
            ok = optional if value is DELETE else check(value)
            shown = "removed" if value is DELETE else f"= {json.dumps(value)}"
            cases.append(
                Case(
                    f"row 2: {field} {shown}", name, edit_line(1, edit((field,), value)), "changed" if ok else "refuse"
                )
            )
    cases += [Case("row 2: an unknown field", name, edit_line(1, edit(("zz",), 1)),
                   "refuse" if name == R.LATENCY_FILE else "changed")]  # fmt: skip
    return cases + [Case("last row: id = 3", name, edit_line(-2, edit(("id",), 3)), "refuse")]


def run_json_cases(raw: bytes, rng: np.random.Generator) -> list[Case]:
    name = R.RUN_FILE
    cases = flips(name, raw, rng, 40, "either") + truncations(name, raw, rng, 12)
    for field, saved in FINGERPRINT.items():  # only the value saved matches (a missing null reads as null)
        cases += field_cases(name, (field,), lambda v, saved=saved: v == saved or (v is DELETE and saved is None))
    cases += [Case("an unknown field", name, edit_json(("extra",), 1), "load")]
    cases += [Case(f"{name} is {what}", name, becomes(c)) for what, c in FILE_CONTENTS.items()]
    # A work directory without run.json predates it: its record is discarded and the run starts afresh.
    return cases


def test_a_damaged_evaluation_record_is_refused_or_read_back(evaluation, tmp_path, caplog):
    want = read_record(evaluation)
    assert [len(want[n]) for n in JSONL] == [4, 4, 3]
    raw = {name: (evaluation / name).read_bytes() for name in (*JSONL, R.RUN_FILE)}
    rng = np.random.default_rng(SEED)
    cases = run_json_cases(raw[R.RUN_FILE], rng)
    for name in JSONL:
        cases += jsonl_cases(name, raw[name], rng) + row_field_cases(name, want[name][1])
    with caplog.at_level(logging.ERROR, logger="lcf_jax"):  # each dropped line is logged: not here
        run_cases(cases, evaluation, tmp_path, lambda d, case: record_verdict(d, case, want, raw))
    assert len(cases) > 500


def test_a_bad_middle_line_is_refused_with_its_number_and_the_file_kept(evaluation, tmp_path):
    directory = shutil.copytree(evaluation, tmp_path / "run")
    path = directory / R.ANSWERS_FILE
    damaged = edit_line(1, b'{"id": "q1", "answ')(path.read_bytes())
    path.write_bytes(damaged)
    with pytest.raises(DataError, match=rf"{path}, line 2: not JSON .*--restart") as err:
        read_record(directory)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == damaged  # the two whole answers after it are still there
    path.write_bytes(edit_line(2, edit(("lcfx",), DELETE))((evaluation / R.ANSWERS_FILE).read_bytes()))
    with pytest.raises(DataError, match=rf"{path}, line 3: no 'lcfx'"):
        read_record(directory)


def test_a_cut_last_line_is_dropped_and_said(evaluation, tmp_path, caplog):
    directory = shutil.copytree(evaluation, tmp_path / "run")
    path = directory / R.LATENCY_FILE
    path.write_bytes(path.read_bytes()[:-20])
    with caplog.at_level(logging.WARNING, logger="lcf_jax"):
        assert [r["id"] for r in read_record(directory)[R.LATENCY_FILE]] == ["q0", "q1"]
    assert f"dropped the last line of {path}" in caplog.text


def test_run_json_damage_is_named(evaluation, tmp_path):
    directory = shutil.copytree(evaluation, tmp_path / "run")
    (directory / R.RUN_FILE).write_text("[1, 2]\n")
    with pytest.raises(RunMismatchError, match=r"holds \[1, 2\], not a run fingerprint.*--restart"):
        read_record(directory)
    (directory / R.RUN_FILE).write_text(json.dumps({**FINGERPRINT, "models": 3}))
    with pytest.raises(RunMismatchError, match=rf"{directory / R.RUN_FILE} records an evaluation with other models"):
        R.check_fingerprint(directory, FINGERPRINT)


# -- results.json ----------------------------------------------------------------------------------

DELTA_KEYS = ("mean", "lo", "hi")
RESULT_FIELDS = {
    "f1": maybe(is_number), "em": maybe(is_number), "ttft_ms": maybe(is_number), "answer_ms": maybe(is_number),
    "n": is_int, "message_bytes": maybe(is_int), "mcnemar_p": maybe(is_number), "wilcoxon_p": maybe(is_number),
    "note": is_str,
    "f1_ci95": maybe(lambda v: isinstance(v, list) and len(v) == 2 and all(map(is_number, v))),
    "delta_vs_mismatched": maybe(lambda v: isinstance(v, dict) and all(is_number(v.get(k)) for k in DELTA_KEYS)),
}  # fmt: skip
OPTIONAL_RESULT_FIELDS = {f.name for f in dataclasses.fields(ConditionResult) if f.default is not dataclasses.MISSING}


def read_report(directory: Path):
    data = read_results(directory)
    return conditions_of(data), data["meta"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("results")
    conditions = [
        ConditionResult("text_5", 31.5, 20.0, 40.25, 90.0, 4, 23, 0.5, 0.25, f1_ci95=(20.0, 41.5)),
        ConditionResult(
            "lcfx", 44.0, 30.0, 12.5, 60.0, 4, 2048, 0.0125, 0.03, note="the adapter",
            f1_ci95=(30.0, 55.5), delta_vs_mismatched={"mean": 12.5, "lo": 2.0, "hi": 20.25},
        ),
        ConditionResult("half_context", 10.0, 5.0, None, None, 4),
    ]  # fmt: skip
    write_results(directory, conditions, meta={"reference": "text_5", "dataset": "made up"})
    assert read_report(directory)[0] == conditions
    return directory


def test_a_damaged_results_json_is_refused_or_read_back(results, tmp_path):
    name = "results.json"
    raw = (results / name).read_bytes()
    want = read_report(results)
    rng = np.random.default_rng([SEED, 1])
    # A flip inside a number or a name may read as another valid file; anything else must be refused.
    cases = flips(name, raw, rng, 60, "flip") + truncations(name, raw, rng, 30)
    for field, valid in RESULT_FIELDS.items():
        check = lambda v, valid=valid, field=field: field in OPTIONAL_RESULT_FIELDS if v is DELETE else valid(v)  # noqa: E731
        cases += field_cases(name, ("conditions", "lcfx", field), check)
    for values in ((1, 2), (1, "a"), (1, 2, 3)):
        cases.append(Case(f"f1_ci95 = {list(values)}", name, edit_json(("conditions", "lcfx", "f1_ci95"), list(values)),
                          "changed" if len(values) == 2 and all(map(is_int, values)) else "refuse"))  # fmt: skip
    cases += [
        Case("delta without lo", name, edit_json(("conditions", "lcfx", "delta_vs_mismatched", "lo"), DELETE)),
        Case("an unknown condition field", name, edit_json(("conditions", "lcfx", "extra"), 1)),
        Case("an unknown top-level key", name, edit_json(("extra",), 1)),
        Case("meta removed", name, edit_json(("meta",), DELETE)),
        Case("conditions removed", name, edit_json(("conditions",), DELETE)),
        Case("meta's fields changed", name, edit_json(("meta", "reference"), 3), "changed"),  # free-form
    ]
    for key in ("conditions", "meta"):
        cases += [Case(f"{key} = {v!r}", name, edit_json((key,), v)) for v in GARBAGE if not isinstance(v, dict)]
    cases += [
        Case(f"a condition = {v!r}", name, edit_json(("conditions", "lcfx"), v))
        for v in GARBAGE
        if not isinstance(v, dict)
    ]
    cases += [Case(f"{name} is {what}", name, becomes(c)) for what, c in FILE_CONTENTS.items()]

    shape = lambda got: [type(x) for x in got[0]]  # noqa: E731 - as many conditions
    run_cases(cases, results, tmp_path, lambda d, case: simple_verdict(read_report, DataError, d, case, want, shape))
    with pytest.raises(FileNotFoundError):
        read_results(tmp_path / "nothing")


def test_results_json_errors_are_data_errors_that_are_value_errors(results, tmp_path):
    directory = shutil.copytree(results, tmp_path / "run")
    path = directory / "results.json"
    path.write_bytes(edit_json(("conditions", "lcfx", "f1"), "high")(path.read_bytes()))
    message = rf"{path}: condition 'lcfx': 'f1' is \"high\", expected a number or null; run the evaluation again"
    with pytest.raises(ValueError, match=message):
        read_results(path)
    assert issubclass(DataError, ValueError)


# -- a training run's summary.json and config.json ----------------------------------------------------


@pytest.fixture(scope="module")
def training_run(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("train")
    summary = {"steps": 30, "resumed_from": 10, "parameters": {"adapter": 1234}, "final": {"loss": 1.5}}
    write_run_files(directory, summary, load_config("configs/tiny.py"))
    return directory


def read_config(directory: Path) -> dict:
    return load_config(directory / RUN_CONFIG, defaults=base_config()).to_dict()


def config_leaves(data: dict, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict) and (*prefix, key) not in (
            ("sharer_arch",),
            ("receiver_arch",),
            ("adapter", "options"),
        ):
            out += config_leaves(value, (*prefix, key))
        elif not isinstance(value, dict):
            out.append(((*prefix, key), value))
    return out


def same_json_type(value, saved) -> bool:
    if isinstance(saved, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(saved, bool)
    if isinstance(saved, float):
        return is_number(value)
    return isinstance(value, type(saved))


def test_a_damaged_summary_json_is_refused_or_read_back(training_run, tmp_path):
    name = SUMMARY_FILE
    raw = (training_run / name).read_bytes()
    assert trained_steps(training_run) == 30
    rng = np.random.default_rng([SEED, 2])
    cases = flips(name, raw, rng, 30, "flip") + truncations(name, raw, rng, 12)
    cases += field_cases(name, ("steps",), lambda v: v is not DELETE and is_int(v) and v >= 0)
    cases += [Case(f"final = {v!r}", name, edit_json(("final",), v), "load") for v in GARBAGE]  # not read
    cases += file_cases(name, missing="none")

    def check(directory: Path, case: Case) -> str | None:
        if case.outcome == "none":  # no summary.json: a run that never finished
            return None if trained_steps(directory) is None else "a missing summary.json gives a step count"
        return simple_verdict(trained_steps, DataError, directory, case, 30, shape=type)  # a digit may flip

    run_cases(cases, training_run, tmp_path, check)


def test_an_export_says_when_summary_json_cannot_tell_the_adapters_step(training_run, tmp_path, caplog):
    from lcf_jax.export.to_torch import _warn_if_stale

    run = shutil.copytree(training_run, tmp_path / "run")
    (run / "adapter").mkdir()
    (run / "checkpoints" / "40" / "state").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="lcf_jax"):
        _warn_if_stale(run / "adapter")
    assert "newer checkpoint (step 40)" in caplog.text
    caplog.clear()
    (run / SUMMARY_FILE).write_text('{"steps": "thirty"}')
    with caplog.at_level(logging.WARNING, logger="lcf_jax"):
        _warn_if_stale(run / "adapter")  # the export goes on, and says what it could not check
    assert f"{run / SUMMARY_FILE} does not record the run's step count" in caplog.text
    assert "cannot tell whether" in caplog.text


def test_a_damaged_run_config_is_refused_or_read_back(training_run, tmp_path):
    name = RUN_CONFIG
    raw = (training_run / name).read_bytes()
    want = read_config(training_run)
    rng = np.random.default_rng([SEED, 3])
    cases = flips(name, raw, rng, 40, "flip") + truncations(name, raw, rng, 20)
    for keys, saved in config_leaves(want):
        cases += field_cases(name, keys, lambda v, saved=saved: v is DELETE or same_json_type(v, saved), GARBAGE[:6])
    for keys in (("train",), ("adapter",), ("sharer_arch",), ("adapter", "options"), ("checkpoint",)):
        cases += [Case(f"{'.'.join(keys)} = {v!r}", name, edit_json(keys, v)) for v in ("garbage", [1], None)]
    cases += [
        Case("a recipe's own section", name, edit_json(("eval",), {"count": 3}), "changed"),
        Case("an architecture field of its own", name, edit_json(("sharer_arch", "anything"), 1), "changed"),
    ]
    cases += file_cases(name)

    def check(directory: Path, case: Case) -> str | None:
        if case.name.endswith("removed") and case.outcome == "changed":
            # A config saved before a key existed lacks it: it loads, without that key.
            problem = simple_verdict(read_config, ConfigError, directory, case, want)
            got = read_config(directory) if problem is None else None
            keys = case.name.split(" ")[0].split(".")
            expected = json.loads(json.dumps(want))
            edit(tuple(keys), DELETE)(expected)
            return problem or (None if got == expected else "loaded other values than the file holds")
        return simple_verdict(read_config, ConfigError, directory, case, want)

    run_cases(cases, training_run, tmp_path, check)
