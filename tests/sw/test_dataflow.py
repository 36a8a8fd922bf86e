"""The dataflow runtime: data-dependent models, partitions, the analyzer and dynamic decisions.

The models are trained with torch once per machine and cached (``$BRAZE_CACHE_DIR/dataflow_models``);
every session runs on the golden device with the analytic cost model (the suite's setting).
"""

import math

import numpy as np
import onnx
import onnxruntime
import pytest
from plan_races import run_while_swapping

from braze.sw.runtime.analyzer import Decayed, TensorStats, ValueRangeWarning
from braze.sw.runtime.dataflow import DISPATCH_EXPERTS, FUSE_BRANCH, IF_ON_CHIP, DataflowSession
from braze.sw.runtime.dataflow_models import calibration_feeds, early_exit_cnn, inputs, moe_mlp
from braze.sw.runtime.partitions import BranchModel, MixtureModel, PartitionError, split_model

# One worker runs the whole module: the models are trained and compiled once, not once per worker (the
# second worker waited for the first).
pytestmark = pytest.mark.xdist_group("dataflow-models")

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def early_exit():
    return early_exit_cnn()


@pytest.fixture(scope="module")
def moe():
    return moe_mlp()


def _session(model, **options):
    return DataflowSession(model.onnx_bytes, calibration=calibration_feeds(model), background=False,
                           **options)


def _ort(model_bytes):
    return onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def _run_regions_float(structure, feed):
    """The float regions run by onnxruntime, the control flow on the host: the split's semantics."""
    values = dict(feed)

    def run(region):
        outputs = _ort(region.proto.SerializeToString()).run(None, {t: values[t] for t in region.inputs})
        values.update(zip(region.outputs, outputs, strict=True))

    if isinstance(structure, BranchModel):
        run(structure.pre)
        branch = structure.then if bool(values[structure.cond]) else structure.orelse
        run(branch)
        return values[branch.outputs[0]]
    for region in [structure.gate, structure.router, *structure.experts, structure.combine]:
        run(region)
    return values["logits"]


@pytest.mark.parametrize("name", ["early_exit", "moe"])
def test_models_split_into_regions_that_compute_what_onnxruntime_does(name, early_exit, moe):
    model = early_exit if name == "early_exit" else moe
    proto = model.proto()
    assert {n.op_type for n in proto.graph.node} >= ({"If"} if name == "early_exit" else {"TopK"})
    structure = split_model(proto)
    assert isinstance(structure, BranchModel if name == "early_exit" else MixtureModel)
    whole = _ort(model.onnx_bytes)
    distributions = ("easy", "hard") if name == "early_exit" else ("skewed", "uniform")
    for distribution in distributions:
        for feed in inputs(model, distribution, 6, seed=3):
            np.testing.assert_allclose(_run_regions_float(structure, feed), whole.run(None, feed)[0],
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["early_exit", "moe"])
def test_int8_session_gives_onnxruntimes_answers(name, early_exit, moe):
    model = early_exit if name == "early_exit" else moe
    whole = _ort(model.onnx_bytes)
    with _session(model, analyzer=False) as session:
        feeds = inputs(model, "easy" if name == "early_exit" else "uniform", 12, seed=4)
        agree = [np.mean(session.run(None, f)[0].argmax(-1) == whole.run(None, f)[0].argmax(-1))
                 for f in feeds]
    assert np.mean(agree) >= 0.9


def test_input_distributions_differ_in_branch_and_routing_rates(early_exit, moe):
    with _session(early_exit, dynamic=False) as session:
        for feed in inputs(early_exit, "easy", 32, seed=5):
            session.run(None, feed)
        easy = np.mean([t.partitions[-1] == "else" for t in session.traces])
        for feed in inputs(early_exit, "hard", 32, seed=5):
            session.run(None, feed)
        hard = np.mean([t.partitions[-1] == "else" for t in session.traces[32:]])
    assert hard > easy + 0.2
    with _session(moe, dynamic=False) as session:
        for feed in inputs(moe, "skewed", 8, seed=5):
            session.run(None, feed)
        share = session.analyzer.token_share["expert0"].value
    assert share > 0.8


