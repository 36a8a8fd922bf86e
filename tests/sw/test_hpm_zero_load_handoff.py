"""The memory-aware baseline's zero-LOAD hand-off (``ZERO_LOAD_HANDOFF_CYCLES``): what it adds, and where."""

from __future__ import annotations

from braze.isa import Config, Instruction, Memory, Opcode
from braze.sw.compiler import conv2d
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
