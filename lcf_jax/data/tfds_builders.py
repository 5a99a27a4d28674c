"""TFDS builders for the evaluation data (`split_qa`, `hotpot_qa_split`, `mcq`) and loaders that
return plain records.

Why TFDS: one versioned, cached, documented build per dataset that the training input pipeline and
the evaluation read the same way. Everything is built locally (the generator, or files the user
places in the TFDS manual directory): no network and no TensorFlow (array_record files, read with
`as_data_source`). Shuffling is disabled so a split reads back in the order it was generated.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from lcf_jax.data import hotpot, split_qa
from lcf_jax.data.mcq import MCQ, read_mcq
from lcf_jax.data.qa import Question
from lcf_jax.errors import DataError

FILE_FORMAT = "array_record"
_TEXT = tfds.features.Text()
_TEXTS = tfds.features.Sequence(tfds.features.Text())
_INT = tfds.features.Scalar(np.int64)
_QUESTION_FEATURES = {
    "id": _TEXT,
    "question": _TEXT,
    "sharer_context": _TEXTS,
    "receiver_context": _TEXTS,
    "answers": _TEXTS,
    "sharer_gold": _INT,  # index of the gold paragraph in each half
    "receiver_gold": _INT,
}


def _question_row(example: dict[str, Any]) -> dict[str, Any]:
    q: Question = example["question"]
    return {
        "id": q.id,
        "question": q.question,
        "sharer_context": list(q.sharer_context),
        "receiver_context": list(q.receiver_context),
        "answers": list(q.answers),
        "sharer_gold": example["sharer_gold"],
        "receiver_gold": example["receiver_gold"],
    }


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder that downloads nothing, so it has no checksums file. Why this exists: TFDS 4.9.10
    locates a packaged builder's source (to find that file) through `importlib_resources`, which it
    only declares as a dependency for Python < 3.9."""

    code_path = None


# --- split_qa --------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class SplitQaConfig(tfds.core.BuilderConfig):
    """variant: "single_hop", "bridge" or "mixed"; sizes: questions in train, validation, test."""

    variant: str = split_qa.DEFAULT_VARIANT
    sizes: tuple[int, int, int] = (4000, 300, 500)
    seed: int = 0


