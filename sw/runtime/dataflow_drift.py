"""A model whose activations' sparsity follows its inputs, for re-planning on drift (issue 14).

:func:`sensor_mlp` -- ``relu(x @ w1 + b1) @ w2 + b2``: the ``FEATURES`` inputs are ``SENSORS`` groups
of readings, and each group feeds only its own block of hidden units (``w1`` block-diagonal, positive)
behind a negative bias, so a sensor that reads (about) nothing leaves its hidden block all zero after
the ReLU -- whole K-blocks of the second product's input, which a zero-block-skipping GEMM
(:func:`~braze.sw.compiler.kernels.skipping_gemm`) branches over.  The batch axis is symbolic.

Input distributions (:func:`drift_inputs`): ``sparse`` -- only the first ``ACTIVE_SENSORS`` sensors
read a signal, the others a little noise below the bias (their hidden blocks stay zero); ``dense`` --
every sensor reads a signal.  Both draw readings from the same range, so one calibration (half of
each) covers both: a drift from one to the other changes the sparsity, not the value range.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from braze.isa.errors import BrazeError

__all__ = ["sensor_mlp", "drift_inputs", "drift_calibration", "DRIFT_DISTRIBUTIONS", "SENSORS", "FEATURES"]

SENSORS = 8
#: Readings per sensor.
PER_SENSOR = 8
FEATURES = SENSORS * PER_SENSOR
#: Hidden units per sensor: four K-blocks of the second product on the default preset's 8-row array.
HIDDEN_PER_SENSOR = 32
HIDDEN = SENSORS * HIDDEN_PER_SENSOR
OUTPUTS = 64
#: Sensors that read a signal under the ``sparse`` distribution.
ACTIVE_SENSORS = 2
DRIFT_DISTRIBUTIONS = ("sparse", "dense")
_BIAS = -0.5


def sensor_mlp(seed: int = 0) -> bytes:
    """The model as ONNX bytes (input ``x``: batch x :data:`FEATURES` float32; output ``y``)."""
    rng = np.random.default_rng(seed)
    w1 = np.zeros((FEATURES, HIDDEN), np.float32)
    for sensor in range(SENSORS):
        readings = slice(sensor * PER_SENSOR, (sensor + 1) * PER_SENSOR)
        hidden = slice(sensor * HIDDEN_PER_SENSOR, (sensor + 1) * HIDDEN_PER_SENSOR)
        w1[readings, hidden] = rng.uniform(0.1, 0.4, (PER_SENSOR, HIDDEN_PER_SENSOR))
    b1 = np.full(HIDDEN, _BIAS, np.float32)
    w2 = (rng.normal(size=(HIDDEN, OUTPUTS)) * 0.15).astype(np.float32)
    b2 = (rng.normal(size=OUTPUTS) * 0.1).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
             helper.make_node("Add", ["o", "b2"], ["y"])]
    inits = [numpy_helper.from_array(v, name) for name, v in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    graph = helper.make_graph(nodes, "sensor_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUTPUTS])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="braze-dataflow-drift")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def drift_inputs(distribution: str, runs: int, *, batch: int = 64,
                 seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``runs`` feeds of ``batch`` rows drawn from ``distribution`` (``sparse`` or ``dense``)."""
    if distribution not in DRIFT_DISTRIBUTIONS:
        raise BrazeError(f"drift distribution {distribution!r}: choose one of "
                         f"{', '.join(DRIFT_DISTRIBUTIONS)}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (runs, batch, FEATURES)).astype(np.float32)
    if distribution == "sparse":
        # Silent sensors: readings well below what their hidden units' bias lets through.
        x[:, :, ACTIVE_SENSORS * PER_SENSOR:] *= 0.05
    return [{"x": sample} for sample in x]


def drift_calibration(runs: int = 8, *, batch: int = 64, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Calibration feeds: half of each distribution (so the int8 ranges cover both)."""
    return (drift_inputs("sparse", runs - runs // 2, batch=batch, seed=seed)
            + drift_inputs("dense", runs // 2, batch=batch, seed=seed + 1))
