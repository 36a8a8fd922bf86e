"""The layout of ``sw/``: the packages' public APIs and their layering."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest

import braze
import braze.sw.compiler as compiler
import braze.sw.runtime as runtime

SW = Path(__file__).resolve().parents[2] / "sw"


@pytest.mark.parametrize("package", [compiler, runtime], ids=lambda p: p.__name__)
def test_public_names_are_defined_in_the_package(package):
    for name in package.__all__:
        value = getattr(package, name)
        assert value.__module__.startswith(f"{package.__name__}."), (name, value.__module__)


def test_functions_named_like_their_modules_stay_functions():
    import braze.sw.compiler.lower  # noqa: F401  (binds the submodules on the package)
    import braze.sw.compiler.quantize  # noqa: F401
    import braze.sw.compiler.validate  # noqa: F401
    from braze.sw.compiler import lower, quantize, validate

    for function in (lower, quantize, validate):
        assert isinstance(function, types.FunctionType), function


def test_session_is_the_same_class_everywhere():
    from braze.sw.runtime.session import InferenceSession

    assert braze.InferenceSession is runtime.InferenceSession is InferenceSession


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, relative imports resolved against its package."""
    package = ["braze", *path.relative_to(SW.parent).parts[:-1]]          # braze.sw.compiler
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_compiler_never_imports_the_runtime():
    assert "braze.sw.compiler.lower" in _imported_modules(SW / "compiler" / "fusion.py")
    assert "braze.sw.compiler.lower" in _imported_modules(SW / "runtime" / "session.py")
    for path in sorted((SW / "compiler").rglob("*.py")):
        offending = {name for name in _imported_modules(path) if name.startswith("braze.sw.runtime")}
        assert not offending, f"{path.name} imports {offending}"


def test_nothing_imports_the_fleet_package():
    root = SW.parent
    folders = ("isa", "hw", "sim", "sw", "braze")
    for path in sorted(p for folder in folders for p in (root / folder).rglob("*.py")):
        if "fleet" in path.relative_to(root).parts or path.name == "cli.py":
            continue        # the package itself; the command line loads it lazily, for its commands
        offending = {name for name in _imported_modules(path) if name.startswith("braze.sw.fleet")}
        assert not offending, f"{path} imports {offending}"
