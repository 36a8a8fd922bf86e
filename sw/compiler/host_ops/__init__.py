"""Braze's own numpy implementations of ONNX operators: the host side of every model.

:func:`braze.sw.compiler.frontend.evaluate` runs a graph with these; constant folding,
calibration and every CPU step of a compiled model use them too.  Each implementation is a
function ``(node, *inputs) -> array or tuple of arrays`` with ONNX semantics for opset 13 and
newer (attributes that moved to inputs in later opsets are read from either place), registered by
operator name (``"braze.QMatMul"`` for Braze's own domain).  One module per operator family:

* :mod:`.elementwise` -- arithmetic, comparison, logic, bitwise, math functions, activations, casts;
* :mod:`.reduce` -- reductions, arg-max/min, cumulative sums, top-k, softmax and its relatives;
* :mod:`.tensor` -- shape arithmetic and data movement (reshape, slice, gather, scatter, pad, ...);
* :mod:`.nn` -- convolution, pooling, normalization, resize, attention, losses, einsum;
* :mod:`.signal` -- DFT and window functions;
* :mod:`.quant` -- ONNX's quantized operators and Braze's own (``domain="braze"``);
* :mod:`.control` -- ``If``, ``Loop`` and ``Scan``, their subgraphs run by the same evaluator;
* :mod:`.sequence` -- sequences (Python lists of arrays) and optionals (``None`` when empty).

Nothing here calls onnx's ``ReferenceEvaluator`` or onnxruntime: :data:`OPS` is what Braze runs
by itself.  Operators outside it reach the CPU only through the opt-in fallback
(``load_onnx(allow_fallback=True)``), which is never counted as support.
"""

from __future__ import annotations

from . import control, elementwise, nn, quant, recurrent, reduce, sequence, signal, tensor  # noqa: F401,E402  (registers the ops)
from ._registry import OPS, EvaluationError, register, unsupported_reason
from .nn import conv2d, conv_pads
from .quant import ACTIVATIONS, braze_epilogue

__all__ = ["OPS", "EvaluationError", "register", "unsupported_reason", "conv2d", "conv_pads",
           "braze_epilogue", "ACTIVATIONS"]
