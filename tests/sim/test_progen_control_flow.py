"""Random control-flow programs (issue 13) on the reference model: every looped program leaves external
memory and the on-chip memories as the straight-line program of the instructions it dispatched does."""

import numpy as np
import pytest

from braze.isa import PRESETS, Instruction, Opcode
from braze.isa.encoding import CONTROL_FLOW_OPCODES
from braze.isa.model import DispatchTracer, Machine
from braze.sim.progen import generate, generate_control_flow


class _Tracing(DispatchTracer):
    """Also records whether each BRANCH was taken."""

    def __init__(self, config):
        super().__init__(config)
        self.branches = []

    def _execute(self, insn, pc, seq):
        super()._execute(insn, pc, seq)
        if insn.opcode is Opcode.BRANCH:
            self.branches.append(self._next_pc != pc + 16)


def _load(machine: Machine, program) -> None:
    for address, blob in program.image[1:]:
        machine.write_dram(address, blob)


def _data_regions(program):
    return [region for region in program.regions if region.kind != "counters"]


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_looped_programs_equal_their_dispatched_straight_line_programs(preset):
    config = PRESETS[preset]
    taken = not_taken = 0
    for seed in range(25 if preset == "tiny" else 6):
        program = generate_control_flow(config, seed, size=4)
        looped = _Tracing(config)
        _load(looped, program)
        looped.run_program(list(program.instructions), base=program.base)
        original = generate(config, seed, size=4).instructions[:-1]
        body = len(original)
        iterations = program.instructions[0].imm
        # The body (with its two loop-ending FENCEs) once per iteration, then HALT; with its registers
        # added, each iteration dispatches exactly the original program's instructions.
        assert len(looped.trace) == iterations * (body + 2) + 1
        for iteration in range(iterations):
            first = iteration * (body + 2)
            assert tuple(looped.trace[first:first + body]) == original, (seed, iteration)
        assert looped.scalar_regs[1] == 0
        data_branches = looped.branches[0::2]          # each iteration: the data branch, then the back-branch
        taken += sum(data_branches)
        not_taken += len(data_branches) - sum(data_branches)

        straight = Machine(config)
        _load(straight, program)
        straight.run_program(looped.trace, base=program.base)
        for region in _data_regions(program):
            assert looped.read_dram(region.addr, len(region.data)) == straight.read_dram(
                region.addr, len(region.data)), f"seed {seed}: region {region.name} differs"
        assert np.array_equal(looped.spad, straight.spad) and np.array_equal(looped.acc, straight.acc), seed
    assert taken and not_taken, (taken, not_taken)


def test_generated_control_flow_uses_every_new_feature():
    program = generate_control_flow(PRESETS["tiny"], 5)
    opcodes = {insn.opcode for insn in program.instructions}
    assert CONTROL_FLOW_OPCODES <= opcodes
    registers = [insn for insn in program.instructions if insn.opcode in (Opcode.LOAD, Opcode.STORE)
                 and (insn.addr_reg or insn.dram_reg)]
    assert registers


def test_runtime_parameters_through_the_device_interface():
    """The golden device takes scalar registers; a back end without them says so."""
    from braze.isa import BrazeError
    from braze.sim.device import Device, GoldenDevice

    device = GoldenDevice(PRESETS["tiny"])
    device.write_scalar(3, 41)
    device.run([Instruction.make("scalar", dst=4, src1=3, imm=1), Instruction.make("halt")])
    assert device.machine.scalar_regs[4] == 42

    class _NoScalars(GoldenDevice):
        kind = "rtl-without-scalars"
        write_scalar = Device.write_scalar

    with pytest.raises(BrazeError, match="not implemented"):
        _NoScalars(PRESETS["tiny"]).write_scalar(3, 1)
