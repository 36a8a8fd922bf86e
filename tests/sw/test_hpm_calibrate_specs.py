"""Calibration kernels: fused convolution+max pooling, thin GEMMs and pools of small images are calibrated,
after the others."""

from __future__ import annotations

from braze.isa import Config
from braze.sw.hpm.calibrate import calibration_kernels
from braze.sw.hpm.features import kernel_family


def test_calibration_covers_fused_conv_pool_thin_gemms_and_small_pools_after_the_other_families():
    kernels = calibration_kernels(Config.preset("tiny"), count=40, tilings=False)
    families = [kernel_family(kernel) for kernel in kernels]
    # The conv_pool group's share, 10% of the count (the layout group, last, pools some more).
    pooled = [i for i, family in enumerate(families) if family == "conv2d+bias+requant+maxpool"][:4]
    assert all(kernels[i].tiling["pool"] == 2 for i in pooled)
    # The new groups come last (pooling, then thin GEMMs), so that a calibration recorded before they
    # existed draws its other kernels alike and resumes.
    tail = kernels[pooled[0]:]
    thin = tail[len(pooled):len(pooled) + 2]
    assert pooled == list(range(pooled[0], pooled[0] + len(pooled)))
    assert len(thin) == 2 and all(k.name == "gemm" and k.operands["A"].shape[0] <= 2
                                  and k.operands["A"].shape[1] >= 150 for k in thin)
    assert "residual" not in {name for k in thin for name in k.operands}
    assert {"gemm", "conv2d", "maxpool2d", "relu"} <= set(families[:pooled[0]])
    # The layout groups have nothing for tiny (see below); the pools of small images come last, in both
    # kinds (the group's share, 10% of the count).
    small = tail[len(pooled) + 2:]
    assert len(small) == 4
    assert {kernel_family(k) for k in small} == {"maxpool2d", "avgpool2d"}
    assert all(k.operands["x"].shape[1] <= 6 for k in small)


def test_calibration_never_draws_the_digits_cnn_fused_convolution():
    """64 images of 6x6 (the digits CNN's conv2, on which compare_plans judges the learned plan) stay out."""
    from braze.sw.hpm.calibrate import _conv_pool_specs

    specs = _conv_pool_specs(Config.preset("tiny"))
    assert any(spec.args[2] == 6 for spec in specs)
    assert not any(spec.args[0] == 64 and spec.args[2] == 6 for spec in specs)


def test_calibration_layout_specs_cover_every_layout_but_never_the_digits_cnns_convolutions():
    from braze.sw.hpm.calibrate import _conv_layout_specs

    assert _conv_layout_specs(Config.preset("tiny")) == []      # too slow to generate and run there
    specs = _conv_layout_specs(Config.preset("default"))
    assert {dict(spec.options)["layout"] for spec in specs} == {"rows", "pixels", "resident"}
    assert min(spec.args[0] for spec in specs) >= 8
    assert not any((spec.args[1], spec.args[2]) in {(1, 8), (8, 6)} for spec in specs)


def test_calibration_plain_layout_specs_have_no_epilogue_and_never_the_digits_cnns_convolutions():
    """The conv2d family sees every layout too (the fused families were the only ones that did)."""
    from braze.sw.hpm.calibrate import _plain_conv_layout_specs

    assert _plain_conv_layout_specs(Config.preset("tiny")) == []
    specs = _plain_conv_layout_specs(Config.preset("default"))
    assert {dict(spec.options)["layout"] for spec in specs} == {"rows", "pixels", "resident"}
    assert all(set(dict(spec.options)) == {"layout"} for spec in specs)
    assert not any((spec.args[1], spec.args[2]) in {(1, 8), (8, 6)} for spec in specs)
