"""The kernel library on the golden device, against numpy and braze.isa.arith.

The reference model raises RACE for any unordered pair of accesses and DEADLOCK for a bad token
order, so every run here that completes also shows the kernel is race-free and deadlock-free.
"""

import itertools
from fractions import Fraction

import numpy as np
import pytest

from braze.isa import SNAPSHOT_BYTES, Activation, Config, ConfigReg, Memory, Opcode, parse_snapshot
from braze.isa.arith import INT8_MAX, INT8_MIN, epilogue, round_shift
from braze.isa.asm import assemble
from braze.isa.timing import schedule
from braze.sim.device import open_device
from braze.sw.compiler import kernels as K

TINY = Config.preset("tiny")
DEFAULT = Config.preset("default")
LARGE = Config.preset("large")


def int8(rng, shape):
    return rng.integers(INT8_MIN, INT8_MAX + 1, size=shape, dtype=np.int8)


def epilogue_operands(rng, n, *, bias, requant):
    values = {}
    if bias:
        values["bias"] = rng.integers(-5000, 5000, size=n)
    if requant:
        values["mult"] = rng.integers(1 << 13, 1 << 15, size=n)
        values["shift"] = rng.integers(12, 20, size=n)
    return values


def run_gemm(config, M, Kd, N, *, seed, bias=False, requant=False, residual=False, act="none", clip=None,
             out_zp=0, out="int8", tiling=None):
    rng = np.random.default_rng(seed)
    kernel = K.gemm(config, M, Kd, N, bias=bias, requant=requant, residual=residual, act=act, clip=clip,
                    out_zp=out_zp, out=out, tiling=tiling)
    a, b = int8(rng, (M, Kd)), int8(rng, (Kd, N))
    params = epilogue_operands(rng, N, bias=bias, requant=requant)
    inputs = {"A": a, "B": b}
    if params:
        inputs["params"] = K.pack_params(kernel, **params)
    res = int8(rng, (M, N)) if residual else None
    if residual:
        inputs["residual"] = res
    with open_device("golden", config) as device:
        result = K.run_kernel(device, kernel, inputs)
    lo, hi = clip if clip is not None else (0, 0)
    expected = epilogue(a.astype(np.int64) @ b.astype(np.int64), residual=res,
                        act=Activation[act.upper()] if isinstance(act, str) else act,
                        out=Memory.ACC if out == "int32" else Memory.SPAD, out_zp=out_zp, clip_lo=lo,
                        clip_hi=hi, **params)
    return kernel, result, expected


# ---------------------------------------------------------------------------------------------------------
# GEMM

EPILOGUE_COMBINATIONS = list(itertools.product([False, True], [False, True], [False, True],
                                               ["none", "relu", "clip"], ["int8", "int32"]))


@pytest.mark.parametrize("bias, requant, residual, act, out", EPILOGUE_COMBINATIONS)
def test_gemm_every_epilogue_combination(bias, requant, residual, act, out):
    index = EPILOGUE_COMBINATIONS.index((bias, requant, residual, act, out))
    rng = np.random.default_rng(index)
    config = TINY if index % 2 else DEFAULT
    # Shapes that are not multiples of the array, the tiles or each other.
    M, Kd, N = (int(v) for v in rng.integers(1, 40, size=3))
    clip = (int(rng.integers(-100, 0)), int(rng.integers(0, 100))) if act == "clip" else None
    out_zp = int(rng.integers(-20, 20)) if requant else 0
    kernel, result, expected = run_gemm(config, M, Kd, N, seed=index, bias=bias, requant=requant,
                                        residual=residual, act=act, clip=clip, out_zp=out_zp, out=out)
    got = result.outputs["out"]
    assert got.dtype == expected.dtype and got.shape == (M, N)
    np.testing.assert_array_equal(got, expected)
    assert result.counters["macs"] == M * N * Kd == kernel.macs


@pytest.mark.parametrize("config, shape", [
    (TINY, (1, 1, 1)), (TINY, (37, 50, 9)), (TINY, (130, 17, 23)), (TINY, (5, 300, 6)),
    (DEFAULT, (100, 70, 33)), (DEFAULT, (300, 24, 17)), (DEFAULT, (9, 200, 130)),
    (LARGE, (90, 100, 45)), (LARGE, (300, 40, 70)),
])
def test_gemm_random_shapes(config, shape):
    M, Kd, N = shape
    _, result, expected = run_gemm(config, M, Kd, N, seed=M * Kd + N, bias=True, requant=True, act="relu",
                                   out_zp=3)
    np.testing.assert_array_equal(result.outputs["out"], expected)


