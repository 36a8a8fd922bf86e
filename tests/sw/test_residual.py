"""Residual-add fusion: quantizer folding, exact epilogue arithmetic, fusion decisions, sessions on golden."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_models import make_model, run_ort

from braze.isa import Config, arith
from braze.isa.encoding import Activation
from braze.sim.device import open_device
from braze.sw.compiler import kernels as kernel_lib
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.frontend import BRAZE_DOMAIN, evaluate, evaluate_node, load_onnx
from braze.sw.compiler.fusion import find_opportunities, fuse, split_activations
from braze.sw.compiler.ir import Node, NodeKind, constant_node
from braze.sw.compiler.lower import node_kernel
from braze.sw.compiler.passes import simplify
from braze.sw.compiler.quantize import calibrate, fuse_bias_add, insert_qdq, lower_qdq, quantize
from braze.sw.compiler.validate import validate
from braze.sw.runtime.session import InferenceSession, _with_shapes

TINY = Config.preset("tiny")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAZE_CACHE_DIR", str(tmp_path / "kernels"))


def resnet_block(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Add(skip) -> Relu, 4 channels, 6x6."""
    rng = np.random.default_rng(seed)
    inits = [("w1", rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32)),
             ("b1", rng.normal(0, 0.1, 4).astype(np.float32)),
             ("w2", rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32)),
             ("b2", rng.normal(0, 0.1, 4).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a1"], name="relu1"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "x"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="relu2")]
    return make_model(nodes, [("x", np.float32, [2, 4, 6, 6])], [("y", np.float32, [2, 4, 6, 6])], inits,
                      name="resnet_block")


def residual_mlp(seed: int = 0) -> onnx.ModelProto:
    """Gemm -> Relu -> Gemm -> Add(skip) -> Relu -> Gemm, width 16."""
    rng = np.random.default_rng(seed)
    inits = [("w0", rng.normal(0, 0.3, (16, 16)).astype(np.float32)),
             ("b0", rng.normal(0, 0.1, 16).astype(np.float32)),
             ("w1", rng.normal(0, 0.3, (16, 16)).astype(np.float32)),
             ("b1", rng.normal(0, 0.1, 16).astype(np.float32)),
             ("w2", rng.normal(0, 0.3, (8, 16)).astype(np.float32))]
    nodes = [helper.make_node("Gemm", ["x", "w0", "b0"], ["h0"], name="fc0", transB=1),
             helper.make_node("Relu", ["h0"], ["a0"], name="relu0"),
             helper.make_node("Gemm", ["a0", "w1", "b1"], ["h1"], name="fc1", transB=1),
             helper.make_node("Add", ["x", "h1"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["a1"], name="relu1"),
             helper.make_node("Gemm", ["a1", "w2"], ["y"], name="fc2", transB=1)]
    return make_model(nodes, [("x", np.float32, [8, 16])], [("y", np.float32, [8, 8])], inits,
                      name="residual_mlp")


MODELS = {"resnet_block": (resnet_block, (2, 4, 6, 6)), "residual_mlp": (residual_mlp, (8, 16))}


def _data(shape, seed, count=3):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for _ in range(count)]


@pytest.fixture(scope="module", params=sorted(MODELS))
def quantized(request):
    build, shape = MODELS[request.param]
    model = build()
    calibration = _data(shape, 1, 16)
    graph = quantize(load_onnx(model), [{"x": x} for x in calibration])
    return request.param, model, graph, calibration, _data(shape, 2)


def _matrix_nodes(graph):
    return [n for n in graph.operators() if n.qualified_op in (f"{BRAZE_DOMAIN}.QMatMul",
                                                                f"{BRAZE_DOMAIN}.QConv")]


def test_quantizer_folds_the_residual_add_at_the_add_outputs_parameters(quantized):
    _, _, graph, _, _ = quantized
    assert not [n for n in graph.operators() if n.op_type == "Add"]
    residual_nodes = [n for n in _matrix_nodes(graph) if len(n.inputs) > 3 and n.inputs[3]]
    assert len(residual_nodes) == 1
    node = residual_nodes[0]
    r, y = graph.tensor(node.inputs[3]), graph.tensor(node.outputs[0])
    assert r.dtype == y.dtype == "int8"
    assert np.float32(r.quant.scale[0]) == np.float32(y.quant.scale[0])
    assert node.attrs["residual_zp"] == r.quant.zero_point[0]
    # The Relu after the addition is the clip at the output's zero point (a real 0).
    assert node.attrs["act"] == "clip" and node.attrs["clip_lo"] == y.quant.zero_point[0]


def test_residual_epilogue_equals_the_integer_formula_including_saturation():
    """``act(sat8(requant(acc) + out_zp + r - r_zp))`` for extreme zero points, accumulators and residuals."""
    rng = np.random.default_rng(3)
    m, k, n = 64, 8, 5
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    r = rng.integers(-128, 128, (m, n)).astype(np.int8)
    r[:4] = [[-128], [127], [-128], [127]]
    mult, shift = rng.integers(1 << 30, 1 << 31, n), rng.integers(36, 42, n)
    acc = x.astype(np.int64) @ w.astype(np.int64)
    cases = ((127, -128, "none"), (-128, 127, "none"), (5, -7, "clip"), (-128, -128, "clip"))
    for out_zp, r_zp, act in cases:
        node = Node("q", NodeKind.OPERATOR, "QMatMul", ("x", "w", "", "r"), ("y",),
                    {"mult": tuple(mult), "shift": tuple(shift), "out_zp": out_zp, "residual_zp": r_zp,
                     "act": act, "clip_lo": out_zp, "clip_hi": 127, "x_zero_point": 0}, domain=BRAZE_DOMAIN)
        (got,) = evaluate_node(node, x, w, None, r)
        requantized = arith.requantize(acc, mult, shift, out_zp)          # int32, not saturated
        expected = requantized + r.astype(np.int64) - r_zp
        if act == "clip":
            expected = np.clip(expected, out_zp, 127)
        expected = np.clip(expected, -128, 127)
        assert np.array_equal(got, expected)
        # The same through the hardware's epilogue with the zero point folded (what the kernel runs).
        folded = arith.epilogue(acc, mult=mult, shift=shift, residual=r, out_zp=out_zp - r_zp,
                                act=Activation.CLIP if act == "clip" else Activation.NONE,
                                clip_lo=out_zp, clip_hi=127)
        assert np.array_equal(got, folded)
        # Saturation happens: some sums leave int8 before the final clip.
        assert np.any(np.abs(requantized + r.astype(np.int64) - r_zp) > 127)


def test_lowered_residual_kernel_is_bit_exact_with_the_node_on_golden(quantized):
    """The kernel of a residual node (zero point folded into out_zp) equals its evaluation, at extreme zero
    points where the int32 sum saturates."""
    name, _, graph, _, _ = quantized
    (node,) = [n for n in _matrix_nodes(graph) if len(n.inputs) > 3 and n.inputs[3]]
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, graph.tensor(node.inputs[0]).shape).astype(np.int8)
    r = rng.integers(-128, 128, graph.tensor(node.inputs[3]).shape).astype(np.int8)
    w, bias = graph.constant(node.inputs[1]), graph.constant(node.inputs[2])
    saturated = 0
    for out_zp, r_zp in ((127, -128), (-128, 127), (3, 3)):
        variant = node.with_attrs(out_zp=out_zp, residual_zp=r_zp, clip_lo=out_zp)
        (expected,) = evaluate_node(variant, x, w, bias, r)
        plan, kernel = node_kernel(graph, variant, TINY)
        constants = dict(plan.constants)
        if "weights_oihw" in constants:
            constants["B"] = kernel_lib.conv2d_weights(TINY, constants.pop("weights_oihw"), kernel)
        plan.constants = constants
        layout = (0, 2, 3, 1) if x.ndim == 4 else (0, 1)       # the kernel's operands are NHWC
        x_in = x
        if plan.host_pad is not None:          # a nonzero input zero point: padded on the host
            top, left, bottom, right, value = plan.host_pad
            x_in = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)
        inputs = {"A" if "A" in kernel.operands else "x": x_in.transpose(layout),
                  "residual": r.transpose(layout), **plan.param_values(kernel)}
        with open_device("golden", TINY) as device:
            result = kernel_lib.run_kernel(device, kernel, inputs)
        out = result.outputs["out"]
        got = out.transpose(0, 3, 1, 2) if x.ndim == 4 else out
        assert np.array_equal(got, expected), (name, out_zp, r_zp)
        saturated += np.count_nonzero((expected == -128) | (expected == 127))
    assert saturated > 0


