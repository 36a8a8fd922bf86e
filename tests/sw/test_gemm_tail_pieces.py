"""The GEMM pipeline's lead-in and tail cuts with two MATMULs in flight (:attr:`Tiling.first_b_split`,
:attr:`Tiling.first_pair`, :attr:`Tiling.last_pieces`): exact results on the reference model (which
checks the token order at every access), and the library takes them only where the timing model
predicts them faster."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_kernels import conv_reference

from braze.isa import Activation, Config, Memory
from braze.isa.arith import epilogue
from braze.sim.device import open_device
from braze.sw.compiler import kernels
from braze.sw.compiler.kernels.matmul import Tiling

OVERLAP = Config.parse("default:weight_preload=1,epilogue_overlap=1,matmul_overlap=1,store_ahead=1,"
                       "name=default_overlap")
EPILOGUE = dict(bias=True, requant=True, act="relu", out="int8")


def _tiling(kernel) -> Tiling:
    return Tiling(**{field.name: kernel.tiling[field.name] for field in dataclasses.fields(Tiling)})


def _exact(kernel, M: int, K: int, N: int, seed: int) -> bool:
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, size=(M, K), dtype=np.int8)
    b = rng.integers(-128, 128, size=(K, N), dtype=np.int8)
    bias, mult = rng.integers(-5000, 5000, size=N), rng.integers(1 << 13, 1 << 15, size=N)
    shift = np.full(N, 20)
    params = kernels.pack_params(kernel, bias=bias, mult=mult, shift=shift)
    with open_device("golden", kernel.config) as device:
        result = kernels.run_kernel(device, kernel, {"A": a, "B": b, "params": params})
    want = epilogue(a.astype(np.int64) @ b.astype(np.int64), bias=bias, mult=mult, shift=shift,
                    act=Activation.RELU, out=Memory.SPAD)
    return bool(np.array_equal(result.outputs["out"], want))


@pytest.mark.parametrize(("shape", "split", "pieces", "pair"), [
    ((64, 64, 64), True, 4, False), ((40, 48, 20), True, 3, False), ((16, 16, 16), False, 2, False),
    ((96, 24, 8), True, 8, False), ((64, 64, 64), False, 4, True), ((24, 40, 20), False, 1, True),
    ((100, 30, 70), False, 2, True)])
def test_forced_cuts_give_exact_results(shape, split, pieces, pair):
    M, K, N = shape
    chosen = _tiling(kernels.gemm(OVERLAP, M, K, N, **EPILOGUE))
    forced = dataclasses.replace(chosen, first_b_split=split, last_pieces=pieces, first_pair=pair)
    kernel = kernels.gemm(OVERLAP, M, K, N, **EPILOGUE, tiling=forced)
    plain = kernels.gemm(OVERLAP, M, K, N, **EPILOGUE, tiling=dataclasses.replace(
        chosen, first_b_split=False, last_pieces=1, first_pair=False))
    # The cuts change the program (more LOADs, or more MATMULs, EPILOGUEs and STOREs of fewer rows).
    assert len(kernel.instructions) > len(plain.instructions)
    assert _exact(kernel, M, K, N, seed=sum(shape))


def test_the_library_cuts_the_tail_where_predicted_faster():
    kernel = kernels.gemm(OVERLAP, 64, 64, 64, **EPILOGUE)
    chosen = _tiling(kernel)
    uncut = kernels.gemm(OVERLAP, 64, 64, 64, **EPILOGUE, tiling=dataclasses.replace(
        chosen, first_b_split=False, last_pieces=1, first_pair=False))
    assert chosen.last_pieces > 1                 # default 64^3: the last tile in pieces is faster
    assert kernel.predicted_cycles < uncut.predicted_cycles
    assert _exact(kernel, 64, 64, 64, seed=1)
    # Without two MATMULs in flight each piece would pay the array's fill and drain: never cut.
    one_in_flight = Config.parse("default:weight_preload=1,epilogue_overlap=1,matmul_overlap=0")
    serial = kernels.gemm(one_in_flight, 64, 64, 64, **EPILOGUE)
    assert (serial.tiling["first_b_split"], serial.tiling["last_pieces"], serial.tiling["first_pair"]) == (
        False, 1, False)


def test_first_pair_of_a_pixel_major_convolution_is_exact():
    """The pair's first A chunk loads in two parts of rows.  A pixel-major tile's rows are (pixel, image):
    its parts are the tile's LOADs divided at a row (here within a pixel's LOAD of 4 images), not the LOADs
    of fewer images (which gave the quantized resnet18 of test_zoo.py wrong logits)."""
    N, C, H, W, K_out, k, pad = 8, 8, 4, 4, 24, 3, 1
    options = dict(bias=True, requant=True, act="relu", layout="pixels")
    chosen = _tiling(kernels.conv2d(OVERLAP, N, C, H, W, K_out, k, k, 1, pad, **options))
    forced = dataclasses.replace(chosen.uncut(), m=4 * H * W, first_pair=True)     # two tiles of 4 images
    kernel = kernels.conv2d(OVERLAP, N, C, H, W, K_out, k, k, 1, pad, **options, tiling=forced)
    assert kernel.tiling["pixel_major"] == H * W
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, (N, H, W, C), dtype=np.int8)
    w = rng.integers(-128, 128, (K_out, C, k, k), dtype=np.int8)
    params = dict(bias=rng.integers(-3000, 3000, K_out), mult=np.full(K_out, 1 << 14),
                  shift=np.full(K_out, 22))
    inputs = {"x": x, "B": kernels.conv2d_weights(OVERLAP, w, kernel),
              "params": kernels.pack_params(kernel, **params)}
    with open_device("golden", OVERLAP) as device:
        got = kernels.run_kernel(device, kernel, inputs).outputs["out"]
    want = epilogue(conv_reference(x, w, 1, pad), act=Activation.RELU, out=Memory.SPAD, **params)
    assert len(np.unique(want)) > 4
    np.testing.assert_array_equal(got, want)


def test_the_pair_is_tried_where_its_third_c_slot_fits():
    # 864 rows in two M tiles of 432: the two C slots fill 864 of the 1024 accumulator rows, no room for a
    # third (the pair was tried all the same, and its KernelError stopped the compile).
    wide = kernels.conv2d(OVERLAP, 24, 8, 6, 6, 32, 3, 3, 1, 1, **EPILOGUE, layout="rows")
    assert wide.tiling["m"] == 432 and not wide.tiling["first_pair"]
    kernel = kernels.gemm(OVERLAP, 64, 64, 64, **EPILOGUE)
    assert kernel.tiling["first_pair"]
    assert _exact(kernel, 64, 64, 64, seed=2)