@pytest.mark.parametrize("tiling", [
    # Small M tiles; an A ring one tile plus three chunks long, so MATMULs wrap around it.
    K.Tiling(m=7, a_slots=13, b_resident=False, params_resident=False, first_pieces=3),
    K.Tiling(m=16, a_slots=10, b_resident=True, params_resident=False, first_pieces=10),
    K.Tiling(m=5, a_slots=20, b_resident=False, params_resident=True, first_pieces=1),
])
def test_gemm_forced_tilings(tiling):
    """Streamed B and parameters, wrapping A rings and split MATMULs are exact too."""
    _, result, expected = run_gemm(TINY, 45, 40, 13, seed=7, bias=True, requant=True, residual=True,
                                   act="clip", clip=(-50, 60), tiling=tiling)
    np.testing.assert_array_equal(result.outputs["out"], expected)


def test_a_clip_to_the_int8_range_is_no_activation():
    """A clip to [-128, 127] (or wider) before an int8 output is the saturation itself: the kernel is the
    one without an activation (no CLIP CONFIGs), still exact against the reference clip; into int32 it
    clips."""
    kernel, result, expected = run_gemm(TINY, 9, 8, 8, seed=3, bias=True, requant=True, out_zp=-128,
                                        act="clip", clip=(-128, 127))
    np.testing.assert_array_equal(result.outputs["out"], expected)
    def words(built):
        return [insn.to_bytes() for insn in built.instructions]
    assert words(kernel) == words(K.gemm(TINY, 9, 8, 8, bias=True, requant=True, out_zp=-128))
    assert words(K.gemm(TINY, 9, 8, 8, act="clip", clip=(-200, 300))) == words(K.gemm(TINY, 9, 8, 8))
    narrower = K.gemm(TINY, 9, 8, 8, bias=True, requant=True, out_zp=-128, act="clip", clip=(-127, 127))
    wide_int32 = K.gemm(TINY, 9, 8, 8, act="clip", clip=(-128, 127), out="int32")
    for clipping in (narrower, wide_int32):
        assert any(insn.opcode is Opcode.CONFIG and insn.args["reg"] is ConfigReg.CLIP_LO
                   for insn in clipping.instructions)


@pytest.mark.parametrize("tiling", [
    # K in blocks of 3 chunks through a ring of 7 slots (blocks wrap), N tiles in groups of 2 of 4.
    K.Tiling(m=9, a_slots=7, b_resident=False, params_resident=False, k_block=12, n_group=2),
    K.Tiling(m=20, a_slots=20, b_resident=False, params_resident=True, k_block=40, n_group=3, buffers=1),
    K.Tiling(m=45, a_slots=2, b_resident=False, params_resident=False, k_block=4, n_group=2),
])
def test_gemm_streamed_k_blocks(tiling):
    """A streamed in K blocks, accumulated by MATMUL over the blocks, for groups of N tiles."""
    _, result, expected = run_gemm(TINY, 45, 70, 13, seed=11, bias=True, requant=True, residual=True,
                                   act="relu", tiling=tiling)
    np.testing.assert_array_equal(result.outputs["out"], expected)


def test_gemm_with_k_beyond_the_scratchpad():
    """K = 3000 needs 6000 rows for two whole B tiles, more than tiny's 1024: K is blocked."""
    kernel, result, expected = run_gemm(TINY, 30, 3000, 9, seed=2, requant=True, out="int32")
    assert kernel.tiling["k_block"] > 0
    np.testing.assert_array_equal(result.outputs["out"], expected)


def test_gemm_int32_output_without_epilogue_is_the_plain_product():
    kernel, result, expected = run_gemm(DEFAULT, 20, 30, 12, seed=3, out="int32")
    assert not any(insn.opcode is Opcode.EPILOGUE for insn in kernel.instructions)
    np.testing.assert_array_equal(result.outputs["out"], expected)


