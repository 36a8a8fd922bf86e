"""Layer fusion offered by the fusion engine: ``braze.QConvChain``, its evaluator, validation, lowering to
one ``conv2d_chain`` kernel, and the ``conv_chain`` decision priced by the cost model."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_models import make_model

from braze.isa import Config
from braze.sim.device import open_device
from braze.sw.compiler import fusion, models
from braze.sw.compiler import kernels as lib
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.chain import QCONV_CHAIN
from braze.sw.compiler.frontend import evaluate, load_onnx
from braze.sw.compiler.fusion import DEFAULT_THRESHOLD, find_opportunities, fuse
from braze.sw.compiler.ir import InvalidGraph
from braze.sw.compiler.kernels import KernelError, run_kernel
from braze.sw.compiler.lower import lower
from braze.sw.compiler.quantize import quantize
from braze.sw.compiler.validate import validate
from braze.sw.runtime.runtime import Runtime
from braze.sw.runtime.session import InferenceSession

DEFAULT = Config.preset("default")


def conv_stack(N: int, C: int, H: int, layers, pool: int = 1, seed: int = 0):
    """Float ONNX ``(Conv -> Relu)*`` [-> MaxPool] on N x C x H x H, layers as (K_out, kernel, pad)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, c, side = [], [], "x", C, H
    for i, (k_out, k, pad) in enumerate(layers, start=1):
        inits += [(f"w{i}", rng.normal(0, 1 / np.sqrt(k * k * c), (k_out, c, k, k)).astype(np.float32)),
                  (f"b{i}", rng.normal(0, 0.1, k_out).astype(np.float32))]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[pad] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x, c, side = f"r{i}", k_out, side + 2 * pad - k + 1
    if pool > 1:
        nodes.append(helper.make_node("MaxPool", [x], ["y"], name="pool", kernel_shape=[pool] * 2,
                                      strides=[pool] * 2))
        side //= pool
    else:
        nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    return make_model(nodes, [("x", np.float32, [N, C, H, H])], [("y", np.float32, [N, c, side, side])],
                      inits, name="conv_stack")


@pytest.fixture(scope="module")
def padded_stack():
    """Two padded layers on a batch of 10 (symmetric activations: the chain kernel pads with zeros),
    the graph quantized and fused by the timing model, and an input."""
    rng = np.random.default_rng(1)
    calibration = rng.normal(size=(10, 6, 7, 7)).astype(np.float32)
    graph = quantize(load_onnx(conv_stack(10, 6, 7, [(8, 3, 1), (5, 2, 0)])), [{"x": calibration}],
                     symmetric_activations=True)
    fused, decisions = fuse(graph, DEFAULT, cache=KernelCache(disk=False))
    return graph, fused, decisions, rng.normal(size=(10, 6, 7, 7)).astype(np.float32)


def test_a_padded_stack_is_chained_on_its_merits(padded_stack):
    graph, fused, decisions, x = padded_stack
    (decision,) = [d for d in decisions if d.opportunity.kind == "conv_chain"]
    costs = dict(decision.candidates)
    assert list(costs) == ["separate", "chained"]
    gain = 1 - costs["chained"].cycles / costs["separate"].cycles
    assert decision.chosen == "chained" and not decision.forced
    assert decision.gain == pytest.approx(gain) and gain >= DEFAULT_THRESHOLD
    assert costs["chained"].bytes < costs["separate"].bytes       # the intermediate stays on chip
    assert "conv_chain(conv1_q -> conv2_q)" in str(decision) and "predicted gain" in str(decision)
    (chain,) = [n for n in fused.operators() if n.qualified_op == QCONV_CHAIN]
    assert chain.attrs["fused_ops"] == ("conv1_q", "conv1_q_act", "conv2_q", "conv2_q_act")
    assert validate(fused) is fused
    # The chain node evaluates exactly as the layers it replaced.
    assert np.array_equal(evaluate(fused, {"x": x})["y"], evaluate(graph, {"x": x})["y"])


