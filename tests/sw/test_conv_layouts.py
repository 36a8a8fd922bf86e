"""Convolution A-tile layouts: taps packed into one K-chunk for few input channels, and pixel-major M
tiles for batches of small images -- each bit-exact against a tap-by-tap reference on the golden model."""

from __future__ import annotations

import numpy as np
import pytest
from test_kernels import conv_reference, pool_reference

from braze.isa import Activation, Config, Memory, Opcode
from braze.isa.arith import epilogue
from braze.sim.device import open_device
from braze.sw.compiler import kernels as lib
from braze.sw.compiler.kernels import KernelError, run_kernel

TINY = Config.preset("tiny")          # rows = 4
DEFAULT = Config.preset("default")    # rows = 8


def run_conv(config: Config, N, C, H, W, K_out, k, stride, pad, pool=1, seed=0, layout=None):
    """The kernel and (output, expected output) of a conv + bias + requantize + ReLU (+ max pool)."""
    rng = np.random.default_rng(seed)
    kernel = lib.conv2d(config, N, C, H, W, K_out, k, k, stride, pad, bias=True, requant=True, act="relu",
                        pool=pool, layout=layout)
    x = rng.integers(-128, 128, (N, H, W, C), dtype=np.int8)
    w = rng.integers(-128, 128, (K_out, C, k, k), dtype=np.int8)
    params = dict(bias=rng.integers(-3000, 3000, K_out), mult=np.full(K_out, 1 << 14),
                  shift=np.full(K_out, 22))
    inputs = {"x": x, "B": lib.conv2d_weights(config, w, kernel), "params": lib.pack_params(kernel, **params)}
    with open_device("golden", config) as device:
        got = run_kernel(device, kernel, inputs).outputs["out"]
    expected = epilogue(conv_reference(x, w, stride, pad), act=Activation.RELU, out=Memory.SPAD, **params)
    if pool > 1:
        expected = pool_reference(expected, pool, pool, pool, 0)[0]
    assert len(np.unique(expected)) > 4          # not a saturated, constant output
    return kernel, got, expected


