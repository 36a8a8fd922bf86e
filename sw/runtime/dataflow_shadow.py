"""Value ranges inside an accelerator partition: the float region evaluated on the host, on sampled runs.

A partition's boundary tensors are on the host anyway, and the analyzer checks them on every run.
Tensors inside a partition are int8 on the chip: when the inputs drift (dense after sparse-only
calibration, say) while staying in their own range, an activation inside can outgrow its
calibrated int8 range and saturate -- the answer is then that of the clamped value, with nothing at
a boundary to show it.  :class:`FloatShadow` evaluates the region's float model with onnxruntime
(every tensor that has an int8 counterpart ``<name>_q`` in the partition's quantized graph added as
an output) so that the analyzer can check those tensors against their int8 ranges on the runs it
samples; a value outside becomes a :class:`~.analyzer.ValueRangeWarning` naming the tensor.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime

from ..compiler.ir import Graph
from .partitions import Region

__all__ = ["FloatShadow"]


class FloatShadow:
    """The float ``region`` on the host, at the tensors ``graph`` (its quantized form) holds in int8."""

    def __init__(self, region: Region, quantized: Graph):
        self.region = region
        self.quant: dict[str, tuple[float, int]] = {}
        produced = [out for node in region.proto.graph.node for out in node.output if out]
        for tensor in [*region.inputs, *produced]:
            counterpart = f"{tensor}_q"
            quant = quantized.tensor(counterpart).quant if counterpart in quantized.tensors else None
            if quant is not None and not quant.per_channel:
                self.quant[tensor] = (float(quant.scale[0]), int(quant.zero_point[0]))
        inside = [t for t in self.quant if t not in region.inputs]
        model = onnx.ModelProto()
        model.CopyFrom(region.proto)
        graph = onnx.shape_inference.infer_shapes(model).graph
        infos = {info.name: info for info in [*graph.input, *graph.output, *graph.value_info]}
        outputs = {o.name for o in model.graph.output}
        model.graph.output.extend(infos[t] for t in inside if t not in outputs and t in infos)
        self._names = [o.name for o in model.graph.output]
        # One thread, no spinning: evaluated on the analyzer's thread, whose CPU time is what the analysis
        # is charged; a pool of onnxruntime workers would take cores from inference uncounted.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                     providers=["CPUExecutionProvider"])
        self.checked = [t for t in inside if t in self._names]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The float values of the checked tensors for the region's inputs ``feeds``."""
        values = dict(zip(self._names, self._session.run(None, {t: feeds[t] for t in self.region.inputs}),
                          strict=True))
        return {t: values[t] for t in self.checked}
