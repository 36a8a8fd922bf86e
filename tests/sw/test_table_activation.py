"""Table activations: element-wise chains of a QDQ graph become a 256-entry int8 table, run in the
EPILOGUE of the preceding GEMM (act=table) or by the table kernel, bit-exact to the frontend's
evaluator of the float chain."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from onnx_models import make_model, quantize_qdq, run_ort

import braze
from braze.isa import Activation, Config, Opcode, arith
from braze.sim.device import open_device
from braze.sw.compiler import kernels as K
from braze.sw.compiler.frontend import evaluate, load_onnx
from braze.sw.compiler.passes import simplify
from braze.sw.compiler.quantize import lower_qdq
from braze.sw.compiler.tables import QTABLE, apply_table
from braze.sw.compiler.validate import validate

# The TorchScript exporter (dynamo=False) writes GELU as the erf chain; torch warns that it is legacy.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = Config.preset("tiny")
X_SCALE, X_ZP, Y_SCALE, Y_ZP = 0.05, 3, 0.01, -20


def _qdq_chain_model(chain, extra=(), opset=17, width=64):
    """int8 x -> DQ -> ``chain`` (nodes from "xf" to "yf") -> Q -> int8 y, per-tensor parameters."""
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"], name="dq"), *chain,
             helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"], name="q")]
    initializers = [("xs", np.float32(X_SCALE)), ("xz", np.int8(X_ZP)), ("ys", np.float32(Y_SCALE)),
                    ("yz", np.int8(Y_ZP)), *extra]
    return make_model(nodes, [("x", np.int8, [4, width])], [("y", np.int8, [4, width])], initializers,
                      opset=opset)


def _node(op, inputs, output, **attrs):
    return helper.make_node(op, inputs, [output], name=f"{op}_{output}", **attrs)


CHAINS = {
    "sigmoid": ([_node("Sigmoid", ["xf"], "yf")], ()),
    "tanh": ([_node("Tanh", ["xf"], "yf")], ()),
    "gelu_erf": ([_node("Div", ["xf", "sqrt2"], "a"), _node("Erf", ["a"], "b"),
                  _node("Add", ["b", "one"], "c"), _node("Mul", ["xf", "c"], "d"),
                  _node("Mul", ["d", "half"], "yf")],
                 (("sqrt2", np.float32(1.4142135)), ("one", np.float32(1.0)), ("half", np.float32(0.5)))),
    "hardswish": ([_node("HardSwish", ["xf"], "yf")], ()),
    "hardsigmoid": ([_node("HardSigmoid", ["xf"], "yf", alpha=0.25, beta=0.4)], ()),
    "silu": ([_node("Sigmoid", ["xf"], "s"), _node("Mul", ["xf", "s"], "yf")], ()),
    "leakyrelu": ([_node("LeakyRelu", ["xf"], "yf", alpha=0.1)], ()),
    "exp": ([_node("Neg", ["xf"], "n"), _node("Exp", ["n"], "yf")], ()),
    "gelu_op": ([_node("Gelu", ["xf"], "yf")], ()),                  # opset 20
}


def _lowered(model, *, tables=True):
    return validate(simplify(lower_qdq(simplify(load_onnx(model)), tables=tables)))


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_element_wise_chains_become_one_table_equal_to_the_evaluator(name):
    chain, extra = CHAINS[name]
    model = _qdq_chain_model(chain, extra, opset=20 if name == "gelu_op" else 17)
    with_table, without = _lowered(model), _lowered(model, tables=False)
    assert [n.qualified_op for n in with_table.operators()] == [QTABLE]
    assert QTABLE not in [n.qualified_op for n in without.operators()]
    # Every int8 value, through the table and through the evaluator's float chain.
    x = np.arange(-128, 128).astype(np.int8).reshape(4, 64)
    assert np.array_equal(evaluate(with_table, {"x": x})["y"], evaluate(without, {"x": x})["y"])
    assert len(set(evaluate(without, {"x": x})["y"].ravel().tolist())) > 10     # not a constant function


def test_chains_that_are_not_a_function_of_one_value_stay():
    vector = ("bias", np.linspace(-1, 1, 64).astype(np.float32))          # not a scalar constant
    model = _qdq_chain_model([_node("Add", ["xf", "bias"], "s"), _node("Sigmoid", ["s"], "yf")], (vector,))
    assert QTABLE not in [n.qualified_op for n in _lowered(model).operators()]


def test_table_lookup_saturates_first_and_indexes_by_the_byte():
    table = np.arange(256).astype(np.uint8).view(np.int8)        # entry e holds the byte e
    x = np.array([-1000, -129, -128, -1, 0, 1, 127, 128, 1 << 20])
    assert arith.table_lookup(x, table).tolist() == [-128, -128, -128, -1, 0, 1, 127, 127, 127]
    assert apply_table(table, np.array([-128, -1, 5], np.int8)).tolist() == [-128, -1, 5]


@pytest.mark.parametrize("out", ["int8", "table alone"])
def test_kernels_apply_the_table_on_golden(out):
    rng = np.random.default_rng(3)
    table = rng.integers(-128, 128, 256).astype(np.int8)
    device = open_device("golden", TINY)
    if out == "table alone":
        kernel = K.table(TINY, (3, 37))
        x = rng.integers(-128, 128, (3, 37)).astype(np.int8)
        result = K.run_kernel(device, kernel, {"x": x, "table": K.pack_table(table)})
        assert np.array_equal(result.outputs["out"], table[x.astype(np.int64) & 0xFF])
    else:
        a = rng.integers(-128, 128, (20, 16)).astype(np.int8)
        b = rng.integers(-127, 128, (16, 12)).astype(np.int8)
        kernel = K.gemm(TINY, 20, 16, 12, requant=True, act="table")
        mult, shift = np.full(12, 1 << 20), np.full(12, 26)
        result = K.run_kernel(device, kernel, {"A": a, "B": b, "params": K.pack_params(kernel, mult=mult,
                                                                                   shift=shift),
                                               "table": table})
        expected = arith.epilogue(a.astype(np.int64) @ b.astype(np.int64), mult=mult, shift=shift,
                                  act=Activation.TABLE, table=table)
        assert np.array_equal(result.outputs["out"], expected)
    assert sum(insn.opcode is Opcode.TABLE for insn in kernel.instructions) == 1
    assert result.counters["insn_table"] == 1


ACTIVATIONS = {"sigmoid": torch.nn.Sigmoid, "gelu": torch.nn.GELU, "hardswish": torch.nn.Hardswish,
               "silu": torch.nn.SiLU}


def _mlp_session(name, tmp_path, device):
    """Linear -> activation -> Linear exported by torch (TorchScript exporter, so GELU is its erf chain),
    quantized by onnxruntime's quantize_static (QDQ, uint8 activations)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), ACTIVATIONS[name](), torch.nn.Linear(32, 8)).eval()
    torch.onnx.export(net, (torch.zeros(4, 16),), str(tmp_path / "exported.onnx"), dynamo=False,
                      opset_version=17, input_names=["x"], output_names=["y"])
    exported = onnx.load(str(tmp_path / "exported.onnx"))
    if name == "gelu":
        assert {"Div", "Erf", "Add", "Mul"} <= {node.op_type for node in exported.graph.node}
    rng = np.random.default_rng(1)
    path = quantize_qdq(exported, tmp_path, (4, 16), rng)
    session = braze.InferenceSession(str(path), config="tiny", device=device)
    return session, path, rng.normal(size=(4, 16)).astype(np.float32)


