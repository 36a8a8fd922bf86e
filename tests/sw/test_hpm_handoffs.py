"""The memory-aware baseline's hand-offs of zero LOADs and VECTORs (``ZERO_LOAD_HANDOFF_CYCLES``,
``VECTOR_HANDOFF_CYCLES``) and of overlapped LOADs (feature version 12: the timing model's hand-over
plus ``OVERLAPPED_LOAD_HANDOVER_EXCESS``, ``TOKEN_ROW_LOAD_CYCLES``, ``OVERLAPPED_LOAD_STALL_HANDSHAKES``):
what they add, and where."""

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


DEFAULT = Config.preset("default")


def _default_priced(program, monkeypatch, stall: float = 0.0, **constants) -> int:
    for name, value in constants.items():
        monkeypatch.setattr(features, name, value)
    return memory_aware_cycles(program, DEFAULT, MemorySystem(DEFAULT.mem_latency, stall))


def _ring(count: int) -> list[Instruction]:
    """A pool's ring of two one-row slots: each LOAD after the first two waits for the VECTOR that read
    its slot (``pop_next``)."""
    program = []
    for index in range(count):
        program.append(Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=index % 2, rows=1,
                                        len=DEFAULT.cols, dram=64 * index, stride=64, push_next=True,
                                        pop_next=index >= 2))
        program.append(Instruction.make(Opcode.VECTOR, op="add", dst_mem=Memory.ACC, src1_mem=Memory.ACC,
                                        src2_mem=Memory.SPAD, dst=0, src1=0, src2=index % 2, rows=1,
                                        pop_prev=True, push_prev=True))
    return program


def _back_to_back(rows: int, count: int) -> list[Instruction]:
    return [Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=4 * index, rows=rows, len=DEFAULT.cols,
                             dram=4096 + 512 * index, stride=64) for index in range(count)]


def test_overlapped_loads_hand_over_in_the_timing_models_cycles_plus_the_measured_excess(monkeypatch):
    loads = _back_to_back(4, 8)
    plain = _default_priced(loads, monkeypatch)
    # One source: a dearer hand-over in the timing model is a dearer one in the baseline, as is the excess.
    timing_dearer = features.load_handover_cycles(DEFAULT) + 1
    monkeypatch.setattr(features, "load_handover_cycles", lambda config, zero=False: timing_dearer)
    via_timing = _default_priced(loads, monkeypatch)
    monkeypatch.undo()
    via_excess = _default_priced(loads, monkeypatch,
                                 OVERLAPPED_LOAD_HANDOVER_EXCESS=features.OVERLAPPED_LOAD_HANDOVER_EXCESS + 1)
    assert via_timing == via_excess and 0 < via_excess - plain <= len(loads)


def test_a_one_row_load_waiting_on_a_token_pays_its_cycles_and_one_without_a_token_does_not(monkeypatch):
    ring = _ring(8)
    added = (_default_priced(ring, monkeypatch, TOKEN_ROW_LOAD_CYCLES=8)
             - _default_priced(ring, monkeypatch, TOKEN_ROW_LOAD_CYCLES=0))
    assert 0 < added <= 8 * 6                          # the six LOADs that pop, at most all of it
    free = _back_to_back(1, 8)
    assert (_default_priced(free, monkeypatch, TOKEN_ROW_LOAD_CYCLES=8)
            == _default_priced(free, monkeypatch, TOKEN_ROW_LOAD_CYCLES=0))


def test_backpressure_lengthens_exposed_overlapped_loads_and_not_those_behind_a_data_chain(monkeypatch):
    ring = _ring(8)
    assert (_default_priced(ring, monkeypatch, OVERLAPPED_LOAD_STALL_HANDSHAKES=6)
            == _default_priced(ring, monkeypatch, OVERLAPPED_LOAD_STALL_HANDSHAKES=0))     # nothing stalls
    exposed = (_default_priced(ring, monkeypatch, stall=0.4, OVERLAPPED_LOAD_STALL_HANDSHAKES=6)
               - _default_priced(ring, monkeypatch, stall=0.4, OVERLAPPED_LOAD_STALL_HANDSHAKES=0))
    # A LOAD that waited on a token pays 6 * 0.4 / 0.6 = 4 cycles where its own end is on the critical
    # path: more than one of the ring's do.
    assert exposed >= 2 * 4
    chained = _back_to_back(8, 8)
    behind = (_default_priced(chained, monkeypatch, stall=0.4, OVERLAPPED_LOAD_STALL_HANDSHAKES=6)
              - _default_priced(chained, monkeypatch, stall=0.4, OVERLAPPED_LOAD_STALL_HANDSHAKES=0))
    assert behind <= 4                                 # the first LOAD's at most: the rest follow its data
