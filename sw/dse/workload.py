"""What a design space is explored for, and how one configuration's cycles and energy are predicted.

A :class:`Workload` is the digits CNN of the demo (``digits-cnn``), one GEMM (``gemm:MxKxN``) or
an ONNX model file.  For a configuration it compiles to kernels (on the golden device: nothing
runs), and :func:`predict` prices them:

* **cycles** from the hardware performance model (:mod:`braze.sw.hpm`): the learned model where
  it was trained for such kernels -- every kernel's features inside its training domain
  (:meth:`~braze.sw.hpm.PerformanceModel.outside_training`: array size, banks, bus, memory, kernel
  size and intensity) and its 10%..90% band narrower than 25% -- else the memory-aware analytic
  model it corrects (``analytic-mem``: the timing model with the DMA hand-offs and the memory's
  backpressure, :func:`braze.sw.hpm.features.memory_aware_cycles`).  The learned model's
  ``covers`` is by configuration *name* (the presets it was calibrated on), which no explored
  configuration has; its features, which include the configuration's sizes, are what say whether
  it knows a kernel.  The row says which was used.
* **energy** from the compiler's per-event table (:mod:`braze.sw.compiler.energy`, Horowitz 45 nm):
  exact event counts of the programs, dynamic energy only.

The plan (fusion, tiling) is the analytic cost model's, the same when a finalist is measured on a
device (:meth:`Workload.measure`), so that prediction and measurement are of one program.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from braze.isa import BrazeError, Config

__all__ = ["WorkloadError", "Workload", "parse_workload", "predict", "MAX_UNCERTAINTY"]

#: A learned prediction whose 10%..90% band is wider than this share of it is not used
#: (:class:`~braze.sw.hpm.LearnedCostModel`'s default too).
MAX_UNCERTAINTY = 0.25


class WorkloadError(BrazeError):
    """A workload that cannot be explored for (bad spec, unreadable model, no kernels)."""


@dataclasses.dataclass(frozen=True)
class Workload:
    """A workload: ``kind`` is ``digits-cnn``, ``gemm`` or ``onnx``; ``key`` names it in the store.

    For ``gemm``, ``shape`` is ``(M, K, N)``; for the models, ``model`` is the ONNX bytes,
    ``inputs`` the batch that runs and ``calibration`` what quantizes it.
    """

    kind: str
    key: str
    shape: tuple[int, int, int] | None = None
    model: bytes | None = dataclasses.field(default=None, repr=False)
    inputs: dict[str, np.ndarray] | None = dataclasses.field(default=None, repr=False)
    calibration: dict[str, np.ndarray] | None = dataclasses.field(default=None, repr=False)

    def _session(self, config: Config, device: Any):
        from braze.sw.runtime.session import InferenceSession

        return InferenceSession(self.model, device=device, config=config, calibration=self.calibration,
                                cost_model="analytic", record=False)

    def kernels(self, config: Config) -> list:
        """The kernels of one run of the workload compiled for ``config`` (nothing runs)."""
        from braze.sw.compiler import kernels as library

        try:
            if self.kind == "gemm":
                return [library.gemm(config, *self.shape, bias=True, requant=True)]
            session = self._session(config, "golden")
            try:
                session.compile_for({name: value.shape for name, value in self.inputs.items()})
                found = list(session.kernels.values())
            finally:
                session.close()
        except BrazeError as error:
            raise WorkloadError(f"{self.key} does not compile for {config.name}: {error}") from None
        if not found:
            raise WorkloadError(f"{self.key} has no accelerator kernels for {config.name}")
        return found

    def measure(self, device) -> int:
        """Cycles of one run on an open ``device`` (the sum of its kernels' counter snapshots)."""
        if self.kind == "gemm":
            from braze.sw.compiler import kernels as library
            from braze.sw.hpm.calibrate import random_inputs

            kernel = library.gemm(device.config, *self.shape, bias=True, requant=True)
            result = library.run_kernel(device, kernel, random_inputs(kernel, np.random.default_rng(0)))
            return int(result.counters["cycles"])
        session = self._session(device.config, device)
        session.run(None, self.inputs)
        return int(session.report().total_cycles)


def _digits_cnn(batch: int) -> Workload:
    from braze.sw.compiler import models

    data = models.load_digits_split()
    cnn, _ = models.train_cnn(data, seed=0)
    onnx_model = cnn.to_onnx()
    name = onnx_model.graph.input[0].name
    return Workload("digits-cnn", f"digits-cnn:batch={batch}", model=onnx_model.SerializeToString(),
                    inputs={name: cnn.inputs(data.x_val[:batch])},
                    calibration={name: models.calibration_set(cnn, data, seed=0)})


def _onnx_file(path: Path, batch: int) -> Workload:
    import onnx

    try:
        blob = path.read_bytes()
        model = onnx.load_model_from_string(blob)
    except (OSError, ValueError, onnx.onnx_cpp2py_export.checker.ValidationError) as error:
        raise WorkloadError(f"workload {path}: cannot read the ONNX model: {error}") from None
    except Exception as error:      # protobuf's DecodeError has no stable import path
        raise WorkloadError(f"workload {path}: not an ONNX model: {error}") from None
    initializers = {tensor.name for tensor in model.graph.initializer}
    rng = np.random.default_rng(0)
    inputs, calibration = {}, {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in value.type.tensor_type.shape.dim]
        # Timing does not depend on the values: random ones quantize and run like real ones.
        inputs[value.name] = rng.standard_normal(dims).astype(np.float32)
        calibration[value.name] = rng.standard_normal([max(dims[0], 16), *dims[1:]] if dims else []) \
            .astype(np.float32)
    digest = hashlib.sha256(blob).hexdigest()[:16]
    return Workload("onnx", f"onnx:{path.name}:{digest}:batch={batch}", model=blob, inputs=inputs,
                    calibration=calibration)


def parse_workload(text: str, *, batch: int = 8) -> Workload:
    """``digits-cnn``, ``gemm:MxKxN`` or the path of an ONNX model (``batch``: its symbolic batch size)."""
    text = text.strip()
    if batch < 1:
        raise WorkloadError(f"workload batch {batch} must be at least 1")
    if text == "digits-cnn":
        return _digits_cnn(batch)
    if text.startswith("gemm:"):
        match = re.fullmatch(r"gemm:(\d+)x(\d+)x(\d+)", text)
        if not match or min(int(g) for g in match.groups()) < 1:
            raise WorkloadError(f"workload {text!r}: a GEMM is gemm:MxKxN with positive M, K, N "
                                "(e.g. gemm:64x64x64)")
        m, k, n = (int(g) for g in match.groups())
        return Workload("gemm", f"gemm:{m}x{k}x{n}", shape=(m, k, n))
    path = Path(text)
    if path.suffix != ".onnx":
        raise WorkloadError(f"workload {text!r}: give digits-cnn, gemm:MxKxN or a MODEL.onnx file")
    if not path.is_file():
        raise WorkloadError(f"workload {text!r}: no such file")
    return _onnx_file(path, batch)


def predict(kernels: list, config: Config, model=None) -> dict[str, Any]:
    """Cycles (learned or ``analytic-mem``, see the module documentation) and energy of ``kernels``.

    Returns ``{"cycles", "predictor", "cycles_analytic_mem", "cycles_timing", "energy_uj", "kernels",
    "learned_note"}``; ``learned_note`` says why the learned model was not used, if it was not.
    """
    from braze.sw.compiler.energy import kernel_energy_estimate
    from braze.sw.hpm import MemorySystem, kernel_features

    memory = MemorySystem.nominal(config)
    features = [kernel_features(kernel, config, memory) for kernel in kernels]
    baseline = sum(float(f["baseline_cycles"]) for f in features)
    result: dict[str, Any] = {
        "cycles": baseline, "predictor": "analytic-mem", "cycles_analytic_mem": baseline,
        "cycles_timing": sum(int(kernel.predicted_cycles) for kernel in kernels),
        "energy_uj": sum(kernel_energy_estimate(kernel) for kernel in kernels) / 1e6,
        "kernels": len(kernels), "learned_note": "",
    }
    if model is None:
        result["learned_note"] = "no learned model"
        return result
    outside = sorted({name for f in features for name in model.outside_training(f)})
    if outside:
        result["learned_note"] = f"outside training: {', '.join(outside[:3])}"
        return result
    predictions = model.predict_features(features)
    widest = max(p.uncertainty for p in predictions)
    if widest > MAX_UNCERTAINTY:
        result["learned_note"] = f"uncertain (band {widest:.0%})"
        return result
    result["cycles"] = sum(p.cycles for p in predictions)
    result["predictor"] = "learned"
    return result

