"""lcf_jax.eval: SQuAD metrics, answer cleaning, multiple choice from logits, paired significance tests
and the report (results.json, markdown table, plot), checked against hand-computed values."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

from lcf_jax.eval import (
    ConditionResult,
    choice_letters,
    clean_prediction,
    compare_to,
    conditions_of,
    exact_match,
    letter_token_ids,
    markdown_table,
    mcnemar_exact,
    mcq_accuracy,
    mcq_predictions,
    normalize_answer,
    plot_f1_vs_ttft,
    read_results,
    score,
    token_f1,
    wilcoxon_signed_rank,
    with_significance,
    write_results,
)

# ------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Beatles", "beatles"),
        ("beatles", "beatles"),
        ("theater", "theater"),  # articles only as whole words
        ("Anne and the other", "anne and other"),
        ("an apple a day", "apple day"),
        ("  Hello,   World!\n\t", "hello world"),
        ("A.B.C.", "abc"),  # punctuation goes first, so the "a" is glued into a word and kept
        ("the-end", "theend"),
        ("3.14", "314"),
        ("1,000 km", "1000 km"),
        ("", ""),
        ("The", ""),
        ("  ", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match():
    assert exact_match("The Beatles", ["beatles"]) == 1.0
    assert exact_match("the beatles.", "Beatles") == 1.0  # a bare string is one answer
    assert exact_match("Beatles band", ["beatles"]) == 0.0
    assert exact_match("NYC", ["New York City", "nyc"]) == 1.0  # max over accepted answers
    assert exact_match("the", ["a"]) == 1.0  # both normalise to ""
    with pytest.raises(ValueError, match="at least one"):
        exact_match("x", [])


def test_token_f1_hand_values():
    # pred tokens [city, of, paris], gold [paris]: P = 1/3, R = 1 -> 2 * (1/3) / (4/3) = 0.5
    assert token_f1("the city of Paris", ["Paris"]) == pytest.approx(0.5)
    # vs "new york": P = 2/3, R = 1 -> 0.8; vs "nyc": 0; the max is taken
    assert token_f1("New York City", ["NYC", "New York"]) == pytest.approx(0.8)
    # overlap counts multiplicity (Counter &): common = 1, P = 1/2, R = 1 -> 2/3
    assert token_f1("paris paris", "Paris") == pytest.approx(2 / 3)
    # P = 1/2, R = 1/3 -> 2 * (1/6) / (5/6) = 0.4
    assert token_f1("red apple", "big red car") == pytest.approx(0.4)
    assert token_f1("The Beatles", "beatles") == 1.0
    assert token_f1("London", "Paris") == 0.0


def test_token_f1_empty_follows_squad_v1():
    assert token_f1("", ["Paris"]) == 0.0  # empty prediction
    assert token_f1("Paris", ["the"]) == 0.0  # gold empty after normalisation
    assert token_f1("a", ["the"]) == 0.0  # both empty: v1.1 returns 0 (no shared token) while EM is 1
    assert token_f1("", ["the", "Paris"]) == 0.0


def test_score():
    out = score(["the city of Paris", "London", "Beatles"], [["Paris"], "Paris", ["The Beatles", "Fab Four"]])
    np.testing.assert_allclose(out["em"], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(out["f1"], [0.5, 0.0, 1.0])
    assert out["em_mean"] == pytest.approx(100 / 3)
    assert out["f1_mean"] == pytest.approx(50.0)
    assert out["n"] == 3
    assert score(['Answer: "Paris".'], ["Paris"], clean=True)["em_mean"] == 100.0
    assert score(['Answer: "Paris".'], ["Paris"])["em_mean"] == 0.0  # "answer paris" != "paris"
    with pytest.raises(ValueError, match="pair up"):
        score(["a"], [])
    with pytest.raises(ValueError, match="empty"):
        score([], [])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Paris", "Paris"),
        ('Answer: "Paris".', "Paris"),
        ("The answer is Paris.", "Paris"),
        ("the ANSWER is: Paris", "Paris"),
        ("answer:Paris", "Paris"),
        ("\n  Paris  \nBecause the question asks for a capital.", "Paris"),
        ("'Eiffel Tower'", "Eiffel Tower"),
        ("“Paris”.", "Paris"),
        ('"Paris."', "Paris"),
        ("U.S.", "U.S"),
        ("Wait...", "Wait..."),
        ('"Paris', '"Paris'),  # unmatched quote kept
        ("Answerable question", "Answerable question"),
        ("", ""),
    ],
)
def test_clean_prediction(raw, expected):
    assert clean_prediction(raw) == expected


# ---------------------------------------------------------------------------------- multiple choice


def test_multiple_choice():
    assert choice_letters(4) == ["A", "B", "C", "D"]
    assert len(choice_letters(10)) == 10
    with pytest.raises(ValueError):
        choice_letters(0)
    pred = mcq_predictions(np.array([[0.1, 2.0, -1.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]]))
    np.testing.assert_array_equal(pred, [1, 0, 3])
    assert mcq_accuracy(pred, [1, 2, 3]) == pytest.approx(200 / 3)
    assert mcq_accuracy(pred, ["B", "A", "d"]) == 100.0
    with pytest.raises(ValueError, match=r"\[B, n_options\]"):
        mcq_predictions(np.zeros(4))
    with pytest.raises(ValueError, match="gold"):
        mcq_accuracy(pred, [1, 2])


def _tiny_tokenizer(vocab_tokens):
    """A byte-level WordLevel tokenizer (GPT-2-style "Ġ" marks a leading space), as transformers wraps it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(vocab_tokens)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_letter_token_ids_tiny_tokenizer():
    tok = _tiny_tokenizer(["A", "B", "C", "ĠA", "ĠB", "Ġis"])
    ids = letter_token_ids(tok, 3)
    # " A" and " B" are single tokens and win; " C" is not in the vocabulary, so the bare "C" is used
    assert ids == [tok.convert_tokens_to_ids(t) for t in ("ĠA", "ĠB", "C")]
    with pytest.raises(ValueError, match="'D'"):  # neither " D" nor "D": the <unk> id must not be taken
        letter_token_ids(tok, 4)


