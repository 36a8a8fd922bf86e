"""An ``onnx.backend.base.Backend`` over :class:`~braze.sw.runtime.session.InferenceSession`.

What runs where
---------------
The backend does not quantize float models (that needs calibration data the
ONNX backend API cannot pass): it runs what the accelerator computes
*exactly*, and the rest on the CPU.

* On the accelerator: the integer operators -- ``QLinearMatMul``,
  ``QLinearConv``, ``MatMulInteger``, ``ConvInteger``, and QDQ groups
  (``DequantizeLinear -> MatMul/Gemm/Conv -> QuantizeLinear``) -- when their
  weights, scales and zero points are constants, plus int8 ``MaxPool``,
  ``Relu`` and ``Clip``.  The backend makes them constants: the ONNX backend
  API gives a prepared model its inputs only at ``run``, so
  :meth:`BrazeBackendRep.run` freezes every graph input that feeds a weight,
  scale or zero-point operand of those operators into an initializer and
  compiles the model for those values (cached per value).
* On the CPU (:func:`braze.sw.compiler.frontend.evaluate` semantics): float
  operators (MatMul, Gemm, Conv, Add, Softmax, ...), Quantize/DequantizeLinear,
  integer operators whose weights are not int8 after subtracting their
  zero point, and (the backend sets ``allow_fallback=True``) operators the
  compiler does not support.

Models of opsets older than 13 are converted with ``onnx.version_converter``
first, as onnxruntime runs them too.

Devices: ``"CPU"`` (what onnx's test runner asks for) means the ``golden``
device, the accelerator's reference model running on the host; ``"golden"``,
``"amaranth"`` and ``"verilator"`` name a device directly.  The
configuration is ``default`` unless ``config=`` is passed to :meth:`prepare`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter
from onnx.backend.base import Backend, BackendRep

from ..compiler.frontend import MIN_OPSET
from ..compiler.quantize import QuantizationError
from .session import InferenceSession

__all__ = ["BrazeBackend", "BrazeBackendRep", "prepare", "run_model", "run_node", "supports_device",
           "PARAMETER_OPERANDS"]

#: Operand positions of the integer operators that are weights, scales or zero points (not activations).
PARAMETER_OPERANDS = {
    "QLinearMatMul": (1, 2, 3, 4, 5, 6, 7),
    "QLinearConv": (1, 2, 3, 4, 5, 6, 7, 8),
    "MatMulInteger": (1, 2, 3),
    "ConvInteger": (1, 2, 3),
    "QuantizeLinear": (1, 2),
    "DequantizeLinear": (1, 2),
}
_DEVICES = {"cpu": "golden", "golden": "golden", "amaranth": "amaranth", "verilator": "verilator"}


def _device_kind(device: str) -> str:
    kind = _DEVICES.get(str(device).split(":")[0].lower())
    if kind is None:
        raise ValueError(f"the Braze backend has no device {device!r}; devices are CPU (= golden), "
                         "golden, amaranth, verilator")
    return kind


def _frozen_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs used only as weight/scale/zero-point operands of integer operators."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    uses: dict[str, list[bool]] = {name: [] for name in inputs}
    for node in model.graph.node:
        positions = PARAMETER_OPERANDS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()
        for index, name in enumerate(node.input):
            if name in uses:
                uses[name].append(index in positions)
    return [name for name, flags in uses.items() if flags and all(flags)]


def _supported_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Models of opsets older than the compiler reads are converted (as onnxruntime would run them)."""
    opset = next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), None)
    if opset is None or opset >= MIN_OPSET:
        return model
    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception:          # the converter's errors are of many types; the compiler reports the opset
        return model


