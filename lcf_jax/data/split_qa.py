"""Split-context questions about fictional people and organisations, generated from a seed.

Why: HotpotQA is large, licensed separately and too long for a 135M model on a CPU. This generator
follows the same protocol (10 paragraphs, 2 gold, split 5/5 with one gold on each side; the sharer
gets one half, the receiver the other half and the question) in one-sentence paragraphs whose
answers no model can know from memory, so question-only stays near zero and the receiver needs the
sharer's half.

Two variants:
  single_hop (default): the question names an organisation ("When did the Zola Council open?"); the
      sharer's gold paragraph states the answer ("The Zola Council opened on 26 September 1981."),
      the receiver's gold paragraph is about the same organisation without it ("Krisan Guril is the
      director of the Zola Council."). The asked relation occurs once in the 10 paragraphs; rival
      paragraphs on both sides hold values of the same kind about other people ("Vevul Previ retired
      on 15 February 1992."), so the only date in sight is not the answer. The answer is nowhere in
      the receiver's half.
  bridge: a HotpotQA bridge chain across the halves ("Where was the director of the Zola Council
      born?"): the sharer's gold paragraph names the bridge person ("Krisan Guril is the director
      of the Zola Council."), the receiver's holds the answer about them ("Krisan Guril was born in
      Lisbon, Portugal.") among the same relation for other people, so the receiver alone can only
      guess which one. The answer is in the receiver's half, but only the sharer's says which.
  single_hop_types: single_hop over five kinds of answer, so a trained adapter has to pass facts,
      not a format: dates ("When did the Zola Council open?"), places ("Where is the Zola Council?"),
      animals ("What is the emblem of the Zola Council?"), people ("Who founded the Zola Council?")
      and numbers ("How many members does the Zola Council have?"). The asked relation is about the
      organisation and occurs once; rivals are values of the same kind about people (born in, owns
      a, was trained by, owns N books). Not part of "mixed", whose draws stay those of the two
      variants above.
Distractors are the same kinds of facts about other fictional people and organisations: director
links, dates, places, jobs, instruments, emblems.

Why these choices, from calibrating on SmolLM2-135M-Instruct (numbers below):
  - that model answers with a sentence restating the question whatever the prompt asks ("The Zola
    Council opened on 26 September 1981."; 8 phrasings of "answer in one word" changed nothing), so
    a one-word answer caps token F1 near 0.3 even when right. Answers are three-word dates, asked
    with short verbs ("opened on"), which lifts the cap to 0.6;
  - it cannot pick one entity's fact among several facts of the same relation in a 10-paragraph
    context (about chance past the first two paragraphs), nor tell "opened on" from "closed on" of
    another organisation; it does find a relation that occurs once, even among values of the same
    kind under other relations. Hence the unique asked relation in single_hop; bridge, which needs
    that entity resolution, gains nothing from the sharer's half for this model (a harder variant
    for trained adapters and larger receivers).

Splits use disjoint name pools: every name word opens with a syllable (its letters up to and
including the first vowel) from its split's own set `NAME_SYLLABLES[split]`; `name_split` recovers
the split of any generated name. Everything is deterministic given (split, seed, index, variant).

Calibration: SmolLM2-135M-Instruct (`load_model("smollm2-135m")`, the Q4_1 GGUF), greedy
`generate(..., max_new_tokens=16)`, prompt `apply_chat_template(receiver_messages(q, paragraphs),
add_generation_prompt=True)` with paragraphs = `full_context(q)` (full), `q.receiver_context` (half)
or none (question only); SQuAD-normalised token F1 and EM, max over accepted answers; the first 150
`test` questions of each variant, seed 0:
    variant      full F1 / EM   half F1 / EM   question-only F1 / EM
    single_hop   55.2 / 0.0     2.1 / 0.0      1.2 / 0.0
    bridge       11.3 / 0.0     10.0 / 0.0     1.2 / 0.0
EM is 0 because the model always answers with a sentence; single_hop's full-context F1 of 55 is
roughly 92% of questions right under the 0.6 cap. bridge's half-context F1 equals its full one: this
model cannot use the link, so it guesses among the receiver's dates and places either way (and 16
tokens cut some of its long restated dates). Mixed sets average the two (about 33 full).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Any

from lcf_jax.data.qa import Question
from lcf_jax.errors import ConfigError

SPLITS = ("train", "validation", "test")
VARIANTS = ("single_hop", "bridge")  # what "mixed" draws from (fixed: it decides every mixed question)
EXTRA_VARIANTS = ("single_hop_types",)
DEFAULT_VARIANT = "single_hop"
HALF = 5  # paragraphs per side; 10 in all, as in HotpotQA distractor

_VOWELS = "aeiou"
_ONSETS = tuple("bdfghjklmnprstvz") + ("br", "dr", "fr", "gr", "kr", "pr", "tr", "bl", "fl", "gl", "kl", "pl", "sl")
_HEADS = tuple(o + v for o in _ONSETS for v in _VOWELS)  # first syllables: they decide the split
_SYLLABLES = tuple(o + v for o in "bdfgklmnprstvz" for v in _VOWELS)  # later syllables
_CODAS = ("", "", "", "n", "l", "r", "s")


def _split_heads() -> dict[str, frozenset[str]]:
    """A fixed 70/15/15 partition of the first syllables by a seeded shuffle."""
    order = sorted(_HEADS, key=lambda s: hashlib.sha256(f"lcf-split-qa:{s}".encode()).hexdigest())
    a, b = len(order) * 70 // 100, len(order) * 85 // 100
    return {"train": frozenset(order[:a]), "validation": frozenset(order[a:b]), "test": frozenset(order[b:])}


NAME_SYLLABLES = _split_heads()

ORG_KINDS = ("Guild", "Society", "Company", "Club", "Institute", "Foundation", "Council", "Trust", "Academy", "Group")
PLACES = (
    ("Lisbon", "Portugal"), ("Madrid", "Spain"), ("Paris", "France"), ("Berlin", "Germany"), ("Rome", "Italy"),
    ("Vienna", "Austria"), ("Warsaw", "Poland"), ("Dublin", "Ireland"), ("London", "England"), ("Oslo", "Norway"),
    ("Stockholm", "Sweden"), ("Helsinki", "Finland"), ("Athens", "Greece"), ("Cairo", "Egypt"), ("Tokyo", "Japan"),
    ("Seoul", "Korea"), ("Sydney", "Australia"), ("Toronto", "Canada"), ("Chicago", "America"), ("Mumbai", "India"),
    ("Moscow", "Russia"), ("Istanbul", "Turkey"), ("Nairobi", "Kenya"), ("Lima", "Peru"), ("Havana", "Cuba"),
    ("Bangkok", "Thailand"), ("Budapest", "Hungary"), ("Amsterdam", "Holland"), ("Brussels", "Belgium"),
    ("Copenhagen", "Denmark"), ("Edinburgh", "Scotland"), ("Beijing", "China"), ("Mexico City", "Mexico"),
    ("Buenos Aires", "Argentina"), ("Santiago", "Chile"), ("Bogota", "Colombia"), ("Manila", "Philippines"),
    ("Hanoi", "Vietnam"), ("Jakarta", "Indonesia"), ("Zurich", "Switzerland"),
)  # fmt: skip
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")  # fmt: skip
YEARS = range(1950, 2021)
OCCUPATIONS = (
    "painter", "doctor", "teacher", "lawyer", "farmer", "pilot", "chef", "nurse", "engineer", "architect",
    "journalist", "baker", "sailor", "poet", "dentist", "carpenter", "banker", "photographer", "librarian", "tailor",
)  # fmt: skip
INSTRUMENTS = ("piano", "violin", "guitar", "cello", "flute", "drums", "trumpet", "harp", "saxophone", "clarinet")
ANIMALS = ("lion", "eagle", "wolf", "bear", "fox", "owl", "horse", "tiger", "dolphin", "falcon", "swan", "raven")

# Relations: name -> (subject "p" (person) or "o" (organisation), kind of value, paragraph template).
RELATIONS = {
    "opened": ("o", "date", "{O} opened on {v}."),
    "closed": ("o", "date", "{O} closed on {v}."),
    "based": ("o", "place", "{O} is in {v}."),
    "emblem": ("o", "animal", "The emblem of {o} is a {v}."),
    "born": ("p", "place", "{P} was born in {v}."),
    "retired": ("p", "date", "{P} retired on {v}."),
    "job": ("p", "occupation", "{P} works as a {v}."),
    "plays": ("p", "instrument", "{P} plays the {v}."),
}

# Relations only single_hop_types uses, kept apart so the other variants draw exactly as before.
TYPED_RELATIONS = {
    **RELATIONS,
    "founder": ("o", "person", "{O} was founded by {v}."),
    "members": ("o", "number", "{O} has {v} members."),
    "pet": ("p", "animal", "{P} owns a {v}."),
    "mentor": ("p", "person", "{P} was trained by {v}."),
    "books": ("p", "number", "{P} owns {v} books."),
}

LINK = "{P} is the director of {o}."  # the bridge between a person and an organisation
# Asked relations: single_hop asks about the organisation named in the question, bridge about the
# director of the organisation named in the question.
SINGLE_HOP = {
    "opened": "When did {o} open?",
    "closed": "When did {o} close?",
}
SINGLE_HOP_TYPES = {
    "opened": "When did {o} open?",
    "based": "Where is {o}?",
    "emblem": "What is the emblem of {o}?",
    "founder": "Who founded {o}?",
    "members": "How many members does {o} have?",
}
BRIDGE = {
    "born": "Where was the director of {o} born?",
    "retired": "When did the director of {o} retire?",
}


def name_split(word: str) -> str | None:
    """The split whose name pool a generated name word belongs to (None: not a generated name)."""
    word = word.lower()
    end = next((i for i, c in enumerate(word) if c in _VOWELS), None)
    head = word[: end + 1] if end is not None else word
    return next((split for split, heads in NAME_SYLLABLES.items() if head in heads), None)


class _Names:
    """Distinct fictional names for one question: every word opens with one of the split's syllables,
    and no two words share it while unused ones remain (a small model confuses look-alike names)."""

    def __init__(self, split: str, rng: random.Random):
        self.heads = sorted(NAME_SYLLABLES[split])
        self.rng = rng
        self.used: set[str] = set()
        self.kinds = list(ORG_KINDS)
        rng.shuffle(self.kinds)

    def _word(self, syllables: int) -> str:
        free = [h for h in self.heads if h not in self.used] or self.heads
        head = self.rng.choice(free)
        self.used.add(head)
        rest = "".join(self.rng.choice(_SYLLABLES) for _ in range(syllables - 1))
        return (head + rest + self.rng.choice(_CODAS)).capitalize()

    def person(self) -> str:
        return f"{self._word(2)} {self._word(2)}"

    def org(self) -> str:
        kind = self.kinds.pop() if self.kinds else self.rng.choice(ORG_KINDS)
        return f"the {self._word(2)} {kind}"


class _Values:
    """Values of each kind, never repeated within a question (nor their cities or countries)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.pools: dict[str, list[Any]] = {
            "place": list(PLACES),
            "occupation": list(OCCUPATIONS),
            "instrument": list(INSTRUMENTS),
            "animal": list(ANIMALS),
        }
        for pool in self.pools.values():
            rng.shuffle(pool)
        self.dates: set[str] = set()
        self.numbers: set[int] = set()

    def take(self, kind: str, names: _Names | None = None) -> tuple[str, tuple[str, ...]]:
        """(text in the paragraph, accepted answers). Kinds "person" and "number" (single_hop_types
        only) draw lazily, so the other kinds' draws do not depend on them."""
        if kind == "person":
            person = names.person()
            return person, (person,)
        if kind == "number":
            while True:
                number = self.rng.randint(120, 9800)
                if number not in self.numbers:
                    self.numbers.add(number)
                    return str(number), (str(number),)
        if kind == "date":
            while True:
                text = f"{self.rng.randint(1, 28)} {self.rng.choice(MONTHS)} {self.rng.choice(YEARS)}"
                if text not in self.dates:
                    self.dates.add(text)
                    return text, (text,)
        value = self.pools[kind].pop()
        if kind == "place":
            city, country = value
            return f"{city}, {country}", (f"{city}, {country}", city)
        return value, (value,)


