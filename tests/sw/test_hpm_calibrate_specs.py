"""Calibration kernels: the fused convolution+max pooling family is calibrated, after the older groups."""

from __future__ import annotations

from braze.isa import Config
from braze.sw.hpm.calibrate import calibration_kernels
from braze.sw.hpm.features import kernel_family


def test_calibration_covers_fused_conv_pool_after_the_other_families():
    kernels = calibration_kernels(Config.preset("tiny"), count=100, tilings=False)
    families = [kernel_family(kernel) for kernel in kernels]
    pooled = [i for i, family in enumerate(families) if family == "conv2d+bias+requant+maxpool"]
    assert len(pooled) == 10                              # its share: 10% of the count
    # Last, so that a calibration recorded before the group existed draws its other kernels alike.
    assert pooled == list(range(len(kernels) - len(pooled), len(kernels)))
    assert all(kernels[i].tiling["pool"] == 2 for i in pooled)
    assert {"gemm", "conv2d", "maxpool2d", "relu"} <= set(families)
