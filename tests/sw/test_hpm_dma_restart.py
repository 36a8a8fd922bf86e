"""The memory-aware baseline's DMA engines that run one instruction at a time (feature version 8):
the restart cycle after each STORE and each LOAD run alone, the shorter LOADs of few rows, the
backpressure on a LOAD run alone and on each STORE's responses; and topping up measurements made
once (``braze hpm repeat``)."""

from __future__ import annotations

import pytest

from braze.isa import Config, Instruction, Memory, Opcode
from braze.sw.hpm import features
from braze.sw.hpm.calibrate import CalibrationOptionError, _data_end, repeat_measurements
from braze.sw.hpm.evaluate import FamilyScore, WorstMeasurement, worst_measured_once
from braze.sw.hpm.features import MemorySystem, memory_aware_cycles
from braze.sw.hpm.store import HistoryStore, RunRecord, pack_program

TINY = Config.preset("tiny")
DEFAULT = Config.preset("default")


def _load(rows: int, index: int = 0) -> Instruction:
    return Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=4 * index, rows=rows, len=4,
                            dram=4096 + 512 * index, stride=64)


def _store(index: int = 0) -> Instruction:
    return Instruction.make(Opcode.STORE, mem=Memory.SPAD, addr=4 * index, rows=4, len=4,
                            dram=65536 + 512 * index, stride=64)


def _priced(program, config: Config, monkeypatch, *, stall: float = 0.0, **constants) -> int:
    for name, value in constants.items():
        monkeypatch.setattr(features, name, value)
    return memory_aware_cycles(program, config, MemorySystem(config.mem_latency, stall))


@pytest.mark.parametrize("config", [TINY, DEFAULT], ids=lambda config: config.name)
def test_every_store_pays_the_restart_on_every_preset(config, monkeypatch):
    stores = [_store(i) for i in range(5)]
    added = (_priced(stores, config, monkeypatch, DMA_RESTART_CYCLES=1)
             - _priced(stores, config, monkeypatch, DMA_RESTART_CYCLES=0))
    assert added == 5


def test_loads_pay_the_restart_only_when_they_run_one_at_a_time(monkeypatch):
    loads = [_load(4, i) for i in range(6)]
    alone = (_priced(loads, TINY, monkeypatch, DMA_RESTART_CYCLES=1)
             - _priced(loads, TINY, monkeypatch, DMA_RESTART_CYCLES=0))
    assert TINY.load_overlap == 1 and alone == 6
    overlapped = (_priced(loads, DEFAULT, monkeypatch, DMA_RESTART_CYCLES=1)
                  - _priced(loads, DEFAULT, monkeypatch, DMA_RESTART_CYCLES=0))
    assert DEFAULT.load_overlap > 1 and overlapped == 0


def test_a_load_of_few_rows_run_alone_takes_the_saving_less(monkeypatch):
    short = [_load(2, i) for i in range(4)]
    saved = (_priced(short, TINY, monkeypatch, SHORT_LOAD_SAVING=0)
             - _priced(short, TINY, monkeypatch, SHORT_LOAD_SAVING=2))
    assert saved == 8
    longer = [_load(3, i) for i in range(4)]
    assert (_priced(longer, TINY, monkeypatch, SHORT_LOAD_SAVING=0)
            == _priced(longer, TINY, monkeypatch, SHORT_LOAD_SAVING=2))


def test_backpressure_stretches_a_load_run_alone_by_its_extra_handshakes_only(monkeypatch):
    loads = [_load(4, i) for i in range(6)]
    # No backpressure: nothing to stretch.
    assert (_priced(loads, TINY, monkeypatch, ALONE_LOAD_STALL_HANDSHAKES=0)
            == _priced(loads, TINY, monkeypatch, ALONE_LOAD_STALL_HANDSHAKES=4))
    # At 0.4 each LOAD run alone waits 4 * 0.4 / 0.6 cycles more (rounded per LOAD).
    added = (_priced(loads, TINY, monkeypatch, stall=0.4, ALONE_LOAD_STALL_HANDSHAKES=4)
             - _priced(loads, TINY, monkeypatch, stall=0.4, ALONE_LOAD_STALL_HANDSHAKES=0))
    assert 6 * 2 <= added <= 6 * 3
    # Overlapped LOADs hide it behind the previous LOAD's data.
    assert (_priced(loads, DEFAULT, monkeypatch, stall=0.4, ALONE_LOAD_STALL_HANDSHAKES=4)
            == _priced(loads, DEFAULT, monkeypatch, stall=0.4, ALONE_LOAD_STALL_HANDSHAKES=0))


