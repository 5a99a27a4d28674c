"""Training a KV translator with `lcf train` (configs/kv_translator.py): the loss falls and held-out
entries are predicted, a run resumes from its Orbax checkpoint to the same parameters, the result
exports for PyTorch (from the finished run and from a checkpoint), and bad input is one clear error."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from tiny_pair import tiny_text_models

from lcf_jax import cli
from lcf_jax.cli.evaluate import check_translator_fits
from lcf_jax.config import load_config
from lcf_jax.messages.translate import fit_translator, load_translator
from lcf_jax.models.model import Model
from lcf_jax.train.loop import train


@pytest.fixture(scope="module")
def pair():
    sharer, receiver = tiny_text_models(seed=4)
    config = dataclasses.replace(receiver.config, rope_theta=500_000.0)  # another RoPE base too
    return sharer, Model(config, receiver.graphdef, receiver.params, tokenizer=receiver.tokenizer)


def text_config(**overrides):
    """The tiny config on generated split_qa paragraphs (the pair above has a tokenizer)."""
    config = load_config("configs/kv_translator.py:tiny")
    config.data.kind = "split_qa"
    config.data.count = 48
    config.data.max_length = 96
    config.data.bucket = 32
    config.train.batch_size = 8
    for key, value in overrides.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_the_loss_falls_and_held_out_entries_are_predicted(pair, tmp_path):
    config = text_config(train__steps=40, translator__init="zeros", checkpoint__every=100)
    summary = train(config, tmp_path, progress=False, models=pair)
    curve = losses(tmp_path)
    print("loss", curve, "held out", summary["held_out"])
    assert np.mean(curve[-2:]) < 0.9 * np.mean(curve[:2])
    # A zero map scores above 1 (the targets' mean is missed too); the trained one predicts.
    assert summary["held_out"]["key_relative_mse"] < 0.95 and summary["held_out"]["value_relative_mse"] < 0.95
    translator = load_translator(tmp_path / "kv_translator")
    assert translator.width == 16 and translator.source_layers == (0, 1, 1, 2)


def test_a_stopped_run_resumes_to_the_same_translator(pair, tmp_path, monkeypatch):
    from lcf_jax.train import translator as T

    config = text_config(train__steps=20, checkpoint__async_save=False)
    whole = train(config, tmp_path / "whole", progress=False, models=pair)
    # The same run stopped while it reads its 11th batch (its checkpoint of step 10 written), then run again.
    real_next, calls = T.TextBatches.__next__, []

    def failing_next(self):
        calls.append(1)
        if len(calls) == 11:
            raise KeyboardInterrupt
        return real_next(self)

    monkeypatch.setattr(T.TextBatches, "__next__", failing_next)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "split", progress=False, models=pair)
    monkeypatch.setattr(T.TextBatches, "__next__", real_next)
    resumed = train(config, tmp_path / "split", progress=False, models=pair)
    assert resumed["resumed_from"] == 10 and whole["resumed_from"] == 0
    a, b = load_translator(tmp_path / "whole" / "kv_translator"), load_translator(tmp_path / "split" / "kv_translator")
    for name in a.arrays:
        np.testing.assert_allclose(a.arrays[name], b.arrays[name], rtol=1e-5, atol=1e-6)


def test_lcf_train_and_export_a_translator_for_pytorch(tmp_path, capsys):
    """The CLI on the tiny random pair (synthetic tokens): train, export from the finished run and
    from its Orbax checkpoint alone; lcf_jax.torch reads both."""
    from lcf_jax.torch import load_kv_translator

    run = tmp_path / "run"
    assert cli.main(["train", "--config", "configs/kv_translator.py:tiny", "--workdir", str(run),
                     "--config.train.steps=10", "--no-progress"]) == 0  # fmt: skip
    assert "held-out relative MSE" in capsys.readouterr().out
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "out")]) == 0
    exported = load_kv_translator(tmp_path / "out")
    trained = load_translator(run / "kv_translator")
    np.testing.assert_array_equal(exported.arrays["ffn0_in"].numpy(), trained.arrays["ffn0_in"])
    # The Orbax checkpoint of a run that did not finish (no kv_translator/, no config.json).
    for leftover in ("kv_translator", "config.json"):
        path = run / leftover
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    assert cli.main(["export", "--checkpoint", str(run / "checkpoints"), "--config", "configs/kv_translator.py:tiny",
                     "--out", str(tmp_path / "orbax")]) == 0  # fmt: skip
    from_orbax = load_translator(tmp_path / "orbax")
    np.testing.assert_array_equal(from_orbax.arrays["key_map"], trained.arrays["key_map"])
    assert cli.main(["export", "--checkpoint", str(tmp_path / "out"), "--out", str(tmp_path / "b"),
                     "--dtype", "bfloat16"]) == 2  # fmt: skip
    assert "exported in float32" in capsys.readouterr().err


def test_bad_translator_input_is_one_clear_error(pair, tmp_path):
    sharer, receiver = pair
    with pytest.raises(ValueError, match="two different models"):
        train(text_config(), tmp_path / "one", progress=False, models=(sharer, sharer))
    with pytest.raises(ValueError, match="cannot fill one batch"):
        train(text_config(data__count=4), tmp_path / "few", progress=False, models=pair)
    with pytest.raises(FileNotFoundError, match="data.path"):
        train(text_config(data__kind="text_jsonl"), tmp_path / "nofile", progress=False, models=pair)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "one"}\n{"txt": "two"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        train(text_config(data__kind="text_jsonl", data__path=str(bad)), tmp_path / "bad", progress=False, models=pair)
    translator, _ = fit_translator(sharer, receiver, [[5, 6, 7, 8]])
    with pytest.raises(ValueError, match="but the config's models are"):
        check_translator_fits(translator, receiver, sharer, "T")
    with pytest.raises(ValueError, match="one model, which needs none"):
        check_translator_fits(translator, sharer, sharer, "T")
