"""A dataflow session over several devices: partitions assigned to devices by price, same answers.

Golden devices and the analytic cost model (the suite's setting); the models are the cached ones of
:mod:`braze.sw.runtime.dataflow_models`.
"""

import numpy as np
import pytest
from plan_races import run_while_swapping

from braze.isa import Config
from braze.isa.errors import BrazeError
from braze.sw.runtime.dataflow import DISPATCH_EXPERTS, DataflowSession
from braze.sw.runtime.dataflow_models import calibration_feeds, early_exit_cnn, inputs, moe_mlp
from braze.sw.runtime.devices import DeviceSpec, assign, parse_devices
from braze.sw.runtime.partitions import HostLink, device_transfers

pytest.importorskip("torch")

DISPATCH = frozenset({DISPATCH_EXPERTS})


def _session(model, analyzer=False, **options):
    return DataflowSession(model.onnx_bytes, calibration=calibration_feeds(model), background=False,
                           cost_model="analytic", analyzer=analyzer, **options)


def test_device_specs_parse_and_name_uniquely():
    specs = parse_devices(["tiny", "verilator:default", "default", Config.preset("large")], kind="golden")
    assert [(s.name, s.kind, s.config.name) for s in specs] == [
        ("tiny", "golden", "tiny"), ("verilator:default", "verilator", "default"),
        ("golden:default", "golden", "default"), ("large", "golden", "large")]
    with pytest.raises(BrazeError, match="device 'huge'"):
        parse_devices(["huge"])
    with pytest.raises(BrazeError, match="non-empty list"):
        parse_devices("default")


def test_concurrent_assignment_balances_the_busiest_device():
    costs = {"a": {"x": 10, "y": 12}, "b": {"x": 10, "y": 12}, "c": {"x": 10, "y": 12}}
    assert set(assign(costs).values()) == {"x"}                       # one after another: cheapest each
    balanced = assign(costs, concurrent=True)
    assert sorted(balanced.values()) == ["x", "x", "y"]               # makespan 20 (all on x: 30)


@pytest.mark.parametrize("name", ["early_exit", "moe"])
def test_two_devices_give_the_one_device_static_plans_outputs(name):
    model = early_exit_cnn() if name == "early_exit" else moe_mlp()
    feeds = inputs(model, "hard" if name == "early_exit" else "uniform", 6, seed=11)
    with _session(model) as one, _session(model, devices=["tiny", "default"]) as two:
        expected = [one.run(None, f)[0] for f in feeds]
        got = [two.run(None, f)[0] for f in feeds]
        if name == "moe":                     # the experts as partitions of their own, spread over devices
            two.manager.deploy(DISPATCH)
            got += [two.run(None, f)[0] for f in feeds]
            expected += expected
        plan = two.plan
        report = two.report()
    for a, b in zip(expected, got, strict=True):
        assert np.array_equal(a, b)
    assert plan.devices and set(plan.devices) <= set(plan.partitions)
    assert "assignment (predicted cycles per run" in report and "devices: tiny (golden" in report


def test_assignment_follows_the_prices():
    early_exit = early_exit_cnn()
    with _session(early_exit, devices=["tiny", "default"]) as session:
        plan = session.plan
        for role, device in plan.devices.items():
            costs = plan.device_costs[role]
            assert device == min(costs, key=costs.get)
        pre = plan.device_costs["pre"]
        assert pre["tiny"] > pre["default"] and plan.devices["pre"] == "default"
        assert not plan.device_transfers                 # both on default: nothing moves between devices
        # Were the else branch on tiny, the stem's features would go default -> host -> tiny, priced at both.
        links = {"tiny": HostLink(), "default": HostLink(latency_cycles=3000)}
        (move,) = device_transfers(plan.partitions, {"pre": "default", "else": "tiny"}, links)
        assert (move.source, move.source_device, move.target, move.target_device) == (
            "pre", "default", "else", "tiny")
        sent = plan.partitions["pre"].transfer_of(move.tensor)
        assert sent.direction == "to_host" and move.bytes == sent.bytes > 0
        assert move.cycles == links["default"].transfer_cycles(1, move.bytes) + HostLink().transfer_cycles(
            1, move.bytes)
    # The default preset behind a link 1000x slower: its transfers now cost more than tiny's slower kernels.
    slow = DeviceSpec("default-slow", "golden", Config.preset("default"), HostLink(bytes_per_cycle=0.008))
    with _session(early_exit, devices=["tiny", slow]) as session:
        plan = session.plan
        assert plan.devices["pre"] == "tiny"
        assert plan.device_costs["pre"]["default-slow"] > plan.device_costs["pre"]["tiny"]