def _fact(relation: str, person: str, org: str, value: str) -> str:
    text = TYPED_RELATIONS[relation][2].format(P=person, O=org, o=org, v=value)
    return text[0].upper() + text[1:]


def _link(person: str, org: str) -> str:
    return LINK.format(P=person, o=org)


def _build(split: str, rng: random.Random, variant: str) -> dict[str, Any]:
    names, values = _Names(split, rng), _Values(rng)
    people = [names.person() for _ in range(6)]
    orgs = [names.org() for _ in range(6)]
    p, o = people[0], orgs[0]
    if variant == "single_hop":
        asked = rng.choice(sorted(SINGLE_HOP))
        kind = RELATIONS[asked][1]
        text, answers = values.take(kind)
        question = SINGLE_HOP[asked].format(o=o, p=p)
        sharer_gold, receiver_gold = _fact(asked, p, o, text), _link(p, o)
        # Rivals: the same kind of value about people ("retired on"); another organisation's date
        # ("closed on" next to "opened on") confuses a 135M model into a coin toss.
        rivals = [r for r, (who, k, _) in RELATIONS.items() if k == kind and who == "p"]
        fillers = [r for r, (_, k, _) in RELATIONS.items() if k != kind and r not in SINGLE_HOP]
    elif variant == "single_hop_types":
        asked = rng.choice(sorted(SINGLE_HOP_TYPES))
        kind = TYPED_RELATIONS[asked][1]
        text, answers = values.take(kind, names)
        question = SINGLE_HOP_TYPES[asked].format(o=o)
        sharer_gold, receiver_gold = _fact(asked, p, o, text), _link(p, o)
        rivals = [r for r, (who, k, _) in TYPED_RELATIONS.items() if k == kind and who == "p"]
        fillers = [r for r, (_, k, _) in TYPED_RELATIONS.items() if k != kind and r not in SINGLE_HOP_TYPES]
    else:
        asked = rng.choice(sorted(BRIDGE))
        kind = RELATIONS[asked][1]
        text, answers = values.take(kind)
        question = BRIDGE[asked].format(o=o)
        sharer_gold, receiver_gold = _link(p, o), _fact(asked, p, o, text)
        rivals = [asked]  # the same relation about other directors: only the link says which is meant
        fillers = [r for r, (_, k, _) in RELATIONS.items() if k != kind]
    # Eight distractors about other people and organisations, four a side: one director link and
    # two rival values on each side, one filler fact.
    others = list(zip(people[1:], orgs[1:]))
    sides: list[list[str]] = [[], []]
    for side in sides:
        pi, oi = others.pop()
        side.append(_link(pi, oi))
        for _ in range(2):
            pi, oi = others.pop() if others else (names.person(), names.org())
            rival = rng.choice(rivals)
            side.append(_fact(rival, pi, oi, values.take(TYPED_RELATIONS[rival][1], names)[0]))
        pi, oi = names.person(), names.org()
        relation = rng.choice(fillers)
        side.append(_fact(relation, pi, oi, values.take(TYPED_RELATIONS[relation][1], names)[0]))
    return {
        "question": question[0].upper() + question[1:],
        "answers": answers,
        "sharer": [sharer_gold, *sides[0]],
        "receiver": [receiver_gold, *sides[1]],
    }