def test_gemm_kernel_describes_itself():
    kernel = K.gemm(DEFAULT, 40, 50, 20, bias=True, requant=True, residual=True, addrs={"B": 0x20000},
                    base=0x100)
    ops = kernel.operands
    assert ops["B"].addr == 0x20000
    assert ops["A"].addr == 0x100 and ops["A"].shape == (40, 50) and ops["A"].dtype == np.dtype("i1")
    assert ops["params"].shape == (3, 20) and kernel.param_rows == ("bias", "mult", "shift")
    assert ops["out"].role == "output" and ops["residual"].role == "input"
    spans = sorted((op.addr, op.end) for op in ops.values())
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
    # The assembly text is the program.
    assert assemble(kernel.asm) == kernel.instructions
    assert kernel.instructions[-1].opcode is Opcode.COUNTERS and kernel.instructions[-1].reset
    assert kernel.instructions[-1].dram == ops["counters"].addr
    assert kernel.predicted_cycles == schedule(kernel.program(), DEFAULT).cycles


def test_predicted_cycles_are_the_golden_devices():
    kernel, result, _ = run_gemm(DEFAULT, 64, 64, 64, seed=1, bias=True)
    assert result.cycles == kernel.predicted_cycles


def test_gemm_double_buffering_overlaps_loads_with_compute():
    kernel = K.gemm(DEFAULT, 128, 128, 128, bias=True, requant=True, act="relu")
    timing = schedule(kernel.program(), DEFAULT)
    busy = sum(timing.busy.values())
    assert timing.cycles < busy
    loads = [e for e in timing.entries if e.insn.opcode is Opcode.LOAD]
    matmuls = [e for e in timing.entries if e.insn.opcode is Opcode.MATMUL]
    stores = [e for e in timing.entries if e.insn.opcode is Opcode.STORE]

    def overlaps(a, b):
        return a.start < b.end and b.start < a.end

    assert sum(any(overlaps(load, mm) for mm in matmuls) for load in loads) >= len(loads) // 2
    assert sum(any(overlaps(store, mm) for mm in matmuls) for store in stores) >= len(stores) // 2


def test_gemm_256_cubed_utilisation_on_default():
    """Useful-MAC utilisation from the model's counters: at least 90%."""
    M = Kd = N = 256
    kernel, result, expected = run_gemm(DEFAULT, M, Kd, N, seed=0, bias=True, requant=True, act="relu")
    np.testing.assert_array_equal(result.outputs["out"], expected)
    counters = result.counters
    utilisation = counters["macs"] / (counters["cycles"] * DEFAULT.rows * DEFAULT.cols)
    assert counters["macs"] == M * N * Kd
    assert utilisation >= 0.90, f"256^3 GEMM utilisation {utilisation:.3f}"
    assert K.utilisation(counters, DEFAULT) == utilisation


def test_gemm_rejects_bad_arguments():
    with pytest.raises(K.KernelError, match="M must be a positive integer"):
        K.gemm(TINY, 0, 4, 4)
    with pytest.raises(K.KernelError, match="act must be one of"):
        K.gemm(TINY, 4, 4, 4, act="gelu")
    with pytest.raises(K.KernelError, match=r"needs clip=\(lo, hi\)"):
        K.gemm(TINY, 4, 4, 4, act="clip")
    with pytest.raises(K.KernelError, match="requant"):
        K.gemm(TINY, 4, 4, 4, out_zp=3)
    with pytest.raises(K.KernelError, match="unknown operand"):
        K.gemm(TINY, 4, 4, 4, addrs={"C": 0})
    with pytest.raises(K.KernelError, match="overlap"):
        K.gemm(TINY, 4, 4, 4, addrs={"A": 0x100, "B": 0x108})
    with pytest.raises(K.KernelError, match="external memory"):
        K.gemm(TINY, 4, 4, 4, base=TINY.dram_bytes - 8)
    kernel = K.gemm(TINY, 4, 4, 4, bias=True)
    with pytest.raises(K.KernelError, match="does not use mult"):
        K.pack_params(kernel, bias=np.zeros(4), mult=np.ones(4))
    with pytest.raises(K.KernelError, match=r"shape \(4,\)"):
        K.pack_params(kernel, bias=np.zeros(5))


# ---------------------------------------------------------------------------------------------------------
# Convolution