@pytest.mark.real_model
def test_letter_token_ids_smollm2():
    """The real SmolLM2 vocabulary, from the tokenizer.json that `load_model("smollm2-135m")` caches (opening
    the GGUF itself costs ~7 s); skipped when that cache has not been built yet."""
    from transformers import PreTrainedTokenizerFast

    from lcf_jax.loading.gguf import tokenizer_cache_dir

    cached = sorted(tokenizer_cache_dir().glob("SmolLM2-135M-Instruct*/tokenizer.json"))
    if not cached:
        pytest.skip("no cached SmolLM2 tokenizer (run lcf_jax.load_model('smollm2-135m') once)")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(cached[-1]))
    ids = letter_token_ids(tok, 4)
    prompt = tok.encode("The correct answer is", add_special_tokens=False)
    for letter, i in zip("ABCD", ids):
        assert tok.encode(f"The correct answer is {letter}", add_special_tokens=False) == [*prompt, i]


# ------------------------------------------------------------------------------------- significance


def _pairs(b, c, both_right=3, both_wrong=4):
    """Paired 0/1 outcomes with b (a right, b wrong) and c (a wrong, b right) discordant questions."""
    a = [1] * b + [0] * c + [1] * both_right + [0] * both_wrong
    bb = [0] * b + [1] * c + [1] * both_right + [0] * both_wrong
    return np.array(a, dtype=np.float64), np.array(bb, dtype=bool)