def _check_fused_and_exact(session, path, x):
    (y,) = session.run(None, {"x": x})
    # The activation ran in the first GEMM's EPILOGUE: two kernels, no element-wise op on the host.
    placement = session.compiled.placement
    kernels = [where for where in placement.values() if where.startswith("accel:")]
    assert len(kernels) == 2, placement
    assert all(where.split(": ")[1] in ("QuantizeLinear has no accelerator kernel",
                                        "DequantizeLinear has no accelerator kernel")
               for where in placement.values() if where.startswith("cpu:")), placement
    first = session.kernels[kernels[0].split(": ")[1]]
    assert sum(insn.opcode is Opcode.TABLE for insn in first.instructions) == 1
    assert any(insn.opcode is Opcode.EPILOGUE and insn.act is Activation.TABLE for insn in first.instructions)
    # Bit-exact to the frontend's evaluator running the activation in float between its Q and DQ.
    reference = _lowered(onnx.load(str(path)), tables=False)
    assert np.array_equal(y, evaluate(reference, {"x": x})["y"])
    return y


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_qdq_mlp_activation_runs_fused_bit_exact_and_agrees_with_onnxruntime(name, tmp_path):
    session, path, x = _mlp_session(name, tmp_path, "golden")
    y = _check_fused_and_exact(session, path, x)
    model = onnx.load(str(path))
    output_dq = next(node for node in model.graph.node if node.output[0] == "y")
    scale = float(onnx.numpy_helper.to_array(
        next(init for init in model.graph.initializer if init.name == output_dq.input[1])))
    (ort_y,) = run_ort(model, {"x": x})
    assert np.abs(y - ort_y).max() <= 2 * scale      # onnxruntime rounds its float MatMul differently


def test_gelu_mlp_on_verilator_equals_golden(tmp_path):
    session, path, x = _mlp_session("gelu", tmp_path, "verilator")
    try:
        y = _check_fused_and_exact(session, path, x)
    finally:
        session.close()
    golden, _, _ = _mlp_session("gelu", tmp_path, "golden")
    assert np.array_equal(y, golden.run(None, {"x": x})[0])