@pytest.mark.parametrize("config, C, k, expected_taps", [
    (DEFAULT, 1, 3, 3),      # the digits CNN's conv1: 3 chunks (one per kernel row) instead of 9
    (DEFAULT, 2, 5, 4),      # 5 taps of 2 channels: chunks of 4 taps and of 1
    (DEFAULT, 3, 3, 2),      # 8 // 3 = 2 taps per chunk
    (TINY, 2, 3, 2),
    (DEFAULT, 5, 3, 1),      # 2*C > rows: one tap per chunk
])
def test_packed_taps(config, C, k, expected_taps):
    assert lib.taps_per_chunk(config, C, k) == expected_taps
    kernel, got, expected = run_conv(config, 2, C, 9, 8, 6, k, 1, 0)
    assert kernel.tiling.get("taps_per_chunk", 1) == expected_taps
    groups = -(-k // expected_taps)
    channels = config.rows if expected_taps > 1 else -(-C // config.rows) * config.rows
    assert kernel.operands["B"].shape == (k * groups * channels, 6)
    np.testing.assert_array_equal(got, expected)


def test_no_packing_with_padding_or_dilation():
    assert lib.taps_per_chunk(DEFAULT, 1, 3, pad=1) == 1
    assert lib.taps_per_chunk(DEFAULT, 1, 3, dilation=2) == 1
    kernel, got, expected = run_conv(DEFAULT, 1, 1, 7, 7, 4, 3, 1, 1)
    assert "taps_per_chunk" not in kernel.tiling
    np.testing.assert_array_equal(got, expected)


def test_weights_must_match_the_kernel():
    kernel = lib.conv2d(DEFAULT, 1, 1, 8, 8, 8, 3, 3)
    weights = np.ones((8, 1, 3, 3), np.int8)
    assert lib.conv2d_weights(DEFAULT, weights, kernel).shape == (24, 8)
    assert lib.conv2d_weights(DEFAULT, weights).shape == (72, 8)      # the one-tap layout, for no kernel
    with pytest.raises(KernelError, match="input channels"):
        lib.conv2d_weights(DEFAULT, np.ones((8, 2, 3, 3), np.int8), kernel)


@pytest.mark.parametrize("N, C, H, W, K_out, k, stride, pad, pool", [
    (64, 8, 6, 6, 16, 3, 1, 0, 1),     # the digits CNN's conv2
    (64, 8, 6, 6, 16, 3, 1, 0, 2),     # ... with its max pool fused
    (64, 1, 8, 8, 8, 3, 1, 0, 1),      # conv1: packed taps too
    (16, 2, 7, 7, 5, 3, 1, 1, 1),      # padding: zero LOADs of whole images
    (12, 3, 7, 7, 10, 3, 2, 1, 2),     # strided, padded, pooled (7x7 -> 4x4 -> 2x2)
])
def test_pixel_major_tiles(N, C, H, W, K_out, k, stride, pad, pool):
    config = DEFAULT
    kernel, got, expected = run_conv(config, N, C, H, W, K_out, k, stride, pad, pool, seed=N + C,
                                     layout="pixels")
    pixels = expected.shape[1] * expected.shape[2]
    assert kernel.tiling.get("pixel_major") == pixels
    np.testing.assert_array_equal(got, expected)
    # Each A LOAD reads one tap of one pixel of every image of the M tile.
    images = kernel.tiling["m"] // (pixels * pool * pool)
    a_loads = [i for i in kernel.instructions if i.opcode is Opcode.LOAD and i.args["rows"] == images]
    assert images > 1 and len(a_loads) >= pixels


def test_the_timing_model_chooses_the_layout():
    single = lib.conv2d(DEFAULT, 1, 8, 6, 6, 16, 3, 3, requant=True)
    assert "pixel_major" not in single.tiling and "resident_input" not in single.tiling   # not tried
    for pool in (1, 2):                                    # the digits CNN's conv2, batch 64
        chosen = lib.conv2d(DEFAULT, 64, 8, 6, 6, 16, 3, 3, requant=True, pool=pool)
        forms = {layout: lib.conv2d(DEFAULT, 64, 8, 6, 6, 16, 3, 3, requant=True, pool=pool, layout=layout)
                 for layout in ("rows", "pixels", "resident")}
        assert chosen.predicted_cycles == min(kernel.predicted_cycles for kernel in forms.values())
        assert "pixel_major" in forms["pixels"].tiling and "resident_input" in forms["resident"].tiling
    with pytest.raises(KernelError, match="residual"):
        lib.conv2d(DEFAULT, 64, 8, 6, 6, 16, 3, 3, residual=True, layout="pixels")
    with pytest.raises(KernelError, match="stride 1"):
        lib.conv2d(DEFAULT, 64, 8, 6, 6, 16, 3, 3, 2, layout="resident")
    with pytest.raises(KernelError, match="layout="):
        lib.conv2d(DEFAULT, 64, 8, 6, 6, 16, 3, 3, layout="columns")


@pytest.mark.parametrize("config, N, C, H, W, K_out, k, pad, pool", [
    (DEFAULT, 64, 8, 6, 6, 16, 3, 0, 1),      # the digits CNN's conv2
    (DEFAULT, 64, 8, 6, 6, 16, 3, 0, 2),      # ... with its max pool fused
    (DEFAULT, 20, 5, 7, 7, 10, 3, 1, 2),      # padding (zero rows), C < rows, a partial column tile
    (DEFAULT, 9, 8, 9, 9, 8, 2, 0, 3),        # 2x2 kernel, 3x3 pooling of an 8x8 output
    (TINY, 13, 3, 6, 5, 6, 3, 1, 1),          # several input tiles of a small scratchpad
    (DEFAULT, 64, 1, 8, 8, 8, 3, 0, 1),       # the digits CNN's conv1: a kernel row's taps per row
    (TINY, 7, 2, 6, 7, 5, 2, 0, 2),           # packed taps, pooled, a partial last tile
])
def test_resident_input(config, N, C, H, W, K_out, k, pad, pool):
    kernel, got, expected = run_conv(config, N, C, H, W, K_out, k, 1, pad, pool, seed=N * C,
                                     layout="resident")
    np.testing.assert_array_equal(got, expected)
    images = kernel.tiling["resident_input"]
    x = kernel.operands["x"]
    # Every input pixel of every image crosses the bus once -- with packed taps, every run of kw
    # pixels that an output pixel's kernel row covers.
    input_rows = sum(i.args["rows"] for i in kernel.instructions if i.opcode is Opcode.LOAD
                     and not i.args["zero"] and x.addr <= i.args["dram"] < x.end)
    packed = kernel.tiling.get("taps_per_chunk", 1) > 1
    assert input_rows == N * H * (W - k + 1 if packed else W) and images >= 1


def test_resident_input_int32_output():
    rng = np.random.default_rng(3)
    kernel = lib.conv2d(DEFAULT, 12, 6, 5, 5, 9, 3, 3, 1, 1, out="int32", layout="resident")
    x = rng.integers(-128, 128, (12, 5, 5, 6), dtype=np.int8)
    w = rng.integers(-128, 128, (9, 6, 3, 3), dtype=np.int8)
    with open_device("golden", DEFAULT) as device:
        got = run_kernel(device, kernel, {"x": x, "B": lib.conv2d_weights(DEFAULT, w, kernel)}).outputs["out"]
    np.testing.assert_array_equal(got, conv_reference(x, w, 1, 1))


def _epilogue_rows(rng, k_out):
    return dict(bias=rng.integers(-3000, 3000, k_out), mult=rng.integers(1 << 13, 1 << 15, k_out),
                shift=np.full(k_out, 22))


@pytest.mark.parametrize("N, C, H, W, layers, pool", [
    (64, 1, 8, 8, [(8, 3, 0), (16, 3, 0)], 2),              # the digits CNN's conv1 -> conv2 -> pool
    (10, 6, 7, 7, [(8, 3, 1), (5, 2, 0)], 1),               # padding inside the chain, a 2x2 kernel
    (5, 8, 6, 6, [(7, 3, 1), (8, 3, 1), (6, 3, 0)], 2),     # three layers
])
def test_conv2d_chain_equals_the_layers_one_by_one(N, C, H, W, layers, pool):
    rng = np.random.default_rng(N + C)
    specs = [lib.ConvLayer(k_out, k, k, pad, bias=True, requant=True, act="relu") for k_out, k, pad in layers]
    chain = lib.conv2d_chain(DEFAULT, N, C, H, W, specs, pool=pool)
    x = rng.integers(-128, 128, (N, H, W, C), dtype=np.int8)
    inputs, value = {"x": x}, x
    with open_device("golden", DEFAULT) as device:
        for index, (k_out, k, pad) in enumerate(layers, start=1):
            n, h, w, c = value.shape
            weights = rng.integers(-128, 128, (k_out, c, k, k), dtype=np.int8)
            rows = _epilogue_rows(rng, k_out)
            single = lib.conv2d(DEFAULT, n, c, h, w, k_out, k, k, 1, pad, bias=True, requant=True, act="relu",
                                pool=pool if index == len(layers) else 1)
            value = run_kernel(device, single, {"x": value, "B": lib.conv2d_weights(DEFAULT, weights, single),
                                                "params": lib.pack_params(single, **rows)}).outputs["out"]
            inputs[f"B{index}"] = lib.conv2d_weights(DEFAULT, weights, chain, f"B{index}")
            inputs[f"params{index}"] = np.stack([rows["bias"], rows["mult"], rows["shift"]]).astype(np.int32)
        result = run_kernel(device, chain, inputs)
    np.testing.assert_array_equal(result.outputs["out"], value)
    assert len(np.unique(value)) > 4
    # The activations between the layers never cross the bus: the weights and parameters are read
    # once, the input once (with packed taps, each LOAD row the k pixels of an output pixel's kernel
    # row), the pooled output written once.
    params = sum(op.nbytes for op in chain.operands.values() if op.role == "param")
    k = layers[0][1]
    x_read = N * H * (W - k + 1) * k * C if chain.tiling.get("taps_per_chunk", 1) > 1 else x.nbytes
    assert result.counters["dma_read_bytes"] == x_read + params
    assert result.counters["dma_write_bytes"] == chain.operands["out"].nbytes


def test_conv2d_chain_refuses_what_it_cannot_do():
    layer = lib.ConvLayer(8, 3, 3, bias=True, requant=True, act="relu")
    with pytest.raises(KernelError, match="at least one layer"):
        lib.conv2d_chain(DEFAULT, 4, 1, 8, 8, [])
    with pytest.raises(KernelError, match="12 input channels"):       # two K-chunks per tap
        lib.conv2d_chain(DEFAULT, 4, 12, 8, 8, [layer, layer])
    with pytest.raises(KernelError, match="inner layer"):             # 16 channels into the next layer
        lib.conv2d_chain(DEFAULT, 4, 1, 8, 8, [lib.ConvLayer(16, 3, 3, requant=True), layer])
    chain = lib.conv2d_chain(DEFAULT, 4, 1, 8, 8, [layer, layer])
    with pytest.raises(KernelError, match="B2 expects 8"):
        lib.conv2d_weights(DEFAULT, np.ones((8, 4, 3, 3), np.int8), chain, "B2")
    with pytest.raises(KernelError, match="no operand 'B3'"):
        lib.conv2d_weights(DEFAULT, np.ones((8, 8, 3, 3), np.int8), chain, "B3")
