"""onnxruntime as the reference for QDQ models: the model's own arithmetic, on any CPU.

By default onnxruntime's graph optimizer fuses every ``DequantizeLinear -> op -> QuantizeLinear``
group into an integer kernel (``QLinearMatMul``, ``QLinearConv``, ``QLinearSoftmax``, ...) and MLAS
picks that kernel by the CPU it runs on.  On x86-64 with AVX2 but no VNNI (AVX512-VNNI / AVX-VNNI),
the uint8 x int8 kernels multiply with ``VPMADDUBSW``, which adds each pair of u8*s8 products into a
*saturating* int16: 255*127*2 = 64770 is clipped to 32767, so an asymmetric (uint8) activation times
int8 weights can come out at half its value.  onnxruntime documents this ("Data type selection" in
its quantization guide).  The same model then gives different answers on different machines (the
attention block's uint8 variant: 13 output LSBs from Braze's evaluator on an AVX2-only CPU, within
3 on the machine where its test was written).

A reference must not depend on the machine, so Braze compares with onnxruntime's run of the model
as written (``ORT_DISABLE_ALL``, as the tests' ``run_ort`` already does): each DequantizeLinear,
float operator and QuantizeLinear on its own, exactly the ONNX semantics that Braze's compiler
implements, with no kernel chosen by the CPU's instruction set for the integer arithmetic.  On such
a run Braze's frontend evaluator of the QDQ model agrees with onnxruntime bit for bit on the
attention block and the zoo's transformer and mixer, and the zoo's CNNs to about one logit LSB (a
float Conv an ulp apart can round to the other side of a QuantizeLinear step).
(``session.x64quantprecision=1`` would keep the fused kernels and avoid the saturation on the zoo
models too; the unoptimized run needs no per-CPU knowledge.)
"""

from __future__ import annotations

import onnx


def qdq_reference_session(model: onnx.ModelProto | bytes | str, *, threads: int | None = 1):
    """An onnxruntime CPU session of ``model`` (a proto, its bytes or a path) that runs the model
    as written, unoptimized (see the module documentation); ``threads`` intra-op threads (None: ORT's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