class BrazeBackendRep(BackendRep):
    """A prepared model: compiled on first :meth:`run` per frozen parameter values."""

    def __init__(self, model: onnx.ModelProto, device: str, **options: Any):
        options.setdefault("allow_fallback", True)
        # ONNX semantics: NaN and infinities are ordinary float inputs (the backend quantizes nothing).
        options.setdefault("nonfinite", "pass")
        model = _supported_opset(model)
        self.model = model
        self.device = _device_kind(device)
        self.options = options
        self.frozen = _frozen_inputs(model)
        initializers = {init.name for init in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in initializers]
        self.output_names = [o.name for o in model.graph.output]
        self._sessions: dict[str, InferenceSession] = {}
        self.last_session: InferenceSession | None = None

    def _session(self, feeds: Mapping[str, np.ndarray]) -> InferenceSession:
        digest = hashlib.sha256()
        for name in self.frozen:
            value = np.asarray(feeds[name])
            digest.update(name.encode() + value.dtype.str.encode() + repr(value.shape).encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        key = digest.hexdigest()
        if key not in self._sessions:
            try:
                self._sessions[key] = self._compile(feeds, self.frozen)
            except QuantizationError:
                # The integer operator cannot run on the array (weights minus their zero point leave
                # int8): keep its parameters as inputs, so that it stays a CPU operator.
                self._sessions[key] = self._compile(feeds, [])
        return self._sessions[key]

    def _compile(self, feeds: Mapping[str, np.ndarray], frozen: Sequence[str]) -> InferenceSession:
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        if frozen:
            keep = [i for i in model.graph.input if i.name not in frozen]
            del model.graph.input[:]
            model.graph.input.extend(keep)
            model.graph.initializer.extend(numpy_helper.from_array(np.asarray(feeds[name]), name)
                                           for name in frozen)
        session = InferenceSession(model, device=self.device, **self.options)
        session.frozen_inputs = list(frozen)
        return session

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, Mapping):
            feeds = dict(inputs)
        else:
            values = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            if len(values) != len(self.input_names):
                raise ValueError(f"the model has {len(self.input_names)} inputs {self.input_names}, "
                                 f"got {len(values)} values")
            feeds = dict(zip(self.input_names, values, strict=True))
        session = self._session(feeds)
        self.last_session = session
        live = {name: value if isinstance(value, list) or value is None else np.asarray(value)
                for name, value in feeds.items() if name not in session.frozen_inputs}
        return tuple(session.run(None, live))


class BrazeBackend(Backend):
    """Runs ONNX models through Braze (see the module documentation for what runs where)."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> BrazeBackendRep:
        super().prepare(model, device, **kwargs)
        return BrazeBackendRep(model, device, **kwargs)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any
                  ) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
                 **kwargs: Any) -> tuple[np.ndarray, ...]:
        """One node as a one-node model (opset ``opset_version``, default 17)."""
        opset = int(kwargs.pop("opset_version", 17))
        values = [np.asarray(v) for v in (inputs.values() if isinstance(inputs, Mapping) else inputs)]
        names = list(inputs) if isinstance(inputs, Mapping) else [n for n in node.input if n]
        graph_inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                        for name, v in zip(names, values, strict=True)]
        if outputs_info:
            graph_outputs = [
                helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)
                for name, (dtype, shape) in zip(node.output, outputs_info, strict=False)]
        else:
            # The output types come from ONNX shape inference on the node alone.
            probe = helper.make_model(helper.make_graph([node], "probe", graph_inputs, []),
                                      opset_imports=[helper.make_opsetid("", opset)])
            inferred = {info.name: info for info in onnx.shape_inference.infer_shapes(probe).graph.value_info}
            graph_outputs = [inferred.get(name)
                             or helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                             for name in node.output if name]
        graph = helper.make_graph([node], "run_node", graph_inputs, graph_outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        return cls.run_model(model, dict(zip(names, values, strict=True)), device, **kwargs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        try:
            _device_kind(device)
        except ValueError:
            return False
        return True


prepare = BrazeBackend.prepare
run_model = BrazeBackend.run_model
run_node = BrazeBackend.run_node
supports_device = BrazeBackend.supports_device
