"""Design-space exploration: which configuration of the accelerator suits a workload.

* :mod:`.space` -- the space (``rows=4..32,cols=4..32,spad_kib=16..256,bus_bits=64..256``) mapped
  onto :class:`~braze.isa.Config` and validated against its rules;
* :mod:`.workload` -- the workload (digits CNN, a GEMM, an ONNX model) and its predicted cycles
  (the learned performance model where it knows the kernels, the memory-aware analytic model
  otherwise) and energy;
* :mod:`.area` -- area and Fmax on an FPGA part: a fast estimate calibrated on real synthesis and
  place-and-route runs, with its held-out error;
* :mod:`.pareto` -- objectives, the Pareto front, finalists;
* :mod:`.explore` -- parallel evaluation on Dask, a grid or optuna's multi-objective TPE sampler,
  results in the performance history (resumable), finalists confirmed on a device;
* :mod:`.report` -- table and plot; :mod:`.cli` -- ``braze dse``; :mod:`.bench` -- ``braze bench dse``.

The package uses :mod:`braze.sw.compiler`, :mod:`braze.sw.runtime` and :mod:`braze.sw.hpm`, the
simulators' device interface, and, to calibrate its area estimate only, the hardware package's
public entry points (:func:`braze.hw.rtl.build`, :func:`braze.hw.fpga.synthesize`).  Nothing else
imports it.
"""

from .area import AreaEstimate, AreaModel
from .explore import DseError, Evaluated, Exploration, confirm, dask_client, explore
from .pareto import OBJECTIVES, ObjectiveError, pareto_front, parse_objectives, pick_finalists
from .space import Space, SpaceError, parse_space
from .workload import Workload, WorkloadError, parse_workload, predict

__all__ = [
    "Space", "SpaceError", "parse_space",
    "Workload", "WorkloadError", "parse_workload", "predict",
    "AreaModel", "AreaEstimate",
    "OBJECTIVES", "ObjectiveError", "parse_objectives", "pareto_front", "pick_finalists",
    "DseError", "Evaluated", "Exploration", "explore", "confirm", "dask_client",
]
