"""Exploration end to end on the golden device: grid and sampler, resume, confirmation, table, plot, CLI."""

from __future__ import annotations

import pytest

from braze import cli
from braze.sim.device import open_device
from braze.sw.dse import confirm, dask_client, explore, parse_space, parse_workload
from braze.sw.dse.report import plot, table
from braze.sw.hpm import HistoryStore

pytestmark = pytest.mark.xdist_group("dse")


@pytest.fixture(scope="module")
def client():
    with dask_client(workers=1, processes=False) as client:
        yield client


def test_grid_sweep_resumes_and_confirms_on_golden(client, tmp_path):
    workload = parse_workload("gemm:24x40x24")
    space = parse_space("rows=4..8,cols=4..8,bus_bits=64|128")      # 3 array shapes x 2 buses
    history = tmp_path / "history.sqlite"
    with HistoryStore(history) as store:
        first = explore(workload, space, ["cycles", "luts"], trials=4, client=client, store=store,
                        progress=False, log=lambda _: None)
    # More configurations than trials: the sampler chose 4 distinct valid ones.
    assert first.search == "tpe" and len(first.results) == 4 and first.resumed == 0
    assert len({r.config.name for r in first.results}) == 4
    with HistoryStore(history) as store:
        assert len(store.dse_results(workload.key)) == 4
        second = explore(workload, space, ["cycles", "luts"], trials=10, client=client, store=store,
                         progress=False, log=lambda _: None)
    # The whole space fits the budget now: a grid, the 4 stored ones read back, 2 evaluated.
    assert second.search == "grid" and len(second.results) == 6 and second.resumed == 4
    by_name = {r.config.name: r for r in second.results}
    for result in first.results:
        assert by_name[result.config.name].metrics["cycles"] == result.metrics["cycles"]
    for result in second.results:
        assert result.predictor in ("learned", "analytic-mem")
        assert result.metrics["cycles"] > 0 and result.metrics["energy_uj"] > 0 and result.metrics["luts"] > 0
    # Every non-front configuration is dominated by one on the front.
    costs = [(r.metrics["cycles"], r.metrics["luts"]) for r in second.results]
    for i, cost in enumerate(costs):
        if i not in second.front:
            assert any(costs[j][0] <= cost[0] and costs[j][1] <= cost[1] and costs[j] != cost
                       for j in second.front)

    with HistoryStore(history) as store:
        confirm(second, 2, device="golden", store=store, log=lambda _: None)
        stored = {r.config_name: r for r in store.dse_results(workload.key)}
    assert len(second.finalists) == 2
    for index in second.finalists:
        result = second.results[index]
        with open_device("golden", result.config) as device:
            assert result.measured_cycles == workload.measure(device) > 0
        assert stored[result.config.name].measured_cycles == result.measured_cycles
        expected = 100 * (result.metrics["cycles"] - result.measured_cycles) / result.measured_cycles
        assert result.error_pct == pytest.approx(expected)
    text = table(second, only_front=True)
    assert text.count("\n") == len(second.front) + 1 and "F*" in text        # header, front, footnote
    assert table(second).count("\n") == len(second.results) + 1
    png = plot(second, tmp_path / "front.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_one_line(capsys):
    assert cli.main(["dse", "--workload", "gemm:8x8x8", "--space", "rows=3..8"]) == 2
    assert "3 is not a possible rows" in capsys.readouterr().err
    assert cli.main(["dse", "--workload", "gemm:8x8", "--space", "rows=4..8"]) == 2
    assert "gemm:MxKxN" in capsys.readouterr().err
    assert cli.main(["dse", "--workload", "gemm:8x8x8", "--space", "rows=4", "--objectives", "area"]) == 2
    assert "unknown objective 'area'" in capsys.readouterr().err


def test_an_onnx_file_is_a_workload_with_random_inputs_of_the_batch(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from braze.isa import Config
    from braze.sw.dse import WorkloadError, predict

    values = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    weight = numpy_helper.from_array(values, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
                              [weight])
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    workload = parse_workload(str(path), batch=12)
    assert workload.kind == "onnx" and workload.inputs["x"].shape == (12, 32)
    assert workload.key.startswith("onnx:mm.onnx:") and workload.key.endswith(":batch=12")
    tiny = Config.preset("tiny")
    kernels = workload.kernels(tiny)
    assert kernels and predict(kernels, tiny)["cycles"] > 0
    for text, message in (("missing.onnx", "no such file"), ("model.txt", "give digits-cnn, gemm:MxKxN"),
                          (str(tmp_path / "mm.onnx.bad"), "give digits-cnn")):
        with pytest.raises(WorkloadError, match=message):
            parse_workload(text)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(WorkloadError, match="junk.onnx"):
        parse_workload(str(tmp_path / "junk.onnx"))
