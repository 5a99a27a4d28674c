"""Evaluation: answer metrics (SQuAD EM/F1, multiple choice from logits), paired significance tests
and the report (results.json, a markdown table, the F1-vs-TTFT plot).

Importing this package is cheap: scipy.stats and matplotlib are imported only by the functions that
need them.
"""

from __future__ import annotations

from lcf_jax.eval.metrics import (
    choice_letters,
    clean_prediction,
    exact_match,
    letter_token_ids,
    mcq_accuracy,
    mcq_predictions,
    normalize_answer,
    score,
    token_f1,
)
from lcf_jax.eval.report import (
    ConditionResult,
    conditions_of,
    markdown_table,
    plot_f1_vs_ttft,
    read_results,
    with_significance,
    write_results,
)
from lcf_jax.eval.significance import compare_to, mcnemar_exact, wilcoxon_signed_rank

__all__ = [
    "ConditionResult",
    "choice_letters",
    "clean_prediction",
    "compare_to",
    "conditions_of",
    "exact_match",
    "letter_token_ids",
    "markdown_table",
    "mcnemar_exact",
    "mcq_accuracy",
    "mcq_predictions",
    "normalize_answer",
    "plot_f1_vs_ttft",
    "read_results",
    "score",
    "token_f1",
    "wilcoxon_signed_rank",
    "with_significance",
    "write_results",
]
