"""The main job (digits models on the accelerator) and the sample-kernel demo (``--kernel``)."""

import argparse
import io

import numpy as np
import pytest

from braze import demo
from braze.demo import run_kernel_demo
from braze.isa import BrazeError, Config

# One worker runs the module, so that its golden run (a module fixture) happens once.
pytestmark = pytest.mark.xdist_group("braze-demo")

# -- braze demo --kernel ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "default", "large"])
def test_demo_kernel_matches_numpy_and_counts_exactly(preset):
    config = Config.preset(preset)
    outcome = run_kernel_demo(config, seed=3, verbose=False)
    assert outcome["matches"]
    out = outcome["out"]
    m, k, n = 16, 4 * config.rows, config.cols
    assert out.shape == (m, n)
    # The epilogue ends in ReLU, and random data must exercise both sides of it.
    assert (out == 0).any() and (out > 0).any()
    counters = outcome["counters"]
    assert counters["macs"] == m * n * k
    assert counters["dma_read_bytes"] == m * k + k * n + 3 * n * 4
    assert counters["dma_write_bytes"] == m * n
    assert counters["insn_load"] == 6 and counters["insn_matmul"] == 1 and counters["insn_epilogue"] == 1
    assert counters["insn_store"] == 1
    # The snapshot is taken before COUNTERS and HALT retire.
    assert counters["insn_counters"] == 0 and counters["insn_halt"] == 0
    assert 0 < counters["array_busy"] <= counters["cycles"]


