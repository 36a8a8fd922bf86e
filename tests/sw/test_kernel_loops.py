"""Loops rolled from the library's straight-line kernels (:mod:`~braze.sw.compiler.kernels.loops`)."""

import numpy as np
import pytest

from braze.isa import COUNTERS, PRESETS, Instruction, Opcode
from braze.sim.device import open_device
from braze.sw.compiler.kernels import KernelError, conv2d, gemm, run_kernel
from braze.sw.compiler.kernels.loops import (
    LoopedKernel,
    expand_loops,
    looped_cycles,
    looped_kernel,
    roll_loops,
)

TINY, DEFAULT = PRESETS["tiny"], PRESETS["default"]
EXACT = [spec.name for spec in COUNTERS if spec.exact]


def _inputs(kernel, seed):
    rng = np.random.default_rng(seed)
    return {name: rng.integers(-30, 30, op.shape).astype(op.dtype) for name, op in kernel.operands.items()
            if op.role in ("input", "param")}


@pytest.mark.parametrize("make", [
    lambda: gemm(DEFAULT, 64, 256, 64, out="int32"),
    lambda: gemm(DEFAULT, 64, 512, 32, bias=True, requant=True, act="relu"),
    lambda: gemm(TINY, 33, 48, 20, out="int32"),
    lambda: conv2d(TINY, 1, 8, 6, 6, 8, 3, 3, 1, 1, bias=True, requant=True, act="relu"),
], ids=["gemm-default", "gemm-epilogue", "gemm-tiny", "conv-tiny"])
def test_looped_kernel_is_bit_exact_and_as_predicted_on_the_reference_model(make):
    kernel = make()
    looped = looped_kernel(kernel)
    assert isinstance(looped, LoopedKernel)
    assert any(insn.opcode is Opcode.BRANCH for insn in looped.instructions)
    assert len(looped.instructions) < len(kernel.instructions)
    inputs = _inputs(kernel, 1)
    with open_device("golden", kernel.config) as device:
        plain = run_kernel(device, kernel, inputs)
        rolled = run_kernel(device, looped, inputs)
    for name, value in plain.outputs.items():
        assert np.array_equal(rolled.outputs[name], value), name
    # The reference model's cycles and exact counters are the ones predicted before the run.
    assert rolled.cycles == looped.predicted_cycles
    assert {name: rolled.counters[name] for name in EXACT} == looped.events
    # The units did the same work: only dispatcher instructions were added.
    for name in ("macs", "insn_load", "insn_matmul", "insn_store", "axi_read_beats"):
        assert rolled.counters[name] == plain.counters[name], name


def test_rolled_loops_dispatch_exactly_the_straight_line_program():
    kernel = gemm(DEFAULT, 256, 256, 256, out="int32")
    rolled = roll_loops(kernel.instructions)
    units = [insn for insn, _ in expand_loops(rolled) if insn.opcode not in (Opcode.SCALAR, Opcode.BRANCH)]
    assert units == kernel.instructions
    # Over 2x fewer words (over 3x before the overlapped default's cut first and last tiles, which
    # do not repeat).
    assert len(rolled) * 2 < len(kernel.instructions)
    # The timing model sees the same unit work; the loops' dispatcher cycles hide behind it here.
    assert looped_cycles(rolled, DEFAULT) == kernel.predicted_cycles


def test_a_periodic_run_becomes_one_loop():
    loads = [Instruction.make("load", mem="spad", addr=8 * i, rows=8, len=8, dram=1000 + 64 * i, stride=8)
             for i in range(20)]
    rolled = roll_loops(loads)
    # 3 SCALARs setting the registers (two offsets, the end), the body, 2 SCALARs advancing them,
    # the BRANCH.
    assert [insn.opcode for insn in rolled] == [Opcode.SCALAR] * 3 + [Opcode.LOAD] + [Opcode.SCALAR] * 2 \
        + [Opcode.BRANCH]
    assert [insn for insn, _ in expand_loops(rolled)
            if insn.opcode is Opcode.LOAD] == loads


def test_min_body_unrolls_short_periods():
    loads = [Instruction.make("load", mem="spad", addr=8 * i, rows=8, len=8, dram=64 * i, stride=8)
             for i in range(16)]
    rolled = roll_loops(loads, min_body=4)
    assert sum(insn.opcode is Opcode.LOAD for insn in rolled) == 4
    assert [insn for insn, _ in expand_loops(rolled) if insn.opcode is Opcode.LOAD] == loads


def test_programs_with_control_flow_are_left_alone():
    program = [Instruction.make("scalar", dst=1, imm=3)] + [Instruction.make("fence")] * 6
    assert roll_loops(program) == program


def test_expanding_a_data_dependent_program_is_refused():
    program = [Instruction.make("predicate", op="any", dst=1, mem="spad", addr=0, rows=1)]
    with pytest.raises(KernelError, match="PREDICATE at instruction 0"):
        list(expand_loops(program))


def test_gemm_emits_loops_only_when_no_slower():
    kernel = gemm(DEFAULT, 64, 256, 64, out="int32", loops=True)
    assert kernel.tiling["loops"] and isinstance(kernel, LoopedKernel)
    assert kernel.predicted_cycles <= gemm(DEFAULT, 64, 256, 64, out="int32").predicted_cycles
    assert not gemm(DEFAULT, 64, 256, 64, out="int32").tiling.get("loops")


