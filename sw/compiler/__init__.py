"""The compiler: an ONNX model to placed, linked Braze kernels.

Modules, in pipeline order:

* :mod:`.frontend` — ONNX import (:func:`load_onnx`) and the numpy reference interpreter;
* :mod:`.ir` — the graph IR (:class:`Graph`);
* :mod:`.passes` — graph-to-graph simplification; :mod:`.validate` — the IR's validity check;
* :mod:`.profile` — tensor profiles of calibration inputs; :mod:`.quantize` — int8 quantization;
* :mod:`.fusion` — the fusion engine, priced by a :mod:`.cost` model (:class:`CostModel`);
* :mod:`.tiling` — each GEMM/convolution's tiling chosen by that cost model (:func:`choose_tilings`);
* :mod:`.lower` — a fused graph to a :class:`CompiledModel`;
* :mod:`.kernels` — the kernel library; :mod:`.cache` — the kernel cache (:class:`KernelCache`);
* :mod:`.macs` — the multiply-accumulates of a graph's matrix operators (:func:`~.macs.count_macs`);
* :mod:`.models` — the demo's and the tests' model builders (trained on scikit-learn's digits).

The compiler never imports :mod:`braze.sw.runtime`, which runs what it compiles.

``conv2d`` here is the kernel constructor (:func:`.kernels.conv2d`), not the reference
interpreter's :func:`.frontend.conv2d`; ``validate``, ``quantize`` and ``lower`` are the functions
(their modules are ``braze.sw.compiler.validate`` etc., as in ``from .validate import X``).
"""

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
from .tiling import TilingDecision, choose_tilings
from .validate import validate

__all__ = [
    "load_onnx", "evaluate", "ModelLoadError", "UnsupportedOperator",
    "Graph", "Node", "NodeKind", "TensorInfo", "InvalidGraph",
    "simplify", "validate", "profile_graph", "quantize", "QuantizationError",
    "fuse", "Cost", "CostModel", "TimingCostModel", "choose_tilings", "TilingDecision",
    "lower", "CompiledModel", "LoweringError",
    "Kernel", "KernelError", "Tiling", "gemm", "conv2d", "maxpool2d", "avgpool2d", "global_avgpool",
    "add", "relu", "clip", "link", "run_kernel", "run_kernels",
    "KernelCache", "default_cache",
]
