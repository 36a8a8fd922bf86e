"""braze.InferenceSession end to end on the golden device: exactness, fusion from counters, bad input."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_models import conv_model, digits_data, digits_mlp, make_model, quantize_qdq

import braze
from braze.isa.errors import BrazeError
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.frontend import ModelLoadError, UnsupportedOperator, evaluate
from braze.sw.compiler.ir import NodeKind
from braze.sw.compiler.validate import validate
from braze.sw.runtime.session import InferenceSession, InputError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAZE_CACHE_DIR", str(tmp_path / "kernels"))


def _conv_session(fuse: bool = True, **options) -> tuple[InferenceSession, np.ndarray]:
    rng = np.random.default_rng(1)
    calibration = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
    session = InferenceSession(conv_model(3), config="tiny", calibration=calibration, fuse=fuse,
                               cache=KernelCache(disk=False), **options)
    return session, rng.normal(size=(2, 1, 8, 8)).astype(np.float32)


def _mlp_model(seed: int = 0) -> onnx.ModelProto:
    """Gemm-Relu-Gemm-Relu-Gemm-Softmax with a symbolic batch (as torch.onnx.export writes an MLP)."""
    rng = np.random.default_rng(seed)
    sizes = [(64, 24), (24, 16), (16, 10)]
    nodes, inits, x = [], [], "x"
    for i, (k, n) in enumerate(sizes):
        inits += [(f"w{i}", rng.normal(0, 0.3, (n, k)).astype(np.float32)),
                  (f"b{i}", rng.normal(0, 0.1, n).astype(np.float32))]
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"h{i}"], name=f"/fc{i}/Gemm",
                                      transB=1))
        x = f"h{i}"
        if i < len(sizes) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"a{i}"], name=f"/relu{i}/Relu"))
            x = f"a{i}"
    nodes.append(helper.make_node("Softmax", [x], ["probs"], name="/softmax/Softmax", axis=1))
    return make_model(nodes, [("x", np.float32, ["batch", 64])], [("probs", np.float32, ["batch", 10])],
                      inits, name="mlp")


def test_conv_model_runs_bit_exactly_against_the_quantized_graph():
    session, x = _conv_session()
    (y,) = session.run(None, {"x": x})
    expected = evaluate(session.graph_before, {"x": x})["y"]
    assert y.dtype == expected.dtype and np.array_equal(y, expected)
    placement = session.compiled.placement
    assert {name for name, where in placement.items() if where.startswith("accel")} >= {
        "conv1_q", "conv2_q", "fc_q", "pool1_q"}
    assert all(validate(g) is g for g in (session.graph_before, session.graph_after, session.graph_lowered))
    # The lowered graph makes the host <-> device traffic explicit, and still computes the same function.
    transfers = [n for n in session.graph_lowered.nodes if n.kind is NodeKind.TRANSFER]
    assert {n.attrs["dst"] for n in transfers} == {"dram", "host"}
    assert np.array_equal(evaluate(session.graph_lowered, {"x": x})["y"], expected)


def test_mlp_with_symbolic_batch_compiles_per_shape_and_is_exact():
    rng = np.random.default_rng(2)
    session = InferenceSession(_mlp_model(), config="tiny", calibration=rng.random((32, 64), np.float32),
                               cache=KernelCache(disk=False))
    inputs = [(i.name, i.shape, i.type) for i in session.get_inputs()]
    assert inputs == [("x", ["batch", 64], "tensor(float)")]
    assert [o.name for o in session.get_outputs()] == ["probs"]
    for batch in (3, 7, 3):           # back to 3: its weights must be reloaded over batch 7's
        x = rng.random((batch, 64), np.float32)
        (probs,) = session.run(["probs"], {"x": x})
        assert probs.shape == (batch, 10)
        assert np.array_equal(probs, evaluate(session.graph_before, {"x": x})["probs"])
        gemm_rows = [r for r in session.report().kernels if "gemm" in r.kernel]
        assert len(gemm_rows) == 3
        # Each GEMM's MAC counter is exactly batch * K * N of its layer.
        layers = [(64, 24), (24, 16), (16, 10)]
        assert sorted(r.macs for r in gemm_rows) == sorted(batch * k * n for k, n in layers)
    # Softmax is not an accelerator op: it runs on the CPU, after an explicit transfer back.
    assert session.compiled.placement["/softmax/Softmax"].startswith("cpu")


def test_skl2onnx_digits_mlp_with_fallback_classifies_like_the_quantized_graph():
    x, labels = digits_data()
    model = digits_mlp()
    with pytest.raises(UnsupportedOperator, match="ArrayFeatureExtractor"):
        InferenceSession(model, config="tiny", calibration=x[:100])
    session = InferenceSession(model, config="tiny", calibration=x[:200], allow_fallback=True)
    batch = x[1300:1340]
    label, probabilities = session.run(None, {session.get_inputs()[0].name: batch})
    expected = evaluate(session.graph_before, {session.get_inputs()[0].name: batch})
    assert np.array_equal(label, expected["label"])
    assert np.array_equal(probabilities, expected["probabilities"])
    assert (label == labels[1300:1340]).mean() > 0.8
    fallback = [n for n, where in session.compiled.placement.items() if where == "cpu: CPU fallback op"]
    assert fallback == ["ArrayFeatureExtractor"]


def test_fused_and_unfused_agree_and_fusion_saves_cycles_and_bytes():
    fused, x = _conv_session(fuse=True)
    unfused, _ = _conv_session(fuse=False)
    (y_fused,) = fused.run(None, {"x": x})
    (y_unfused,) = unfused.run(None, {"x": x})
    assert np.array_equal(y_fused, y_unfused)
    a, b = fused.report(), unfused.report()
    assert len(a.kernels) < len(b.kernels)
    assert a.total_cycles < b.total_cycles
    assert a.dma_bytes < b.dma_bytes
    assert a.total_macs == b.total_macs
    fused_rows = [r for r in a.kernels if len(r.ops) == 2]
    assert {r.ops for r in fused_rows} == {("conv1_q", "conv1_q_act"), ("conv2_q", "conv2_q_act")}


def test_report_rows_come_from_the_counter_snapshots():
    session, x = _conv_session()
    session.run(None, {"x": x})
    report = session.report()
    config = session.config
    for row in report.kernels:
        assert row.cycles == row.counters["cycles"] > 0
        assert row.utilisation == pytest.approx(row.macs / (row.cycles * config.rows * config.cols))
        kernel = session.kernels[row.kernel]
        assert row.macs == kernel.macs
        # Every kernel reads at least its input and writes at least its output.
        assert row.dma_read_bytes >= kernel.operands["x" if "x" in kernel.operands else "A"].nbytes
    table = report.table()
    assert all(row.kernel in table for row in report.kernels)
    assert "total" in table and "host overhead" in table
    assert report.host_seconds >= 0 and report.device_runs >= 1


def test_kernels_have_assembly_and_the_session_exports_from_braze():
    assert braze.InferenceSession is InferenceSession
    session, _ = _conv_session()
    assert session.kernels
    for kernel in session.kernels.values():
        assert "counters" in kernel.asm.splitlines()[-1]


def test_profiling_records_host_side_tensors():
    session, x = _conv_session(profile=True)
    session.run(None, {"x": x})
    assert session.profiles["x"].shape == x.shape
    assert session.profiles["x"].min == pytest.approx(float(x.min()))
    assert "y" in session.profiles


def test_qdq_model_from_onnxruntime_quantize_static_runs_exactly(tmp_path):
    rng = np.random.default_rng(4)
    path = quantize_qdq(conv_model(5), tmp_path, (2, 1, 8, 8), rng)
    session = InferenceSession(str(path), config="tiny")
    x = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    assert np.array_equal(y, evaluate(session.graph_before, {"x": x})["y"])
    assert sum(where.startswith("accel: k") for where in session.compiled.placement.values()) >= 3


def test_bad_inputs_get_clear_errors(tmp_path):
    session, x = _conv_session()
    with pytest.raises(InputError, match=r"input 'x': expected dtype float32, got float64"):
        session.run(None, {"x": x.astype(np.float64)})
    with pytest.raises(InputError, match=r"input 'x': expected shape \[2, 1, 8, 8\], got \[2, 1, 8, 9\]"):
        session.run(None, {"x": np.zeros((2, 1, 8, 9), np.float32)})
    with pytest.raises(InputError, match="missing input 'x'"):
        session.run(None, {})
    with pytest.raises(InputError, match=r"unknown input\(s\) \['z'\]"):
        session.run(None, {"x": x, "z": x})
    with pytest.raises(InputError, match=r"unknown output\(s\) \['nope'\]"):
        session.run(["nope"], {"x": x})
    with pytest.raises(InputError, match="numpy array"):
        session.run(None, {"x": x.tolist()})
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a model")
    with pytest.raises(ModelLoadError, match="corrupt.onnx"):
        InferenceSession(str(corrupt))
    unsupported = make_model([helper.make_node("Det", ["x"], ["y"], name="det")], [("x", np.float32, [2, 2])],
                             [("y", np.float32, [])])
    with pytest.raises(UnsupportedOperator, match="Det in node 'det'"):
        InferenceSession(unsupported)
    assert issubclass(InputError, BrazeError)


def test_cpu_fallback_between_device_kernels_uses_explicit_transfers(monkeypatch):
    """A host op (Erf, which no kernel runs) between two quantized layers: device -> host -> CPU -> device.

    The quantized Erf would be a table activation fused into the first layer
    (tests/sw/test_table_activation.py); this test keeps it on the host, as lower_qdq(tables=False) does."""
    rng = np.random.default_rng(6)
    w1, w2 = rng.normal(0, 0.3, (8, 16)).astype(np.float32), rng.normal(0, 0.3, (16, 4)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
                        helper.make_node("Erf", ["h"], ["e"], name="erf"),
                        helper.make_node("MatMul", ["e", "w2"], ["y"], name="mm2")],
                       [("x", np.float32, [4, 8])], [("y", np.float32, [4, 4])], [("w1", w1), ("w2", w2)])
    # (The package's `quantize` is the function, which shadows its module.)
    quantize_module = sys.modules["braze.sw.compiler.quantize"]
    monkeypatch.setattr(quantize_module, "lower_table_activations", lambda graph: graph)
    session = InferenceSession(model, config="tiny", calibration=rng.normal(size=(4, 8)).astype(np.float32))
    x = rng.normal(size=(4, 8)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    assert np.array_equal(y, evaluate(session.graph_before, {"x": x})["y"])
    assert session.compiled.placement["erf"] == "cpu: Erf has no accelerator kernel"
    transfers = [(n.inputs[0], n.attrs["src"], n.attrs["dst"]) for n in session.graph_lowered.nodes
                 if n.kind is NodeKind.TRANSFER]
    assert len([t for t in transfers if t[2] == "host"]) >= 2        # out of both kernels
    assert len([t for t in transfers if t[2] == "dram"]) >= 2        # into both kernels
    assert len(session.report().kernels) == 2 and session.report().device_runs == 2