@pytest.mark.parametrize("device", ["golden", "verilator"])
def test_the_chained_stack_is_bit_exact_on_the_devices(padded_stack, device):
    graph, fused, _, x = padded_stack
    compiled = lower(fused, DEFAULT, cache=KernelCache(disk=False))
    kernels = [step.kernel for step in compiled.steps if hasattr(step, "kernel")]
    assert [k.name for k in kernels] == ["conv2d_chain"]
    with open_device(device, DEFAULT) as opened:
        runtime = Runtime(compiled, opened)
        got = runtime.run({"x": x})["y"]
        (row,) = runtime.last_report.kernels
    assert np.array_equal(got, evaluate(graph, {"x": x})["y"])
    assert len(np.unique(got)) > 4
    # The 10x8x7x7 intermediate never crosses the bus: the kernel writes only its 10x5x6x6 output.
    assert row.dma_write_bytes == 10 * 5 * 6 * 6
    assert row.cycles > 0


@pytest.mark.parametrize("device", ["golden", "verilator"])
def test_the_digits_cnn_chained_by_its_bytes_and_whole_by_force(device):
    """The digits CNN's conv1 -> conv2+pool at the demo's batch, 64, on the default preset as shipped:
    the timing model predicts the chain 1.4% faster, under the threshold, with 79% fewer external bytes,
    so the bytes tie-break chains the convolutions; closing the chain with the FC layer is predicted a
    few cycles slower, so the FC layer stays a kernel of its own (two kernels).  Without the tie-break
    the plan stays split (three); ``force_fusion`` chains both whatever the prediction -- the whole CNN
    is one kernel.  All three give the evaluator's outputs, bit for bit."""
    cnn = models.CNN()
    data = models.load_digits_split()
    calibration = models.calibration_set(cnn, data, samples=32)
    x = cnn.inputs(data.x_val[:64])

    def run(force=(), tie_break=fusion.BYTES_TIE_BREAK):
        session = InferenceSession(cnn.to_onnx().SerializeToString(), device=device, config="default",
                                   calibration=calibration, cost_model="analytic", bytes_tie_break=tie_break,
                                   cache=KernelCache(disk=False), force_fusion=force, record=False)
        try:
            logits = session.run(None, {session.get_inputs()[0].name: x})[0]
        finally:
            session.close()
        kernels = list(session.compiled.kernels)
        chains = [d for d in session.fusion_decisions if d.opportunity.kind == "conv_chain"]
        return session, logits, kernels, chains

    split, split_logits, split_kernels, split_chains = run(tie_break=None)
    assert [d.chosen for d in split_chains] == ["separate"] and len(split_kernels) == 3
    assert np.array_equal(split_logits, evaluate(split.graph_after, {"x": x})["logits"])
    session, logits, kernels, chains = run()
    convs, fc = chains
    assert convs.opportunity.nodes == ("/conv1/Conv_q", "/conv2/Conv_q")
    assert fc.opportunity.nodes == ("/conv1/Conv_q", "/fc/Gemm_q")
    costs = dict(convs.candidates)
    assert convs.chosen == "chained" and convs.by_bytes and 0 <= convs.gain < DEFAULT_THRESHOLD
    assert costs["chained"].cycles <= costs["separate"].cycles
    assert costs["chained"].bytes <= (1 - fusion.BYTES_TIE_BREAK) * costs["separate"].bytes
    assert "fewer bytes: no slower, taken" in str(convs)
    costs = dict(fc.candidates)
    assert fc.chosen == "separate" and costs["chained"].cycles > costs["separate"].cycles
    assert len(kernels) == 2 and "conv2d_chain" in kernels[0]
    assert np.array_equal(logits, split_logits)
    session, logits, kernels, chains = run(("conv_chain",))
    assert [d.opportunity.nodes for d in chains] == [("/conv1/Conv_q", "/conv2/Conv_q"),
                                                     ("/conv1/Conv_q", "/fc/Gemm_q")]
    for decision in chains:
        costs = dict(decision.candidates)
        assert decision.chosen == "chained" and decision.forced
        assert costs["chained"].bytes < costs["separate"].bytes
    (kernel,) = kernels
    assert "conv2d_chain" in kernel
    assert np.array_equal(logits, split_logits)
    assert np.array_equal(logits, evaluate(session.graph_after, {"x": x})["logits"])
    if device == "verilator":
        return
    # Priced in energy (external bytes at 244 pJ each), the chain wins on its merits: the objective option.
    energy = InferenceSession(cnn.to_onnx().SerializeToString(), config="default", calibration=calibration,
                              cost_model="analytic", cache=KernelCache(disk=False), objective="energy")
    energy.compile_for({energy.get_inputs()[0].name: x.shape})
    chained = [d for d in energy.fusion_decisions if d.opportunity.kind == "conv_chain"]
    assert len(chained) == 2
    for decision in chained:
        assert decision.chosen == "chained" and not decision.forced and decision.gain > DEFAULT_THRESHOLD
        assert "in energy" in str(decision)
    with pytest.raises(Exception, match="cannot be forced"):
        InferenceSession(cnn.to_onnx().SerializeToString(), calibration=calibration, force_fusion=("skip",))