def conv_reference(x, w, stride, pad):
    """int64 NHWC convolution of OIHW weights with zero padding, written tap by tap."""
    n, h, width, c = x.shape
    k_out, _, kh, kw = w.shape
    padded = np.zeros((n, h + 2 * pad, width + 2 * pad, c), dtype=np.int64)
    padded[:, pad:pad + h, pad:pad + width] = x
    ho, wo = (h + 2 * pad - kh) // stride + 1, (width + 2 * pad - kw) // stride + 1
    out = np.zeros((n, ho, wo, k_out), dtype=np.int64)
    for ky in range(kh):
        for kx in range(kw):
            window = padded[:, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride]
            out += window @ w[:, :, ky, kx].T.astype(np.int64)
    return out


@pytest.mark.parametrize("config, dims, options", [
    (TINY, (1, 3, 6, 5, 5, 3, 3, 1, 1), dict(bias=True, act="relu")),
    (TINY, (2, 6, 7, 7, 9, 3, 3, 2, 1),
     dict(bias=True, requant=True, residual=True, act="clip", clip=(-40, 90))),
    (TINY, (1, 4, 5, 9, 3, 2, 3, 1, 0), dict(out="int32")),
    (TINY, (1, 150, 4, 5, 6, 3, 3, 1, 1), dict(bias=True, act="relu")),     # K = 1368: A streamed in K blocks
    (DEFAULT, (2, 3, 8, 8, 8, 1, 1, 1, 0), dict(requant=True, out_zp=-4)),
    (DEFAULT, (1, 20, 9, 11, 12, 3, 3, 2, 1), dict(bias=True, requant=True, act="relu")),
    (DEFAULT, (1, 8, 12, 12, 16, 5, 5, 1, 2), dict(bias=True, residual=True, out="int32")),
    (LARGE, (1, 17, 10, 10, 20, 3, 3, 1, 1), dict(bias=True, requant=True, act="relu")),
])
def test_conv2d(config, dims, options):
    N, C, H, W, k_out, kh, kw, stride, pad = dims
    rng = np.random.default_rng(sum(dims))
    kernel = K.conv2d(config, N, C, H, W, k_out, kh, kw, stride, pad, **options)
    x, w = int8(rng, (N, H, W, C)), int8(rng, (k_out, C, kh, kw))
    ho, wo = K.conv2d_output_shape(H, W, kh, kw, stride, pad)
    params = epilogue_operands(rng, k_out, bias=options.get("bias", False),
                               requant=options.get("requant", False))
    inputs = {"x": x, "B": K.conv2d_weights(config, w, kernel)}
    if params:
        inputs["params"] = K.pack_params(kernel, **params)
    residual = int8(rng, (N, ho, wo, k_out)) if options.get("residual") else None
    if residual is not None:
        inputs["residual"] = residual
    with open_device("golden", config) as device:
        result = K.run_kernel(device, kernel, inputs)
    lo, hi = options.get("clip", (0, 0))
    expected = epilogue(conv_reference(x, w, stride, pad), residual=residual,
                        act=Activation[options.get("act", "none").upper()],
                        out=Memory.ACC if options.get("out") == "int32" else Memory.SPAD,
                        out_zp=options.get("out_zp", 0), clip_lo=lo, clip_hi=hi, **params)
    assert result.outputs["out"].shape == (N, ho, wo, k_out)
    np.testing.assert_array_equal(result.outputs["out"], expected)
    assert result.counters["macs"] == kernel.macs


def test_conv2d_gathers_patches_with_strided_loads():
    """No host im2col: the only operand read besides weights and params is the NHWC input itself."""
    kernel = K.conv2d(DEFAULT, 1, 8, 6, 6, 8, 3, 3, 1, 1)
    x = kernel.operands["x"]
    loads = [insn for insn in kernel.instructions if insn.opcode is Opcode.LOAD and not insn.zero]
    gathers = [insn for insn in loads if x.addr <= insn.dram < x.end]
    assert gathers and all(insn.stride == 8 for insn in gathers if insn.rows > 1)
    assert any(insn.zero for insn in kernel.instructions if insn.opcode is Opcode.LOAD)   # padding
    assert assemble(kernel.asm) == kernel.instructions


# ---------------------------------------------------------------------------------------------------------
# Pooling

