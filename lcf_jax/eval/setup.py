"""What an evaluation runs (`Setup`) and the conditions it compares (`Condition`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from lcf_jax.adapters import Adapter
from lcf_jax.errors import ConfigError
from lcf_jax.eval.batching import default_budget
from lcf_jax.eval.condition import Condition, kv_conditions, text_condition  # noqa: F401
from lcf_jax.models.model import Model
from lcf_jax.progress import DEFAULT_EVERY, Progress

RECEIVER_ALONE = ("question_only", "half_context", "full_context")
SHARER_FIRST = "full_context_sharer_first"
LATENT = ("lcfx", "mismatched_message", "empty_message", "receiver_only")


@dataclasses.dataclass
class Setup:
    """What an evaluation runs: the two models, the trained LCF-X adapter (optional: without it the
    latent conditions are skipped) and the receiver-only control adapter (optional)."""

    sharer: Model
    receiver: Model
    adapter: Adapter | None = None
    control: Adapter | None = None
    budgets: tuple[int, ...] = (50, 100, 150, 200)
    max_answer_tokens: int = 16
    sharer_sees_question: bool = False  # the same for the text message and the latent one
    batch_size: int = 32  # the most rows in a batch
    # The most cache entries in a batch (rows x its longest row); None: `batching.default_budget`.
    batch_tokens: int | None = None
    # Prompts longer than this are prefilled this many tokens at a time (bounds attention scores).
    prefill_chunk: int = 512
    receiver_alone: tuple[str, ...] = RECEIVER_ALONE  # which of them to run (half_context always runs)
    progress: str = "auto"  # "auto" (a bar on a terminal, log lines otherwise), "bar", "lines" or "off"
    progress_every: float = DEFAULT_EVERY  # seconds between progress lines
    # KV-message conditions (`eval/condition.py`); None: the standard ones when the sharer and the
    # receiver are one model (`kv_conditions()`) or a translator joins them, none otherwise. A KV
    # message is training-free only between one model and itself.
    kv: tuple[Condition, ...] | None = None
    # A `lcf_jax.messages.translate.KVTranslator` from the sharer to the receiver: KV rows between
    # two models (each row sends every layer: the translator reads them).
    kv_translator: Any = None
    kv_calibration: int = 8  # questions whose attention ranks the layers (KVComm), when a row sends fewer
    # The layer scores those rows pick from (`[L]`, higher first); None: ranked on the first
    # `kv_calibration` questions of the evaluation (`kv_share.layer_ranking`), then kept here.
    kv_layer_scores: Any = None

    def kv_rows(self) -> tuple[Condition, ...]:
        """The KV-message conditions this setup runs."""
        same = self.sharer is self.receiver
        if self.kv is None:
            return kv_conditions() if same or self.kv_translator is not None else ()
        if self.kv and not same and self.kv_translator is None:
            raise ConfigError(
                "KV-message conditions need the sharer and the receiver to be one model (its cache "
                "entries are only valid for itself) or a KV translator between them (kv_translator=; "
                "`lcf train --config configs/kv_translator.py` trains one); pass the same Model as both, or kv=()"
            )
        partial = [c.name for c in self.kv if c.layer_fraction != 1.0]
        if partial and not same:
            raise ConfigError(f"{partial} send a fraction of the layers; through a translator every row sends them all")
        return tuple(self.kv)

    def token_budget(self) -> int:
        return self.batch_tokens or default_budget(self.sharer, self.receiver)

    def progress_bar(
        self, stage: str, total: int, *, unit: str = "questions", done: int = 0, enabled: bool = True
    ) -> Progress:
        mode = self.progress if enabled else "off"
        return Progress(stage, total, unit=unit, mode=mode, every=self.progress_every, done=done)

    def conditions(self) -> list[str]:
        alone = [n for n in RECEIVER_ALONE if n in self.receiver_alone or n == "half_context"]
        if self.kv_rows():  # the text reference of the KV rows: the sharer's paragraphs where they land
            alone.append(SHARER_FIRST)
        names = [*alone, *(text_condition(b) for b in self.budgets)]
        if self.adapter is not None:
            names += ["lcfx", "mismatched_message", "empty_message"]
        if self.control is not None:
            names.append("receiver_only")
        return names + [c.name for c in self.kv_rows()]
