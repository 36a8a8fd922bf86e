"""The fusion engine's zero-block-skipping candidate (issue 13): a sparse ReLU -> GEMM takes it, priced at
the profiled zero-block fraction; a dense or barely sparse one does not."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_models import make_model

from braze.isa.errors import BrazeError
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.frontend import evaluate
from braze.sw.compiler.lower import KernelStep
from braze.sw.runtime.session import InferenceSession

ROWS, HIDDEN, OUT = 64, 64, 32


def sparse_mlp(dead: int, seed: int = 0):
    """``relu(x @ w1 + b1) @ w2`` whose last ``dead`` hidden units never fire (whole K-blocks of the
    second product's input are zero, as after a ReLU with dead units)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(HIDDEN, HIDDEN)).astype(np.float32) * 0.2
    b1 = np.full(HIDDEN, 0.5, np.float32)
    if dead:
        w1[:, -dead:] = -np.abs(w1[:, -dead:])
        b1[-dead:] = -5.0
    w2 = rng.normal(size=(HIDDEN, OUT)).astype(np.float32) * 0.2
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    return make_model(nodes, [("x", np.float32, [ROWS, HIDDEN])], [("y", np.float32, [ROWS, OUT])],
                      [("w1", w1), ("b1", b1), ("w2", w2)])


def _inputs(seed: int, count: int = 1):
    rng = np.random.default_rng(seed)
    return [{"x": np.abs(rng.normal(size=(ROWS, HIDDEN))).astype(np.float32)} for _ in range(count)]


def _session(dead: int, device: str = "golden", **options) -> InferenceSession:
    return InferenceSession(sparse_mlp(dead), device=device, calibration=_inputs(1, 2), skip_zero_blocks=True,
                            cache=KernelCache(disk=False), **options)


def _skipping_steps(session: InferenceSession) -> list:
    return [step for step in session.compiled.steps
            if isinstance(step, KernelStep) and step.kernel.name == "skipping_gemm"]


@pytest.mark.parametrize("device", ["golden", "verilator"])
def test_a_sparse_relu_gemm_takes_the_skipping_kernel_bit_exactly(device):
    # Three quarters of the hidden units dead: with the presets' overlapped MATMULs the plain kernel is fast
    # enough that at half dead skipping is still taken but gains only 4% (75%: 23%, 88%: 34%).
    session = _session(3 * HIDDEN // 4, device)
    try:
        skips = [d for d in session.fusion_decisions if d.opportunity.kind == "skip"]
        assert len(skips) == 1 and skips[0].chosen.startswith("skip zero blocks (75% zero)")
        assert skips[0].gain > 0.15 and "predicted gain" in str(skips[0])
        (step,) = _skipping_steps(session)
        # Priced at the profiled fraction: cheaper than the library's kernel the decision weighed.
        assert step.kernel.predicted_cycles < skips[0].candidates[0][1].cycles
        for feeds in _inputs(7, 2):
            (y,) = session.run(None, feeds)
            assert np.array_equal(y, evaluate(session.graph_before, feeds)["y"])
        rows = {row.kernel: row for row in session.report().kernels}
        assert any("skipping_gemm" in name and row.cycles > 0 for name, row in rows.items())
    finally:
        session.close()


def test_a_dense_profile_offers_no_skipping_kernel():
    session = _session(0)
    assert not [d for d in session.fusion_decisions if d.opportunity.kind == "skip"]
    assert not _skipping_steps(session)
    (feeds,) = _inputs(3)
    (y,) = session.run(None, feeds)
    assert np.array_equal(y, evaluate(session.graph_before, feeds)["y"])


def test_a_little_sparsity_is_priced_and_refused():
    session = _session(8)                       # one K-block of eight zero: the test costs more than it saves
    (skip,) = [d for d in session.fusion_decisions if d.opportunity.kind == "skip"]
    assert skip.chosen == "separate" and skip.gain == 0.0
    (separate, plain), (_, skipping) = skip.candidates
    assert separate == "separate" and skipping.cycles > plain.cycles
    assert not _skipping_steps(session)


def test_skipping_needs_calibration_data():
    with pytest.raises(BrazeError, match="skip_zero_blocks=True needs calibration data"):
        InferenceSession(sparse_mlp(32), skip_zero_blocks=True)