def test_a_table_without_a_gemm_runs_as_the_table_kernel():
    model = _qdq_chain_model(CHAINS["silu"][0])
    session = braze.InferenceSession(model, config="tiny", device="golden")
    x = np.random.default_rng(2).integers(-128, 128, (4, 64)).astype(np.int8)
    (y,) = session.run(None, {"x": x})
    assert [where for where in session.compiled.placement.values() if "table" in where], \
        session.compiled.placement
    assert np.array_equal(y, evaluate(_lowered(model, tables=False), {"x": x})["y"])


def test_conv_hardswish_runs_fused_and_bit_exact(tmp_path):
    """The table in a convolution's EPILOGUE (MobileNetV3's Conv -> HardSwish)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Hardswish(),
                              torch.nn.Conv2d(8, 4, 1)).eval()
    torch.onnx.export(net, (torch.zeros(1, 3, 6, 6),), str(tmp_path / "exported.onnx"), dynamo=False,
                      opset_version=17, input_names=["x"], output_names=["y"])
    rng = np.random.default_rng(5)
    path = quantize_qdq(onnx.load(str(tmp_path / "exported.onnx")), tmp_path, (1, 3, 6, 6), rng)
    session = braze.InferenceSession(str(path), config="tiny", device="golden")
    x = rng.normal(size=(1, 3, 6, 6)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    kernels = [where.split(": ")[1] for where in session.compiled.placement.values()
               if where.startswith("accel:")]
    assert len(kernels) == 2 and all("conv2d" in kernel for kernel in kernels)
    assert any(insn.opcode is Opcode.TABLE for insn in session.kernels[kernels[0]].instructions)
    assert np.array_equal(y, evaluate(_lowered(onnx.load(str(path)), tables=False), {"x": x})["y"])


def test_bench_table_compares_fused_standalone_and_host(capsys):
    from braze.sw.runtime import table_bench

    assert table_bench.main(["--config", "tiny", "--batch", "2"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    values = dict(item.split("=") for item in last.removeprefix("table: ").split())
    assert values["exact"] == "1"
    # A table alone is two more kernels with their transfers: slower than fused, on the same GEMMs.
    assert int(values["standalone_cycles"]) > int(values["fused_cycles"]) > 0


def test_gelu_with_quantized_constants_and_one_dq_per_reader_is_one_table():
    """The dynamo exporter's GELU as onnxruntime quantizes it: a Q/DQ pair after every step, the 1 and
    the 0.5 themselves quantized constants (DQ of an int8 scalar), and the int8 input dequantized once
    per reader.  Still a function of one int8 value: one braze.QTable, exactly the chain."""
    def q(name, value, dtype=np.int8):
        return [(f"{name}_s", np.float32(value)), (f"{name}_z", np.array(0, dtype))]

    nodes = [helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["xa"]),
             helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["xb"]),    # a second DQ of x
             helper.make_node("Div", ["xa", "sqrt2"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"])]
    inits = [*q("x", 0.05), ("sqrt2", np.float32(1.4142135)), *q("e", 1 / 127), *q("a", 2 / 127),
             *q("m", 1 / 127), *q("y", 0.04), *q("one", 1 / 127), *q("half", 0.5 / 127),
             ("one_q", np.int8(127)), ("half_q", np.int8(127))]
    previous = "e"
    for step, (op, constant) in enumerate((("Add", "one"), ("Mul", "half"))):
        quantized, dequantized = f"{previous}_q", f"{previous}_dq"
        scale = ("e", "a")[step]
        nodes += [helper.make_node("QuantizeLinear", [previous, f"{scale}_s", f"{scale}_z"], [quantized]),
                  helper.make_node("DequantizeLinear", [quantized, f"{scale}_s", f"{scale}_z"],
                                   [dequantized]),
                  helper.make_node("DequantizeLinear", [f"{constant}_q", f"{constant}_s", f"{constant}_z"],
                                   [f"{constant}_f"]),
                  helper.make_node(op, [dequantized, f"{constant}_f"], [f"{op}_out"])]
        previous = f"{op}_out"
    nodes += [helper.make_node("QuantizeLinear", [previous, "m_s", "m_z"], ["mq"]),
              helper.make_node("DequantizeLinear", ["mq", "m_s", "m_z"], ["mf"]),
              helper.make_node("Mul", ["xb", "mf"], ["g"]),
              helper.make_node("QuantizeLinear", ["g", "y_s", "y_z"], ["y"])]
    model = make_model(nodes, [("x", np.int8, [2, 9])], [("y", np.int8, [2, 9])], inits)
    graph = simplify(load_onnx(model))
    lowered = simplify(lower_qdq(graph))
    assert [n.qualified_op for n in lowered.operators()] == [QTABLE]
    x = np.arange(-128, 128, 14, dtype=np.int8)[:18].reshape(2, 9)
    want = evaluate(graph, {"x": x})["y"]
    assert np.array_equal(evaluate(lowered, {"x": x})["y"], want)
    np.testing.assert_array_equal(want, run_ort(model, {"x": x})[0])
