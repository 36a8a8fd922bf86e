"""Config fields that cut a build for a small FPGA: ``counter_bits`` and ``vector_unit`` (issue 16).

Their hardware is tested with the counter bank (``tests/hw/test_counters_rtl.py``) and the decoder
(``tests/hw/test_decoder_rtl.py``); here: the checks up front, the reference model, the random
programs of ``braze verify`` and the compiler.
"""

import pytest

from braze.isa import Config, ConfigError, ErrorCause, ExecutionError, Opcode
from braze.isa import Instruction as I
from braze.isa.encoding import encode_program
from braze.isa.model import Machine
from braze.sim.progen import generate
from braze.sw.compiler.kernels import KernelError, maxpool2d

TINY = Config.preset("tiny")
NO_VECTOR = TINY.replace(name="tiny_no_vector", vector_unit=0)


@pytest.mark.parametrize("field, value", [("counter_bits", 48), ("counter_bits", 0), ("vector_unit", 2),
                                          ("vector_unit", -1)])
def test_bad_values_are_rejected_up_front(field, value):
    with pytest.raises(ConfigError, match=f"{field}={value}"):
        TINY.replace(**{field: value})


def test_presets_keep_their_identity():
    """At the presets' values the fields are left out of a configuration's identity (its JSON)."""
    assert "counter_bits" not in TINY.to_dict() and "vector_unit" not in TINY.to_dict()
    assert TINY.replace(counter_bits=32).to_dict()["counter_bits"] == 32
    assert Config.parse("tiny:vector_unit=0,counter_bits=32").to_dict()["vector_unit"] == 0


def _snapshot_program(insns):
    return [*insns, I.make("counters", dram=0x8000), I.make("halt")]


def test_model_counters_wrap_at_counter_bits():
    """The model's counters count modulo 2**counter_bits: a count near the wrap, then a few more."""
    machine = Machine(TINY.replace(counter_bits=32))
    machine._count(0, (1 << 32) - 2)
    machine._count(0, 5)
    assert int(machine.counters[0]) == 3
    wide = Machine(TINY)
    wide._count(0, (1 << 32) - 2)
    wide._count(0, 5)
    assert int(wide.counters[0]) == (1 << 32) + 3


def test_vector_is_illegal_without_the_vector_unit():
    """A VECTOR stops the run with ILLEGAL_OPCODE at its pc; the instructions before it completed."""
    program = _snapshot_program([I.make("load", mem="spad", addr=0, rows=1, len=4, dram=0x1000,
                                        push_next=True),
                                 I.make("vector", op="add", dst_mem="spad", src1_mem="spad", src2_mem="spad",
                                        dst=1, src1=0, src2=0, rows=1, pop_prev=True)])
    for config in (NO_VECTOR, TINY):
        machine = Machine(config)
        machine.write_dram(0x1000, bytes([1, 2, 3, 4]))
        machine.write_dram(0, encode_program(program))
        if config.vector_unit:
            machine.run(0)
            assert list(machine.spad[1]) == [2, 4, 6, 8]
            continue
        with pytest.raises(ExecutionError) as failure:
            machine.run(0)
        assert failure.value.cause is ErrorCause.ILLEGAL_OPCODE and failure.value.pc == 16
        assert list(machine.spad[0]) == [1, 2, 3, 4]


def test_random_programs_have_no_vector():
    for seed in range(6):
        program = generate(NO_VECTOR, seed)
        assert all(insn.opcode is not Opcode.VECTOR for insn in program.instructions)
    # The same generator does emit VECTORs where the unit exists (so the check above means something).
    assert any(insn.opcode is Opcode.VECTOR for seed in range(6)
               for insn in generate(TINY, seed).instructions)


def test_compiler_makes_no_kernel_with_vector():
    """Pooling needs VECTOR: no kernel for a build without the unit (the lowering runs it on the host)."""
    assert any(insn.opcode is Opcode.VECTOR for insn in maxpool2d(TINY, 1, 4, 4, 4, 2, 2, 2).instructions)
    with pytest.raises(KernelError, match="vector_unit=0"):
        maxpool2d(NO_VECTOR, 1, 4, 4, 4, 2, 2, 2)
