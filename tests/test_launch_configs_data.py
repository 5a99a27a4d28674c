"""Launch scripts (dry runs), the experiment configs, and the chat-data pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lcf_jax.adapters import build, count_params
from lcf_jax.config import load_config
from lcf_jax.data.chat import DataError, load_chat_examples
from lcf_jax.data.pipeline import BatchIterator

ROOT = Path(__file__).resolve().parent.parent


def dry_run(script: str, *args: str) -> list[str]:
    result = subprocess.run(
        ["bash", str(ROOT / "launch" / script), *args, "--dry-run"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


def test_tpu_pod_dry_run_prints_create_setup_and_train_on_every_worker():
    lines = dry_run(
        "tpu/run_pod.sh",
        "--name",
        "lcf",
        "--zone",
        "us-east5-a",
        "--type",
        "v5p-32",
        "--config",
        "configs/paper_lcf.py:256",
        "--workdir",
        "gs://b/run",
        "--repo",
        "https://example.org/x.git",
        "--config.train.steps=10",
    )
    assert lines[0] == (
        "+ gcloud compute tpus tpu-vm create lcf --zone=us-east5-a --accelerator-type=v5p-32 --version=v2-alpha-tpuv5"
    )
    assert "--worker=all" in lines[1] and "git clone --branch main https://example.org/x.git" in lines[1]
    assert "pip install -q -e '\\''.[tpu]'\\''" in lines[1]
    assert lines[2] == (
        "+ gcloud compute tpus tpu-vm ssh lcf --zone=us-east5-a --worker=all '--command=cd lcf_jax && "
        ".venv/bin/lcf train --distributed --no-progress --config configs/paper_lcf.py:256 "
        "--workdir gs://b/run --config.train.steps=10'"
    )


def test_xpk_and_slurm_dry_runs():
    xpk = dry_run(
        "xpk/run.sh",
        "--cluster",
        "c1",
        "--workload",
        "w1",
        "--type",
        "v5p-8",
        "--docker-image",
        "img:1",
        "--config",
        "configs/c2c.py",
        "--workdir",
        "gs://b/c2c",
    )
    assert xpk == [
        "+ xpk workload create --cluster c1 --workload w1 --tpu-type v5p-8 --num-slices 1 --docker-image "
        "img:1 --command 'lcf train --distributed --no-progress --config configs/c2c.py --workdir gs://b/c2c'"
    ]
    slurm = dry_run(
        "slurm/submit.sh",
        "--nodes",
        "4",
        "--partition",
        "gpu",
        "--config",
        "configs/paper_lcf.py",
        "--workdir",
        "/shared/run",
    )
    assert slurm[0].startswith("+ sbatch --nodes=4 --partition=gpu --time=12:00:00 ")
    assert "LCF_CONFIG=configs/paper_lcf.py" in slurm[0] and slurm[0].endswith("/train.sbatch")
    assert "srun .venv/bin/lcf train --distributed" in (ROOT / "launch" / "slurm" / "train.sbatch").read_text()


def test_launch_scripts_refuse_missing_arguments():
    result = subprocess.run(
        ["bash", str(ROOT / "launch" / "slurm" / "submit.sh"), "--dry-run"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "--partition is required" in result.stderr


@pytest.mark.parametrize(
    "name,kind,count,steps",
    [
        ("paper_lcf.py", "lcf", 19_393_528, 300),
        ("paper_lcf.py:256", "lcf", 53_409_272, 300),
        ("c2c.py", "c2c", 477_848_056, 300),
        ("paper_lcfx.py", "lcfx", 25_873_400, 276),
        ("smollm2_qa.py", "lcfx", None, 200),
    ],
)
def test_paper_configs_build_the_papers_adapters(name, kind, count, steps):
    config = load_config(f"{ROOT / 'configs'}/{name}")
    assert config.adapter.kind == kind and config.train.steps == steps
    adapter = build(kind, config.sharer, config.receiver, abstract=True, **dict(config.adapter.options))
    if count is None:  # the CPU-sized embedded default
        assert config.sharer == config.receiver == "smollm2-135m" and config.data.kind == "qa_jsonl"
        assert 0 < count_params(adapter) < 10_000_000
        return
    assert config.train.batch_size == 256 and config.train.learning_rate == 1e-4 and config.seed == 42
    assert config.train.anneal_steps == (1929 if kind != "lcfx" else 276)  # one epoch each
    assert count_params(adapter) == count


@pytest.fixture(scope="module")
def chat_tokenizer():
    words = [
        "<unk>",
        "system",
        "user",
        "assistant",
        "what",
        "is",
        "two",
        "plus",
        "four",
        "hi",
        "hello",
        "there",
        "you",
        "are",
        "kind",
    ]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>", chat_template=template
    )


def test_openhermes_jsonl_gives_response_only_labels(tmp_path, chat_tokenizer):
    path = tmp_path / "chat.jsonl"
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "you are kind"},
                {"from": "human", "value": "what is two plus two"},
                {"from": "gpt", "value": "four"},
            ]
        },
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there"}]},
        {"conversations": [{"from": "human", "value": "no answer here"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    examples = load_chat_examples(path, chat_tokenizer)
    assert len(examples) == 2  # the conversation without a response is skipped
    decode = chat_tokenizer.decode
    assert decode(examples[0].prompt).split()[-2:] == ["<|im_start|>", "assistant"]
    assert decode(examples[0].response).split() == ["four", "<|im_end|>"]
    assert "four" not in decode(examples[0].prompt) and "kind" in decode(examples[0].prompt)
    assert decode(examples[1].response).split() == ["hello", "there", "<|im_end|>"]
    path.write_text('{"conversations": [{"from": "robot", "value": "x"}]}\n')
    with pytest.raises(DataError, match=r"chat.jsonl:1: expected"):
        load_chat_examples(path, chat_tokenizer)


def test_iterator_is_deterministic_split_per_host_and_resumable():
    from lcf_jax.data.synthetic import copy_task

    examples = copy_task(40, vocab=50, seed=3)
    whole = BatchIterator(examples, 8, seed=1, bucket=4)
    hosts = [BatchIterator(examples, 8, seed=1, bucket=4, process_index=i, process_count=2) for i in range(2)]
    for _ in range(7):  # crosses an epoch boundary (5 batches per epoch)
        full = next(whole)
        parts = [next(h) for h in hosts]
        np.testing.assert_array_equal(np.concatenate([p.prefix for p in parts]), full.prefix)
        np.testing.assert_array_equal(np.concatenate([p.row_ids for p in parts]), full.row_ids)
    state = whole.get_state()
    assert state["epoch"] == 1 and state["position"] == 2
    again = BatchIterator(examples, 8, seed=1, bucket=4)
    again.set_state(state)
    np.testing.assert_array_equal(next(again).suffix, next(whole).suffix)
    with pytest.raises(ValueError, match="another dataset or seed"):
        BatchIterator(examples, 8, seed=2).set_state(state)


def test_split_context_question_jsonl(tmp_path, chat_tokenizer):
    from lcf_jax.data.qa import Question, load_question_examples, write_questions

    questions = [
        Question("q1", "what is two plus two", ("two plus two is four", "hi there"), ("you are kind",), ("four",)),
        Question("q2", "what is kind", ("hello",), (), ("you", "you are")),
    ]
    path = write_questions(questions, tmp_path / "qa.jsonl")
    examples = load_question_examples(path, chat_tokenizer)
    assert len(examples) == 2 and len(examples[0].sharer_context) == 2
    assert chat_tokenizer.decode(examples[0].response).split() == ["four", "<|im_end|>"]
    assert "kind" in chat_tokenizer.decode(examples[0].prompt)  # the receiver's own paragraph
    assert "plus" not in chat_tokenizer.decode([t for s in examples[1].sharer_context for t in s])
    seen = load_question_examples(path, chat_tokenizer, sees_question=True)
    assert len(seen[0].sharer_context) == 3  # the question becomes one more span
    path.write_text('{"id": 1, "question": "x"}\n')
    with pytest.raises(DataError, match=r"qa.jsonl:1: expected an object with id, question"):
        load_question_examples(path, chat_tokenizer)


def test_shipped_configs_load_by_name_outside_a_clone(tmp_path, monkeypatch):
    from lcf_jax.config import ConfigError, load_config

    root = Path(__file__).resolve().parents[1]
    here = load_config(str(root / "configs" / "paper_lcfx.py"))
    monkeypatch.chdir(tmp_path)  # no configs/ here: the shipped copies answer
    assert load_config("paper_lcfx").to_dict() == here.to_dict()
    assert load_config("configs/tiny.py:lcfx").adapter.kind == "lcfx"
    with pytest.raises(ConfigError, match="shipped configs \\(by name\\): c2c, kv_translator, paper_lcf"):
        load_config("paper_lcfxx")


@pytest.mark.slow
def test_the_wheel_ships_the_configs(tmp_path):
    """`pip install lcf_jax` users get configs/ as lcf_jax/configs (a link in the source tree)."""
    import shutil
    import zipfile

    root = Path(__file__).resolve().parents[1]
    skip = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache")
    source = shutil.copytree(root, tmp_path / "src", symlinks=True, ignore=skip)  # builds leave build/ behind
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*command, "-w", str(tmp_path)], check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("lcf_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"lcf_jax/configs/{p.name}" for p in (root / "configs").glob("*.py")} <= names
