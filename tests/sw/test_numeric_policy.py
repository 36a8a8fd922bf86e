"""Numeric policy (issue 10, defect 4): NaN and infinities are an error unless clamping is asked for,
calibration data must be finite, and a float model without calibration says what runs on the CPU."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_models import conv_model, make_model

from braze import cli
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.quantize import CalibrationError
from braze.sw.runtime.session import InferenceSession, InputError, UncalibratedModelWarning

CALIBRATION = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
X = np.random.default_rng(1).normal(size=(2, 1, 8, 8)).astype(np.float32)


def _session(**options) -> InferenceSession:
    return InferenceSession(conv_model(3), config="tiny", calibration=CALIBRATION,
                            cache=KernelCache(disk=False), **options)


def test_nonfinite_inputs_are_an_error_by_default():
    session = _session()
    finite = session.run(None, {"x": X})[0]
    for bad in (np.nan, np.inf, -np.inf):
        x = X.copy()
        x[1, 0, 2, 5] = bad
        with pytest.raises(InputError, match=r"input 'x' has non-finite values: .*index \(1, 0, 2, 5\)"):
            session.run(None, {"x": x})
    assert np.array_equal(session.run(None, {"x": X})[0], finite)     # the session still works


def test_clamping_is_explicit_and_means_nan_to_zero_and_inf_to_the_extremes():
    x = X.copy()
    x[0, 0, 0, 0], x[0, 0, 1, 1], x[1, 0, 3, 3] = np.nan, np.inf, -np.inf
    clamped = _session(nonfinite="clamp").run(None, {"x": x})[0]
    assert np.isfinite(clamped).all()
    by_hand = x.copy()
    big = np.finfo(np.float32).max
    by_hand[0, 0, 0, 0], by_hand[0, 0, 1, 1], by_hand[1, 0, 3, 3] = 0.0, big, -big
    assert np.array_equal(clamped, _session().run(None, {"x": by_hand})[0])
    with pytest.raises(Exception, match="nonfinite='maybe'"):
        _session(nonfinite="maybe")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_calibration_data_is_an_error(bad):
    calibration = CALIBRATION.copy()
    calibration[1, 0, 4, 4] = bad
    with pytest.raises(CalibrationError, match=r"calibration input 'x' \(set 0\).*index \(1, 0, 4, 4\)"):
        InferenceSession(conv_model(3), config="tiny", calibration=calibration, cache=KernelCache(disk=False))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_calibration_that_overflows_inside_the_model_is_an_error():
    """Finite inputs, but a tensor computed from them is infinite: its range quantizes nothing."""
    w = np.ones((4, 3), np.float32)
    model = make_model([helper.make_node("Mul", ["x", "big"], ["h"], name="scale_up"),
                        helper.make_node("MatMul", ["h", "w"], ["y"], name="mm")],
                       [("x", np.float32, [2, 4])], [("y", np.float32, [2, 3])],
                       [("big", np.float32(3e38)), ("w", w)], name="overflow")
    with pytest.raises(CalibrationError, match="tensor 'h' .* non-finite values"):
        InferenceSession(model, config="tiny", calibration=np.full((2, 4), 2, np.float32),
                         cache=KernelCache(disk=False))


def test_a_float_model_without_calibration_names_the_ops_on_the_cpu():
    names = r"3 operator\(s\) the accelerator runs in int8 run on the CPU instead: conv1 \(Conv\), " \
            r"conv2 \(Conv\), fc \(Gemm\)"
    with pytest.warns(UncalibratedModelWarning, match=names):
        InferenceSession(conv_model(3), config="tiny", cache=KernelCache(disk=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncalibratedModelWarning)
        _session()                                       # calibrated: every op is on the accelerator


def test_the_command_line_follows_the_policy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BRAZE_CACHE_DIR", str(tmp_path / "cache"))
    onnx.save(conv_model(3), tmp_path / "conv.onnx")
    np.save(tmp_path / "calib.npy", CALIBRATION)
    x = X.copy()
    x[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    run = ["run", str(tmp_path / "conv.onnx"), "--config", "tiny", "--input", str(tmp_path / "nan.npy")]
    assert cli.main([*run, "--calibrate", str(tmp_path / "calib.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("braze run: error: input 'x' has non-finite values") and len(err.splitlines()) == 1
    assert cli.main([*run, "--calibrate", str(tmp_path / "calib.npy"), "--nonfinite", "clamp"]) == 0
    capsys.readouterr()
    np.save(tmp_path / "calib_nan.npy", x)
    assert cli.main([*run, "--calibrate", str(tmp_path / "calib_nan.npy")]) == 2
    assert "calibration input 'x' (set 0) has 1 NaN" in capsys.readouterr().err
    assert cli.main([*run[:-2], "--input", str(tmp_path / "calib.npy")]) == 0       # no calibration
    err = capsys.readouterr().err
    assert err.startswith("braze run: warning: model 'convnet' is a float model and no calibration")
    assert len(err.splitlines()) == 1