def pool_reference(x, kh, kw, stride, pad):
    """Per output pixel: max over the window's pixels inside the input, their sum and count."""
    n, h, w, c = x.shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    maxima = np.full((n, ho, wo, c), np.iinfo(np.int64).min)
    sums = np.zeros((n, ho, wo, c), dtype=np.int64)
    counts = np.zeros((ho, wo), dtype=np.int64)
    for oy, ox, ky, kx in itertools.product(range(ho), range(wo), range(kh), range(kw)):
        iy, ix = oy * stride + ky - pad, ox * stride + kx - pad
        if 0 <= iy < h and 0 <= ix < w:
            maxima[:, oy, ox] = np.maximum(maxima[:, oy, ox], x[:, iy, ix])
            sums[:, oy, ox] += x[:, iy, ix]
            counts[oy, ox] += 1
    return maxima, sums, counts


def scaled_average(sums, divisors):
    mult, shift = np.vectorize(K.avg_multiplier)(divisors)
    return np.clip(round_shift(sums * mult, shift), INT8_MIN, INT8_MAX)


POOL_CASES = [
    (TINY, (2, 6, 7, 7, 3, 3, 2, 1)),
    (TINY, (1, 5, 6, 9, 2, 3, 1, 1)),
    (DEFAULT, (1, 12, 8, 8, 2, 2, 2, 0)),
    (DEFAULT, (2, 20, 9, 7, 3, 3, 2, 1)),
    (LARGE, (1, 33, 6, 6, 3, 3, 1, 1)),
]


@pytest.mark.parametrize("config, dims", POOL_CASES)
def test_maxpool2d(config, dims):
    N, C, H, W, kh, kw, stride, pad = dims
    x = int8(np.random.default_rng(sum(dims)), (N, H, W, C))
    with open_device("golden", config) as device:
        result = K.run_kernel(device, K.maxpool2d(config, N, C, H, W, kh, kw, stride, pad), {"x": x})
    np.testing.assert_array_equal(result.outputs["out"], pool_reference(x, kh, kw, stride, pad)[0])


@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("config, dims", POOL_CASES)
def test_avgpool2d(config, dims, count_include_pad):
    N, C, H, W, kh, kw, stride, pad = dims
    x = int8(np.random.default_rng(sum(dims)), (N, H, W, C))
    kernel = K.avgpool2d(config, N, C, H, W, kh, kw, stride, pad, count_include_pad=count_include_pad)
    with open_device("golden", config) as device:
        result = K.run_kernel(device, kernel, {"x": x})
    _, sums, counts = pool_reference(x, kh, kw, stride, pad)
    divisors = np.full_like(counts, kh * kw) if count_include_pad else counts
    expected = scaled_average(sums, divisors[None, :, :, None])
    np.testing.assert_array_equal(result.outputs["out"], expected)
    # Within one of the exact mean: the multiplier is a close approximation of 1/divisor.
    assert np.abs(expected - sums / divisors[None, :, :, None]).max() <= 1


@pytest.mark.parametrize("config, dims", [
    (TINY, (2, 15, 15, 6)),       # 225 pixels: more than one block of the tiny accumulator
    (DEFAULT, (3, 7, 7, 20)),
    (LARGE, (1, 4, 5, 40)),
])
def test_global_avgpool(config, dims):
    N, H, W, C = dims
    x = int8(np.random.default_rng(sum(dims)), (N, H, W, C))
    with open_device("golden", config) as device:
        result = K.run_kernel(device, K.global_avgpool(config, N, H, W, C), {"x": x})
    sums = x.astype(np.int64).sum(axis=(1, 2))
    np.testing.assert_array_equal(result.outputs["out"], scaled_average(sums, H * W))


@pytest.mark.parametrize("divisor", [1, 2, 3, 4, 7, 9, 25, 49, 100, 1000, 65535])
def test_avg_multiplier_is_the_nearest_fraction(divisor):
    mult, shift = K.avg_multiplier(divisor)
    assert 0 < mult <= K.MAX_VECTOR_MULT and 0 <= shift <= 31
    assert abs(Fraction(mult, 1 << shift) - Fraction(1, divisor)) <= Fraction(1, 1 << (shift + 1))
    assert abs(Fraction(mult, 1 << shift) * divisor - 1) < Fraction(1, 1 << 13)


def test_pooling_rejects_padding_as_large_as_the_window():
    with pytest.raises(K.KernelError, match="pad=2 must be smaller"):
        K.maxpool2d(TINY, 1, 4, 5, 5, 2, 2, 1, 2)


# ---------------------------------------------------------------------------------------------------------
# Element-wise

@pytest.mark.parametrize("config, shape", [(TINY, (30, 31)), (TINY, (3,)), (DEFAULT, (2, 5, 7, 9)),
                                           (LARGE, (1000,))])
