"""The runtime: compiled models run on a Braze device.

* :mod:`.session` — :class:`InferenceSession`, compile and run in onnxruntime's manner;
* :mod:`.runtime` — :class:`Runtime`, which executes a compiled model's plan on a device;
* :mod:`.backend` — :class:`BrazeBackend`, an ``onnx.backend`` backend over sessions;
* :mod:`.bench` — ``braze bench model``;
* :mod:`.dataflow` — :class:`~.dataflow.DataflowSession`, a data-dependent model (If, TopK routing) as
  partitions re-planned from the :mod:`.analyzer`'s statistics (:mod:`.partitions`,
  :mod:`.dataflow_models`, ``braze bench dataflow``).

The runtime imports :mod:`braze.sw.compiler`; never the reverse.
"""

from .backend import BrazeBackend
from .dataflow import DataflowSession
from .runtime import KernelReport, RunReport, Runtime
from .session import InferenceSession, InputError

__all__ = ["InferenceSession", "InputError", "Runtime", "RunReport", "KernelReport", "BrazeBackend",
           "DataflowSession"]