@pytest.mark.parametrize("name, distribution, decision", [("early_exit", "hard", IF_ON_CHIP),
                                                          ("moe", "skewed", DISPATCH_EXPERTS)])
def test_dynamic_decision_is_taken_and_outputs_equal_the_static_plan(name, distribution, decision,
                                                                      early_exit, moe):
    model = early_exit if name == "early_exit" else moe
    feeds = inputs(model, distribution, 24, seed=6)
    with _session(model, analyzer=False) as static, _session(model) as dynamic:
        expected = [static.run(None, f)[0] for f in feeds]
        got = [dynamic.run(None, f)[0] for f in feeds]
        assert decision in dynamic.plan.choices
        versions = {v for trace in dynamic.traces for v in trace.plan_versions}
        static_cycles = sum(t.kernel_cycles for t in static.traces[12:])
        dynamic_cycles = sum(t.kernel_cycles for t in dynamic.traces[12:])
        report = dynamic.report()
    assert len(versions) >= 2                  # runs before and after the decision
    for a, b in zip(expected, got, strict=True):
        assert np.array_equal(a, b)
    assert f"take {decision}" in report and "predicted" in report and "measured" in report
    assert "transfers (host <-> device" in report and "partitions:" in report
    if decision == DISPATCH_EXPERTS:           # skipped experts: fewer accelerator cycles, same answers
        assert dynamic_cycles < 0.7 * static_cycles
    if decision == IF_ON_CHIP:                 # one program per run: no host round trip inside the If
        assert all(t.device_runs == 1 for t in dynamic.traces[12:])


def test_decision_is_reversed_when_the_statistics_change(early_exit):
    # The host If's decisions (the If on chip beats both on either distribution of this model).
    with _session(early_exit, analyzer=False) as static:       # easy digits that exit early
        exits = []
        for feed in inputs(early_exit, "easy", 40, seed=7):
            static.run(None, feed)
            if static.traces[-1].partitions[-1] == "then":
                exits.append(feed)
    with _session(early_exit, half_life=4.0, onchip_if=False) as session:
        for feed in inputs(early_exit, "hard", 16, seed=7):
            session.run(None, feed)
        assert FUSE_BRANCH in session.plan.choices
        for feed in exits[:24]:
            session.run(None, feed)
        assert FUSE_BRANCH not in session.plan.choices
        assert any(FUSE_BRANCH in event.reversed for event in session.events)


def test_no_run_mixes_two_plans_while_replanning(moe):
    feeds = inputs(moe, "uniform", 12, seed=8)
    with _session(moe, dynamic=False, analyzer=False) as session:
        expected = [session.run(None, f)[0] for f in feeds]
        session.traces.clear()
        session.manager.partition("gate", "accelerator")          # compile before racing
        for region in session.structure.experts:
            session.manager.partition(region.name, "accelerator")
        choices = [frozenset({DISPATCH_EXPERTS}), frozenset()]
        results, errors = run_while_swapping(session, feeds, lambda i: session.manager.deploy(choices[i % 2]))
    assert not errors
    assert all(len(set(trace.plan_versions)) == 1 for trace in session.traces)
    assert len({trace.plan_versions[0] for trace in session.traces}) >= 2
    plans = {plan.version: plan for plan in session.manager.history}
    for trace in session.traces:              # every partition a run used belongs to its one plan
        names = {part.name for part in plans[trace.plan_versions[0]].partitions.values()}
        assert set(trace.partitions) <= names
    for i, value in results.items():
        assert np.array_equal(value, expected[i])


def test_value_range_leaving_calibration_warns_with_the_tensor_name(moe):
    with _session(moe, dynamic=False) as session:
        feed = inputs(moe, "uniform", 1, seed=9)[0]
        session.run(None, feed)
        with pytest.warns(ValueRangeWarning, match="tensor 'x'"):
            session.run(None, {"x": feed["x"] * 3})
            session.run(None, feed)


