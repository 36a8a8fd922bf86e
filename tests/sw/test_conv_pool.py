"""Max pooling fused into the convolution kernel: bit-exact against two kernels, and a fusion candidate."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_models import conv_model

from braze.isa import Config
from braze.sim.device import open_device
from braze.sw.compiler import kernels as lib
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.cost import Cost, TimingCostModel
from braze.sw.compiler.kernels import KernelError, run_kernel
from braze.sw.runtime.session import InferenceSession

TINY = Config.preset("tiny")


@pytest.mark.parametrize("N, C, H, W, K_out, k, stride, pad, pool", [
    (2, 1, 8, 8, 8, 3, 1, 0, 2),      # C < rows
    (3, 8, 6, 6, 16, 3, 1, 0, 2),     # two column tiles
    (2, 3, 7, 7, 5, 3, 1, 1, 2),      # padding, odd output (its last row and column are not pooled)
    (1, 4, 9, 9, 4, 3, 2, 1, 2),      # strided convolution
    (2, 2, 8, 8, 3, 2, 1, 0, 3),      # 3x3 pooling of a 7x7 output
])
def test_fused_pooling_equals_convolution_then_maxpool(N, C, H, W, K_out, k, stride, pad, pool):
    rng = np.random.default_rng(N * 100 + C)
    plain = lib.conv2d(TINY, N, C, H, W, K_out, k, k, stride, pad, bias=True, requant=True, act="relu")
    _, Ho, Wo, _ = plain.operands["out"].shape
    pooling = lib.maxpool2d(TINY, N, K_out, Ho, Wo, pool, pool, pool, 0)
    fused = lib.conv2d(TINY, N, C, H, W, K_out, k, k, stride, pad, bias=True, requant=True, act="relu",
                       pool=pool)
    assert fused.operands["out"].shape == (N, Ho // pool, Wo // pool, K_out)
    assert fused.tiling["m"] % fused.tiling["align"] == 0        # M tiles of whole images
    x = rng.integers(-128, 128, (N, H, W, C), dtype=np.int8)
    weights = lib.conv2d_weights(TINY, rng.integers(-128, 128, (K_out, C, k, k), dtype=np.int8), plain)
    params = dict(bias=rng.integers(-30000, 30000, K_out).astype(np.int32),
                  mult=np.full(K_out, 1 << 14, np.int32), shift=np.full(K_out, 24, np.int32))
    with open_device("golden", TINY) as device:
        convolved = run_kernel(device, plain, {"x": x, "B": weights,
                                               "params": lib.pack_params(plain, **params)}).outputs["out"]
        expected = run_kernel(device, pooling, {"x": convolved}).outputs["out"]
        got = run_kernel(device, fused, {"x": x, "B": weights,
                                         "params": lib.pack_params(fused, **params)}).outputs["out"]
    assert np.array_equal(got, expected)
    assert len(np.unique(expected)) > 4          # not a saturated, constant output


def test_fused_pooling_refuses_what_it_cannot_do():
    with pytest.raises(KernelError, match="pool=0"):
        lib.conv2d(TINY, 1, 4, 8, 8, 4, 3, 3, pool=0, requant=True)
    with pytest.raises(KernelError, match="residual"):
        lib.conv2d(TINY, 1, 4, 8, 8, 4, 3, 3, pool=2, requant=True, residual=True)
    with pytest.raises(KernelError, match="does not fit"):
        lib.conv2d(TINY, 1, 4, 4, 4, 4, 3, 3, pool=3, requant=True)
    fused = lib.conv2d(TINY, 2, 4, 8, 8, 4, 3, 3, pool=2, requant=True)
    tiling = lib.candidate_tilings(fused)[0]
    assert all(t.m % fused.tiling["align"] == 0 for t in lib.candidate_tilings(fused))
    with pytest.raises(KernelError, match="not a multiple"):
        lib.conv2d(TINY, 2, 4, 8, 8, 4, 3, 3, pool=2, requant=True,
                   tiling=type(tiling)(**{**tiling.__dict__, "m": tiling.m - 1}))


class _FewestBytes(TimingCostModel):
    """Prices by external-memory bytes: the fused pooling, which never writes the unpooled output, wins."""

    def predict(self, candidate, config, *, energy=False):
        cost = super().predict(candidate, config, energy=energy)
        return Cost(cost.bytes, cost.bytes, cost.energy_pj)


def test_fused_pooling_in_a_model_gives_the_same_outputs():
    rng = np.random.default_rng(4)
    calibration = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
    x = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
    outputs, sessions = [], []
    for cost_model in (TimingCostModel(), _FewestBytes()):
        session = InferenceSession(conv_model(3), config="tiny", calibration=calibration,
                                   cache=KernelCache(disk=False), cost_model=cost_model)
        outputs.append(session.run(None, {"x": x})[0])
        sessions.append(session)
    pooled = [d for d in sessions[1].fusion_decisions if d.opportunity.kind == "conv_pool"]
    assert [d.chosen for d in pooled] == ["fused"]
    kernels = {row.kernel: row.ops for row in sessions[1].report().kernels}
    assert not any("maxpool" in name for name in kernels)                  # no separate pooling kernel
    assert any("pool1" in op for ops in kernels.values() for op in ops)     # it is in the convolution's
    assert np.array_equal(outputs[0], outputs[1])


def test_the_conv_pool_fusion_prices_the_fused_kernel_at_other_tilings_too():
    """The tiling pass retiles the fused kernel, so the decision prices it at the tilings it may get."""
    rng = np.random.default_rng(5)
    calibration = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
    session = InferenceSession(conv_model(3), config="tiny", calibration=calibration,
                               cache=KernelCache(disk=False), cost_model=TimingCostModel())
    session.run(None, {"x": calibration})
    (decision,) = [d for d in session.fusion_decisions if d.opportunity.kind == "conv_pool"]
    names = [name for name, _ in decision.candidates]
    assert names[:2] == ["separate", "fused"]
    variants = [name for name in names if name.startswith("fused, tiling ")]
    assert variants, names
    costs = dict(decision.candidates)
    assert all(costs[name].cycles != costs["fused"].cycles for name in variants)  # other kernels, priced
