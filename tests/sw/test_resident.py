"""Weights resident on chip across a session's runs (issue 12, small shapes)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from braze.isa import INSN_BYTES, BrazeError, Config, Instruction, Opcode
from braze.isa.model import instruction_accesses
from braze.sim.device import GoldenDevice
from braze.sw.compiler import kernels, models
from braze.sw.runtime.resident import ResidentRuntime, footprint, plan_resident, relocate_rows
from braze.sw.runtime.session import InferenceSession

DEFAULT = Config.preset("default")


@functools.cache
def _mlp(tmp_dir: str):
    data = models.load_digits_split()
    model, _ = models.train_mlp(data, epochs=2, seed=0)
    path = model.save(f"{tmp_dir}/mlp.onnx")
    return path, models.calibration_set(model, data, samples=32), model.inputs(data.x_val[:4])


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return _mlp(str(tmp_path_factory.mktemp("resident")))


def test_relocated_rows_are_the_same_accesses_moved():
    kernel = kernels.gemm(DEFAULT, 16, 16, 16, bias=True, requant=True, act="relu")
    moved = relocate_rows(kernel.instructions, 64, 8)
    shift = {"scratchpad row": 64, "accumulator row": 8, "external byte": 0}
    for before, after in zip(kernel.instructions, moved, strict=True):
        assert after.deps == before.deps
        for (space, index, write), (space2, index2, write2) in zip(
                instruction_accesses(before, DEFAULT), instruction_accesses(after, DEFAULT), strict=True):
            assert (space, write) == (space2, write2)
            np.testing.assert_array_equal(np.arange(10**7)[index] + shift[space], np.arange(10**7)[index2])
    spad, acc = footprint(kernel)
    assert 0 < spad <= DEFAULT.spad_rows and 0 < acc <= DEFAULT.acc_rows


def test_batch_one_runs_load_only_activations_after_the_first(mlp):
    path, calibration, x = mlp
    with InferenceSession(path, device="golden", calibration=calibration) as plain:
        name = plain.get_inputs()[0].name
        expected = [plain.run(None, {name: x[i:i + 1]})[0] for i in range(3)]
        plain_read = sum(row.dma_read_bytes for row in plain.report().kernels)
        plain_cycles = plain.report().total_cycles
    with InferenceSession(path, device="golden", calibration=calibration, resident_weights=True) as session:
        reads, warm, cycles = [], [], []
        for i in range(3):
            (out,) = session.run(None, {name: x[i:i + 1]})
            np.testing.assert_array_equal(out, expected[i])
            runtime = session._current[3]
            assert isinstance(runtime, ResidentRuntime) and runtime.plan is not None, runtime.reason
            reads.append(sum(row.dma_read_bytes for row in session.report().kernels))
            warm.append(runtime.last_run_warm)
            cycles.append(session.report().total_cycles)
        resident = runtime.plan.resident_bytes
    assert warm == [False, True, True]
    # A watchdog's pc names the kernel of the warm program it stopped in (the programs are not the model's).
    segment = session._current[2].segments[0]
    base = runtime.segment_program_addr(segment)
    (first_end, _), (second_end, second) = runtime.plan.kernel_ends[base][:2]
    assert runtime.kernel_at(segment, base + INSN_BYTES * (first_end + 1)).name == second
    assert runtime.kernel_at(segment, base + INSN_BYTES * second_end).name == second
    assert runtime.kernel_at(segment, base).name == segment.steps[0].name
    # The weights and parameter rows of every layer: the MLP's three weight matrices at least.
    assert resident >= 64 * 64 + 64 * 32 + 32 * 10
    assert reads[0] == plain_read and reads[1] == reads[2] == plain_read - resident
    assert cycles[0] == plain_cycles and cycles[1] < cycles[0]


def test_pipelined_warm_runs_overlap_the_kernels_and_report_per_segment(mlp):
    path, calibration, x = mlp
    cycles, outputs = {}, {}
    for mode in (True, "pipelined"):
        with InferenceSession(path, device="golden", calibration=calibration,
                              resident_weights=mode) as session:
            name = session.get_inputs()[0].name
            outputs[mode] = [session.run(None, {name: x[i:i + 1]})[0] for i in range(2)]
            report, compiled = session.report(), session._current[2]
            cycles[mode] = report.total_cycles
            if mode == "pipelined":
                # One snapshot per device run: one row naming every kernel of the segment.
                assert [row.kernel for row in report.kernels] == [
                    "+".join(step.name for step in segment.steps) for segment in compiled.segments]
                assert report.total_macs == sum(step.kernel.macs for segment in compiled.segments
                                                for step in segment.steps)
            else:
                assert len(report.kernels) == sum(len(segment.steps) for segment in compiled.segments)
    for piped, plain in zip(outputs["pipelined"], outputs[True], strict=True):
        np.testing.assert_array_equal(piped, plain)
    assert cycles["pipelined"] < cycles[True]
    with pytest.raises(BrazeError, match="resident_weights='yes'"):
        InferenceSession(path, device="golden", calibration=calibration, resident_weights="yes")


def test_any_other_run_on_the_device_makes_the_next_run_load_again(mlp):
    path, calibration, x = mlp
    with InferenceSession(path, device="golden", calibration=calibration, resident_weights=True) as session:
        name = session.get_inputs()[0].name
        first = session.run(None, {name: x[:1]})[0]
        session.run(None, {name: x[:1]})
        assert session._current[3].last_run_warm
        # Something else runs on the device (another shape, another model, a bare program).
        session.device.run([Instruction.make(Opcode.LOAD, mem="spad", addr=0, rows=4, len=8, zero=True),
                            Instruction.make(Opcode.HALT)], base=session._current[2].memory_bytes + 4096)
        again = session.run(None, {name: x[:1]})[0]
        assert not session._current[3].last_run_warm
        np.testing.assert_array_equal(again, first)
        assert session.run(None, {name: x[:1]}) and session._current[3].last_run_warm
        session._compiled.clear()                    # a re-plan (what a retrained cost model triggers)
        np.testing.assert_array_equal(session.run(None, {name: x[:1]})[0], first)
        assert not session._current[3].last_run_warm  # the new plan's rows are not on chip yet


def test_a_model_too_large_to_sit_side_by_side_has_no_plan(mlp):
    path, calibration, x = mlp
    small = Config.parse("default:spad_bytes=2048")     # 256 rows: each layer fits, not all three at once
    with InferenceSession(path, device="golden", config=small, calibration=calibration,
                          resident_weights=True) as session:
        name = session.get_inputs()[0].name
        first = session.run(None, {name: x[:1]})[0]
        runtime = session._current[3]
        assert runtime.plan is None and "side by side" in runtime.reason
        assert plan_resident(session._current[2]) == runtime.reason
        np.testing.assert_array_equal(session.run(None, {name: x[:1]})[0], first)
        assert not runtime.last_run_warm              # it runs as the plain runtime does


@pytest.mark.xdist_group("verilator-resident")
def test_on_the_rtl_weights_stay_resident_and_streams_are_exact(mlp):
    """On the RTL (Verilator) the scratchpad keeps its rows between runs: the warm runs give the
    golden outputs; then a stream of GEMM calls on the same simulator gives every call exactly."""
    pytest.importorskip("cocotb")
    from braze.sw.compiler.stream import stream

    path, calibration, x = mlp
    with InferenceSession(path, device="golden", calibration=calibration) as plain:
        name = plain.get_inputs()[0].name
        expected = [plain.run(None, {name: x[i:i + 1]})[0] for i in range(3)]
    with InferenceSession(path, device="verilator", calibration=calibration,
                          resident_weights=True) as session:
        reads = []
        for i in range(3):
            np.testing.assert_array_equal(session.run(None, {name: x[i:i + 1]})[0], expected[i])
            reads.append(sum(row.dma_read_bytes for row in session.report().kernels))
        runtime = session._current[3]
        assert runtime.last_run_warm and reads[1] == reads[2] == reads[0] - runtime.plan.resident_bytes
        # The pipelined warm program (no barrier between the kernels) on the same simulator.
        piped = InferenceSession(path, device=session.device, calibration=calibration,
                                 resident_weights="pipelined")
        for i in range(3):
            np.testing.assert_array_equal(piped.run(None, {name: x[i:i + 1]})[0], expected[i])
        assert piped._current[3].last_run_warm and len(piped.report().kernels) == 1
        kernel = kernels.gemm(DEFAULT, 16, 16, 16, bias=True, requant=True, act="relu")
        rng = np.random.default_rng(5)
        params = {"B": rng.integers(-128, 128, (16, 16), dtype=np.int8),
                  "params": kernels.pack_params(kernel, bias=rng.integers(-99, 99, 16),
                                                mult=np.full(16, 1 << 14), shift=np.full(16, 16))}
        inputs = [{"A": rng.integers(-128, 128, (16, 16), dtype=np.int8)} for _ in range(4)]
        want = stream(kernel, 4).run(GoldenDevice(DEFAULT), params, inputs).outputs
        got = stream(kernel, 4).run(session.device, params, inputs).outputs
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a["out"], b["out"])


def test_packed_requests_answer_as_separate_runs_in_fewer_cycles(mlp):
    from braze.sw.runtime.packing import run_packed
    from braze.sw.runtime.session import InputError

    path, calibration, x = mlp
    with InferenceSession(path, device="golden", calibration=calibration) as session:
        name = session.get_inputs()[0].name
        singles, cycles = [], 0
        for i in range(4):
            singles.append(session.run(None, {name: x[i:i + 1]})[0])
            cycles += session.report().total_cycles
        packed = run_packed(session, [{name: x[i:i + 1]} for i in range(4)])
        for (out,), want in zip(packed, singles, strict=True):
            np.testing.assert_array_equal(out, want)
        # One run whose GEMMs have four rows: their weights are loaded and shifted in once.
        assert session.report().total_cycles < cycles / 2
        assert [len(o[0]) for o in run_packed(session, [{name: x[:2]}, {name: x[2:3]}])] == [2, 1]
        with pytest.raises(InputError, match="request 1 must map exactly the inputs"):
            run_packed(session, [{name: x[:1]}, {"other": x[:1]}])
        with pytest.raises(InputError, match="no requests"):
            run_packed(session, [])
