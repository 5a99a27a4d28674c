"""The evaluation report: one `results.json` per run, a markdown table and an F1-vs-latency plot.

results.json has exactly two top-level keys, so that tables and plots can be rebuilt from it alone:
    {"conditions": {name: {"f1", "em", "ttft_ms", "answer_ms", "n", "message_bytes", ...}},
     "meta": {models, dataset, date, machine, command, reference condition, ...}}
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lcf_jax.errors import DataError
from lcf_jax.json_values import excerpt, is_integer, is_number

# Text-to-text conditions are named by their message budget in tokens; the plot joins them in order.
_TEXT_CONDITION = re.compile(r"^text_(\d+)$")
_RESULT_KEYS = ("conditions", "meta")


@dataclasses.dataclass(frozen=True)
class ConditionResult:
    """One evaluated condition. f1/em are 0-100 means; times are medians over questions in ms (None when
    not measured, e.g. multiple choice scored from logits); message_bytes is what the sharer sends to
    the receiver (None when nothing is sent); the p-values compare with the run's reference condition.
    """

    name: str
    f1: float
    em: float
    ttft_ms: float | None
    answer_ms: float | None
    n: int
    message_bytes: int | None = None
    mcnemar_p: float | None = None
    wilcoxon_p: float | None = None
    note: str = ""
    f1_ci95: tuple[float, float] | None = None  # percentile bootstrap over questions
    # Latent and KV rows: F1 minus their mismatched control's, paired bootstrap {mean, lo, hi}.
    delta_vs_mismatched: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        """The fields except `name` (the key it is stored under), as plain JSON types: numpy scalars
        become Python numbers and NaN becomes None, since NaN is not valid JSON."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "name":
                continue
            value = getattr(self, f.name)
            if value is None or isinstance(value, str):
                out[f.name] = value
            elif f.name == "f1_ci95":
                out[f.name] = [float(x) for x in value]
            elif f.name == "delta_vs_mismatched":
                out[f.name] = {k: float(x) for k, x in value.items()}
            elif f.name in ("n", "message_bytes"):
                out[f.name] = int(value)
            else:
                out[f.name] = None if math.isnan(float(value)) else float(value)
        return out

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> ConditionResult:
        """Inverse of `to_json`; raises `DataError` (a ValueError) on missing, unknown or wrong-typed
        fields, so a schema change or a damaged file is noticed here, not by whatever reads a field."""
        if not isinstance(data, Mapping):
            raise DataError(f"condition {name!r} is {excerpt(data)}, not a JSON object")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "name"}
        unknown = sorted(set(data) - set(fields))
        missing = sorted(k for k, f in fields.items() if k not in data and f.default is dataclasses.MISSING)
        if unknown or missing:
            raise DataError(f"condition {name!r}: unknown fields {unknown}, missing fields {missing}")
        for key, value in data.items():
            ok, what = _FIELD_TYPES[key]
            if not ok(value):
                raise DataError(f"condition {name!r}: {key!r} is {excerpt(value)}, expected {what}")
        data = dict(data)
        if data.get("f1_ci95") is not None:
            data["f1_ci95"] = tuple(data["f1_ci95"])
        return cls(name=name, **data)


def _optional(check):
    return lambda value: value is None or check(value)


# What `to_json` writes for each field (it writes NaN as null, so every number may be null but n),
# and how a message says it.
_NUMBER = (_optional(is_number), "a number or null")
_INT = (_optional(is_integer), "an integer or null")
_FIELD_TYPES = {
    "f1": _NUMBER,
    "em": _NUMBER,
    "ttft_ms": _NUMBER,
    "answer_ms": _NUMBER,
    "n": (is_integer, "an integer"),
    "message_bytes": _INT,
    "mcnemar_p": _NUMBER,
    "wilcoxon_p": _NUMBER,
    "note": (lambda v: isinstance(v, str), "a string"),
    "f1_ci95": (
        _optional(lambda v: isinstance(v, list) and len(v) == 2 and all(map(is_number, v))),
        "[lo, hi] or null",
    ),
    "delta_vs_mismatched": (
        _optional(lambda v: isinstance(v, dict) and all(is_number(v.get(k)) for k in ("mean", "lo", "hi"))),
        '{"mean", "lo", "hi"} or null',
    ),
}


