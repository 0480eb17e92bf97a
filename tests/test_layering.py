"""The import graph holds: engine imports no other d2f package; server and refurbish import only engine;
nothing but the CLI root and the tests imports bench. Checked in fresh interpreters, so nothing a test
imported earlier can hide a violation."""
import json
import pkgutil
import subprocess
import sys

import pytest

import d2f

ALLOWED = {"engine": {"engine"}, "server": {"engine", "server"}, "refurbish": {"engine", "refurbish"},
           "bench": {"engine", "server", "refurbish", "bench"}}


def _modules(package: str) -> list[str]:
    pkg = __import__(f"d2f.{package}", fromlist=["_"])
    return [f"d2f.{package}"] + [m.name for m in pkgutil.walk_packages(pkg.__path__, f"d2f.{package}.")
                                 if not m.name.endswith("__main__")]


def _loaded_d2f_packages(module: str) -> set[str]:
    code = ("import importlib, json, sys; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted({m.split('.')[1] for m in sys.modules if m.startswith('d2f.')})))")
    res = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return set(json.loads(res.stdout))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_module_imports_only_what_its_layer_may(package):
    # Importing every module at once in one interpreter: a module that imports a forbidden package at top
    # level shows up; the lazy imports inside functions are checked by the grep test below.
    mods = _modules(package)
    code = ("import importlib, json, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
            "print(json.dumps(sorted({m.split('.')[1] for m in sys.modules if m.startswith('d2f.')})))")
    res = subprocess.run([sys.executable, "-c", code, *mods], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert set(json.loads(res.stdout)) <= ALLOWED[package], mods


def test_the_engine_alone_loads_no_other_package():
    assert _loaded_d2f_packages("d2f.engine.engine") == {"engine"}
    assert _loaded_d2f_packages("d2f.engine.async_engine") == {"engine"}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_lazy_import_crosses_a_layer(package):
    """Imports inside functions load late, so the subprocess test cannot see them: read the source."""
    import ast
    from pathlib import Path

    root = Path(__import__(f"d2f.{package}", fromlist=["_"]).__path__[0])
    bad = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "d2f" and len(parts) > 1 and parts[1] not in ALLOWED[package]:
                    bad.append(f"{path.name}:{node.lineno} imports {name}")
                if parts[0] in ("engine", "server", "refurbish", "bench"):
                    bad.append(f"{path.name}:{node.lineno} imports {name} outside the d2f namespace")
    assert not bad, bad
    assert d2f.__name__ == "d2f"


def test_every_package_folder_is_installed():
    """pyproject lists packages one by one (the d2f namespace maps folders): a new subpackage not listed
    would be missing from the wheel and the Docker image while an editable install hides it."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {"d2f"}
    for folder in ("engine", "server", "refurbish", "bench"):
        for init in (root / folder).rglob("__init__.py"):
            on_disk.add(".".join(["d2f", *init.parent.relative_to(root).parts]))
    assert on_disk == listed
