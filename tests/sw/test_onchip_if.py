"""An ONNX If computed on chip (issue 13, item 3; issue 14's early exit): the condition by PREDICATE,
a BRANCH over the else kernels, both branches in one program -- bit-identical to the host's If.

The models here are small float ONNX models built in the test (no torch): ``x -> Gemm -> logits1``;
the If exits with ``logits1`` when ``ReduceMax(logits1) > t`` (batch-wide, as ONNX's If is), else
runs ``Relu -> Gemm`` on them.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from braze.sw.compiler.frontend import evaluate_node
from braze.sw.compiler.kernels import KernelError
from braze.sw.compiler.kernels.guard import if_guard
from braze.sw.runtime.dataflow import BRANCH_ON_CPU, IF_ON_CHIP, DataflowSession
from braze.sw.runtime.onchip_if import OnChipIfError, find_guard

FEATURES, CLASSES = 16, 10


def _model(batch: int, threshold: float, *, softmax: bool = False, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    info = helper.make_tensor_value_info
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (FEATURES, CLASSES)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.2, CLASSES).astype(np.float32), "b1"),
             numpy_helper.from_array(np.array(threshold, np.float32), "t")]
    else_inits = [numpy_helper.from_array(rng.normal(0, 0.5, (CLASSES, CLASSES)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["logits1"], name="head")]
    if softmax:        # a float probability: no exact on-chip form
        nodes.append(helper.make_node("Softmax", ["logits1"], ["probs"], name="softmax", axis=1))
    nodes += [helper.make_node("ReduceMax", ["probs" if softmax else "logits1"], ["confidence"], name="max",
                               keepdims=0),
              helper.make_node("Greater", ["confidence", "t"], ["exit"], name="greater")]
    then_g = helper.make_graph([helper.make_node("Identity", ["logits1"], ["out1"], name="then_id")], "then",
                               [], [info("out1", TensorProto.FLOAT, [batch, CLASSES])])
    else_g = helper.make_graph([helper.make_node("Relu", ["logits1"], ["h"], name="tail_relu"),
                                helper.make_node("MatMul", ["h", "w2"], ["out2"], name="tail")], "else", [],
                               [info("out2", TensorProto.FLOAT, [batch, CLASSES])], else_inits)
    nodes.append(helper.make_node("If", ["exit"], ["logits"], name="early_exit", then_branch=then_g,
                                  else_branch=else_g))
    graph = helper.make_graph(nodes, "tiny_early_exit", [info("x", TensorProto.FLOAT, [batch, FEATURES])],
                              [info("logits", TensorProto.FLOAT, [batch, CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _feeds(batch: int, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(-1, 1, (batch, FEATURES)).astype(np.float32)} for _ in range(count)]


def _threshold(batch: int) -> float:
    """The median largest logit over test inputs: about half of them exit."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(0, 0.5, (FEATURES, CLASSES)), rng.normal(0, 0.2, CLASSES)
    maxima = [float((f["x"] @ w1 + b1).max()) for f in _feeds(batch, 64, seed=9)]
    return float(np.median(maxima))


def _sessions(batch: int, device: str = "golden", **options):
    model = _model(batch, _threshold(batch), **options)
    calibration = _feeds(batch, 16, seed=1)
    host = DataflowSession(model, calibration=calibration, analyzer=False, device="golden")
    chip = DataflowSession(model, calibration=calibration, analyzer=False, device=device)
    return host, chip


@pytest.mark.parametrize("batch", [1, 4])
def test_if_on_chip_gives_the_host_ifs_answers_on_both_branches(batch):
    host, chip = _sessions(batch)
    with host, chip:
        plan = chip.manager.deploy(frozenset({IF_ON_CHIP}))
        part = plan.partitions["pre"]
        assert len(part.compiled.segments) == 1           # both branches' kernels in one program
        outcomes, cycles = [], {True: [], False: []}
        for feed in _feeds(batch, 12, seed=3):
            expected = host.run(None, feed)[0]
            got = chip.run(None, feed)[0]
            assert np.array_equal(got, expected)
            holds = part.runtime.last_guard_holds
            outcomes.append(holds)
            trace = chip.traces[-1]
            assert trace.device_runs == 1 and trace.partitions[0] == part.name
            cycles[holds].append(trace.kernel_cycles)
            # The host evaluates the model's own condition; the chip's decision is that, bit for bit.
            assert holds == bool(host.traces[-1].partitions[-1] == "then")
        assert True in outcomes and False in outcomes      # both branches exercised
        # On an exit the tail's kernels do not run: fewer cycles, and the tail's result is not moved.
        assert max(cycles[True]) < min(cycles[False])
        exits = [t for t, h in zip(chip.traces, outcomes, strict=True) if h]
        takes = [t for t, h in zip(chip.traces, outcomes, strict=True) if not h]
        assert exits[0].transfer_bytes < takes[0].transfer_bytes