def test_no_chain_where_the_kernel_would_pad_a_nonzero_zero_point():
    """Asymmetric activations (zero point -128) of a padded stack: the chain kernel pads with zeros, so
    the opportunity is not offered and the layers stay separate kernels."""
    rng = np.random.default_rng(2)
    calibration = rng.normal(size=(4, 6, 7, 7)).astype(np.float32)
    graph = quantize(load_onnx(conv_stack(4, 6, 7, [(8, 3, 1), (5, 3, 1)])), [{"x": calibration}])
    fused, decisions = fuse(graph, DEFAULT, cache=KernelCache(disk=False))
    assert not [d for d in decisions if d.opportunity.kind == "conv_chain"]
    assert not [o for o in find_opportunities(fused) if o.kind == "conv_chain"]


def test_validation_rejects_a_malformed_chain(padded_stack):
    _, fused, _, _ = padded_stack
    (chain,) = [n for n in fused.operators() if n.qualified_op == QCONV_CHAIN]
    layers = [dict(layer) for layer in chain.attrs["layers"]]

    def with_layers(changed) -> object:
        node = chain.with_attrs(layers=tuple(tuple(sorted(layer.items())) for layer in changed))
        return fused.edit(substitute={chain.name: node})

    with pytest.raises(InvalidGraph, match=r"layer 2: x_zero_point 5 differs"):
        validate(with_layers([layers[0], {**layers[1], "x_zero_point": 5}]))
    with pytest.raises(InvalidGraph, match=r"layer 1: strides \(2, 2\)"):
        validate(with_layers([{**layers[0], "strides": (2, 2)}, layers[1]]))
    with pytest.raises(InvalidGraph, match="only the last layer of a chain pools"):
        validate(with_layers([{**layers[0], "pool": 2}, layers[1]]))
    # Layer 2's weights swapped for layer 1's: 6 input channels where the layer before gives 8.
    swapped = chain.replace(inputs=(chain.inputs[0], *chain.inputs[1:3], *chain.inputs[1:3]))
    with pytest.raises(InvalidGraph, match=f"node '{chain.name}': layer 2: weight .* expects 6 input "):
        validate(fused.edit(substitute={chain.name: swapped}))
    with pytest.raises(InvalidGraph, match="takes 5 inputs"):
        validate(fused.edit(substitute={chain.name: chain.replace(inputs=chain.inputs[:3])}))


