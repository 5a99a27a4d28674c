"""The evaluation datasets: the split-context generator, the HotpotQA partition, the multiple-choice
layouts, and their TFDS builds (array_record, no TensorFlow) read back into plain records."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from lcf_jax.data import hotpot, split_qa
from lcf_jax.data.chat import DataError
from lcf_jax.data.mcq import ANSWER_CUE, LETTERS, MCQ, mcq_prompt, option_letters, read_mcq
from lcf_jax.data.tfds_builders import load_hotpot_qa_split, load_mcq, load_split_qa

# --- split_qa --------------------------------------------------------------------------------------

ORG = re.compile(r"\bthe ([A-Z][a-z]+ [A-Z][a-z]+)")


def _mentions(paragraphs, name):
    return [i for i, p in enumerate(paragraphs) if name.lower() in p.lower()]


# single_hop_types: the phrase of the rivals (about people) for each kind of answer
RIVAL_PHRASE = {
    "date": "retired on",
    "place": "was born in",
    "animal": "owns a",
    "person": "trained by",
    "number": "books",
}


@pytest.mark.parametrize("variant", split_qa.VARIANTS + split_qa.EXTRA_VARIANTS)
def test_split_qa_shape_gold_and_answer_placement(variant):
    kinds = set()
    for split, i in itertools.product(split_qa.SPLITS, range(40)):
        e = split_qa.generate_example(split, i, variant=variant)
        q = e["question"]
        assert len(q.sharer_context) == len(q.receiver_context) == 5 and e["variant"] == variant
        assert len(set(q.sharer_context + q.receiver_context)) == 10
        answer = q.answers[0]
        sharer_gold, receiver_gold = q.sharer_context[e["sharer_gold"]], q.receiver_context[e["receiver_gold"]]
        org = ORG.search(q.question).group(1)
        if variant.startswith("single_hop"):
            # the answer is the sharer's alone; each side has exactly one paragraph about the question's entity
            assert _mentions(q.sharer_context, answer) == [e["sharer_gold"]]
            assert _mentions(q.receiver_context, answer) == []
            assert _mentions(q.sharer_context, org) == [e["sharer_gold"]]
            assert _mentions(q.receiver_context, org) == [e["receiver_gold"]]
        else:
            # the sharer's gold names the bridge person, the receiver's gold says the answer about them
            assert _mentions(q.sharer_context, org) == [e["sharer_gold"]] and "director" in sharer_gold
            assert _mentions(q.receiver_context, org) == []
            person = " ".join(sharer_gold.split()[:2])
            assert _mentions(q.receiver_context, person) == [e["receiver_gold"]]
            assert _mentions(q.receiver_context, answer) == [e["receiver_gold"]]
            assert _mentions(q.sharer_context, answer) == []
        # distractors hold rival values of the answer's kind on both sides (not the only city in sight)
        rivals = [p for p in q.sharer_context + q.receiver_context if p not in (sharer_gold, receiver_gold)]
        if variant == "single_hop_types":
            relation = next(r for r, text in split_qa.SINGLE_HOP_TYPES.items() if text.format(o="")[:9] in q.question)
            kind = split_qa.TYPED_RELATIONS[relation][1]
            kinds.add(kind)
            assert sum(RIVAL_PHRASE[kind] in p for p in rivals) >= 3
        else:
            digits = any(c.isdigit() for c in answer)
            assert sum((any(c.isdigit() for c in p) if digits else ", " in p) for p in rivals) >= 3
        # short paragraphs: a question with one half fits a 135M model's budget
        assert all(len(p.split()) <= 16 for p in q.sharer_context + q.receiver_context)
        assert sum(len(p.split()) for p in q.receiver_context) + len(q.question.split()) <= 80
    if variant == "single_hop_types":  # the point of the variant: answers of every kind
        assert kinds == set(RIVAL_PHRASE)


def test_split_qa_is_deterministic_with_unique_ids():
    a = split_qa.generate_questions("train", 30, seed=3, variant="mixed")
    assert a == split_qa.generate_questions("train", 30, seed=3, variant="mixed")
    assert a[10:] == split_qa.generate_questions("train", 20, seed=3, variant="mixed", start=10)
    assert a != split_qa.generate_questions("train", 30, seed=4, variant="mixed")
    assert {e.id.rsplit("-", 1)[1] for e in a} == {"sh", "br"}  # the mix holds both variants, never the extra ones
    for i, q in enumerate(a):  # mixed interleaves the pure variants
        variant = "single_hop" if q.id.endswith("-sh") else "bridge"
        assert q == split_qa.generate_example("train", i, seed=3, variant=variant)["question"]
    # ids are unique over splits and variants (a mixed set reuses the ids of the pure questions it holds)
    ids = [
        q.id
        for split, variant in itertools.product(split_qa.SPLITS, split_qa.VARIANTS + split_qa.EXTRA_VARIANTS)
        for q in split_qa.generate_questions(split, 20, variant=variant)
    ]
    assert len(set(ids)) == len(ids)
    assert split_qa.full_context(a[0]) == split_qa.full_context(a[0])
    assert sorted(split_qa.full_context(a[0])) == sorted(a[0].sharer_context + a[0].receiver_context)
    with pytest.raises(ValueError, match="unknown split"):
        split_qa.generate_questions("dev", 1)
    with pytest.raises(ValueError, match="unknown variant"):
        split_qa.generate_questions("test", 1, variant="three_hop")


def _vocabulary() -> set[str]:
    words = {"The", "Where", "When", "Who", "Which", "What", "In"}
    words |= set(split_qa.ORG_KINDS) | set(split_qa.MONTHS)
    for city, country in split_qa.PLACES:
        words |= set(city.split()) | {country}
    return words


def test_split_qa_name_pools_are_disjoint_across_splits():
    heads = list(split_qa.NAME_SYLLABLES.values())
    assert all(not (a & b) for a, b in itertools.combinations(heads, 2))
    vocabulary, names = _vocabulary(), {}
    for split in split_qa.SPLITS:
        words = set()
        for q in split_qa.generate_questions(split, 150, variant="mixed"):
            text = " ".join((q.question, *q.sharer_context, *q.receiver_context))
            words |= set(re.findall(r"\b[A-Z][a-z]+\b", text)) - vocabulary
        assert words and all(split_qa.name_split(w) == split for w in words), split
        names[split] = words
    assert all(not (names[a] & names[b]) for a, b in itertools.combinations(split_qa.SPLITS, 2))


def test_split_qa_tfds_build_reads_back_the_generator(tmp_path):
    sizes = (6, 3, 4)
    for split, n in zip(split_qa.SPLITS, sizes):
        got = load_split_qa(split, variant="mixed", sizes=sizes, seed=1, data_dir=tmp_path)
        assert got == split_qa.generate_questions(split, n, seed=1, variant="mixed")
    assert load_split_qa("test", 2, variant="mixed", sizes=sizes, seed=1, data_dir=tmp_path) == got[:2]
    assert (tmp_path / "split_qa" / "mixed_6_3_4_seed1").is_dir()


# --- hotpot_qa_split -------------------------------------------------------------------------------


def _hotpot_row(qid, kind="bridge", paragraphs=10, gold=(2, 7)):
    context = [[f"Title {qid} {i}", [f" Sentence {i}a.", f" Sentence {i}b."]] for i in range(paragraphs)]
    facts = [[context[g][0], 0] for g in gold] + [[context[gold[0]][0], 1]]
    return {"_id": qid, "question": f"Question {qid}?", "answer": f"answer {qid}", "type": kind, "level": "hard",
            "supporting_facts": facts, "context": context}  # fmt: skip


def _write_hotpot(directory, name, rows):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(json.dumps(rows))


HOTPOT_ROWS = [
    _hotpot_row("b1"),
    _hotpot_row("b2", gold=(0, 9)),
    _hotpot_row("b3", gold=(4, 5)),
    _hotpot_row("c1", kind="comparison"),
    _hotpot_row("m1", paragraphs=9),  # malformed: 9 paragraphs
    _hotpot_row("m2", gold=(1, 2, 3)),  # malformed: 3 gold titles
]


def test_hotpot_partition_invariants_and_skips(tmp_path):
    _write_hotpot(tmp_path, "dev.json", HOTPOT_ROWS)
    examples, skipped = hotpot.split_questions(tmp_path / "dev.json", seed=0)
    assert skipped == {"comparison": 1, "malformed": 2}
    assert [e["question"].id for e in examples] == ["b1", "b2", "b3"]
    for e, row in zip(examples, HOTPOT_ROWS):
        q = e["question"]
        texts = [hotpot.paragraph_text(t, s) for t, s in row["context"]]
        gold = {texts[i] for i, (t, _) in enumerate(row["context"]) if t in {f[0] for f in row["supporting_facts"]}}
        assert len(q.sharer_context) == len(q.receiver_context) == 5
        assert sorted(q.sharer_context + q.receiver_context) == sorted(texts)  # disjoint, all 10
        assert [p in gold for p in q.sharer_context].count(True) == 1
        assert [p in gold for p in q.receiver_context].count(True) == 1
        assert q.sharer_context[e["sharer_gold"]] in gold and q.receiver_context[e["receiver_gold"]] in gold
        assert list(e["sharer_positions"]) == sorted(e["sharer_positions"])  # original order kept
        assert q.answers == (row["answer"],) and q.sharer_context[0].startswith(f"Title {q.id} ")
    assert texts[0] == "Title b3 0: Sentence 0a. Sentence 0b."
    assert hotpot.split_questions(tmp_path / "dev.json", seed=0)[0] == examples  # deterministic
    # the sharer's gold paragraph is drawn per question, not always the first gold one
    drawn = [hotpot.partition(_hotpot_row(f"q{i}"), seed=0)[0]["sharer_positions"] for i in range(40)]
    assert 5 < sum(2 in positions for positions in drawn) < 35


def test_hotpot_tfds_build_and_missing_files(tmp_path):
    manual, data = tmp_path / "manual", tmp_path / "data"
    with pytest.raises(FileNotFoundError, match="hotpot_dev_distractor_v1.json"):
        load_hotpot_qa_split("validation", manual, data)  # no manual directory at all
    _write_hotpot(manual, "hotpot_dev_distractor_v1.json", HOTPOT_ROWS)
    got = load_hotpot_qa_split("validation", manual, data)
    expected = [e["question"] for e in hotpot.split_questions(manual / "hotpot_dev_distractor_v1.json")[0]]
    assert got == expected
    with pytest.raises(FileNotFoundError, match=r"hotpot_train_v1\.1\.json.*Fix"):
        load_hotpot_qa_split("train", manual, data)  # the `full` config also needs the train file
    with pytest.raises(FileNotFoundError, match="no HotpotQA file"):
        hotpot.read_hotpot(manual / "hotpot_train_v1.1.json")


# --- mcq -------------------------------------------------------------------------------------------

MMLU = {"question": "2 + 2 = ?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1}
ARC = {"id": "arc-1", "question": "Which is a gas?", "answerKey": "2",
       "choices": {"text": ["ice", "steam", "wood"], "label": ["1", "2", "3"]}}  # fmt: skip
OBQA = {"id": "obqa-1", "question_stem": "The sun is a", "choices": {"text": ["star", "planet", "moon", "comet"],
        "label": ["A", "B", "C", "D"]}, "answerKey": "A"}  # fmt: skip
AI2 = {"id": "arc-2", "question": {"stem": "Water boils at", "choices": [{"text": "50 C", "label": "A"},
       {"text": "100 C", "label": "B"}]}, "answerKey": "B"}  # fmt: skip


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mcq_layouts_through_tfds(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    _jsonl(manual / "mmlu_redux.jsonl", [MMLU, {**MMLU, "answer": 3}])
    _jsonl(manual / "arc_challenge.jsonl", [ARC, AI2])
    _jsonl(manual / "openbookqa.jsonl", [OBQA])
    got = load_mcq(manual, tmp_path / "data")
    assert got == [
        MCQ("arc-1", "Which is a gas?", ("ice", "steam", "wood"), 1, "arc_challenge"),
        MCQ("arc-2", "Water boils at", ("50 C", "100 C"), 1, "arc_challenge"),
        MCQ("mmlu_redux-1", "2 + 2 = ?", ("3", "4", "5", "6"), 1, "mmlu_redux"),
        MCQ("mmlu_redux-2", "2 + 2 = ?", ("3", "4", "5", "6"), 3, "mmlu_redux"),
        MCQ("obqa-1", "The sun is a", ("star", "planet", "moon", "comet"), 0, "openbookqa"),
    ]
    assert mcq_prompt(got[0]) == "Which is a gas?\nA. ice\nB. steam\nC. wood"
    assert option_letters(got[2]) == ("A", "B", "C", "D") == LETTERS[:4] and ANSWER_CUE == "The correct answer is"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("no questions here")
    with pytest.raises(FileNotFoundError, match=r"no \*\.jsonl file in .*other"):
        load_mcq(other, tmp_path / "data2")


@pytest.mark.parametrize(
    ("row", "why"),
    [
        ({"prompt": "?", "options": ["a", "b"]}, "match no layout"),
        ({**ARC, "answerKey": "E"}, "not one of the labels"),
        ({**MMLU, "answer": 7}, "outside the 4 choices"),
        ({**MMLU, "answer": "B"}, "int index"),
    ],
)
def test_mcq_bad_line_names_file_line_and_layouts(tmp_path, row, why):
    path = _jsonl(tmp_path / "bad.jsonl", [MMLU, row])
    expected = rf"bad\.jsonl:2: expected one of the layouts MMLU-Redux.*ARC.*OpenBookQA.*{why}"
    with pytest.raises(DataError, match=expected):
        list(read_mcq(path))


def test_split_qa_sharer_gold_only_keeps_the_fact_alone():
    full = split_qa.generate_questions("train", 20)
    gold = split_qa.generate_questions("train", 20, sharer_gold_only=True)
    for a, b in zip(full, gold):
        assert len(b.sharer_context) == 1 and b.sharer_context[0] in a.sharer_context
        assert a.answers[0] in b.sharer_context[0]
        assert (b.question, b.receiver_context, b.answers, b.id) == (a.question, a.receiver_context, a.answers, a.id)
