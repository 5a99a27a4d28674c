"""`Condition`: one row of an evaluation's results, described by what the receiver gets rather than
by a name to parse. The receiver-alone, text and LCF-X rows are fixed sets; the KV-message rows
are built here (`kv_conditions`), so a user or a benchmark can add others (another policy, entry
count or layer fraction) without touching the evaluation."""

from __future__ import annotations

import dataclasses

from lcf_jax.errors import ConfigError
from lcf_jax.messages.kv import DEFAULT_POLICY, DEFAULT_UNIT, POLICIES


@dataclasses.dataclass(frozen=True)
class Condition:
    """kind: "receiver" (the receiver alone), "text" (the sharer's text message, `budget` tokens),
    "lcfx" (a learned message) or "kv" (selected entries of the sharer's cache: `entries` per row
    and layer, None for all, or a fraction of the context; chosen by `policy` in units of `unit`
    ("span": the best paragraphs whole, "token": entry by entry); from the best `layer_fraction`
    of the layers; `mismatched`: another question's message).

    Policy "query" sends the question to the sharer first (a round trip; the sharer's time in the
    latency rows includes reading it), whatever `Setup.sharer_sees_question` says for the text
    and LCF-X messages."""

    name: str
    kind: str
    budget: int | None = None
    entries: int | float | None = None
    policy: str = "all"
    layer_fraction: float = 1.0
    mismatched: bool = False
    unit: str = DEFAULT_UNIT

    def __post_init__(self):
        if self.kind not in ("receiver", "text", "lcfx", "kv"):
            raise ConfigError(f"condition {self.name!r}: kind must be receiver, text, lcfx or kv, got {self.kind!r}")
        if self.kind == "kv":
            if self.policy not in POLICIES:
                raise ConfigError(f"condition {self.name!r}: policy must be one of {', '.join(POLICIES)}")
            if (self.policy == "all") != (self.entries is None):
                raise ConfigError(f"condition {self.name!r}: policy 'all' and only it sends every entry (entries=None)")
            if self.unit not in ("token", "span"):
                raise ConfigError(f"condition {self.name!r}: unit must be 'token' or 'span'")
            if not 0.0 < self.layer_fraction <= 1.0:
                raise ConfigError(f"condition {self.name!r}: layer_fraction must lie in (0, 1]")


def text_condition(budget: int) -> str:
    return f"text_{budget}"


def kv_condition(
    entries: int | float | None,
    *,
    policy: str = DEFAULT_POLICY,
    unit: str = DEFAULT_UNIT,
    layer_fraction: float = 1.0,
    mismatched: bool = False,
) -> Condition:
    """A KV-message condition named by what it sends: kv_share (every entry), kv_share_16 (16
    entries per row and layer, the default policy and unit), kv_share_16_attention_token (another
    policy or unit), kv_share_16_L50 (from half the layers), ..._mismatched."""
    name = "kv_share" if entries is None else f"kv_share_{entries:g}"
    if entries is not None and (policy, unit) != (DEFAULT_POLICY, DEFAULT_UNIT):
        name += f"_{policy}_{unit}"
    if layer_fraction < 1.0:
        name += f"_L{round(100 * layer_fraction)}"
    if mismatched:
        name += "_mismatched"
    return Condition(
        name, "kv", entries=entries, policy="all" if entries is None else policy, unit=unit,
        layer_fraction=layer_fraction, mismatched=mismatched,
    )  # fmt: skip


KV_ENTRIES = (8, 16, 32)
KV_MISMATCHED_ENTRIES = 32


def kv_conditions(
    policy: str = DEFAULT_POLICY, entries=KV_ENTRIES, mismatched=KV_MISMATCHED_ENTRIES, unit: str = DEFAULT_UNIT
) -> tuple[Condition, ...]:
    """The standard rows: kv_share (every entry: equals full_context_sharer_first up to rounding),
    kv_share_8/16/32 (`policy`, `unit`), and kv_share_mismatched (another question's kv_share_32
    message)."""
    rows = [kv_condition(None), *(kv_condition(m, policy=policy, unit=unit) for m in entries)]
    if mismatched:
        wrong = kv_condition(mismatched, policy=policy, unit=unit, mismatched=True)
        rows.append(dataclasses.replace(wrong, name="kv_share_mismatched"))
    return tuple(rows)
