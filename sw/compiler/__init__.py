"""The compiler: an ONNX model to placed, linked Braze kernels.

Modules, in pipeline order:

* :mod:`.frontend` — ONNX import (:func:`load_onnx`) and the numpy reference interpreter;
* :mod:`.ir` — the graph IR (:class:`Graph`);
* :mod:`.passes` — graph-to-graph simplification; :mod:`.validate` — the IR's validity check;
* :mod:`.profile` — tensor profiles of calibration inputs; :mod:`.quantize` — int8 quantization;
* :mod:`.fusion` — the fusion engine, priced by a :mod:`.cost` model (:class:`CostModel`);
* :mod:`.lower` — a fused graph to a :class:`CompiledModel`;
* :mod:`.kernels` — the kernel library; :mod:`.cache` — the kernel cache (:class:`KernelCache`);
* :mod:`.models` — the demo's and the tests' model builders (trained on scikit-learn's digits).

The compiler never imports :mod:`braze.sw.runtime`, which runs what it compiles.

The names below are imported on first use: the frontend and the passes pull in onnx and
networkx, which the kernel library alone does not need.  ``conv2d`` here is the kernel
constructor (:func:`.kernels.conv2d`), not the reference interpreter's :func:`.frontend.conv2d`.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cache import KernelCache, default_cache
    from .cost import Cost, CostModel, TimingCostModel
    from .frontend import ModelLoadError, UnsupportedOperator, evaluate, load_onnx
    from .fusion import fuse
    from .ir import Graph, InvalidGraph, Node, NodeKind, TensorInfo
    from .kernels import (
        Kernel,
        KernelError,
        Tiling,
        add,
        avgpool2d,
        clip,
        conv2d,
        gemm,
        global_avgpool,
        link,
        maxpool2d,
        relu,
        run_kernel,
        run_kernels,
    )
    from .lower import CompiledModel, LoweringError, lower
    from .passes import simplify
    from .profile import profile_graph
    from .quantize import QuantizationError, quantize
    from .validate import validate

__all__ = [
    "load_onnx", "evaluate", "ModelLoadError", "UnsupportedOperator",
    "Graph", "Node", "NodeKind", "TensorInfo", "InvalidGraph",
    "simplify", "validate", "profile_graph", "quantize", "QuantizationError",
    "fuse", "Cost", "CostModel", "TimingCostModel",
    "lower", "CompiledModel", "LoweringError",
    "Kernel", "KernelError", "Tiling", "gemm", "conv2d", "maxpool2d", "avgpool2d", "global_avgpool",
    "add", "relu", "clip", "link", "run_kernel", "run_kernels",
    "KernelCache", "default_cache",
]

#: Public name -> the module that defines it (the names of ``__all__``).
_EXPORTS = {name: module for module, names in {
    "frontend": ("load_onnx", "evaluate", "ModelLoadError", "UnsupportedOperator"),
    "ir": ("Graph", "Node", "NodeKind", "TensorInfo", "InvalidGraph"),
    "passes": ("simplify",),
    "validate": ("validate",),
    "profile": ("profile_graph",),
    "quantize": ("quantize", "QuantizationError"),
    "fusion": ("fuse",),
    "cost": ("Cost", "CostModel", "TimingCostModel"),
    "lower": ("lower", "CompiledModel", "LoweringError"),
    "kernels": ("Kernel", "KernelError", "Tiling", "gemm", "conv2d", "maxpool2d", "avgpool2d",
                "global_avgpool", "add", "relu", "clip", "link", "run_kernel", "run_kernels"),
    "cache": ("KernelCache", "default_cache"),
}.items() for name in names}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``validate``, ``quantize`` and ``lower`` the functions once their modules are imported.

    Importing a submodule binds it on its package under its own name, which would shadow the
    function of the same name that the module exports.  The package keeps the function, as an
    ``__init__`` that ran ``from .validate import validate`` eagerly would.
    """

    def __setattr__(self, name: str, value) -> None:
        if (isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name
                and value.__name__ == f"{self.__name__}.{name}"):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