def test_tensor_statistics_and_decay():
    decayed = Decayed(half_life=1.0)
    decayed.add(1.0)
    decayed.add(0.0)
    assert decayed.value == pytest.approx(1 / 3)          # (0.5 * 1 + 0) / (0.5 + 1)
    stats = TensorStats("t", 8.0, (0.1, 0))
    value = np.zeros(64, np.float32)
    value[:16] = 1.0
    value[40] = 12.7                                       # int8 code 127: saturated
    assert stats.add(value) is None
    assert stats.sparsity.value == pytest.approx(47 / 64)
    assert stats.zero_blocks.value == pytest.approx(2 / 4)   # blocks 1 and 3 are all zero
    assert stats.saturation.value == pytest.approx(1 / 64)
    assert "outside its calibrated" in stats.add(value * 2)


def test_the_analyzer_thread_folds_every_observation_it_is_handed():
    from braze.sw.runtime.analyzer import DataflowAnalyzer, Observation

    analyzer = DataflowAnalyzer(quant={"t": (0.05, 3)}, budget=math.inf)     # background thread, polling
    rng = np.random.default_rng(0)
    values = [rng.uniform(-6.5, 6.2, 96).astype(np.float32) for _ in range(50)]
    for run, value in enumerate(values[:40]):
        analyzer.submit(Observation(run, 0, {"t": value}, seconds=1.0))
    analyzer.flush()
    assert analyzer.observations == 40
    for run, value in enumerate(values[40:], start=40):
        analyzer.submit(Observation(run, 0, {"t": value}, seconds=1.0))
    analyzer.close()                                    # drains what is still pending
    assert analyzer.observations == 50
    stats, expected = TensorStats("t", 8.0, (0.05, 3)), Decayed(8.0)
    for value in values:                                # the saturation rate's definition
        stats.add(value)
        codes = np.rint(value / 0.05) + 3
        expected.add(float(np.mean(((codes <= -128) | (codes >= 127)) & (codes != 3))))
    assert 0 < expected.value and stats.saturation.value == pytest.approx(expected.value)
    inside = TensorStats("u", 8.0, (0.05, 3))
    inside.add(np.full(96, 6.1, np.float32))            # code 125: near, not at, the top
    assert inside.saturation.value == 0.0


def test_a_model_without_control_flow_is_refused():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(PartitionError, match="one top-level If or one TopK"):
        split_model(helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))


def test_the_median_interval_holds_the_median_and_narrows_with_more_pairs():
    from braze.sw.runtime.dataflow_bench import median_interval

    rng = np.random.default_rng(3)
    few, many = rng.normal(0.03, 0.06, 30), rng.normal(0.03, 0.06, 480)
    for values in (few, many):
        low, high = median_interval(values)
        assert low <= np.median(values) <= high
    assert np.subtract(*median_interval(many)[::-1]) < np.subtract(*median_interval(few)[::-1])
    assert median_interval([0.02] * 9) == (0.02, 0.02)


def test_bench_prints_a_table_and_one_summary_line(capsys, early_exit, moe):
    from braze.sw.runtime import dataflow_bench

    assert dataflow_bench.main(["--runs", "3", "--warmup", "2", "--drift-runs", "3", "--overhead-rounds", "2",
                                "--overhead-block", "2", "--models", "early_exit,moe"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "static plan = " in lines[0]
    assert sum(line.startswith(("early_exit_cnn", "moe_mlp")) for line in lines) == 4
    summary = lines[-1]
    assert summary.startswith("dataflow: overhead_pct=")
    fields = dict(item.split("=") for item in summary.split()[1:])
    assert set(fields) == {"overhead_pct", "early_exit_speedup", "moe_speedup", "transfer_bytes_saved_pct",
                           "mismatches", "sparsity_replan_speedup", "multi_device_cycles_ratio",
                           "multi_device_wall_ratio", "multi_device_mismatches", "overhead_cpu_pct",
                           "overhead_iqr_pct", "overhead_own_pct", "pull_speedup", "pull_bytes_ratio",
                           "overhead_ci_high_pct", "overhead_mean_pct"}
    assert float(fields["overhead_ci_high_pct"]) >= float(fields["overhead_pct"])
    assert any(line.startswith("drift: sensor_mlp") for line in lines)
    assert fields["mismatches"] == "0" and fields["multi_device_mismatches"] == "0"
    assert any(line.startswith("multi-device: ") for line in lines)
