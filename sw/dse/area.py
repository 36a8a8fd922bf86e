"""Area and Fmax of a configuration on an FPGA part: a fast estimate, calibrated on real tool runs.

Synthesis of one configuration takes minutes (Yosys ``synth_ecp5``: the tiny preset ~105 s, the
default ~200 s) and place and route tens of minutes (tiny on the ECP5-85F: 20 min), so an
exploration of dozens of configurations cannot run them.  :class:`AreaModel` estimates instead,
in microseconds, from what the configuration instantiates:

* **block RAMs** exactly from the memories' geometry: every scratchpad and accumulator bank is a
  ``depth x width`` memory (``spad_rows / spad_banks`` rows of ``8 * cols`` bits; accumulator rows
  of ``32 * cols`` bits) that Yosys tiles with DP16KDs in their best aspect ratio (16384x1 ...
  512x32 data bits) -- nothing is fitted;
* **DSPs, LUTs and flip-flops** as non-negative linear combinations of the structures that scale:
  the processing elements (``rows * cols``), the per-column datapath (epilogue, accumulator ports:
  ``cols``) and the DMA's data path (``bus_bits``), with coefficients fitted (non-negative least
  squares) on the configurations synthesized for real (:data:`CALIBRATION_FILE`: the tiny and
  default presets from ``braze bench fpga``'s runs, the others made with :func:`synthesize`;
  ``braze bench dse --synthesize`` synthesizes the finalists and prints the estimate's error on them);
* **Fmax** from place and route, the only source of it: one run of the current hardware so far (the
  tiny preset on the ECP5-85F, 42.3 MHz), whose critical path is the instruction fetch and
  decoder's range check (before that the epilogue's requantizer, 42.9 MHz): logic whose depth
  does not depend on rows, cols, memories or bus.  The estimate is that Fmax for every
  configuration: it cannot rank configurations by clock until more place-and-route runs calibrate
  how routing congestion lowers it; :attr:`AreaModel.fmax_basis` says so in every report;
* **fit** on the ECP5-85F: nextpnr packs Yosys's LUT4s and carry chains into slices; the measured
  ratio of packed LUTs to Yosys LUT4s (:data:`CALIBRATION_FILE`'s ``pack``) converts.

:meth:`AreaModel.holdout` measures the estimate honestly: each synthesized configuration predicted
by a model fitted on the others.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from braze.isa import BrazeError, Config

__all__ = ["AreaError", "AreaEstimate", "AreaModel", "CALIBRATION_FILE", "ecp5_brams", "synthesize",
           "TERMS"]

#: The synthesis, packing and place-and-route runs the estimate is calibrated on.
CALIBRATION_FILE = Path(__file__).resolve().parent / "area_calibration.json"
#: DP16KD aspect ratios (depth, data width) Yosys maps ECP5 memories to.  The x9/x18/x36 modes' ninth
#: bits go unused: with the x36 mode as 36 data bits, the 512-bit accumulator banks of 8x16 would take
#: 15 blocks, and Yosys uses 16 (the synthesized 8x16 configuration has 64 DP16KDs, not 62).
_DP16KD_MODES = ((16384, 1), (8192, 2), (4096, 4), (2048, 8), (1024, 16), (512, 32))
#: The structures each fitted resource scales with (a constant first).
TERMS: dict[str, tuple[str, ...]] = {
    "luts": ("one", "pes", "cols", "bus_bits"),
    "ffs": ("one", "pes", "cols", "bus_bits"),
    "dsps": ("one", "pes", "cols"),
}


class AreaError(BrazeError):
    """The area model cannot be built (a missing or malformed calibration, too few points)."""


@dataclasses.dataclass(frozen=True)
class AreaEstimate:
    """Estimated resources of one configuration on the calibration's part, and its Fmax."""

    luts: int
    ffs: int
    dsps: int
    brams: int
    fmax_mhz: float
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _blocks(depth: int, width: int) -> int:
    return min(math.ceil(depth / d) * math.ceil(width / w) for d, w in _DP16KD_MODES)