def test_mcnemar_exact_hand_values():
    # n = 10 discordant: P(X <= 2) = (1 + 10 + 45) / 1024 = 0.0546875, two-sided doubles it
    assert mcnemar_exact(*_pairs(8, 2)) == (8, 2, pytest.approx(0.109375))
    assert mcnemar_exact(*_pairs(8, 2), alternative="greater")[2] == pytest.approx(56 / 1024)
    assert mcnemar_exact(*_pairs(8, 2), alternative="less")[2] == pytest.approx(1013 / 1024)  # 1 - P(X >= 9)
    assert mcnemar_exact(*_pairs(2, 8), alternative="less")[2] == pytest.approx(56 / 1024)
    assert mcnemar_exact(*_pairs(0, 0)) == (0, 0, 1.0)
    assert mcnemar_exact(*_pairs(0, 0), alternative="greater") == (0, 0, 1.0)
    assert mcnemar_exact(*_pairs(3, 3))[2] == 1.0  # 2 * 42/64 capped at 1
    assert mcnemar_exact(*_pairs(0, 5))[2] == pytest.approx(2 / 32)
    assert mcnemar_exact(*_pairs(0, 5), alternative="greater")[2] == 1.0
    assert mcnemar_exact(*_pairs(0, 5), alternative="less")[2] == pytest.approx(1 / 32)


def test_mcnemar_matches_scipy_binomtest_at_scale():
    from scipy.stats import binomtest

    for b, c in [(130, 100), (2000, 1850), (40, 0)]:
        for alt in ("two-sided", "greater", "less"):
            p = mcnemar_exact(*_pairs(b, c), alternative=alt)[2]
            assert p == pytest.approx(binomtest(b, b + c, 0.5, alternative=alt).pvalue, rel=1e-9)


