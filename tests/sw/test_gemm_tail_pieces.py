"""The GEMM pipeline's lead-in and tail cuts with two MATMULs in flight (:attr:`Tiling.first_b_split`,
:attr:`Tiling.first_pair`, :attr:`Tiling.last_pieces`): exact results on the reference model (which
checks the token order at every access), and the library takes them only where the timing model
predicts them faster."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

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
