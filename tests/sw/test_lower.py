"""Lowering: kernel relocation, external-memory allocation with reuse, layouts and host padding."""

from __future__ import annotations

import numpy as np
from onnx_models import conv_model

from braze.isa import Activation, Config, Memory, encode_program
from braze.isa.arith import epilogue
from braze.sim.device import open_device
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.frontend import evaluate
from braze.sw.compiler.kernels import gemm, link, pack_params, run_kernel
from braze.sw.compiler.lower import KernelStep, PadStep, TransferStep, relocate
from braze.sw.runtime.bench import builtin_models
from braze.sw.runtime.session import InferenceSession

TINY = Config.preset("tiny")


def test_relocated_kernel_computes_the_same_at_new_addresses():
    rng = np.random.default_rng(0)
    kernel = gemm(TINY, 6, 12, 8, bias=True, act="relu", out="int32")
    a = rng.integers(-128, 128, (6, 12), dtype=np.int8)
    b = rng.integers(-128, 128, (12, 8), dtype=np.int8)
    bias = rng.integers(-1000, 1000, 8)
    inputs = {"A": a, "B": b, "params": pack_params(kernel, bias=bias)}
    base = 0x8000
    moved = relocate(kernel, {name: base + 0x1000 * i for i, name in enumerate(kernel.operands)})
    assert all(moved.operands[name].addr == base + 0x1000 * i for i, name in enumerate(kernel.operands))
    assert len(moved.instructions) == len(kernel.instructions)
    with open_device("golden", TINY) as device:
        result = run_kernel(device, moved, inputs)
    expected = epilogue(a.astype(np.int64) @ b.astype(np.int64), bias=bias.astype(np.int64),
                        act=Activation.RELU, out=Memory.ACC)
    assert np.array_equal(result.outputs["out"], expected)
    # Nothing of the moved program touches the old operand addresses.
    old = [(op.addr, op.end) for op in kernel.operands.values()]
    for insn in moved.instructions:
        if hasattr(insn, "dram") and not getattr(insn, "zero", False):
            assert not any(start <= insn.dram < end for start, end in old if start < base)


def _mlp_session(layers: int = 5) -> InferenceSession:
    from onnx import helper
    from onnx_models import make_model

    rng = np.random.default_rng(1)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append((f"w{i}", rng.normal(0, 0.3, (16, 16)).astype(np.float32)))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    model = make_model(nodes, [("x", np.float32, [4, 16])], [(x, np.float32, [4, 16])], inits)
    return InferenceSession(model, config="tiny", calibration=rng.normal(size=(4, 16)).astype(np.float32),
                            cache=KernelCache(disk=False)), x


def test_activation_buffers_are_reused_once_their_lifetimes_end():
    session, output = _mlp_session()
    compiled = session.compiled
    activations = [b for b in compiled.buffers if b.kind == "activation"]
    for i, first in enumerate(activations):
        for second in activations[i + 1:]:
            if not (first.last < second.first or second.last < first.first):
                apart = first.addr + first.nbytes <= second.addr or second.addr + second.nbytes <= first.addr
                assert apart, f"live buffers {first.name} and {second.name} overlap"
    assert len({b.addr for b in activations}) < len(activations)          # some reuse happened
    kernels = [s for s in compiled.steps if isinstance(s, KernelStep)]
    assert len(kernels) == 5 and len(compiled.segments) == 1                # one linked device run
    # The binary is patched word by word; it must be exactly the placed kernels, linked and encoded.
    placed = [compiled.kernels[s.name] for s in kernels]
    assert compiled.segments[0].binary == encode_program(link(placed))
    x = np.random.default_rng(2).normal(size=(4, 16)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    assert np.array_equal(y, evaluate(session.graph_before, {"x": x})[output])
    assert session.report().device_runs == 1


def test_nonzero_input_zero_point_with_padding_pads_on_the_host():
    rng = np.random.default_rng(3)
    session = InferenceSession(conv_model(2), config="tiny",
                               calibration=rng.normal(size=(2, 1, 8, 8)).astype(np.float32),
                               cache=KernelCache(disk=False))
    conv1 = session.graph_before.node("conv1_q")
    assert conv1.attrs["x_zero_point"] != 0 and any(conv1.attrs["pads"])
    pads = [s for s in session.compiled.steps if isinstance(s, PadStep)]
    assert pads and pads[0].value == conv1.attrs["x_zero_point"]
    assert any(n.op_type == "Pad" for n in session.graph_lowered.nodes)
    x = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    assert np.array_equal(y, evaluate(session.graph_before, {"x": x})["y"])


def test_conv_outputs_stay_nhwc_and_flatten_folds_into_permuted_weights():
    model, x = builtin_models(batch=2)["cnn"]
    session = InferenceSession(model, config="tiny", calibration=x, cache=KernelCache(disk=False))
    (y,) = session.run(None, {"x": x})
    assert np.array_equal(y, evaluate(session.graph_before, {"x": x})["logits"])
    compiled = session.compiled
    kernels = [s for s in compiled.steps if isinstance(s, KernelStep)]
    assert [s.kernel.name for s in kernels] == ["conv2d", "conv2d", "maxpool2d", "gemm"]
    # Between the kernels nothing goes through the host: one transfer in, one out.
    transfers = [s for s in compiled.steps if isinstance(s, TransferStep)]
    assert [t.direction for t in transfers].count("to_device") <= 2
    assert kernels[-1].operands["A"].layout == "NHWC"
    for segment in compiled.segments:         # convolutions have zero-fill LOADs, which stay unpatched
        assert segment.binary == encode_program(link([compiled.kernels[s.name] for s in segment.steps]))


def test_memory_map_fits_the_config():
    session, _ = _mlp_session(layers=2)
    compiled = session.compiled
    assert compiled.memory_bytes <= compiled.config.dram_bytes
    regions = sorted((b.addr, b.addr + b.nbytes, b.kind) for b in compiled.buffers if b.kind != "activation")
    for (_, end, _), (start, _, _) in zip(regions, regions[1:], strict=False):
        assert end <= start