def test_split_and_fusion_decisions(quantized):
    name, _, graph, _, data = quantized
    split = split_activations(graph)
    assert validate(split) is split
    adds = [n for n in split.operators() if n.qualified_op == f"{BRAZE_DOMAIN}.QAdd"]
    assert len(adds) == 1
    kinds = [o.kind for o in find_opportunities(split)]
    assert "residual" in kinds
    static = _with_shapes(graph, {"x": data[0].shape}, {"x": "float32"})
    fused, decisions = fuse(static, TINY, cache=KernelCache(disk=False))
    residual = [d for d in decisions if d.opportunity.kind == "residual"]
    assert len(residual) == 1 and residual[0].chosen == "fused"
    costs = dict(residual[0].candidates)
    assert costs["fused"].cycles < costs["separate"].cycles and costs["fused"].bytes < costs["separate"].bytes
    # The fused graph is the quantized graph's function exactly.
    for x in data:
        assert np.array_equal(evaluate(fused, {"x": x})["y"], evaluate(graph, {"x": x})["y"])


def _session(model, calibration, fuse):
    return InferenceSession(model, config="tiny", calibration=[{"x": x} for x in calibration], fuse=fuse,
                            cache=KernelCache(disk=False))


def test_sessions_fused_exact_and_cheaper_than_unfused_and_accurate(quantized):
    name, model, graph, calibration, data = quantized
    fused, unfused = _session(model, calibration, True), _session(model, calibration, False)
    errors, scale = [], 0.0
    for x in data:
        (y_fused,) = fused.run(None, {"x": x})
        (y_unfused,) = unfused.run(None, {"x": x})
        expected = evaluate(fused.graph_before, {"x": x})["y"]
        assert np.array_equal(y_fused, expected)
        assert np.array_equal(expected, evaluate(graph, {"x": x})["y"])
        (reference,) = run_ort(model, {"x": x})
        errors.append(np.abs(y_fused - reference).max())
        scale = max(scale, np.abs(reference).max())
        # The unfused baseline computes its own graph exactly; it saturates the product before the
        # addition (the fused epilogue does not), so the two agree wherever that product fits int8.
        assert np.array_equal(y_unfused, evaluate(unfused.graph_after, {"x": x})["y"])
        assert np.mean(y_fused == y_unfused) > 0.9
    a, b = fused.report(), unfused.report()
    assert len(a.kernels) < len(b.kernels)
    assert a.total_cycles < b.total_cycles
    assert a.dma_bytes < b.dma_bytes
    assert a.total_macs == b.total_macs
    residual_adds = {n.name for n in unfused.graph_after.operators() if n.op_type == "QAdd"}
    assert len(residual_adds) == 1
    assert [len(r.ops) for r in a.kernels if residual_adds & set(r.ops)] == [3]   # product + add + act
    # Quantization error against float onnxruntime: a few percent of the output range.
    assert max(errors) < 0.05 * scale, (name, max(errors), scale)