def test_mcnemar_rejects_bad_input():
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5, 1.0], [1, 0])
    with pytest.raises(ValueError, match="same length"):
        mcnemar_exact([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="alternative"):
        mcnemar_exact([1], [0], alternative="bigger")


def test_wilcoxon_hand_values():
    y = np.zeros(5)
    # all 5 differences positive: R- = 0, and P(R- <= 0) = 1/32 under H0 (one sign pattern of 2^5)
    assert wilcoxon_signed_rank(np.array([1, 2, 3, 4, 5]) / 10, y) == (0.0, pytest.approx(2 / 32))
    assert wilcoxon_signed_rank(np.array([1, 2, 3, 4, 5]) / 10, y, alternative="greater")[1] == pytest.approx(1 / 32)
    # d = [-1, 2, 3, 4, 5]: R- = 1; subsets of ranks with sum <= 1 are {} and {1}: p = 2 * 2/32
    assert wilcoxon_signed_rank([-0.1, 0.2, 0.3, 0.4, 0.5], y) == (1.0, pytest.approx(4 / 32))
    # a zero difference is dropped (zero_method="wilcox"), leaving the case above
    assert wilcoxon_signed_rank([0.7, -0.1, 0.2, 0.3, 0.4, 0.5], [0.7, 0, 0, 0, 0, 0])[1] == pytest.approx(4 / 32)


def test_wilcoxon_all_zero_differences():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wilcoxon_signed_rank([0.5, 1.0, 0.0], [0.5, 1.0, 0.0]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="paired"):
        wilcoxon_signed_rank([1.0, 2.0], [1.0])


def test_compare_to():
    rng = np.random.default_rng(0)
    ref_em = rng.integers(0, 2, 60).astype(float)
    better_em = np.maximum(ref_em, rng.integers(0, 2, 60))  # only ever fixes reference mistakes
    conditions = {
        "full": {"em": ref_em, "f1": ref_em * 0.9},
        "lcfx": {"em": better_em, "f1": better_em * 0.9},
        "same": {"em": ref_em.copy(), "f1": ref_em * 0.9},
        "mcq": {"em": ref_em.copy()},  # no F1 (multiple choice)
    }
    out = compare_to("full", conditions, alternative="greater")
    assert set(out) == {"lcfx", "same", "mcq"}
    assert set(out["lcfx"]) == {"mcnemar_p", "wilcoxon_p", "b", "c"}
    b = int(np.sum((better_em == 1) & (ref_em == 0)))
    assert (out["lcfx"]["b"], out["lcfx"]["c"]) == (b, 0)
    assert out["lcfx"]["mcnemar_p"] == pytest.approx(0.5**b)
    assert out["lcfx"]["wilcoxon_p"] < 1e-3
    assert out["same"] == {"mcnemar_p": 1.0, "wilcoxon_p": 1.0, "b": 0, "c": 0}
    assert out["mcq"]["wilcoxon_p"] is None
    with pytest.raises(ValueError, match="reference"):
        compare_to("text_50", conditions)
    with pytest.raises(ValueError, match="same questions"):
        compare_to("full", {"full": conditions["full"], "short": {"em": ref_em[:10], "f1": ref_em[:10]}})


# ------------------------------------------------------------------------------------------- report


def _conditions():
    return [
        ConditionResult("question_only", 7.48, 4.1, 30.0, 60.0, 200),
        ConditionResult("full", 29.98, 20.0, 45.0, 90.0, 200),
        ConditionResult("text_200", 32.66, 20.5, 410.0, 470.0, 200, message_bytes=800),
        ConditionResult("text_50", 30.81, 19.0, 250.0, 300.0, 200, message_bytes=200),
        ConditionResult("lcfx", 35.13, 25.28, 48.0, 94.0, 200, message_bytes=1_234_567, note="9 layers"),
    ]


def test_plot_labels_never_overlap_on_a_crowded_plot():
    """The demo's crowding: text_100/150/200 on one point, the latent controls next to each other,
    KV rows near the receiver rows. Labels must not overlap each other or any point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    from lcf_jax.eval.report import place_labels

    rows = [("question_only", 0.7, 214), ("half_context", 1.2, 402), ("full_context", 57.3, 563),
            ("full_context_sharer_first", 52.6, 560), ("text_50", 30.0, 3770), ("text_100", 42.1, 5725),
            ("text_150", 42.5, 5799), ("text_200", 42.5, 5749), ("lcfx", 4.6, 658), ("mismatched_message", 5.1, 658),
            ("empty_message", 2.2, 437), ("receiver_only", 5.6, 406), ("kv_share", 52.6, 700), ("kv_share_8", 8.0, 520),
            ("kv_share_16", 37.0, 540), ("kv_share_32", 54.0, 560), ("kv_share_mismatched", 1.6, 560)]  # fmt: skip
    points = [ConditionResult(n, f1, 0.0, t, t, 300) for n, f1, t in rows]
    fig = Figure(figsize=(9, 6), layout="constrained")  # plot_f1_vs_ttft's size for this many points
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter([p.ttft_ms for p in points], [p.f1 for p in points])
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.1)
    notes = place_labels(ax, points)
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    boxes = [Text.get_window_extent(n, renderer) for n in notes]  # the text, not its leader line
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1 :]), notes[i].get_text()
    labels = " ".join(n.get_text() for n in notes)
    assert all(name in labels for name, _, _ in rows)  # every condition is named (some share a label)


def test_bootstrap_intervals_cover_the_mean_and_pair_the_questions():
    from lcf_jax.eval.significance import bootstrap_ci, paired_difference

    rng = np.random.default_rng(0)
    values = rng.uniform(0, 100, 300)
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high and bootstrap_ci(values) == (low, high)  # seeded: reproducible
    # The normal approximation's half-width, 1.96 sd / sqrt(n), within 10%.
    assert abs((high - low) / 2 - 1.96 * values.std() / np.sqrt(300)) < 0.1 * (high - low) / 2
    assert bootstrap_ci(values[:30])[1] - bootstrap_ci(values[:30])[0] > high - low  # fewer questions: wider
    # Paired: a constant +5 on every question is exactly +5, however noisy the questions are.
    assert paired_difference(values + 5, values) == {"mean": 5.0, "lo": 5.0, "hi": 5.0}
    noisy = paired_difference(values + rng.normal(2, 1, 300), values)
    assert 1.5 < noisy["lo"] < noisy["mean"] < noisy["hi"] < 2.5
    with pytest.raises(ValueError, match="same questions"):
        paired_difference(values, values[:10])


def test_results_json_round_trip(tmp_path):
    sig = {"lcfx": {"mcnemar_p": 0.000123456, "wilcoxon_p": 0.0456, "b": 30, "c": 9}}
    conditions = with_significance(_conditions(), sig)
    conditions[-1] = dataclasses.replace(
        conditions[-1], f1_ci95=(40.5, 52.25), delta_vs_mismatched={"mean": 3.5, "lo": -1.0, "hi": 8.0}
    )
    meta = {"receiver": "smollm2-135m", "dataset": "hotpotqa-bridge", "reference": "full"}
    path = write_results(tmp_path / "run", conditions, meta=meta)
    assert path == tmp_path / "run" / "results.json"
    raw = json.loads(path.read_text())
    assert set(raw) == {"conditions", "meta"}
    for name, cond in raw["conditions"].items():
        assert {"f1", "em", "ttft_ms", "answer_ms", "n", "message_bytes"} <= set(cond), name
    assert raw["meta"]["reference"] == "full" and {"date", "command", "machine"} <= set(raw["meta"])
    data = read_results(path)
    assert data == raw
    assert conditions_of(data) == conditions
    assert conditions_of(read_results(tmp_path / "run"))[-1].mcnemar_p == 0.000123456


def test_results_json_plain_types(tmp_path):
    c = ConditionResult("x", np.float64(1.5), np.float32(2.0), float("nan"), None, np.int64(3), np.int64(10))
    data = read_results(write_results(tmp_path, [c], meta={}))["conditions"]["x"]
    assert data["ttft_ms"] is None and data["n"] == 3 and type(data["n"]) is int
    with pytest.raises(ValueError, match="duplicate"):
        write_results(tmp_path, [c, c], meta={})
    (tmp_path / "bad.json").write_text(json.dumps({"conditions": {}, "meta": {}, "extra": 1}))
    with pytest.raises(ValueError, match="top-level"):
        read_results(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="missing fields"):
        ConditionResult.from_json("x", {"f1": 1.0})


def test_markdown_table():
    conditions = with_significance(_conditions(), {"lcfx": {"mcnemar_p": 0.000123456, "wilcoxon_p": 0.5}})
    conditions = [
        dataclasses.replace(c, f1_ci95=(30.25, 40.0), delta_vs_mismatched={"mean": 3.5, "lo": -1.0, "hi": 8.04})
        if c.name == "lcfx"
        else c
        for c in conditions
    ]
    table = markdown_table(conditions, reference="full")
    lines = table.splitlines()
    assert lines[0] == (
        "| condition | F1 | F1 95% CI | EM | TTFT ms | answer ms | message bytes | n | p (McNemar EM) vs full | "
        "p (Wilcoxon F1) vs full | F1 - mismatched [95% CI] |"
    )
    assert len(lines) == 2 + len(conditions)
    for c in conditions:
        assert f"| {c.name} |" in table
    assert (
        "| lcfx | 35.1 | [30.2, 40.0] | 25.3 | 48.0 | 94.0 | 1,234,567 | 200 | 0.000123 | 0.5 | +3.5 [-1.0, +8.0] |"
        in lines
    )
    assert "| full | 30.0 | - | 20.0 | 45.0 | 90.0 | - | 200 | ref | ref | - |" in lines
    with pytest.raises(ValueError, match="reference"):
        markdown_table(conditions, reference="nope")


def test_plot_f1_vs_ttft(tmp_path):
    path = plot_f1_vs_ttft(_conditions(), tmp_path / "plots" / "f1_ttft.png", title="HotpotQA bridge")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with pytest.raises(ValueError, match="ttft"):
        plot_f1_vs_ttft([ConditionResult("mmlu", 30.0, 30.0, None, None, 10)], tmp_path / "x.png", title="")