def test_elementwise(config, shape):
    rng = np.random.default_rng(len(shape))
    x, y = int8(rng, shape), int8(rng, shape)
    wide_x, wide_y = x.astype(np.int64), y.astype(np.int64)
    x_scale, y_scale, x_zp, y_zp, out_zp = (12345, 14), (-3000, 12), 3, -7, 5
    cases = [
        (K.relu(config, shape), {"x": x}, np.maximum(x, 0)),
        (K.clip(config, shape, -20, 50), {"x": x}, np.clip(x, -20, 50)),
        (K.add(config, shape), {"x": x, "y": y}, np.clip(wide_x + wide_y, INT8_MIN, INT8_MAX)),
        (K.add(config, shape, x_scale=x_scale, y_scale=y_scale, x_zp=x_zp, y_zp=y_zp, out_zp=out_zp),
         {"x": x, "y": y},
         np.clip(round_shift((wide_x - x_zp) * x_scale[0], x_scale[1])
                 + round_shift((wide_y - y_zp) * y_scale[0], y_scale[1]) + out_zp, INT8_MIN, INT8_MAX)),
        # Two scales with one rounding (the residual Add at two scales): exact products, shifted sum.
        (K.add(config, shape, x_scale=(23456, 0), y_scale=(-9876, 0), x_zp=x_zp, y_zp=y_zp, out_zp=out_zp,
               out_shift=14), {"x": x, "y": y},
         np.clip(round_shift((wide_x - x_zp) * 23456 + (wide_y - y_zp) * -9876, 14) + out_zp,
                 INT8_MIN, INT8_MAX)),
    ]
    with open_device("golden", config) as device:
        for kernel, inputs, expected in cases:
            result = K.run_kernel(device, kernel, inputs)
            np.testing.assert_array_equal(result.outputs["out"], expected, err_msg=kernel.name)


def test_elementwise_rejects_bad_arguments():
    with pytest.raises(K.KernelError, match="x_scale shift"):
        K.add(TINY, (4,), x_scale=(1, 40))
    with pytest.raises(K.KernelError, match="hi must be an integer"):
        K.clip(TINY, (4,), 5, 2)
    with pytest.raises(K.KernelError, match=r"shape\[1\]"):
        K.relu(TINY, (4, 0))


# ---------------------------------------------------------------------------------------------------------
# Composition and per-kernel counters

def test_linked_kernels_report_per_kernel_counters():
    """GEMM (int8 out) then ReLU on its output, in one program: each snapshot covers its own kernel."""
    config = TINY
    M, Kd, N = 12, 20, 10
    first = K.gemm(config, M, Kd, N, bias=True, base=0x1000)
    second = K.relu(config, (M, N), addrs={"x": first.operands["out"].addr}, base=first.data_end)
    rng = np.random.default_rng(5)
    a, b = int8(rng, (M, Kd)), int8(rng, (Kd, N))
    bias = rng.integers(-300, 300, size=N)
    with open_device("golden", config) as device:
        results = K.run_kernels(device, [first, second],
                                [{"A": a, "B": b, "params": K.pack_params(first, bias=bias)}, {}])
        both = device.read(first.operands["counters"].addr, SNAPSHOT_BYTES)
    gemm_out = epilogue(a.astype(np.int64) @ b, bias=bias)
    np.testing.assert_array_equal(results[0].outputs["out"], gemm_out)
    np.testing.assert_array_equal(results[1].outputs["out"], np.maximum(gemm_out, 0))
    assert parse_snapshot(both) == results[0].counters
    gemm_counters, relu_counters = results[0].counters, results[1].counters
    assert gemm_counters["macs"] == M * N * Kd and relu_counters["macs"] == 0
    assert gemm_counters["insn_matmul"] > 0 and relu_counters["insn_matmul"] == 0
    assert relu_counters["insn_vector"] > 0 and gemm_counters["insn_vector"] == 0
    assert gemm_counters["dma_write_bytes"] == M * N
    # The snapshots split the run: their cycles add up to the run's, but for the last COUNTERS and HALT.
    assert 0 < gemm_counters["cycles"] < results[0].cycles
    assert gemm_counters["cycles"] + relu_counters["cycles"] <= results[0].cycles


# ---------------------------------------------------------------------------------------------------------
# Shallow queues