def test_a_looped_kernel_moves_with_its_operands():
    from braze.sw.compiler.lower import relocate

    kernel = gemm(DEFAULT, 64, 256, 64, out="int32")
    looped = looped_kernel(kernel)
    # Every address a LOAD or STORE holds still lies inside its operand (the registers count from 0).
    addrs = {name: op.addr + 0x40000 for name, op in kernel.operands.items()}
    moved, moved_looped = relocate(kernel, addrs), relocate(looped, addrs)
    inputs = _inputs(kernel, 2)
    with open_device("golden", DEFAULT) as device:
        want = run_kernel(device, moved, inputs)
        have = run_kernel(device, moved_looped, inputs)
    assert np.array_equal(want.outputs["out"], have.outputs["out"])
    assert np.array_equal(have.outputs["out"], inputs["A"].astype(np.int64) @ inputs["B"])


def test_a_kernel_with_loops_read_back_as_a_plain_kernel_counts_its_dispatched_stream():
    import dataclasses

    from braze.sw.compiler.kernels import Kernel, skipping_gemm

    for looped in (looped_kernel(gemm(DEFAULT, 64, 256, 64, out="int32")),
                   skipping_gemm(DEFAULT, 64, 256, 64, expected_zero_fraction=0.5)):
        # What the kernel cache gives back: the same fields, the base class.
        plain = Kernel(**{field.name: getattr(looped, field.name) for field in dataclasses.fields(Kernel)})
        assert plain.events == looped.events
        assert plain.events["macs"] == 64 * 256 * 64      # every loop iteration counted (a dense A)


@pytest.mark.parametrize("make", [
    lambda: gemm(DEFAULT, 64, 256, 64, out="int32"),
    lambda: conv2d(TINY, 1, 8, 6, 6, 8, 3, 3, 1, 1, bias=True, requant=True, act="relu"),
], ids=["gemm-default", "conv-tiny"])
def test_a_rolled_kernel_has_its_straight_line_twins_features(make):
    from braze.sw.hpm.features import MemorySystem, program_features

    kernel = make()
    looped = looped_kernel(kernel)
    assert looped.predicted_cycles == kernel.predicted_cycles       # the loops' dispatch is hidden here
    # Featured as they run (the dispatched stream), a rolled kernel and its straight-line twin differ
    # only in the dispatcher's SCALARs and BRANCHes, which the shipped model never saw (always 0), so
    # it predicts both the same -- also against a slower, stalling memory (the baseline reschedules).
    for memory in (MemorySystem.nominal(kernel.config), MemorySystem(kernel.config.mem_latency + 20, 0.25)):
        twin = program_features(kernel.instructions, kernel.config, memory)
        rolled = program_features(looped.instructions, kernel.config, memory)
        differing = {name for name in twin if twin[name] != rolled[name]}
        # With two MATMULs in flight the memory-aware baseline's schedule moves by a few cycles when
        # the loops' SCALARs take dispatch slots against a stalling memory (3 of 17,654 on gemm-default).
        baseline = {"baseline_cycles", "log_baseline_cycles", "log_baseline_over_analytic"}
        assert differing - baseline == {"n_scalar", "n_branch"}
        assert abs(rolled["baseline_cycles"] - twin["baseline_cycles"]) <= 1e-3 * twin["baseline_cycles"]
        assert rolled["n_branch"] > 0 and rolled["n_scalar"] > rolled["n_branch"]
        assert twin["n_branch"] == twin["n_scalar"] == 0


def test_loops_stay_inside_one_operand():
    loads = [Instruction.make("load", mem="spad", addr=8 * i, rows=8, len=8, dram=64 * i, stride=8)
             for i in range(20)]

    def region(insn):                  # two operands side by side: bytes 0..639 and 640..
        return insn.dram >= 640

    assert len([insn for insn in roll_loops(loads) if insn.opcode is Opcode.BRANCH]) == 1
    rolled = roll_loops(loads, region=region)
    # One loop per operand: every address a loop position takes lies in the operand of its first.
    assert len([insn for insn in rolled if insn.opcode is Opcode.BRANCH]) == 2
    pairs = [(resolved, written) for resolved, written in expand_loops(rolled)
             if resolved.opcode is Opcode.LOAD]
    assert [resolved for resolved, _ in pairs] == loads
    assert all(region(resolved) == region(written) for resolved, written in pairs)


def test_loops_if_no_slower_keeps_the_straight_line_kernel_when_nothing_repeats():
    from braze.sw.compiler.kernels.loops import loops_if_no_slower, straight_line

    kernel = gemm(TINY, 8, 8, 8, out="int32")          # one tile: no run repeats
    assert roll_loops(kernel.instructions) == kernel.instructions
    assert loops_if_no_slower(kernel) is kernel
    looped = looped_kernel(gemm(DEFAULT, 64, 256, 64, out="int32"))
    unrolled = straight_line(looped)
    assert unrolled.instructions == gemm(DEFAULT, 64, 256, 64, out="int32").instructions
    assert "loops" not in unrolled.tiling and straight_line(kernel) is kernel