def test_imported_qdq_residual_is_fused_only_at_equal_scales():
    model = resnet_block()
    graph = fuse_bias_add(simplify(load_onnx(model)))
    calibration = _data((2, 4, 6, 6), 1, 8)
    fake = validate(insert_qdq(graph, calibrate(graph, [{"x": x} for x in calibration])))
    x = _data((2, 4, 6, 6), 2, 1)[0]

    def residual_nodes(lowered):
        return [n for n in _matrix_nodes(lowered) if len(n.inputs) > 3 and n.inputs[3]]

    matching = validate(simplify(lower_qdq(fake)))
    assert len(residual_nodes(matching)) == 1
    # The residual's Q/DQ at another scale: the addition cannot be exact in the epilogue, so it stays float.
    scale_names = [n.inputs[1] for n in fake.operators() if n.op_type == "DequantizeLinear"
                   and n.inputs[0].startswith("x_residual")]
    assert len(scale_names) == 1
    substitute = {f"const:{name}": constant_node(name, np.float32(fake.constant(name) * 1.5))
                  for name in scale_names}
    other = fake.edit(substitute=substitute)
    lowered = validate(simplify(lower_qdq(other)))
    assert not residual_nodes(lowered)
    assert [n for n in lowered.operators() if n.op_type == "Add"]
    assert np.allclose(evaluate(lowered, {"x": x})["y"], evaluate(other, {"x": x})["y"], atol=1e-6)