def test_demo_kernel_option_prints_result_and_counters(capsys):
    assert demo.main(["--kernel", "--config", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "Matches numpy: yes" in printed
    assert "macs" in printed and "cycles" in printed
    assert "matmul" in printed  # the program listing


def test_demo_takes_the_command_lines_parsed_options(capsys):
    """``braze demo`` hands over its Namespace; options it does not declare take this parser's defaults."""
    args = argparse.Namespace(command="demo", debug=False, config="tiny", seed=3, kernel=True)
    assert demo.main(args) == 0
    assert "config 'tiny'" in capsys.readouterr().out
    defaults = demo.build_parser().parse_args([])
    assert defaults.device == "verilator" and defaults.samples is None and defaults.models == "mlp,cnn"


def test_demo_detects_a_wrong_result(monkeypatch):
    real = demo.epilogue
    monkeypatch.setattr(demo, "epilogue", lambda *a, **kw: np.asarray(real(*a, **kw)) ^ 1)
    assert not run_kernel_demo(Config.preset("tiny"), verbose=False)["matches"]


# -- braze demo: the main job ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden_run():
    """Both models on the golden device, 40 validation samples in batches of 16 (two shapes)."""
    out = io.StringIO()
    outcomes = demo.run_main_demo(device="golden", samples=40, batch=16, out=out)
    return outcomes, out.getvalue()


def test_main_job_accuracies_are_the_models_own(golden_run):
    from braze.sw.compiler import models

    outcomes, _ = golden_run
    assert [o.name for o in outcomes] == ["mlp", "cnn"]
    data = models.load_digits_split()
    for outcome in outcomes:
        model, _ = demo.train_model(outcome.name)
        np.testing.assert_array_equal(outcome.labels, data.y_val[:40])
        # The float column is the numpy model's accuracy on the same samples.
        assert outcome.float_accuracy == pytest.approx(model.accuracy(data.x_val[:40], data.y_val[:40]))
        np.testing.assert_array_equal(outcome.float_logits.argmax(axis=1), model.predict(data.x_val[:40]))
        assert outcome.fused.logits.shape == (40, 10)
        int8_correct = (outcome.fused.logits.argmax(axis=1) == data.y_val[:40]).sum()
        assert outcome.int8_accuracy == pytest.approx(int8_correct / 40)
        assert outcome.accuracy_ok == (abs(outcome.int8_accuracy - outcome.float_accuracy) <= 0.01)


def test_main_job_outputs_do_not_depend_on_batching_or_fusion(golden_run):
    """One batch of 40 through a fresh session gives the demo's 16+16+8 outputs, fused and unfused."""
    from braze.sw.compiler import models
    from braze.sw.runtime.session import InferenceSession

    outcomes, _ = golden_run
    for outcome in outcomes:
        model, _ = demo.train_model(outcome.name)
        x = model.inputs(models.load_digits_split().x_val[:40])
        for variant, fuse in ((outcome.fused, True), (outcome.unfused, False)):
            with InferenceSession(model.to_onnx(), device="golden", fuse=fuse,
                                  calibration=models.calibration_set(model)) as session:
                (logits,) = session.run(None, {"x": x})
            np.testing.assert_array_equal(variant.logits, logits)
        # The int8 graph has the same semantics either way.
        np.testing.assert_array_equal(outcome.fused.logits, outcome.unfused.logits)


def test_main_job_counts_and_fusion_gains(golden_run):
    outcomes, _ = golden_run
    for outcome in outcomes:
        fused, unfused = outcome.fused.totals, outcome.unfused.totals
        assert fused.inferences == unfused.inferences == 40
        assert fused.device_runs >= 3          # three batches at least
        assert 0 < fused.kernels < unfused.kernels
        # Fusion does the same arithmetic in fewer cycles and with less external traffic.
        assert fused.macs == unfused.macs > 0
        assert fused.cycles < unfused.cycles and fused.external_bytes < unfused.external_bytes
        assert outcome.cycle_ratio == unfused.cycles / fused.cycles > 1
        assert outcome.byte_ratio == unfused.external_bytes / fused.external_bytes > 1
        assert 0 < fused.utilisation(outcome.config) <= 1
        # The last report's rows are the kernels of the last batch.
        assert [row.kernel for row in outcome.fused.report.kernels] == list(outcome.fused.kernels)
        assert outcome.golden_identical is None       # nothing to compare on the golden device
        assert outcome.passed == outcome.accuracy_ok


def test_main_job_prints_the_table(golden_run):
    outcomes, printed = golden_run
    assert "golden device" in printed and "trained in" in printed and "onnxruntime equals numpy" in printed
    header = next(line for line in printed.splitlines() if line.startswith("model "))
    for column in ("float acc", "int8 acc", "agree", "cycles/inf fused", "ext bytes/inf fused", "PE util"):
        assert column in header
    for outcome in outcomes:
        row = next(line for line in printed.splitlines() if line.startswith(f"{outcome.name} "))
        cells = row.split()
        assert cells[1] == "40"
        assert cells[2] == f"{outcome.float_accuracy:.2%}" and cells[3] == f"{outcome.int8_accuracy:.2%}"
        assert f"{outcome.cycle_ratio:.2f}x" in cells and f"{outcome.byte_ratio:.2f}x" in cells
        assert f"{outcome.fused.totals.cycles_per_inference:,.0f}" in cells
        summary = next(line for line in printed.splitlines() if line.startswith(f"{outcome.name}: "))
        assert "fewer cycles, fewer external bytes" in summary
    assert "k0_" in printed        # the per-kernel report


@pytest.mark.slow
def test_main_job_on_the_whole_validation_set_keeps_float_accuracy():
    """The acceptance on golden: int8 within one point of float over all validation samples."""
    for name in demo.MODELS:
        outcome = demo.run_model(name, device="golden", batch=400, log=lambda line: None)
        assert outcome.samples == 359
        assert outcome.float_accuracy >= 0.95
        assert abs(outcome.int8_accuracy - outcome.float_accuracy) <= 0.01, name
        assert outcome.agreement >= 0.98
        assert outcome.passed


def test_main_job_checks_golden_against_another_device(monkeypatch):
    """With a device other than golden, outputs are compared bit for bit -- and a difference shows."""
    from braze.sim import device as device_module

    class Other(device_module.GoldenDevice):
        kind = "other"

    monkeypatch.setitem(device_module.DEVICES, "other", Other)
    outcome = demo.run_model("mlp", device="other", samples=12, batch=12, log=lambda line: None)
    assert outcome.golden_identical is True and outcome.device == "other"

    class Broken(Other):
        def read(self, addr, nbytes):
            data = bytearray(super().read(addr, nbytes))
            if nbytes == 12 * 10:       # the logits of a batch of 12 (int8)
                data[0] ^= 1
            return bytes(data)

    monkeypatch.setitem(device_module.DEVICES, "other", Broken)
    out = io.StringIO()
    outcomes = demo.run_main_demo(device="other", models=["mlp"], samples=12, batch=12, out=out)
    assert outcomes[0].golden_identical is False and not outcomes[0].passed
    assert "OUTPUTS DIFFER" in out.getvalue()


def test_bad_demo_options_are_named():
    with pytest.raises(BrazeError, match="unknown model"):
        demo.main(["--device", "golden", "--models", "resnet"])
    with pytest.raises(BrazeError, match=r"--samples must lie in \[1, 359\]"):
        demo.run_model("mlp", device="golden", samples=1000, log=lambda line: None)
    with pytest.raises(BrazeError, match="no device back end named 'gpu'"):
        demo.run_main_demo(device="gpu", out=io.StringIO())


@pytest.mark.slow
def test_main_job_on_verilator_is_bit_identical_to_golden():
    """The demo's default device: the RTL in Verilator gives the golden outputs, fused and unfused."""
    out = io.StringIO()
    outcomes = demo.run_main_demo(device="verilator", samples=8, batch=8, out=out)
    for outcome in outcomes:
        assert outcome.device == "verilator"
        assert outcome.fused.golden_identical is True and outcome.unfused.golden_identical is True
        # The RTL's own counters: the same arithmetic, and fusion still saves cycles and bytes.
        assert outcome.fused.totals.macs == outcome.unfused.totals.macs > 0
        assert outcome.fused.totals.cycles < outcome.unfused.totals.cycles
        assert outcome.fused.totals.external_bytes < outcome.unfused.totals.external_bytes
    assert "golden vs verilator: bit-identical (fused and unfused, 8 samples)" in out.getvalue()