@pytest.mark.parametrize("N, C, H, layers, pool, n_out", [
    (64, 1, 8, [(8, 3, 0), (16, 3, 0)], 2, 10),      # the digits CNN
    (5, 6, 7, [(8, 3, 1), (8, 2, 0)], 1, 3),         # no pooling, padding inside
    (7, 8, 6, [(8, 3, 1), (16, 3, 0)], 2, 17),       # three FC column tiles
])
def test_a_chain_closed_by_an_fc_layer_equals_the_chain_then_a_gemm(N, C, H, layers, pool, n_out):
    rng = np.random.default_rng(N + n_out)
    specs = [lib.ConvLayer(k_out, k, k, pad, bias=True, requant=True, act="relu") for k_out, k, pad in layers]
    fc = lib.FCLayer(n_out, bias=True, requant=True, act="clip", clip=(-100, 90), out_zp=-13)
    chain = lib.conv2d_chain(DEFAULT, N, C, H, H, specs, pool=pool)
    whole = lib.conv2d_chain(DEFAULT, N, C, H, H, specs, pool=pool, fc=fc)
    inputs, channels = {"x": rng.integers(-128, 128, (N, H, H, C), dtype=np.int8)}, C
    for index, (k_out, k, _) in enumerate(layers, start=1):
        weights = rng.integers(-128, 128, (k_out, channels, k, k), dtype=np.int8)
        inputs[f"B{index}"] = lib.conv2d_weights(DEFAULT, weights, chain, f"B{index}")
        inputs[f"params{index}"] = np.stack([rng.integers(-3000, 3000, k_out),
                                             rng.integers(1 << 13, 1 << 15, k_out),
                                             np.full(k_out, 22)]).astype(np.int32)
        channels = k_out
    with open_device("golden", DEFAULT) as device:
        pooled = run_kernel(device, chain, inputs).outputs["out"]                   # NHWC
        features = pooled.shape[1] * pooled.shape[2] * pooled.shape[3]
        weights = rng.integers(-128, 128, (features, n_out), dtype=np.int8)         # rows in (c, y, x) order
        rows = dict(bias=rng.integers(-3000, 3000, n_out), mult=rng.integers(1 << 13, 1 << 15, n_out),
                    shift=np.full(n_out, 20))
        gemm = lib.gemm(DEFAULT, N, features, n_out, bias=True, requant=True, act="clip", clip=(-100, 90),
                        out_zp=-13)
        flat = pooled.transpose(0, 3, 1, 2).reshape(N, features)                    # ONNX Flatten of NCHW
        expected = run_kernel(device, gemm, {"A": flat, "B": weights,
                                             "params": lib.pack_params(gemm, **rows)}).outputs["out"]
        closing = len(layers) + 1
        inputs[f"B{closing}"] = lib.chain_fc_weights(DEFAULT, weights, whole)
        inputs[f"params{closing}"] = np.stack([rows["bias"], rows["mult"], rows["shift"]]).astype(np.int32)
        result = run_kernel(device, whole, inputs)
    np.testing.assert_array_equal(result.outputs["out"], expected)
    assert len(np.unique(expected)) > 2
    # Only the logits leave the chip.
    assert result.counters["dma_write_bytes"] == N * n_out
    with pytest.raises(KernelError, match="no FC layer"):
        lib.chain_fc_weights(DEFAULT, weights, chain)
    with pytest.raises(KernelError, match="multiple of cols"):
        lib.conv2d_chain(DEFAULT, 2, 1, 8, 8, [lib.ConvLayer(12, 3, 3, requant=True)], fc=fc)


def test_validation_rejects_a_malformed_fc_layer():
    cnn = models.CNN()
    calibration = models.calibration_set(cnn, models.load_digits_split(), samples=16)
    session = InferenceSession(cnn.to_onnx().SerializeToString(), calibration=calibration,
                               cost_model="analytic", cache=KernelCache(disk=False),
                               force_fusion=("conv_chain",))
    session.compile_for({session.get_inputs()[0].name: (4, 1, 8, 8)})
    graph = session.graph_after
    (chain,) = [n for n in graph.operators() if n.qualified_op == QCONV_CHAIN]
    assert chain.attrs.get("fc") is not None and validate(graph) is graph
    # The FC weights of the wrong layer (conv2's bias as FC bias: 16 entries, not 10).
    wrong_bias = chain.replace(inputs=(*chain.inputs[:-1], chain.inputs[4]))
    with pytest.raises(InvalidGraph, match=r"FC layer: bias .* must be int32 of shape \(10,\)"):
        validate(graph.edit(substitute={chain.name: wrong_bias}))
    fc = dict(chain.attrs["fc"])
    with pytest.raises(InvalidGraph, match="FC layer: flatten_a=None"):
        validate(graph.edit(substitute={chain.name: chain.with_attrs(
            fc=tuple(sorted((k, v) for k, v in fc.items() if k != "flatten_a")))}))
    with pytest.raises(InvalidGraph, match="FC layer: x_zero_point 3 differs"):
        validate(graph.edit(substitute={chain.name: chain.with_attrs(
            fc=tuple(sorted({**fc, "x_zero_point": 3}.items())))}))
