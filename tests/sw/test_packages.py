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


def test_the_performance_model_never_imports_the_runtime():
    for path in sorted((SW / "hpm").rglob("*.py")):
        offending = {name for name in _imported_modules(path) if name.startswith("braze.sw.runtime")}
        assert not offending, f"{path.name} imports {offending}"


def _importers(package: str) -> dict[str, set[str]]:
    """Files that import ``braze.sw.<package>``, with what they import: the package itself and the
    command line (which loads it lazily, for its commands) aside."""
    root = SW.parent
    found = {}
    folders = ("isa", "hw", "sim", "sw", "braze")
    for path in sorted(p for folder in folders for p in (root / folder).rglob("*.py")):
        if package in path.relative_to(root).parts or path.name == "cli.py":
            continue
        offending = {name for name in _imported_modules(path) if name.startswith(f"braze.sw.{package}")}
        if offending:
            found[str(path)] = offending
    return found


def test_nothing_imports_the_fleet_package():
    assert _importers("fleet") == {}


def test_nothing_imports_the_dse_package_and_it_uses_hw_only_through_its_entry_points():
    assert _importers("dse") == {}
    hardware = {name for path in (SW / "dse").rglob("*.py") for name in _imported_modules(path)
                if name.startswith("braze.hw")}
    assert hardware == {"braze.hw.fpga", "braze.hw.fpga.synthesize", "braze.hw.fpga.array_area",
                        "braze.hw.rtl", "braze.hw.rtl.build"}