class SplitQa(_LocalBuilder):
    """Generated split-context questions (see `lcf_jax.data.split_qa`), one config per variant."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        SplitQaConfig(name=v, variant=v) for v in (*split_qa.VARIANTS, *split_qa.EXTRA_VARIANTS, "mixed")
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=split_qa.__doc__,
            features=tfds.features.FeaturesDict({**_QUESTION_FEATURES, "variant": _TEXT}),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        return {s: self._generate_examples(s, n) for s, n in zip(split_qa.SPLITS, self.builder_config.sizes)}

    def _generate_examples(self, split: str, n: int):
        c = self.builder_config
        for i in range(n):
            example = split_qa.generate_example(split, i, seed=c.seed, variant=c.variant)
            yield i, {**_question_row(example), "variant": example["variant"]}


# --- hotpot_qa_split -------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class HotpotQaSplitConfig(tfds.core.BuilderConfig):
    splits: tuple[str, ...] = ("train", "validation")
    seed: int = 0


class HotpotQaSplit(_LocalBuilder):
    """HotpotQA distractor, bridge questions, partitioned as in the paper (see `lcf_jax.data.hotpot`).

    Configs: `full` (train and validation) and `validation` (the paper's evaluation set only)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = hotpot.MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        HotpotQaSplitConfig(name="full", splits=("train", "validation")),
        HotpotQaSplitConfig(name="validation", splits=("validation",)),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=hotpot.__doc__,
            features=tfds.features.FeaturesDict({**_QUESTION_FEATURES, "level": _TEXT}),
            homepage="https://hotpotqa.github.io",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        manual = _manual_dir(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        paths = {split: manual / hotpot.FILES[split] for split in self.builder_config.splits}
        for path in paths.values():  # fail before writing anything
            if not path.exists():
                fix = self.MANUAL_DOWNLOAD_INSTRUCTIONS
                raise FileNotFoundError(f"no HotpotQA file at {path}. Fix: place it there as described:\n{fix}")
        return {split: self._generate_examples(split, path) for split, path in paths.items()}

    def _generate_examples(self, split: str, path: Path):
        examples, skipped = hotpot.split_questions(path, seed=self.builder_config.seed)
        logging.info("hotpot_qa_split %s: %d bridge questions, skipped %s", split, len(examples), skipped)
        for i, example in enumerate(examples):
            yield i, {**_question_row(example), "level": example["level"]}


# --- mcq -------------------------------------------------------------------------------------------


class Mcq(_LocalBuilder):
    """Multiple-choice sets from every `*.jsonl` in the manual directory, one `test` split; each
    question's `source` is its file's stem (see `lcf_jax.data.mcq` for the layouts)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Place one JSONL file per benchmark in the TFDS manual directory (`manual_dir` of the loader, by default
<data_dir>/downloads/manual/), e.g. mmlu_redux.jsonl, arc_challenge.jsonl, openbookqa.jsonl, in any of
the layouts MMLU-Redux {"question", "choices": [...], "answer": int}, ARC {"id", "question",
"choices": {"text", "label"}, "answerKey"}, OpenBookQA {"id", "question_stem", "choices": {"text",
"label"}, "answerKey"} (e.g. exported from the Hugging Face datasets with `to_json(..., lines=True)`).
"""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {"id": _TEXT, "question": _TEXT, "choices": _TEXTS, "answer": _INT, "source": _TEXT}
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        manual = _manual_dir(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        files = sorted(Path(p) for p in manual.glob("*.jsonl"))
        if not files:
            raise FileNotFoundError(f"no *.jsonl file in {manual}. Fix:\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        return {"test": self._generate_examples(files)}

    def _generate_examples(self, files: Sequence[Path]):
        seen: set[str] = set()
        for path in files:
            for i, q in enumerate(read_mcq(path)):
                key = f"{q.source}/{i}"
                if q.id in seen:  # ids must be unique across files for the records to be addressable
                    raise DataError(f"{path}: question id {q.id!r} occurs twice; make ids unique")
                seen.add(q.id)
                yield key, {**dataclasses.asdict(q), "choices": list(q.choices)}


# --- building and loading --------------------------------------------------------------------------


def _manual_dir(dl_manager: tfds.download.DownloadManager, instructions: str) -> Path:
    try:
        return Path(dl_manager.manual_dir)
    except AssertionError as e:  # TFDS: "does not exist or is empty"
        raise FileNotFoundError(f"{e}\nFix:\n{instructions}") from None


def build(builder: tfds.core.DatasetBuilder, manual_dir: str | os.PathLike | None = None) -> tfds.core.DatasetBuilder:
    """Prepare `builder` once (a cached build is reused), offline."""
    config = tfds.download.DownloadConfig(manual_dir=str(Path(manual_dir).expanduser()) if manual_dir else None)
    builder.download_and_prepare(download_config=config)
    return builder


def _python(value: Any) -> Any:
    """Text features come back as bytes, sequences as lists or arrays, scalars as numpy ints."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(_python(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


def read_split(builder: tfds.core.DatasetBuilder, split: str, n: int | None = None) -> list[dict[str, Any]]:
    """The first `n` records (all by default) of a built split, as Python values (str, int)."""
    if split not in builder.info.splits:
        raise ValueError(f"{builder.name} has no split {split!r}; it has {sorted(builder.info.splits)}")
    source = builder.as_data_source(split)
    count = len(source) if n is None else min(n, len(source))
    return [{k: _python(v) for k, v in source[i].items()} for i in range(count)]


def _to_question(row: dict[str, Any]) -> Question:
    return Question(row["id"], row["question"], row["sharer_context"], row["receiver_context"], tuple(row["answers"]))


def split_qa_builder(
    *,
    variant: str = split_qa.DEFAULT_VARIANT,
    sizes: tuple[int, int, int] | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
) -> SplitQa:
    """The registered config for `variant` at the default sizes and seed, else a config named after
    its sizes and seed (built into its own directory)."""
    if variant not in (*split_qa.VARIANTS, *split_qa.EXTRA_VARIANTS, "mixed"):
        known = split_qa.VARIANTS + split_qa.EXTRA_VARIANTS
        raise ValueError(f"unknown variant {variant!r}: use 'mixed' or one of {known}")
    default = SplitQaConfig(name=variant, variant=variant)
    sizes = tuple(sizes) if sizes is not None else default.sizes
    if sizes == default.sizes and seed == default.seed:
        config: str | SplitQaConfig = variant
    else:
        name = f"{variant}_{'_'.join(map(str, sizes))}_seed{seed}"
        config = SplitQaConfig(name=name, variant=variant, sizes=sizes, seed=seed)
    return SplitQa(config=config, data_dir=data_dir, file_format=FILE_FORMAT)


def load_split_qa(
    split: str,
    n: int | None = None,
    *,
    variant: str = split_qa.DEFAULT_VARIANT,
    sizes: tuple[int, int, int] | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
) -> list[Question]:
    """The first `n` questions of a `split_qa` split, building the dataset first if needed."""
    builder = build(split_qa_builder(variant=variant, sizes=sizes, seed=seed, data_dir=data_dir))
    return [_to_question(row) for row in read_split(builder, split, n)]


def load_hotpot_qa_split(
    split: str = "validation",
    manual_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    config: str | None = None,
    n: int | None = None,
) -> list[Question]:
    """The partitioned HotpotQA bridge questions of `split` (config `validation` when only the dev
    file is needed, else `full`), building from the files in `manual_dir` if needed."""
    config = config or ("validation" if split == "validation" else "full")
    builder = HotpotQaSplit(config=config, data_dir=data_dir, file_format=FILE_FORMAT)
    return [_to_question(row) for row in read_split(build(builder, manual_dir), split, n)]


def load_mcq(
    manual_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None, *, n: int | None = None
) -> list[MCQ]:
    """All multiple-choice questions of the `*.jsonl` files in `manual_dir`, building if needed. A build
    is cached under `data_dir`/mcq: delete that folder after changing the files."""
    builder = build(Mcq(data_dir=data_dir, file_format=FILE_FORMAT), manual_dir)
    return [
        MCQ(r["id"], r["question"], tuple(r["choices"]), int(r["answer"]), r["source"])
        for r in read_split(builder, "test", n)
    ]