def ecp5_brams(config: Config) -> int:
    """DP16KD blocks of the scratchpad and accumulator banks (see the module documentation)."""
    spad = config.spad_banks * _blocks(config.spad_rows // config.spad_banks, 8 * config.cols)
    acc = config.acc_banks * _blocks(config.acc_rows // config.acc_banks, 32 * config.cols)
    return spad + acc


def _terms(config: Config, names: Sequence[str]) -> np.ndarray:
    values = {"one": 1.0, "pes": float(config.rows * config.cols), "cols": float(config.cols),
              "bus_bits": float(config.dma_bus_bits)}
    return np.array([values[name] for name in names])


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    return nnls(x, y)[0]


class AreaModel:
    """The fitted estimate (see the module documentation).

    Parameters
    ----------
    calibration : dict, optional
        ``{"target", "part_luts", "part_ffs", "part_dsps", "part_brams", "synth": [...], "pack": [...],
        "pnr": [...]}``; :data:`CALIBRATION_FILE`'s by default.
    """

    def __init__(self, calibration: dict[str, Any] | None = None):
        if calibration is None:
            try:
                calibration = json.loads(CALIBRATION_FILE.read_text())
            except (OSError, ValueError) as error:
                raise AreaError(f"area calibration {CALIBRATION_FILE} cannot be read: {error}") from None
        self.calibration = calibration
        try:
            self.target = calibration["target"]
            self.points = [(Config.from_dict(point["config"]), point) for point in calibration["synth"]]
            pack = calibration["pack"]
            self.pack_ratio = float(np.mean([p["packed_luts"] / p["yosys_luts"] for p in pack]))
            pnr = calibration["pnr"]
        except (KeyError, TypeError, ZeroDivisionError) as error:
            raise AreaError(f"area calibration is malformed: missing or bad {error}") from None
        if len(self.points) < max(len(terms) for terms in TERMS.values()):
            raise AreaError(f"area calibration has {len(self.points)} synthesized configurations; the "
                            f"estimate needs at least {max(len(t) for t in TERMS.values())}")
        if not pnr:
            raise AreaError("area calibration has no place-and-route run: no Fmax to estimate from")
        self.fmax_mhz = float(min(run["fmax_mhz"] for run in pnr))
        runs = "; ".join(f"{run['config']} place and route ({run['critical_path']})" for run in pnr)
        self.fmax_basis = (f"Fmax estimated, not measured: {self.fmax_mhz:.1f} MHz for every configuration, "
                           f"from {runs}")
        self.coefficients = {resource: self._fit(resource, self.points) for resource in TERMS}

    @staticmethod
    def _fit(resource: str, points: Sequence[tuple[Config, dict]]) -> np.ndarray:
        x = np.array([_terms(config, TERMS[resource]) for config, _ in points])
        y = np.array([float(point[resource]) for _, point in points])
        return _nnls(x, y)

    def _resource(self, resource: str, config: Config,
                  coefficients: dict[str, np.ndarray] | None = None) -> int:
        coefficients = coefficients or self.coefficients
        return int(round(float(_terms(config, TERMS[resource]) @ coefficients[resource])))

    def estimate(self, config: Config) -> AreaEstimate:
        """Resources, Fmax and fit of ``config`` on the calibration's part."""
        parts = self.calibration
        luts, ffs, dsps = (self._resource(name, config) for name in ("luts", "ffs", "dsps"))
        brams = ecp5_brams(config)
        fits = (luts * self.pack_ratio <= parts["part_luts"] and ffs <= parts["part_ffs"]
                and dsps <= parts["part_dsps"] and brams <= parts["part_brams"])
        return AreaEstimate(luts, ffs, dsps, brams, self.fmax_mhz, fits)

    def holdout(self) -> list[dict[str, Any]]:
        """Each synthesized configuration estimated by a model fitted on the others: per resource the
        measured value, the estimate and its error in percent."""
        rows = []
        for i, (config, point) in enumerate(self.points):
            others = self.points[:i] + self.points[i + 1:]
            coefficients = {resource: self._fit(resource, others) for resource in TERMS}
            row: dict[str, Any] = {"config": config.name}
            for resource in (*TERMS, "brams"):
                estimate = ecp5_brams(config) if resource == "brams" else \
                    self._resource(resource, config, coefficients)
                measured = int(point[resource])
                row[resource] = (measured, estimate, 100.0 * (estimate - measured) / max(measured, 1))
            rows.append(row)
        return rows


def holdout_table(rows: list[dict[str, Any]]) -> str:
    """:meth:`AreaModel.holdout` as a text table, with the mean absolute error per resource."""
    resources = (*TERMS, "brams")
    lines = ["config".ljust(24) + "".join(f"{name + ' meas/est/err':>26}" for name in resources)]
    for row in rows:
        lines.append(row["config"].ljust(24) + "".join(
            f"{row[name][0]:>9} {row[name][1]:>7} {row[name][2]:+7.1f}%" for name in resources))
    means = [np.mean([abs(row[name][2]) for row in rows]) for name in resources]
    lines.append("mean |error|".ljust(24) + "".join(f"{mean:>25.1f}%" for mean in means))
    return "\n".join(lines)


def synthesize(config: Config, target: str = "ecp5-85k", out_dir: Path | None = None) -> dict[str, Any]:
    """Synthesize ``config`` for real (minutes; cached by the FPGA flow) and return a calibration point.

    Calls the hardware package's public entry points only (:func:`braze.hw.rtl.build` for the
    Verilog, :func:`braze.hw.fpga.synthesize` for Yosys), the one place design-space exploration
    uses the hardware package: its estimate is otherwise data.
    """
    import tempfile

    from braze.hw.fpga import synthesize as fpga_synthesize
    from braze.hw.rtl import build

    with tempfile.TemporaryDirectory(prefix="braze-dse-synth-") as scratch:
        rtl = build(config, Path(out_dir or scratch), lint=False)
        result = fpga_synthesize(rtl.verilog, rtl.manifest, target)
    return {"config": config.to_dict(), "luts": result["luts"], "ffs": result["ffs"], "dsps": result["dsps"],
            "brams": result["brams"], "seconds": result["seconds"]}
