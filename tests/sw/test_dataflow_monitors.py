"""Monitoring points in the graph IR: placed, validated, lowered to what the chip counts or a host sample,
and read by the dataflow analyzer."""

import math

import numpy as np
import pytest

from braze.sw.compiler.frontend import evaluate, load_onnx
from braze.sw.compiler.ir import InvalidGraph, Node, NodeKind
from braze.sw.compiler.monitors import MonitorError, insert_monitors, lower_monitors, monitors, strip_monitors
from braze.sw.compiler.validate import validate
from braze.sw.runtime.analyzer import Decayed
from braze.sw.runtime.dataflow import DataflowSession
from braze.sw.runtime.dataflow_drift import drift_calibration, sensor_mlp
from braze.sw.runtime.dataflow_models import calibration_feeds, early_exit_cnn, inputs, moe_mlp

pytest.importorskip("torch")


def test_monitors_at_tensors_and_control_nodes_are_checked_by_the_validator():
    model = early_exit_cnn()
    graph = load_onnx(model.onnx_bytes)
    monitored = validate(insert_monitors(graph, ["features"], control=True))
    found = {node.inputs[0]: node.attrs["stats"] for node in monitors(monitored)}
    assert found["exit"] == ("taken",)                       # the If's condition
    assert "range" in found["features"]
    feed = inputs(model, "easy", 1, seed=0)[0]
    np.testing.assert_array_equal(evaluate(monitored, feed)["logits"], evaluate(graph, feed)["logits"])
    assert strip_monitors(monitored).nodes == graph.nodes
    wrong = Node("monitor:logits1", NodeKind.MONITOR, "Monitor", inputs=("logits1",),
                 attrs={"stats": ("taken",)})
    with pytest.raises(InvalidGraph, match="monitor:logits1.*not the condition of an If"):
        validate(graph.replace(nodes=[*graph.nodes, wrong]))
    with pytest.raises(MonitorError, match="no_such_tensor"):
        insert_monitors(graph, ["no_such_tensor"])
    routes = {node.inputs[0]: node.attrs["stats"] for node in monitors(insert_monitors(load_onnx(
        moe_mlp().onnx_bytes)))}
    assert routes == {"route": ("routes",)}                  # the TopK's indices


def test_lowering_measures_on_chip_what_the_skipping_kernel_counts_else_samples_on_the_host():
    with DataflowSession(sensor_mlp(), calibration=drift_calibration(), skip_zero_blocks=True,
                         background=False) as session:
        for where, via in (("accelerator+skip", "chip"), ("accelerator", "sample")):
            part = session.manager.partition("body", where)
            lowered = validate(lower_monitors(insert_monitors(part.host_graph(), ["r", "x", "y"],
                                                              stats=("zero_blocks",), control=False),
                                              part.compiled))
            vias = {node.attrs["label"]: node.attrs["via"] for node in monitors(lowered)}
            # The hidden activation is inside the program; the input and output cross to the host.
            assert vias == {"r": via, "x": "host", "y": "host"}


@pytest.mark.filterwarnings("ignore::braze.sw.runtime.analyzer.ValueRangeWarning")   # validation digits
def test_a_monitor_inside_a_partition_reports_the_statistics_of_a_host_evaluation():
    model = moe_mlp()
    feeds = inputs(model, "uniform", 3, seed=5)
    with DataflowSession(model.onnx_bytes, calibration=calibration_feeds(model), background=False,
                         dynamic=False, analyzer_budget=math.inf, monitor=["expert0/relu"]) as session:
        for feed in feeds:
            session.run(None, feed)
        part = session.plan.partitions["gate"]
        graph = part.host_graph()
        quant = graph.tensor("expert0/relu_q").quant
        expected, highs = Decayed(session.analyzer.half_life), []
        for feed in feeds:                  # the quantized graph on the host: the chip's integers
            value = evaluate(graph, feed, keep=True)["expert0/relu_q"]
            expected.add(float(np.mean(value == quant.zero_point[0])))
            highs.append((int(value.max()) - int(quant.zero_point[0])) * float(quant.scale[0]))
        stats = session.analyzer.tensors["expert0/relu"]
        assert stats.sparsity.samples == len(feeds)
        assert 0.0 < expected.value < 1.0
        assert stats.sparsity.value == pytest.approx(expected.value, abs=1e-12)
        assert stats.seen_high == pytest.approx(max(highs), rel=1e-6)
        assert "expert0/relu in gate+experts: host sample" in session.report()