def test_guard_is_exact_for_every_int8_maximum():
    with DataflowSession(_model(2, 0.3), calibration=_feeds(2, 8, seed=1), analyzer=False) as session:
        part = session.manager.deploy(frozenset({IF_ON_CHIP})).partitions["pre"]
        graph = part.session.graph_after
        guard = part.guard
        dequant = graph.producer("logits1")
        compare = graph.producer(guard.cond)
        reduce_node = graph.producer(compare.inputs[0])
        rng = np.random.default_rng(4)
        for top in range(-128, 128):      # a random tensor whose largest element is `top`
            q = rng.integers(-128, top + 1, (2, CLASSES)).astype(np.int8)
            q.flat[rng.integers(q.size)] = top
            (real,) = evaluate_node(dequant, q, *(graph.constant(t) for t in dequant.inputs[1:]))
            (largest,) = evaluate_node(reduce_node, real)
            (cond,) = evaluate_node(compare, largest, graph.constant(compare.inputs[1]))
            assert part.compiled.guard.holds(int(q.max())) == bool(cond), top


def test_a_softmax_condition_keeps_the_if_on_the_host():
    with DataflowSession(_model(1, 0.5, softmax=True), calibration=_feeds(1, 8, seed=1), analyzer=False) as s:
        with pytest.raises(OnChipIfError, match="not the dequantized result of a kernel"):
            find_guard(s.manager.partition("pre+else", "accelerator").session.graph_after, "exit", ["exit"])
        assert s._onchip_if() is None
        assert "ReduceMax" in s.onchip_if_unavailable
        s.run(None, _feeds(1, 1, seed=2)[0])
        assert "if-on-chip: not available" in s.report()


@pytest.mark.filterwarnings("ignore::braze.sw.runtime.analyzer.ValueRangeWarning")
def test_if_on_chip_is_a_priced_decision_taken_from_the_statistics():
    model = _model(1, _threshold(1))
    with DataflowSession(model, calibration=_feeds(1, 16, seed=1), background=False, every=2) as session:
        for feed in _feeds(1, 16, seed=5):
            session.run(None, feed)
        prices = session.price()
        assert IF_ON_CHIP in session.plan.choices
        assert prices[frozenset({IF_ON_CHIP})] < min(prices[frozenset()], prices[frozenset({BRANCH_ON_CPU})])
        assert "take if-on-chip" in session.report()
    with DataflowSession(model, calibration=_feeds(1, 16, seed=1), background=False, every=2,
                         onchip_if=False) as session:
        for feed in _feeds(1, 16, seed=5):
            session.run(None, feed)
        assert IF_ON_CHIP not in session.plan.choices and IF_ON_CHIP not in str(session.price())


def test_guard_kernel_refuses_a_threshold_the_zero_padding_would_decide():
    from braze.isa import Config

    config = Config.preset("default")
    with pytest.raises(KernelError, match="zero padding"):
        if_guard(config, 10, 0, "ge", 3, max_register=6, threshold_register=7)
    with pytest.raises(KernelError, match="registers"):
        if_guard(config, 16, 5, "ge", 3, max_register=6, threshold_register=6)
    # Whole rows: no padding, so a negative threshold is exact.
    kernel = if_guard(config, 16, -3, "lt", 3, max_register=6, threshold_register=7)
    assert [i.opcode.name for i in kernel.instructions][-2:] == ["COUNTERS", "BRANCH"]



@pytest.mark.xdist_group("verilator-onchip-if")
def test_if_on_chip_on_verilator_matches_the_host_if():
    """The guarded program on the RTL (Verilator): the answers of the host's If on golden, for both
    outcomes, at batch 2 (a batch-wide condition).  One partition on one simulator."""
    pytest.importorskip("cocotb")
    from braze.isa import Config
    from braze.sim.device import open_device
    from braze.sw.runtime.onchip_if import OnChipIfPartition
    from braze.sw.runtime.partitions import HostLink, calibration_inputs, split_model

    model = _model(2, _threshold(2))
    proto = onnx.load_from_string(model)
    structure = split_model(proto)
    region = structure.fused_else
    calibration = calibration_inputs(proto, [region], _feeds(2, 16, seed=1))[region.name]
    config = Config.preset("default")
    with DataflowSession(model, calibration=_feeds(2, 16, seed=1), analyzer=False) as host:
        expected, chosen = {}, []
        for index, feed in enumerate(_feeds(2, 16, seed=11)):     # two feeds of each outcome
            expected[index] = host.run(None, feed)[0]
            exits = host.traces[-1].partitions[-1] == "then"
            if sum(e == exits for _, e, _ in chosen) < 2:
                chosen.append((index, exits, feed))
        part = OnChipIfPartition(region, cond=structure.cond, then_inputs=structure.then.inputs,
                                 config=config, calibration=calibration, cache=host.cache,
                                 cost_model="analytic",
                                 device=open_device("verilator", config), link=HostLink())
        try:
            assert part.runtime.device.kind == "verilator"
            outcomes = set()
            for index, _, feed in chosen:
                values, cycles = part.run(feed)
                exit_ = bool(values[structure.cond])
                got = values[structure.then.inputs[0]] if exit_ else values[structure.orelse.outputs[0]]
                assert np.array_equal(got, expected[index]) and cycles > 0
                assert exit_ == part.runtime.last_guard_holds
                outcomes.add(exit_)
        finally:
            part.close()
        assert outcomes == {True, False}