def question_id(split: str, seed: int, index: int, variant: str) -> str:
    tag = {"single_hop": "sh", "bridge": "br", "single_hop_types": "ty"}[variant]
    return f"split_qa-{split}-{seed}-{index:06d}-{tag}"


def _variant_of(split: str, seed: int, index: int, variant: str) -> str:
    if variant in VARIANTS or variant in EXTRA_VARIANTS:
        return variant
    if variant != "mixed":
        raise ConfigError(f"unknown variant {variant!r}: use 'mixed' or one of {VARIANTS + EXTRA_VARIANTS}")
    return VARIANTS[random.Random(f"mix:{split}:{seed}:{index}").randrange(len(VARIANTS))]


def generate_example(split: str, index: int, *, seed: int = 0, variant: str = DEFAULT_VARIANT) -> dict[str, Any]:
    """One question with its metadata: {question: Question, variant, sharer_gold, receiver_gold}
    (gold = index of the gold paragraph in each half).

    Deterministic in (split, seed, index, variant); in "mixed", question `index` is the one its
    drawn variant gives on its own, so a mixed set interleaves the pure ones."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: use one of {SPLITS}")
    variant = _variant_of(split, seed, index, variant)
    rng = random.Random(f"{split}:{seed}:{index}:{variant}")
    built = _build(split, rng, variant)
    order_s, order_r = rng.sample(range(HALF), HALF), rng.sample(range(HALF), HALF)
    q = Question(
        id=question_id(split, seed, index, variant),
        question=built["question"],
        sharer_context=tuple(built["sharer"][i] for i in order_s),
        receiver_context=tuple(built["receiver"][i] for i in order_r),
        answers=built["answers"],
    )
    return {"question": q, "variant": variant, "sharer_gold": order_s.index(0), "receiver_gold": order_r.index(0)}


def generate_questions(
    split: str, n: int, *, seed: int = 0, variant: str = DEFAULT_VARIANT, start: int = 0, sharer_gold_only: bool = False
) -> list[Question]:
    """Questions `start .. start + n - 1` of a split; ids are unique and stable across calls.

    `sharer_gold_only`: the sharer's half is its gold paragraph alone (a diagnostic for learned
    messages: nothing to select, so a message that still carries nothing fails at passing the fact
    on, not at finding it)."""
    out = []
    for i in range(start, start + n):
        example = generate_example(split, i, seed=seed, variant=variant)
        q = example["question"]
        if sharer_gold_only:
            q = dataclasses.replace(q, sharer_context=(q.sharer_context[example["sharer_gold"]],))
        out.append(q)
    return out


def full_context(q: Question) -> list[str]:
    """Both halves in one fixed order seeded by the id (the full-context condition), so the order
    tells the model neither which half a paragraph came from nor where the gold ones are."""
    paragraphs = [*q.sharer_context, *q.receiver_context]
    random.Random(f"full:{q.id}").shuffle(paragraphs)
    return paragraphs
