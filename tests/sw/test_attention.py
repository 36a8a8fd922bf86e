"""Attention on the chip: activation x activation and batched MatMul as kernels (issue 11, item 2)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_models import make_model

from braze.isa import Config
from braze.isa.arith import epilogue
from braze.sim.device import open_device
from braze.sw.compiler import kernels as lib
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.frontend import evaluate, evaluate_node
from braze.sw.compiler.ir import Node, NodeKind
from braze.sw.compiler.kernels import run_kernel
from braze.sw.compiler.lower import CpuStep, KernelStep, TransferStep
from braze.sw.runtime.attention_bench import attention_model, matmul_macs, quantize_attention
from braze.sw.runtime.session import InferenceSession

TINY = Config.preset("tiny")
SHAPE = (1, 16, 32)          # batch, sequence, model width: two heads of 16


@pytest.mark.parametrize("b_batched", [True, False])
def test_batched_gemm_computes_every_slice_with_its_epilogue(b_batched):
    rng = np.random.default_rng(3)
    batch, m, k, n = 3, 5, 7, 9                 # M tiles that do not divide evenly, K over two chunks
    a = rng.integers(-128, 128, (batch * m, k), dtype=np.int8)
    b = rng.integers(-128, 128, ((batch if b_batched else 1) * k, n), dtype=np.int8)
    mult, shift = rng.integers(1 << 30, 1 << 31, n), np.full(n, 40)
    kernel = lib.batched_gemm(TINY, batch, m, k, n, b_batched=b_batched, requant=True, out_zp=3)
    with open_device("golden", TINY) as device:
        got = run_kernel(device, kernel, {"A": a, "B": b, "params": lib.pack_params(kernel, mult=mult,
                                                                                    shift=shift)}).outputs["out"]
    slices = b.reshape(-1, k, n).astype(np.int64)
    acc = np.concatenate([a[g * m:(g + 1) * m].astype(np.int64) @ slices[g if b_batched else 0]
                          for g in range(batch)])
    assert np.array_equal(got, epilogue(acc, mult=mult, shift=shift, out_zp=3))
    assert kernel.macs == batch * m * k * n


@pytest.mark.parametrize("heads, zero_points", [((4, 4, 4), (0, 0)), ((2, 1, 2), (3, -128)),
                                                ((1, 2, 2), (0, 0)), ((2, 2, 1), (-128, 4))])
def test_batched_gemm_reads_and_writes_heads_interleaved_tensors(heads, zero_points):
    """``heads``: operands stored [B, T, H, d] (before the head split's transpose) give the products of
    the [B, H, T, d] slices, the output written [B, T, H, d] (the merge's layout)."""
    rng = np.random.default_rng(7)
    batch, h, m, k, n = 2, max(heads), 5, 19, 6
    za, zb = zero_points
    a = rng.integers(-128, 128, (batch, h, m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (batch, h, k, n), dtype=np.int8)
    stored = [np.ascontiguousarray(x.transpose(0, 2, 1, 3)) if flag > 1 else x
              for x, flag in zip((a, b), heads, strict=False)]
    kernel = lib.batched_gemm(TINY, batch * h, m, k, n, heads=heads, zero_points=zero_points, bias=True,
                              out="int32")
    feeds = {"A": stored[0].reshape(-1, k), "B": stored[1].reshape(-1, n),
             "params": lib.pack_params(kernel, bias=np.full(n, k * za * zb))}
    if za or zb:
        feeds["zp"] = lib.zero_point_rows(kernel)
    with open_device("golden", TINY) as device:
        got = run_kernel(device, kernel, feeds).outputs["out"]
    expected = np.matmul(a.astype(np.int64) - za, b.astype(np.int64) - zb)
    if heads[2] > 1:
        expected = expected.transpose(0, 2, 1, 3)
    assert np.array_equal(got.reshape(-1), expected.reshape(-1))


def test_one_batched_kernel_is_predicted_faster_than_a_kernel_per_head():
    batched = lib.batched_gemm(TINY, 4, 16, 16, 16, requant=True)
    single = lib.gemm(TINY, 16, 16, 16, requant=True)
    assert batched.predicted_cycles < 4 * single.predicted_cycles


@pytest.mark.parametrize("batch, m, k, n, zero_points", [
    (4, 16, 16, 16, (-128, 5)),         # -za = 128 is two int8 parts (64 + 64)
    (3, 5, 7, 9, (3, -128)),
    (2, 9, 33, 20, (17, 0)),            # K over several chunks, N over several tiles, one term only
    (1, 12, 16, 6, (0, -3)),
])
def test_batched_gemm_accumulates_the_zero_point_terms_on_the_array(batch, m, k, n, zero_points):
    rng = np.random.default_rng(6)
    za, zb = zero_points
    a = rng.integers(-128, 128, (batch * m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (batch * k, n), dtype=np.int8)
    kernel = lib.batched_gemm(TINY, batch, m, k, n, zero_points=zero_points, bias=True, out="int32")
    params = lib.pack_params(kernel, bias=np.full(n, k * za * zb))
    with open_device("golden", TINY) as device:
        got = run_kernel(device, kernel, {"A": a, "B": b, "zp": lib.zero_point_rows(kernel),
                                          "params": params}).outputs["out"]
    slices = b.reshape(batch, k, n).astype(np.int64) - zb
    expected = np.concatenate([(a[g * m:(g + 1) * m].astype(np.int64) - za) @ slices[g]
                               for g in range(batch)])
    assert np.array_equal(got, expected)
    plain = lib.batched_gemm(TINY, batch, m, k, n, bias=True, out="int32")
    assert "zp" not in plain.operands and plain.predicted_cycles < kernel.predicted_cycles


def test_activation_product_evaluates_with_zero_points_and_batch_broadcasting():
    rng = np.random.default_rng(4)
    a = rng.integers(-128, 128, (2, 3, 6, 12), dtype=np.int8)
    b = rng.integers(-128, 128, (3, 12, 5), dtype=np.int8)
    node = Node("p", NodeKind.OPERATOR, "QActMatMul", ("a", "b"), ("y",),
                {"a_zero_point": -128, "b_zero_point": 17, "mult": (1 << 30,), "shift": (44,), "out_zp": -7,
                 "out": "spad", "act": "none"}, domain="braze")
    (y,) = evaluate_node(node, a, b)
    centred = np.matmul(a.astype(np.int64) + 128, b.astype(np.int64) - 17)
    assert y.shape == (2, 3, 6, 5) and y.dtype == np.int8
    assert np.array_equal(y.reshape(-1, 5), epilogue(centred.reshape(-1, 5), mult=np.full(5, 1 << 30),
                                                     shift=np.full(5, 44), out_zp=-7))


@pytest.fixture(scope="module")
def attention():
    rng = np.random.default_rng(0)
    model = attention_model(seq=SHAPE[1], d=SHAPE[2], heads=2)
    calibration = [rng.normal(size=SHAPE).astype(np.float32) for _ in range(4)]
    return model, {symmetric: quantize_attention(model, calibration, symmetric=symmetric)
                   for symmetric in (True, False)}


def _products(session) -> list[str]:
    """Placement of the two attention products (Q @ K^T, P @ V)."""
    return [where for name, where in session.compiled.placement.items() if name.startswith(("qk", "pv"))]


def _lsb_error(proto: bytes, y: np.ndarray, x: np.ndarray) -> int:
    # Unoptimized: onnxruntime's fused QDQ and NCHWc kernels depend on the CPU (ort_reference).
    from braze.sw.runtime.ort_reference import qdq_reference_session

    (expected,) = qdq_reference_session(proto, threads=None).run(None, {"x": x})
    model = onnx.load_from_string(proto)
    producer = next(n for n in model.graph.node if n.output[0] == "y")
    scale = next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                 if t.name == producer.input[1])
    return int(np.rint(np.abs(y - expected).max() / float(scale)))


@pytest.mark.parametrize("symmetric", [True, False])
def test_attention_products_run_on_the_chip_bit_exactly(attention, symmetric):
    model, protos = attention
    session = InferenceSession(protos[symmetric], config="tiny", cache=KernelCache(disk=False))
    products = _products(session)
    kernels = [where for where in products if where.startswith("accel: k")]
    assert len(kernels) == 2 and all("batched_gemm" in where for where in kernels), products
    steps = [step for step in session.compiled.steps if isinstance(step, KernelStep)
             and "braze.QActMatMul" in step.op_types]
    # Nonzero zero points (asymmetric activations) are accumulated on the array from constant tiles.
    assert all(("zp" in step.kernel.operands) == (not symmetric) for step in steps) and len(steps) == 2
    host = [step.node.op_type for step in session.compiled.steps if isinstance(step, CpuStep)]
    # The residual Add (at two scales) runs on the vector unit, a braze.QAdd kernel; the scaling Mul
    # by a quantized constant becomes a table where its output is int8 (uint8 stays on the host).
    assert {"QuantizeLinear", "DequantizeLinear", "Softmax", "Transpose", "LayerNormalization"} <= set(host) \
        <= {"QuantizeLinear", "DequantizeLinear", "Mul", "Softmax", "Transpose", "LayerNormalization"}, host
    # The head split of Q and V and the merge are folded into the kernels; only K's transpose (B's rows
    # are K's columns) goes through the host.
    assert host.count("Transpose") == 1
    assert sum(isinstance(step, TransferStep) for step in session.compiled.steps) == 6
    rng = np.random.default_rng(1)
    for _ in range(2):
        x = rng.normal(size=SHAPE).astype(np.float32)
        (y,) = session.run(None, {"x": x})
        assert np.array_equal(y, evaluate(session.graph_before, {"x": x})["y"])
        assert np.count_nonzero(y) > y.size // 2
        assert _lsb_error(protos[symmetric], y, x) <= (1 if symmetric else 3)
    macs = matmul_macs(model)
    attention_macs = macs["qk"] + macs["pv"]
    on_chip = sum(step.kernel.macs for step in steps)         # the model's MACs, not the zero-point tiles'
    every = sum(step.kernel.macs for step in session.compiled.steps if isinstance(step, KernelStep))
    print(f"{'symmetric' if symmetric else 'asymmetric'}: attention MACs on chip "
          f"{100 * on_chip / attention_macs:.1f}%, all MatMul MACs on chip "
          f"{100 * every / sum(macs.values()):.1f}%")
    assert on_chip == attention_macs and every == sum(macs.values())


def test_asymmetric_attention_is_bit_exact_on_verilator(attention):
    _, protos = attention
    session = InferenceSession(protos[False], device="verilator", config="tiny",
                               cache=KernelCache(disk=False))
    try:
        x = np.random.default_rng(2).normal(size=SHAPE).astype(np.float32)
        (y,) = session.run(None, {"x": x})
        assert np.array_equal(y, evaluate(session.graph_before, {"x": x})["y"])
        rows = {row.kernel: row for row in session.report().kernels}
        assert sum("batched_gemm" in name for name in rows) == 2
        assert all(row.cycles > 0 for row in rows.values())
    finally:
        session.close()


def _qdq_matmul(a_shape, b_shape, out_shape) -> onnx.ModelProto:
    """``DQ(Q(a)) @ DQ(Q(b)) -> Q -> DQ`` with symmetric int8 parameters (a hand-written QDQ model)."""
    nodes, inits = [], [("s", np.float32(0.05)), ("z", np.int8(0)), ("sy", np.float32(0.5))]
    for t in ("a", "b"):
        nodes += [helper.make_node("QuantizeLinear", [t, "s", "z"], [f"{t}_q"]),
                  helper.make_node("DequantizeLinear", [f"{t}_q", "s", "z"], [f"{t}_dq"])]
    nodes += [helper.make_node("MatMul", ["a_dq", "b_dq"], ["p"], name="product"),
              helper.make_node("QuantizeLinear", ["p", "sy", "z"], ["p_q"]),
              helper.make_node("DequantizeLinear", ["p_q", "sy", "z"], ["y"])]
    return make_model(nodes, [("a", np.float32, a_shape), ("b", np.float32, b_shape)],
                      [("y", np.float32, out_shape)], inits)


@pytest.mark.parametrize("a_shape, b_shape, out_shape, kernel", [
    ((2, 3, 4, 8), (2, 3, 8, 5), (2, 3, 4, 5), "batched_gemm"),
    ((3, 4, 8), (1, 3, 8, 5), (1, 3, 4, 5), "batched_gemm"),        # size-1 batch dims aside
    ((2, 3, 4, 8), (8, 5), (2, 3, 4, 5), "gemm"),                    # one B for every slice: one GEMM
    ((4, 8), (3, 8, 5), (3, 4, 5), None),                            # A broadcast over B's batch: host
])
def test_batched_matmul_broadcasting(a_shape, b_shape, out_shape, kernel):
    session = InferenceSession(_qdq_matmul(a_shape, b_shape, out_shape), config="tiny",
                               cache=KernelCache(disk=False))
    (where,) = [w for name, w in session.compiled.placement.items() if name.startswith("product")]
    if kernel is None:
        assert where.startswith("cpu: broadcast of A"), where
    else:
        assert where.startswith("accel: k") and where.split("_")[1] == kernel.split("_")[0], where
    rng = np.random.default_rng(5)
    feeds = {"a": rng.normal(size=a_shape).astype(np.float32),
             "b": rng.normal(size=b_shape).astype(np.float32)}
    (y,) = session.run(None, feeds)
    assert y.shape == out_shape
    assert np.array_equal(y, evaluate(session.graph_before, feeds)["y"])
    assert np.count_nonzero(y) > y.size // 2


def test_bench_attention_reports_the_block(capsys):
    from braze.sw.runtime import attention_bench

    assert attention_bench.main(["--config", "tiny", "--seq", "8", "--d", "16", "--heads", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("attention: ")
    fields = dict(item.split("=") for item in lines[-1].split()[1:])
    assert float(fields["chip_mac_pct"]) == 100.0 and fields["bitexact"] == "True"
    assert int(fields["cycles_golden"]) > 0 and float(fields["batched_over_per_slice"]) < 1.0
    assert float(fields["host_softmax_cycles"]) > 0 and float(fields["softmax_transfer_cycles"]) > 0
    assert any("softmax on the host" in line for line in lines)


def test_a_float_attention_block_calibrated_by_braze_gets_the_same_kernels():
    """Braze's own quantizer (calibration inputs, no onnxruntime) quantizes the activation products too."""
    import onnxruntime as ort

    rng = np.random.default_rng(8)
    model = attention_model(seq=SHAPE[1], d=SHAPE[2], heads=2)
    calibration = [{"x": rng.normal(size=SHAPE).astype(np.float32)} for _ in range(4)]
    session = InferenceSession(model, config="tiny", calibration=calibration, cache=KernelCache(disk=False))
    kernels = [step for step in session.compiled.steps if isinstance(step, KernelStep)]
    assert sum("braze.QActMatMul" in step.op_types for step in kernels) == 2
    assert sum(step.kernel.macs for step in kernels) == sum(matmul_macs(model).values())
    x = rng.normal(size=SHAPE).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    assert np.array_equal(y, evaluate(session.graph_before, {"x": x})["y"])
    (expected,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    # int8 quantization of a layer-normalized output (values of order 1): a few percent of its range.
    assert np.sqrt(np.mean((y - expected) ** 2)) < 0.05 * np.abs(expected).max()