@pytest.mark.parametrize("token_depth", [1, 2])
def test_kernels_fit_shallow_token_queues(token_depth):
    """With token queues of depth 1 or 2 (and instruction queues of 1) every kernel still has a valid
    order: the model would raise DEADLOCK for a push into a full queue that only a later pop drains."""
    config = Config(name="shallow", rows=4, cols=16, spad_bytes=8192, spad_banks=2, acc_bytes=8192,
                    dma_bus_bits=64, queue_depth=1, token_depth=token_depth)
    rng = np.random.default_rng(token_depth)
    with open_device("golden", config) as device:
        kernel = K.gemm(config, 30, 21, 40, bias=True, residual=True, act="relu")
        a, b, res = int8(rng, (30, 21)), int8(rng, (21, 40)), int8(rng, (30, 40))
        bias = rng.integers(-999, 999, size=40)
        result = K.run_kernel(device, kernel, {"A": a, "B": b, "residual": res,
                                               "params": K.pack_params(kernel, bias=bias)})
        np.testing.assert_array_equal(result.outputs["out"], epilogue(a.astype(np.int64) @ b, bias=bias,
                                                                      residual=res, act=Activation.RELU))

        x, w = int8(rng, (1, 6, 6, 5)), int8(rng, (7, 5, 3, 3))
        kernel = K.conv2d(config, 1, 5, 6, 6, 7, 3, 3, 1, 1, out="int32")
        result = K.run_kernel(device, kernel, {"x": x, "B": K.conv2d_weights(config, w, kernel)})
        np.testing.assert_array_equal(result.outputs["out"], conv_reference(x, w, 1, 1))

        x = int8(rng, (1, 7, 7, 20))
        result = K.run_kernel(device, K.maxpool2d(config, 1, 20, 7, 7, 3, 3, 2, 1), {"x": x})
        np.testing.assert_array_equal(result.outputs["out"], pool_reference(x, 3, 3, 2, 1)[0])
        result = K.run_kernel(device, K.global_avgpool(config, 1, 7, 7, 20), {"x": x})
        sums = x.astype(np.int64).sum(axis=(1, 2))
        np.testing.assert_array_equal(result.outputs["out"], scaled_average(sums, 49))

        y = int8(rng, x.shape)
        kernel = K.add(config, x.shape, x_scale=(300, 8), y_scale=(200, 8), out_zp=-3)
        result = K.run_kernel(device, kernel, {"x": x, "y": y})
        scaled = round_shift(x.astype(np.int64) * 300, 8) + round_shift(y.astype(np.int64) * 200, 8)
        expected = np.clip(scaled - 3, INT8_MIN, INT8_MAX)
        np.testing.assert_array_equal(result.outputs["out"], expected)


@pytest.mark.parametrize("preset, shape", [("large", (1, 64, 10)), ("large", (1, 64, 32)),
                                           ("default", (1, 64, 10)), ("default", (64, 64, 64))])
def test_single_buffering_is_weighed_for_one_m_tile(preset, shape):
    """With one M tile double buffering prefetches nothing: the library takes a single-buffered tiling
    there when it is predicted at least 3% cheaper, and never leaves a cheaper one by more."""
    config = Config.preset(preset)
    refined = K.gemm(config, *shape, bias=True, requant=True)
    # The candidates are uncut; the library may cut the lead-in and tail of the one it chose (only faster).
    uncut = K.Tiling(**{name: refined.tiling[name] for name in K.Tiling.__dataclass_fields__}).uncut()
    chosen = K.gemm(config, *shape, bias=True, requant=True, tiling=uncut)
    assert refined.predicted_cycles <= chosen.predicted_cycles
    doubles, singles = [], []
    for tiling in K.candidate_tilings(chosen):
        try:
            kernel = K.gemm(config, *shape, bias=True, requant=True, tiling=tiling)
        except K.KernelError:
            continue
        (doubles if tiling.buffers == 2 else singles).append(kernel.predicted_cycles)
    assert doubles
    best_double = min(doubles)
    one_tile = chosen.tiling["m"] >= shape[0]
    if one_tile and singles and min(singles) < 0.97 * best_double:
        assert chosen.tiling["buffers"] == 1 and chosen.predicted_cycles == min(singles)
    else:
        assert chosen.tiling["buffers"] == 2 and chosen.predicted_cycles == best_double