def with_significance(
    conditions: Sequence[ConditionResult], comparison: Mapping[str, Mapping[str, Any]]
) -> list[ConditionResult]:
    """Copies of `conditions` carrying the p-values of `significance.compare_to(...)`'s output; the
    reference (absent from `comparison`) is returned unchanged."""
    out = []
    for c in conditions:
        sig = comparison.get(c.name)
        out.append(
            c if sig is None else dataclasses.replace(c, mcnemar_p=sig["mcnemar_p"], wilcoxon_p=sig["wilcoxon_p"])
        )
    return out


def reference_condition(f1_by_condition: Mapping[str, float]) -> str:
    """The condition the p-values compare with: the best text condition by F1 (the paper's claim is
    that a latent message beats *any* text budget), or half_context when no text was sent."""
    text = [name for name in f1_by_condition if name.startswith("text_")]
    return max(text, key=lambda name: f1_by_condition[name]) if text else "half_context"


def _check_names(conditions: Sequence[ConditionResult]) -> None:
    names = [c.name for c in conditions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate condition names {duplicates}")


# ------------------------------------------------------------------------------------------- JSON


def write_results(workdir: str | os.PathLike, conditions: Sequence[ConditionResult], *, meta: dict[str, Any]) -> Path:
    """Write `workdir/results.json` and return its path.

    `meta` should name the models, dataset, machine and the reference condition of the p-values; "date"
    (UTC, ISO 8601), "command" and "machine" are filled in when absent so that no number is ever stored
    without its provenance. The file is written to a temporary name and renamed, so a crash never leaves
    a half-written results.json behind.
    """
    _check_names(conditions)
    meta = dict(meta)
    meta.setdefault("date", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    meta.setdefault("command", " ".join([Path(sys.executable).name, *sys.argv]))
    meta.setdefault("machine", f"{platform.platform()}, {os.cpu_count()} cores")
    data = {"conditions": {c.name: c.to_json() for c in conditions}, "meta": meta}
    path = Path(workdir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed results.json, checked: exactly "conditions" and "meta" at the top and every condition
    complete. Rebuild the objects with `ConditionResult.from_json(name, d)` or `conditions_of(...)`."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    fix = f"run the evaluation again on {path.parent} to rewrite it (its recorded answers are reused)"
    try:
        data = json.loads(path.read_text())
    except ValueError as e:  # not JSON (JSONDecodeError), or not UTF-8 text
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(data, dict) or sorted(data) != sorted(_RESULT_KEYS):
        keys = sorted(data) if isinstance(data, dict) else excerpt(data)
        raise DataError(f"{path}: expected top-level keys {list(_RESULT_KEYS)}, got {keys}; {fix}")
    for key in _RESULT_KEYS:
        if not isinstance(data[key], dict):
            raise DataError(f"{path}: {key!r} is {excerpt(data[key])}, expected a JSON object; {fix}")
    for name, cond in data["conditions"].items():
        try:
            ConditionResult.from_json(name, cond)  # validates the fields
        except DataError as e:  # from_json does not know the file: name it
            raise DataError(f"{path}: {e}; {fix}") from None
    return data


def conditions_of(results: Mapping[str, Any]) -> list[ConditionResult]:
    """The `ConditionResult`s of a `read_results(...)` dict, in file order."""
    return [ConditionResult.from_json(name, cond) for name, cond in results["conditions"].items()]


# --------------------------------------------------------------------------------------- markdown


def _num(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.1f}"


def _pval(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3g}"


def markdown_table(conditions: Sequence[ConditionResult], reference: str | None = None) -> str:
    """A markdown table of all conditions, in the given order. Numbers to 1 decimal, p-values to 3
    significant digits; the p columns are vs `reference`, whose own row reads "ref"."""
    _check_names(conditions)
    if reference is not None and reference not in {c.name for c in conditions}:
        raise ValueError(f"reference condition {reference!r} not among {[c.name for c in conditions]}")
    vs = f" vs {reference}" if reference else ""
    columns = [
        "condition", "F1", "F1 95% CI", "EM", "TTFT ms", "answer ms", "message bytes", "n",
        f"p (McNemar EM){vs}", f"p (Wilcoxon F1){vs}", "F1 - mismatched [95% CI]",
    ]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for c in conditions:
        is_ref = c.name == reference
        row = [
            c.name,
            _num(c.f1),
            "-" if c.f1_ci95 is None else f"[{c.f1_ci95[0]:.1f}, {c.f1_ci95[1]:.1f}]",
            _num(c.em),
            _num(c.ttft_ms),
            _num(c.answer_ms),
            "-" if c.message_bytes is None else f"{c.message_bytes:,}",
            str(c.n),
            "ref" if is_ref else _pval(c.mcnemar_p),
            "ref" if is_ref else _pval(c.wilcoxon_p),
            _delta(c.delta_vs_mismatched),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _delta(d: Mapping[str, float] | None) -> str:
    return "-" if d is None else f"{d['mean']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]"


# ------------------------------------------------------------------------------------------- plot


def _is_latent(name: str) -> bool:
    return name.lower().startswith("lcf")


def _is_kv(name: str) -> bool:
    return name.startswith("kv_share")


# Where a label may go relative to its point, in points: right, above, left, below, then ever
# farther out in 16 directions (with a leader line). The first place whose box overlaps no other
# label, no point and stays inside the axes is taken.
_LABEL_OFFSETS = [(6, 4), (6, -12), (-6, 4), (-6, -12), (0, 10), (0, -18)] + [
    (round(r * math.cos(a)), round(r * math.sin(a)))
    for r in (22, 34, 48, 64, 82, 104, 130)
    for a in [2 * math.pi * k / 16 for k in range(16)]
]


def _label_groups(ax, points: Sequence[ConditionResult], close_px: float = 4.0) -> list[tuple[tuple, str]]:
    """(data position, label) per group of points drawn within `close_px` pixels of each other:
    one label "a, b, c" for points that coincide (text_150 and text_200 often do)."""
    groups: list[list[ConditionResult]] = []
    where = {c.name: ax.transData.transform((c.ttft_ms, c.f1)) for c in points}
    for c in points:
        for g in groups:
            if any(abs(where[c.name] - where[o.name]).max() <= close_px for o in g):
                g.append(c)
                break
        else:
            groups.append([c])
    return [((g[0].ttft_ms, g[0].f1), ", ".join(c.name for c in g)) for g in groups]


def place_labels(ax, points: Sequence[ConditionResult], fontsize: int = 8) -> list:
    """Annotate every point (grouped where they coincide) so that no two labels overlap, nor a
    label and a point: each label takes the first free place of `_LABEL_OFFSETS`. Returns the
    annotations (their boxes are checked in tests)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()  # final axes limits and layout before measuring anything
    fig.set_layout_engine("none")  # and frozen: a later layout pass would move points under fixed-offset labels
    from matplotlib.text import Text  # noqa: PLC0415
    from matplotlib.transforms import Bbox  # noqa: PLC0415

    half = 9 * fig.dpi / 100  # a marker's half size in pixels (the LCF star is the largest)
    marks = [
        Bbox.from_extents(x - half, y - half, x + half, y + half)
        for x, y in (ax.transData.transform((c.ttft_ms, c.f1)) for c in points)
    ]
    taken: list = []
    frame = ax.get_window_extent(renderer)
    out = []
    for xy, label in sorted(_label_groups(ax, points), key=lambda g: (-g[0][1], g[0][0])):
        for dx, dy in _LABEL_OFFSETS:
            far = (dx, dy) not in _LABEL_OFFSETS[:4]  # a label away from its point gets a leader line
            note = ax.annotate(
                label, xy, textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                ha="left" if dx > 0 else "right" if dx < 0 else "center", va="bottom" if dy >= 0 else "top",
                arrowprops=dict(arrowstyle="-", color="0.6", lw=0.6) if far else None,
            )  # fmt: skip
            # The text's own box (an annotation's extent includes its leader line, which touches its point).
            note.update_positions(renderer)
            box = Text.get_window_extent(note, renderer).expanded(1.05, 1.1)
            clear = not any(box.overlaps(t) for t in taken) and not any(box.overlaps(m) for m in marks)
            if clear and frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1):
                taken.append(box)
                out.append(note)
                break
            note.remove()
        else:  # nowhere free: keep the first place (rare: very crowded plots)
            dx, dy = _LABEL_OFFSETS[0]
            note = ax.annotate(label, xy, textcoords="offset points", xytext=(dx, dy), fontsize=fontsize)
            note.update_positions(renderer)
            taken.append(Text.get_window_extent(note, renderer))
            out.append(note)
    return out


def plot_f1_vs_ttft(conditions: Sequence[ConditionResult], path: str | os.PathLike, *, title: str) -> Path:
    """Save a PNG scatter of F1 against time to first token, the paper's headline trade-off.

    Text-to-text conditions (text_50 ... text_200) are joined in budget order, so the curve shows what
    more message tokens buy; LCF conditions (names starting with "lcf") and KV-cache messages
    ("kv_share...") stand out in their own colours and markers. Labels never overlap (`place_labels`:
    points that coincide share one label). The x axis is logarithmic when the times span more than
    10x. Conditions without a measured TTFT cannot be placed and are left out.
    """
    # Matplotlib is imported here, through its object API with the Agg canvas (no pyplot, no global
    # backend switch), so importing lcf_jax.eval stays light and plotting works without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.ticker import FormatStrFormatter, LogLocator  # noqa: PLC0415

    points = [c for c in conditions if c.ttft_ms is not None and not math.isnan(c.ttft_ms) and c.ttft_ms > 0]
    if not points:
        raise ValueError("no condition has a positive ttft_ms, nothing to plot")

    fig = Figure(figsize=(7, 4.5) if len(points) <= 12 else (9, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    text = sorted(
        (c for c in points if _TEXT_CONDITION.match(c.name)), key=lambda c: int(_TEXT_CONDITION.match(c.name)[1])
    )
    if text:
        ax.plot([c.ttft_ms for c in text], [c.f1 for c in text], "o-", color="tab:blue", label="text-to-text")
    latent = [c for c in points if _is_latent(c.name)]
    if latent:
        ax.scatter(
            [c.ttft_ms for c in latent],
            [c.f1 for c in latent],
            marker="*",
            s=220,
            color="tab:red",
            label="LCF",
            zorder=3,
        )
    kv = [c for c in points if _is_kv(c.name)]
    if kv:
        ax.scatter(
            [c.ttft_ms for c in kv], [c.f1 for c in kv], marker="D", color="tab:green", label="KV cache", zorder=3
        )
    other = [c for c in points if c not in text and c not in latent and c not in kv]
    if other:
        ax.scatter([c.ttft_ms for c in other], [c.f1 for c in other], marker="s", color="tab:gray", label="baselines")

    with_ci = [c for c in points if c.f1_ci95 is not None]
    if with_ci:  # each point's 95% bootstrap interval on F1, as a thin vertical bar
        ax.errorbar(
            [c.ttft_ms for c in with_ci],
            [c.f1 for c in with_ci],
            yerr=[[c.f1 - c.f1_ci95[0] for c in with_ci], [c.f1_ci95[1] - c.f1 for c in with_ci]],
            fmt="none", ecolor="black", alpha=0.35, elinewidth=1, capsize=2, zorder=2,
        )  # fmt: skip
    times = [c.ttft_ms for c in points]
    if max(times) > 10 * min(times):
        ax.set_xscale("log")
        # Plain milliseconds ("40", "400") read better than matplotlib's default "4 x 10^1" on log axes.
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("time to first token (ms, median per question)")
    ax.set_ylabel("F1")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.margins(x=0.12, y=0.1)  # room for labels at the edges
    place_labels(ax, points)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=150)
    return path
