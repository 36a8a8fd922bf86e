"""The DSE area estimate against the configurations synthesized for real."""

from __future__ import annotations

import copy
import json

import pytest

from braze.isa import Config
from braze.sw.dse.area import CALIBRATION_FILE, TERMS, AreaError, AreaModel, ecp5_brams


@pytest.fixture(scope="module")
def calibration():
    return json.loads(CALIBRATION_FILE.read_text())


def test_block_rams_follow_from_the_memories_alone(calibration):
    # Not fitted: every synthesized configuration's DP16KD count is its banks' geometry.
    assert len(calibration["synth"]) >= 5
    for point in calibration["synth"]:
        assert ecp5_brams(Config.from_dict(point["config"])) == point["brams"], point["config"]["name"]


def test_held_out_estimates_of_the_synthesized_configurations(calibration):
    rows = AreaModel(calibration).holdout()
    assert len(rows) == len(calibration["synth"])
    for row in rows:
        assert abs(row["dsps"][2]) <= 5.0, row
        assert abs(row["luts"][2]) < 20.0 and abs(row["ffs"][2]) < 20.0, row
    # Fitted on all of them, the DSPs are exact: one per PE, eight per column, two.
    model = AreaModel(calibration)
    for point in calibration["synth"]:
        config = Config.from_dict(point["config"])
        assert model.estimate(config).dsps == point["dsps"] == config.rows * config.cols + 8 * config.cols + 2


def test_the_fit_recovers_known_coefficients(calibration):
    # Calibration points made from known non-negative coefficients are fitted back exactly.
    made = copy.deepcopy(calibration)
    truth = {"luts": (5000, 30, 1200, 10), "ffs": (2000, 40, 700, 6), "dsps": (2, 1, 8)}
    values = {}
    for point in made["synth"]:
        config = Config.from_dict(point["config"])
        terms = {"one": 1, "pes": config.rows * config.cols, "cols": config.cols,
                 "bus_bits": config.dma_bus_bits}
        for resource, coefficients in truth.items():
            point[resource] = sum(c * terms[name]
                                  for c, name in zip(coefficients, TERMS[resource], strict=True))
        values[config.name] = point
    model = AreaModel(made)
    for name, point in values.items():
        estimate = model.estimate(Config.from_dict(point["config"]))
        assert (estimate.luts, estimate.ffs, estimate.dsps) == \
            (point["luts"], point["ffs"], point["dsps"]), name


def test_fit_and_fmax_come_from_the_calibration(calibration):
    model = AreaModel(calibration)
    tiny = model.estimate(Config.preset("tiny"))
    assert tiny.fits and tiny.fmax_mhz == min(run["fmax_mhz"] for run in calibration["pnr"])
    huge = model.estimate(Config.preset("default").replace(name="huge", rows=64, cols=64, spad_bytes=1 << 20))
    assert not huge.fits and huge.dsps > calibration["part_dsps"]
    assert "estimated, not measured" in model.fmax_basis


def test_a_calibration_without_enough_runs_is_refused(calibration):
    few = copy.deepcopy(calibration)
    few["synth"] = few["synth"][:2]
    with pytest.raises(AreaError, match="has 2 synthesized configurations"):
        AreaModel(few)
    broken = copy.deepcopy(calibration)
    del broken["pack"]
    with pytest.raises(AreaError, match="malformed"):
        AreaModel(broken)
    broken = copy.deepcopy(calibration)
    broken["pnr"] = []
    with pytest.raises(AreaError, match="no place-and-route run"):
        AreaModel(broken)
