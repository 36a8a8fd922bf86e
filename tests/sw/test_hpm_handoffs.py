"""The memory-aware baseline's hand-offs of zero LOADs and VECTORs (``ZERO_LOAD_HANDOFF_CYCLES``,
``VECTOR_HANDOFF_CYCLES``): what they add, and where."""

from __future__ import annotations

from braze.isa import Config, Instruction, Memory, Opcode
from braze.sw.compiler import conv2d, maxpool2d
from braze.sw.hpm import features
from braze.sw.hpm.features import MemorySystem, memory_aware_cycles

TINY = Config.preset("tiny")


def _priced(program, handoff: int, monkeypatch, stall: float = 0.0) -> int:
    monkeypatch.setattr(features, "ZERO_LOAD_HANDOFF_CYCLES", handoff)
    return memory_aware_cycles(program, TINY, MemorySystem(TINY.mem_latency, stall))


def test_each_zero_load_hands_off_and_backpressure_does_not_stretch_it(monkeypatch):
    zero = Instruction.make(Opcode.LOAD, mem=Memory.SPAD, zero=True, addr=0, rows=3, len=TINY.cols)
    assert _priced([zero, zero], 4, monkeypatch) - _priced([zero, zero], 0, monkeypatch) == 8
    # No memory access: nothing for backpressure to stretch.
    assert _priced([zero, zero], 4, monkeypatch, stall=0.4) == _priced([zero, zero], 4, monkeypatch)


def test_a_padded_convolution_pays_for_its_zero_loads_and_an_unpadded_one_does_not(monkeypatch):
    padded = conv2d(TINY, 1, 3, 6, 6, 4, 3, 3, 1, 1)
    zero_loads = sum(1 for insn in padded.instructions if insn.opcode is Opcode.LOAD and insn.zero)
    assert zero_loads > 0
    added = _priced(padded.instructions, 4, monkeypatch) - _priced(padded.instructions, 0, monkeypatch)
    assert 0 < added <= 4 * zero_loads                 # what a hand-off delays, at most all of them
    unpadded = conv2d(TINY, 1, 3, 6, 6, 4, 3, 3, 1, 0)
    assert not any(insn.opcode is Opcode.LOAD and insn.zero for insn in unpadded.instructions)
    assert _priced(unpadded.instructions, 4, monkeypatch) == _priced(unpadded.instructions, 0, monkeypatch)


def _vector_priced(program, handoff: int, monkeypatch) -> int:
    monkeypatch.setattr(features, "VECTOR_HANDOFF_CYCLES", handoff)
    return memory_aware_cycles(program, TINY, MemorySystem(TINY.mem_latency, 0.0))


def test_a_pool_pays_a_hand_off_per_vector_and_a_convolution_none(monkeypatch):
    pool = maxpool2d(TINY, 1, 4, 6, 6, 2, 2, 2)
    vectors = sum(1 for insn in pool.instructions if insn.opcode is Opcode.VECTOR)
    assert vectors > 1
    program = pool.instructions
    added = _vector_priced(program, 1, monkeypatch) - _vector_priced(program, 0, monkeypatch)
    assert 0 < added <= vectors                        # what a hand-off delays, at most all of them
    conv = conv2d(TINY, 1, 3, 6, 6, 4, 3, 3, 1, 0)
    assert not any(insn.opcode is Opcode.VECTOR for insn in conv.instructions)
    program = conv.instructions
    assert _vector_priced(program, 1, monkeypatch) == _vector_priced(program, 0, monkeypatch)