def test_backpressure_stretches_each_store_by_its_extra_handshakes(monkeypatch):
    stores = [_store(i) for i in range(5)]
    assert (_priced(stores, DEFAULT, monkeypatch, STORE_STALL_HANDSHAKES=0)
            == _priced(stores, DEFAULT, monkeypatch, STORE_STALL_HANDSHAKES=3))
    # At 0.4 each STORE (back to back: all on the critical path) waits 3 * 0.4 / 0.6 = 2 cycles more.
    added = (_priced(stores, DEFAULT, monkeypatch, stall=0.4, STORE_STALL_HANDSHAKES=3)
             - _priced(stores, DEFAULT, monkeypatch, stall=0.4, STORE_STALL_HANDSHAKES=0))
    assert 5 * 1 <= added <= 5 * 3


def test_with_store_ahead_a_store_s_rows_cost_only_under_backpressure(monkeypatch):
    """Feature version 10: with ``store_ahead`` (on in default) a STORE takes ``STORE_AHEAD_LATENCY + beats``
    and the restart, as the RTL measures, not ``STORE_BASE_CYCLES`` + rows + beats."""
    stores = [_store(i) for i in range(5)]
    without = DEFAULT.replace(store_ahead=0)
    assert DEFAULT.store_ahead == 1
    # Without backpressure each 4-row STORE is 9 + rows + beats without it and 9 + beats + 1 with it.
    assert _priced(stores, without, monkeypatch) - _priced(stores, DEFAULT, monkeypatch) == 5 * (4 - 1)
    # Under backpressure its rows wait: at 0.4 each of the 4 rows about 0.4 / 0.6 cycles (rounded per STORE).
    added = (_priced(stores, DEFAULT, monkeypatch, stall=0.4, STORE_AHEAD_STALL_PER_ROW=1.0)
             - _priced(stores, DEFAULT, monkeypatch, stall=0.4, STORE_AHEAD_STALL_PER_ROW=0.0))
    assert 5 * 2 <= added <= 5 * 3


def test_a_program_is_placed_after_every_byte_it_touches():
    snapshot = Instruction.make(Opcode.COUNTERS, dram=1000)
    zero = Instruction.make(Opcode.LOAD, mem=Memory.SPAD, zero=True, addr=0, rows=3, len=4)
    assert _data_end([_load(2, 0), zero]) == 4096 + 64 + 4
    assert _data_end([_load(2, 0), _store(1), snapshot]) == 65536 + 512 + 3 * 64 + 4


def _measurement(family: str, stall: float, repeats: int, learned: float) -> WorstMeasurement:
    return WorstMeasurement(family, "tiny", stall, repeats, 100.0, 100.0, 100.0, learned, {})


def test_the_measurements_to_repeat_are_the_worst_made_once_under_backpressure():
    score = FamilyScore("conv2d", 4, 0.0, 0.0, 0.0, 0.0)
    score.worst = [_measurement("a", 0.4, 1, 91.0), _measurement("b", 0.0, 1, 70.0),
                   _measurement("c", 0.25, 3, 60.0), _measurement("d", 0.1, 1, 105.0),
                   _measurement("e", 0.4, 1, 120.0)]
    chosen = worst_measured_once([score], 2)
    assert [m.family for m in chosen] == ["e", "a"]      # not b (no backpressure) nor c (repeated)


def _record(stall: float, program: bool = True) -> RunRecord:
    return RunRecord(family="gemm", signature={"family": "gemm"}, config_name="tiny", config=TINY.to_dict(),
                     device="verilator", read_latency=TINY.mem_latency, stall=stall, features={},
                     counters={"cycles": 100}, source="calibrate",
                     program=pack_program([_load(2)]) if program else None, stall_seed=1)


def test_repeating_refuses_runs_without_backpressure_or_program_and_skips_those_repeated(tmp_path):
    store = HistoryStore(tmp_path / "history.sqlite")
    with pytest.raises(CalibrationOptionError, match="cannot be repeated"):
        repeat_measurements(store, [[_record(0.0)]], repeats=3, progress=None)
    with pytest.raises(CalibrationOptionError, match="program missing"):
        repeat_measurements(store, [[_record(0.4, program=False)]], repeats=3, progress=None)
    with pytest.raises(CalibrationOptionError, match="at least 2 runs"):
        repeat_measurements(store, [[_record(0.4)]], repeats=1, progress=None)
    # Already repeated enough: nothing runs (no device is opened), nothing is added.
    report = repeat_measurements(store, [[_record(0.4), _record(0.4)]], repeats=2, progress=None)
    assert (report.ran, report.skipped, store.count()) == (0, 1, 0)
