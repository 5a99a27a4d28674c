"""The package's import order (docs/architecture.md, "Layers"): a module imports only from its own
layer or the layers below it, never a private name of another module; `lcf_jax.torch` runs without
JAX, so it imports only the format names it shares with lcf_jax."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lcf_jax"

# Bottom to top; a name is a top-level module or subpackage of lcf_jax. Keep in step with the doc.
LAYERS = (
    (
        "typing",
        "sizes",
        "trees",
        "errors",
        "json_values",
        "version",
        "adapter_format",
        "runtime",
        "progress",
        "config",
        "sharding",
    ),
    ("models", "kv"),
    ("loading", "sampling", "align"),
    ("adapters",),
    ("messages", "data"),
    ("communicate", "prune"),
    ("train",),
    ("eval", "export"),
    ("demo",),
    ("cli",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
RANK[""] = RANK["cli"] - 0.5  # the public API (lcf_jax/__init__.py): only the CLI builds on it
TORCH_MAY_IMPORT = {"adapter_format", "errors", "torch"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path):
    """(imported module, names, line) for every lcf_jax import in the file, function-level ones too.
    `from lcf_jax import communicate` imports the module lcf_jax.communicate."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((a.name, (), node.lineno) for a in node.names if a.name.startswith("lcf_jax"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("lcf_jax"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if importlib.util.find_spec(sub.rsplit(".", 1)[0]) and _is_module(sub):
                    yield sub, (), node.lineno
                else:
                    yield node.module, (alias.name,), node.lineno


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative / "__init__.py").exists()


def part(module: str) -> str:
    """The layer name of a module: `lcf_jax.train.loop` -> "train"; the package itself -> ""."""
    return module.split(".")[1] if "." in module else ""


def test_imports_only_go_down_the_layers():
    files = sorted(PACKAGE.rglob("*.py"))
    unknown = {part(module_name(f)) for f in files} - set(RANK) - {"", "torch"}
    assert not unknown, f"modules in no layer: {sorted(unknown)}; add them to LAYERS and docs/architecture.md"
    upward, private = [], []
    for f in files:
        source = module_name(f)
        for target, names, line in imports(f):
            where = f"{f.relative_to(PACKAGE.parent)}:{line} imports {target}"
            private += [
                f"{where}.{n}" for n in names if n.startswith("_") and not n.endswith("__") and target != source
            ]
            if part(source) == "torch":
                if part(target) not in TORCH_MAY_IMPORT:
                    upward.append(f"{where} (lcf_jax.torch must run without JAX)")
            elif part(source) and RANK[part(target)] > RANK[part(source)]:
                upward.append(where)
    assert not upward, "imports that run upward:\n" + "\n".join(upward)
    assert not private, "private names imported across modules:\n" + "\n".join(private)


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from lcf_jax.train.loop import train\n    from lcf_jax.adapters.build import _x\n")
    assert [(t, n) for t, n, _ in imports(bad)] == [
        ("lcf_jax.train.loop", ("train",)),
        ("lcf_jax.adapters.build", ("_x",)),
    ]
    assert RANK["train"] > RANK["adapters"]


def test_every_public_name_resolves_after_the_package_is_imported():
    """A public name that shares a subpackage's name (e.g. `train`) would be shadowed by the
    subpackage once something imports it: every name must stay the object the API promises."""
    import importlib
    import types

    import lcf_jax

    for f in sorted(PACKAGE.rglob("*.py")):
        if part(module_name(f)) != "torch" and f.stem != "__main__":  # __main__ runs the CLI
            importlib.import_module(module_name(f))
    modules = [n for n in lcf_jax.__all__ if isinstance(getattr(lcf_jax, n), types.ModuleType)]
    assert not modules, f"public names that resolve to modules: {modules}"