def test_independent_experts_run_concurrently_on_two_devices():
    moe = moe_mlp()
    feeds = inputs(moe, "uniform", 4, seed=12)
    with _session(moe, devices=["default", "default"]) as session:
        session.manager.deploy(DISPATCH)
        experts = [r.name for r in session.structure.experts]
        placed = [session.plan.devices[e] for e in experts]
        for feed in feeds:
            session.run(None, feed)
        traces = session.traces
    assert sorted(placed) == ["golden:default"] * 2 + ["golden:default#1"] * 2
    ran_several = [t for t in traces if sum(p.startswith("expert") for p in t.partitions) >= 2]
    assert ran_several
    link = session.link                       # the experts of two devices at once: the busier one's cost
    assert all(t.critical_cost < t.cost(link) for t in ran_several)


def test_reassignment_is_a_new_version_and_no_run_mixes_plans():
    moe = moe_mlp()
    feeds = inputs(moe, "uniform", 12, seed=13)
    with _session(moe) as one:
        expected = [one.run(None, f)[0] for f in feeds]
    with _session(moe, devices=["default", "default"]) as session:
        session.manager.deploy(DISPATCH)
        before = session.plan
        # Expert 0 dominates: a concurrent stage is best with it alone on one device -- a re-assignment.
        session.manager.placer.weights = lambda: {"expert0": 3.0, "expert1": 1.0, "expert2": 1.0,
                                                  "expert3": 1.0}
        after = session.manager.reassign()
        assert after is not None and after.version == before.version + 1
        assert after.choices == before.choices and dict(after.devices) != dict(before.devices)
        assert session.manager.reassign() is None                   # nothing moves again: no new version
        alone = after.devices["expert0"]
        assert [r for r, d in after.devices.items() if d == alone and r.startswith("expert")] == ["expert0"]
        session.traces.clear()
        weights = [session.manager.placer.weights, lambda: {}]

        def swap(index):
            session.manager.placer.weights = weights[index % 2]
            session.manager.reassign()

        results, errors = run_while_swapping(session, feeds, swap)
        plans = {plan.version: plan for plan in session.manager.history}
    assert not errors
    assert all(len(set(trace.plan_versions)) == 1 for trace in session.traces)
    assert len({trace.plan_versions[0] for trace in session.traces}) >= 2
    for trace in session.traces:              # every partition a run used is on its one plan's device
        placed = {(part.name, part.device) for part in plans[trace.plan_versions[0]].partitions.values()}
        assert set(zip(trace.partitions, trace.devices, strict=True)) <= placed
    for i, value in results.items():
        assert np.array_equal(value, expected[i])


@pytest.mark.filterwarnings("ignore::braze.sw.runtime.analyzer.ValueRangeWarning")   # uniform digits: some
def test_routing_that_shifts_re_assigns_the_experts_between_devices():
    moe = moe_mlp()
    feeds = inputs(moe, "skewed", 16, seed=14) + inputs(moe, "uniform", 16, seed=15)
    with _session(moe, analyzer=True, half_life=4.0, devices=["default", "default"]) as session:
        for feed in feeds:
            session.run(None, feed)
        moves = [e for e in session.events if not e.taken and not e.reversed]
        report = session.report()
    assert any(DISPATCH_EXPERTS in e.taken for e in session.events)
    assert moves and all(e.version_after == e.version_before + 1 for e in moves)
    assert all(e.predicted_after < e.predicted_before for e in moves)     # only for a predicted gain
    assert "re-assign devices" in report and "re-assigned expert" in report


def test_only_the_deployed_plans_partitions_open_their_devices():
    model = moe_mlp()
    feeds = inputs(model, "uniform", 2, seed=11)

    def running(plan) -> set[str]:
        return {f"{plan.partitions[role].name}@{device}" for role, device in plan.devices.items()}

    with _session(model, devices=["tiny", "default"]) as two:
        # Every accelerator region was compiled on both devices to be priced; only the plan's are open.
        opened, closed = two.opened_devices()
        assert set(opened) == running(two.plan) and closed and not set(closed) & running(two.plan)
        assert f"devices (opened when a plan that runs their partition is deployed): {len(opened)} open" \
            in two.report()
        static = running(two.plan)
        two.run(None, feeds[0])
        assert set(two.opened_devices()[0]) == static                # a run opens nothing more
        plan = two.manager.deploy(DISPATCH)
        two.run(None, feeds[1])
        assert set(two.opened_devices()[0]) == static | running(plan)
        assert two.opened_devices()[1]                               # priced elsewhere, never opened
